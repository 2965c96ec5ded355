"""Sandbox throughput on the Csound manual's examples: files/s of check_many and render_many.

    .venv/bin/python bench/sandbox_throughput.py --limit 200 --workers 1 2

Prints a Markdown table and the category counts; timings depend on the machine's load, so
note `uptime` beside any number you keep.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import time

from csound_assistant import sandbox


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", default="/usr/share/doc/csound-doc/html/examples")
    parser.add_argument("--limit", type=int, default=200, help="every n-th file to get this many")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.examples, "*.csd")))
    files = files[:: max(1, len(files) // args.limit)][: args.limit]
    codes = [open(f, errors="replace").read() for f in files]
    print(f"{len(codes)} examples, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores\n")
    print("| mode | workers | files/s | s/file |\n|---|---|---|---|")
    categories = {}
    for mode, fn, kw in (("check", sandbox.check_many, {}),
                         ("render", sandbox.render_many, {"seconds": args.seconds})):
        for workers in args.workers:
            start = time.monotonic()
            results = fn(codes, workers=workers, **kw)
            took = time.monotonic() - start
            print(f"| {mode} | {workers} | {len(codes) / took:.1f} | {took / len(codes):.3f} |")
            categories[mode] = collections.Counter(r.category for r in results)
    for mode, counts in categories.items():
        print(f"\n{mode}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))


if __name__ == "__main__":
    main()
