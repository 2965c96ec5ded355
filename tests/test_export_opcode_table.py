"""``export`` writes the manual's opcode table and its synopses into every model GGUF it
packages, so that the Csound-aware decoder (runtime/decoder_setup.py) and the lookups
(runtime/prompts.py) have them wherever the file goes: the metadata it writes, and (slow: ~2
min on 2 busy cores) the tiny random model through the real export, merge, llama.cpp's
converter and quantizer, read back by gguf-py and by llama.cpp."""

from __future__ import annotations

import pytest

from convert_helpers import make_adapter
from csound_assistant import constants as C
from csound_assistant.convert.export import export
from csound_assistant.convert.gguf_convert import metadata_values, read_metadata
from csound_assistant.opcode_reference import OpcodeReference
from csound_assistant.opcode_table import OpcodeTable
from csound_assistant.prompt_format import get_format


def test_the_metadata_export_writes_holds_the_manuals_table_and_synopses(tmp_path, monkeypatch):
    fmt = get_format("chatml")
    tokens = [fmt.eos, fmt.fim_end, fmt.pad, fmt.fim_prefix, fmt.fim_suffix, fmt.fim_middle]
    values = metadata_values(tokens, fmt, {"name": "t"})
    assert OpcodeTable.from_gguf(values[C.GGUF_OPCODE_TABLE][0]).forms \
        == OpcodeTable.from_manual().forms
    assert OpcodeReference.from_gguf(values[C.GGUF_SYNOPSES][0]).synopses \
        == OpcodeReference.from_manual().synopses
    # without a manual the file is still written, without either (the server then uses the
    # manual where it runs)
    monkeypatch.setenv(C.ENV_OPCODE_REFERENCE, str(tmp_path / "nowhere.json"))
    values = metadata_values(tokens, fmt, {"name": "t"})
    assert C.GGUF_OPCODE_TABLE not in values and C.GGUF_SYNOPSES not in values


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    adapter = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("table-run") / "adapter")
    out = adapter.parent / "export"
    export(adapter, out, quant_types=("Q8_0",), gate=False, lora=False, imatrix=False,
           log=lambda *a, **k: None)
    return out


@pytest.mark.slow
def test_export_writes_the_manuals_opcode_table_into_each_gguf(exported):
    manual = OpcodeTable.from_manual()
    for name in ("csound-assistant.F16.gguf", "csound-assistant.Q8_0.gguf"):
        metadata = read_metadata(exported / name)
        table = OpcodeTable.from_gguf(metadata[C.GGUF_OPCODE_TABLE])
        assert table.forms == manual.forms, name
        assert "moogladder" in table and table.takes("moogladder", ("a",))
        assert not table.takes("moogladder", ("k",))
        assert OpcodeReference.from_gguf(metadata[C.GGUF_SYNOPSES]).synopses \
            == OpcodeReference.from_manual().synopses, name


@pytest.mark.slow
def test_llama_cpp_hands_the_table_to_the_server_whole(exported):
    """llama-cpp-python's metadata (what ``LlamaBackend.metadata`` reads) keeps the string
    whole, not cut at its 1 kB buffer."""
    from llama_cpp import Llama

    llm = Llama(str(exported / "csound-assistant.Q8_0.gguf"), n_ctx=64, verbose=False)
    try:
        value, synopses = llm.metadata[C.GGUF_OPCODE_TABLE], llm.metadata[C.GGUF_SYNOPSES]
    finally:
        llm.close()
    assert OpcodeTable.from_gguf(value).forms == OpcodeTable.from_manual().forms
    assert OpcodeReference.from_gguf(synopses).synopses == OpcodeReference.from_manual().synopses
