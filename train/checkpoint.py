"""Training checkpoints for ``--resume``: adapter weights, optimizer, scheduler, step, history
and RNG states, written atomically as ``<checkpoints>/step-NNNNNN/`` (the last few are kept).

Data order is a function of (seed, step), so these are all a resumed run needs to continue
exactly where the killed one stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from csound_assistant.errors import ArtifactError

from .config import RESUME_MUTABLE, TrainConfig

PREFIX = "step-"


def trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save(root: Path, step: int, model, optimizer, scheduler, scaler, state: dict, keep: int):
    import torch

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    torch.save(trainable_state(model), tmp / "adapter.pt")
    torch.save({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    final = root / f"{PREFIX}{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    found = sorted(p for p in root.glob(f"{PREFIX}*") if (p / "state.json").is_file())
    return found[-1] if found else None


def check_compatible(saved: dict, cfg: TrainConfig, where: Path) -> None:
    now = cfg.to_dict()
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items()
               if k not in RESUME_MUTABLE and saved.get(k) != v]
    if changed:
        raise ArtifactError(
            f"cannot resume from {where}: the config changed ({'; '.join(changed)}). "
            "Resume with the same config, or start over without --resume"
        )


def load(path: Path, model, optimizer, scheduler, scaler) -> dict:
    """Restore everything saved at ``path`` into the live objects; returns the saved state."""
    import torch

    weights = torch.load(path / "adapter.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ArtifactError(f"{path}: checkpoint has parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    if scaler is not None and trainer["scaler"] is not None:
        scaler.load_state_dict(trainer["scaler"])
    random.setstate(trainer["rng"]["python"])
    torch.set_rng_state(trainer["rng"]["torch"])
    if trainer["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["rng"]["cuda"])
    return json.loads((path / "state.json").read_text())
