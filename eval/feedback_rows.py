"""``csound-assistant data from-feedback``: corrected completions -> validated training rows.

Reads the feedback store (``runtime/feedback.py``), turns each corrected completion (and, when
asked, each one marked good) into a row in the shape the model saw it - chat, FIM or raw
completion - checks its Csound in the sandbox, and publishes ``<work>/feedback/rows.jsonl``
with a record of what was kept and why the rest was not. With ``merge`` the kept rows are also
added to ``<work>/splits/train.jsonl`` (never to validation or test), so the next
``csound-assistant train run --force`` learns from them. ``csound-assistant pipeline`` merges
``feedback/rows.jsonl`` into every train split it makes, so a rebuilt split keeps them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from csound_assistant import sandbox
from csound_assistant.artifacts import (
    RECORD_NAME,
    atomic_write,
    stage_output,
    write_json,
    write_record,
)
from csound_assistant.errors import ArtifactError

from .extract import extract_code

RAW_ENDPOINTS = ("/complete", "/completion", "/v1/completions", "/api/generate")


def feedback_row(entry: dict) -> dict:
    """The training row for one store entry (its ``answer`` is the correction or good output)."""
    meta = {"source": "feedback", "group": f"feedback-{entry['id']}",
            "task": "feedback-correction" if entry.get("correction") else "feedback-good",
            "feedback_id": entry["id"], "model": entry.get("model"),
            "endpoint": entry.get("endpoint")}
    prompt, answer = entry["prompt"], entry["answer"]
    try:
        parsed = json.loads(prompt)
    except (TypeError, json.JSONDecodeError):
        parsed = None
    if isinstance(parsed, list) and all(isinstance(m, dict) and "role" in m for m in parsed):
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in parsed]
        return {"messages": [*messages, {"role": "assistant", "content": answer}], "meta": meta}
    if isinstance(parsed, dict) and {"prefix", "suffix"} <= parsed.keys():
        return {"prefix": parsed["prefix"], "middle": answer, "suffix": parsed["suffix"],
                "meta": meta}
    if entry.get("endpoint") in RAW_ENDPOINTS:
        return {"prompt": prompt, "completion": answer, "meta": meta}
    return {"instruction": prompt, "output": answer, "meta": meta}


def row_code(row: dict) -> str | None:
    """The Csound a row teaches, as the sandbox should judge it."""
    if "middle" in row:
        return row["prefix"] + row["middle"] + row["suffix"]
    if "completion" in row:
        whole = row["prompt"] + row["completion"]
        return extract_code(whole) or whole
    answer = row["messages"][-1]["content"] if "messages" in row else row["output"]
    return extract_code(answer)


def rows_from_feedback(db_path: str | Path, out_dir: str | Path, *, include_good: bool = False,
                       splits_dir: str | Path | None = None, force: bool = False,
                       workers: int = 2, log=print) -> dict:
    """Publish validated rows from the feedback store at ``db_path`` into ``out_dir``; with
    ``splits_dir``, add them to its train.jsonl too. Returns the record."""
    from csound_assistant.runtime.feedback import FeedbackStore

    db_path = Path(db_path)
    if not db_path.is_file():
        raise ArtifactError(f"no feedback database at {db_path}: start the server with "
                            "--feedback-db PATH and mark completions first")
    with FeedbackStore(db_path) as store:
        entries = store.corrected_rows(include_good=include_good)
        store_counts = store.counts()
    rows = [feedback_row(e) for e in entries]
    codes = [row_code(r) for r in rows]
    checked = sandbox.check_many([c for c in codes if c is not None], workers=workers)
    verdicts = iter(checked)
    kept, dropped = [], Counter()
    for row, code in zip(rows, codes):
        if code is None:
            dropped["no-code"] += 1
            continue
        result = next(verdicts)
        if result.ok:
            kept.append(row)
        else:
            dropped[result.category] += 1
            log(f"feedback {row['meta']['feedback_id']}: dropped ({result.category}: "
                + "; ".join(str(d) for d in result.errors[:2]) + ")")
    with stage_output(out_dir, force=force) as tmp:
        with atomic_write(tmp / "rows.jsonl") as fh:
            for row in kept:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        merged = merge_into_train(Path(splits_dir), kept) if splits_dir else None
        record = write_record(
            tmp, "feedback", source={"db": str(db_path.resolve()), "counts": store_counts},
            rows_file="rows.jsonl", rows=len(kept), considered=len(rows),
            dropped=dict(dropped), include_good=include_good, merged_into=merged)
    log(f"{len(kept)} of {len(rows)} feedback rows kept"
        + (f", added to {merged['train']}" if merged else ""))
    return record


def _row_key(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "meta"}, sort_keys=True)


def merge_into_train(splits_dir: Path, rows: list[dict]) -> dict:
    """Add ``rows`` to splits/train.jsonl (skipping ones already there); note it in the
    splits record so the train stage's input hash changes."""
    train = splits_dir / "train.jsonl"
    if not (splits_dir / RECORD_NAME).is_file() or not train.is_file():
        raise ArtifactError(f"{splits_dir} is not a finished splits folder (run "
                            "`csound-assistant data split` first, or pass --no-merge)")
    existing = train.read_text()
    seen = {_row_key(json.loads(line)) for line in existing.splitlines() if line.strip()}
    new = [r for r in rows if _row_key(r) not in seen]
    with atomic_write(train) as fh:
        fh.write(existing if existing.endswith("\n") or not existing else existing + "\n")
        for row in new:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    record = json.loads((splits_dir / RECORD_NAME).read_text())
    total = record.get("feedback_rows", 0) + len(new)
    record["feedback_rows"] = total
    if isinstance(record.get("rows"), dict) and "train" in record["rows"]:
        record["rows"]["train"] += len(new)
    write_json(splits_dir / RECORD_NAME, record)
    return {"train": str(train), "added": len(new), "total_feedback_rows": total}
