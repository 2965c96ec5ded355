"""Commands of the runtime stage: ``csound-assistant serve MODEL.gguf`` (or ``--run NAME``)."""

from __future__ import annotations

from pathlib import Path

import click

from csound_assistant.clicommon import domain_errors, work_dir_option
from csound_assistant.constants import DEFAULT_MODEL_NAME


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False),
                envvar="CSOUND_ASSISTANT_MODEL_PATH")
@click.option("--run", default=None,
              help="Serve a run's packaged GGUF in the prompt format it was trained in, both "
                   "from its export record: a run name (a folder of --work-dir) or a run folder; "
                   "instead of MODEL.")
@work_dir_option
@click.option("--lora", "lora_path", type=click.Path(dir_okay=False), default=None,
              envvar="CSOUND_ASSISTANT_LORA_PATH", help="A GGUF LoRA adapter to apply.")
@click.option("--model-name", default=None, envvar="CSOUND_ASSISTANT_MODEL_NAME",
              help=f"Name clients use for the model [default: {DEFAULT_MODEL_NAME}].")
@click.option("--prompt-format", default=None, envvar="CSOUND_ASSISTANT_PROMPT_FORMAT",
              help="Use the project's chat template and FIM tokens (chatml, llama2-codellama) "
                   "instead of the GGUF's; required when the GGUF has no chat template.")
@click.option("--host", default=None, envvar="CSOUND_ASSISTANT_HOST",
              help="Bind address [default: 127.0.0.1, this machine only].")
@click.option("--port", type=int, default=None, envvar="CSOUND_ASSISTANT_PORT",
              help="TCP port [default: 8080].")
@click.option("--api-key", default=None, envvar="CSOUND_ASSISTANT_API_KEY",
              help="Require 'Authorization: Bearer KEY' (or 'x-api-key: KEY') on every route "
                   "except /health.")
@click.option("--cors-origins", default=None, envvar="CSOUND_ASSISTANT_CORS_ORIGINS",
              help="Comma-separated web origins whose pages may call the API (a browser-based "
                   "editor, e.g. https://ide.example.org; vscode-webview://* for any origin of "
                   "a scheme), or *. Requests from other pages' origins get 403 [default: none].")
@click.option("--allowed-hosts", default=None, envvar="CSOUND_ASSISTANT_ALLOWED_HOSTS",
              help="Comma-separated names clients may use for this server in the Host header "
                   "besides localhost, 127.0.0.1, [::1] and the bind address (*.example.org for "
                   "subdomains, * for any); others get 403, a guard against DNS rebinding "
                   "[default: none].")
@click.option("--n-ctx", type=int, default=None, help="Context length in tokens [default: 4096].")
@click.option("--threads", "n_threads", type=int, default=None, help="CPU threads.")
@click.option("--n-gpu-layers", type=int, default=None, help="Layers on the GPU (-1: all).")
@click.option("--max-queue", type=int, default=None,
              help="Requests allowed to wait; more get 503 + Retry-After [default: 16].")
@click.option("--timeout", "request_timeout", type=float, default=None,
              help="Seconds a request may take, waiting included [default: 120].")
@click.option("--max-tokens-limit", type=int, default=None,
              help="Largest max_tokens accepted [default: 2048].")
@click.option("--max-body-bytes", type=int, default=None,
              help="Request body limit; larger bodies get 413 [default: 2000000].")
@click.option("--cache-slots", type=int, default=None,
              help="KV states kept for prompt-prefix reuse across files [default: 4].")
@click.option("--parallel", type=int, default=None,
              help="Decode up to N requests together in one batch, each on its own sequence "
                   "with its own cached prefix [default: 1, one at a time].")
@click.option("--feedback-db", type=click.Path(dir_okay=False), default=None,
              envvar="CSOUND_ASSISTANT_FEEDBACK_DB",
              help="Record every completion (SQLite) and accept POST /v1/feedback.")
@click.option("--check-workers", type=int, default=None,
              help="Csound sandbox checks (/v1/csound/check) run at a time; they share "
                   "--max-queue and --timeout with generation [default: 2].")
@click.option("--repair", type=int, default=None,
              help="Send a non-streamed chat answer whose Csound does not compile back to the "
                   "model with Csound's error, up to N times; a fix is used only if it "
                   "compiles [default: 0, off].")
@click.option("--verify", type=int, default=None,
              help="Make up to N candidates for a chat answer (batched with --parallel), render "
                   "each in the sandbox and return the first that plays; else a repair, else "
                   "the best, marked unverified (X-Csound-Verified header). Streamed answers "
                   "arrive after the check [default: 0, off].")
@click.option("--verify-seconds", type=float, default=None,
              help="Seconds a verified request may take, generation and checks together; "
                   "--timeout still applies [default: 60].")
@click.option("--decoder", type=click.Choice(["plain", "csound"]), default=None,
              envvar="CSOUND_ASSISTANT_DECODER",
              help="csound: where Csound expects an opcode only real opcodes can be sampled, "
                   "with as many outputs and arguments as their synopses take (code blocks "
                   "and FIM middles only; prose is never touched); plain: the model's own "
                   "choice [default: csound].")
@click.option("--opcode-reference/--no-opcode-reference", default=None,
              help="Add the manual's synopses of the opcodes a chat request names, for a model "
                   "trained with them (its GGUF says so) [default: on].")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def cli(model, run, work_dir, log_level, **options):
    """Serve MODEL (a GGUF), or the GGUF a run packages (--run), over OpenAI, Ollama and
    llama.cpp-style HTTP APIs.

    \b
    Routes: /v1/models /v1/chat/completions /v1/completions (suffix = FIM)
            /infill /completion (llama.vscode) /api/generate /api/chat /api/tags /api/show
            /complete /v1/csound/check /v1/feedback /health /metrics
    \b
    Examples:
        csound-assistant serve --run default
        csound-assistant serve runs/default/export/csound-assistant.Q8_0.gguf
        csound-assistant serve model.gguf --prompt-format chatml --api-key secret --port 8080
    """
    import logging

    import uvicorn

    from .decoder_setup import load_backend
    from .server import create_app
    from .settings import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if model and run:
        raise click.UsageError("give MODEL (a .gguf) or --run, not both")
    with domain_errors():
        if run:
            model, recorded_format = packaged_model(run, work_dir)
            options["prompt_format"] = options["prompt_format"] or recorded_format
        settings = Settings.from_env(model_path=model, **options)
        if settings.model_path is None:
            raise click.UsageError("give MODEL (a .gguf) or --run NAME (a run's packaged GGUF)")
        # the decoder's opcode table from the GGUF, else the manual, else plain: never a crash
        backend = load_backend(settings)
        app = create_app(settings, backend)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        click.echo(f"warning: listening on {settings.host} without --api-key: anyone who can "
                   "reach this port can use the model", err=True)
    if settings.host in ("0.0.0.0", "::") and not settings.allowed_hosts:
        click.echo("note: clients on other machines must address this server by an IP address "
                   "(Host header); to use a name, add it with --allowed-hosts", err=True)
    if "*" in settings.allowed_host_list():
        click.echo("warning: --allowed-hosts '*' turns off the DNS-rebinding guard: a web page "
                   "whose name is re-pointed at this machine can use the model", err=True)
    if "*" in settings.allowed_origins() and not settings.api_key:
        click.echo("warning: --cors-origins '*' without --api-key: any web page you open can "
                   "use the model (and read its answers)", err=True)
    if settings.verify > settings.parallel:
        click.echo(f"note: --verify {settings.verify} with --parallel {settings.parallel}: "
                   f"candidates decode {settings.parallel} at a time; --parallel "
                   f"{settings.verify} decodes them together", err=True)
    click.echo(f"serving {settings.model_name!r} on http://{settings.host}:{settings.port} "
               f"(OpenAI base URL http://{settings.host}:{settings.port}/v1)", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level,
                timeout_graceful_shutdown=5)


def packaged_model(run: str, work_dir: str | None) -> tuple[Path, str]:
    """The GGUF a run packages and the name of the prompt format it was trained in, read from
    the run's export record; ``run`` is a run folder when it holds one (or names a path)."""
    from csound_assistant.artifacts import work_dir as run_dir
    from csound_assistant.stage_records import Export

    folder = Path(run)
    if not ((folder / Export.FOLDER).is_dir() or "/" in run):
        folder = run_dir(work_dir, run)
    export = Export.in_run(folder)
    return export.packaged_gguf, export.prompt_format.name
