"""The loss curve saved next to the adapter (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(train_loss: list, val_loss: list, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train_loss:
        ax.plot([s for s, *_ in train_loss], [v for _, v, *_ in train_loss], label="train", lw=1)
    if val_loss:
        ax.plot([s for s, _ in val_loss], [v for _, v in val_loss], "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per answer token")
    ax.set_title(title or "csound-assistant training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
