"""``csound-assistant eval run``: ask models for Csound, judge the answers in the sandbox.

For every model and item: generate ``samples`` answers (greedy for one, sampled for more),
extract the code, render it (which also compiles it) and score
- compile@1: the code parses and type-checks (Csound's verdict);
- sound@1: it renders without error, not silent and without NaN;
- coverage: the share of the item's required opcodes the code uses;
- latency: seconds per answer (and generated tokens per second);
- pass@k (with ``samples`` = k > 1): at least one of the k samples compiles / sounds.
Writes ``report.json``, ``report.md``, ``report.png`` and ``record.json`` into one folder.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from csound_assistant import sandbox
from csound_assistant.artifacts import sha256_file, stage_output, write_json
from csound_assistant.errors import ConfigError
from csound_assistant.extract import extract_code, opcodes_present
from csound_assistant.sampling import eval_temperature
from csound_assistant.stage_records import Eval

from .models import load_model
from .tasks import (
    TASKS_PATH,
    TEST_SECONDS,
    Item,
    load_tasks,
    load_test_split,
    round_robin,
    spread,
)

NOT_COMPILED = ("no-code", "refused", "syntax", "unknown-opcode", "plugin")
METRICS = ("compile@1", "sound@1", "coverage")


def score_answer(item: Item, answer: str, *, render_timeout: float = 20.0) -> dict:
    """Judge one answer: extracted code, sandbox category, compiled, sound, coverage."""
    if item.is_fim:
        code = item.prefix + answer + item.suffix
    else:
        code = extract_code(answer)
    if code is None:
        return {"code": None, "category": "no-code", "compiled": False, "sound": False,
                "coverage": 0.0 if item.required_opcodes else None, "errors": []}
    # no sound files staged, as `serve --verify` judges: an answer that reads fox.wav does not
    # play for a user who lacks it (issue 24, item 3)
    result = sandbox.render(code, seconds=item.seconds, timeout=render_timeout)
    present = opcodes_present(code, item.required_opcodes)
    return {
        "code": code, "category": result.category,
        "compiled": result.category not in NOT_COMPILED, "sound": result.audible,
        "coverage": sum(present) / len(present) if present else None,  # None: nothing asked
        "peak": result.peak, "errors": [str(d) for d in result.errors][:3],
    }


def _summary(rows: list[dict], samples: int) -> dict:
    """Means over items; pass@k over the k samples of an item."""
    if not rows:
        return {}
    by_item: dict[tuple, list[dict]] = {}
    for row in rows:
        by_item.setdefault((row["source"], row["id"]), []).append(row)
    first = [group[0] for group in by_item.values()]
    out = {
        "items": len(by_item),
        "compile@1": statistics.mean(r["compiled"] for r in rows),
        "sound@1": statistics.mean(r["sound"] for r in rows),
        "coverage": _mean([r["coverage"] for r in rows if r["coverage"] is not None]),
        "latency_s": statistics.mean(r["latency"] for r in rows),
        "latency_p50_s": statistics.median(r["latency"] for r in rows),
        "tokens_per_s": sum(r["tokens"] for r in rows) / max(1e-9, sum(r["latency"] for r in rows)),
        "categories": _count(r["category"] for r in first),
    }
    if any("repairs" in r for r in rows):  # --repair: the first answers' verdicts too
        out["first_compile@1"] = statistics.mean(r.get("first_compiled", r["compiled"])
                                                 for r in rows)
        out["first_sound@1"] = statistics.mean(r.get("first_sound", r["sound"]) for r in rows)
        out["repair_requests"] = sum(r.get("repairs", 0) for r in rows)
        out["repaired"] = sum("first_answer" in r and r["answer"] != r["first_answer"]
                              for r in rows)
    if any("verified" in r for r in rows):  # --verify: how each returned answer was chosen
        out["verified"] = _count(r["verified"] for r in rows if "verified" in r)
    if samples > 1:
        out[f"compile@{samples}"] = statistics.mean(
            any(r["compiled"] for r in g) for g in by_item.values())
        out[f"sound@{samples}"] = statistics.mean(
            any(r["sound"] for r in g) for g in by_item.values())
    return out


def _mean(values: list) -> float | None:
    return statistics.mean(values) if values else None


def _count(values) -> dict:
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items()))


def reference_code(item: Item) -> str | None:
    return item.prefix + item.reference + item.suffix if item.is_fim else item.reference


def playable(items: list[Item], limit: int | None, workers: int = 2) -> tuple[list[Item], int]:
    """Up to ``limit`` items (round-robin over kinds) whose reference answer itself renders
    audibly here: a test row needing a display or a missing plugin cannot be asked for.
    Returns (items, references rejected)."""
    shuffled = list(items)
    random.Random(0).shuffle(shuffled)  # rows come in manual order: FL* GUI examples first
    queue, kept, rejected = round_robin(shuffled), [], 0
    batch = max(8, 2 * (limit or len(queue)))
    while queue and (limit is None or len(kept) < limit):
        chunk, queue = queue[:batch], queue[batch:]
        results = sandbox.render_many([reference_code(i) or "" for i in chunk], workers=workers,
                                      seconds=TEST_SECONDS)
        for item, result in zip(chunk, results):
            if result.audible and (limit is None or len(kept) < limit):
                kept.append(item)
            elif not result.audible:
                rejected += 1
    order = {id(item): i for i, item in enumerate(items)}
    return sorted(kept, key=lambda item: order[id(item)]), rejected


def collect_items(tasks_path=None, test_path=None, *, limit: int | None = 20,
                  use_tasks: bool = True, log=print) -> list[Item]:
    items: list[Item] = []
    if use_tasks:
        items += spread(load_tasks(tasks_path or TASKS_PATH), limit)
    if test_path:
        test, rejected = playable(load_test_split(test_path), limit)
        log(f"test split: {len(test)} items whose reference answers sound "
            f"({rejected} references skipped: silent, GUI, plugin or input-less here)")
        items += test
    if not items:
        raise ConfigError("nothing to evaluate: give a task file and/or a test split")
    return items


# Csound tokenizes at 1.4-2.1 characters a token (SmolLM2: numbers digit by digit, tabs), so the
# low end makes a budget that fits (data/validate.py's 2.5 is a typical row's); an answer also
# opens with a sentence or two of prose before its code block.
MIN_CHARS_PER_TOKEN = 1.4
PROSE_TOKENS = 96


def token_budget(item: Item, floor: int) -> int:
    """New tokens allowed for one answer: ``floor``, raised to fit the reference answer. With a
    flat 256, over half of the test split's whole-file answers (fix-the-bug rows repeat the
    file) could not be written out even by a perfect model, and a cut file fails to compile."""
    if not item.reference:
        return floor
    extra = 0 if item.is_fim else PROSE_TOKENS
    return max(floor, int(len(item.reference) / MIN_CHARS_PER_TOKEN) + extra)


def evaluate_model(model, items: list[Item], *, label: str, samples: int = 1,
                   max_new_tokens: int = 256, temperature: float | None = None,
                   repeat_penalty: float = 1.0, repair: int = 0,
                   progress: bool = True) -> list[dict]:
    """Each item's answers, scored. With ``repair`` N, a chat answer whose code does not
    compile goes back to the model with Csound's error up to N times (csound_assistant.repair,
    as ``serve --repair N`` does); the row keeps the first answer's verdict as ``first_*``.
    A model that verifies (``RuntimeModel``, ``eval run --verify N``) says how it chose each
    answer (``verified``) and what its first candidate was: scored as ``first_*``."""
    temperature = eval_temperature(samples, temperature)
    rows = []
    jobs = [(item, k) for item in items for k in range(samples)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"eval {label}", unit="answer")
    for item, k in jobs:
        kwargs = {"max_tokens": token_budget(item, max_new_tokens),
                  "temperature": temperature, "seed": k,
                  "repeat_penalty": repeat_penalty}
        if item.is_fim:
            gen = model.fim(item.prefix, item.suffix, **kwargs)
        else:
            gen = model.chat(item.messages, **kwargs)
        row = {"model": label, "source": item.source, "id": item.id, "kind": item.kind,
               "sample": k, "answer": gen.text, "latency": gen.latency, "tokens": gen.tokens,
               "required_opcodes": item.required_opcodes, **score_answer(item, gen.text)}
        if gen.verified is not None:
            row = _verified(item, row, gen)
        elif repair and not item.is_fim:
            row = _repair(model, item, row, repair, kwargs)
        rows.append(row)
        if bar:
            bar.update(1)
            bar.set_postfix(sound=f"{statistics.mean(r['sound'] for r in rows):.2f}")
    if bar:
        bar.close()
    return rows


def _verified(item: Item, row: dict, gen) -> dict:
    first = row if gen.first_text == gen.text else {"answer": gen.first_text,
                                                     **score_answer(item, gen.first_text or "")}
    return {**row, **{f"first_{key}": first[key]
                      for key in ("answer", "category", "compiled", "sound")},
            "verified": gen.verified, "repairs": gen.repairs}


def _repair(model, item: Item, row: dict, rounds: int, kwargs: dict) -> dict:
    from csound_assistant.repair import repaired

    extra = []

    def chat(messages):
        extra.append(model.chat(messages, **kwargs))
        return extra[-1].text

    fix, made = repaired(row["answer"], rounds, chat)
    first = {f"first_{key}": row[key] for key in ("answer", "category", "compiled", "sound")}
    row = {**row, **first, "repairs": made,
           "latency": row["latency"] + sum(g.latency for g in extra),
           "tokens": row["tokens"] + sum(g.tokens for g in extra)}
    if fix is not None:
        row.update(answer=fix, **score_answer(item, fix))
    return row


def summarize(rows: list[dict], labels: list[str], samples: int) -> dict:
    out = {}
    answers = {(r["model"], r["source"], r["id"], r["sample"]): r["answer"] for r in rows}
    for label in labels:
        mine = [r for r in rows if r["model"] == label]
        # e.g. F16 vs Q4_K_M: how often quantization changed the (greedy) answer at all
        same = [answers.get((labels[0], r["source"], r["id"], r["sample"])) == r["answer"]
                for r in mine]
        out[label] = {
            "same_answer_as_first": statistics.mean(same) if same else None,
            "overall": _summary(mine, samples),
            "by_source": {s: _summary([r for r in mine if r["source"] == s], samples)
                          for s in sorted({r["source"] for r in mine})},
            "by_kind": {k: _summary([r for r in mine if r["kind"] == k], samples)
                        for k in sorted({r["kind"] for r in mine})},
        }
    return out


def run_eval(models: dict[str, str], out_dir: str | Path, *, tasks_path=None, test_path=None,
             use_tasks: bool = True, max_new_tokens: int = 256, limit: int | None = 20,
             samples: int = 1, temperature: float | None = None, repeat_penalty: float = 1.0,
             repair: int = 0, verify: int = 0, verify_seconds: float = 60.0,
             decoder: str | None = None, n_threads: int | None = None,
             n_ctx: int = 2048, prompt_format: str | None = None,
             prompt_formats: dict[str, str] | None = None, api_model: str | None = None,
             force: bool = False, progress: bool = True, log=print) -> dict:
    """Evaluate each model (label -> GGUF path, ``embedded`` or an OpenAI-compatible URL) on
    the task file and/or a test split; publish the report folder ``out_dir``; return the
    report (``report["summary"][label]["overall"]["sound@1"]`` and so on; the headline numbers
    are also in ``report["models"][label]["summary"]``). ``prompt_formats`` (label -> format
    name) overrides ``prompt_format`` for single models."""
    if not models:
        raise ConfigError("no model to evaluate")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    items = collect_items(tasks_path, test_path, limit=limit, use_tasks=use_tasks, log=log)
    log(f"{len(items)} items x {samples} sample(s) x {len(models)} model(s)")
    from .report import write_markdown, write_plot

    with stage_output(out_dir, force=force) as tmp:
        rows, described = [], {}
        started = time.time()
        for label, spec in models.items():
            fmt = (prompt_formats or {}).get(label, prompt_format)
            model = load_model(spec, prompt_format=fmt, n_ctx=n_ctx,
                               n_threads=n_threads, api_model=api_model, verify=verify,
                               verify_seconds=verify_seconds, decoder=decoder)
            try:
                described[label] = {"spec": spec, **model.describe()}
                rows += evaluate_model(model, items, label=label, samples=samples,
                                       max_new_tokens=max_new_tokens,
                                       temperature=temperature, repeat_penalty=repeat_penalty,
                                       repair=repair, progress=progress)
            finally:
                model.close()
        labels = list(models)
        settings = {"samples": samples, "max_new_tokens": max_new_tokens, "limit": limit,
                    "token_budget": f"max(max_new_tokens, reference characters / "
                                    f"{MIN_CHARS_PER_TOKEN} (+{PROSE_TOKENS} for chat))",
                    "temperature": eval_temperature(samples, temperature),
                    "repeat_penalty": repeat_penalty, "repair": repair, "verify": verify,
                    "verify_seconds": verify_seconds if verify else None,
                    "decoder": decoder or "csound for a GGUF, the server's for a URL",
                    "n_threads": n_threads, "n_ctx": n_ctx,
                    "early_stop": "greedy token loops; a closed </CsoundSynthesizer>"}
        summary = summarize(rows, labels, samples)
        for label in labels:
            overall = summary[label]["overall"]
            described[label]["summary"] = {
                **{k: overall.get(k) for k in (*METRICS, "latency_s", "tokens_per_s")},
                "opcode_coverage": overall.get("coverage"), "tasks": overall.get("items")}
        report = {"models": described, "settings": settings, "summary": summary, "items": rows,
                  "seconds": time.time() - started}
        write_json(tmp / "report.json", report)
        write_markdown(tmp / "report.md", report)
        write_plot(tmp / "report.png", report)
        inputs = {}
        if use_tasks:
            path = Path(tasks_path or TASKS_PATH)
            inputs["tasks"] = {"path": str(path), "sha256": sha256_file(path)}
        if test_path:
            inputs["test"] = {"path": str(test_path), "sha256": sha256_file(test_path)}
        Eval.write(tmp, models=described, inputs=inputs, settings=settings,
                   metrics={label: {m: report["summary"][label]["overall"].get(m)
                                    for m in (*METRICS, "latency_s")} for label in labels})
    return report
