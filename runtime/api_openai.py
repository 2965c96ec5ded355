"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions (SSE streams).

``/v1/completions`` with a ``suffix`` is a fill-in-the-middle request (Continue's
``useLegacyCompletionsEndpoint``). Usage carries ``prompt_tokens_details.cached_tokens``: the
prompt tokens served from the prefix cache.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from . import verify
from .engine import Result
from .fim_trim import trim_middle, trimmed
from .headers import csound_headers
from .prompts import normalize_messages
from .validation import ApiError, Fields, read_json

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "timeout": "length"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def usage(result: Result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens}}


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def list_models(request: Request):
    svc = request.app.state.service
    return JSONResponse({"object": "list", "data": [_model(svc)]})


async def get_model(request: Request):
    svc = request.app.state.service
    svc.check_model(request.path_params["model"])
    return JSONResponse(_model(svc))


def _model(svc) -> dict:
    return {"id": svc.model_name, "object": "model", "created": int(svc.started),
            "owned_by": "csound-assistant", "meta": {"n_ctx": svc.backend.n_ctx}}


def _common(f: Fields, svc):
    svc.check_model(f.get("model", str))
    n = f.get("n", int, 1)
    if n not in (None, 1):
        f.problems.append(f"'n' must be 1 (one choice per request), got {n}")
    if f.data.get("logprobs") not in (None, False, 0):
        f.problems.append("'logprobs' is not supported by this server")
    stream = f.get("stream", bool, False)
    options = f.get("stream_options", dict, {}) or {}
    include_usage = bool(options.get("include_usage"))
    sampling = svc.sampling(f, max_tokens_keys=("max_completion_tokens", "max_tokens"))
    return stream, include_usage, sampling


async def chat_completions(request: Request):
    svc = request.app.state.service
    f = Fields(await read_json(request))
    messages = f.get("messages", list, required=True)
    stream, include_usage, sampling = _common(f, svc)
    f.check()
    messages = normalize_messages(messages)
    tokens = svc.prompts.chat_tokens(messages)
    ident, created = _ident("chatcmpl"), int(time.time())
    head = {"id": ident, "created": created, "model": svc.model_name}
    if not stream:
        answer = await svc.complete_checked(request, tokens, sampling)
        result = answer.result
        completion_id = await svc.record(messages, result.text, "/v1/chat/completions")
        return JSONResponse({
            **head, "object": "chat.completion", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": None, "finish_reason": FINISH[result.finish_reason]}],
            "usage": usage(result), **_cid(completion_id)},
            headers={**_hdr(completion_id), **csound_headers(svc, answer)})
    # --verify: the answer is checked first, then streamed
    answer = await svc.complete_checked(request, tokens, sampling) if svc.settings.verify \
        else None
    job = None if answer else await svc.start_job(request, tokens, sampling)

    async def events():
        chunk = {**head, "object": "chat.completion.chunk", "system_fingerprint": None}
        yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                               "content": ""},
                                         "logprobs": None, "finish_reason": None}]})
        text = []
        async for piece in (verify.pieces(answer) if answer else svc.pieces(job)):
            text.append(piece)
            yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": piece},
                                             "logprobs": None, "finish_reason": None}]})
        result = answer.result if answer else job.result
        completion_id = await svc.record(messages, "".join(text), "/v1/chat/completions")
        yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                         "finish_reason": FINISH[result.finish_reason]}],
                   **_cid(completion_id)})
        if include_usage:
            yield sse({**chunk, "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **csound_headers(svc, answer)})


async def completions(request: Request):
    svc = request.app.state.service
    f = Fields(await read_json(request))
    prompt = f.data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        f.problems.append("'prompt' is required and must be a string (one prompt per request)")
    suffix = f.get("suffix", str)
    echo = f.get("echo", bool, False)
    stream, include_usage, sampling = _common(f, svc)
    f.check()
    truncated = False
    if suffix is not None:  # fill in the middle
        budget = svc.backend.n_ctx - min(sampling.max_tokens, svc.backend.n_ctx // 2)
        tokens, truncated = svc.prompts.fim_tokens(prompt, suffix, budget=budget)
    else:
        tokens = svc.prompts.text_tokens(prompt)
    ident, created = _ident("cmpl"), int(time.time())
    head = {"id": ident, "object": "text_completion", "created": created,
            "model": svc.model_name}
    lead = prompt if echo else ""
    record_prompt = prompt if suffix is None else {"prefix": prompt, "suffix": suffix}
    # --verify: a FIM middle that completes a whole CSD or orchestra is compiled first
    answer = await svc.complete_fim_checked(request, tokens, sampling, prompt, suffix,
                                            truncated=truncated) \
        if suffix is not None and svc.settings.verify else None
    if not stream:
        result = answer.result if answer else \
            await svc.complete(request, tokens, sampling, truncated=truncated)
        text = result.text if suffix is None else trim_middle(prompt, result.text, suffix)
        completion_id = await svc.record(record_prompt, text, "/v1/completions")
        return JSONResponse({
            **head, "choices": [{"text": lead + text, "index": 0, "logprobs": None,
                                 "finish_reason": FINISH[result.finish_reason]}],
            "usage": usage(result), **_cid(completion_id)},
            headers={**_hdr(completion_id), **csound_headers(svc, answer)})
    job = None if answer else await svc.start_job(request, tokens, sampling, truncated=truncated)

    async def events():
        text = []
        if lead:
            yield sse({**head, "choices": [{"text": lead, "index": 0, "logprobs": None,
                                            "finish_reason": None}]})
        source = verify.pieces(answer) if answer else svc.pieces(job)
        async for piece in (source if suffix is None else trimmed(source, prompt, suffix)):
            text.append(piece)
            yield sse({**head, "choices": [{"text": piece, "index": 0, "logprobs": None,
                                            "finish_reason": None}]})
        result = answer.result if answer else job.result
        completion_id = await svc.record(record_prompt, "".join(text), "/v1/completions")
        yield sse({**head, "choices": [{"text": "", "index": 0, "logprobs": None,
                                        "finish_reason": FINISH[result.finish_reason]}],
                   **_cid(completion_id)})
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **csound_headers(svc, answer)})


def _ident(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _cid(completion_id) -> dict:
    return {"completion_id": completion_id} if completion_id else {}


def _hdr(completion_id) -> dict:
    return {"X-Completion-Id": completion_id} if completion_id else {}


async def not_supported(request: Request):
    raise ApiError(501, f"{request.url.path} is not offered by this server")


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", not_supported, methods=["POST"]),
]
