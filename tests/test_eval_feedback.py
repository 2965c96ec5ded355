"""The feedback loop: store -> mark (HTTP and CLI) -> the feedback folder -> the train split."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from csound_assistant.artifacts import read_record, stage_output, write_record
from csound_assistant.data.split import split_dataset
from csound_assistant.errors import ArtifactError, DataError
from csound_assistant.data.from_feedback import rows_from_feedback
from csound_assistant.feedback_store import FeedbackStore
from csound_assistant.stage_records import Feedback

GOOD_ORC = "instr 1\n  a1 poscil 0.3, 440\n  outs a1, a1\nendin\n"
CHAT = [{"role": "user", "content": "Write a Csound instrument that plays a 440 Hz sine."}]


def make_data(work, n: int = 1) -> None:
    """A finished data folder of ``n`` rows (the fields `data build` records)."""
    rows = [{"instruction": f"Play sine {i}.", "output": f"```csound\n{GOOD_ORC}```",
             "meta": {"group": f"g{i}", "task": "write"}} for i in range(n)]
    with stage_output(work / "data") as tmp:
        (tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_record(tmp, "data", rows_file="rows.jsonl", rows=n)


def train_rows(splits) -> list[dict]:
    return [json.loads(line) for line in (splits / "train.jsonl").read_text().splitlines()]


def fill_store(db) -> dict[str, int]:
    with FeedbackStore(db) as store:
        ids = {
            "chat": store.record_completion(json.dumps(CHAT), "#Csound #Csound", "m",
                                            "/v1/chat/completions"),
            "fim": store.record_completion(json.dumps({"prefix": "instr 1\n  a1 ",
                                                       "suffix": "  outs a1, a1\nendin\n"}),
                                           "oops", "m", "/v1/completions"),
            "broken": store.record_completion(json.dumps(CHAT), "x", "m", "/v1/chat/completions"),
            "good": store.record_completion("Write a sine in Csound.",
                                            f"```csound\n{GOOD_ORC}```", "m", "/api/chat"),
            "unmarked": store.record_completion("p", "o", "m", "/complete"),
        }
        store.mark(ids["chat"], False, f"Here it is:\n```csound\n{GOOD_ORC}```")
        store.mark(str(ids["fim"]), False, "poscil 0.3, 440\n")
        store.mark(ids["broken"], False, "```csound\ninstr 1\n  a1 moogladdr 1\nendin\n```")
        store.mark(ids["good"], True)
        with pytest.raises(KeyError):
            store.mark(9999, True)
        with pytest.raises(ValueError):
            store.mark("cmpl-x", True)
        assert store.counts() == {"completions": 5, "good": 1, "bad": 3, "corrected": 3}
    return ids


def test_corrections_become_validated_rows_in_the_train_split(tmp_path):
    from csound_assistant.data.validate import read_rows, validate_rows

    db, work = tmp_path / "feedback.db", tmp_path / "run"
    make_data(work)
    ids = fill_store(db)
    record = rows_from_feedback(db, work / "feedback", log=lambda m: None)
    assert record["considered"] == 3 and record["rows"] == 2
    assert record["dropped"] == {"unknown-opcode": 1}
    assert not (work / "splits").exists()  # the command writes its own folder only
    rows = [json.loads(line)
            for line in (work / "feedback" / "rows.jsonl").read_text().splitlines()]
    chat, fim = rows
    assert chat["messages"][:-1] == CHAT and "poscil" in chat["messages"][-1]["content"]
    assert fim["middle"] == "poscil 0.3, 440\n" and fim["meta"]["feedback_id"] == ids["fim"]
    parsed, problems = read_rows(work / "feedback" / "rows.jsonl")
    assert not problems and validate_rows(parsed).ok
    feedback = Feedback.in_run(work)
    assert feedback.rows == 2 and feedback.raw["source"]["counts"]["corrected"] == 3
    split_dataset(work / "data" / "rows.jsonl", work / "splits", ratios=(1, 0, 0),
                  feedback=feedback)
    train = train_rows(work / "splits")
    assert len(train) == 3 and train[1] == chat
    splits = read_record(work / "splits")
    assert splits["rows"]["train"] == 3 and splits["feedback_rows"] == 2
    assert splits["feedback"]["rows_sha256"] == feedback.rows_sha256()
    # again, with good completions too: a new folder, and a new split holds each row once
    with pytest.raises(ArtifactError, match="--force"):
        rows_from_feedback(db, work / "feedback", include_good=True, log=lambda m: None)
    record = rows_from_feedback(db, work / "feedback", include_good=True, force=True,
                                log=lambda m: None)
    assert record["rows"] == 3
    feedback = Feedback.in_run(work)
    split_dataset(work / "data" / "rows.jsonl", work / "splits", ratios=(1, 0, 0), force=True,
                  feedback=feedback)
    assert len(train_rows(work / "splits")) == 4
    assert read_record(work / "splits")["feedback_rows"] == 3


def test_from_feedback_without_a_database_says_what_to_do(tmp_path):
    with pytest.raises(ArtifactError, match="--feedback-db"):
        rows_from_feedback(tmp_path / "none.db", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_feedback_folder_from_before_the_screen_is_refused(tmp_path):
    """Its rows were never screened: the split will not take them, and says how to rebuild."""
    folder = tmp_path / "feedback"
    folder.mkdir()
    (folder / "rows.jsonl").write_text("")
    write_record(folder, "feedback", rows_file="rows.jsonl", rows=0, considered=0)
    with pytest.raises(ArtifactError, match="data from-feedback --force"):
        Feedback.read(folder)


def test_cli_round_trip(tmp_path):
    from csound_assistant.cli import main

    work_dir, run = tmp_path / "runs", "r1"
    work = work_dir / run
    make_data(work)
    with FeedbackStore(work / "feedback.db") as store:
        cid = store.record_completion(json.dumps(CHAT), "#Csound", "m", "/v1/chat/completions")
    fixed = tmp_path / "fixed.txt"
    fixed.write_text(f"```csound\n{GOOD_ORC}```\n")
    runner = CliRunner()
    common = ["--work-dir", str(work_dir), "--run", run]
    result = runner.invoke(main, ["eval", "feedback", str(cid), "--bad", "--correction",
                                  str(fixed), *common])
    assert result.exit_code == 0, result.output
    assert "1 corrected of 1 recorded" in result.output
    missing = runner.invoke(main, ["eval", "feedback", "42", "--good", *common])
    assert missing.exit_code == 1 and "no completion with id 42" in missing.output
    result = runner.invoke(main, ["data", "from-feedback", *common])
    assert result.exit_code == 0, result.output
    assert "1 rows kept of 1" in result.output and "data split --force" in result.output
    again = runner.invoke(main, ["data", "from-feedback", *common])
    assert again.exit_code == 1 and "--force" in again.output
    split = runner.invoke(main, ["data", "split", "--ratios", "1,0,0", *common])
    assert split.exit_code == 0, split.output
    assert "train holds 1 rows from" in split.output
    assert len(train_rows(work / "splits")) == 2
    plain = runner.invoke(main, ["data", "split", "--ratios", "1,0,0", "--no-feedback",
                                 "--force", *common])
    assert plain.exit_code == 0, plain.output
    assert len(train_rows(work / "splits")) == 1


def test_server_records_and_marks_a_real_completion(tmp_path, embedded_gguf):
    """serve (real embedded GGUF) -> POST /v1/feedback -> from-feedback -> rows."""
    from starlette.testclient import TestClient

    from csound_assistant.runtime.server import create_app
    from csound_assistant.runtime.settings import Settings

    db, work = tmp_path / "feedback.db", tmp_path / "run"
    settings = Settings(model_path=embedded_gguf, feedback_db=db, prompt_format="chatml",
                        n_ctx=1024, n_threads=1)
    with TestClient(create_app(settings)) as client:
        reply = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 8,
                                                          "temperature": 0})
        assert reply.status_code == 200
        cid = reply.headers["x-completion-id"]
        marked = client.post("/v1/feedback", json={
            "id": cid, "good": False, "correction": f"```csound\n{GOOD_ORC}```"})
        assert marked.status_code == 200
    record = rows_from_feedback(db, work / "feedback", log=lambda m: None)
    assert record["rows"] == 1
    row = json.loads((work / "feedback" / "rows.jsonl").read_text())
    assert row["messages"][-2:] == [CHAT[0], {"role": "assistant",
                                              "content": f"```csound\n{GOOD_ORC}```"}]
    assert row["meta"]["feedback_id"] == int(cid)


def test_a_rebuilt_split_keeps_the_feedback_rows(tmp_path):
    """The pipeline re-splits when the data changes; rows learned from feedback must stay in
    the train split (and only there)."""
    from csound_assistant.pipeline_stages import build_splits

    work = tmp_path / "run"
    db = tmp_path / "feedback.db"
    fill_store(db)
    kept = rows_from_feedback(db, work / "feedback", log=lambda m: None)
    assert kept["rows"] == 2
    make_data(work, 40)
    settings = {"seed": 0, "ratios": [0.8, 0.1, 0.1]}
    for stale in (False, True):  # built, then rebuilt as after a data change
        build_splits(work, settings, work / "splits-new", stale)
        train = train_rows(work / "splits-new")
        ids = [row["meta"].get("feedback_id") for row in train]
        assert sum(i is not None for i in ids) == 2 and len(train) == 32 + 2
        for name in ("validation", "test"):
            assert "feedback_id" not in (work / "splits-new" / f"{name}.jsonl").read_text()
        assert read_record(work / "splits-new")["feedback_rows"] == 2
    # a damaged feedback file stops the split before anything is written, and says where
    (work / "feedback" / "rows.jsonl").write_text('{"instruction": "x"\n')
    with pytest.raises(DataError, match=r"damaged[\s\S]*line 1"):
        build_splits(work, settings, work / "splits-bad", False)
    assert not (work / "splits-bad").exists()
