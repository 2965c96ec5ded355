"""The HTTP app: ``create_app(settings, backend=None)``.

Run with ``csound-assistant serve MODEL.gguf``. The backend (a ``LlamaBackend`` unless a test
injects a fake) is loaded once; routes come from ``api_openai``, ``api_ollama`` and
``api_llamacpp``; this module holds what they share (``Service``) and the project routes
(/health, /metrics, /complete, /v1/csound/check, /v1/feedback); ``guard`` holds the middleware
(Host, Origin, API key, JSON content type, body limit) and ``checks`` the sandbox's admission.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from csound_assistant.errors import IsolationUnavailable, SandboxRefused

from .backend import Sampling
from .checks import CheckGate, CheckTimeout, default_timeout
from .decoder_setup import settle
from .engine import Engine, QueueFull, QueueTimeout, Result
from .guard import BodyTooLarge, GuardMiddleware, HostPolicy, OriginPolicy, SafetyMiddleware
from .headers import EXPOSED, csound_headers
from .prompts import PromptBuilder, PromptError
from .settings import Settings
from .validation import ApiError, Fields, error_response, read_json, sampling_from
from .verify import Answer

log = logging.getLogger("csound_assistant.serve")
MAX_CODE_CHARS = 200_000


class Service:
    """What every route needs: settings, model, prompts, the engine and the feedback store."""

    def __init__(self, settings: Settings, backend):
        self.settings, self.backend = settings, backend
        self.prompts = PromptBuilder(backend, settings.prompt_format,
                                     opcode_reference=settings.opcode_reference)
        if settings.parallel > 1 and hasattr(backend, "parallel_context"):
            from .batched import BatchedEngine

            self.engine = BatchedEngine(backend, parallel=settings.parallel,
                                        max_queue=settings.max_queue,
                                        request_timeout=settings.request_timeout)
        else:
            self.engine = Engine(backend, max_queue=settings.max_queue,
                                 request_timeout=settings.request_timeout)
        self.checks = CheckGate(workers=settings.check_workers, max_queue=settings.max_queue,
                                request_timeout=settings.request_timeout)
        self.decoder = settle(backend)  # which decoder runs, and why (/health)
        self._feedback_pool = None
        self.feedback = None
        self.started = time.time()

    def start(self) -> None:
        """Call in the serving event loop."""
        self.engine.start()
        self.checks.start()
        if self.settings.feedback_db:
            from csound_assistant.feedback_store import FeedbackStore

            # sqlite connections belong to one thread: the store lives in its own.
            self._feedback_pool = ThreadPoolExecutor(1, thread_name_prefix="feedback")
            self.feedback = self._feedback_pool.submit(
                FeedbackStore, self.settings.feedback_db).result()

    def stop(self) -> None:
        self.engine.stop()
        if self._feedback_pool:
            self._feedback_pool.submit(self.feedback.close).result()
            self._feedback_pool.shutdown(wait=True)
            self._feedback_pool = self.feedback = None

    # --- model names -----------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def check_model(self, name) -> None:
        if name in (None, "", self.model_name, f"{self.model_name}:latest"):
            return
        raise ApiError(404, f"model {name!r} not found; this server serves "
                            f"{self.model_name!r}", param="model")

    # --- generation ------------------------------------------------------------------------
    def fit(self, tokens: list[int], sampling: Sampling) -> None:
        n_ctx = self.backend.n_ctx
        if len(tokens) >= n_ctx:
            raise ApiError(400, f"the prompt is {len(tokens)} tokens but the context holds "
                                f"{n_ctx} (including at least one generated token); shorten it "
                                "or restart the server with a larger --n-ctx", param="prompt")
        if tokens and max(tokens) >= self.backend.n_vocab:
            raise ApiError(400, f"token id {max(tokens)} is outside the vocabulary "
                                f"(0..{self.backend.n_vocab - 1})", param="prompt")

    async def start_job(self, request: Request | None, tokens, sampling: Sampling, **kw):
        """Queue a generation; ``request`` (None for in-process callers such as the eval) is
        watched so that a client that hangs up stops it."""
        self.fit(tokens, sampling)
        try:
            job = self.engine.submit(tokens, sampling, stop_ids=self.prompts.stop_ids, **kw)
        except QueueFull as exc:
            raise _busy(exc) from None
        job.watcher = asyncio.create_task(_cancel_on_disconnect(request, job)) \
            if request is not None else asyncio.create_task(asyncio.sleep(0))
        try:
            await job.wait_started()
        except QueueTimeout as exc:
            job.watcher.cancel()
            self.engine.metrics.counts["timeout_while_queued"] += 1
            raise ApiError(503, f"{exc} (waited {self.settings.request_timeout:g} s)",
                           headers={"Retry-After": str(self.engine.retry_after())}) from None
        except BaseException:
            job.watcher.cancel()
            job.cancel()
            raise
        return job

    async def complete(self, request: Request | None, tokens, sampling: Sampling,
                       **kw) -> Result:
        job = await self.start_job(request, tokens, sampling, **kw)
        try:
            async for _ in job.pieces():
                pass
        finally:
            job.cancel()
            job.watcher.cancel()
        return job.result

    async def complete_checked(self, request: Request | None, tokens, sampling: Sampling,
                               **kw) -> Answer:
        """A whole chat answer. With ``--verify N``: the first of up to N candidates that
        plays, else a repair, else the best (``verify.verified_chat``). Otherwise, with
        ``--repair N``, an answer whose Csound does not compile goes back to the model with
        Csound's first error (csound_assistant.repair, as ``eval run --repair N``); a fix is
        returned only if it compiles."""
        if self.settings.verify:
            from .verify import verified_chat

            return await verified_chat(self, request, tokens, sampling, **kw)
        result = await self.complete(request, tokens, sampling, **kw)
        if not self.settings.repair:
            return Answer(result, first=result, spent=[result])
        from anyio import from_thread

        from csound_assistant.repair import repaired

        attempts: list[Result] = []

        def chat(messages: list[dict]) -> str:  # in a worker thread: the engine is async
            try:
                attempts.append(from_thread.run(self.complete, request,
                                                self.prompts.chat_tokens(messages), sampling))
            except (ApiError, PromptError) as exc:  # e.g. code + error exceed the context
                log.info("repair skipped: %s", exc)
                return ""  # no code: repairing stops, the first answer stands
            return attempts[-1].text

        fix, made = await run_in_threadpool(repaired, result.text, self.settings.repair, chat)
        self.engine.metrics.counts["repair_requests"] += made
        spent = [result, *attempts]
        if fix is None:
            return Answer(result, repairs=made, first=result, spent=spent)
        self.engine.metrics.counts["repaired_answers"] += 1
        return Answer(attempts[-1], repairs=made, first=result, spent=spent)

    async def complete_fim_checked(self, request: Request | None, tokens, sampling: Sampling,
                                   prefix: str, suffix: str, **kw) -> Answer:
        """A whole FIM middle; with ``--verify N`` and a prefix + suffix that make a whole CSD
        or orchestra, the first of up to N candidates whose file compiles."""
        if self.settings.verify:
            from .verify import verified_fim

            return await verified_fim(self, request, tokens, sampling, prefix, suffix, **kw)
        result = await self.complete(request, tokens, sampling, **kw)
        return Answer(result, first=result, spent=[result])

    def answer_headers(self, answer: Answer) -> dict:
        return answer.headers(repair=bool(self.settings.repair))

    async def pieces(self, job):
        """Text pieces of a started job; stops the job when the consumer goes away."""
        try:
            async for piece in job.pieces():
                yield piece
        finally:
            job.cancel()
            job.watcher.cancel()

    async def record(self, prompt, output: str, endpoint: str) -> str | None:
        if self.feedback is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            completion_id = await loop.run_in_executor(
                self._feedback_pool, lambda: self.feedback.record_completion(
                    prompt if isinstance(prompt, str) else _as_text(prompt), output,
                    self.model_name, endpoint))
        except Exception:  # feedback is best effort: never fail a completion over it
            log.exception("could not record a completion")
            return None
        return str(completion_id)

    def sampling(self, f: Fields, **kw) -> Sampling:
        return sampling_from(f, self.settings, **kw)


def _busy(exc: QueueFull) -> ApiError:
    return ApiError(503, str(exc), headers={"Retry-After": str(exc.retry_after)})


def _as_text(obj) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


async def _cancel_on_disconnect(request: Request, job) -> None:
    """Cancel ``job`` as soon as the client closes its connection."""
    with contextlib.suppress(Exception):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel()
                return


# --- project routes ---------------------------------------------------------------------------
async def health(request: Request):
    svc: Service = request.app.state.service
    return JSONResponse({
        "status": "ok", "model": svc.model_name, "queue_depth": svc.engine.queue_depth,
        "busy": svc.engine.busy, "max_queue": svc.settings.max_queue,
        "retry_after_s": svc.engine.retry_after(), "checks": svc.checks.describe(),
        "opcode_reference": svc.prompts.lookups.describe(), "lookups": svc.prompts.lookups.names,
        "decoder": svc.decoder.describe(),
        **svc.engine.metrics.summary(),
    })


async def metrics(request: Request):
    svc: Service = request.app.state.service
    m = svc.engine.metrics.summary()
    lines = [
        "# TYPE csound_assistant_queue_depth gauge",
        f"csound_assistant_queue_depth {svc.engine.queue_depth}",
        "# TYPE csound_assistant_busy gauge",
        f"csound_assistant_busy {int(svc.engine.busy)}",
    ]
    for name, value in sorted(m["counts"].items()):
        lines += [f"# TYPE csound_assistant_{name}_total counter",
                  f"csound_assistant_{name}_total {value}"]
    for label, key in (("time_to_first_token_seconds", "time_to_first_token_s"),
                       ("decode_tokens_per_second", "decode_tokens_per_s")):
        for stat, value in m[key].items():
            if value is not None:
                lines.append(f'csound_assistant_{label}{{stat="{stat}"}} {value:.6f}')
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def complete(request: Request):
    """The seed's API: {prompt, max_tokens, temperature} -> {completion}."""
    svc: Service = request.app.state.service
    f = Fields(await read_json(request))
    prompt = f.get("prompt", str, required=True)
    sampling = svc.sampling(f)
    f.check()
    result = await svc.complete(request, svc.prompts.text_tokens(prompt), sampling)
    completion_id = await svc.record(prompt, result.text, "/complete")
    body = {"completion": result.text}
    if completion_id:
        body["completion_id"] = completion_id
    return JSONResponse(body, headers={**_id_header(completion_id), **csound_headers(svc)})


def _id_header(completion_id):
    return {"X-Completion-Id": completion_id} if completion_id else {}


async def csound_check(request: Request):
    """Compile (and optionally render) Csound in the sandbox; diagnostics carry line numbers."""
    svc: Service = request.app.state.service
    f = Fields(await read_json(request))
    code = f.get("code", str, required=True)
    do_render = f.get("render", bool, False)
    seconds = f.get("seconds", float, 2.0, low=0.01, high=10.0)
    if code is not None and len(code) > MAX_CODE_CHARS:
        f.problems.append(f"'code' is {len(code)} characters; the limit is {MAX_CODE_CHARS}")
    if code is not None and not code.strip():
        f.problems.append("'code' is empty")
    f.check()
    try:
        from csound_assistant import sandbox
    except ImportError:
        raise ApiError(501, "the Csound sandbox is not installed in this build") from None
    fn, kw = (sandbox.render, {"seconds": seconds}) if do_render else (sandbox.check, {})
    try:
        result, limit = await svc.checks.run(fn, code, **kw)
    except SandboxRefused as exc:
        return JSONResponse({"ok": False, "category": "refused", "diagnostics": [],
                             "refused": [str(exc)], "rendered": False})
    except IsolationUnavailable as exc:  # nothing confines Csound here: run nothing
        raise ApiError(503, str(exc)) from None
    except QueueFull as exc:
        raise _busy(exc) from None
    except CheckTimeout as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        raise ApiError(exc.status, str(exc), headers=headers) from None
    body = _check_json(result, do_render)
    if result.category == "timeout" and limit < default_timeout(fn):
        body["notes"].append(f"stopped at {limit:.1f} s by the server's --timeout of "
                             f"{svc.settings.request_timeout:g} s (waiting included)")
    return JSONResponse(body)


def _check_json(result, rendered: bool) -> dict:
    body = {
        "ok": result.ok, "category": result.category, "rendered": rendered,
        "diagnostics": [{"line": d.line, "severity": d.severity, "message": d.message}
                        for d in result.diagnostics],
        "refused": list(result.refused), "notes": list(getattr(result, "notes", [])),
        "stderr": (result.stderr or "")[-4000:],
    }
    if rendered:
        body["audio"] = {k: getattr(result, k, None)
                         for k in ("peak", "rms", "silent", "clipping", "nan", "seconds")}
    return body


async def feedback(request: Request):
    svc: Service = request.app.state.service
    if svc.feedback is None:
        raise ApiError(501, "feedback is off: start the server with --feedback-db PATH")
    from csound_assistant.feedback_store import completion_key

    f = Fields(await read_json(request))
    key = None
    if f.data.get("id") is None:
        f.problems.append("'id' is required: the completion id the server returned "
                          "(X-Completion-Id or completion_id)")
    else:
        try:
            key = completion_key(f.data["id"])
        except ValueError as exc:
            f.problems.append(f"'id': {exc}")
    good = f.get("good", bool, required=True)
    correction = f.get("correction", str)
    f.check()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(svc._feedback_pool,
                                   lambda: svc.feedback.mark(key, good, correction))
    except KeyError:
        raise ApiError(404, f"no completion with id {key}", param="id") from None
    return JSONResponse({"id": str(key), "good": good, "recorded": True})


# --- the app ----------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, backend=None) -> Starlette:
    """The app. ``backend`` None: load ``settings.model_path`` with llama.cpp at startup."""
    from . import api_llamacpp, api_ollama, api_openai

    settings = settings or Settings.from_env()
    holder = {"service": Service(settings, backend) if backend is not None else None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        owned = holder["service"] is None
        if owned:
            from .decoder_setup import load_backend

            loaded = await run_in_threadpool(load_backend, settings)
            holder["service"] = Service(settings, loaded)
        service = holder["service"]
        app.state.service = service
        service.start()
        log.info("serving %s as %r (chat template: %s, FIM: %s, decoder: %s)",
                 settings.model_path, settings.model_name, service.prompts.template_source,
                 service.prompts.fim_source, service.decoder.active)
        try:
            yield
        finally:
            service.stop()
            if owned:
                service.backend.close()
                holder["service"] = None

    async def api_error(request, exc: ApiError):
        return error_response(request.url.path, exc)

    async def prompt_error(request, exc: PromptError):
        return error_response(request.url.path, ApiError(exc.status, str(exc)))

    async def too_large(request, exc):
        return error_response(request.url.path, ApiError(
            413, f"the request body is larger than the limit of {settings.max_body_bytes} bytes"))

    async def internal(request, exc):
        log.error("internal error on %s: %r", request.url.path, exc)
        return error_response(request.url.path, ApiError(
            500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        message = ("no such route: " + request.url.path) if status == 404 else \
            f"method {request.method} is not allowed on {request.url.path}"
        return error_response(request.url.path, ApiError(status, message))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/complete", complete, methods=["POST"]),
        Route("/v1/csound/check", csound_check, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        *api_openai.routes, *api_ollama.routes, *api_llamacpp.routes,
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan,
        exception_handlers={ApiError: api_error, PromptError: prompt_error,
                            BodyTooLarge: too_large, 404: not_found, 405: not_found,
                            Exception: internal},
    )
    app.state.settings = settings
    # add_middleware wraps: the last added runs first. Guard -> CORS -> key, type, size -> app.
    app.add_middleware(SafetyMiddleware, api_key=settings.api_key,
                       max_body_bytes=settings.max_body_bytes)
    origins = OriginPolicy.from_settings(settings.allowed_origins())
    if settings.allowed_origins():
        # Outside the key check: a browser's preflight (OPTIONS) never carries the key.
        app.add_middleware(CORSMiddleware, allow_origins=sorted(origins.exact) + (
                               ["*"] if origins.any else []),
                           allow_origin_regex=origins.cors_regex(),
                           allow_methods=["GET", "POST"], max_age=600,
                           allow_headers=["Authorization", "Content-Type", "x-api-key"],
                           expose_headers=EXPOSED)
    app.add_middleware(GuardMiddleware, origins=origins, port=settings.port,
                       hosts=HostPolicy.from_settings(settings.allowed_host_list(),
                                                      settings.host))
    return app
