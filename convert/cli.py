"""Commands of the convert stage."""

import click


@click.group()
def cli():
    """Merge, convert to GGUF, quantize and gate a trained model."""
