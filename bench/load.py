"""Load test of the real server on the embedded model: many concurrent clients on loopback, a share
of them leaving mid-stream, for a bounded number of requests; latency p50/p95 and counts by status.

    .venv/bin/python bench/load.py                          # 50 clients, 200 requests
    .venv/bin/python bench/load.py --clients 50 --requests 200 --leave 0.2 --threads 1 \\
        --out bench/results/load.json

``csound-assistant serve`` runs in a subprocess on 127.0.0.1 (the embedded SmolLM2 GGUF,
``--prompt-format chatml``, the server's default queue and --timeout unless given). The requests
cycle through OpenAI chat (SSE), llama.cpp ``/infill``, Ollama ``/api/generate`` (NDJSON) and
``/v1/csound/check``; ``--leave`` of the streams close their connection after the first token.
A client answered 503 waits the advised ``Retry-After`` and tries once more (``--no-retry``: not),
which measures whether the advice was honest: a retry that is refused again waited too little.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from runtime_helpers import free_port  # noqa: E402

KINDS = ("chat-stream", "infill", "ollama-stream", "check")
CSD_PREFIX = "instr 1\n  kenv linseg 0, 0.1, 1, p3 - 0.2, 1, 0.1, 0\n  aout "
GOOD_CSOUND = "instr 1\n  aout oscili 0.2, 440\n  outs aout, aout\nendin\n"


def request_for(kind: str, i: int, tokens: int) -> tuple[str, dict, str | None]:
    """(path, JSON body, stream format or None) of request ``i``."""
    if kind == "chat-stream":
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": (
            f"Write a Csound instrument number {i} that plays a sine wave.")}],
            "max_tokens": tokens, "stream": True, "seed": i}, "sse"
    if kind == "infill":
        return "/infill", {"input_prefix": CSD_PREFIX, "input_suffix": "\nendin\n",
                           "n_predict": tokens, "seed": i}, None
    if kind == "ollama-stream":
        return "/api/generate", {"model": "csound-assistant", "prompt": f"instr {i}\n",
                                 "suffix": "endin\n", "options": {"num_predict": tokens,
                                                                  "seed": i}}, "ndjson"
    return "/v1/csound/check", {"code": GOOD_CSOUND}, None


async def one(client: httpx.AsyncClient, path: str, body: dict, stream: str | None,
              leave: bool) -> dict:
    """Send one request; for streams note the first token and, if ``leave``, hang up there."""
    t0 = time.perf_counter()
    out = {"status": None, "ttft_s": None, "left": False, "retry_after": None}
    try:
        async with client.stream("POST", path, json=body) as r:
            out["status"] = r.status_code
            out["retry_after"] = r.headers.get("retry-after")
            if r.status_code == 200 and stream:
                async for line in r.aiter_lines():
                    if _has_token(line, stream):
                        out["ttft_s"] = out["ttft_s"] or time.perf_counter() - t0
                        if leave:
                            out["left"] = True
                            break
            else:
                await r.aread()
    except httpx.HTTPError as exc:
        out["status"] = f"client error: {type(exc).__name__}"
    end = time.perf_counter()
    out.update(latency_s=end - t0, start=t0, end=end)
    return out


def _has_token(line: str, stream: str) -> bool:
    if stream == "sse":
        if not line.startswith("data: {"):
            return False
        choices = json.loads(line[6:]).get("choices") or [{}]
        return bool(choices[0].get("delta", {}).get("content"))
    return bool(line.strip()) and bool(json.loads(line).get("response"))


async def run_load(url: str, *, clients: int, requests: int, tokens: int, leave: float,
                   retry: bool, max_seconds: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    plan = []
    for i in range(requests):
        kind = KINDS[i % len(KINDS)]
        leaves = kind.endswith("stream") and rng.random() < leave
        plan.append((i, kind, leaves))
    queue = collections.deque(plan)
    rows: list[dict] = []
    stop_at = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client):
        while queue and time.monotonic() < stop_at:
            i, kind, leaves = queue.popleft()
            path, body, stream = request_for(kind, i, tokens)
            first = await one(client, path, body, stream, leaves)
            row = {"i": i, "kind": kind + (" (leaves)" if leaves else ""), **first}
            if retry and first["status"] == 503 and first["retry_after"]:
                wait = int(first["retry_after"])
                await asyncio.sleep(wait)
                again = await one(client, path, body, stream, leaves)
                row["retry"] = {"waited_s": wait, **again}
            rows.append(row)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return rows


def pct(values, q: float):
    values = sorted(v for v in values if v is not None)
    return values[max(0, math.ceil(q * len(values)) - 1)] if values else None


def summarize(rows: list[dict], health: dict, wall_s: float) -> dict:
    by_kind = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        ok = [r["latency_s"] for r in mine if r["status"] == 200]
        by_kind[kind] = {
            "n": len(mine), "status": dict(collections.Counter(str(r["status"]) for r in mine)),
            "p50_s": pct(ok, 0.5), "p95_s": pct(ok, 0.95),
            "ttft_p50_s": pct([r["ttft_s"] for r in mine if r["status"] == 200], 0.5),
            "ttft_p95_s": pct([r["ttft_s"] for r in mine if r["status"] == 200], 0.95),
            "refused_p95_s": pct([r["latency_s"] for r in mine if r["status"] != 200], 0.95)}
    retried = [r for r in rows if "retry" in r]
    drains, measured = drain_times(rows), drain_times(rows, measured_only=True)
    return {
        "requests": len(rows), "wall_s": wall_s,
        "first_attempt_status": dict(collections.Counter(str(r["status"]) for r in rows)),
        "final_status": dict(collections.Counter(
            str(r.get("retry", r)["status"]) for r in rows)),
        "by_kind": by_kind,
        "retry_after": {"n": len(retried),
                        "advised_p50_s": pct([r["retry"]["waited_s"] for r in retried], 0.5),
                        "advised_p95_s": pct([r["retry"]["waited_s"] for r in retried], 0.95),
                        "admitted_on_retry": sum(r["retry"]["status"] == 200 for r in retried),
                        "drain_p50_s": pct([d for _, d in drains], 0.5),
                        "drain_p95_s": pct([d for _, d in drains], 0.95),
                        "advice_over_drain_p50": pct([a / d for a, d in drains if d > 0], 0.5),
                        "advice_over_drain_p95": pct([a / d for a, d in drains if d > 0], 0.95),
                        "measured_n": len(measured),
                        "measured_advice_over_drain_p50": pct(
                            [a / d for a, d in measured if d > 0], 0.5),
                        "measured_advice_over_drain_p95": pct(
                            [a / d for a, d in measured if d > 0], 0.95)},
        "left_mid_stream": sum(r["left"] or r.get("retry", {}).get("left", False)
                               for r in rows),
        "server_counts": health.get("counts", {}), "server_checks": health.get("checks", {}),
    }


def drain_times(rows: list[dict], measured_only: bool = False) -> list[tuple[int, float]]:
    """(advised Retry-After, seconds until the generations in flight when the 503 came had all
    ended) for every 503 of the model's queue: what the advice should predict.
    ``measured_only``: only 503s after the first generation ended (before it, the server
    has no measured time and assumes 2 s a request)."""
    generations = [r for r in rows if not r["kind"].startswith("check")]
    attempts = [a for r in generations for a in (r, r.get("retry")) if a]
    admitted = [(a["start"], a["end"]) for a in attempts if a["status"] == 200]
    first_end = min((end for _, end in admitted), default=0.0)
    out = []
    for a in attempts:
        if a["status"] == 503 and a["retry_after"] and (
                not measured_only or a["end"] > first_end):
            ends = [end for start, end in admitted if start < a["end"] < end]
            if ends:
                out.append((int(a["retry_after"]), max(ends) - a["end"]))
    return out


def markdown(s: dict) -> str:
    def sec(v):
        return "-" if v is None else f"{v:.2f}"
    lines = ["| requests | n | status (first attempt) | p50 s | p95 s | first token p50 / p95 s |",
             "|---|---|---|---|---|---|"]
    for kind, k in s["by_kind"].items():
        status = ", ".join(f"{code}: {n}" for code, n in sorted(k["status"].items()))
        lines.append(f"| {kind} | {k['n']} | {status} | {sec(k['p50_s'])} | {sec(k['p95_s'])} "
                     f"| {sec(k['ttft_p50_s'])} / {sec(k['ttft_p95_s'])} |")
    ra = s["retry_after"]
    lines += ["", f"First attempts by status: {s['first_attempt_status']}; after one retry: "
              f"{s['final_status']}. Retry-After advised p50 {ra['advised_p50_s']} s, p95 "
              f"{ra['advised_p95_s']} s; the work ahead of a refused request took p50 "
              f"{_r(ra['drain_p50_s'])} s, p95 {_r(ra['drain_p95_s'])} s (advice / actual p50 "
              f"{_r(ra['advice_over_drain_p50'])}, p95 {_r(ra['advice_over_drain_p95'])}; the "
              f"{ra['measured_n']} after the first request ended: p50 "
              f"{_r(ra['measured_advice_over_drain_p50'])}, p95 "
              f"{_r(ra['measured_advice_over_drain_p95'])}); "
              f"{ra['admitted_on_retry']} of {ra['n']} retries admitted. "
              f"{s['left_mid_stream']} clients left mid-stream; wall {s['wall_s']:.0f} s."]
    return "\n".join(lines)


def _r(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def start_server(gguf: Path, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "csound_assistant.cli", "serve", str(gguf),
           "--prompt-format", "chatml", "--port", str(port), "--threads", str(args.threads),
           "--n-ctx", "2048", "--log-level", "warning"]
    for option in ("max_queue", "timeout", "parallel"):
        if getattr(args, option) is not None:
            cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_healthy(url: str, proc, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy in {timeout:g} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="default: the embedded SmolLM2 GGUF")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=200, help="first attempts, all clients")
    ap.add_argument("--tokens", type=int, default=24, help="max tokens per generation")
    ap.add_argument("--leave", type=float, default=0.25,
                    help="share of streamed requests that hang up after the first token")
    ap.add_argument("--no-retry", dest="retry", action="store_false")
    ap.add_argument("--max-seconds", type=float, default=900,
                    help="no new request starts after this")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--max-queue", type=int, default=None, help="server default unless given")
    ap.add_argument("--timeout", type=float, default=None, help="server default unless given")
    ap.add_argument("--parallel", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = ap.parse_args()
    from csound_assistant.base.importer import embedded_gguf

    gguf = Path(args.gguf) if args.gguf else embedded_gguf()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(gguf, port, args)
    try:
        wait_healthy(url, proc)
        t0 = time.perf_counter()
        rows = asyncio.run(run_load(url, clients=args.clients, requests=args.requests,
                                    tokens=args.tokens, leave=args.leave, retry=args.retry,
                                    max_seconds=args.max_seconds, seed=args.seed))
        wall = time.perf_counter() - t0
        time.sleep(1)  # let the last cancellations reach the counters
        health = httpx.get(f"{url}/health", timeout=30).json()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    summary = {"machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
               "args": {k: str(v) for k, v in vars(args).items()}, "model": gguf.name,
               **summarize(rows, health, wall)}
    print(markdown(summary))
    print(json.dumps({k: summary[k] for k in ("server_counts", "server_checks")}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
