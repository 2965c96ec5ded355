"""Commands of the eval stage."""

import click


@click.group()
def cli():
    """Check Csound in the sandbox; score models on Csound tasks."""
