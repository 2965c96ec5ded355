"""Labels: loss only on answers, every answer ends with the stop token, pad is not EOS."""

import pytest
from transformers import AutoTokenizer

from csound_assistant.errors import ConfigError, DataError
from csound_assistant.prompt_format import get_format
from csound_assistant.train.encode import (
    IGNORE, check_stop, encode_row, encode_split, read_split, special_ids,
)
from train_helpers import ROWS

FMT = get_format("chatml")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _decode_trained(tokenizer, enc):
    return tokenizer.decode([t for t in enc.labels if t != IGNORE])


def _decode_masked(tokenizer, enc):
    return tokenizer.decode([i for i, t in zip(enc.input_ids, enc.labels) if t == IGNORE])


# (row, the exact trained text, text that must be masked)
EXPECTED = [
    (ROWS[0], "instr 1\n  out poscil(0.3, 440)\nendin<|im_end|>", "A sine at 440 Hz?"),
    (ROWS[1], "instr 2\n  out rand(0.1)\nendin<|im_end|>", "Play noise.\n\nquiet"),
    (ROWS[2], " vco2(0.2, 110)\n  out a1\nendin<|im_end|>", "instr 3\n  a1 ="),
    (ROWS[3], "oscili(0.2, 220)<|endoftext|>", "<jupyter_start>instr 4\n  a1 = <jupyter_text>"
                                               "\n  out a1\nendin<jupyter_code>"),
]


@pytest.mark.parametrize("row,trained,masked", EXPECTED,
                         ids=["chat", "instruction", "completion", "fim"])
def test_labels_cover_exactly_the_answer(tokenizer, row, trained, masked):
    enc = encode_row(tokenizer, FMT, row)
    assert _decode_trained(tokenizer, enc) == trained
    assert masked in _decode_masked(tokenizer, enc)
    # labels are the input ids where trained: no shift, no other change
    assert all(t in (IGNORE, i) for i, t in zip(enc.input_ids, enc.labels))


@pytest.mark.parametrize("row", ROWS, ids=["chat", "instruction", "completion", "fim"])
def test_last_label_is_the_stop_token_and_not_masked(tokenizer, row):
    ids = special_ids(tokenizer, FMT)
    enc = encode_row(tokenizer, FMT, row)
    stop = ids["fim_end"] if enc.kind == "fim" else ids["eos"]
    assert stop == tokenizer.convert_tokens_to_ids(FMT.fim_end if enc.kind == "fim" else FMT.eos)
    last = max(i for i, t in enumerate(enc.labels) if t != IGNORE)
    assert enc.labels[last] == stop != IGNORE
    assert check_stop(enc, ids, "row") is None
    # chat turns end with the newline after <|im_end|>, masked; other shapes end on the stop token
    assert enc.labels[last + 1:] == [IGNORE] * (len(enc) - last - 1)
    assert len(enc) - last - 1 == (1 if enc.kind in ("chat", "instruction") else 0)


def test_system_and_user_turns_are_masked_in_multi_turn_chat(tokenizer):
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "one"}, {"role": "assistant", "content": "A"},
                        {"role": "user", "content": "two"}, {"role": "assistant", "content": "B"}]}
    enc = encode_row(tokenizer, FMT, row)
    assert _decode_trained(tokenizer, enc) == "A<|im_end|>B<|im_end|>"
    masked = _decode_masked(tokenizer, enc)
    assert "Be brief." in masked and "one" in masked and "two" in masked


def test_pad_is_an_existing_token_other_than_eos(tokenizer):
    ids = special_ids(tokenizer, FMT)
    n = len(tokenizer)
    assert ids["pad"] not in (ids["eos"], ids["fim_end"])
    assert tokenizer.convert_ids_to_tokens(ids["pad"]) == "<empty_output>"
    assert len(tokenizer) == n  # nothing was added


def test_a_format_that_does_not_fit_the_tokenizer_is_refused(tokenizer):
    with pytest.raises(ConfigError, match="eos token '</s>'"):
        special_ids(tokenizer, get_format("llama2-codellama"))


def test_overlong_rows_are_dropped_not_truncated(tokenizer):
    ids = special_ids(tokenizer, FMT)
    long_row = {"prompt": "x " * 300, "completion": "y"}
    split = encode_split(tokenizer, FMT, [*ROWS, long_row], 120, ids, "train")
    assert split.dropped_too_long == 1 and len(split.examples) == 4
    assert all(check_stop(e, ids, "r") is None for e in split.examples)


def test_an_empty_middle_trains_only_the_stop_token(tokenizer):
    ids = special_ids(tokenizer, FMT)
    enc = encode_row(tokenizer, FMT, {"prefix": "a", "middle": "", "suffix": "b"})
    assert [t for t in enc.labels if t != IGNORE] == [ids["fim_end"]]


def test_an_answer_not_ending_in_its_stop_token_is_reported(tokenizer):
    ids = special_ids(tokenizer, FMT)
    enc = encode_row(tokenizer, FMT, ROWS[0])
    enc.kind = "fim"  # a chat answer ends in eos, not in fim_end
    assert "not the stop token" in check_stop(enc, ids, "train row 7")
    enc.labels = [IGNORE] * len(enc)
    assert "nothing to train on" in check_stop(enc, ids, "train row 7")


def test_bad_jsonl_lines_are_all_reported(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\nnot json\n{"question": 1}\n')
    with pytest.raises(DataError) as err:
        read_split(path)
    assert len(err.value.problems) == 2
    assert "train.jsonl:2" in err.value.problems[0] and "train.jsonl:3" in err.value.problems[1]
    with pytest.raises(DataError, match="data split"):
        read_split(tmp_path / "missing.jsonl")


def test_task_filter_keeps_listed_tasks_and_explains_an_empty_result():
    from csound_assistant.train.encode import select_tasks

    rows = [{**r, "meta": {"task": t}} for r, t in zip(ROWS, ["write", "fim-line", "write", "chat"])]
    assert select_tasks(rows, [], "x") == rows
    assert [r["meta"]["task"] for r in select_tasks(rows, ["write", "chat"], "x")] == [
        "write", "write", "chat"]
    with pytest.raises(DataError, match="tasks present: \\['chat', 'fim-line', 'write'\\]"):
        select_tasks(rows, ["orchestra"], "x")


def test_task_weights_repeat_or_drop_a_tasks_training_rows():
    from csound_assistant.train.config import load_config
    from csound_assistant.train.encode import weight_tasks

    tasks = ["write", "fim-line", "write", "chat"]
    rows = [{**r, "meta": {"task": t}} for r, t in zip(ROWS, tasks)]
    assert weight_tasks(rows, {}) == rows
    tasks = [r["meta"]["task"] for r in weight_tasks(rows, {"write": 3, "chat": 0})]
    assert tasks == ["write"] * 3 + ["fim-line"] + ["write"] * 3
    assert load_config(None, ["task_weights={patch: 3}"]).task_weights == {"patch": 3}
    for bad in ("task_weights={patch: -1}", "task_weights={patch: 1.5}", "task_weights=[patch]"):
        with pytest.raises(ConfigError, match="task_weights must map task names"):
            load_config(None, [bad])
