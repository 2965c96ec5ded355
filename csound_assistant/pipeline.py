"""``csound-assistant pipeline``: every stage in order, reusing finished ones."""

import click


@click.command()
def cli():
    """Run the whole pipeline on the embedded default (not yet wired)."""
