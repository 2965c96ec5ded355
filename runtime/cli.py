"""Commands of the runtime stage."""

import click


@click.group()
def cli():
    """Serve a GGUF over OpenAI, Ollama and llama.cpp-style HTTP APIs."""
