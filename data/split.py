"""``csound-assistant data split``: deterministic train/validation/test splits grouped by source.

Rows derived from one manual example (same ``meta.group``) always land in the same split, so no
variant of a test example is trained on. Groups are shuffled by the seed and dealt to the split
that is furthest below its share of rows; the same seed and rows give the same splits.

``keep_in_train`` (the row hashes an adapter to be continued was trained on: the shipped
starter's) pins every group holding one of those rows to train before the deal, so a rebuilt
data set (a new manual, a sandbox that drops some examples) cannot move rows the adapter saw
into validation or test.

``feedback`` (a finished ``data from-feedback`` folder, ``stage_records.Feedback``) adds its rows
to train, never to validation or test, each once and only if it passes today's screen.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
from pathlib import Path

from csound_assistant.artifacts import stage_output
from csound_assistant.errors import DataError
from csound_assistant.row_identity import row_hash
from csound_assistant.stage_records import Feedback, Splits

from .validate import read_rows, validate_rows

SPLITS = ("train", "validation", "test")
# Rows the builder writes from templates rather than from the manual (data/patches.py): they go
# to train and validation only, so the test split keeps measuring manual-derived tasks.
NOT_FOR_TEST = {"patch"}


def is_extra_cut(row: dict) -> bool:
    """A FIM row beyond its example's first cut (``data build --fim-cuts``): training material.
    It neither counts towards its group's size nor goes to validation or test, so the held-out
    splits are the same rows whatever the number of cuts."""
    meta = row.get("meta")
    return isinstance(meta, dict) and bool(meta.get("cut"))


def row_group(row: dict) -> str:
    """``meta.group``, or the row's own content hash when it has none (a group of one)."""
    group = (row.get("meta") or {}).get("group") if isinstance(row.get("meta"), dict) else None
    if group:
        return str(group)
    body = {k: v for k, v in row.items() if k != "meta"}
    return "row:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def assign_groups(sizes: dict[str, int], ratios: tuple[float, ...], seed: int,
                  pinned: frozenset[str] = frozenset()) -> dict[str, str]:
    """Group -> split name. ``pinned`` groups go to train; each other group goes to the split
    whose row count is furthest below its share; every split with a positive ratio gets a group
    when there are enough groups."""
    groups = sorted(g for g in sizes if g not in pinned)
    random.Random(seed).shuffle(groups)
    share = {s: r for s, r in zip(SPLITS, ratios) if r > 0}
    filled = dict.fromkeys(share, 0)
    out: dict[str, str] = {g: "train" for g in sorted(pinned) if g in sizes}
    filled["train"] += sum(sizes[g] for g in out)
    if len(groups) >= len(share):
        for split in share:
            if split != "train":
                out[groups[-1]] = split
                filled[split] += sizes[groups.pop()]
    for g in groups:
        split = min(share, key=lambda s: (filled[s] / share[s], s))
        out[g] = split
        filled[split] += sizes[g]
    return out


def parse_ratios(text: str | tuple) -> tuple[float, float, float]:
    values = tuple(float(x) for x in (text.split(",") if isinstance(text, str) else text))
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0 or values[0] <= 0:
        raise DataError(f"ratios must be three non-negative numbers train,validation,test with "
                        f"train > 0, e.g. 0.9,0.05,0.05; got {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def split_dataset(rows_path: str | Path, out_dir: str | Path, *, seed: int = 0,
                  ratios: tuple[float, float, float] | str = (0.9, 0.05, 0.05),
                  force: bool = False, keep_in_train: frozenset[str] | None = None,
                  feedback: Feedback | None = None) -> dict:
    """Write ``out_dir/{train,validation,test}.jsonl`` + ``record.json``; return the record.
    ``keep_in_train``: row hashes (``row_identity.row_hash``) whose groups stay in train;
    ``feedback``: a feedback folder whose rows join train."""
    rows_path, out_dir = Path(rows_path), Path(out_dir)
    ratios = parse_ratios(ratios)
    if out_dir.exists() and not force:
        raise DataError(f"{out_dir} already exists; pass --force to replace it")
    parsed, problems = read_rows(rows_path)
    report = validate_rows(parsed)
    problems += report.problems
    if problems:
        raise DataError(f"{rows_path} has problems; fix them (see `csound-assistant data "
                        f"validate`) before splitting", problems=problems)
    rows = [row for _, row in parsed]
    feedback_rows = feedback.train_rows() if feedback else []  # damaged: stop before writing
    groups = [row_group(row) for row in rows]
    extra = [is_extra_cut(row) for row in rows]
    synthetic = {g for row, g in zip(rows, groups)
                 if (row.get("meta") or {}).get("task") in NOT_FOR_TEST}
    sizes = collections.Counter(g for g, x in zip(groups, extra) if not x)
    pinned = frozenset(g for row, g in zip(rows, groups)
                       if keep_in_train and row_hash(row) in keep_in_train)
    assignment = assign_groups({g: n for g, n in sizes.items() if g not in synthetic}, ratios,
                               seed, pinned)
    assignment.update(assign_groups({g: n for g, n in sizes.items() if g in synthetic},
                                    (ratios[0], ratios[1], 0.0), seed, pinned))
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    held_out_cuts = 0
    for row, group, x in zip(rows, groups, extra):
        split = assignment.get(group, "test")  # a group of extra cuts alone: held out below
        if x and split != "train":
            held_out_cuts += 1
            continue
        by_split[split].append(row)
    added = _add_new(by_split["train"], feedback_rows)
    group_sets = {s: {g for g, a in assignment.items() if a == s} for s in SPLITS}
    with stage_output(out_dir, force=force) as tmp:
        for split, split_rows in by_split.items():
            with open(tmp / f"{split}.jsonl", "w") as fh:
                for row in split_rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        from_feedback = {} if feedback is None else {
            "feedback": {"dir": str(feedback.folder), "rows_sha256": feedback.rows_sha256(),
                         "rows": feedback.rows},
            "feedback_rows": added}
        record = Splits.write(
            tmp, source=rows_path, seed=seed, ratios=list(ratios),
            rows={s: len(r) for s, r in by_split.items()},
            groups={s: len(g) for s, g in group_sets.items()},
            rows_without_group=sum(1 for g in groups if g.startswith("row:")),
            kept_in_train={"row_hashes": len(keep_in_train or ()), "groups": len(pinned)},
            extra_fim_cuts={"train": sum(1 for r in by_split["train"] if is_extra_cut(r)),
                            "dropped_from_held_out": held_out_cuts},
            test_groups=sorted(group_sets["test"]),
            tasks={s: dict(collections.Counter((r.get("meta") or {}).get("task", "?") for r in rs))
                   for s, rs in by_split.items()},
            **from_feedback,
        )
    return record


def _add_new(train: list[dict], rows: list[dict]) -> int:
    """Append to ``train`` each of ``rows`` whose text (``row_hash``) it lacks; how many."""
    seen = {row_hash(row) for row in train}
    added = 0
    for row in rows:
        key = row_hash(row)
        if key not in seen:
            seen.add(key)
            train.append(row)
            added += 1
    return added
