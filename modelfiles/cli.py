"""``csound-assistant modelfile``: an Ollama Modelfile for a built model."""

import click

from csound_assistant.clicommon import domain_errors, force_option, run_option, work_dir_option
from csound_assistant.constants import DEFAULT_MODEL_NAME, QUANT_TYPES


@click.command()
@work_dir_option
@run_option
@click.option("--export-dir", type=click.Path(file_okay=False), default=None,
              help="Export folder [default: <work-dir>/<run>/export].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Package folder to write [default: <work-dir>/<run>/package].")
@click.option("--name", default=DEFAULT_MODEL_NAME, show_default=True,
              help="Model name for `ollama create`.")
@click.option("--adapter", "use_adapter", is_flag=True,
              help="FROM the base model plus ADAPTER <name>.lora.gguf instead of the merged GGUF.")
@click.option("--base", default=None,
              help="With --adapter: an Ollama model name (codellama:7b-code) or the base GGUF.")
@click.option("--quant", type=click.Choice(list(QUANT_TYPES)), default=None,
              help="Which quantized GGUF of the export folder to use [default: the export's "
                   "packaged one, the first type it was asked for].")
@click.option("--link", type=click.Choice(["symlink", "copy", "path"]), default="symlink",
              show_default=True,
              help="symlink: FROM ./x.gguf linked into the export folder; copy: a self-contained "
                   "folder; path: FROM ../export/x.gguf.")
@click.option("--prompt-format", default=None,
              help="Override the prompt format named in the export record.")
@click.option("--temperature", type=float, default=None, help="PARAMETER temperature [0.2].")
@click.option("--top-p", type=float, default=None, help="PARAMETER top_p [0.95].")
@click.option("--num-ctx", type=int, default=None, help="PARAMETER num_ctx [4096].")
@force_option
def cli(work_dir, run, export_dir, out_dir, name, use_adapter, base, quant, link, prompt_format,
        temperature, top_p, num_ctx, force):
    """Write an Ollama Modelfile for a built model.

    The TEMPLATE, stop tokens and SYSTEM prompt come from the prompt format the model was
    trained with, so Ollama sends the model exactly the text it learned (chat and FIM).

    \b
    Example:
        csound-assistant modelfile
        ollama create csound-assistant -f runs/default/package/Modelfile
        ollama run csound-assistant "Write a Csound instrument that plays a 440 Hz sine."
    """
    from csound_assistant.artifacts import work_dir as run_dir

    from .render import write_modelfile

    base_dir = run_dir(work_dir, run)
    parameters = {key: value for key, value in
                  (("temperature", temperature), ("top_p", top_p), ("num_ctx", num_ctx))
                  if value is not None}
    with domain_errors():
        path = write_modelfile(
            export_dir or base_dir / "export", out_dir or base_dir / "package", name=name,
            use_adapter=use_adapter, force=force, base=base, quant=quant, link=link,
            prompt_format=prompt_format, parameters=parameters,
        )
    click.echo(f"wrote {path}")
    click.echo(f"use it:  ollama create {name} -f {path} && ollama run {name}")
