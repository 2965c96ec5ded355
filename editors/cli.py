"""``csound-assistant editor``: the Continue config and the VS Code extension."""

import click

from csound_assistant.clicommon import domain_errors, force_option, run_option, work_dir_option
from csound_assistant.constants import DEFAULT_MODEL_NAME


@click.group()
def cli():
    """Write editor configs (Continue) and build the VS Code extension."""


@cli.command("continue")
@work_dir_option
@run_option
@click.option("--out", "out_path", type=click.Path(), default=None,
              help="Where to write config.yaml [default: <work-dir>/<run>/package/config.yaml].")
@click.option("--server-url", envvar="CSOUND_ASSISTANT_SERVER_URL",
              default="http://127.0.0.1:8080", show_default=True,
              help="The `csound-assistant serve` URL (/v1 is added for Continue).")
@click.option("--api-key", envvar="CSOUND_ASSISTANT_API_KEY", default=None,
              help="The server's --api-key, if it has one.")
@click.option("--ollama-url", default="http://localhost:11434", show_default=True,
              help="Ollama's URL for the Ollama entry.")
@click.option("--ollama-model", default=DEFAULT_MODEL_NAME, show_default=True,
              help="The name given to `ollama create`.")
@click.option("--model-name", default=DEFAULT_MODEL_NAME, show_default=True,
              help="The model name the server answers to (serve --model-name).")
@click.option("--prompt-format", default=None,
              help="Prompt format [default: the one in the run's package or export record].")
@click.option("--target", "targets", multiple=True, type=click.Choice(["server", "ollama"]),
              help="Which backends to configure (repeatable) [default: both].")
@force_option
def continue_(work_dir, run, out_path, server_url, api_key, ollama_url, ollama_model, model_name,
              prompt_format, targets, force):
    """Write a Continue config.yaml for chat, edit and autocomplete.

    One entry uses the project's server for chat/edit, one uses it for autocomplete (the
    legacy /v1/completions endpoint with the model's own FIM template), one uses Ollama.

    \b
    Example:
        csound-assistant editor continue --server-url http://127.0.0.1:8080
        cp runs/default/package/config.yaml ~/.continue/config.yaml
    """
    from csound_assistant.artifacts import work_dir as run_dir

    from .continue_config import write_continue_config

    base_dir = run_dir(work_dir, run)
    with domain_errors():
        fmt = prompt_format or _recorded_format(base_dir)
        path = write_continue_config(
            out_path or base_dir / "package" / "config.yaml", server_url=server_url,
            ollama_model=ollama_model, prompt_format=fmt, force=force, model_name=model_name,
            api_key=api_key, ollama_url=ollama_url, targets=tuple(targets) or ("server", "ollama"),
        )
    click.echo(f"wrote {path}")
    click.echo("use it: copy it to ~/.continue/config.yaml (or merge its models into yours)")


def _recorded_format(run_dir):
    """The run's trained prompt format: the export's (custom strings kept), else the one
    named by the package, adapter or base, the first of them that is built."""
    from csound_assistant.errors import ConfigError
    from csound_assistant.stage_records import Adapter, Base, Export, Package

    if Export.built_in(run_dir):
        return Export.in_run(run_dir).prompt_format
    for stage in (Package, Adapter, Base):
        if stage.built_in(run_dir):
            return stage.in_run(run_dir).prompt_format
    raise ConfigError(
        f"no finished stage under {run_dir} names a prompt format: pass --prompt-format "
        "(chatml for SmolLM2, llama2-codellama for CodeLlama) or --run"
    )


@cli.command("vscode")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Where to put the .vsix [default: editors/vscode/].")
@click.option("--no-install", is_flag=True, help="Do not run `npm ci` first.")
def vscode(out_dir, no_install):
    """Build the VS Code extension (.vsix) with @vscode/vsce.

    Needs node and npm (`make setup` installs them). Install the result with
    `code --install-extension <path>`.

    \b
    Example:
        csound-assistant editor vscode
        code --install-extension editors/vscode/csound-assistant-0.1.0.vsix
    """
    from .vscode_build import build_vsix

    with domain_errors():
        path = build_vsix(out_dir=out_dir, install=not no_install, log=click.echo)
    click.echo(str(path))
