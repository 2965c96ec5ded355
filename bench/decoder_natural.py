"""Plain against Csound-aware decoding (runtime/decoder.py), scored as ``eval run`` scores,
with every answer made through the server's own path (``eval/runtime_model.py``): the same
process kind for both decoders, so compile@1, sound@1 and tokens/s compare.

    nice .venv/bin/python bench/decoder_natural.py runs/default/export/csound-assistant.Q8_0.gguf \
        --decoder csound --verify 4 --tasks eval/natural/dev.jsonl --out bench/results/decoder/x

``--split runs/default/splits/validation.jsonl`` scores a data split's items instead (FIM
middles among them). Writes ``report.json`` (rows, summary, settings, the engine's decode tokens/s, load average
before and after) and prints the summary line. Choose on the dev half only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None) -> dict:
    from csound_assistant.eval.runner import collect_items, evaluate_model, summarize
    from csound_assistant.eval.runtime_model import RuntimeModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--decoder", choices=["plain", "csound"], default="plain")
    ap.add_argument("--verify", type=int, default=0)
    ap.add_argument("--verify-seconds", type=float, default=30.0)
    ap.add_argument("--tasks", type=Path, default=Path("eval/natural/dev.jsonl"))
    ap.add_argument("--split", type=Path, default=None,
                    help="a data split JSONL (validation: FIM items) instead of --tasks")
    ap.add_argument("--limit", type=int, default=0, help="items (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=256,
                    help="the floor of each answer's token budget (raised to fit a reference)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report-held-out", action="store_true",
                    help="allow a held-out or test file (its one report)")
    args = ap.parse_args(argv)
    held_out = "heldout" in args.tasks.name or (args.split and "test" in args.split.name)
    if held_out and not args.report_held_out:
        raise SystemExit("held-out and test items are reported once, never chosen on: choose "
                         "on eval/natural/dev.jsonl or the validation split, or pass "
                         "--report-held-out for that one report")

    load_before = os.getloadavg()
    items = collect_items(None if args.split else args.tasks, args.split,
                          limit=args.limit or None, use_tasks=not args.split, log=print)
    model = RuntimeModel.from_gguf(args.model, prompt_format=None, n_ctx=args.n_ctx,
                                   n_threads=args.threads, verify=args.verify,
                                   verify_seconds=args.verify_seconds, decoder=args.decoder)
    label = f"{args.decoder}" + (f"+verify{args.verify}" if args.verify else "")
    started = time.time()
    try:
        rows = evaluate_model(model, items, label=label, progress=False,
                              max_new_tokens=args.max_new_tokens)
        engine = model.service.engine.metrics.summary()
    finally:
        model.close()
    summary = summarize(rows, [label], 1)[label]["overall"]
    latencies = sorted(r["latency"] for r in rows)
    report = {
        "settings": {**vars(args), "model": str(args.model), "tasks": str(args.tasks),
                     "out": str(args.out)},
        "summary": summary, "p50_latency_s": latencies[len(latencies) // 2],
        "engine": engine, "seconds": time.time() - started,
        "load_average": {"before": load_before, "after": os.getloadavg()}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({"label": label, **{k: summary.get(k) for k in
                      ("compile@1", "sound@1", "latency_s", "tokens_per_s")},
                      "p50_latency_s": report["p50_latency_s"],
                      "decode_tokens_per_s": engine["decode_tokens_per_s"],
                      "refused_steps": engine["counts"].get("decoder_refused_steps"),
                      "stuck_steps": engine["counts"].get("decoder_stuck_steps"),
                      "seconds": round(report["seconds"]), "load": report["load_average"]}))
    return report


if __name__ == "__main__":
    main()
