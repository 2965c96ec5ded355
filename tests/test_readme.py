"""The README's commands are real: every `csound-assistant ...` line in a bash block names an
existing command with options it accepts, and every `make` target exists. The commands
themselves run in the stage tests and, end to end, in test_pipeline's slow tests."""

import re
import shlex
from pathlib import Path

import click
import pytest

from csound_assistant.cli import main

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("*/README.md"))]


def _commands(prefix: str):
    for readme in READMES:
        text = readme.read_text()
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                try:
                    tokens = list(lexer)
                except ValueError:  # not shell (e.g. a JSON body): no commands here
                    continue
                parts, words = [], []
                for token in tokens:
                    if token in ("&&", "|", "||", ";"):
                        parts.append(words)
                        words = []
                    else:
                        words.append(token)
                parts.append(words)
                for words in parts:
                    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                        words = words[1:]  # leading VAR=value
                    if words and words[0] == prefix:
                        yield readme.relative_to(ROOT), words[1:]


def _resolve(args):
    cmd, ctx = main, click.Context(main)
    path = []
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        sub = cmd.get_command(ctx, args[0])
        if sub is None:
            break
        path.append(args[0])
        cmd, args = sub, args[1:]
    return cmd, path, args


CLI_LINES = list(_commands("csound-assistant"))


def test_readme_has_the_two_commands():
    lines = {(str(r), " ".join(a)) for r, a in _commands("make")}
    assert ("README.md", "demo") in lines and ("README.md", "test") in lines
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M), "CI must run the README's test command"


@pytest.mark.parametrize("target", sorted({a[0] for _, a in _commands("make") if a}))
def test_make_targets_exist(target):
    assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), flags=re.M)


def test_readme_lists_many_commands():
    assert len(CLI_LINES) >= 30


@pytest.mark.parametrize("readme,args", CLI_LINES, ids=[" ".join(a)[:60] for _, a in CLI_LINES])
def test_command_and_options_exist(readme, args):
    cmd, path, rest = _resolve(list(args))
    assert path, f"{readme}: `csound-assistant {' '.join(args)}` names no command"
    if isinstance(cmd, click.Group) and not cmd.invoke_without_command:
        pytest.fail(f"{readme}: `{' '.join(path)}` is a group; name a subcommand")
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{readme}: {' '.join(path)} has no {word}"
    n_args = len([p for p in cmd.params if isinstance(p, click.Argument)])
    positional = [w for w in rest if not w.startswith("-")]
    if n_args == 0 and not any(isinstance(p, click.Option) and not p.is_flag for p in cmd.params):
        assert not positional, f"{readme}: {' '.join(path)} takes no arguments: {positional}"
