"""Commands of the train stage: ``csound-assistant train run|config|make-starter``."""

from pathlib import Path

import click

from csound_assistant.clicommon import domain_errors, force_option, run_option, work_dir_option

DEFAULT_CONFIG = "cpu-smollm2"

config_option = click.option(
    "-c", "--config", "config_path", envvar="CSOUND_ASSISTANT_TRAIN_CONFIG",
    default=DEFAULT_CONFIG, show_default=True,
    help="A YAML config file, or the name of a shipped one (cpu-smollm2, gpu-smollm2-qlora, "
         "codellama-7b-qlora, codellama-7b-qlora-2gpu) [env CSOUND_ASSISTANT_TRAIN_CONFIG].",
)
set_option = click.option(
    "-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override one config key (repeatable), e.g. --set max_steps=200 --set lora_r=8.",
)


@click.group()
def cli():
    """Fine-tune with LoRA (CPU) or QLoRA (CUDA)."""


@cli.command("run")
@config_option
@set_option
@click.option("--resume", is_flag=True,
              help="Continue from the latest checkpoint (step, optimizer, scheduler, RNG).")
@work_dir_option
@run_option
@force_option
def run_command(config_path, overrides, resume, work_dir, run, force):
    """Train an adapter on runs/<run>/splits for runs/<run>/base -> runs/<run>/adapter.

    QLoRA (4-bit NF4) is used on a CUDA GPU, LoRA on CPU or Apple mps; the first line says
    which and why. Checkpoints go to runs/<run>/train-checkpoints; after a crash, run the
    same command with --resume. Under `accelerate launch` it trains on every GPU (DDP).

    \b
    Examples:
        csound-assistant train run                      # cpu-smollm2 config
        csound-assistant train run --set max_steps=50 --set learning_rate=1e-3
        csound-assistant train run -c codellama-7b-qlora --run codellama
        csound-assistant train run --resume             # after a crash or Ctrl-C
        accelerate launch --num_processes 2 -m csound_assistant.cli \\
            train run -c codellama-7b-qlora-2gpu
    """
    from csound_assistant.artifacts import work_dir as resolve_work_dir

    from .config import load_config
    from .recipe import train

    with domain_errors():
        cfg = load_config(config_path, list(overrides))
        out = train(cfg, resolve_work_dir(work_dir, run), resume=resume, force=force,
                    log=click.echo)
    click.echo(str(out))


@cli.command("config")
@config_option
@set_option
@click.option("--explain", is_flag=True, help="Show each key's help text.")
def config_command(config_path, overrides, explain):
    """Print the resolved training config (defaults < YAML < --set) as YAML.

    \b
    Example:
        csound-assistant train config -c codellama-7b-qlora --set lora_r=32 --explain
    """
    from .config import dump_config, field_help, load_config

    with domain_errors():
        cfg = load_config(config_path, list(overrides))
    if not explain:
        click.echo(dump_config(cfg), nl=False)
        return
    helps = field_help()
    for key, value in cfg.to_dict().items():
        click.echo(f"{key}: {value!r}\n    # {helps[key]}")


@cli.command("make-starter")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--splits", "splits_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The splits folder the adapter was trained on (its train.jsonl is checked).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write it [default: train/starter, the one the package ships].")
@click.option("--eval-report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="An `eval run` report.json of this adapter to quote in the record.")
@force_option
def make_starter_command(adapter_dir, splits_dir, out_dir, eval_report, force):
    """Turn a trained adapter into a starter that `init_adapter` runs continue from.

    Writes bf16 weights, the adapter's config, prompt format and record, and the hashes of the
    train rows it saw (so a run continuing it can prove its validation and test rows are new).

    \b
    Example (the shipped one: gpu-smollm2-lora with FIM lookups on an H200, from a `data build
    --strip-comments --fim-cuts 5` of the manual; bench/NOTES.md):
        csound-assistant train make-starter runs/aug5gpu/adapter --splits runs/aug5/splits --force
    """
    import json

    from .starter import STARTER_DIR, make_starter

    note = {}
    if eval_report:
        summary = json.loads(eval_report.read_text())["summary"]
        note["eval"] = {"report": str(eval_report), "summary": {
            model: {k: s["overall"][k] for k in ("items", "compile@1", "sound@1", "coverage")}
            for model, s in summary.items()}}
    with domain_errors():
        out = make_starter(adapter_dir, splits_dir, out_dir or STARTER_DIR, note, force=force)
    click.echo(f"starter: {out}")
