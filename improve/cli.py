"""Commands of the improve stage: ``csound-assistant improve self-train|config``."""

import click

from csound_assistant.clicommon import domain_errors, run_option, work_dir_option

config_option = click.option(
    "-c", "--config", "config_path", envvar="CSOUND_ASSISTANT_SELF_TRAIN_CONFIG",
    default="cpu", show_default=True,
    help="A YAML file, or a shipped one: cpu (rounds on the main job's adapter), starter "
         "(rebuild the shipped starter from the bare base on one CUDA GPU) "
         "[env CSOUND_ASSISTANT_SELF_TRAIN_CONFIG].")
set_option = click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override one key (repeatable), e.g. --set rounds=2.")


@click.group()
def cli():
    """Evaluate and improve: self-training on the sandbox's verdicts."""


@cli.command("self-train")
@config_option
@set_option
@work_dir_option
@run_option
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
def self_train_command(config_path, overrides, work_dir, run, progress):
    """Rounds of sample -> judge in the sandbox -> keep what plays -> train again.

    Each round answers train-split requests (never validation or test ones) and natural
    describe-the-sound requests made from the manual, several times each, through the
    server's own batched path; keeps the answers that play (and fix pairs: a failed answer with
    Csound's error, answered by one that plays); and continues the adapter on them. Rounds go
    to runs/<run>/improve/round-NN, each with a record; run the same command again after a kill
    and it goes on where it stopped.

    \b
    Examples:
        csound-assistant improve self-train --set rounds=1 --set natural_per_round=50
        csound-assistant improve self-train -c starter --run rebuild   # on one CUDA GPU
    """
    from csound_assistant.artifacts import work_dir as resolve_work_dir

    from .config import load_config
    from .self_train import self_train

    with domain_errors():
        cfg = load_config(config_path, list(overrides))
        out = self_train(cfg, resolve_work_dir(work_dir, run), log=click.echo,
                         progress=progress)
    click.echo(str(out))


@cli.command("config")
@config_option
@set_option
def config_command(config_path, overrides):
    """Print the resolved self-training config as YAML."""
    import yaml

    from .config import load_config

    with domain_errors():
        cfg = load_config(config_path, list(overrides))
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
