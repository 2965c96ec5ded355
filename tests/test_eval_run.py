"""The eval stage: shipped tasks, code extraction, scoring, and a real run on the embedded GGUF."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from csound_assistant import sandbox
from csound_assistant.errors import DataError
from csound_assistant.extract import extract_code, opcodes_present
from csound_assistant.eval.runner import score_answer
from csound_assistant.eval.tasks import KINDS, TASKS_PATH, load_tasks, load_test_split, spread


@pytest.fixture(scope="module")
def tasks():
    return load_tasks()


def test_shipped_tasks_load_and_cover_every_kind(tasks):
    assert len(tasks) >= 40
    assert {t.kind for t in tasks} == set(KINDS)
    assert len({t.id for t in tasks}) == len(tasks)
    for task in tasks:
        assert task.reference, f"{task.id} has no reference answer"


def test_every_reference_solution_compiles_renders_and_covers(tasks):
    codes = [t.prefix + t.reference + t.suffix if t.is_fim else t.reference for t in tasks]
    for task, code, result in zip(tasks, codes, sandbox.render_many(codes, workers=2)):
        assert result.category == "ok", f"{task.id}: {result.category} {result.errors}"
        assert result.audible, task.id
        assert all(opcodes_present(code, task.required_opcodes)), task.id


def test_fix_tasks_really_are_broken():
    raw = [json.loads(line) for line in TASKS_PATH.read_text().splitlines()]
    broken = [t["broken"] for t in raw if t["kind"] == "fix"]
    assert broken and all(not r.ok for r in sandbox.check_many(broken))


def test_task_file_problems_are_all_reported(tmp_path):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"id": "a", "kind": "synthesis", "prompt": "x", "required_opcodes": []}\n'
                   "not json\n"
                   '{"id": "a", "kind": "dance", "prompt": "x", "required_opcodes": [], "x": 1}\n'
                   '{"id": "b", "kind": "fim", "prefix": "p", "required_opcodes": []}\n')
    with pytest.raises(DataError) as err:
        load_tasks(bad)
    text = str(err.value)
    for expected in ("line 2: not JSON", "line 3 (a): unknown keys x", "kind 'dance'",
                     "duplicate id", "line 4 (b): missing suffix"):
        assert expected in text


def test_spread_keeps_every_kind(tasks):
    picked = spread(tasks, 8)
    assert len(picked) == 8 and {t.kind for t in picked} == set(KINDS)


@pytest.mark.parametrize("answer, expected", [
    ("Here:\n```csound\ninstr 1\n a1 poscil 0.3, 440\n outs a1, a1\nendin\n```\nDone.", "instr 1"),
    ("Sure.\n<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\nendin\n</CsInstruments>\n"
     "<CsScore>\ni 1 0 1\n</CsScore>\n</CsoundSynthesizer>\nEnjoy", "<CsoundSynthesizer>"),
    ("sr = 48000\ninstr 1\n  a1 vco2 0.2, 110\n  outs a1, a1\nendin\nThat is it.", "sr = 48000"),
    # the opening tag dropped (Csound still runs it) and the answer cut off: closed for judging
    ("Fixed:\n```csound\n<CsOptions>\n-odac\n</CsOptions>\n<CsInstruments>\ninstr 1\nendin\n"
     "</CsInstruments>\n<CsScore>\ni 1 0 1", "</CsScore>\n</CsoundSynthesizer>"),
    ("```c\n#include <csound.h>\nint main() {}\n```", None),
    ("#Csound #Csound #Csound", None),
])
def test_extract_code(answer, expected):
    code = extract_code(answer)
    if expected is None:
        assert code is None
    else:
        assert expected in code and "Enjoy" not in code and "Done." not in code


def test_cut_off_csd_is_closed_for_judging():
    answer = ("```csound\n<CsoundSynthesizer>\n<CsInstruments>\nsr=48000\nksmps=64\nnchnls=2\n"
              "0dbfs=1\ninstr 1\n a1 poscil 0.3, 440\n outs a1, a1\nendin\n")
    code = extract_code(answer)
    assert code.rstrip().endswith("</CsoundSynthesizer>")
    assert sandbox.check(code).ok


def test_score_answer_judges_good_bad_and_missing_code(tasks):
    sine = next(t for t in tasks if t.id == "sine-440")
    good = score_answer(sine, f"Here you go:\n```csound\n{sine.reference}```")
    assert good["compiled"] and good["sound"] and good["coverage"] == 1.0
    wrong = score_answer(sine, "```csound\ninstr 1\n a1 vco2 0.3, 440\n outs a1 a1\nendin\n```")
    assert not wrong["compiled"] and not wrong["sound"] and wrong["coverage"] == 0.0
    assert wrong["category"] == "syntax"
    none = score_answer(sine, "#Csound #Csound")
    assert none["category"] == "no-code" and not none["compiled"]
    fim = next(t for t in tasks if t.kind == "fim")
    assert score_answer(fim, fim.reference)["sound"]


def test_test_split_rows_become_items(tmp_path):
    split = tmp_path / "test.jsonl"
    rows = [
        {"instruction": "Write a sine.", "output": "```csound\ninstr 1\n a1 poscil 0.3, 440\n"
         " outs a1, a1\nendin\n```", "meta": {"opcode": "poscil", "task": "write"}},
        {"prefix": "instr 1\n a1 ", "middle": "poscil 0.3, 440\n", "suffix": " outs a1, a1\nendin",
         "meta": {"opcode": "poscil", "task": "fim-line"}},
        {"instruction": "What is Csound?", "output": "A language.", "meta": {"task": "qa"}},
        {"instruction": "Syntax of poscil?", "output": "```csound\nares poscil xamp, xcps\n```",
         "meta": {"task": "syntax"}},
    ]
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_test_split(split)
    assert [i.kind for i in items] == ["write", "fim:fim-line"]
    assert all(i.required_opcodes == ["poscil"] for i in items)
    assert all(score_answer(i, i.reference if i.is_fim else rows[0]["output"])["sound"]
               for i in items)


def test_check_command_prints_lines_and_exit_status(tmp_path):
    from csound_assistant.cli import main

    bad = tmp_path / "bad.orc"
    bad.write_text("instr 1\n  a1 poscil 0.3, 440\n  a2 moogladdr a1, 1000, 0.5\n"
                   "  outs a2, a2\nendin\n")
    result = CliRunner().invoke(main, ["eval", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3: error:" in result.output and "unknown-opcode" in result.output
    good = tmp_path / "good.orc"
    good.write_text("instr 1\n  a1 poscil 0.3, 440\n  outs a1, a1\nendin\n")
    result = CliRunner().invoke(main, ["eval", "check", str(good), "--render", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["category"] == "ok" and body["peak"] == pytest.approx(0.3, abs=0.01)
    evil = tmp_path / "evil.orc"
    evil.write_text('instr 1\n  ires system_i 1, "echo hi"\nendin\n')
    result = CliRunner().invoke(main, ["eval", "check", str(evil)])
    assert result.exit_code == 1 and "refused" in result.output


def test_eval_package_does_not_import_torch():
    code = ("import sys, csound_assistant.eval.runner, csound_assistant.eval.cli, "
            "csound_assistant.data.from_feedback; "
            "assert 'torch' not in sys.modules and 'llama_cpp' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_eval_compare_on_the_embedded_gguf(tmp_path, embedded_gguf):
    """A real (short) base-vs-base comparison: both labels, all three report files."""
    from csound_assistant.artifacts import read_record
    from csound_assistant.errors import ArtifactError
    from csound_assistant.eval.runner import run_eval

    out = tmp_path / "eval"
    models = {"base": "embedded", "same-file": str(embedded_gguf)}
    report = run_eval(models, out, limit=2, max_new_tokens=12, progress=False, log=lambda m: None,
                      prompt_formats={"base": "chatml"})
    for name in ("report.json", "report.md", "report.png", "record.json"):
        assert (out / name).is_file()
    assert set(report["summary"]) == {"base", "same-file"}
    overall = report["summary"]["base"]["overall"]
    assert overall["items"] == 2 and 0 <= overall["sound@1"] <= 1
    headline = report["models"]["base"]["summary"]
    assert headline["sound@1"] == overall["sound@1"] and headline["tasks"] == 2
    assert report["models"]["base"]["prompt_format"] == "chatml"
    # greedy decoding of one file: both labels answer identically
    answers = {label: [r["answer"] for r in report["items"] if r["model"] == label]
               for label in models}
    assert answers["base"] == answers["same-file"]
    assert "| base |" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert read_record(out)["metrics"]["base"]["compile@1"] == overall["compile@1"]
    with pytest.raises(ArtifactError):
        run_eval(models, out, limit=1, max_new_tokens=4, progress=False, log=lambda m: None)


def test_openai_url_and_gguf_agree_on_the_same_model(tmp_path, embedded_gguf):
    """The URL path against the real server on the embedded GGUF: greedy answers match the
    in-process GGUF path, chat and FIM."""
    from csound_assistant.eval.models import OpenAIModel, load_model
    from csound_assistant.runtime.server import create_app
    from csound_assistant.runtime.settings import Settings

    from runtime_helpers import running_server

    app = create_app(Settings(model_path=embedded_gguf, prompt_format="chatml", n_ctx=1024,
                              n_threads=1))
    local = load_model(str(embedded_gguf), n_threads=1)
    kwargs = {"max_tokens": 10, "temperature": 0.0}
    with running_server(app, timeout=120) as url:
        remote = OpenAIModel(url)
        assert remote.model == "csound-assistant"
        chat = remote.chat([{"role": "user", "content": "Write a Csound sine."}], **kwargs)
        assert chat.text == local.chat([{"role": "user", "content": "Write a Csound sine."}],
                                       **kwargs).text
        fim = remote.fim("instr 1\n  a1 ", "  outs a1, a1\nendin\n", **kwargs)
        assert fim.text == local.fim("instr 1\n  a1 ", "  outs a1, a1\nendin\n", **kwargs).text
    local.close()


def test_run_command(tmp_path):
    from csound_assistant.cli import main

    runner = CliRunner()
    common = ["--work-dir", str(tmp_path / "runs"), "--run", "r"]
    result = runner.invoke(main, ["eval", "run", *common])
    assert result.exit_code != 0 and "no MODEL given" in result.output
    out = tmp_path / "report"
    result = runner.invoke(main, ["eval", "run", "embedded", "--no-test", "--limit", "1",
                                  "--max-new-tokens", "4", "--threads", "1", "--out", str(out),
                                  *common])
    assert result.exit_code == 0, result.output
    assert "| base |" in result.output and (out / "report.png").is_file()
    result = runner.invoke(main, ["eval", "run", "nowhere.gguf", "--no-test", "--limit", "1",
                                  "--out", str(tmp_path / "x"), *common])
    assert result.exit_code == 1 and "model file not found: nowhere.gguf" in result.output
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


def test_only_test_rows_whose_reference_sounds_are_asked(tmp_path):
    from csound_assistant.eval.runner import collect_items

    split = tmp_path / "test.jsonl"
    good = "instr 1\n a1 poscil 0.3, 440\n outs a1, a1\nendin\n"
    silent = "instr 1\n prints \"hello\\n\"\nendin\n"
    rows = [{"instruction": f"Task {i}.", "output": f"```csound\n{code}```", "meta": {"task": t}}
            for i, (code, t) in enumerate([(good, "write"), (silent, "write"), (good, "chat")])]
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    logged = []
    items = collect_items(None, split, limit=5, use_tasks=False, log=logged.append)
    assert [i.messages[0]["content"] for i in items] == ["Task 0.", "Task 2."]
    assert "1 references skipped" in logged[0]


def test_samples_report_pass_at_k(tmp_path):
    from csound_assistant.eval.runner import run_eval

    report = run_eval({"base": "embedded"}, tmp_path / "eval", limit=1, samples=2,
                      max_new_tokens=4, n_threads=1, progress=False, log=lambda m: None)
    overall = report["summary"]["base"]["overall"]
    assert overall["items"] == 1 and "compile@2" in overall and "sound@2" in overall
    assert [r["sample"] for r in report["items"]] == [0, 1]
    assert report["settings"]["temperature"] == 0.8
    assert "compile@2" in (tmp_path / "eval" / "report.md").read_text()


def test_token_budget_fits_the_longest_manual_answers(embedded_gguf):
    """A perfect answer must fit: the budget covers the reference's real token count (SmolLM2
    spells numbers digit by digit) for whole files, which fix-the-bug answers repeat."""
    from llama_cpp import Llama

    from csound_assistant.data.examples import load_manual
    from csound_assistant.eval.runner import PROSE_TOKENS, token_budget
    from csound_assistant.eval.tasks import Item

    vocab = Llama(str(embedded_gguf), vocab_only=True, verbose=False)
    examples = sorted(load_manual(limit=80, strip_comments=True).examples.values(),
                      key=lambda e: len(e.code))[-5:]
    for example in examples:
        need = len(vocab.tokenize(example.code.encode(), add_bos=False))
        chat = Item(example.name, "fix", "test", messages=[{"role": "user", "content": "Fix"}],
                    reference=example.code)
        assert need > 256 and token_budget(chat, 256) >= need + PROSE_TOKENS, example.name
        lines = example.code.splitlines(keepends=True)
        fim = Item(example.name, "fim", "test", prefix="".join(lines[:5]), suffix="",
                   reference="".join(lines[5:]))
        assert token_budget(fim, 64) >= len(vocab.tokenize(fim.reference.encode(),
                                                            add_bos=False))
    assert token_budget(Item("x", "fim", "tasks", prefix="a", suffix="b", reference="c"), 64) == 64


def test_greedy_loops_are_cut_short():
    from csound_assistant.eval.models import looping

    assert looping([7, 8, 9] * 30)
    assert not looping(list(range(100)))
    assert not looping([7, 8, 9] * 10)  # too short to judge


def test_idle_cores_measures_this_machine_and_threads_follow():
    import os

    from csound_assistant.eval.models import _idle_cores, auto_threads

    idle = _idle_cores(0.2)
    assert idle is not None and 0.0 <= idle <= (os.cpu_count() or 1) + 0.01
    assert 1 <= auto_threads() <= max(1, min(os.cpu_count() or 1, 4))
