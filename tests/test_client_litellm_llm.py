"""The ``litellm`` Python client and the ``llm`` CLI against the real server on the embedded GGUF
(issue 26, item 4), configured as their users would: litellm's ``openai/`` and
``text-completion-openai/`` providers with ``api_base``; llm's ``extra-openai-models.yaml``
(a chat model and a ``completion: true`` model) with the key stored by ``llm keys set``.

Each answer is checked against the same request sent to the server directly: equal prompt token
counts mean the client added nothing to the prompt and dropped nothing (a system message, the
``suffix``). The embedded model knows no Csound; what it writes is not judged.
What the clients cannot do, the tests say: llm's completion models send no ``suffix`` (no FIM)
and report no token usage when streaming (its Completion class never records it).
"""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result


from runtime_helpers import embedded_server

# litellm fetches its model price list from the network on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402

# litellm's own code on pydantic 2.14: deprecation notes that are litellm's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm.*",
                                        "ignore:.*ReadOnly:UserWarning")

KEY = "python-clients-key"
MODEL = "csound-assistant"
SYSTEM = "Answer with Csound code only."
QUESTION = "A 440 Hz sine."
PREFIX = "<CsInstruments>\n0dbfs = 1\n"
SUFFIX = "\nendin\n</CsInstruments>\n"


@pytest.fixture(scope="module")
def server(embedded_gguf):
    with embedded_server(embedded_gguf, api_key=KEY) as url:
        yield url


def direct(server: str, path: str, body: dict) -> dict:
    """The same request without the client: the reference for what the client sent."""
    r = httpx.post(f"{server}{path}", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def chat_messages(system: str | None = SYSTEM) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": QUESTION}]


def test_litellm_chat(server):
    reply = litellm.completion(model=f"openai/{MODEL}", api_base=f"{server}/v1", api_key=KEY,
                               messages=chat_messages(), max_tokens=4, temperature=0)
    choice = reply.choices[0]
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 4
    reference = direct(server, "/v1/chat/completions", {
        "model": MODEL, "messages": chat_messages(), "max_tokens": 1, "temperature": 0})
    assert reply.usage.prompt_tokens == reference["usage"]["prompt_tokens"]


def test_litellm_streaming_chat(server):
    chunks = list(litellm.completion(
        model=f"openai/{MODEL}", api_base=f"{server}/v1", api_key=KEY, messages=chat_messages(),
        max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text and finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    usage = chunks[-1].usage
    assert 0 < usage.completion_tokens <= 4
    reference = direct(server, "/v1/chat/completions", {
        "model": MODEL, "messages": chat_messages(), "max_tokens": 1, "temperature": 0})
    assert usage.prompt_tokens == reference["usage"]["prompt_tokens"]


def test_litellm_text_completion_passes_the_suffix(server):
    reply = litellm.text_completion(
        model=f"text-completion-openai/{MODEL}", api_base=f"{server}/v1", api_key=KEY,
        prompt=PREFIX, suffix=SUFFIX, max_tokens=4, temperature=0)
    assert isinstance(reply.choices[0].text, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 4
    body = {"model": MODEL, "prompt": PREFIX, "max_tokens": 1, "temperature": 0}
    fim = direct(server, "/v1/completions", {**body, "suffix": SUFFIX})
    plain = direct(server, "/v1/completions", body)
    # The suffix reached the server: the prompt is the FIM prompt, not the prefix alone.
    assert reply.usage.prompt_tokens == fim["usage"]["prompt_tokens"]
    assert fim["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


@pytest.fixture
def llm_cli(server, tmp_path, monkeypatch):
    """The `llm` CLI (its click command, in this process: each new process spends seconds on
    imports) with a user folder holding our server's models and key."""
    from llm.cli import cli

    home = tmp_path / "llm"
    home.mkdir()
    entry = {"model_name": MODEL, "api_base": f"{server}/v1", "api_key_name": MODEL}
    (home / "extra-openai-models.yaml").write_text(yaml.safe_dump([
        {"model_id": MODEL, **entry},
        {"model_id": f"{MODEL}-completion", **entry, "completion": True},
    ]))
    monkeypatch.setenv("LLM_USER_PATH", str(home))

    def llm(*args, stdin: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=stdin)

    assert llm("keys", "set", MODEL, "--value", KEY).exit_code == 0
    return llm


def last_logs(llm, n: int) -> list[dict]:
    result = llm("logs", "-n", str(n), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # oldest first


def test_llm_prompt(llm_cli, server):
    result = llm_cli("-m", MODEL, "-s", SYSTEM, "-o", "max_tokens", "4", "-o", "temperature", "0",
                   "-u", QUESTION)
    assert result.exit_code == 0, result.output
    used = re.search(r"Token usage: (\d+) input, (\d+) output", result.stderr)
    assert used, result.stderr
    reference = direct(server, "/v1/chat/completions", {
        "model": MODEL, "messages": chat_messages(), "max_tokens": 1, "temperature": 0})
    assert int(used[1]) == reference["usage"]["prompt_tokens"] and 0 < int(used[2]) <= 4
    (log,) = last_logs(llm_cli, 1)
    assert log["response"] and result.stdout.strip() == log["response"].strip()
    assert log["response_json"]["finish_reason"] in ("stop", "length")
    # A wrong key: the server's 401 reaches the user.
    wrong = llm_cli("-m", MODEL, "--key", "wrong", "-o", "max_tokens", "1", QUESTION)
    assert wrong.exit_code == 1 and "401" in wrong.stderr


def test_llm_chat_keeps_the_conversation(llm_cli):
    result = llm_cli("chat", "-m", MODEL, "-s", SYSTEM, "-o", "max_tokens", "4", "-o",
                   "temperature", "0", stdin=f"{QUESTION}\nNow at 220 Hz.\nquit\n")
    assert result.exit_code == 0, result.output
    first, second = last_logs(llm_cli, 2)
    assert first["conversation_id"] == second["conversation_id"]
    assert first["response"] and second["response"]
    # The second turn carried the first question and answer.
    assert second["input_tokens"] > first["input_tokens"] + 8


def test_llm_completion_model(llm_cli, server):
    result = llm_cli("-m", f"{MODEL}-completion", "-o", "max_tokens", "4", "-o", "temperature",
                   "0", PREFIX)
    assert result.exit_code == 0, result.output
    (log,) = last_logs(llm_cli, 1)
    assert log["response"] and result.stdout.rstrip("\n") == log["response"].rstrip("\n")
    usage = log["response_json"]["usage"]  # llm keeps the server's usage, records none itself
    assert 0 < usage["completion_tokens"] <= 4 and log["output_tokens"] is None
    reference = direct(server, "/v1/completions", {"model": MODEL, "prompt": PREFIX,
                                                   "max_tokens": 1, "temperature": 0})
    assert usage["prompt_tokens"] == reference["usage"]["prompt_tokens"]
