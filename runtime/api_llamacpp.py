"""llama.cpp-server-compatible routes: ``/infill`` (llama.vscode, llama.vim) and ``/completion``.

``/infill`` takes ``input_prefix``, ``input_suffix``, ``input_extra`` ([{filename, text}]) and
``prompt`` (the text typed on the cursor's line, appended to the prefix, as llama.cpp does); a
prompt too long for the context is trimmed the way llama.cpp trims it (``truncated: true``).
``cache_prompt: false`` drops the prefix cache first. ``t_max_predict_ms`` caps decoding time;
``n_indent`` stops at a new line indented less than it (the line is dropped), as llama.cpp does.
Not implemented: ``n_probs``, ``samplers`` (ignored), grammars (400).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .api_openai import SSE_HEADERS, sse
from .engine import Result
from .validation import ApiError, Fields, read_json

MAX_RESPONSE_FIELDS = 64


def _timings(result: Result) -> dict:
    prompt_n = result.prompt_tokens - result.cached_tokens
    prompt_ms, predicted_ms = result.prompt_s * 1000, result.decode_s * 1000
    predicted_n = result.completion_tokens
    return {
        "cache_n": result.cached_tokens, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n / result.prompt_s if result.prompt_s else 0.0,
        "predicted_n": predicted_n, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": result.tokens_per_s,
    }


def _final(svc, result: Result, sampling, content: str, completion_id) -> dict:
    stop_type = {"stop": "eos", "length": "limit", "timeout": "limit",
                 "cancelled": "none"}[result.finish_reason]
    body = {
        "index": 0, "content": content, "tokens": [], "id_slot": 0, "stop": True,
        "model": svc.model_name, "tokens_predicted": result.completion_tokens,
        "tokens_evaluated": result.prompt_tokens, "truncated": result.truncated,
        "stop_type": stop_type, "stopping_word": "", "has_new_line": "\n" in content,
        "tokens_cached": result.cached_tokens + result.completion_tokens,
        "generation_settings": {"n_predict": sampling.max_tokens, "temperature":
                                sampling.temperature, "top_k": sampling.top_k,
                                "top_p": sampling.top_p, "seed": sampling.seed},
        "timings": _timings(result),
    }
    if completion_id:
        body["completion_id"] = completion_id
    return body


def _select(body: dict, fields: list[str] | None) -> dict:
    """llama.cpp's ``response_fields``: keep only these (``a/b`` reaches into objects)."""
    if not fields:
        return body
    out = {}
    for name in fields:
        value = body
        for part in name.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[name] = value
    return out


def _params(f: Fields, svc):
    sampling = svc.sampling(f, max_tokens_keys=("n_predict", "max_tokens"), unlimited=(-1,))
    sampling.n_indent = f.get("n_indent", int, 0, low=0, high=1000)
    limit_ms = f.get("t_max_predict_ms", float, low=0.0)
    if limit_ms:
        sampling.time_limit = limit_ms / 1000
    if f.data.get("grammar") or f.data.get("json_schema"):
        f.problems.append("grammars and json_schema are not supported by this server")
    fields = f.get("response_fields", "strings")
    if fields and len(fields) > MAX_RESPONSE_FIELDS:
        f.problems.append(f"'response_fields' names {len(fields)} fields; at most "
                          f"{MAX_RESPONSE_FIELDS} are allowed")
    return sampling, f.get("stream", bool, False), f.get("cache_prompt", bool, True), fields


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
    sampling, stream, cache_prompt, fields = _params(f, svc)
    f.check()
    budget = svc.backend.n_ctx - min(sampling.max_tokens, svc.backend.n_ctx // 2)
    tokens, truncated = svc.prompts.fim_tokens(prefix + typed, suffix, extra, budget=budget)
    record = {"prefix": prefix + typed, "suffix": suffix}
    return await _respond(request, svc, tokens, sampling, stream, truncated, not cache_prompt,
                          fields, record, "/infill")


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
    sampling, stream, cache_prompt, fields = _params(f, svc)
    f.check()
    return await _respond(request, svc, tokens, sampling, stream, False, not cache_prompt,
                          fields, prompt, "/completion")


async def _respond(request, svc, tokens, sampling, stream, truncated, clear_cache, fields,
                   record_prompt, endpoint):
    kw = {"truncated": truncated, "clear_cache": clear_cache}
    if not stream:
        result = await svc.complete(request, tokens, sampling, **kw)
        completion_id = await svc.record(record_prompt, result.text, endpoint)
        body = _final(svc, result, sampling, result.text, completion_id)
        return JSONResponse(_select(body, fields),
                            headers={"X-Completion-Id": completion_id} if completion_id else {})
    job = await svc.start_job(request, tokens, sampling, **kw)

    async def events():
        text = []
        async for piece in svc.pieces(job):
            text.append(piece)
            yield sse({"index": 0, "content": piece, "tokens": [], "stop": False,
                       "id_slot": 0})
        completion_id = await svc.record(record_prompt, "".join(text), endpoint)
        yield sse(_select(_final(svc, job.result, sampling, "", completion_id), fields))

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


routes = [
    Route("/infill", infill, methods=["POST"]),
    Route("/completion", completion, methods=["POST"]),
]
