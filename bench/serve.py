"""Serving speed, in one run on one machine: (a) raw llama-cpp-python, (b) this server,
(c) the seed's FastAPI + transformers server (bench/seed_server.py) on the same model, plus
cached vs cold time to first token for an editor-style FIM request with a ~1,500-token prefix.

    .venv/bin/python bench/serve.py                      # embedded SmolLM2, all cores
    .venv/bin/python bench/serve.py --threads 1 --repeats 5 --out bench/results
    .venv/bin/python bench/serve.py --threads 1 --concurrency-only 4 --tokens 32 --repeats 3

Decode speed counts exactly ``--tokens`` new tokens (end-of-sequence ignored, greedy) after
the same prompt text; time to first token is measured by the client: from sending the request
to the first token (for the seed server, which cannot stream, the latency of a 1-token
request). (a), (b) and (c) are measured in alternating rounds, so that load on a shared
machine hits all three alike.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from runtime_helpers import free_port  # noqa: E402

from csound_assistant.prompt_format import get_format  # noqa: E402

QUESTION = "Write a Csound instrument that plays a 440 Hz sine wave with an envelope."
EXAMPLES = "/usr/share/doc/csound-doc/html/examples"


def wait_healthy(url: str, proc, timeout: float = 300.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code in (200, 404, 405):
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


# --- (a) raw llama-cpp-python -------------------------------------------------------------------
def raw_once(llm, tokens: list[int], n: int) -> dict:
    llm.reset()
    t0 = time.perf_counter()
    times = []
    for _ in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
        times.append(time.perf_counter())
        if len(times) == n:
            break
    return {"ttft_s": times[0] - t0, "decode_tps": (n - 1) / (times[-1] - times[0])}


# --- (b) this server ----------------------------------------------------------------------------
def stream_events(client: httpx.Client, path: str, body: dict):
    """(seconds to first content, seconds of the last content, final event)."""
    t0 = time.perf_counter()
    first = last = None
    final = None
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event.get("stop"):
                final = event
                break
            if event.get("content"):
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
    return first - t0, last - t0, final


def server_once(client, prompt: str, n: int) -> dict:
    first, last, final = stream_events(client, "/completion", {
        "prompt": prompt, "n_predict": n, "ignore_eos": True, "temperature": 0, "top_k": 1,
        "cache_prompt": False})
    got = final["tokens_predicted"]
    return {"ttft_s": first, "decode_tps": (got - 1) / (last - first),
            "server_decode_tps": final["timings"]["predicted_per_second"]}


def fim_once(client, prefix: str, suffix: str, typed: str, cold: bool) -> float:
    first, _, _ = stream_events(client, "/infill", {
        "input_prefix": prefix, "input_suffix": suffix, "prompt": typed, "n_predict": 4,
        "temperature": 0, "cache_prompt": not cold})
    return first


# --- (c) the seed server ------------------------------------------------------------------------
def seed_once(client, prompt: str, n: int) -> dict:
    def latency(k):
        t0 = time.perf_counter()
        r = client.post("/complete", json={"prompt": prompt, "max_tokens": k, "min_tokens": k,
                                           "temperature": 0})
        r.raise_for_status()
        return time.perf_counter() - t0
    one, full = latency(1), latency(n)
    return {"ttft_s": one, "decode_tps": (n - 1) / (full - one)}


def editor_file(tokens_wanted: int, tokenize) -> tuple[str, str]:
    """A long Csound file from the manual's examples, cut at ~``tokens_wanted`` tokens."""
    text = ""
    for path in sorted(glob.glob(f"{EXAMPLES}/*.csd")):
        body = Path(path).read_text(errors="replace")
        start, end = body.find("<CsInstruments>"), body.find("</CsInstruments>")
        if start >= 0 and end > start:
            text += body[start + len("<CsInstruments>"):end].strip() + "\n\n"
        if len(tokenize(text)) >= tokens_wanted:
            break
    ids = tokenize(text)[:tokens_wanted]
    return text[: len(text) * len(ids) // len(tokenize(text))], "\nendin\n"


def concurrency_bench(gguf: Path, threads: int, clients: int, tokens: int, rounds: int) -> dict:
    """Aggregate decode tokens/s of ``clients`` concurrent requests, one at a time
    (``--parallel 1``) vs decoded together (``--parallel clients``), alternating servers."""
    import concurrent.futures

    procs, urls = {}, {}
    try:
        for parallel in (1, clients):
            port = free_port()
            procs[parallel] = subprocess.Popen(
                [sys.executable, "-m", "csound_assistant.cli", "serve", str(gguf),
                 "--prompt-format", "chatml", "--threads", str(threads), "--n-ctx", "4096",
                 "--parallel", str(parallel), "--port", str(port), "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            urls[parallel] = f"http://127.0.0.1:{port}"
            wait_healthy(urls[parallel] + "/health", procs[parallel])
        out = {p: [] for p in urls}

        def one(url, i):
            r = httpx.post(f"{url}/v1/completions", timeout=900, json={
                "prompt": f"instr {i + 1}\n  aout oscili", "max_tokens": tokens,
                "temperature": 0, "ignore_eos": True})
            return r.json()["usage"]["completion_tokens"]

        for r in range(rounds):
            for parallel, url in urls.items():
                print(f"concurrency round {r + 1}/{rounds}, --parallel {parallel}",
                      file=sys.stderr)
                t0 = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    n = sum(pool.map(lambda i: one(url, i), range(clients)))
                out[parallel].append(n / (time.perf_counter() - t0))
        return {"clients": clients, "tokens": tokens,
                "tokens_per_s": {str(p): v for p, v in out.items()}}
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="default: the embedded SmolLM2 GGUF")
    ap.add_argument("--base-dir", default="runs/bench-serve/base",
                    help="HF checkpoint of the same model for the seed server (imported from "
                         "the GGUF when missing)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--fim-repeats", type=int, default=3)
    ap.add_argument("--fim-tokens", type=int, default=1500)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--concurrency-only", type=int, default=0, metavar="N",
                    help="only compare N concurrent requests on --parallel 1 vs --parallel N")
    args = ap.parse_args()
    if args.concurrency_only:
        from csound_assistant.base.importer import embedded_gguf

        res = concurrency_bench(Path(args.gguf) if args.gguf else embedded_gguf(), args.threads,
                                args.concurrency_only, args.tokens, args.repeats)
        one, many = (statistics.median(v) for v in res["tokens_per_s"].values())
        print(f"| {res['clients']} concurrent requests x {res['tokens']} tokens | aggregate "
              f"tokens/s |\n|---|---|\n| --parallel 1 | {one:.1f} |\n| --parallel "
              f"{res['clients']} | {many:.1f} |\n\nper round: {res['tokens_per_s']}; "
              f"load average {os.getloadavg()[0]:.1f}")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "serve_parallel.json").write_text(json.dumps(res, indent=2) + "\n")
        return
    from csound_assistant.llamacpp import load

    llama_cpp = load()

    from csound_assistant.base.importer import embedded_gguf

    gguf = Path(args.gguf) if args.gguf else embedded_gguf()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompt = get_format("chatml").chat_prompt([{"role": "user", "content": QUESTION}])
    load = [os.getloadavg()[0]]
    llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    results = {"machine": {"cpus": os.cpu_count(), "threads": args.threads}, "model": str(gguf),
               "prompt_tokens": len(prompt_ids), "new_tokens": args.tokens}

    base = Path(args.base_dir)
    if not args.skip_seed and not (base / "config.json").is_file():
        from csound_assistant.base.importer import import_base

        print(f"importing {gguf.name} as a HF checkpoint into {base}", file=sys.stderr)
        import_base(None if args.gguf is None else gguf, base)
    procs, urls = {}, {}
    try:
        for name, cmd, probe in (
            ("server", [sys.executable, "-m", "csound_assistant.cli", "serve", str(gguf),
                        "--prompt-format", "chatml", "--threads", str(args.threads),
                        "--n-ctx", "4096", "--log-level", "warning"], "/health"),
            ("seed", [sys.executable, str(Path(__file__).parent / "seed_server.py"), str(base),
                      "--host", "127.0.0.1", "--threads", str(args.threads)], "/docs"),
        ):
            if name == "seed" and args.skip_seed:
                continue
            port = free_port()
            t0 = time.monotonic()
            procs[name] = subprocess.Popen(cmd + ["--port", str(port)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            urls[name] = f"http://127.0.0.1:{port}"
            wait_healthy(urls[name] + probe, procs[name])
            results[f"{name}_start_s"] = time.monotonic() - t0
        raw, ours, seed_rows = [], [], []
        with httpx.Client(base_url=urls["server"], timeout=600) as client, \
                httpx.Client(base_url=urls.get("seed", urls["server"]), timeout=600) as seed:
            raw_once(llm, prompt_ids, 4)  # warm up
            server_once(client, prompt, 4)
            if "seed" in urls:
                seed_once(seed, prompt, 4)
            # Rounds alternate the three, so load on the shared machine hits each alike.
            for i in range(args.repeats):
                print(f"decode round {i + 1}/{args.repeats}", file=sys.stderr)
                raw.append(raw_once(llm, prompt_ids, args.tokens))
                ours.append(server_once(client, prompt, args.tokens))
                if "seed" in urls:
                    seed_rows.append(seed_once(seed, prompt, args.tokens))
            tokenize = lambda s: llm.tokenize(s.encode(), add_bos=False)  # noqa: E731
            prefix, suffix = editor_file(args.fim_tokens, tokenize)
            other, _ = editor_file(args.fim_tokens // 3, lambda s: tokenize("; other\n" + s))
            results["fim_prefix_tokens"] = len(tokenize(prefix))
            fim = {"cold": [], "cached": [], "after_other_file": []}
            for i in range(args.fim_repeats):
                print(f"FIM round {i + 1}/{args.fim_repeats}", file=sys.stderr)
                fim["cold"].append(fim_once(client, prefix, suffix, "", cold=True))
                fim["cached"].append(fim_once(client, prefix, suffix, f"  a{i} ", cold=False))
                fim_once(client, "; other\n" + other, suffix, "", cold=False)
                fim["after_other_file"].append(
                    fim_once(client, prefix, suffix, f"  b{i} ", cold=False))
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
    results["raw"], results["server"], results["fim"] = raw, ours, fim
    if seed_rows:
        results["seed"] = seed_rows
    load.append(os.getloadavg()[0])
    results["load_average"] = load
    report(results, out)


def report(results: dict, out: Path) -> None:
    raw, ours = results["raw"], results["server"]
    seed = results.get("seed")
    fim = results["fim"]
    raw_tps, our_tps = median(raw, "decode_tps"), median(ours, "decode_tps")
    rows = [("(a) raw llama-cpp-python", raw_tps, median(raw, "ttft_s"), "-"),
            ("(b) this server (/completion, SSE)", our_tps, median(ours, "ttft_s"),
             f"{results['server_start_s']:.1f}")]
    if seed:
        rows.append(("(c) seed server (FastAPI + transformers)", median(seed, "decode_tps"),
                     median(seed, "ttft_s"), f"{results['seed_start_s']:.1f}"))
    fim_cold, fim_cached = statistics.median(fim["cold"]), statistics.median(fim["cached"])
    fim_other = statistics.median(fim["after_other_file"])
    # Ratios are taken within each round (same load), then the median over rounds.
    overhead = 1 - statistics.median(o["decode_tps"] / r["decode_tps"] for o, r in zip(ours, raw))
    lines = [
        f"Model {Path(results['model']).name}; {results['machine']['threads']} threads on "
        f"{results['machine']['cpus']} CPUs; load average {results['load_average'][0]:.1f} -> "
        f"{results['load_average'][1]:.1f}; prompt {results['prompt_tokens']} tokens, "
        f"{results['new_tokens']} new tokens, medians of {len(raw)} runs.",
        "",
        "| backend | decode tokens/s | time to first token (s) | start-up (s) |",
        "|---|---|---|---|",
        *[f"| {name} | {tps:.1f} | {ttft:.3f} | {start} |" for name, tps, ttft, start in rows],
        "",
        f"FIM with a {results['fim_prefix_tokens']}-token prefix (/infill, time to first token):",
        "",
        "| request | time to first token (s) |",
        "|---|---|",
        f"| cold (cache_prompt: false) | {fim_cold:.3f} |",
        f"| cached (same file, a few characters typed) | {fim_cached:.3f} |",
        f"| cached after a request on another file (saved slot) | {fim_other:.3f} |",
        "",
        "Targets (ratios within each round, median over rounds):",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| server overhead < 5% of raw decode speed | {overhead * 100:.1f}% | "
        f"{'yes' if overhead < 0.05 else 'no'} |",
    ]
    if seed:
        speedup = statistics.median(o["decode_tps"] / c["decode_tps"] for o, c in zip(ours, seed))
        lines.append(f"| >= 5x the seed server's decode speed | {speedup:.1f}x | "
                     f"{'yes' if speedup >= 5 else 'no'} |")
    fim_speedup = fim_cold / fim_cached
    lines.append(f"| cached FIM first token >= 5x faster than cold | {fim_speedup:.1f}x | "
                 f"{'yes' if fim_speedup >= 5 else 'no'} |")
    table = "\n".join(lines)
    print(table)
    (out / "serve.md").write_text(table + "\n")
    (out / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(rows, fim_cold, fim_cached, fim_other, results, out / "serve.png")
    print(f"\nwrote {out / 'serve.md'}, {out / 'serve.json'}, {out / 'serve.png'}")


def plot(rows, fim_cold, fim_cached, fim_other, results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = [r[0].split(" ", 1)[0] + "\n" + r[0].split(" ", 1)[1].split(" (")[0] for r in rows]
    axes[0].bar(names, [r[1] for r in rows], color=["#777", "#2a7", "#c55"][: len(rows)])
    axes[0].set_ylabel("tokens/s")
    axes[0].set_title(f"decode speed ({results['new_tokens']} tokens)")
    axes[1].bar(names, [r[2] for r in rows], color=["#777", "#2a7", "#c55"][: len(rows)])
    axes[1].set_ylabel("seconds")
    axes[1].set_title(f"time to first token ({results['prompt_tokens']}-token prompt)")
    axes[2].bar(["cold", "cached", "cached after\nanother file"],
                [fim_cold, fim_cached, fim_other], color=["#c55", "#2a7", "#5a9"])
    axes[2].set_yscale("log")
    axes[2].set_ylabel("seconds (log)")
    axes[2].set_title(f"FIM first token, {results['fim_prefix_tokens']}-token prefix")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{Path(results['model']).name}, {results['machine']['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
