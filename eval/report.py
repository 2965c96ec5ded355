"""The eval report as a Markdown table and a bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from csound_assistant.artifacts import atomic_write


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _metric_names(summary: dict) -> list[str]:
    names = ["compile@1", "sound@1", "coverage"]
    for label in summary.values():
        names += [k for k in label["overall"] if "@" in k and k not in names]
    return names


def _repair_note(settings: dict, summary: dict) -> str:
    if not settings.get("repair"):
        return ""
    done = ", ".join(f"{label} {o['overall'].get('repaired', 0)} answers replaced after "
                     f"{o['overall'].get('repair_requests', 0)} requests"
                     for label, o in summary.items())
    return (f" With repair ({settings['repair']} round(s)): a chat answer whose code does not "
            "compile goes back to the model with Csound's first error, and a fix that compiles "
            "replaces it; compile@1 and sound@1 judge the answer returned, first_compile@1 and "
            f"first_sound@1 the model's first answer ({done}).")


def markdown(report: dict) -> str:
    summary, models = report["summary"], report["models"]
    labels = list(summary)
    metrics = _metric_names(summary)
    s = report["settings"]
    lines = [
        "# Csound eval report", "",
        f"{next(iter(summary.values()))['overall'].get('items', 0)} items, "
        f"{s['samples']} sample(s) each, up to {s['max_new_tokens']} new tokens "
        f"(more where the reference answer is longer), "
        f"temperature {s['temperature']:g}. compile@1: Csound parses and type-checks the code; "
        "sound@1: it renders without error, not silent, no NaN; coverage: share of the "
        "required opcodes used." + _repair_note(s, summary), "",
        "| model | " + " | ".join(metrics) + " | latency (s) | tokens/s | file |",
        "|---|" + "---|" * (len(metrics) + 3),
    ]
    for label in labels:
        o = summary[label]["overall"]
        m = models[label]
        where = Path(m.get("path", m.get("url", m.get("spec", "")))).name
        if m.get("bytes"):
            where += f" ({m['bytes'] / 2**20:.0f} MiB)"
        lines.append(f"| {label} | " + " | ".join(_pct(o.get(k)) for k in metrics)
                     + f" | {o.get('latency_s', 0):.2f} | {o.get('tokens_per_s', 0):.1f} | "
                     f"{where} |")
    if len(labels) >= 2:
        a = labels[0]
        for b in labels[1:]:
            first, other = summary[a]["overall"], summary[b]["overall"]
            deltas = [f"{k} {100 * ((other.get(k) or 0) - (first.get(k) or 0)):+.0f} points"
                      for k in metrics]
            lines += ["", f"{b} vs {a}: " + ", ".join(deltas) + "; identical answers "
                      + _pct(summary[b].get("same_answer_as_first"))]
    for title, key in (("By source", "by_source"), ("By kind", "by_kind")):
        groups = sorted({g for label in labels for g in summary[label][key]})
        lines += ["", f"## {title} (sound@1 / compile@1)", "",
                  "| " + key[3:] + " | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for g in groups:
            cells = []
            for label in labels:
                o = summary[label][key].get(g, {})
                cells.append(f"{_pct(o.get('sound@1'))} / {_pct(o.get('compile@1'))}")
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "## Outcomes (first sample)", "",
              "| model | " + " | ".join(["category", "items"]) + " |", "|---|---|---|"]
    for label in labels:
        for category, n in summary[label]["overall"].get("categories", {}).items():
            lines.append(f"| {label} | {category} | {n} |")
    return "\n".join(lines) + "\n"


def write_markdown(path, report: dict) -> None:
    with atomic_write(path) as fh:
        fh.write(markdown(report))


def write_plot(path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    labels = list(summary)
    metrics = _metric_names(summary)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2),
                                  gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = [summary[label]["overall"].get(m) or 0 for m in metrics]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(metrics))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of answers")
    ax.set_title("Csound answers that compile, sound and use the asked opcodes")
    ax.legend(fontsize=8)
    latencies = [summary[label]["overall"].get("latency_s", 0) for label in labels]
    ax2.bar(range(len(labels)), latencies, color=[f"C{i}" for i in range(len(labels))])
    ax2.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax2.set_ylabel("seconds per answer")
    ax2.set_title("latency")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
