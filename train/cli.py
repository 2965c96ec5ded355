"""Commands of the train stage."""

import click


@click.group()
def cli():
    """Fine-tune with LoRA (CPU) or QLoRA (CUDA)."""
