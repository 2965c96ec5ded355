"""Commands of the editors stage."""

import click


@click.group()
def cli():
    """Write editor configs and build the VS Code extension."""
