"""Judging sampled answers and keeping the ones that play as training rows.

The judge is the eval's (``eval.runner.score_answer``: the sandbox renders the code; it plays
when it compiles, renders, is not silent and reads no missing file, the verdict ``serve
--verify`` takes too) plus the opcode the request named. What becomes a row:
- a kept answer (plays, uses the requested opcode), up to ``per_prompt`` per request, never a
  train row's own answer (the row teaches that already), and for a fix-the-bug row only a
  repair of the code it was given;
- a fix pair: an answer that does not compile, with Csound's first error, as the repair request
  ``--verify`` sends (``repair.Problem``), answered by the kept answer closest to it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

from csound_assistant.eval.tasks import Item

ORIGIN = "self-sample"


def judge(job: tuple[Item, str, str]) -> dict:
    """One answer's verdict (a JSON line of the round's verdicts file)."""
    from csound_assistant.eval.runner import score_answer

    item, key, answer = job
    verdict = score_answer(item, answer)
    return {"key": key, "id": item.id, "kind": item.kind, "answer": answer,
            **{k: verdict[k] for k in ("category", "compiled", "sound", "coverage")}}


def judge_all(items: dict[str, Item], answers: dict[str, str], out: Path, *, workers: int,
              progress: bool = True) -> list[dict]:
    """Every answer judged in the sandbox, ``workers`` at a time, appended to ``out`` as they
    finish; answers a killed run judged already are read back, not judged again."""
    from multiprocessing import get_context

    from tqdm import tqdm

    verdicts = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            try:
                v = json.loads(line)
            except json.JSONDecodeError:
                continue
            verdicts[v["key"]] = v
    jobs = [(items[key.partition("~")[0]], key, answer) for key, answer in sorted(answers.items())
            if key not in verdicts]
    pool = get_context("spawn").Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        judged = pool.imap_unordered(judge, jobs, chunksize=2) if pool else map(judge, jobs)
        with out.open("a", encoding="utf-8") as fh:
            for v in tqdm(judged, total=len(jobs), desc="sandbox", unit="answer",
                          disable=not progress):
                verdicts[v["key"]] = v
                fh.write(json.dumps(v) + "\n")
                fh.flush()
    finally:
        if pool:
            pool.close()
            pool.join()
    return [verdicts[k] for k in sorted(verdicts)]


def kept(verdict: dict) -> bool:
    """Worth learning from: it plays, and uses the opcode the request named."""
    return bool(verdict["sound"]) and verdict["coverage"] in (None, 1.0)


def verdict_counts(verdicts: list[dict]) -> dict:
    """Per kind: answers, kept, requests with one kept; and the sandbox's categories."""
    by_kind: dict[str, dict[str, list[bool]]] = {}
    for v in verdicts:
        by_kind.setdefault(v["kind"], {}).setdefault(v["id"], []).append(kept(v))
    kinds = {kind: {"answers": sum(map(len, groups.values())),
                    "kept": sum(sum(g) for g in groups.values()),
                    "requests": len(groups),
                    "requests_with_one_kept": sum(any(g) for g in groups.values())}
             for kind, groups in sorted(by_kind.items())}
    return {"kinds": kinds, "categories": dict(sorted(Counter(v["category"]
                                                               for v in verdicts).items()))}


def answer_code(row: dict, answer: str | None = None) -> str:
    """The Csound of ``answer`` (or the row's own answer), stripped: what the sandbox judged."""
    from csound_assistant.extract import extract_code
    from csound_assistant.prompt_format import to_messages

    if "middle" in row:
        return (row["middle"] if answer is None else answer).strip()
    text = to_messages(row)[-1]["content"] if answer is None else answer
    return (extract_code(text) or "").strip()


def make_rows(items: dict[str, Item], verdicts: list[dict], split_rows: list[str], *,
              per_prompt: int, per_prompt_fim: int, fix_similarity: float, fix_pairs: bool,
              seed: int, have: Counter | None = None) -> tuple[list[dict], dict]:
    """Rows from one round's verdicts; ``have`` counts the rows earlier rounds gave each
    request (a request keeps at most ``per_prompt`` in all). Returns rows and counts."""
    have = have or Counter()
    rng = random.Random(seed)
    good: dict[str, list[str]] = {}
    broken: dict[str, list[str]] = {}
    for v in verdicts:
        text = v["answer"]
        if kept(v) and text.strip() and text not in good.get(v["id"], []):
            good.setdefault(v["id"], []).append(text)
        elif not v["compiled"] and v["category"] not in ("no-code", "refused"):
            broken.setdefault(v["id"], []).append(text)
    rows, counts = [], Counter()
    for ident in sorted(good):
        item = items[ident]
        row = _split_row(split_rows, ident) if ident.startswith("train-") else None
        fresh = _usable(row, good[ident], fix_similarity, counts)
        limit = (per_prompt_fim if item.is_fim else per_prompt) - have[ident]
        for answer in rng.sample(fresh, max(0, min(limit, len(fresh)))):
            rows.append(_answer_row(item, row, answer))
            counts["kept"] += 1
        if fix_pairs and not item.is_fim and ident in broken:
            pair = _fix_row(item, broken[ident], good[ident], rng)
            if pair:
                rows.append(pair)
                counts["fix pairs"] += 1
    return rows, dict(counts)


def _usable(row: dict | None, answers: list[str], fix_similarity: float,
            counts: Counter) -> list[str]:
    if row is None:
        return answers
    own = answer_code(row)
    fresh = [a for a in answers if answer_code(row, a) != own]
    counts["own answer"] += len(answers) - len(fresh)
    if (row.get("meta") or {}).get("task", "").startswith("fix-"):
        close = [a for a in fresh if SequenceMatcher(
            None, answer_code(row, a), own, autojunk=False).ratio() >= fix_similarity]
        counts["fix unlike the row's"] += len(fresh) - len(close)
        fresh = close
    return fresh


def _split_row(split_rows: list[str], ident: str) -> dict:
    return json.loads(split_rows[int(ident.partition("-")[2]) - 1])


def _meta(item: Item, row: dict | None, **extra) -> dict:
    base = dict(row.get("meta") or {}) if row else {
        "task": "natural", "opcode": item.required_opcodes[0] if item.required_opcodes else None,
        "group": item.id}
    return {**base, "origin": ORIGIN, "request": item.id, **extra}


def _answer_row(item: Item, row: dict | None, answer: str) -> dict:
    """The request's own row with ``answer`` in place of its answer (a chat row for a natural
    request)."""
    if row is None:
        return {"messages": [*item.messages, {"role": "assistant", "content": answer}],
                "meta": _meta(item, None)}
    new = json.loads(json.dumps(row))
    if "middle" in new:
        new["middle"] = answer
    elif "messages" in new:
        new["messages"][-1]["content"] = answer
    else:
        new["output"] = answer
    new["meta"] = _meta(item, row)
    return new


def _fix_row(item: Item, broken: list[str], good: list[str], rng) -> dict | None:
    """A failed answer's code and Csound's first error, as ``--verify`` asks for a repair,
    answered by the kept answer whose code is closest to it; None when Csound gives no
    error to quote."""
    from csound_assistant.extract import extract_code
    from csound_assistant.repair import diagnose

    failed = rng.choice(broken)
    _, problem = diagnose(failed)
    if problem is None:
        return None
    fix = max(good, key=lambda a: SequenceMatcher(None, extract_code(a) or "", problem.code,
                                                  autojunk=False).ratio())
    return {"messages": [*problem.request(), {"role": "assistant", "content": fix}],
            "meta": _meta(item, None, task="fix-self", group=item.id)}
