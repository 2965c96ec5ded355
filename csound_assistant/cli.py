"""The ``csound-assistant`` command: one group, a subcommand per pipeline stage.

Stage commands live beside their stage (``train/cli.py`` and so on) and are imported only when
invoked, so ``csound-assistant --help`` never imports torch or llama_cpp.
"""

from __future__ import annotations

import importlib

import click

from . import __version__

# name -> "module:attribute" of a click command or group, in pipeline order.
STAGE_COMMANDS = {
    "base": "csound_assistant.base.cli:cli",
    "data": "csound_assistant.data.cli:cli",
    "train": "csound_assistant.train.cli:cli",
    "export": "csound_assistant.convert.cli:cli",
    "modelfile": "csound_assistant.modelfiles.cli:cli",
    "editor": "csound_assistant.editors.cli:cli",
    "serve": "csound_assistant.runtime.cli:cli",
    "eval": "csound_assistant.eval.cli:cli",
    "improve": "csound_assistant.improve.cli:cli",
    "pipeline": "csound_assistant.pipeline:cli",
}

SHORT_HELP = {
    "base": "Import a base model (embedded SmolLM2 GGUF, any GGUF or HF folder).",
    "data": "Build, validate, split and inspect Csound training data.",
    "train": "Fine-tune with LoRA (CPU) or QLoRA (CUDA).",
    "export": "Merge, convert to GGUF, quantize and gate a trained model.",
    "modelfile": "Write an Ollama Modelfile for a built model.",
    "editor": "Write editor configs (Continue) and build the VS Code extension.",
    "serve": "Serve a GGUF over OpenAI, Ollama and llama.cpp-style HTTP APIs.",
    "eval": "Check Csound in the sandbox; score models on Csound tasks.",
    "improve": "Self-train on the sandbox's verdicts: sample, keep what plays, train again.",
    "pipeline": "Run every stage, reusing finished ones (the main job).",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(STAGE_COMMANDS)

    def get_command(self, ctx, name):
        target = STAGE_COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx, formatter):
        # Short help without importing every stage.
        rows = [(name, SHORT_HELP[name]) for name in STAGE_COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="csound-assistant")
@click.pass_context
def main(ctx):
    """Turn Csound knowledge into a local code assistant shipped as one GGUF file.

    \b
    Example (the whole pipeline on the embedded SmolLM2-135M model):
        csound-assistant pipeline
    """
    from .child_processes import children_die_with_us

    # every command: a stopped run (SIGTERM, SIGHUP, Ctrl-C) leaves no Csound or tool running
    ctx.with_resource(children_die_with_us())
if __name__ == "__main__":
    main()
