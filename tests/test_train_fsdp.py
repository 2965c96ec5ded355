"""FSDP2 through ``accelerate launch``: 2 processes (gloo, CPU) shard the tiny model's parameters
and train to the loss curve of one process accumulating 2 micro-batches; the shipped layouts
load; FSDP1 and checkpoints under FSDP are refused up front.

    pytest tests/test_train_fsdp.py -m "slow or not slow"
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from csound_assistant.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
LAYOUTS = REPO / "train" / "configs" / "accelerate"
TINY = {"method": "lora", "device": "cpu", "max_length": 256, "batch_tokens": 256,
        "max_batch_rows": 2, "lora_dropout": 0.0, "progress": False, "warmup_steps": 1,
        "max_steps": 4, "save_every": 0, "eval_every": 0, "log_every": 1,
        "learning_rate": 5e-3, "torch_threads": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(work: Path, overrides: list[str], launcher: list[str] = ()):
    """``train run`` on the CPU as a user would type it, under ``launcher`` if given (no GPU
    is visible, so the recipe picks gloo; accelerate's ``--cpu`` would run one process)."""
    config = work.parent / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    args = [*(launcher or [sys.executable]), "-m", "csound_assistant.cli", "train", "run",
            "-c", str(config), "--work-dir", str(work.parent), "--run", work.name,
            *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.mark.slow  # two launches of the recipe: ~60-80 s on 2 shared cores
def test_two_processes_shard_the_parameters_and_match_one(tmp_path, tiny_model_dir):
    from train_helpers import make_work

    one = make_work(tmp_path / "one", tiny_model_dir)
    two = make_work(tmp_path / "two", tiny_model_dir)
    proc = _train(one, ["grad_accum=2"])  # one process, no launcher, no sharding
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(LAYOUTS / "fsdp2-2gpu.yaml"), "--main_process_port",
              str(_free_port())]
    proc = _train(two, ["grad_accum=1"], launch)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert "FSDP2 over 2 process(es): this rank holds 50% of the trainable parameters" in out

    a, b = (json.loads((w / "adapter" / "metrics.json").read_text()) for w in (one, two))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert [s for s, *_ in a["train_loss"]] == [s for s, *_ in b["train_loss"]] == [1, 2, 3, 4]
    for (_, l1, _), (_, l2, _) in zip(a["train_loss"], b["train_loss"]):
        assert l2 == pytest.approx(l1, rel=1e-3)
    assert b["val_loss_end"] == pytest.approx(a["val_loss_end"], rel=1e-3)
    assert b["val_loss_end"] < b["val_loss_start"]  # it trained

    # the published adapter is whole (gathered from both shards), and equals one process's
    from safetensors.torch import load_file

    ta, tb = (load_file(w / "adapter" / "adapter_model.safetensors") for w in (one, two))
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert ta[key].shape == tb[key].shape, key
        assert (tb[key] - ta[key]).norm() <= 1e-3 * ta[key].norm() + 1e-6, key


@pytest.mark.parametrize("path", sorted(LAYOUTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_layouts_are_fsdp2_with_the_recipe_s_precision(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
    assert config["mixed_precision"] == "no"
    assert config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    gpus = {"fsdp2-2gpu": 2, "fsdp2-4gpu": 4, "fsdp2-1gpu-offload": 1}[path.stem]
    assert config["num_processes"] == gpus
    assert config["fsdp_config"]["fsdp_offload_params"] == (gpus == 1)


def test_fsdp1_mixed_precision_and_checkpoints_are_refused(monkeypatch):
    from csound_assistant.train.backend import choose_backend
    from csound_assistant.train.config import load_config

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        choose_backend(load_config(None, ["save_every=0"]))
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="mixed_precision: 'no'"):
        choose_backend(load_config(None, ["save_every=0"]))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    with pytest.raises(ConfigError, match="save_every=0"):
        choose_backend(load_config(None, ["save_every=50"]))
    backend = choose_backend(load_config("codellama-34b-qlora-fsdp", ["device=cpu",
                                                                      "method=lora"]))
    assert backend.fsdp and "FSDP2" in backend.describe()
