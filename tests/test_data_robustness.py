"""Data-side robustness (issue 29): damaged data files are reported line by line, killed stages
leave no partial folders behind for good, and a stopped ``data build`` leaves no Csound
running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from csound_assistant.data.cli import cli as data_cli
from csound_assistant.data.validate import MAX_DEPTH, read_rows, validate_file
from csound_assistant.errors import DataError

ROW = {"instruction": "Write a sine instrument.", "output": "```csound\ninstr 1\nendin\n```"}


def problems_of(path) -> list[str]:
    with pytest.raises(DataError) as info:
        validate_file(path)
    return info.value.problems


# --- data validate ----------------------------------------------------------------------------

def test_deep_nesting_and_bad_utf8_are_problems_with_line_numbers_all_at_once(tmp_path):
    deep = '{"instruction": "x", "output": "y", "meta": ' + "[" * 5000 + "]" * 5000 + "}"
    past_limit = {"instruction": "x", "output": "z", "meta": {"a": [[[]]]}}
    for _ in range(MAX_DEPTH):
        past_limit["meta"] = {"a": past_limit["meta"]}
    lines = [json.dumps(ROW).encode(), b"{", deep.encode(), json.dumps(past_limit).encode(),
             '{"instruction": "caf\u00e9", "output": "ok"}'.encode(),
             b'{"instruction": "caf\xe9", "output": "latin-1"}',
             json.dumps({"prompt": "p", "completion": ""}).encode()]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    problems = problems_of(path)
    assert problems[0].startswith("line 2: invalid JSON")
    assert problems[1] == f"line 3: JSON nested 5001 levels deep (at most {MAX_DEPTH} allowed; " \
                          "a row needs 3)"
    assert problems[2].startswith(f"line 4: JSON nested {MAX_DEPTH + 5} levels deep")
    assert problems[3] == ("line 6: not UTF-8 (byte 0xe9 at byte 21 of the line); save the file "
                           "as UTF-8")
    assert problems[4] == "line 7: field 'completion' is empty"
    assert len(problems) == 5  # line 5's é is proper UTF-8
    rows, _ = read_rows(path)
    assert [line for line, _ in rows] == [1, 5, 7]


def test_a_json_array_too_deep_or_not_utf8_is_reported_too(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(b"[\n" + json.dumps(ROW).encode() + b',\n{"instruction": "\xff", '
                     b'"output": "x"},\n' + b"[" * 3000 + b"]" * 3000 + b"\n]\n")
    problems = problems_of(path)
    assert problems[0].startswith("line 3: not UTF-8 (byte 0xff")
    assert problems[1].startswith("line 4: JSON nested 3000 levels deep")


def test_cli_reports_a_deep_line_instead_of_crashing(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + "[" * 5000 + "]" * 5000 + "\n")
    result = CliRunner().invoke(data_cli, ["validate", str(path)])
    assert result.exit_code == 1 and not isinstance(result.exception, RecursionError)
    assert "line 2: JSON nested 5000 levels deep" in result.output


# --- partial folders of killed stages ---------------------------------------------------------

HOLD_A_PARTIAL = """
import sys, time
from csound_assistant.artifacts import stage_output
with stage_output(sys.argv[1]) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 100_000)
    print(tmp, flush=True)
    time.sleep(120)
"""


def hold_partial(stage_dir: Path) -> tuple[subprocess.Popen, Path]:
    """A process building ``stage_dir`` (as an export or a split would), and its partial folder."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_A_PARTIAL, str(stage_dir)],
                            stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_the_next_run_removes_partials_of_killed_runs_but_not_live_ones(tmp_path, capsys):
    from csound_assistant.data.split import split_dataset
    from csound_assistant.pipeline import remove_partials

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({**ROW, "instruction": f"Sine {i}."}) + "\n"
                            for i in range(10)))
    out = tmp_path / "splits"
    killed, killed_partial = hold_partial(out)
    live, live_partial = hold_partial(out)
    other_stage, other_partial = hold_partial(tmp_path / "export")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        other_stage.send_signal(signal.SIGKILL)
        other_stage.wait()
        assert killed_partial.is_dir() and live_partial.is_dir()  # as a kill leaves them
        capsys.readouterr()
        split_dataset(rows, out)
        assert not killed_partial.exists()
        assert live_partial.is_dir() and (live_partial / "half.bin").is_file()
        assert other_partial.is_dir()  # another stage's: its own next run removes it
        err = capsys.readouterr().err
        assert f"removed 1 partial folder(s) left by killed runs in {tmp_path}: " \
               f"{killed_partial.name} (0.1 MB)" in err
        remove_partials(tmp_path)  # the pipeline's sweep over every stage
        assert not other_partial.exists() and live_partial.is_dir()
    finally:
        live.kill()
        live.wait()
    remove_partials(tmp_path)  # its builder is gone now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "splits"]


# --- child processes die with their parent ----------------------------------------------------

# Loops at init time for ever: Csound runs until the sandbox's time limit, unless killed.
ENDLESS_CSD = """<CsoundSynthesizer>
<CsInstruments>
sr = 48000
ksmps = 64
nchnls = 2
0dbfs = 1
instr 1
  icount = 0
again:
  icount += 1
  igoto again
endin
</CsInstruments>
<CsScore>
i 1 0 1
</CsScore>
</CsoundSynthesizer>
"""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ..., starttime at 19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _processes() -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            found[int(entry.name)] = fields
    return found


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live process below ``pid``."""
    table = _processes()
    out, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, fields in table.items():
            if int(fields[1]) == parent and fields[0] != "Z" and child not in out:
                out[child] = fields[19]
                frontier.append(child)
    return out


def _text(pid: int, name: str) -> str:
    """A process's command line (arguments joined by spaces) or working directory."""
    try:
        if name == "cwd":
            return os.readlink(f"/proc/{pid}/cwd")
        raw = Path(f"/proc/{pid}/{name}").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _survivors(tracked: dict[int, str], marker: str) -> list[int]:
    """Tracked processes still alive (same start time, not a zombie), and any process whose
    command line or working directory holds ``marker``."""
    table = _processes()
    alive = [pid for pid, start in tracked.items()
             if pid in table and table[pid][19] == start and table[pid][0] != "Z"]
    marked = [pid for pid, fields in table.items() if fields[0] != "Z" and pid != os.getpid()
              and (marker in _text(pid, "cmdline") or marker in _text(pid, "cwd"))]
    return sorted(set(alive + marked))


def _render_started(build: subprocess.Popen) -> dict[int, str]:
    """Wait until ``build`` has a Csound rendering (not a version or opcode probe)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and build.poll() is None:
        below = _descendants(build.pid)
        for pid in below:
            args = _text(pid, "cmdline").split()
            if args and Path(args[0]).name == "csound" and not {"-z", "--version"} & set(args):
                time.sleep(0.5)  # let it get going
                return _descendants(build.pid)
        time.sleep(0.2)
    pytest.fail(f"data build started no Csound render (exit status {build.poll()})")


@pytest.fixture
def marker():
    """A TMPDIR for the build: every sandbox folder (Csound's working directory) is below it,
    so its name marks the build's Csound processes. In the system's temp dir, open to all: the
    sandbox may run Csound as nobody."""
    folder = Path(tempfile.mkdtemp(prefix="csound-assistant-kill-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_stopped_data_build_leaves_no_csound_running(tmp_path, marker, sig):
    (tmp_path / "manual" / "examples").mkdir(parents=True)
    (tmp_path / "manual" / "examples" / "endless.csd").write_text(ENDLESS_CSD)
    log = open(tmp_path / "build.log", "w")
    build = subprocess.Popen(
        [sys.executable, "-c", "from csound_assistant.cli import main; main()", "data", "build",
         "--manual-dir", str(tmp_path / "manual"), "--out", str(tmp_path / "data"),
         "--cache-dir", str(tmp_path / "cache"), "--no-cache", "--patches", "0",
         "--workers", "1"],
        env={**os.environ, "TMPDIR": str(marker)}, stdin=subprocess.DEVNULL, stdout=log,
        stderr=log)
    tracked: dict[int, str] = {}
    try:
        tracked = _render_started(build)
        build.send_signal(sig)
        status = build.wait(timeout=30)
        deadline = time.monotonic() + 5
        while _survivors(tracked, marker.name) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: _text(pid, "cmdline") for pid in _survivors(tracked, marker.name)}
        assert not left, f"still running after {sig.name} of data build: {left}"
        assert status == (1 if sig == signal.SIGINT else -sig)  # Ctrl-C: click's "Aborted!"
    finally:
        for pid in _survivors(tracked, marker.name):  # never leave a CPU-bound Csound behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if build.poll() is None:
            build.kill()
            build.wait()
        log.close()
