"""Stage folders and single files appear complete or not at all."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from csound_assistant.artifacts import (
    atomic_write, is_complete, read_record, stage_output, work_dir, write_record,
)
from csound_assistant.errors import ArtifactError


def test_work_dir_option_env_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CSOUND_ASSISTANT_WORK_DIR", raising=False)
    monkeypatch.delenv("CSOUND_ASSISTANT_RUN", raising=False)
    assert str(work_dir()) == os.path.join("runs", "default")
    monkeypatch.setenv("CSOUND_ASSISTANT_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("CSOUND_ASSISTANT_RUN", "exp1")
    assert work_dir() == tmp_path / "exp1"
    assert work_dir(tmp_path / "x", "y") == tmp_path / "x" / "y"


def test_stage_published_only_when_complete(tmp_path):
    final = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with stage_output(final) as tmp:
            (tmp / "weights.bin").write_text("half")
            raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArtifactError, match="record.json"):
        with stage_output(final) as tmp:
            (tmp / "weights.bin").write_text("no record")
    assert not final.exists()
    with stage_output(final) as tmp:
        (tmp / "weights.bin").write_text("full")
        write_record(tmp, "demo", answer=42)
    assert is_complete(final) and read_record(final)["answer"] == 42
    assert oct(final.stat().st_mode & 0o777) == "0o755"


def test_overwrite_needs_force_and_keeps_old_until_done(tmp_path):
    final = tmp_path / "stage"
    with stage_output(final) as tmp:
        write_record(tmp, "demo", version=1)
    with pytest.raises(ArtifactError, match="--force"):
        with stage_output(final):
            pass
    with pytest.raises(RuntimeError):
        with stage_output(final, force=True):
            raise RuntimeError("crash during rebuild")
    assert read_record(final)["version"] == 1
    with stage_output(final, force=True) as tmp:
        write_record(tmp, "demo", version=2)
    assert read_record(final)["version"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_read_record_of_unfinished_folder(tmp_path):
    with pytest.raises(ArtifactError, match="not a finished stage"):
        read_record(tmp_path)


def test_atomic_write_survives_a_kill(tmp_path):
    target = tmp_path / "rows.jsonl"
    code = (
        "import time, sys\n"
        "from csound_assistant.artifacts import atomic_write\n"
        f"with atomic_write({str(target)!r}) as fh:\n"
        "    fh.write('{}\\n'); fh.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    with atomic_write(target) as fh:
        fh.write(json.dumps({"ok": 1}))
    assert json.loads(target.read_text()) == {"ok": 1}
