"""Manual synopses under a request (csound_assistant.opcode_reference): which opcodes a request
names, the text added, and that training, the GGUF, eval and the server agree on it. The
synopses come from the installed manual (csound-doc), as in use."""

from __future__ import annotations

import dataclasses

import pytest

from csound_assistant.constants import ENV_OPCODE_REFERENCE, GGUF_OPCODE_REFERENCE
from csound_assistant.errors import ConfigError
from csound_assistant.opcode_reference import (
    HEADER,
    MAX_OPCODES,
    Lookups,
    OpcodeReference,
    trained_with_reference,
)
from csound_assistant.prompt_format import get_format


@pytest.fixture(scope="module")
def ref() -> OpcodeReference:
    return OpcodeReference.from_manual()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_synopses_come_from_the_manual(ref):
    assert ref.synopses["dust2"] == ["ares dust2 kamp, kdensity", "kres dust2 kamp, kdensity"]
    assert ref.synopses["moogladder"][0].startswith("asig moogladder ain, kcf, kres")
    assert "endin" not in ref.synopses and "instr" not in ref.synopses  # statements, not opcodes
    assert ref.describe()["opcodes"] > 1000


def test_named_opcodes_in_prose(ref):
    assert ref.named(user("Write a CSD that demonstrates outs1 together with vco2.")) == \
        ["outs1", "vco2"]
    # English words that are also opcodes count only when marked as code or as an opcode.
    assert ref.named(user("How do I play a tone in Csound with a random pitch?")) == []
    assert ref.named(user("What does the max opcode do, and `line`?")) == ["max", "line"]
    # Marked names come first; the cap keeps prompts short.
    many = "poscil oscili vco2 pluck buzz foscili and `moogladder`"
    assert ref.named(user(many)) == ["moogladder", "poscil", "oscili", "vco2"][:MAX_OPCODES]


def test_code_is_not_searched_but_error_text_is(ref):
    request = ("Fix this:\n\n```csound\ninstr 1\nasig pluck 0.5, 220, 220, 0, 1\n"
               "kmax maxab k1, k2\nendin\n```\n\nError:\n```text\nerror: line 3: syntax error, "
               "unexpected T_IDENT  (token \"maxab\")\n```")
    # pluck is only in the code; the misspelled name in the error finds its opcode.
    assert ref.named(user(request)) == ["maxabs"]
    # Words after an error block are still read.
    assert ref.named(user(request + "\nShould I use `vco2` instead?")) == ["maxabs", "vco2"]


def test_latest_user_turn_first(ref):
    chat = [{"role": "user", "content": "What does pvslpc do?"},
            {"role": "assistant", "content": "It ..."},
            {"role": "user", "content": "Show me an example with vco2."}]
    assert ref.named(chat) == ["vco2", "pvslpc"]


def test_augment_adds_a_block_under_the_last_user_message(ref):
    messages = user("Write a short instrument that uses dust2.")
    out = ref.augment(messages)
    assert out[-1]["content"] == ("Write a short instrument that uses dust2.\n\n"
                                  f"{HEADER}\nares dust2 kamp, kdensity\nkres dust2 kamp, kdensity")
    assert messages[0]["content"] == "Write a short instrument that uses dust2."  # not mutated
    assert ref.augment(user("Write a sine tone.")) == user("Write a sine tone.")
    answered = [*messages, {"role": "assistant", "content": "..."}]
    assert ref.augment(answered) == answered  # only a request waiting for an answer


def test_a_training_conversation_is_augmented_turn_by_turn(ref):
    chat = [{"role": "user", "content": "What does dust2 do?"},
            {"role": "assistant", "content": "Random impulses."},
            {"role": "user", "content": "And with vco2?"},
            {"role": "assistant", "content": "..."}]
    out = ref.augment_row_messages(chat)
    assert "ares dust2" in out[0]["content"] and "vco2" not in out[0]["content"]
    assert out[2]["content"].index("ares vco2") < out[2]["content"].index("ares dust2")
    assert [m["content"] for m in out[1::2]] == ["Random impulses.", "..."]


def test_a_machine_without_the_manual_reads_a_saved_copy(ref, tmp_path, monkeypatch):
    path = tmp_path / "synopses.json"
    ref.save(path)
    monkeypatch.setenv(ENV_OPCODE_REFERENCE, str(path))
    copy = OpcodeReference.from_manual()
    assert copy.synopses == ref.synopses and copy.describe() == ref.describe()
    for bad in ("{not json", '["dust2"]'):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="CSOUND_ASSISTANT_SYNOPSES"):
            OpcodeReference.from_manual()
    monkeypatch.setenv(ENV_OPCODE_REFERENCE, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="cannot read"):
        OpcodeReference.from_manual()


def test_training_encodes_the_text_the_runtimes_build(ref, tiny_model_dir):
    from transformers import AutoTokenizer

    from csound_assistant.train.encode import encode_row, with_reference

    row = {"instruction": "Write a CSD that uses dust2.", "output": "<CsoundSynthesizer>",
           "meta": {"task": "write"}}
    fmt = dataclasses.replace(get_format("chatml"), opcode_reference=True)
    seen = with_reference(row, Lookups(chat=True, reference=ref))
    assert seen["messages"][0]["content"].endswith("kres dust2 kamp, kdensity")
    # What training reads up to the answer is exactly the prompt eval and the server render.
    prompt = fmt.chat_prompt(ref.augment(user("Write a CSD that uses dust2.")))
    text = "".join(t for t, _ in fmt.segments(seen))
    assert text.startswith(prompt)
    fim = {"prefix": "instr 1\n", "middle": "dust2", "suffix": "\nendin"}
    assert with_reference(fim, Lookups(chat=True, reference=ref)) is fim  # FIM: its own flag
    encoded = encode_row(AutoTokenizer.from_pretrained(tiny_model_dir), fmt, seen)
    assert encoded.kind == "chat" and encoded.n_trained > 0


def test_the_flag_travels_in_the_gguf_to_eval_and_server(ref, embedded_gguf, tmp_path):
    from csound_assistant.convert.gguf_convert import embed_metadata
    from csound_assistant.eval.models import GGUFModel
    from csound_assistant.runtime.backend import LlamaBackend
    from csound_assistant.runtime.prompts import PromptBuilder

    flagged = tmp_path / "flagged.gguf"
    embed_metadata(embedded_gguf, flagged, dataclasses.replace(get_format("chatml"),
                                                               opcode_reference=True), {})
    messages = user("Write a CSD that uses dust2.")
    want = f"{HEADER}\nares dust2 kamp, kdensity"
    model = GGUFModel(flagged, n_ctx=256)
    try:
        assert trained_with_reference(model.llm.metadata)
        assert want in model.chat_prompt(messages)
        assert model.describe()["opcode_reference"]["opcodes"] == len(ref.synopses)
    finally:
        model.close()
    plain = GGUFModel(embedded_gguf, prompt_format="chatml", n_ctx=256)
    try:
        assert GGUF_OPCODE_REFERENCE not in plain.llm.metadata
        assert want not in plain.chat_prompt(messages)
    finally:
        plain.close()
    backend = LlamaBackend(flagged, n_ctx=256, cache_slots=0)
    try:
        def served(**kw):
            builder = PromptBuilder(backend, None, **kw)
            ids = builder.chat_tokens(messages)
            return backend.llm.detokenize(ids, special=True).decode()

        assert want in served() and want not in served(opcode_reference=False)
    finally:
        backend.close()


def test_fim_lookups_name_the_cursor_lines_opcodes_and_every_runtime_builds_them(
        ref, embedded_gguf, tmp_path):
    """fim_reference: the synopses of the opcodes on the cursor's line go before the prefix as
    Csound comments; training, eval and the server (/infill, also when the prefix is cut) give
    the model the same tokens, and a model without the flag gets none."""
    from csound_assistant.convert.gguf_convert import embed_metadata
    from csound_assistant.eval.models import GGUFModel
    from csound_assistant.runtime.backend import LlamaBackend
    from csound_assistant.runtime.prompts import PromptBuilder
    from csound_assistant.train.encode import with_reference

    prefix = "instr 1\nkenv linseg 0, p3, 1\naout reverbsc "
    suffix = ", 0.8, 12000\nout aout\nendin"
    assert ref.fim_named(prefix, suffix) == ["reverbsc"]  # not linseg: another line
    assert ref.fim_named("instr 1\n  asig oscili 0.1, 440\n", "  out asig") == ["out"]
    comments = ref.fim_comments(prefix, suffix)
    assert comments.startswith(f"; {HEADER}\n; aoutL, aoutR reverbsc ainL, ainR, kfblvl, kfco")
    assert ref.fim_comments("instr 1\n", "endin") == ""

    fmt = dataclasses.replace(get_format("chatml"), fim_reference=True)
    row = {"prefix": prefix, "middle": "ain, ain", "suffix": suffix}
    trained = with_reference(row, Lookups(fim=True, reference=ref))
    assert trained["prefix"] == comments + prefix and trained["middle"] == row["middle"]
    text = "".join(t for t, _ in fmt.segments(trained))

    flagged = tmp_path / "fim.gguf"
    embed_metadata(embedded_gguf, flagged, fmt, {})
    model = GGUFModel(flagged, n_ctx=512)
    try:
        assert model.describe()["lookups"] == ["fim"]
        tokens = []
        from csound_assistant.eval.generation import Generation

        # the prompt, not the answer
        model._run = lambda ids, *a, **k: tokens.extend(ids) or Generation("", 0.0, 0)
        model.fim(prefix, suffix)
        assert text.startswith(model.llm.detokenize(tokens, special=True).decode())
        assert comments in model.llm.detokenize(tokens, special=True).decode()
    finally:
        model.close()
    backend = LlamaBackend(flagged, n_ctx=512, cache_slots=0)
    try:
        served = PromptBuilder(backend, None)
        ids, cut = served.fim_tokens(prefix, suffix, budget=400)
        assert not cut and ids == tokens
        long = "; a long file\n" * 200 + prefix
        ids, cut = served.fim_tokens(long, suffix, budget=300)
        shown = backend.llm.detokenize(ids, special=True).decode()
        assert cut and comments in shown and shown.count("; a long file") < 200
        plain = PromptBuilder(backend, None, opcode_reference=False)
        assert HEADER not in backend.llm.detokenize(
            plain.fim_tokens(prefix, suffix, budget=400)[0], special=True).decode()
    finally:
        backend.close()
