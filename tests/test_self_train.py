"""``csound-assistant improve self-train``: requests from the train split and the manual (never a
validation or test one), answers judged by real Csound, kept answers and fix pairs as rows, and
rounds that resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from csound_assistant.errors import ConfigError
from csound_assistant.fix_request import fence
from csound_assistant.improve import requests as req
from csound_assistant.improve.config import CONFIG_DIR, load_config
from csound_assistant.improve.rows import judge_all, kept, make_rows, verdict_counts
from csound_assistant.improve.self_train import _requests, round_dir

CSD = """<CsoundSynthesizer>
<CsOptions>
-odac
</CsOptions>
<CsInstruments>
sr = 44100
ksmps = 32
nchnls = 2
0dbfs = 1
instr 1
{body}
endin
</CsInstruments>
<CsScore>
i 1 0 1
</CsScore>
</CsoundSynthesizer>"""
REFERENCE = CSD.format(body="a1 oscili 0.3, 440\nouts a1, a1")
OTHER = CSD.format(body="kenv linen 0.4, 0.1, p3, 0.2\na1 oscili kenv, 220\nouts a1, a1")
SILENT = CSD.format(body="a1 oscili 0, 440\nouts a1, a1")
BROKEN = CSD.format(body="a1 oscili 0.3, 440\nouts a1, a2")
NO_OSCILI = CSD.format(body="a1 poscil 0.3, 440\nouts a1, a1")
ANOTHER = """<CsoundSynthesizer>
<CsInstruments>
sr = 48000
ksmps = 64
nchnls = 1
0dbfs = 1
giSine ftgen 0, 0, 8192, 10, 1
instr 2
  kcps expseg 110, p3 / 2, 880, p3 / 2, 220
  asig oscili 0.2, kcps, giSine
  out asig
endin
</CsInstruments>
<CsScore>
i 2 0 1.5
e
</CsScore>
</CsoundSynthesizer>"""
PREFIX, _, REST = REFERENCE.partition("a1 oscili")
FIM_MIDDLE = "a1 oscili" + REST.partition("\n")[0] + "\n"
FIM_SUFFIX = REST.partition("\n")[2]


def answer(code: str) -> str:
    return "Here it is.\n\n" + fence(code)


def _rows() -> dict[str, list[dict]]:
    write = {"instruction": "Write a CSD that uses oscili.", "input": "",
             "output": answer(REFERENCE),
             "meta": {"task": "write", "opcode": "oscili", "group": "g1"}}
    fim = {"prefix": PREFIX, "middle": FIM_MIDDLE, "suffix": FIM_SUFFIX,
           "meta": {"task": "fim-line", "opcode": "oscili", "group": "g1"}}
    fix = {"instruction": "Can you fix the bug in this Csound file?",
           "input": fence(REFERENCE.replace("endin\n", "")),
           "output": "Add `endin`.\n\n" + fence(REFERENCE),
           "meta": {"task": "fix-missing-endin", "opcode": "oscili", "group": "g1"}}
    held = {"instruction": "Write a CSD that uses pluck.", "input": "",
            "output": answer(CSD.format(body="a1 pluck 0.3, 220, 220, 0, 1\nouts a1, a1")),
            "meta": {"task": "write", "opcode": "pluck", "group": "g2"}}
    # the same request as the test row, in train by mistake: it must never be sampled
    leaked = {**held, "output": answer(OTHER), "meta": {"task": "write", "group": "g3"}}
    return {"train": [write, fim, fix, leaked], "validation": [held], "test": [held]}


def _splits(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in _rows().items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_held_out_requests_are_refused_and_natural_ones_name_only_train_opcodes(tmp_path):
    root = tmp_path / "run"
    _splits(root / "splits")
    cfg = load_config("cpu", ["natural_per_round=5", "prompts_per_round=0",
                              "kinds=write,fim-line,fix-missing-endin"])
    requests, counts = _requests(cfg, root, 1)
    ids = [item.id for item, _ in requests]
    assert counts["refused_held_out"] == 1 and "train-4" not in ids  # the test row's request
    assert sorted(i for i in ids if i.startswith("train-")) == ["train-1", "train-2", "train-3"]
    natural = [item for item, _ in requests if item.kind == "natural"]
    # pluck is a held-out opcode (its rows are in validation and test); oscili is the train's
    assert [n.required_opcodes for n in natural] == [["oscili"]]
    assert "oscili" not in natural[0].messages[0]["content"]  # described, not named
    assert natural[0].messages[0]["content"].endswith((".", "?", "it."))
    keys, opcodes = req.held_out(root / "splits")
    assert opcodes == {"pluck"}
    train = [i for i, _ in req.train_requests(root / "splits", ["write"], 256, 0)]
    assert req.refuse_held_out(train, keys)[1] == ["train-4"]


def test_only_new_answers_that_play_become_rows_and_a_failure_makes_a_fix_pair(tmp_path):
    splits = _splits(tmp_path / "splits")
    requests = req.train_requests(splits, ["write", "fim-line", "fix-missing-endin"], 256, 0)
    items = {item.id: item for item, _ in requests}
    assert [(i, items[i].kind) for i in items] == [
        ("train-1", "write"), ("train-2", "fim:fim-line"), ("train-3", "fix-missing-endin"),
        ("train-4", "write")]
    answers = {
        "train-1~0": answer(OTHER),       # new and plays: kept
        "train-1~1": answer(SILENT),      # renders silence
        "train-1~2": answer(BROKEN),      # a2 is never defined: the fix pair's failure
        "train-1~3": answer(NO_OSCILI),   # plays, but not with the opcode asked for
        "train-2~0": "a1 oscili 0.2, 330\n",  # another middle that plays: kept
        "train-2~1": FIM_MIDDLE,              # the row's own answer: nothing new
        "train-3~0": answer(REFERENCE.replace("0.3", "0.25")),  # plays, and fixes that code
        "train-3~1": answer(ANOTHER),     # plays, but is another program, not a fix
    }
    verdicts = judge_all(items, answers, tmp_path / "verdicts.jsonl", workers=1,
                         progress=False)
    judged = {v["key"]: v for v in verdicts}
    assert {k for k, v in judged.items() if kept(v)} == {
        "train-1~0", "train-2~0", "train-2~1", "train-3~0", "train-3~1"}
    assert not judged["train-1~1"]["sound"] and judged["train-1~1"]["compiled"]
    assert not judged["train-1~2"]["compiled"]
    assert judged["train-1~3"]["sound"] and judged["train-1~3"]["coverage"] == 0.0
    assert verdict_counts(verdicts)["kinds"]["write"] == {
        "answers": 4, "kept": 1, "requests": 1, "requests_with_one_kept": 1}
    # a killed run's verdicts are read back, not judged again
    again = judge_all(items, answers, tmp_path / "verdicts.jsonl", workers=1, progress=False)
    assert again == verdicts and len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == 8

    lines = (splits / "train.jsonl").read_text().splitlines()
    rows, counts = make_rows(items, verdicts, lines, per_prompt=2, per_prompt_fim=2,
                             fix_similarity=0.8, fix_pairs=True, seed=0)
    assert counts == {"kept": 3, "own answer": 1, "fix unlike the row's": 1, "fix pairs": 1}
    write, fix_pair, fim, fix = rows
    assert write["output"] == answer(OTHER) and write["instruction"].endswith("oscili.")
    assert write["meta"] == {"task": "write", "opcode": "oscili", "group": "g1",
                             "origin": "self-sample", "request": "train-1"}
    user, fixed = fix_pair["messages"]
    assert fix_pair["meta"]["task"] == "fix-self" and fixed["content"] == answer(OTHER)
    assert "a2" in user["content"] and "Error:" in user["content"]  # Csound's own error
    assert fim["middle"] == "a1 oscili 0.2, 330\n"
    assert fix["output"] == answer(REFERENCE.replace("0.3", "0.25"))
    # a request that has its rows from earlier rounds gives no more
    more, _ = make_rows(items, verdicts, lines, per_prompt=2, per_prompt_fim=1,
                        fix_similarity=0.8, fix_pairs=False, seed=0,
                        have=Counter({"train-1": 2, "train-2": 1}))
    assert [r["meta"]["request"] for r in more] == ["train-3"]


def test_shipped_configs_load_and_unknown_keys_are_refused():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(path)
        from csound_assistant.train.config import load_config as train_config

        train_config(cfg.train_config, cfg.train_overrides)
    assert load_config("starter").start_adapter == "" and load_config("starter").make_starter
    with pytest.raises(ConfigError, match="unknown key 'roundz'"):
        load_config("cpu", ["roundz=2"])
    with pytest.raises(ConfigError, match="quant_type"):
        load_config(None, ["quant_type=Q2"])


TINY = ("{max_steps: 2, lora_layers: 0, opcode_reference: false, fim_reference: false, "
        "max_length: 256, batch_tokens: 512, progress: false, eval_every: 0, save_every: 0, "
        "time_budget_minutes: 0, tasks: [], lora_r: 4, lora_alpha: 8}")
LOOP_CONFIG = f"""
rounds: 2
kinds: [fim-line, write]
natural_per_round: 1
samples: 2
max_new_tokens: 8
max_budget: 8
quant_type: Q8_0
parallel: 2
n_ctx: 512
n_threads: 2
judge_workers: 1
train_config: cpu-smollm2
train_overrides: {TINY}
"""


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, tiny_model_dir):
    from csound_assistant.train.config import load_config as train_config
    from csound_assistant.train.recipe import train
    from train_helpers import write_splits

    work = tmp_path_factory.mktemp("tiny-adapter")
    (work / "base").symlink_to(tiny_model_dir)
    write_splits(work / "splits", _rows()["train"][:3], _rows()["train"][:1])
    cfg = train_config("cpu-smollm2", [f"{k}={v}" for k, v in yaml.safe_load(TINY).items()])
    return train(cfg, work, log=lambda *a: None)


@pytest.mark.slow
def test_rounds_resume_after_a_kill(tmp_path, tiny_model_dir, tiny_adapter):
    """The first run is killed right after round 1's record; the second skips round 1 and
    does round 2, which continues round 1's adapter."""
    root = tmp_path / "runs" / "run"
    root.mkdir(parents=True)
    (root / "base").symlink_to(tiny_model_dir)
    _splits(root / "splits")
    config = tmp_path / "loop.yaml"
    config.write_text(LOOP_CONFIG + f"start_adapter: {tiny_adapter}\n")
    command = [sys.executable, "-m", "csound_assistant.cli", "improve", "self-train", "-c",
               str(config), "--work-dir", str(tmp_path / "runs"), "--run", "run",
               "--no-progress"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    record = round_dir(root, 1) / "record.json"
    while not record.is_file() and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # between rounds: round 2 has at most begun
    output = first.communicate()[0]
    assert record.is_file(), output
    one = json.loads(record.read_text())
    assert not (round_dir(root, 2) / "record.json").is_file()

    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round 1: done" in done.stdout and json.loads(record.read_text()) == one
    two = json.loads((round_dir(root, 2) / "record.json").read_text())
    for r in (one, two):
        assert r["requests"] == {"train": 3, "natural": 1, "refused_held_out": 1}
        assert sum(k["answers"] for k in r["verdicts"]["kinds"].values()) == 2 * 3
        assert set(r["hashes"]) == {"requests.json", "answers.jsonl", "verdicts.jsonl",
                                    "rows.jsonl"}
        assert not r["continued"]["adapter"].startswith("/")
    # a random 2-layer model plays nothing: no rows, so round 2 continues the same adapter
    assert not one["trained"] and one["rows"] == {"new": 0, "trained": 0}
    assert one["continued"] == two["continued"]
    assert one["continued"]["sha256"] == starter_sha(tiny_adapter)
    summary = json.loads((root / "improve" / "record.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]


def starter_sha(adapter: Path) -> str:
    from csound_assistant.artifacts import sha256_file

    return sha256_file(adapter / "adapter_model.safetensors")


def test_kept_rows_continue_the_adapter_with_a_share_of_earlier_rounds(tmp_path, tiny_model_dir,
                                                                      tiny_adapter):
    """A round's rows (and earlier_share of the earlier rounds') train the adapter on through
    train.recipe with init_adapter; the round's split holds each content once."""
    from csound_assistant.improve import self_train as st

    root = tmp_path / "run"
    root.mkdir()
    (root / "base").symlink_to(tiny_model_dir)
    _splits(root / "splits")
    rows = _rows()["train"][:3]
    earlier = round_dir(root, 1)
    earlier.mkdir(parents=True)
    (earlier / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    cfg = load_config(None, ["train_config=cpu-smollm2", f"train_overrides={TINY}",
                             "earlier_share=1.0"])
    trained = st._train_rows(cfg, root, 2, [rows[2], rows[0]])  # rows[0] again: once
    assert trained == [rows[2], rows[0], rows[1]]
    assert st._train_rows(cfg, root, 2, []) == []  # nothing new: no round of training
    folder = round_dir(root, 2)
    folder.mkdir()
    adapter = st._train(cfg, root, folder, tiny_adapter, trained, lambda *a: None)
    from csound_assistant.artifacts import read_record

    record = read_record(adapter)
    assert record["init_adapter"]["sha256"] == starter_sha(tiny_adapter)
    assert record["metrics"]["steps"] == 2
    assert len((folder / "splits" / "train.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_the_starter_recipe_runs_from_the_bare_base_at_a_tiny_scale(tmp_path, tiny_model_dir):
    """`improve self-train -c starter` in one command: round 0 trains an adapter from the bare
    base (the GPU run, here 2 CPU steps of a 2-layer model), a round samples and judges through
    the runtime, and the last adapter becomes a starter that lists the rows it saw."""
    root = tmp_path / "runs" / "run"
    root.mkdir(parents=True)
    (root / "base").symlink_to(tiny_model_dir)
    _splits(root / "splits")
    tiny = TINY
    sets = ["base_train_config=cpu-smollm2", f"base_train_overrides={tiny}", "rounds=1",
            "samples=1", "natural_per_round=0", "kinds=fim-line", "max_budget=8",
            "quant_type=F16", "sample_lora=true", "parallel=1", "n_ctx=512", "n_threads=2",
            "n_gpu_layers=0", "judge_workers=1", "train_config=cpu-smollm2",
            f"train_overrides={tiny}"]
    command = [sys.executable, "-m", "csound_assistant.cli", "improve", "self-train", "-c",
               "starter", "--work-dir", str(tmp_path / "runs"), "--run", "run", "--no-progress"]
    for item in sets:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (round_dir(root, 0) / "adapter" / "adapter_model.safetensors").is_file()
    one = json.loads((round_dir(root, 1) / "record.json").read_text())
    assert one["requests"] == {"train": 1, "natural": 0, "refused_held_out": 0}
    from csound_assistant.train import starter

    made = starter.load(str(root / "improve" / "starter"))
    assert made.seen == {starter.row_hash(r) for r in _rows()["train"]}
    assert str(tmp_path) not in (root / "improve" / "starter" / "record.json").read_text()
