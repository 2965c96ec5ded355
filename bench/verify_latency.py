"""Where a verified answer's time goes (issue 24's p50 <= 10 s): ``eval run --verify N``'s own
path (``eval/runtime_model.py``, ``evaluate_model``), with the seconds each request spent
blocked on each phase of ``runtime/verify.py`` (decode, check, repair-decode, repair-check; csound
is Csound's own run inside check) and each candidate's queue / prompt / decode times.

    nice .venv/bin/python bench/verify_latency.py runs/default/export/csound-assistant.Q8_0.gguf \
        --decoder csound --verify 4 --verify-seconds 30 --threads 2 \
        --out bench/results/verify/latency-dev

Dev half only: held-out files are refused. Writes ``report.json`` (rows with their phases,
summary, load average before and after) and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    try:
        rows = evaluate_model(model, items, label=label, progress=False)
    finally:
        model.close()
    for row, answer in zip(rows, model.answers):
        row["waited"] = {k: round(v, 3) for k, v in answer.waited.items()}
        row["candidates"] = [{"tokens": r.completion_tokens, "queued_s": round(r.queued_s, 3),
                              "prompt_tokens": r.prompt_tokens, "cached": r.cached_tokens,
                              "prompt_s": round(r.prompt_s, 3), "decode_s": round(r.decode_s, 3),
                              "finish": r.finish_reason} for r in answer.spent]
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


if __name__ == "__main__":
    main()
