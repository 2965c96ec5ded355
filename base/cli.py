"""``csound-assistant base import``: bring a base model into the work directory."""

from pathlib import Path

import click

from csound_assistant.clicommon import force_option, run_option, work_dir_option


@click.group()
def cli():
    """Import a base model as a Hugging Face checkpoint folder."""


@cli.command("import")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <work-dir>/<run>/base].")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="Precision of the saved weights.")
@work_dir_option
@run_option
@force_option
def import_cmd(source, out_dir, dtype, work_dir, run, force):
    """Turn SOURCE (a .gguf file or a HF folder; default: the embedded SmolLM2-135M-Instruct
    GGUF) into a safetensors checkpoint with tokenizer and chat template. Works offline.

    \b
    Examples:
        csound-assistant base import
        csound-assistant base import ~/models/codellama-7b.Q8_0.gguf --run codellama
    """
    from csound_assistant.artifacts import work_dir as resolve_work_dir
    from csound_assistant.clicommon import domain_errors

    from .importer import import_base

    out_dir = out_dir or resolve_work_dir(work_dir, run) / "base"
    with domain_errors():
        path = import_base(source, out_dir, dtype=dtype, force=force)
    click.echo(f"base model written to {path}")
