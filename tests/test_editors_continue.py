"""The Continue config: valid schema v1, and the requests Continue would send with it work
against the project's real server on the embedded GGUF and reach the model as trained text."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import yaml
from click.testing import CliRunner

from csound_assistant.editors.cli import cli
from csound_assistant.editors.continue_config import (
    api_base, continue_config, render_autocomplete, validate_continue_config,
    write_continue_config,
)
from csound_assistant.errors import ArtifactError, ConfigError
from csound_assistant.prompt_format import FORMATS, get_format
from editors_helpers import API_KEY, running_server

PREFIX = "<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\nksmps = 64\nnchnls = 2\n0dbfs = 1\n\ninstr 1\n"
SUFFIX = "\nendin\n</CsInstruments>\n<CsScore>\ni 1 0 2\n</CsScore>\n</CsoundSynthesizer>\n"
QUESTION = "Write a Csound instrument that plays a 440 Hz sine."


def _models(config, provider, role):
    return [m for m in config["models"] if m["provider"] == provider and role in m["roles"]]


@pytest.mark.parametrize("name", FORMATS)
def test_config_is_valid_schema_v1(tmp_path, name):
    fmt = get_format(name)
    path = write_continue_config(tmp_path / "config.yaml", server_url="http://127.0.0.1:8080",
                                 ollama_model="csound-assistant", prompt_format=name)
    config = yaml.safe_load(path.read_text())
    assert {"name", "version", "schema", "models"} <= config.keys() and config["schema"] == "v1"
    assert validate_continue_config(config) == []
    roles = {role for m in config["models"] for role in m["roles"]}
    assert {"chat", "edit", "autocomplete"} <= roles
    (chat,) = _models(config, "openai", "chat")
    (auto,) = _models(config, "openai", "autocomplete")
    (ollama,) = _models(config, "ollama", "autocomplete")
    assert chat["apiBase"] == auto["apiBase"] == "http://127.0.0.1:8080/v1"
    assert not chat.get("useLegacyCompletionsEndpoint") and auto["useLegacyCompletionsEndpoint"]
    assert ollama["model"] == "csound-assistant" and "chat" in ollama["roles"]
    # The autocomplete template is the training FIM prompt with Continue's variables in it.
    template = auto["promptTemplates"]["autocomplete"]
    assert render_autocomplete(template, PREFIX, SUFFIX) == fmt.fim_prompt(PREFIX, SUFFIX)
    assert re.sub(r"\{\{\{(prefix|suffix)\}\}\}", "", template).count("{{") == 0
    for model in config["models"]:
        assert fmt.eos in model["defaultCompletionOptions"]["stop"]
    assert fmt.fim_end in auto["defaultCompletionOptions"]["stop"]
    assert chat["chatOptions"]["baseSystemMessage"] == fmt.system


def test_api_base_always_ends_in_v1():
    assert api_base("http://h:1") == api_base("http://h:1/") == api_base("http://h:1/v1/") \
        == "http://h:1/v1"
    with pytest.raises(ConfigError, match="http"):
        api_base("localhost:8080")


def test_validation_catches_what_breaks_continue():
    config = continue_config(prompt_format="chatml")
    config["models"][0]["apiBase"] = "http://127.0.0.1:8080"
    config["models"][1]["roles"] = ["chat", "autocomplete"]
    del config["version"]
    problems = "\n".join(validate_continue_config(config))
    assert "/v1" in problems and "split the entry" in problems and "version" in problems
    with pytest.raises(ConfigError, match="targets"):
        continue_config(prompt_format="chatml", targets=("vim",))


def test_refuses_to_overwrite_and_the_cli_reads_the_run(tmp_path):
    from csound_assistant.stage_records import Package

    package = tmp_path / "runs" / "r" / "package"
    package.mkdir(parents=True)
    Package.write(package, name="csound-assistant", modelfile="Modelfile",
                  prompt_format="llama2-codellama")
    args = ["continue", "--work-dir", str(tmp_path / "runs"), "--run", "r",
            "--server-url", "http://127.0.0.1:9999", "--target", "server"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((package / "config.yaml").read_text())
    assert [m["provider"] for m in config["models"]] == ["openai", "openai"]
    assert "<PRE> {{{prefix}}} <SUF>{{{suffix}}} <MID>" in (package / "config.yaml").read_text()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--force" in again.output
    with pytest.raises(ArtifactError, match="--force"):
        write_continue_config(package / "config.yaml", prompt_format="chatml")
    empty = CliRunner().invoke(cli, ["continue", "--work-dir", str(tmp_path / "runs"),
                                     "--run", "none"])
    assert empty.exit_code == 1 and "--prompt-format" in empty.output


# --- the requests Continue sends, against the real server ----------------------------------

@pytest.fixture(scope="module")
def server(embedded_gguf, tmp_path_factory):
    with running_server(embedded_gguf, tmp_path_factory.mktemp("srv") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def config(server, tmp_path_factory):
    path = write_continue_config(tmp_path_factory.mktemp("cfg") / "config.yaml",
                                 server_url=server, ollama_model="csound-assistant",
                                 prompt_format="chatml", api_key=API_KEY,
                                 ollama_url=server)  # the server speaks Ollama's API too
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def tokenize(embedded_gguf):
    from llama_cpp import Llama

    vocab = Llama(str(embedded_gguf), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode(), add_bos=False, special=True)


def _headers(model):
    key = model.get("apiKey")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _sse_text(response, field) -> str:
    assert response.status_code == 200, response.text
    text = []
    for line in response.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                text.append(field(choice) or "")
    return "".join(text)


def _ndjson_text(response, field) -> tuple[str, dict]:
    assert response.status_code == 200, response.text
    chunks = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert chunks[-1]["done"] is True
    return "".join(field(c) for c in chunks), chunks[-1]


def _ollama_headers(config):
    # Continue's ollama provider sends the apiKey when one is set; our server wants it.
    return {"Authorization": f"Bearer {API_KEY}"}


def _same_prompt_as_before(usage: dict) -> bool:
    """The server's prefix cache held this whole prompt: the previous request sent the same
    tokens (only the last prompt token is evaluated again for its logits)."""
    return usage["prompt_tokens_details"]["cached_tokens"] >= usage["prompt_tokens"] - 1


def test_chat_as_continue_sends_it(config, tokenize):
    fmt = get_format("chatml")
    (model,) = _models(config, "openai", "chat")
    (ollama,) = _models(config, "ollama", "chat")
    options = model["defaultCompletionOptions"]
    messages = [{"role": "system", "content": model["chatOptions"]["baseSystemMessage"]},
                {"role": "user", "content": QUESTION}]
    # Continue's Ollama provider: /api/chat, NDJSON stream.
    text, last = _ndjson_text(
        httpx.post(f"{ollama['apiBase']}/api/chat", headers=_ollama_headers(config), timeout=120,
                   json={"model": ollama["model"], "messages": messages, "stream": True,
                         "keep_alive": 1800,
                         "options": {"temperature": 0, "num_predict": 6,
                                     "stop": ollama["defaultCompletionOptions"]["stop"]}}),
        lambda c: c.get("message", {}).get("content", ""))
    assert text.strip() and last["done_reason"] in ("stop", "length")
    # Continue's openai provider: /v1/chat/completions with the system message it is given.
    body = {"model": model["model"], "messages": messages, "max_tokens": 6, "temperature": 0,
            "top_p": options["topP"], "stop": options["stop"]}
    url = f"{model['apiBase']}/chat/completions"
    plain = httpx.post(url, json=body, headers=_headers(model), timeout=120).json()
    # The model saw exactly the training prompt, on both routes.
    assert plain["usage"]["prompt_tokens"] == len(tokenize(fmt.chat_prompt(messages)))
    assert _same_prompt_as_before(plain["usage"])
    streamed = _sse_text(httpx.post(url, json={**body, "stream": True}, headers=_headers(model),
                                    timeout=120), lambda c: c.get("delta", {}).get("content"))
    assert streamed.strip() and not any(stop in streamed for stop in options["stop"])


def test_autocomplete_as_continue_sends_it(config, tokenize):
    fmt = get_format("chatml")
    (model,) = _models(config, "openai", "autocomplete")
    prompt = render_autocomplete(model["promptTemplates"]["autocomplete"], PREFIX, SUFFIX)
    body = {"model": model["model"], "prompt": prompt, "max_tokens": 6, "temperature": 0,
            "stop": model["defaultCompletionOptions"]["stop"]}
    url = f"{model['apiBase']}/completions"
    plain = httpx.post(url, json=body, headers=_headers(model), timeout=120).json()
    # The rendered template arrived as FIM special tokens, not as literal text.
    assert plain["usage"]["prompt_tokens"] == len(tokenize(fmt.fim_prompt(PREFIX, SUFFIX)))
    assert len(tokenize(fmt.fim_prefix)) == 1
    assert plain["choices"][0]["finish_reason"] in ("stop", "length")
    # The same FIM through the OpenAI suffix field is the same prompt.
    by_suffix = httpx.post(url, json={**body, "prompt": PREFIX, "suffix": SUFFIX},
                           headers=_headers(model), timeout=120).json()
    assert by_suffix["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert _same_prompt_as_before(by_suffix["usage"])
    streamed = _sse_text(httpx.post(url, json={**body, "stream": True}, headers=_headers(model),
                                    timeout=120), lambda c: c.get("text"))
    assert isinstance(streamed, str) and not any(stop in streamed for stop in body["stop"])


def test_ollama_autocomplete_as_continue_sends_it(config, tokenize):
    (model,) = _models(config, "ollama", "autocomplete")
    base = model["apiBase"]
    show = httpx.post(f"{base}/api/show", json={"name": model["model"]},
                      headers=_ollama_headers(config), timeout=30).json()
    # Continue turns FIM on only when the template mentions .Suffix, and reads stop words so:
    assert ".Suffix" in show["template"]
    stops = []
    for line in show["parameters"].split("\n"):
        parts = re.match(r'^(\S+)\s+((?:".*")|\S+)$', line)
        if parts and parts[1] == "stop":
            stops.append(json.loads(parts[2]))
    fmt = get_format("chatml")
    assert fmt.eos in stops and fmt.fim_end in stops
    prefix = PREFIX.replace("instr 1", "instr 7")  # a prompt no earlier test sent
    request = {"model": model["model"], "prompt": prefix, "suffix": SUFFIX, "stream": True,
               "keep_alive": 1800, "options": {"temperature": 0, "num_predict": 6,
                                               "stop": stops}}
    text, last = _ndjson_text(httpx.post(f"{base}/api/generate", json=request,
                                         headers=_ollama_headers(config), timeout=120),
                              lambda c: c.get("response", ""))
    assert isinstance(text, str) and last["done_reason"] in ("stop", "length")
    (openai_auto,) = _models(config, "openai", "autocomplete")
    prompt = render_autocomplete(openai_auto["promptTemplates"]["autocomplete"], prefix, SUFFIX)
    same = httpx.post(f"{openai_auto['apiBase']}/completions", headers=_headers(openai_auto),
                      timeout=120, json={"model": "csound-assistant", "prompt": prompt,
                                         "max_tokens": 1, "temperature": 0}).json()
    assert same["usage"]["prompt_tokens"] == len(tokenize(fmt.fim_prompt(prefix, SUFFIX)))
    assert _same_prompt_as_before(same["usage"])


def test_wrong_key_is_refused(config):
    (model,) = _models(config, "openai", "chat")
    response = httpx.post(f"{model['apiBase']}/chat/completions", timeout=30,
                          headers={"Authorization": "Bearer nope"},
                          json={"model": model["model"], "messages": [{"role": "user",
                                                                       "content": "hi"}]})
    assert response.status_code == 401


def test_cli_uses_the_trained_format_of_the_export(tmp_path, embedded_gguf):
    from modelfiles_helpers import fake_export

    custom = {**get_format("chatml").to_record(), "system": "Answer in Csound only."}
    fake_export(tmp_path / "runs" / "r" / "export", embedded_gguf,
                record={"prompt_format": custom})
    result = CliRunner().invoke(cli, ["continue", "--work-dir", str(tmp_path / "runs"),
                                      "--run", "r"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((tmp_path / "runs" / "r" / "package" / "config.yaml").read_text())
    (chat,) = _models(config, "openai", "chat")
    assert chat["chatOptions"]["baseSystemMessage"] == "Answer in Csound only."
