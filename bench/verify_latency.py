"""Where a verified answer's time goes (issue 24's p50 <= 10 s): ``eval run --verify N``'s own
path (``eval/runtime_model.py``, ``evaluate_model``), with the seconds each request spent
blocked on each phase of ``runtime/verify.py`` (decode, check, repair-decode, repair-check; csound
is Csound's own run inside check) and each candidate's queue / prompt / decode times.

    nice .venv/bin/python bench/verify_latency.py runs/default/export/csound-assistant.Q8_0.gguf \
        --decoder csound --verify 4 --verify-seconds 30 --threads 2 \
        --out bench/results/verify/latency-dev

    nice .venv/bin/python bench/verify_latency.py runs/default/export/csound-assistant.Q8_0.gguf \
        --against 93a2ed4 --limit 24 --threads 1 --verify-seconds 120 --out /tmp/verify-ab

``--against REV`` answers every item twice with the same loaded model, once with
``runtime/verify.py`` as of git REV and once with the working tree's, alternating which goes
first and with no cached prompt for either: a paired before/after that a shared machine's
changing load cannot tilt. Each answer also records the CPU seconds the model's worker thread
spent before the answer was ready (``worker_cpu_s``: the decode work, whatever the load).

Dev half only: held-out files are refused. Writes ``report.json`` (rows with their phases,
summary, load average before and after) and prints the summary.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("decode", "check", "csound", "repair-decode", "repair-check", "total")


def _median(values) -> float | None:
    values = list(values)
    return round(statistics.median(values), 3) if values else None


def breakdown(rows: list[dict]) -> dict:
    """Median and mean seconds per phase, overall and by the path that produced the answer."""
    def stats(group):
        return {phase: {"p50": _median(r["waited"].get(phase, 0.0) for r in group),
                        "mean": round(statistics.mean(r["waited"].get(phase, 0.0)
                                                      for r in group), 3)}
                for phase in PHASES}
    out = {"all": {"n": len(rows), **stats(rows)}}
    for path in sorted({r["verified"] for r in rows}):
        group = [r for r in rows if r["verified"] == path]
        out[path] = {"n": len(group), **stats(group)}
    return out


def timings(answer) -> dict:
    """The phases a verified answer waited on, and each generation's own times."""
    return {"waited": {k: round(v, 3) for k, v in answer.waited.items()},
            "generations": [{"tokens": r.completion_tokens, "prompt_tokens": r.prompt_tokens,
                             "cached": r.cached_tokens, "queued_s": round(r.queued_s, 3),
                             "prompt_s": round(r.prompt_s, 3), "decode_s": round(r.decode_s, 3),
                             "finish": r.finish_reason} for r in answer.spent]}


def verify_at(rev: str):
    """``runtime/verify.py`` as of git ``rev``, importable beside the working tree's."""
    source = subprocess.run(["git", "show", f"{rev}:runtime/verify.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="verify-at-")) / "verify_at.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("csound_assistant.runtime._verify_at", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def paired(model, items, arms: dict) -> list[dict]:
    """Each item answered by every arm's ``verified_chat`` in turn (rotating the order)."""
    from csound_assistant.eval.runner import score_answer, token_budget

    svc, rows = model.service, []
    clock = time.pthread_getcpuclockid(svc.engine._thread.ident)
    for i, item in enumerate(items):
        names = list(arms)
        names = names[i % len(names):] + names[:i % len(names)]
        for name in names:
            tokens = svc.prompts.chat_tokens(item.messages)
            sampling = model._sampling(token_budget(item, 256), 0.0, 0, 1.0)
            cpu, start = time.clock_gettime(clock), time.monotonic()
            answer = model.loop.run_until_complete(
                arms[name].verified_chat(svc, None, tokens, sampling, clear_cache=True))
            latency, cpu = time.monotonic() - start, time.clock_gettime(clock) - cpu
            rows.append({"model": name, "id": item.id, "kind": item.kind, "latency": latency,
                         "worker_cpu_s": round(cpu, 3), "verified": answer.path,
                         "answer": answer.result.text, "load": os.getloadavg()[0],
                         "tokens": sum(r.completion_tokens for r in answer.spent),
                         **timings(answer),
                         **score_answer(item, answer.result.text)})
            print(json.dumps({k: rows[-1][k] for k in ("model", "id", "verified", "latency",
                                                       "worker_cpu_s", "sound", "load")}),
                  flush=True)
    return rows


def main(argv=None) -> dict:
    from csound_assistant.eval.runner import collect_items, evaluate_model, summarize
    from csound_assistant.eval.runtime_model import RuntimeModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--decoder", choices=["plain", "csound"], default="csound")
    ap.add_argument("--verify", type=int, default=4)
    ap.add_argument("--verify-seconds", type=float, default=30.0)
    ap.add_argument("--tasks", type=Path, default=Path("eval/natural/dev.jsonl"))
    ap.add_argument("--limit", type=int, default=0, help="items, spread over kinds (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--against", metavar="REV", default=None,
                    help="also answer each item with runtime/verify.py as of git REV (paired)")
    args = ap.parse_args(argv)
    if "heldout" in args.tasks.name or "test" in args.tasks.name:
        raise SystemExit(f"{args.tasks} is a held-out file: measure latency on "
                         "eval/natural/dev.jsonl")

    class Recording(RuntimeModel):
        answers: list = []

        def _answer(self, make):
            async def keep():
                answer = await make()
                self.answers.append(answer)
                return answer
            return super()._answer(keep)

    load_before = os.getloadavg()
    items = collect_items(args.tasks, None, limit=args.limit or None, use_tasks=True, log=print)
    model = Recording.from_gguf(args.model, prompt_format=None, n_ctx=args.n_ctx,
                                n_threads=args.threads, verify=args.verify,
                                verify_seconds=args.verify_seconds, decoder=args.decoder)
    label = f"{args.decoder}+verify{args.verify}"
    started = time.time()
    if args.against:
        from csound_assistant.runtime import verify

        try:
            rows = paired(model, items, {args.against: verify_at(args.against), "tree": verify})
        finally:
            model.close()
        return _paired_report(args, rows, load_before, started)
    try:
        rows = evaluate_model(model, items, label=label, progress=False)
    finally:
        model.close()
    for row, answer in zip(rows, model.answers):
        row.update(timings(answer))
    summary = summarize(rows, [label], 1)[label]["overall"]
    report = {"settings": {**vars(args), "model": str(args.model), "tasks": str(args.tasks),
                           "out": str(args.out)},
              "summary": summary, "phases": breakdown(rows), "seconds": time.time() - started,
              "load_average": {"before": load_before, "after": os.getloadavg()}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: summary.get(k) for k in ("compile@1", "sound@1", "latency_s",
                                                  "latency_p50_s", "verified")}))
    print(json.dumps(report["phases"]["all"]))
    print(json.dumps(report["load_average"]))
    return report


def _paired_report(args, rows, load_before, started) -> dict:
    arms = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]
        arms[name] = {"n": len(group), "sound@1": statistics.mean(r["sound"] for r in group),
                      "compile@1": statistics.mean(r["compiled"] for r in group),
                      "latency_p50_s": _median(r["latency"] for r in group),
                      "latency_mean_s": round(statistics.mean(r["latency"] for r in group), 3),
                      "worker_cpu_p50_s": _median(r["worker_cpu_s"] for r in group),
                      "worker_cpu_mean_s": round(statistics.mean(r["worker_cpu_s"]
                                                                 for r in group), 3),
                      "paths": dict(sorted(collections.Counter(r["verified"]
                                                               for r in group).items())),
                      "phases": breakdown(group)["all"]}
    names = list(arms)
    by_item = {(r["model"], r["id"]): r for r in rows}
    ids = list(dict.fromkeys(r["id"] for r in rows))
    same = sum(by_item[(names[0], i)]["answer"] == by_item[(names[1], i)]["answer"] for i in ids)
    report = {"settings": {**vars(args), "model": str(args.model), "tasks": str(args.tasks),
                           "out": str(args.out)},
              "arms": arms, "same_answer": same, "items": len(ids),
              "seconds": time.time() - started,
              "load_average": {"before": load_before, "after": os.getloadavg()}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: report[k] for k in ("arms", "same_answer", "items", "load_average")}))
    return report


if __name__ == "__main__":
    main()
