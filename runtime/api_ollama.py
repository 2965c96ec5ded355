"""Ollama-compatible routes: /api/generate (``suffix`` = FIM), /api/chat, /api/tags, /api/show,
/api/ps, /api/version. Streams are NDJSON and on by default, as in Ollama.

A ``suffix`` field (even an empty one: the cursor at the end of a file) makes /api/generate a
fill-in-the-middle request; ``raw`` sends the prompt as is; otherwise the prompt becomes a user
turn of the chat template, as Ollama does.
"""

from __future__ import annotations

import datetime
import hashlib
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from csound_assistant.constants import GGUF_FILE_TYPES

from . import verify
from .engine import Result
from .fim_trim import trim_middle, trimmed
from .headers import csound_headers
from .prompts import normalize_messages
from .validation import ApiError, Fields, read_json

OLLAMA_COMPAT_VERSION = "0.12.0"  # the Ollama API version whose routes and fields we follow
NDJSON = "application/x-ndjson"
DONE_REASON = {"stop": "stop", "length": "length", "cancelled": "stop", "timeout": "length"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _details(svc) -> dict:
    d = svc.backend.describe()
    n = d.get("n_params") or 0
    size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
    file_type = d.get("file_type")
    quant = GGUF_FILE_TYPES.get(int(file_type), str(file_type)) if file_type is not None \
        else "unknown"
    return {"parent_model": "", "format": "gguf", "family": d["architecture"],
            "families": [d["architecture"]], "parameter_size": size,
            "quantization_level": quant}


def _entry(svc) -> dict:
    d = svc.backend.describe()
    stamp = f"{d['path']}:{d['size']}:{d.get('lora')}"
    return {"name": f"{svc.model_name}:latest", "model": f"{svc.model_name}:latest",
            "modified_at": _now(), "size": d["size"],
            "digest": hashlib.sha256(stamp.encode()).hexdigest(), "details": _details(svc)}


async def tags(request: Request):
    return JSONResponse({"models": [_entry(request.app.state.service)]})


async def ps(request: Request):
    entry = _entry(request.app.state.service)
    return JSONResponse({"models": [{**entry, "expires_at": "2999-01-01T00:00:00Z",
                                     "size_vram": 0}]})


async def version(request: Request):
    return JSONResponse({"version": OLLAMA_COMPAT_VERSION})


async def show(request: Request):
    svc = request.app.state.service
    f = Fields(await read_json(request))
    name = f.get("model", str) or f.get("name", str)
    f.check()
    if not name:
        raise ApiError(400, "'model' is required")
    svc.check_model(name)
    d = svc.backend.describe()
    template = svc.prompts.ollama_template()
    parameters = "\n".join(f'stop "{s}"' for s in svc.prompts.stop_words())
    modelfile = f"FROM {d['path']}\n" + (f"ADAPTER {d['lora']}\n" if d["lora"] else "") + \
        f'TEMPLATE """{template}"""\n' + \
        "".join(f"PARAMETER {p}\n" for p in parameters.splitlines())
    arch = d["architecture"]
    capabilities = ["completion"] + (["insert"] if svc.prompts.fim else [])
    return JSONResponse({
        "license": svc.backend.metadata.get("general.license", ""),
        "modelfile": modelfile, "parameters": parameters, "template": template,
        "details": _details(svc), "capabilities": capabilities, "modified_at": _now(),
        "model_info": {"general.architecture": arch, "general.parameter_count": d["n_params"],
                       f"{arch}.context_length": d["n_ctx"],
                       **{k: v for k, v in svc.prompts.describe().items()}},
    })


def _options(f: Fields, svc):
    options = f.get("options", dict, {}) or {}
    of = Fields(options, where="options.")
    sampling = svc.sampling(of, max_tokens_keys=("num_predict",), unlimited=(-1, -2))
    f.problems += of.problems
    if f.data.get("format"):
        f.problems.append("'format' (structured output) is not supported by this server")
    if f.data.get("images"):
        f.problems.append("'images' are not supported by this model")
    return sampling


def _counts(result: Result) -> dict:
    ns = 1_000_000_000
    return {"total_duration": int((result.queued_s + result.prompt_s + result.decode_s) * ns),
            "load_duration": 0, "prompt_eval_count": result.prompt_tokens - result.cached_tokens,
            "prompt_eval_duration": int(result.prompt_s * ns),
            "eval_count": result.completion_tokens, "eval_duration": int(result.decode_s * ns)}


async def generate(request: Request):
    svc = request.app.state.service
    f = Fields(await read_json(request))
    svc.check_model(f.get("model", str, required=True))
    prompt = f.get("prompt", str, "")
    suffix = f.get("suffix", str)
    system = f.get("system", str)
    raw = f.get("raw", bool, False)
    stream = f.get("stream", bool, True)
    sampling = _options(f, svc)
    f.check()
    head = {"model": f"{svc.model_name}:latest"}
    if not prompt and suffix is None:  # Ollama's "load the model" request
        return JSONResponse({**head, "created_at": _now(), "response": "", "done": True,
                             "done_reason": "load"})
    truncated = False
    if suffix is not None:
        budget = svc.backend.n_ctx - min(sampling.max_tokens, svc.backend.n_ctx // 2)
        tokens, truncated = svc.prompts.fim_tokens(prompt, suffix, budget=budget)
        record_prompt = {"prefix": prompt, "suffix": suffix}
    elif raw:
        tokens, record_prompt = svc.prompts.text_tokens(prompt), prompt
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": prompt}]
        tokens, record_prompt = svc.prompts.chat_tokens(messages), messages
    return await _respond(request, svc, tokens, sampling, stream, truncated, head,
                          record_prompt, "/api/generate",
                          lambda text: {"response": text}, checked=not raw and suffix is None,
                          fim=(prompt, suffix) if suffix is not None else None)


async def chat(request: Request):
    svc = request.app.state.service
    f = Fields(await read_json(request))
    svc.check_model(f.get("model", str, required=True))
    messages = f.get("messages", list, required=True)
    stream = f.get("stream", bool, True)
    sampling = _options(f, svc)
    f.check()
    messages = normalize_messages(messages)
    tokens = svc.prompts.chat_tokens(messages)
    head = {"model": f"{svc.model_name}:latest"}
    return await _respond(request, svc, tokens, sampling, stream, False, head, messages,
                          "/api/chat",
                          lambda text: {"message": {"role": "assistant", "content": text}},
                          checked=True)


async def _respond(request, svc, tokens, sampling, stream, truncated, head, record_prompt,
                   endpoint, body, checked=False, fim=None):
    answer = None
    if checked and (svc.settings.verify or not stream):  # a chat answer: --verify, --repair
        answer = await svc.complete_checked(request, tokens, sampling, truncated=truncated)
    elif fim and svc.settings.verify:  # a FIM middle, compiled when the file is whole
        answer = await svc.complete_fim_checked(request, tokens, sampling, *fim,
                                                truncated=truncated)
    headers = csound_headers(svc, answer)
    verified = {"csound_verified": answer.path} if answer and answer.path else {}
    if not stream:
        result = answer.result if answer else \
            await svc.complete(request, tokens, sampling, truncated=truncated)
        text = trim_middle(fim[0], result.text, fim[1]) if fim else result.text
        completion_id = await svc.record(record_prompt, text, endpoint)
        extra = {"completion_id": completion_id} if completion_id else {}
        return JSONResponse(
            {**head, "created_at": _now(), **body(text), "done": True,
             "done_reason": DONE_REASON[result.finish_reason], **_counts(result), **extra,
             **verified},
            headers={**headers, **({"X-Completion-Id": completion_id} if completion_id else {})})
    # --verify: the answer is checked first, then streamed
    job = None if answer else await svc.start_job(request, tokens, sampling, truncated=truncated)

    async def lines():
        text = []
        source = verify.pieces(answer) if answer else svc.pieces(job)
        async for piece in (trimmed(source, *fim) if fim else source):
            text.append(piece)
            yield _line({**head, "created_at": _now(), **body(piece), "done": False})
        result = answer.result if answer else job.result
        completion_id = await svc.record(record_prompt, "".join(text), endpoint)
        extra = {"completion_id": completion_id} if completion_id else {}
        yield _line({**head, "created_at": _now(), **body(""), "done": True,
                     "done_reason": DONE_REASON[result.finish_reason], **_counts(result),
                     **extra, **verified})

    return StreamingResponse(lines(), media_type=NDJSON, headers=headers)


routes = [
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
]
