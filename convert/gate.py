"""The quality gate: how far a quantized GGUF drifts from the F16 GGUF on held-out Csound text.

Both models read the same token chunks through llama-cpp-python (``logits_all=True``); at every
position we compare the next-token distributions as llama.cpp's ``llama-perplexity
--kl-divergence`` does: mean KL(F16 || quant), the share of positions where both pick the same
top token, and each model's perplexity.

Thresholds. The anchors are llama.cpp's (Llama-2-7B vs F16): Q4_K_M KL 0.0127, same top token
94.7%, PPL ratio 1.0142; Q8_0 KL 0.00037. Small models lose more per bit, and SmolLM2's 576-wide
rows make most Q4_K_M tensors fall back to Q5_0/Q8_0. Measured here on the embedded
SmolLM2-135M (+ a tiny adapter), 4,088 held-out manual tokens: Q4_K_M with the importance matrix
KL 0.040, same top 89.6%, PPL ratio 1.041; without it KL 0.065, 86.1%, 1.092. The Q4_K_M gate
is the anchor loosened for small models: KL <= 0.08 (~6x), same top >= 85% (anchor - 10
points), PPL ratio <= 1.10; finer types get proportionally tighter bounds (Q8_0: KL <= 0.005,
~13x its anchor). A broken export (wrong tokenizer, rope or template metadata, a corrupt
importance matrix) is expected far past every bound (KL near or above 1); a model
past them is worse than llama.cpp's own expectations for the type even after the small-model
allowance, and the export fails unless ``--no-gate``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from csound_assistant.errors import DataError, ExportError, GateFailed
from csound_assistant.manual import MANUAL_EXAMPLES
from csound_assistant.prompt_format import PromptFormat


@dataclass(frozen=True)
class Threshold:
    kl: float  # mean KL divergence, nats
    top_token: float  # same top token, fraction
    ppl_ratio: float  # PPL(quant) / PPL(F16)


THRESHOLDS = {
    "F16": Threshold(0.001, 0.99, 1.002),
    "BF16": Threshold(0.002, 0.99, 1.004),
    "Q8_0": Threshold(0.005, 0.97, 1.01),
    "Q6_K": Threshold(0.02, 0.93, 1.03),
    "Q5_K_M": Threshold(0.04, 0.89, 1.06),
    "Q4_K_M": Threshold(0.08, 0.85, 1.10),
    "Q4_0": Threshold(0.12, 0.80, 1.15),  # Q4_K_M's allowance x1.5: a cruder 4-bit format
    "IQ4_NL": Threshold(0.12, 0.80, 1.15),  # as fast as Q4_0 on x86 (also repacked), as Q4_0
}
THRESHOLDS["IQ4_NL-out4"] = THRESHOLDS["IQ4_NL"]  # IQ4_NL with its output matrix at 4 bits too
ANCHOR = {"model": "Llama-2-7B", "quant": "Q4_K_M", "kl": 0.0127, "top_token": 0.947,
          "ppl_ratio": 1.0142}


# --- held-out text ---------------------------------------------------------------------------
def split_texts(path: Path, fmt: PromptFormat) -> list[str]:
    """Rows of a JSONL split rendered in the prompt format (every segment, as trained)."""
    texts, problems = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append("".join(t for t, _ in fmt.segments(json.loads(line))))
        except Exception as exc:  # bad JSON or a row of no known shape
            problems.append(f"{path}:{n}: {exc}")
    if problems:
        raise DataError(f"{path} has rows that cannot be rendered", problems[:20])
    return texts


def manual_files(part: str, examples: Path = MANUAL_EXAMPLES) -> list[Path]:
    """Csound manual example CSDs, alternately split: ``gate`` gets the odd ones and
    ``imatrix`` the even ones."""
    if not examples.is_dir():
        raise ExportError(f"no held-out text: {examples} is missing (apt install csound-doc) and "
                          "no splits/test.jsonl was given")
    files = sorted(p for p in examples.iterdir() if p.name.endswith((".csd", ".csd.gz")))
    return files[1::2] if part == "gate" else files[0::2]


def _read(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def manual_texts(part: str, examples: Path = MANUAL_EXAMPLES) -> list[str]:
    """The texts of ``manual_files``; the gate's half drops examples that also occur (under
    another name: the manual has copies) in the importance matrix's half."""
    texts = [_read(p) for p in manual_files(part, examples)]
    if part != "gate":
        return texts
    calibration = {_read(p) for p in manual_files("imatrix", examples)}
    return [t for t in texts if t not in calibration]


def spread(texts: list[str], tokens: int, chars_per_token: int = 12) -> list[str]:
    """Evenly spaced texts holding at least about ``tokens`` tokens (Csound runs 3-4 characters
    a token; the margin covers uneven lengths), so a budget samples the whole split rather than
    its first rows, which may all come from one source. Callers cut at ``tokens``."""
    total = sum(len(t) for t in texts)
    budget = tokens * chars_per_token
    if total <= budget:
        return texts
    step = total / budget
    return texts[:: max(1, int(step))]


def heldout_texts(splits_dir: Path | None, fmt: PromptFormat, part: str) -> tuple[list[str], str]:
    """(texts, where they came from): the test split for the gate, the train split for the
    importance matrix, else the manual examples."""
    name = "test.jsonl" if part == "gate" else "train.jsonl"
    if splits_dir is not None and (Path(splits_dir) / name).is_file():
        path = Path(splits_dir) / name
        return split_texts(path, fmt), str(path)
    return manual_texts(part), f"{MANUAL_EXAMPLES} ({'odd' if part == 'gate' else 'even'} files)"


# --- measurement -----------------------------------------------------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True, dtype=np.float64)).astype(np.float32)


def _chunk_logits(llm, chunk: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(chunk)
    return np.array(llm.scores[: len(chunk)], dtype=np.float32)


def compare(reference_gguf: str | Path, candidate_gguf: str | Path, texts: list[str], *,
            ctx: int = 512, max_tokens: int = 8192, n_threads: int | None = None,
            progress: bool = True) -> dict:
    """Perplexities, KL divergence and top-token agreement of two GGUFs on ``texts``."""
    from csound_assistant.llamacpp import load

    Llama = load().Llama

    kw = dict(n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, verbose=False, seed=0)
    if n_threads:
        kw["n_threads"] = n_threads
    ref = Llama(str(reference_gguf), **kw)
    cand = Llama(str(candidate_gguf), **kw)
    if ref.n_vocab() != cand.n_vocab():
        raise ExportError(f"{candidate_gguf} has a different vocabulary from {reference_gguf}")
    ids: list[int] = []
    for text in texts:
        ids += ref.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    chunks = [ids[i:i + ctx] for i in range(0, len(ids), ctx) if len(ids[i:i + ctx]) > 1]
    if not chunks:
        raise ExportError("the held-out text is empty: nothing to gate on")
    nll_ref, nll_cand, kls, same = [], [], [], []
    bar = _progress(len(chunks), progress)
    for chunk in chunks:
        lp = _log_softmax(_chunk_logits(ref, chunk))[:-1]
        lq = _log_softmax(_chunk_logits(cand, chunk))[:-1]
        target = np.array(chunk[1:])
        rows = np.arange(len(target))
        nll_ref.append(-lp[rows, target])
        nll_cand.append(-lq[rows, target])
        kls.append((np.exp(lp) * (lp - lq)).sum(-1, dtype=np.float64))
        same.append(lp.argmax(-1) == lq.argmax(-1))
        bar.update(1)
    bar.close()
    nll_ref, nll_cand = np.concatenate(nll_ref), np.concatenate(nll_cand)
    kl, same = np.concatenate(kls), np.concatenate(same)
    ppl_ref, ppl_cand = float(np.exp(nll_ref.mean())), float(np.exp(nll_cand.mean()))
    return {
        "tokens": int(kl.size), "chunks": len(chunks), "ctx": ctx,
        "ppl_f16": ppl_ref, "ppl": ppl_cand, "ppl_ratio": ppl_cand / ppl_ref,
        "kl_mean": float(kl.mean()), "kl_median": float(np.median(kl)),
        "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(kl.max()),
        "same_top_token": float(same.mean()),
    }


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="gate", unit="chunk", disable=not enabled, leave=False)


def judge(quant_type: str, stats: dict) -> dict:
    """Add the thresholds and a pass/fail verdict (with the reasons) to ``stats``."""
    limit = THRESHOLDS[quant_type]
    reasons = []
    if stats["kl_mean"] > limit.kl:
        reasons.append(f"mean KL {stats['kl_mean']:.4f} > {limit.kl}")
    if stats["same_top_token"] < limit.top_token:
        reasons.append(f"same top token {stats['same_top_token']:.1%} < {limit.top_token:.0%}")
    if stats["ppl_ratio"] > limit.ppl_ratio:
        reasons.append(f"PPL ratio {stats['ppl_ratio']:.4f} > {limit.ppl_ratio}")
    return {**stats, "threshold": asdict(limit), "passed": not reasons, "reasons": reasons}


def table(results: dict[str, dict]) -> str:
    """A Markdown table of gate results by quant type, with llama.cpp's anchor row."""
    lines = ["| quant | tokens | PPL F16 | PPL | PPL ratio | mean KL | p99 KL | same top | gate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for q, r in results.items():
        verdict = "pass" if r["passed"] else "FAIL: " + "; ".join(r["reasons"])
        lines.append(
            f"| {q} | {r['tokens']} | {r['ppl_f16']:.3f} | {r['ppl']:.3f} | {r['ppl_ratio']:.4f}"
            f" | {r['kl_mean']:.5f} | {r['kl_p99']:.4f} | {r['same_top_token']:.1%} | {verdict} |")
    a = ANCHOR
    lines.append(f"| {a['quant']} ({a['model']}, llama.cpp) | | | | {a['ppl_ratio']} | {a['kl']} |"
                 f" | {a['top_token']:.1%} | reference |")
    return "\n".join(lines)


def gate(reference_gguf, candidates: dict[str, Path], texts: list[str], *, enforce: bool = True,
         **kw) -> dict[str, dict]:
    """Compare every quantized candidate with the F16 reference; raise GateFailed if enforced."""
    results = {q: judge(q, compare(reference_gguf, path, texts, **kw))
               for q, path in candidates.items()}
    failed = [q for q, r in results.items() if not r["passed"]]
    if failed and enforce:
        raise GateFailed(f"quality gate failed for {', '.join(failed)} (pass --no-gate to "
                         f"export anyway):\n{table(results)}", results)
    return results
