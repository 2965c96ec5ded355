"""The one prompt format: training text, the Jinja chat template and stop tokens agree."""

import jinja2
import pytest

from csound_assistant.errors import ConfigError
from csound_assistant.prompt_format import FORMATS, get_format, row_kind

CONVERSATIONS = [
    [{"role": "user", "content": "Write a 440 Hz sine instrument."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is ksmps?"}],
    [
        {"role": "user", "content": "Explain this:\ninstr 1\nendin"},
        {"role": "assistant", "content": "It is an empty instrument."},
        {"role": "user", "content": "Add a 'poscil' line."},
    ],
]


def _jinja(fmt, messages):
    env = jinja2.Environment(loader=jinja2.BaseLoader())
    template = env.from_string(fmt.jinja_chat_template())
    return template.render(messages=messages, add_generation_prompt=True,
                           bos_token=fmt.bos, eos_token=fmt.eos)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_jinja_template_renders_the_training_prompt(name, messages):
    fmt = get_format(name)
    assert _jinja(fmt, messages) == fmt.chat_prompt(messages)


@pytest.mark.parametrize("name", FORMATS)
def test_training_segments_match_the_runtime_prompt(name):
    fmt = get_format(name)
    messages = CONVERSATIONS[2] + [{"role": "assistant", "content": "instr 1\nendin"}]
    segments = fmt.segments({"messages": messages})
    trained = [text for text, on in segments if on]
    assert trained == [
        fmt.chat_segments(messages)[i][0] for i, (_, on) in enumerate(fmt.chat_segments(messages)) if on
    ]
    assert all(text.endswith(fmt.eos) for text in trained)
    # Everything before the last answer is exactly what a runtime sends for that turn.
    prompt_text = "".join(text for text, _ in segments)
    assert prompt_text.startswith(fmt.chat_prompt(messages[:-1]))


@pytest.mark.parametrize("name", FORMATS)
def test_each_row_kind_ends_with_its_end_token(name):
    fmt = get_format(name)
    rows = {
        "instruction": {"instruction": "Add reverb", "input": "instr 1\nendin", "output": "done"},
        "completion": {"prompt": "instr 1\n", "completion": "endin"},
        "fim": {"prefix": "instr 1\n", "middle": "aSig poscil 0.5, 440\n", "suffix": "endin"},
    }
    for kind, row in rows.items():
        assert row_kind(row) == kind
        segs = fmt.segments(row)
        trained = [t for t, on in segs if on]
        assert len(trained) == 1
        end = fmt.fim_end if kind == "fim" else fmt.eos
        assert trained[0].endswith(end)
        assert not segs[0][1], "the prompt part must not be trained"
    assert fmt.pad not in (fmt.eos, fmt.fim_end)


def test_instruction_input_goes_into_the_user_turn():
    fmt = get_format("chatml")
    text = "".join(t for t, _ in fmt.segments({"instruction": "Fix it", "input": "instr 1", "output": "x"}))
    assert "<|im_start|>user\nFix it\n\ninstr 1<|im_end|>" in text


def test_unknown_format_and_row():
    with pytest.raises(ConfigError, match="chatml"):
        get_format("alpaca")
    with pytest.raises(ConfigError, match="keys"):
        get_format("chatml").segments({"text": "hello"})
