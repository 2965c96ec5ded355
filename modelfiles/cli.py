"""Commands of the modelfiles stage."""

import click


@click.group()
def cli():
    """Write an Ollama Modelfile for a built model."""
