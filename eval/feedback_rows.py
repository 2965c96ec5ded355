"""``csound-assistant data from-feedback``: corrected completions -> validated training rows.

Reads the feedback store (``runtime/feedback.py``), turns each corrected completion (and, when
asked, each one marked good) into a row in the shape the model saw it - chat, FIM or raw
completion - screens it, checks its Csound in the sandbox, and publishes
``<work>/feedback/rows.jsonl`` with a record of what was kept and why the rest was not.

Feedback is untrusted text. Nothing here runs it outside the sandbox, and a row is kept only if
it is under ``MAX_ROW_BYTES``, the sandbox's static scan refuses nothing in any of its texts
(every field, the fields run together, every fenced block), no word of it names a refused
opcode, and the sandbox's check passes. Logs show user text only cut short
(``logtext.shorten``).

With ``merge`` the kept rows are also added to ``<work>/splits/train.jsonl`` (never to
validation or test), so the next ``csound-assistant train run --force`` learns from them.
``csound-assistant pipeline`` merges ``feedback/rows.jsonl`` into every train split it makes, so
a rebuilt split keeps them.
"""

from __future__ import annotations

import json
import re
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
from csound_assistant.extract import extract_code
from csound_assistant.logtext import shorten

RAW_ENDPOINTS = ("/complete", "/completion", "/v1/completions", "/api/generate")
# A training row holds at most ~5 kB (2,048 tokens); a correction far past that teaches nothing
# and only costs scanning and checking time.
MAX_ROW_BYTES = 64 * 1024
_TEXT_FIELDS = ("instruction", "input", "output", "prompt", "completion", "prefix", "middle",
                "suffix")
_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)


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


def _fields(row: dict) -> list[str]:
    if "messages" in row:
        return [m.get("content") or "" for m in row["messages"]]
    return [row[key] for key in _TEXT_FIELDS if isinstance(row.get(key), str)]


def row_texts(row: dict) -> list[str]:
    """Every text of ``row`` that the sandbox's scan must pass: each field, the fields run
    together (a FIM row's prefix + middle + suffix is one program) and each fenced block."""
    fields = _fields(row)
    texts = [*fields, "".join(fields), "\n".join(fields)]
    texts += [block for text in fields for block in _FENCE.findall(text)]
    return list(dict.fromkeys(t for t in texts if t.strip()))


def screen(row: dict) -> tuple[str, list[str]] | None:
    """Why ``row`` must never become a training row, found without running anything:
    ``("too-large", [why])`` or ``("refused", reasons)``; None when the sandbox may check it."""
    size = len("".join(_fields(row)).encode())
    if size > MAX_ROW_BYTES:
        return "too-large", [f"{size:,} bytes of text, over the {MAX_ROW_BYTES:,}-byte limit "
                             "for a feedback row"]
    texts = row_texts(row)
    reasons = [reason for text in texts for reason in sandbox.scan(text)]
    # Each word on its own as well, from comments, strings and prose too: a refused opcode
    # that a fake comment or a string hides from the scan is still named in the text. (Prose
    # that says "system" drops a good correction too: a small loss against a poisoned row.)
    words = sorted(set(re.findall(r"[A-Za-z_]\w*", "\n".join(texts))))
    reasons += sandbox.scan(" ".join(words))
    reasons = list(dict.fromkeys(reasons))
    return ("refused", reasons) if reasons else None


def rows_from_feedback(db_path: str | Path, out_dir: str | Path, *, include_good: bool = False,
                       splits_dir: str | Path | None = None, force: bool = False,
                       workers: int = 2, log=print) -> dict:
    """Publish validated rows from the feedback store at ``db_path`` into ``out_dir``; with
    ``splits_dir``, add them to its train.jsonl too. Returns the record, whose ``drops`` say
    why each row that was not kept was dropped."""
    from csound_assistant.runtime.feedback import FeedbackStore

    db_path = Path(db_path)
    if not db_path.is_file():
        raise ArtifactError(f"no feedback database at {db_path}: start the server with "
                            "--feedback-db PATH and mark completions first")
    if splits_dir:
        _train_file(Path(splits_dir))  # before the checks, which take a while
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
        merged = merge_into_train(Path(splits_dir), kept) if splits_dir else None
        record = write_record(
            tmp, "feedback", source={"db": str(db_path.resolve()), "counts": store_counts},
            rows_file="rows.jsonl", rows=len(kept), considered=len(rows),
            dropped=dict(dropped), drops=drops, include_good=include_good, merged_into=merged)
    log(f"{len(kept)} of {len(rows)} feedback rows kept"
        + (f", added to {merged['train']}" if merged else ""))
    return record


def _row_key(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "meta"}, sort_keys=True)


def _train_file(splits_dir: Path) -> Path:
    train = splits_dir / "train.jsonl"
    if not (splits_dir / RECORD_NAME).is_file() or not train.is_file():
        raise ArtifactError(f"{splits_dir} is not a finished splits folder (run "
                            "`csound-assistant data split` first, or pass --no-merge)")
    return train


def merge_into_train(splits_dir: Path, rows: list[dict]) -> dict:
    """Add ``rows`` to splits/train.jsonl, skipping ones already there and any that ``screen``
    drops (a rows file written before the screen existed); note it in the splits record so the
    train stage's input hash changes.

    Each file is replaced atomically, and the record's counts are read off the train file
    itself, so a run killed between the two writes is set right by the next one."""
    train = _train_file(splits_dir)
    text = train.read_text()
    existing = [json.loads(line) for line in text.splitlines() if line.strip()]
    seen = {_row_key(row) for row in existing}
    new = []
    for row in rows:
        key = _row_key(row)
        if key not in seen and screen(row) is None:
            seen.add(key)
            new.append(row)
    if new:
        with atomic_write(train) as fh:
            fh.write(text if text.endswith("\n") or not text else text + "\n")
            for row in new:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    total = sum((row.get("meta") or {}).get("source") == "feedback" for row in existing + new)
    record = json.loads((splits_dir / RECORD_NAME).read_text())
    record["feedback_rows"] = total
    if isinstance(record.get("rows"), dict) and "train" in record["rows"]:
        record["rows"]["train"] = len(existing) + len(new)
    write_json(splits_dir / RECORD_NAME, record)
    return {"train": str(train), "added": len(new), "total_feedback_rows": total}
