"""bench/budget_sweep.py prompts / verdicts / rows: the model's own sampled answers to train
prompts, judged by real Csound, kept as new train rows only when they play and use the opcode
the request named."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from csound_assistant.fix_request import fence

ROOT = Path(__file__).resolve().parents[1]

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
  asig poscil 0.2, kcps, giSine
  out asig
endin
</CsInstruments>
<CsScore>
i 2 0 1.5
e
</CsScore>
</CsoundSynthesizer>"""


def answer(code: str) -> str:
    return "Here it is.\n\n" + fence(code)


def _module():
    spec = importlib.util.spec_from_file_location("budget_sweep",
                                                  ROOT / "bench" / "budget_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(path: Path) -> Path:
    write = {"instruction": "Write a CSD that uses oscili.", "input": "",
             "output": answer(REFERENCE),
             "meta": {"task": "write", "opcode": "oscili", "group": "g1"}}
    prefix, _, rest = REFERENCE.partition("a1 oscili")
    fim = {"prefix": prefix, "middle": "a1 oscili" + rest.partition("\n")[0] + "\n",
           "suffix": rest.partition("\n")[2], "meta": {"task": "fim-line", "group": "g1"}}
    explain = {"instruction": "Explain this.", "input": REFERENCE, "output": "It plays.",
               "meta": {"task": "explain", "group": "g1"}}
    fix = {"instruction": "Can you fix the bug in this Csound file?",
           "input": fence(REFERENCE.replace("endin\n", "")),
           "output": "Add `endin`.\n\n" + fence(REFERENCE),
           "meta": {"task": "fix-missing-endin", "group": "g1"}}
    path.write_text("".join(json.dumps(r) + "\n" for r in (write, fim, explain, fix)))
    return path


def test_only_new_answers_that_play_and_use_the_opcode_become_rows(tmp_path):
    sweep = _module()
    split = _split(tmp_path / "train.jsonl")
    items = tmp_path / "prompts.json"
    sweep.prompts_command(argparse.Namespace(
        split=str(split), kinds="write,fim-line,fix-missing-endin", no_cuts=False,
        max_new_tokens=256, max_budget=0, skip_kept=None, out=items))
    prompts = json.loads(items.read_text())
    assert [(p["id"], p["kind"]) for p in prompts] == [
        ("train-1", "write"), ("train-2", "fim:fim-line"), ("train-4", "fix-missing-endin")]
    assert prompts[0]["required_opcodes"] == ["oscili"]

    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "st-0.json").write_text(json.dumps({"answers": {
        "train-1~0": answer(OTHER),      # new and plays: kept
        "train-1~1": answer(SILENT),     # renders silence
        "train-1~2": answer(BROKEN),     # a2 is never defined
        "train-1~3": answer(NO_OSCILI),  # plays, but not with the opcode asked for
        "train-2~0": "a1 oscili 0.2, 330\n",   # another middle that plays: kept
        "train-2~1": prompts[1]["reference"],  # the row's own answer: nothing new
        "train-4~0": answer(REFERENCE.replace("0.3", "0.25")),  # plays, and fixes that code
        "train-4~1": answer(ANOTHER),    # plays, but is another program, not a fix
    }}))
    verdicts = tmp_path / "verdicts.jsonl"
    sweep.verdicts_command(argparse.Namespace(answers=str(answers), items=str(items),
                                              out=str(verdicts), workers=1))
    judged = {v["key"]: v for v in map(json.loads, verdicts.read_text().splitlines())}
    assert {k for k, v in judged.items() if sweep._kept(v)} == {
        "train-1~0", "train-2~0", "train-2~1", "train-4~0", "train-4~1"}
    assert not judged["train-1~1"]["sound"] and judged["train-1~1"]["compiled"]
    assert not judged["train-1~2"]["compiled"]
    assert judged["train-1~3"]["sound"] and judged["train-1~3"]["coverage"] == 0.0

    out = tmp_path / "self.jsonl"
    sweep.rows_command(argparse.Namespace(verdicts=str(verdicts), split=str(split), per_item=2,
                                          per_item_fim=2, fix_similarity=0.8, out=str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    write, fim, fix = rows
    assert fix["output"] == answer(REFERENCE.replace("0.3", "0.25"))
    assert fix["input"] == fence(REFERENCE.replace("endin\n", ""))
    assert write["output"] == answer(OTHER) and write["instruction"].endswith("oscili.")
    assert write["meta"] == {"task": "write", "opcode": "oscili", "group": "g1",
                             "origin": "self-sample"}
    assert fim["middle"] == "a1 oscili 0.2, 330\n" and fim["meta"]["origin"] == "self-sample"
    assert fim["prefix"] + fim["middle"] + fim["suffix"] != REFERENCE

    # A second round samples only the prompts that still lack rows: the FIM prompt has its one
    # (its own answer aside); the write and fix prompts have one of two (the other program
    # that "fixes" the fix row does not count).
    again = tmp_path / "again.json"
    sweep.prompts_command(argparse.Namespace(
        split=str(split), kinds="write,fim-line,fix-missing-endin", no_cuts=False,
        max_new_tokens=256, max_budget=0, skip_kept=str(verdicts), per_item=2, per_item_fim=1,
        fix_similarity=0.8, out=again))
    assert [p["id"] for p in json.loads(again.read_text())] == ["train-1", "train-4"]
    sweep.prompts_command(argparse.Namespace(
        split=str(split), kinds="write", no_cuts=False, max_new_tokens=256, max_budget=5,
        skip_kept=None, out=again))
    assert [p["budget"] for p in json.loads(again.read_text())] == [5]


def test_a_gguf_samples_the_prompts_on_the_cpu_for_the_same_verdicts(tmp_path, embedded_gguf):
    """``sample --adapter NAME=FILE.gguf``: answers through llama.cpp (the eval's model), one
    per sample and prompt, in the file the verdicts step reads; a deadline already passed
    starts none."""
    sweep = _module()
    split = _split(tmp_path / "train.jsonl")
    items = tmp_path / "prompts.json"
    sweep.prompts_command(argparse.Namespace(
        split=str(split), kinds="write,fim-line", no_cuts=False, max_new_tokens=24,
        max_budget=24, skip_kept=None, out=items))
    out = tmp_path / "answers"
    sweep.sample_command(argparse.Namespace(
        adapter=f"base={embedded_gguf}", out=str(out), items=str(items), jobs=1, shard=None,
        work=None, batch=1, samples=2, temperature=0.9, seconds=0, started=0))
    answers = json.loads((out / "base-0.json").read_text())["answers"]
    assert sorted(answers) == ["train-1~0", "train-1~1", "train-2~0", "train-2~1"]
    assert all(isinstance(a, str) for a in answers.values())
    assert answers["train-1~0"] != answers["train-1~1"]  # sampled, each with its own seed

    verdicts = tmp_path / "verdicts.jsonl"
    sweep.verdicts_command(argparse.Namespace(answers=str(out), items=str(items),
                                              out=str(verdicts), workers=1))
    assert len(verdicts.read_text().splitlines()) == 4

    late = sweep.generate_gguf(embedded_gguf, json.loads(items.read_text()), deadline=1.0)
    assert late == {}
