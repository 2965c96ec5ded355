"""Every command answers --help, without importing torch or llama_cpp."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from csound_assistant.cli import STAGE_COMMANDS, main


def _all_commands(group: click.Group, ctx: click.Context, prefix=()):
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, ctx, (*prefix, name))


def test_every_command_has_help():
    ctx = click.Context(main)
    commands = list(_all_commands(main, ctx))
    assert {path[0] for path, _ in commands} == set(STAGE_COMMANDS)
    runner = CliRunner()
    for path, cmd in commands:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        assert cmd.help, f"{' '.join(path)} has no docstring"


@pytest.mark.parametrize("args", [["--help"], ["base", "import", "--help"]])
def test_help_does_not_import_heavy_libraries(args):
    code = (
        "import sys; from csound_assistant.cli import main\n"
        f"try: main({args!r})\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'llama_cpp', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
