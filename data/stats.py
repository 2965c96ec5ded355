"""``csound-assistant data stats``: what a dataset file holds, as JSON, a Markdown table and a
token-length histogram (PNG)."""

from __future__ import annotations

import collections
from pathlib import Path

from csound_assistant.artifacts import atomic_write, write_json
from csound_assistant.errors import DataError
from csound_assistant.prompt_format import row_kind

from .validate import read_rows, row_text, token_counter

BINS = (64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096)


def _bin_label(n: int) -> str:
    lo = 0
    for hi in BINS:
        if n <= hi:
            return f"{lo + 1}-{hi}"
        lo = hi
    return f">{BINS[-1]}"


def dataset_stats(path: str | Path, *, tokenizer: str | None = None,
                  prompt_format: str = "chatml", known_opcodes: set[str] | None = None) -> dict:
    parsed, problems = read_rows(path)
    if problems:
        raise DataError(f"{path} cannot be read; run `csound-assistant data validate` first",
                        problems=problems)
    count = token_counter(tokenizer)
    formats, tasks, categories, opcodes = (collections.Counter() for _ in range(4))
    lengths = []
    for _, row in parsed:
        if not isinstance(row, dict) or row_kind(row) is None:
            formats["unknown"] += 1
            continue
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        formats[row_kind(row)] += 1
        tasks[meta.get("task", "unlabelled")] += 1
        categories[meta.get("category", "unlabelled")] += 1
        if meta.get("opcode"):
            opcodes[meta["opcode"]] += 1
        lengths.append(count(row_text(row, prompt_format)))
    lengths.sort()
    hist = collections.Counter(_bin_label(n) for n in lengths)
    labels = [_bin_label(b) for b in BINS] + [f">{BINS[-1]}"]
    stats = {
        "file": str(path), "rows": len(parsed), "formats": dict(formats.most_common()),
        "tasks": dict(tasks.most_common()), "categories": dict(categories.most_common()),
        "opcodes": len(opcodes), "top_opcodes": dict(opcodes.most_common(20)),
        "tokens": {
            "counter": tokenizer or "chars/2.5 estimate",
            "min": lengths[0] if lengths else 0, "max": lengths[-1] if lengths else 0,
            "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0,
            "p50": lengths[len(lengths) // 2] if lengths else 0,
            "p95": lengths[int(len(lengths) * 0.95)] if lengths else 0,
            "histogram": {label: hist.get(label, 0) for label in labels},
        },
    }
    if known_opcodes is not None:
        covered = set(opcodes) & known_opcodes
        stats["opcode_coverage"] = {"covered": len(covered), "known": len(known_opcodes),
                                    "fraction": round(len(covered) / max(1, len(known_opcodes)), 3)}
    return stats


def markdown(stats: dict) -> str:
    lines = [f"# Dataset statistics: `{stats['file']}`", "", f"{stats['rows']} rows.", ""]
    for title, key in (("Format", "formats"), ("Task", "tasks"), ("Category", "categories")):
        lines += [f"| {title} | rows |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in list(stats[key].items())[:30]]
        lines.append("")
    cov = stats.get("opcode_coverage")
    lines.append(f"Opcodes covered: {stats['opcodes']}"
                 + (f" of {cov['known']} in the manual ({cov['fraction']:.0%})" if cov else "")
                 + ".")
    tok = stats["tokens"]
    lines += ["", f"Token lengths ({tok['counter']}): min {tok['min']}, median {tok['p50']}, "
                  f"p95 {tok['p95']}, max {tok['max']}, mean {tok['mean']}.", "",
              "| tokens | rows |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in tok["histogram"].items()]
    return "\n".join(lines) + "\n"


def plot_histogram(stats: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = stats["tokens"]["histogram"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(hist)), list(hist.values()), color="#4a7ebb")
    ax.set_xticks(range(len(hist)), list(hist.keys()), rotation=45, ha="right")
    ax.set_xlabel(f"tokens per row ({stats['tokens']['counter']})")
    ax.set_ylabel("rows")
    ax.set_title(f"{Path(stats['file']).name}: {stats['rows']} rows")
    fig.tight_layout()
    with atomic_write(png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def write_stats(path: str | Path, out_dir: str | Path, **kw) -> dict:
    """Write ``stats.json``, ``stats.md`` and ``tokens.png`` into ``out_dir`` (each atomically)."""
    stats = dataset_stats(path, **kw)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "stats.json", stats)
    with atomic_write(out_dir / "stats.md") as fh:
        fh.write(markdown(stats))
    plot_histogram(stats, out_dir / "tokens.png")
    return stats
