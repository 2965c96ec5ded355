"""Raw llama-cpp-python decode speed of one model at several GGUF types, in one run.

    .venv/bin/python bench/quant_decode.py A.gguf B.gguf ... [--threads 2 --tokens 64 --repeats 5]

Greedy, end-of-sequence ignored, the same ChatML prompt for every file; the files are measured in
alternating rounds (so that load on a shared machine hits them alike) and the median per file is
reported. Which type decodes fastest on a CPU depends on its dot-product kernels more than on
bits per weight; the quality cost of each type is what `export`'s gate measures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from csound_assistant.prompt_format import get_format

QUESTION = "Write a Csound instrument that plays a 440 Hz sine wave with an envelope."


def decode_rate(llm, tokens: list[int], n: int) -> float:
    llm.reset()
    times = []
    for _ in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
        times.append(time.perf_counter())
        if len(times) == n:
            break
    return (n - 1) / (times[-1] - times[0])  # after the first token: decode only


def main():
    from csound_assistant.llamacpp import load

    llama_cpp = load()

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ggufs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    prompt = get_format("chatml").chat_prompt([{"role": "user", "content": QUESTION}])
    models = {}
    for path in args.ggufs:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=args.threads,
                              n_threads_batch=args.threads, verbose=False)
        models[path] = (llm, llm.tokenize(prompt.encode(), add_bos=False, special=True))
    rates = {path: [] for path in models}
    for _ in range(args.repeats):
        for path, (llm, tokens) in models.items():
            rates[path].append(decode_rate(llm, tokens, args.tokens))
    print(f"| GGUF | MiB | decode tokens/s (median of {args.repeats}) | all |\n|---|---|---|---|")
    for path, values in rates.items():
        print(f"| {path.name} | {path.stat().st_size / 2**20:.0f} | {statistics.median(values):.1f}"
              f" | {' '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
