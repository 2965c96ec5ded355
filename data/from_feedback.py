"""``csound-assistant data from-feedback``: corrected completions -> validated training rows.

Reads the feedback store (``csound_assistant/feedback_store.py``), turns each corrected
completion (and, when asked, each one marked good) into a row in the shape the model saw it -
chat, FIM or raw completion - screens it, checks its Csound in the sandbox, and publishes the
feedback stage folder ``<work>/feedback/``: ``rows.jsonl`` and a record of which store, its
counts, what was kept and why the rest was not (read back through ``stage_records.Feedback``).

Feedback is untrusted text. Nothing here runs it outside the sandbox, and a row is kept only if
the screen passes (``feedback_screen.screen``: under ``MAX_ROW_BYTES``, the sandbox's static scan
refuses nothing in any of its texts, no word of it names a refused opcode) and the sandbox's
check passes. Logs show user text only cut short (``logtext.shorten``).

This command writes only its own folder. The split stage reads it: ``csound-assistant data
split --force`` (or the next ``csound-assistant pipeline``) puts the rows into the train split,
never into validation or test, screening them again.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from csound_assistant import sandbox
from csound_assistant.artifacts import atomic_write, sha256_file, stage_output
from csound_assistant.errors import ArtifactError
from csound_assistant.extract import extract_code
from csound_assistant.feedback_screen import MAX_ROW_BYTES, screen
from csound_assistant.feedback_store import FeedbackStore
from csound_assistant.logtext import shorten
from csound_assistant.stage_records import Feedback

__all__ = ["MAX_ROW_BYTES", "feedback_row", "row_code", "rows_from_feedback", "screen"]

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
                       force: bool = False, workers: int = 2, log=print) -> dict:
    """Publish validated rows from the feedback store at ``db_path`` as the feedback folder
    ``out_dir``. Returns the record, whose ``drops`` say why each row not kept was dropped."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise ArtifactError(f"no feedback database at {db_path}: start the server with "
                            "--feedback-db PATH and mark completions first")
    if Path(out_dir).exists() and not force:  # before the checks, which take a while
        raise ArtifactError(f"{out_dir} already exists; pass --force to replace it (the old "
                            "one is kept until the new one is complete)")
    with FeedbackStore(db_path) as store:
        entries = store.corrected_rows(include_good=include_good)
        store_counts = store.counts()
    rows = [feedback_row(e) for e in entries]
    verdicts = [screen(row) for row in rows]
    codes = [row_code(row) if verdict is None else None for row, verdict in zip(rows, verdicts)]
    checked = iter(sandbox.check_many([c for c in codes if c is not None], workers=workers))
    kept, dropped, drops = [], Counter(), []
    for row, verdict, code in zip(rows, verdicts, codes):
        if verdict is None and code is None:
            verdict = ("no-code", ["no Csound code found in the answer"])
        elif verdict is None:
            result = next(checked)
            if result.ok:
                kept.append(row)
                continue
            verdict = (result.category, result.refused or [str(d) for d in result.errors[:2]])
        category, reasons = verdict[0], [shorten(r) for r in verdict[1]]
        feedback_id = row["meta"]["feedback_id"]
        dropped[category] += 1
        drops.append({"feedback_id": feedback_id, "category": category, "reasons": reasons})
        log(f"feedback {feedback_id}: dropped ({category}: {shorten('; '.join(reasons))})")
    with stage_output(out_dir, force=force, log=log) as tmp:
        with atomic_write(tmp / "rows.jsonl") as fh:
            for row in kept:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        record = Feedback.write(
            tmp, rows_file="rows.jsonl", rows=len(kept), drops=drops,
            rows_sha256=sha256_file(tmp / "rows.jsonl"),
            source={"db": str(db_path.resolve()), "counts": store_counts},
            considered=len(rows), dropped=dict(dropped), include_good=include_good)
    log(f"{len(kept)} of {len(rows)} feedback rows kept in {out_dir}")
    return record
