"""What isolation costs: the sandbox of a git revision against the working tree's, side by side.

    .venv/bin/python bench/sandbox_isolation.py --before 5635a19 --limit 300 --rounds 2

Each configuration runs in its own process (``--worker``), alternating over ``--rounds``, on
the same manual examples: check_many, then render_many (2 s). Prints a Markdown table of
seconds per file, the after/before ratio per round, and every example whose verdict differs
between the two (``--limit 0`` for all 1,312 files). The "before" sandbox is loaded from
``git show REV:csound_assistant/sandbox.py`` as it was; both use the working tree's plugin
selection (``sandbox_plugins.py``), which this comparison does not change.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_sandbox(rev: str | None):
    if rev is None:
        from csound_assistant import sandbox
        return sandbox
    source = subprocess.run(["git", "show", f"{rev}:csound_assistant/sandbox.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sandbox_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("csound_assistant.sandbox_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def worker(rev: str | None, files: list[str], workers: int, seconds: float) -> dict:
    sandbox = load_sandbox(rev)
    codes = [open(f, errors="replace").read() for f in files]
    sandbox.check(codes[0])  # warm: plugin probe, opcode lists, isolation probe
    out = {}
    for mode, fn, kw in (("check", sandbox.check_many, {}),
                         ("render", sandbox.render_many, {"seconds": seconds})):
        start = time.monotonic()
        results = fn(codes, workers=workers, **kw)
        out[mode] = {"s_per_file": (time.monotonic() - start) / len(codes),
                     "verdicts": [r.category for r in results]}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the earlier sandbox")
    parser.add_argument("--examples", default="/usr/share/doc/csound-doc/html/examples")
    parser.add_argument("--limit", type=int, default=300, help="every n-th file to get this many")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        files = json.loads(args.files.read_text())
        rev = args.before if args.worker == "before" else None
        print(json.dumps(worker(rev, files, args.workers, args.seconds)))
        return
    files = sorted(glob.glob(os.path.join(args.examples, "*.csd")))
    if args.limit:
        files = files[:: max(1, len(files) // args.limit)][: args.limit]
    listing = Path(tempfile.mkdtemp()) / "files.json"
    listing.write_text(json.dumps(files))
    print(f"{len(files)} examples, {args.workers} workers, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| round | sandbox | check s/file | render s/file |\n|---|---|---|---|")
    rows, verdicts = [], {}
    for n in range(1, args.rounds + 1):
        for name in ("before", "after"):
            proc = subprocess.run(
                [sys.executable, __file__, "--before", args.before, "--worker", name,
                 "--files", str(listing), "--workers", str(args.workers),
                 "--seconds", str(args.seconds)], check=True, capture_output=True, text=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"round": n, "sandbox": name, **{m: result[m]["s_per_file"]
                                                        for m in ("check", "render")}})
            verdicts[name] = {m: result[m]["verdicts"] for m in ("check", "render")}
            label = f"{args.before} (unconfined)" if name == "before" else "bubblewrap"
            print(f"| {n} | {label} | {rows[-1]['check']:.3f} | {rows[-1]['render']:.3f} |",
                  flush=True)
    print()
    for n in range(1, args.rounds + 1):
        before, after = (r for r in rows if r["round"] == n)
        print(f"round {n}: after/before check {after['check'] / before['check']:.2f}x, "
              f"render {after['render'] / before['render']:.2f}x")
    differ = {}
    for mode in ("check", "render"):
        pairs = zip(files, verdicts["before"][mode], verdicts["after"][mode])
        differ[mode] = [(os.path.basename(f), a, b) for f, a, b in pairs if a != b]
        print(f"\n{mode}: {len(differ[mode])} of {len(files)} verdicts differ"
              + "".join(f"\n  {f}: {a} -> {b}" for f, a, b in differ[mode]))
    if args.out:
        args.out.write_text(json.dumps({"files": len(files), "rows": rows, "differ": differ},
                                       indent=1))


if __name__ == "__main__":
    main()
