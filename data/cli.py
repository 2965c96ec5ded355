"""Commands of the data stage."""

import click


@click.group()
def cli():
    """Build, validate, split and inspect Csound training data."""
