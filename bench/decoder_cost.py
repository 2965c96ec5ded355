"""What the Csound-aware decoder costs per token, against a GBNF grammar doing part of its job.

1. Mask cost: real answers (a ``bench/decoder_natural.py`` report) are replayed token by token
   through a ``runtime/decoder.py`` constraint; at each step the logits are random with the
   answer's own next token on top (the model's favourite), so greedy judges one token where
   that is valid and sampling (top_k 40) judges until 40 valid ones are found. Prints the share
   of steps judged and microseconds per judged step.
2. Decode speed: the same chat requests, greedy, plain and csound alternating in one process.
3. GBNF: the same model decodes with llama.cpp's grammar sampler holding only the opcode names
   (a code block whose lines are ``outputs opcode args``), against no grammar: tokens/s.

    nice .venv/bin/python bench/decoder_cost.py runs/default/export/csound-assistant.Q8_0.gguf \
        --answers bench/results/decoder/main-dev-plain/report.json --tokens 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PROMPT = "Write a Csound instrument: a sine tone with an envelope."


def mask_cost(backend, answers: list[str], temperature: float, seed: int = 0) -> dict:
    from csound_assistant.runtime.backend import Sampling
    from csound_assistant.runtime.prompts import PromptBuilder

    rng = np.random.default_rng(seed)
    prompts = PromptBuilder(backend, "chatml")
    steps = judged = refused = 0
    seconds = 0.0
    for text in answers:
        prompt = prompts.chat_tokens([{"role": "user", "content": PROMPT}])
        constraint = backend.constraint(prompt, Sampling(temperature=temperature, top_k=40))
        for token in backend.tokenize(text, special=False):
            logits = rng.normal(0, 2, backend.n_vocab).astype(np.float32)
            logits[token] = logits.max() + 1
            steps += 1
            if constraint.doc.judging:
                judged += 1
                start = time.perf_counter()
                refused += constraint.mask(logits)
                seconds += time.perf_counter() - start
            constraint.accept(token)
    return {"temperature": temperature, "answers": len(answers), "steps": steps,
            "judged": judged, "refused": refused,
            "us_per_judged_step": 1e6 * seconds / max(judged, 1)}


def gbnf(names: list[str]) -> str:
    alternatives = " | ".join(json.dumps(n) for n in names)
    return "\n".join([
        'root ::= prose "```csound\\n" line+ "```\\n" prose',
        'prose ::= [^`]*',
        'line ::= [ ]* (outputs [ ]+)? opcode ([ ]+ [^\\n`]*)? "\\n" | [ ]* [^\\n`a-z]* "\\n"',
        'outputs ::= ident ([ ]* "," [ ]* ident)*',
        'ident ::= [a-zA-Z_] [a-zA-Z0-9_]*',
        f"opcode ::= {alternatives}",
    ])


def grammar_speed(model_path: Path, names: list[str], tokens: int, threads: int) -> dict:
    from csound_assistant.llamacpp import load

    llama_cpp = load()
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=1024, n_threads=threads,
                          verbose=False)
    prompt = llm.tokenize(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
                          .encode(), add_bos=False, special=True)
    out = {}
    for label, grammar in (("none", None),
                           ("gbnf", llama_cpp.LlamaGrammar.from_string(gbnf(names),
                                                                       verbose=False))):
        llm.reset()
        n, first = 0, None
        for _ in llm.generate(prompt, temp=0, grammar=grammar, reset=True):
            first = first or time.perf_counter()
            n += 1
            if n >= tokens:
                break
        out[label] = {"tokens": n, "tokens_per_s": (n - 1) / (time.perf_counter() - first)}
    llm.close()
    return out


def decode_speed(model_path: Path, requests: list[str], tokens: int, threads: int) -> dict:
    """Greedy decode tokens/s of the same chat requests, plain and csound alternating in one
    process (each generation runs ``tokens`` tokens past any end, so lengths are equal)."""
    from csound_assistant.runtime.backend import LlamaBackend, Sampling
    from csound_assistant.runtime.prompts import PromptBuilder

    backends = {name: LlamaBackend(model_path, n_ctx=1024, n_threads=threads, cache_slots=0,
                                   decoder=name) for name in ("plain", "csound")}
    seconds = {name: 0.0 for name in backends}
    try:
        for text in requests:
            for name, backend in backends.items():
                prompt = PromptBuilder(backend).chat_tokens([{"role": "user", "content": text}])
                sampling = Sampling(temperature=0, max_tokens=tokens)
                constraint = backend.constraint(prompt, sampling)
                gen = backend.generate(prompt, sampling, constraint=constraint)
                next(gen)
                start = time.perf_counter()
                for _ in range(tokens - 1):
                    next(gen)
                seconds[name] += time.perf_counter() - start
                gen.close()
    finally:
        for backend in backends.values():
            backend.close()
    n = len(requests) * (tokens - 1)
    return {name: {"tokens": n, "tokens_per_s": n / s} for name, s in seconds.items()}


def main(argv=None) -> dict:
    from csound_assistant.opcode_table import OpcodeTable
    from csound_assistant.runtime.backend import LlamaBackend

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--answers", type=Path, required=True, help="a decoder_natural report")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed-requests", type=int, default=6)
    ap.add_argument("--grammar-tokens", type=int, default=32)
    ap.add_argument("--tasks", type=Path, default=Path("eval/natural/dev.jsonl"),
                    help="requests for the decode-speed part")
    args = ap.parse_args(argv)
    rows = json.loads(args.answers.read_text())["rows"]
    answers = [r["answer"] for r in rows if "```" in r["answer"]][: args.limit]
    backend = LlamaBackend(args.model, n_ctx=1024, n_threads=args.threads, cache_slots=0,
                           decoder="csound")
    try:
        report = {"mask": [mask_cost(backend, answers, t) for t in (0.0, 0.7)]}
    finally:
        backend.close()
    requests = [json.loads(line)["prompt"] for line in args.tasks.read_text().splitlines()
                if line.strip()][: args.speed_requests]
    report["decode"] = decode_speed(args.model, requests, args.tokens, args.threads)
    report["grammar"] = grammar_speed(args.model, OpcodeTable.from_manual().names,
                                      args.grammar_tokens, args.threads)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
