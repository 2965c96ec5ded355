"""The training config: shipped configs load, unknown keys and bad values are errors,
CLI > YAML > defaults; and the train command's errors."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from csound_assistant.cli import main
from csound_assistant.errors import ConfigError
from csound_assistant.train.config import CONFIG_DIR, TrainConfig, load_config

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_shipped_configs_are_there():
    assert {p.stem for p in SHIPPED} == {"cpu-smollm2", "cpu-smollm2-starter", "gpu-smollm2-qlora",
                                         "gpu-smollm2-lora", "codellama-7b-qlora",
                                         "codellama-7b-qlora-2gpu", "codellama-34b-qlora-fsdp"}
    assert load_config("gpu-smollm2-lora").opcode_reference
    assert not load_config("cpu-smollm2").opcode_reference  # no help at its budget (NOTES.md)
    assert not load_config("cpu-smollm2").init_adapter


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_loads_and_sets_only_known_keys(path):
    cfg = load_config(path)
    written = yaml.safe_load(path.read_text())
    assert written and set(written) <= set(cfg.to_dict())
    assert load_config(path.stem) == cfg  # by name, too
    if "qlora" in path.stem:
        assert cfg.method == "qlora" and cfg.packing == "packed"
        assert cfg.batch_tokens >= cfg.max_length


def test_cli_beats_yaml_beats_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora_r: 8\nlearning_rate: 1.0e-3\n")
    cfg = load_config(path, ["lora_r=4", "target_modules=q_proj,v_proj", "progress=false"])
    assert (cfg.lora_r, cfg.learning_rate, cfg.target_modules, cfg.progress) == (
        4, 1e-3, ["q_proj", "v_proj"], False)
    assert cfg.lora_alpha == TrainConfig().lora_alpha


def test_unknown_keys_are_errors_and_all_are_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora_rank: 8\nlr: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["max_step=3"])
    message = str(err.value)
    assert "'lora_rank'" in message and "'lr'" in message and "'max_step'" in message
    assert "known keys:" in message


@pytest.mark.parametrize("override,fragment", [
    ("lora_r=eight", "lora_r must be int"),
    ("lora_r=1.5", "lora_r must be int"),
    ("progress=maybe", "progress must be true or false"),
    ("method=full", "method='full'"),
    ("batch_tokens=100", "below max_length"),
    ("liger=sometimes", "liger=.sometimes."),
    ("lora_kernel=triton", "lora_kernel='triton': choose one of auto, peft, fused"),
    ("lora_r", "write key=value"),
])
def test_bad_values_are_explained(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_lora_kernel_key_and_the_shipped_7b_configs():
    from csound_assistant.train.checkpoint import check_compatible

    assert TrainConfig().lora_kernel == "auto"
    assert load_config(None, ["lora_kernel=fused"]).lora_kernel == "fused"
    for name in ("codellama-7b-qlora", "codellama-7b-qlora-2gpu"):
        cfg = load_config(name)
        # dropout's copies cost 18% at 7B; auto = the fused forward on CUDA (bench/NOTES.md)
        assert (cfg.lora_dropout, cfg.lora_kernel) == (0.0, "auto")
    # The kernel computes the same function: a run may resume with another one, and a
    # checkpoint written before the key existed still resumes.
    saved = {k: v for k, v in TrainConfig().to_dict().items() if k != "lora_kernel"}
    check_compatible(saved, load_config(None, ["lora_kernel=peft"]), Path("ckpt"))


def test_not_a_mapping_and_missing_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="neither a file nor a shipped config"):
        load_config("no-such-config")


def test_train_config_command_prints_resolved_yaml():
    result = CliRunner().invoke(main, ["train", "config", "-c", "codellama-7b-qlora",
                                       "--set", "lora_r=32"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["lora_r"] == 32 and printed["method"] == "qlora"


def test_train_run_without_a_base_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "run", "--work-dir", str(tmp_path),
                                       "--run", "empty", "--set", "max_steps=1"])
    assert result.exit_code == 1
    assert "record.json" in result.output and "Error" in result.output
    assert not (Path(tmp_path) / "empty" / "adapter").exists()


def test_time_budget_shortens_the_run():
    from csound_assistant.train.recipe import _fit_budget

    said = []
    # 3 steps took 30 s; 60 s of budget leave room for 3 more: 6 of the 100 planned
    assert _fit_budget(100, 3, 0, 30.0, 60.0, False, "cpu", said.append) == 6
    assert "re-fitted" in said[0]
    assert _fit_budget(10, 3, 0, 3.0, 600.0, False, "cpu", said.append) == 10


def test_time_budget_reserves_the_evaluations_and_checkpoints_to_come():
    from csound_assistant.train.config import load_config
    from csound_assistant.train.recipe import _fit_budget, _pauses

    cfg = load_config("cpu-smollm2", ["eval_every=10", "save_every=10"])
    # after step 3: evaluations at 10 and 20 (the final one is reserved elsewhere), saves at 10, 20
    assert _pauses(cfg, 3, 25, eval_seconds=5.0, saves=[2.0]) == 2 * 5.0 + 2 * 2.0
    assert _pauses(cfg, 3, 9, eval_seconds=5.0, saves=[]) == 0.0
    # 10 s per step, 300 s left: without pauses 30 steps; with them fewer, and they fit
    plain = _fit_budget(100, 3, 0, 30.0, 330.0, False, "cpu", print)
    reserved = _fit_budget(100, 3, 0, 30.0, 330.0, False, "cpu", print,
                           pauses=lambda n: _pauses(cfg, 3, n, 20.0, [5.0]))
    assert plain == 33 and reserved < plain
    spent = 30.0 + (reserved - 3) * 10.0 + _pauses(cfg, 3, reserved, 20.0, [5.0])
    assert spent <= 330.0
