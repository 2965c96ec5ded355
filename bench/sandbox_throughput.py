"""Sandbox throughput on the Csound manual's examples: files/s of check_many and render_many.

    .venv/bin/python bench/sandbox_throughput.py --limit 200 --workers 1 2
    .venv/bin/python bench/sandbox_throughput.py --limit 0 --workers 2 --plugins all selected

``--plugins all`` gives Csound its whole plugin folder, ``selected`` only what the code needs
(``csound_assistant/sandbox_plugins.py``, the default); with both, every file's verdict is
compared between the two and any difference is listed.

Prints a Markdown table and the category counts; timings depend on the machine's load, so
note `uptime` beside any number you keep.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import time

from csound_assistant import sandbox, sandbox_plugins
from csound_assistant.manual import MANUAL_EXAMPLES


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", default=str(MANUAL_EXAMPLES))
    parser.add_argument("--limit", type=int, default=200, help="every n-th file to get this many")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--plugins", nargs="+", choices=["all", "selected"], default=["selected"])
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.examples, "*.csd")))
    if args.limit:
        files = files[:: max(1, len(files) // args.limit)][: args.limit]
    codes = [open(f, errors="replace").read() for f in files]
    print(f"{len(codes)} examples, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores\n")
    print("| mode | plugins | workers | files/s | s/file |\n|---|---|---|---|---|")
    categories, verdicts = {}, {}
    selected = sandbox.folder_for
    full = sandbox_plugins.plugin_folder()
    for mode, fn, kw in (("check", sandbox.check_many, {}),
                         ("render", sandbox.render_many, {"seconds": args.seconds})):
        for plugins in args.plugins:
            sandbox.folder_for = selected if plugins == "selected" else (
                lambda code, csound, flags: str(full) if full else None)
            sandbox_plugins.heavy_opcodes(sandbox.CSOUND, tuple(sandbox.COMMON_FLAGS))  # probe
            for workers in args.workers:
                start = time.monotonic()
                results = fn(codes, workers=workers, **kw)
                took = time.monotonic() - start
                print(f"| {mode} | {plugins} | {workers} | {len(codes) / took:.1f} | "
                      f"{took / len(codes):.3f} |", flush=True)
                categories[mode, plugins] = collections.Counter(r.category for r in results)
                verdicts[mode, plugins] = [r.category for r in results]
    sandbox.folder_for = selected
    for (mode, plugins), counts in categories.items():
        print(f"\n{mode} ({plugins} plugins): "
              + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for mode in ("check", "render"):
        if (mode, "all") in verdicts and (mode, "selected") in verdicts:
            differ = [(os.path.basename(f), a, b) for f, a, b in
                      zip(files, verdicts[mode, "all"], verdicts[mode, "selected"]) if a != b]
            print(f"\n{mode}: {len(differ)} of {len(files)} verdicts differ between all and "
                  f"selected plugins" + "".join(f"\n  {f}: {a} -> {b}" for f, a, b in differ))


if __name__ == "__main__":
    main()
