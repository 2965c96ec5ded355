"""llama.cpp-server-compatible routes: ``/infill`` (llama.vscode, llama.vim) and ``/completion``.

``/infill`` takes ``input_prefix``, ``input_suffix``, ``input_extra`` ([{filename, text}],
laid out before the FIM prefix as llama.cpp does: ``prompts.PromptBuilder.extra_context``) and
``prompt`` (the text typed on the cursor's line, appended to the prefix, as llama.cpp does); a
prompt too long for the context is trimmed the way llama.cpp trims it (``truncated: true``).
The request fields follow llama.cpp's server (tools/server, ``params_from_json_cmpl``):
- ``n_predict: 0`` reads the prompt into the prefix cache and answers an empty completion
  (llama.vscode's cache warming); ``cache_prompt: false`` drops the prefix cache first;
- ``t_max_predict_ms``: once that much generation time has passed, stop at the next new line
  (``stop_type: "limit"``), never mid-line; ``t_max_prompt_ms`` is accepted and, as in
  llama.cpp, not applied;
- ``n_cmpl`` (or ``n``) > 1: a JSON array of that many completions, each with its ``index``;
- ``n_indent``: stop at a new line indented less than it (the line is dropped);
- ``samplers``: llama.cpp's sampler chain by name (or one letter each); a sampler left out is
  off (no ``temperature``: temperature 1). ``dry``, ``typ_p``, ``xtc``, ``top_n_sigma`` and
  ``infill`` are accepted and not applied; unknown names are ignored, as llama.cpp does;
- ``id_slot``: accepted and echoed; the prefix cache picks the slot (``--cache-slots``);
- ``response_fields``: only these fields, ``a/b`` reaching into objects, as llama.cpp does.
Not implemented: ``n_probs``, streamed ``n_cmpl`` > 1 (400), grammars (400).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .api_openai import SSE_HEADERS, sse
from .backend import Sampling
from .engine import Result
from .fim_trim import trim_middle, trimmed
from .headers import csound_headers
from .validation import ApiError, Fields, read_json

MAX_RESPONSE_FIELDS = 64
MAX_N_CMPL = 8  # completions one request may ask for (llama.cpp: at most its --parallel)
# llama.cpp's sampler names (common_sampler_type_to_str) and one-letter codes (_to_chr).
SAMPLER_CHARS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "s": "top_n_sigma",
                 "m": "min_p", "t": "temperature", "x": "xtc", "i": "infill",
                 "e": "penalties"}
STOP_TYPE = {"stop": "eos", "length": "limit", "timeout": "limit", "cancelled": "none"}


@dataclasses.dataclass
class Options:
    """A /infill or /completion request's generation options, validated."""

    sampling: Sampling
    stream: bool
    cache_prompt: bool
    fields: list[str] | None
    n_cmpl: int
    warm: bool  # n_predict 0: read the prompt, generate nothing
    limit_s: float | None  # t_max_predict_ms
    id_slot: int


def _timings(result: Result, predicted_n: int) -> dict:
    prompt_n = result.prompt_tokens - result.cached_tokens
    prompt_ms, predicted_ms = result.prompt_s * 1000, result.decode_s * 1000
    return {
        "cache_n": result.cached_tokens, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n / result.prompt_s if result.prompt_s else 0.0,
        "predicted_n": predicted_n, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": result.tokens_per_s if predicted_n else 0.0,
    }


def _final(svc, result: Result, opts: Options, content: str, completion_id, *, index=0,
           timed_out=False) -> dict:
    predicted_n = 0 if opts.warm else result.completion_tokens
    stop_type = "limit" if opts.warm or timed_out else STOP_TYPE[result.finish_reason]
    s = opts.sampling
    body = {
        "index": index, "content": content, "tokens": [], "id_slot": max(opts.id_slot, 0),
        "stop": True, "model": svc.model_name, "tokens_predicted": predicted_n,
        "tokens_evaluated": result.prompt_tokens, "truncated": result.truncated,
        "stop_type": stop_type, "stopping_word": "", "has_new_line": "\n" in content,
        "tokens_cached": result.cached_tokens + predicted_n,
        "generation_settings": {"n_predict": 0 if opts.warm else s.max_tokens,
                                "temperature": s.temperature, "top_k": s.top_k,
                                "top_p": s.top_p, "min_p": s.min_p, "seed": s.seed,
                                "n_indent": s.n_indent, "t_max_predict_ms":
                                    round(opts.limit_s * 1000) if opts.limit_s else -1},
        "timings": _timings(result, predicted_n),
    }
    if completion_id:
        body["completion_id"] = completion_id
    return body


def _select(body: dict, fields: list[str] | None) -> dict:
    """llama.cpp's ``response_fields`` (json_get_nested_values): each existing path, ``a/b``
    reaching into objects, keyed by the path as written."""
    if not fields:
        return body
    out = {}
    for name in fields:
        value, found = body, True
        for part in name.split("/"):
            if not (isinstance(value, dict) and part in value):
                found = False
                break
            value = value[part]
        if found:
            out[name] = value
    return out


def _samplers(f: Fields) -> list[str] | None:
    value = f.data.get("samplers")
    if value is None:
        return None
    if isinstance(value, str):
        return [SAMPLER_CHARS[c] for c in value if c in SAMPLER_CHARS]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    f.problems.append("'samplers' must be a list of sampler names (e.g. [\"top_k\", \"top_p\", "
                      "\"temperature\"]) or a string of their letters (e.g. \"kpt\")")
    return None


def _apply_samplers(sampling: Sampling, names: list[str]) -> None:
    """llama.cpp samples from the listed samplers only, then draws from what is left."""
    on = set(names)
    if "top_k" not in on:
        sampling.top_k = 0
    if "top_p" not in on:
        sampling.top_p = 1.0
    if "min_p" not in on:
        sampling.min_p = 0.0
    if "temperature" not in on:
        sampling.temperature = 1.0
    if "penalties" not in on:
        sampling.repeat_penalty, sampling.presence_penalty = 1.0, 0.0
        sampling.frequency_penalty = 0.0


def _options(f: Fields, svc) -> Options:
    n_predict = f.data.get("n_predict", f.data.get("max_tokens"))
    warm = n_predict == 0 and not isinstance(n_predict, bool)
    if warm:  # validated as one token, then nothing is kept
        f.data = {**f.data, "n_predict": 1, "max_tokens": None}
    sampling = svc.sampling(f, max_tokens_keys=("n_predict", "max_tokens"), unlimited=(-1,))
    sampling.n_indent = f.get("n_indent", int, 0, low=0, high=1000)
    names = _samplers(f)
    if names is not None:
        _apply_samplers(sampling, names)
    limit_ms = f.get("t_max_predict_ms", float, low=-1.0)
    f.get("t_max_prompt_ms", float)  # checked, not applied: llama.cpp leaves it a TODO too
    n_cmpl = f.get("n_cmpl", int, None, low=1, high=MAX_N_CMPL)
    if n_cmpl is None and "n_cmpl" not in f.data:
        n_cmpl = f.get("n", int, 1, low=1, high=MAX_N_CMPL)
    stream = f.get("stream", bool, False)
    if stream and (n_cmpl or 1) > 1:
        f.problems.append("'n_cmpl' > 1 is answered as one JSON array: set 'stream' to false")
    if f.data.get("grammar") or f.data.get("json_schema"):
        f.problems.append("grammars and json_schema are not supported by this server")
    fields = f.get("response_fields", "strings")
    if fields and len(fields) > MAX_RESPONSE_FIELDS:
        f.problems.append(f"'response_fields' names {len(fields)} fields; at most "
                          f"{MAX_RESPONSE_FIELDS} are allowed")
    return Options(sampling=sampling, stream=stream,
                   cache_prompt=f.get("cache_prompt", bool, True), fields=fields,
                   n_cmpl=n_cmpl or 1, warm=warm,
                   limit_s=limit_ms / 1000 if limit_ms and limit_ms > 0 else None,
                   id_slot=f.get("id_slot", int, -1, low=-1, high=2**31 - 1))


class Budgeted:
    """A started job's text pieces under ``t_max_predict_ms``: once the budget has passed
    (counted from the first piece, as llama.cpp counts from the first sampled token), the
    piece holding the next new line is cut after it and the job is stopped."""

    def __init__(self, svc, job, limit_s: float | None):
        self.svc, self.job, self.limit_s = svc, job, limit_s
        self.timed_out = False

    async def __aiter__(self):
        pieces = self.svc.pieces(self.job)
        start = None
        try:
            async for piece in pieces:
                now = time.monotonic()
                start = start if start is not None else now
                newline = piece.find("\n")
                if self.limit_s and newline >= 0 and now - start > self.limit_s:
                    self.timed_out = True
                    yield piece[:newline + 1]
                    break
                yield piece
        finally:
            await pieces.aclose()  # stops the job
        if self.timed_out:
            async for _ in self.job.pieces():  # the worker's summary follows within a token
                pass

    @property
    def result(self) -> Result:
        return self.job.result


async def infill(request: Request):
    svc = request.app.state.service
    f = Fields(await read_json(request))
    prefix = f.get("input_prefix", str, "")
    suffix = f.get("input_suffix", str, "")
    typed = f.get("prompt", str, "")
    extra = []
    for i, chunk in enumerate(f.get("input_extra", list, []) or []):
        cf = Fields(chunk if isinstance(chunk, dict) else {}, where=f"input_extra[{i}].")
        if not isinstance(chunk, dict):
            f.problems.append(f"'input_extra[{i}]' must be an object {{filename, text}}")
            continue
        extra.append((cf.get("filename", str, "tmp"), cf.get("text", str, required=True)))
        f.problems += cf.problems
    opts = _options(f, svc)
    f.check()
    budget = svc.backend.n_ctx - min(opts.sampling.max_tokens, svc.backend.n_ctx // 2)
    tokens, truncated = svc.prompts.fim_tokens(prefix + typed, suffix, extra, budget=budget)
    record = {"prefix": prefix + typed, "suffix": suffix}
    return await _respond(request, svc, tokens, opts, truncated, record, "/infill")


async def completion(request: Request):
    svc = request.app.state.service
    f = Fields(await read_json(request))
    prompt = f.data.get("prompt")
    if isinstance(prompt, str):
        tokens = svc.prompts.text_tokens(prompt)
    elif isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 10**7 for t in prompt):
        tokens = list(prompt)
    else:
        raise ApiError(400, "'prompt' must be a string or a non-empty list of token ids",
                       param="prompt")
    opts = _options(f, svc)
    f.check()
    return await _respond(request, svc, tokens, opts, False, prompt, "/completion")


async def _one(request, svc, tokens, opts: Options, sampling: Sampling, index: int,
               record_prompt, endpoint, **kw) -> dict:
    job = await svc.start_job(request, tokens, sampling, **kw)
    text = []
    pieces = Budgeted(svc, job, opts.limit_s)
    async for piece in pieces:
        text.append(piece)
    content = "".join(text)
    if isinstance(record_prompt, dict):  # /infill: what the editor inserts at the cursor
        content = trim_middle(record_prompt["prefix"], content, record_prompt["suffix"])
    completion_id = await svc.record(record_prompt, content, endpoint)
    return _final(svc, pieces.result, opts, content, completion_id, index=index,
                  timed_out=pieces.timed_out)


def _seeded(sampling: Sampling, i: int) -> Sampling:
    """The i-th of several completions: its own seed (the request's plus i, or fresh)."""
    if i == 0:
        return sampling
    seed = None if sampling.seed is None else (sampling.seed + i) % 2**32
    return dataclasses.replace(sampling, seed=seed)


async def _respond(request, svc, tokens, opts: Options, truncated, record_prompt, endpoint):
    kw = {"truncated": truncated, "clear_cache": not opts.cache_prompt}
    if opts.warm:  # the prompt is read into the prefix cache; the sampled token is dropped
        result = await svc.complete(request, tokens, opts.sampling, **kw)
        return JSONResponse(_select(_final(svc, result, opts, "", None), opts.fields),
                            headers=csound_headers(svc))
    if not opts.stream:
        # Submitted together: with --parallel they decode in one batch, else one by one.
        tasks = [asyncio.create_task(_one(
            request, svc, tokens, opts, _seeded(opts.sampling, i), i, record_prompt, endpoint,
            truncated=truncated, clear_cache=kw["clear_cache"] and i == 0))
            for i in range(opts.n_cmpl)]
        try:
            bodies = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        bodies = [_select(body, opts.fields) for body in bodies]
        if len(bodies) > 1:
            return JSONResponse(bodies, headers=csound_headers(svc))
        completion_id = bodies[0].get("completion_id")
        return JSONResponse(bodies[0], headers={
            **({"X-Completion-Id": completion_id} if completion_id else {}),
            **csound_headers(svc)})
    job = await svc.start_job(request, tokens, opts.sampling, **kw)

    async def events():
        text = []
        pieces = Budgeted(svc, job, opts.limit_s)
        fim = isinstance(record_prompt, dict)  # /infill
        async for piece in (trimmed(pieces, record_prompt["prefix"], record_prompt["suffix"])
                            if fim else pieces):
            text.append(piece)
            yield sse({"index": 0, "content": piece, "tokens": [], "stop": False,
                       "id_slot": max(opts.id_slot, 0)})
        completion_id = await svc.record(record_prompt, "".join(text), endpoint)
        yield sse(_select(_final(svc, pieces.result, opts, "", completion_id,
                                 timed_out=pieces.timed_out), opts.fields))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **csound_headers(svc)})


routes = [
    Route("/infill", infill, methods=["POST"]),
    Route("/completion", completion, methods=["POST"]),
]
