"""Average several LoRA adapters of one base into one adapter (a "model soup"), exactly.

    python bench/soup.py OUT ADAPTER ADAPTER [ADAPTER ...]

The merged weight of adapter i is W + s_i * B_i @ A_i. The mean of K such models is
W + (1/K) * sum_i s_i * B_i @ A_i, which is itself a LoRA of rank sum(r_i): stack the A_i as rows
and the s_i/K * B_i as columns. So the soup is not an approximation and loads anywhere a LoRA
loads (peft, llama.cpp's GGUF LoRA, the starter). Runs trained with other seeds or data orders
from the same base usually sit in one basin, where the mean model can beat each of them; whether
it does here is measured in bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from csound_assistant.artifacts import is_complete, read_record, stage_output, write_record

# Copied from the first adapter: what loading and prompting need besides the weights.
COPIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "prompt_format.json",
          "train_config.yaml")


def _scaling(config: dict) -> float:
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _check_alike(dirs: list[Path], configs: list[dict]) -> None:
    first = configs[0]
    for d, c in zip(dirs[1:], configs[1:]):
        for key in ("peft_type", "target_modules", "bias", "use_dora", "modules_to_save"):
            mine, theirs = c.get(key), first.get(key)
            if key == "target_modules":
                mine, theirs = sorted(mine or []), sorted(theirs or [])
            if mine != theirs:
                raise SystemExit(f"soup: {d} differs from {dirs[0]} in {key}; only adapters of "
                                 "one shape can be averaged")
        if (d / "prompt_format.json").read_text() != (dirs[0] / "prompt_format.json").read_text():
            raise SystemExit(f"soup: {d} was trained with another prompt format than {dirs[0]}")
    for d, c in zip(dirs, configs):
        if c.get("rank_pattern") or c.get("alpha_pattern"):
            raise SystemExit(f"soup: {d} has per-module ranks; not supported")
        if c.get("use_dora"):
            raise SystemExit(f"soup: {d} is DoRA, not linear in B @ A; cannot average it exactly")


def soup(out: Path, dirs: list[Path]) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    configs = [json.loads((d / "adapter_config.json").read_text()) for d in dirs]
    _check_alike(dirs, configs)
    weights = [load_file(str(d / "adapter_model.safetensors")) for d in dirs]
    if any(set(w) != set(weights[0]) for w in weights):
        raise SystemExit("soup: the adapters hold different tensors")
    k = len(dirs)
    merged = {}
    for name in weights[0]:
        if ".lora_A." in name:
            merged[name] = torch.cat([w[name] for w in weights], dim=0)
        elif ".lora_B." in name:  # new scaling is 1 (alpha = r): fold each s_i / K into B_i
            merged[name] = torch.cat([w[name].float() * (_scaling(c) / k)
                                      for w, c in zip(weights, configs)], dim=1
                                     ).to(weights[0][name].dtype)
        else:
            raise SystemExit(f"soup: unexpected tensor {name} (only LoRA A/B are averaged)")
    rank = sum(c["r"] for c in configs)
    config = {**configs[0], "r": rank, "lora_alpha": rank, "use_rslora": False}
    ingredients = []
    for d in dirs:
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() \
            else {}
        ingredients.append({"adapter": str(d), "val_loss_end": metrics.get("val_loss_end")})
    # the first adapter's record (base, prompt format, splits), with the soup's own shape
    record = read_record(dirs[0]) if is_complete(dirs[0]) else {}
    fields = {k: v for k, v in record.items() if k not in ("stage", "created", "versions")}
    fields["config"] = {**fields.get("config", {}), "lora_r": rank, "lora_alpha": rank}
    fields["metrics"] = {"soup_of": ingredients, "rank": rank}
    with stage_output(out, force=True) as tmp:
        save_file(merged, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        for name in COPIED:
            if (dirs[0] / name).exists():
                shutil.copy2(dirs[0] / name, tmp / name)
        (tmp / "metrics.json").write_text(json.dumps(fields["metrics"], indent=1))
        write_record(tmp, "adapter", **fields, soup_of=[str(d) for d in dirs])
    return {"rank": rank, "tensors": len(merged), "ingredients": ingredients}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("adapters", nargs="+", type=Path)
    args = ap.parse_args()
    if len(args.adapters) < 2:
        raise SystemExit("soup: give two or more adapters")
    print(json.dumps(soup(args.out, args.adapters), indent=1))


if __name__ == "__main__":
    main()
