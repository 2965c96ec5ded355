"""The Modelfile reproduces training: parsed as `ollama create` parses it, rendered with Go's
text/template the way Ollama renders /api/generate and /api/chat, byte for byte."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from csound_assistant.errors import ArtifactError, ConfigError
from csound_assistant.modelfiles.cli import cli
from csound_assistant.modelfiles.render import (
    TEMPLATE_PATH, render_modelfile, stop_strings, write_modelfile,
)
from csound_assistant.prompt_format import FORMATS, get_format
from modelfiles_helpers import GoTemplate, build_gotemplate, fake_export

# Contents that would break a naive template: Go template syntax, quotes, unicode, blank lines.
CODE = 'instr 1\n  aSig poscil 0.5, 440 ; {{ .Prompt }} "quoted"\n  outs aSig, aSig\nendin\n'
USER = "Write a Csound instrument that plays a 440 Hz sine — café ♪."

CHATS = {
    "single": [{"role": "user", "content": USER}],
    "single+system": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": USER}],
    "multi": [{"role": "user", "content": USER}, {"role": "assistant", "content": CODE},
              {"role": "user", "content": "Add an envelope.\n\nKeep it short."}],
    "multi+system": [{"role": "system", "content": "Answer in code only."},
                     {"role": "user", "content": USER}, {"role": "assistant", "content": CODE},
                     {"role": "user", "content": "Now in stereo."}],
}


@pytest.fixture(scope="module")
def go(tmp_path_factory) -> GoTemplate:
    return GoTemplate(build_gotemplate(tmp_path_factory.mktemp("go")))


@pytest.fixture(scope="module", params=list(FORMATS))
def packaged(request, go, embedded_gguf, tmp_path_factory):
    """(format, parsed Modelfile commands) for a Modelfile written from a fake export."""
    fmt = get_format(request.param)
    root = tmp_path_factory.mktemp(fmt.name)
    export = fake_export(root / "export", embedded_gguf, prompt_format=fmt.name)
    modelfile = write_modelfile(export, root / "package")
    return fmt, go.parse_modelfile(modelfile.read_text()), modelfile


def _one(commands, name):
    values = [args for cmd, args in commands if cmd == name]
    assert len(values) == 1, f"expected one {name}, got {values}"
    return values[0]


def _prompt_part(fmt, row) -> str:
    """The untrained text before the first trained segment: what a runtime must send."""
    text = ""
    for segment, trained in fmt.segments(row):
        if trained:
            return text
        text += segment
    raise AssertionError("row has no trained segment")


def _ollama(go, commands, **request) -> str:
    """What Ollama feeds the tokenizer, which adds BOS itself when the GGUF says so."""
    return go.one({"template": _one(commands, "template"), "system": _one(commands, "system"),
                   **request})


def test_modelfile_parses_as_ollama_reads_it(packaged):
    fmt, commands, modelfile = packaged
    assert _one(commands, "model") == "./csound-assistant.Q4_K_M.gguf"
    assert (modelfile.parent / "csound-assistant.Q4_K_M.gguf").is_file()  # the link resolves
    assert _one(commands, "template") == fmt.ollama_template()
    assert _one(commands, "system") == fmt.system
    stops = [args for cmd, args in commands if cmd == "stop"]
    assert stops == stop_strings(fmt)
    assert fmt.eos in stops and fmt.fim_end in stops
    assert float(_one(commands, "temperature")) == 0.2
    assert int(_one(commands, "num_ctx")) >= 2048
    assert "Apache-2.0" in _one(commands, "license")
    assert "{{ if .Suffix }}" in fmt.ollama_template().replace("{{-", "{{")


@pytest.mark.parametrize("case", CHATS)
def test_api_chat_renders_the_training_prompt(packaged, go, case):
    fmt, commands, _ = packaged
    messages = CHATS[case]
    rendered = _ollama(go, commands, chat={"messages": messages})
    assert fmt.bos + rendered == fmt.chat_prompt(messages)


@pytest.mark.parametrize("case", ["single", "single+system"])
def test_api_generate_renders_the_training_prompt(packaged, go, case):
    fmt, commands, _ = packaged
    messages = CHATS[case]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    rendered = _ollama(go, commands, generate={"prompt": messages[-1]["content"],
                                               "system": system})
    assert fmt.bos + rendered == fmt.chat_prompt(messages)


def test_instruction_with_input_renders_the_training_prompt(packaged, go):
    fmt, commands, _ = packaged
    row = {"instruction": "Fix the syntax error in this instrument.", "input": CODE,
           "output": CODE}
    # Clients send instruction and input as one user message, as the training rows were built.
    prompt = f"{row['instruction']}\n\n{row['input']}"
    for request in ({"generate": {"prompt": prompt}},
                    {"chat": {"messages": [{"role": "user", "content": prompt}]}}):
        assert fmt.bos + _ollama(go, commands, **request) == _prompt_part(fmt, row)


@pytest.mark.parametrize("prefix,suffix", [
    ("<CsInstruments>\nsr = 48000\ninstr 1\n", "\nendin\n</CsInstruments>\n"),
    ("instr 2\n  kEnv linseg 0, 0.1, 1\n  ", "  outs aSig, aSig\nendin"),
])
def test_fim_renders_the_training_prompt(packaged, go, prefix, suffix):
    fmt, commands, _ = packaged
    row = {"prefix": prefix, "middle": "aSig poscil kEnv, 440\n", "suffix": suffix}
    rendered = _ollama(go, commands, generate={"prompt": prefix, "suffix": suffix})
    assert fmt.bos + rendered == _prompt_part(fmt, row)
    assert rendered == fmt.fim_prompt(prefix, suffix)


FILE = ("<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\ninstr 1\n  aSig poscil 0.3, 440\n"
        "  outs aSig, aSig\nendin\n</CsInstruments>\n<CsScore>\n")


@pytest.mark.parametrize("request_shape", [
    # Continue's Ollama provider at the end of a file: `suffix` present and empty; Ollama reads
    # it into a plain string, so its template sees the chat values of a prompt without suffix.
    {"generate": {"prompt": FILE, "suffix": ""}},
    {"generate": {"prompt": FILE, "suffix": "", "system": "Be brief."}},
    {"chat": {"messages": [{"role": "user", "content": FILE}]}},
])
def test_a_cursor_at_the_end_of_a_file_renders_the_training_fim_prompt(packaged, go,
                                                                         request_shape):
    fmt, commands, _ = packaged
    row = {"prefix": FILE, "middle": "i 1 0 2\ne\n</CsScore>\n</CsoundSynthesizer>\n",
           "suffix": ""}
    rendered = _ollama(go, commands, **request_shape)
    assert fmt.bos + rendered == _prompt_part(fmt, row)
    assert rendered == fmt.fim_prompt(FILE, "")


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hi."}],  # shorter than the file marker: `slice` must not run
    [{"role": "user", "content": "Complete this.\n\n" + FILE}],
    [{"role": "user", "content": FILE}, {"role": "assistant", "content": CODE},
     {"role": "user", "content": "Now in stereo."}],
    [{"role": "user", "content": "Explain this."}, {"role": "assistant", "content": CODE},
     {"role": "user", "content": FILE}],
], ids=["short", "question-then-file", "file-then-chat", "chat-then-file"])
def test_a_conversation_is_never_taken_for_a_file(packaged, go, messages):
    fmt, commands, _ = packaged
    assert fmt.bos + _ollama(go, commands, chat={"messages": messages}) \
        == fmt.chat_prompt(messages)
    if len(messages) == 1:  # /api/generate without suffix, as `ollama run` or a script sends
        rendered = _ollama(go, commands, generate={"prompt": messages[0]["content"]})
        assert fmt.bos + rendered == fmt.chat_prompt(messages)


def test_template_alone_adds_the_default_system_turn(packaged, go):
    """Even without the Modelfile's SYSTEM (a derived model may drop it) the text matches."""
    fmt, commands, _ = packaged
    messages = CHATS["multi"]
    rendered = go.one({"template": _one(commands, "template"),
                       "values": {"messages": messages}})
    assert fmt.bos + rendered == fmt.chat_prompt(messages)


def test_a_wrong_template_is_caught(go):
    """The check can fail: the pre-fix ChatML template trimmed the newline after the header."""
    fmt = get_format("chatml")
    broken = fmt.ollama_template().replace('assistant\n{{ end }}', 'assistant\n{{- end }}')
    assert broken != fmt.ollama_template()
    rendered = go.one({"template": broken, "chat": {"messages": CHATS["single+system"]}})
    assert rendered != fmt.chat_prompt(CHATS["single+system"])


def test_go_renderer_follows_ollamas_rules(go):
    # Consecutive messages of one role are merged with a blank line, as Ollama's collate does.
    template = "{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"
    merged = go.one({"template": template, "chat": {"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}})
    assert merged == "[user:a\n\nb]"
    # A template naming neither .Messages nor .Response gets {{ .Response }} appended, and FIM
    # values carry no system prompt.
    assert go.one({"template": "<{{ .Prompt }}|{{ .Suffix }}>", "system": "S",
                   "generate": {"prompt": "p", "suffix": "s"}}) == "<p|s>"
    # The Modelfile parser keeps triple-quoted text verbatim and rejects an open quote.
    commands = go.parse_modelfile('FROM x.gguf\nSYSTEM """ two\nlines """\nPARAMETER stop "a b"\n')
    assert commands == [("model", "x.gguf"), ("system", " two\nlines "), ("stop", "a b")]
    with pytest.raises(AssertionError, match="EOF"):
        go.parse_modelfile('FROM x\nTEMPLATE """open')


def test_embedded_gguf_adds_bos_exactly_when_the_format_has_one(embedded_gguf):
    """Ollama's tokenizer adds BOS per the GGUF; the comparisons above rely on it."""
    from llama_cpp import Llama

    metadata = Llama(str(embedded_gguf), vocab_only=True, verbose=False).metadata
    add_bos = metadata["tokenizer.ggml.add_bos_token"] == "true"
    assert add_bos == bool(get_format("chatml").bos)


# --- the writer -------------------------------------------------------------------------------

def test_adapter_modelfile(go, embedded_gguf, tmp_path):
    export = fake_export(tmp_path / "export", embedded_gguf, lora=True)
    modelfile = write_modelfile(export, tmp_path / "package", use_adapter=True,
                                base="codellama:7b-code")
    commands = go.parse_modelfile(modelfile.read_text())
    assert _one(commands, "model") == "codellama:7b-code"
    assert _one(commands, "adapter") == "./csound-assistant.lora.gguf"
    assert (modelfile.parent / "csound-assistant.lora.gguf").is_file()
    # A local base GGUF is written as a path relative to the Modelfile.
    modelfile = write_modelfile(export, tmp_path / "package", use_adapter=True,
                                base=str(embedded_gguf), force=True)
    base = _one(go.parse_modelfile(modelfile.read_text()), "model")
    assert os.path.samefile(modelfile.parent / base, embedded_gguf)
    # Without --base: the full-precision HF folder the export record names (as convert writes).
    hf_base = tmp_path / "base"
    hf_base.mkdir()
    (hf_base / "model.safetensors").write_bytes(b"")
    record = json.loads((export / "record.json").read_text())
    record.update(base=str(hf_base), metadata={"license": "llama2", "base_model": "CodeLlama"})
    (export / "record.json").write_text(json.dumps({k: v for k, v in record.items()
                                                    if k != "license"}))
    modelfile = write_modelfile(export, tmp_path / "package", use_adapter=True, force=True)
    commands = go.parse_modelfile(modelfile.read_text())
    assert os.path.samefile(modelfile.parent / _one(commands, "model"), hf_base)
    assert _one(commands, "license") == "llama2: the base model (CodeLlama) and this fine-tune."


@pytest.mark.parametrize("link", ["copy", "path"])
def test_link_modes(go, embedded_gguf, tmp_path, link):
    export = fake_export(tmp_path / "export", embedded_gguf)
    modelfile = write_modelfile(export, tmp_path / "package", link=link)
    path = _one(go.parse_modelfile(modelfile.read_text()), "model")
    assert (modelfile.parent / path).stat().st_size == embedded_gguf.stat().st_size
    assert (link == "copy") == (not (modelfile.parent / path).is_symlink()
                                and path.startswith("./"))


def test_refuses_overwrite_and_keeps_other_stages_files(embedded_gguf, tmp_path):
    export = fake_export(tmp_path / "export", embedded_gguf)
    package = tmp_path / "package"
    package.mkdir()
    (package / "config.yaml").write_text("name: continue\n")  # written by `editor continue`
    write_modelfile(export, package)  # a folder without a Modelfile needs no --force
    with pytest.raises(ArtifactError, match="--force"):
        write_modelfile(export, package)
    write_modelfile(export, package, force=True, parameters={"num_ctx": 8192})
    assert "PARAMETER num_ctx 8192" in (package / "Modelfile").read_text()
    assert (package / "config.yaml").read_text() == "name: continue\n"
    record = json.loads((package / "record.json").read_text())
    assert record["prompt_format"] == "chatml" and len(record["files"]["gguf"]["sha256"]) == 64


def test_bad_exports_give_clear_errors(embedded_gguf, tmp_path):
    with pytest.raises(ArtifactError, match="csound-assistant export"):
        write_modelfile(tmp_path / "missing", tmp_path / "p1")
    export = fake_export(tmp_path / "export", embedded_gguf, record={"prompt_format": None})
    with pytest.raises(ArtifactError, match="--prompt-format"):
        write_modelfile(export, tmp_path / "p2")
    assert write_modelfile(export, tmp_path / "p3", prompt_format="chatml").is_file()
    with pytest.raises(ArtifactError, match="lora"):
        write_modelfile(export, tmp_path / "p4", prompt_format="chatml", use_adapter=True,
                        base="x")
    # a record too old to say which GGUFs it made: the error names the command that rebuilds it
    (export / "record.json").write_text(json.dumps({"prompt_format": "chatml"}))
    with pytest.raises(ArtifactError, match=r"quant_types.*`csound-assistant export --force`"):
        write_modelfile(export, tmp_path / "p5")
    assert not (tmp_path / "p4").exists() and not (tmp_path / "p5").exists()


def test_the_first_quant_type_the_export_was_asked_for_is_packaged(embedded_gguf, tmp_path):
    """The pipeline exports Q8_0 first and scores it; `modelfile` and `eval run` without a
    type take that one, not Q4_K_M; an export from before the field still gives Q4_K_M."""
    from csound_assistant.cli import main
    from csound_assistant.modelfiles.render import read_export

    export = fake_export(tmp_path / "r" / "export", embedded_gguf,
                         record={"quant_types": ["Q8_0", "Q4_K_M"]})
    (export / "csound-assistant.Q8_0.gguf").symlink_to(embedded_gguf)
    assert read_export(export).gguf.name == "csound-assistant.Q8_0.gguf"
    assert "FROM ./csound-assistant.Q8_0.gguf" in write_modelfile(
        export, tmp_path / "p1").read_text()
    assert "FROM ./csound-assistant.Q4_K_M.gguf" in write_modelfile(
        export, tmp_path / "p2", quant="Q4_K_M").read_text()
    # an export from before the field: the types its files record, Q4_K_M (then the default)
    # first
    old = fake_export(tmp_path / "old", embedded_gguf, record={"quant_types": ["Q8_0", "Q4_K_M"]})
    (old / "csound-assistant.Q8_0.gguf").symlink_to(embedded_gguf)
    record = json.loads((old / "record.json").read_text())
    del record["quant_types"]
    (old / "record.json").write_text(json.dumps(record))
    assert read_export(old).gguf.name == "csound-assistant.Q4_K_M.gguf"
    with pytest.raises(ArtifactError, match="exported as Q8_0, Q4_K_M"):
        read_export(export, quant="Q6_K")

    (export / "csound-assistant.Q8_0.gguf").unlink()
    result = CliRunner().invoke(main, ["eval", "run", "--work-dir", str(tmp_path),
                                       "--run", "r", "--no-test", "--limit", "1"])
    assert result.exit_code != 0 and "no MODEL given" in result.output
    assert "<name>.Q8_0.gguf" in result.output  # it looked for the first type


def test_trained_system_prompt_reaches_the_modelfile(go, embedded_gguf, tmp_path):
    """A format saved with a custom system prompt (PromptFormat.to_record()) is kept."""
    fmt = get_format("chatml")
    custom = {**fmt.to_record(), "system": "You write Csound 6 orchestras. Say \"hi\" first."}
    export = fake_export(tmp_path / "export", embedded_gguf, record={"prompt_format": custom})
    commands = go.parse_modelfile(write_modelfile(export, tmp_path / "package").read_text())
    assert _one(commands, "system") == custom["system"]
    trained = type(fmt)(**{k: v for k, v in custom.items() if k != "stop"})
    messages = CHATS["single"]
    assert _ollama(go, commands, chat={"messages": messages}) == trained.chat_prompt(messages)
    # Without the Modelfile's SYSTEM the template falls back to the same trained prompt.
    assert go.one({"template": _one(commands, "template"), "values": {"messages": messages}}) \
        == trained.chat_prompt(messages)
    # prompt_format.json beside the GGUF (as the adapter folder has it) wins over the record.
    (export / "prompt_format.json").write_text(json.dumps({**custom, "system": "Other."}))
    commands = go.parse_modelfile(
        write_modelfile(export, tmp_path / "package", force=True).read_text())
    assert _one(commands, "system") == "Other."


def test_a_model_trained_with_lookups_says_ollama_cannot_add_them(go, embedded_gguf, tmp_path):
    trained = {**get_format("chatml").to_record(), "opcode_reference": True}
    export = fake_export(tmp_path / "export", embedded_gguf, record={"prompt_format": trained})
    text = write_modelfile(export, tmp_path / "package").read_text()
    assert "trained with manual lookups" in text and "Ollama cannot" in text
    assert [c for c, _ in go.parse_modelfile(text)][:3] == ["model", "template", "system"]
    plain = render_modelfile(get_format("chatml"), model_lines=["FROM ./x.gguf"])
    assert "manual lookups" not in plain


def test_unquotable_text_is_refused():
    fmt = get_format("chatml")
    with pytest.raises(ConfigError, match="triple|cannot quote"):
        render_modelfile(fmt, model_lines=["FROM ./x.gguf"], license_text='say """hi"""')
    with pytest.raises(ConfigError, match="drops"):
        render_modelfile(fmt, model_lines=["FROM ./x.gguf"], license_text="a\u200bb")


@pytest.mark.parametrize("name", FORMATS)
def test_shipped_template_renders_for_every_format(go, name):
    fmt = get_format(name)
    text = render_modelfile(fmt, model_lines=["FROM ./csound-assistant.Q4_K_M.gguf"])
    assert "${" not in text and TEMPLATE_PATH.is_file()
    commands = go.parse_modelfile(text)
    assert [c for c, _ in commands][:3] == ["model", "template", "system"]


def test_cli_writes_the_package(embedded_gguf, tmp_path):
    fake_export(tmp_path / "runs" / "demo" / "export", embedded_gguf)
    result = CliRunner().invoke(cli, ["--work-dir", str(tmp_path / "runs"), "--run", "demo",
                                      "--temperature", "0.5"])
    assert result.exit_code == 0, result.output
    modelfile = tmp_path / "runs" / "demo" / "package" / "Modelfile"
    assert "PARAMETER temperature 0.5" in modelfile.read_text()
    assert "ollama create csound-assistant" in result.output
    again = CliRunner().invoke(cli, ["--work-dir", str(tmp_path / "runs"), "--run", "demo"])
    assert again.exit_code == 1 and "--force" in again.output
