"""Commands of the train stage: ``csound-assistant train run|config``."""

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
