"""``data validate``: each kind of defect is reported with its line number, all at once."""

import hashlib
import json

import pytest
from click.testing import CliRunner

from csound_assistant.data.cli import cli
from csound_assistant.data.validate import validate_file
from csound_assistant.errors import DataError

GOOD = [
    {"instruction": "Write a sine instrument.", "input": "", "output": "```csound\ninstr 1\nendin\n```"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"prompt": "instr 1\n", "completion": "endin\n"},
    {"prefix": "instr 1\n", "middle": "a1 oscili 0.1, 440\n", "suffix": "endin\n"},
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def problems_of(path, **kw):
    with pytest.raises(DataError) as info:
        validate_file(path, **kw)
    return info.value.problems


def test_good_file_in_every_format_passes(tmp_path):
    path = write_lines(tmp_path / "good.jsonl", [json.dumps(r) for r in GOOD])
    report = validate_file(path)
    assert report.rows == 4
    assert report.kinds == {"instruction": 1, "chat": 1, "completion": 1, "fim": 1}


def test_json_array_is_accepted_and_elements_get_line_numbers(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(GOOD, indent=1))
    assert validate_file(path).rows == 4
    bad = [GOOD[0], {"instruction": "", "output": "x"}]
    path.write_text("[\n" + json.dumps(bad[0]) + ",\n\n" + json.dumps(bad[1]) + "\n]\n")
    assert problems_of(path) == ["line 4: field 'instruction' is empty"]


def test_every_defect_is_reported_at_once_with_its_line(tmp_path):
    lines = [
        json.dumps(GOOD[0]),                                                  # 1 ok
        '{"instruction": "broken", ',                                         # 2 bad JSON
        json.dumps({"instruction": "no output"}),                             # 3 unknown format
        json.dumps({"instruction": "  ", "output": "x"}),                     # 4 empty field
        json.dumps({"instruction": 3, "output": "x"}),                        # 5 wrong type
        json.dumps({"prompt": "p", "completion": ""}),                        # 6 empty completion
        json.dumps({"prefix": "a", "middle": "", "suffix": "b"}),             # 7 empty middle
        json.dumps(GOOD[0]),                                                  # 8 duplicate of 1
        json.dumps({"messages": [{"role": "assistant", "content": "x"},
                                 {"role": "user", "content": "y"}]}),         # 9 order + last role
        json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),       # 10 bad role
        json.dumps({"messages": "hello"}),                                    # 11 wrong type
        json.dumps([1, 2]),                                                   # 12 not an object
        json.dumps({"instruction": "x", "output": "y", "meta": "z"}),         # 13 meta type
        "",                                                                   # blank: skipped
        json.dumps({"messages": [{"role": "user", "content": "q"},
                                 {"role": "system", "content": "s"},
                                 {"role": "assistant", "content": ""}]}),     # 15 system late, empty
    ]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    problems = problems_of(path)
    text = "\n".join(problems)
    assert "line 2: invalid JSON" in text
    assert "line 3: unknown format" in text
    assert "line 4: field 'instruction' is empty" in text
    assert "line 5: field 'instruction' must be a string, got int" in text
    assert "line 6: field 'completion' is empty" in text
    assert "line 7: field 'middle' is empty" in text
    assert "line 8: duplicate of line 1" in text
    assert "line 9: messages[0]: role 'assistant' out of order" in text
    assert "line 9: the last message must be from the assistant" in text
    assert "line 10: messages[0]: unknown role 'wizard'" in text
    assert "line 11: 'messages' must be a list, got str" in text
    assert "line 12: a row must be a JSON object, got list" in text
    assert "line 13: 'meta' must be an object" in text
    assert "line 15: messages[1]: a system message is only allowed first" in text
    assert "line 15: messages[2]: 'content' is empty" in text
    assert not any(p.startswith("line 1:") for p in problems)
    assert [int(p.split(":")[0][5:]) for p in problems] == sorted(int(p.split(":")[0][5:]) for p in problems)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # never modified


def test_over_long_rows_by_character_estimate(tmp_path):
    long_row = {"instruction": "Explain.", "output": "osc " * 400}
    path = write_lines(tmp_path / "long.jsonl", [json.dumps(GOOD[2]), json.dumps(long_row)])
    problems = problems_of(path, max_tokens=200)
    assert len(problems) == 1 and problems[0].startswith("line 2: too long:")
    assert "estimated" in problems[0]
    validate_file(path, max_tokens=5000)  # fits a larger context


def test_over_long_with_a_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 0, "oscili": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    long_row = {"instruction": "Explain.", "output": "oscili " * 300}
    path = write_lines(tmp_path / "long.jsonl", [json.dumps(GOOD[2]), json.dumps(long_row)])
    problems = problems_of(path, max_tokens=250, tokenizer=str(tmp_path / "tok"))
    assert len(problems) == 1 and problems[0].startswith("line 2: too long: 3")
    assert "estimated" not in problems[0]
    validate_file(path, max_tokens=400, tokenizer=str(tmp_path / "tok"))
    with pytest.raises(DataError, match="no tokenizer"):
        validate_file(path, max_tokens=400, tokenizer=str(tmp_path / "nowhere"))


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert "no rows" in problems_of(empty)[0]
    with pytest.raises(DataError, match="no such file"):
        validate_file(tmp_path / "missing.jsonl")


def test_unclosed_json_array(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n" + json.dumps(GOOD[0]) + ",\n")
    problems = problems_of(path)
    assert problems == ["line 3: invalid JSON (the array is not closed with ']')"]


def test_cli_exits_non_zero_and_lists_every_problem(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD[0]), "{", json.dumps(GOOD[0])])
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    assert "line 2: invalid JSON" in result.output
    assert "line 3: duplicate of line 1" in result.output
    ok = write_lines(tmp_path / "ok.jsonl", [json.dumps(r) for r in GOOD])
    result = CliRunner().invoke(cli, ["validate", str(ok)])
    assert result.exit_code == 0, result.output
    assert "4 rows OK" in result.output


def test_compile_flag_checks_code_answers_with_csound(tmp_path, monkeypatch):
    monkeypatch.setenv("CSOUND_ASSISTANT_CACHE", str(tmp_path / "cache"))
    good = "instr 1\na1 oscili 0.2, 440\nouts a1, a1\nendin"
    bad = "instr 1\na1 oscilli 0.2, 440\nouts a1, a1\nendin"
    rows = [
        {"instruction": "Sine please.", "output": f"Here it is.\n\n```csound\n{good}\n```"},
        {"instruction": "Another sine.", "output": f"Here it is.\n\n```csound\n{bad}\n```"},
        {"prefix": "instr 1\na1 oscili 0.2, 440\n", "middle": "outs a1, kgone\n", "suffix": "endin\n"},
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "No code here."}]},
    ]
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(r) for r in rows])
    validate_file(path)  # structurally fine
    problems = problems_of(path, compile=True)
    assert len(problems) == 2
    assert problems[0].startswith("line 2: code answer 1 does not compile")
    assert "oscilli" in problems[0]
    assert problems[1].startswith("line 3: code answer 1 does not compile")
    assert "kgone" in problems[1]
