"""What real clients send, as they send it, to the real server app on the embedded GGUF
(issue 26, item 4): llama.vscode's cache warming and /infill, Tabby's /completion, Continue's
Ollama and OpenAI providers, and the official ``openai`` and ``ollama`` Python packages.

Request bodies are copied from each client's source (llama.vscode src/llama-server.ts
``createRequestPayload``; Tabby crates/http-api-bindings llama.cpp completion; Continue
core/llm/llms/Ollama.ts and its legacy-completions template path). The embedded model knows no
Csound, so the tests check shapes, counts and stopping rules, never the code it writes.
Continue's requests are covered at length in test_editors_continue.py; here only what the
parity work changed.
"""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from csound_assistant.editors.continue_config import autocomplete_template, render_autocomplete
from csound_assistant.prompt_format import stop_strings
from csound_assistant.prompt_format import get_format

from runtime_helpers import embedded_server

KEY = "compat-key"
MODEL = "csound-assistant"
PREFIX = "<CsInstruments>\n0dbfs = 1\n"  # short: the CPU is shared, each token counts
SUFFIX = "\nendin\n</CsInstruments>\n"
# llama.vscode's ring buffer of recently seen code: {text, time, filename} chunks.
CHUNKS = [{"text": "opcode Gain, a, ak\n  xout ain * kgain\nendop\n",
           "time": 1733580000, "filename": "lib/gain.udo"}]


@pytest.fixture(scope="module")
def server(embedded_gguf):
    with embedded_server(embedded_gguf, api_key=KEY) as url:
        yield url


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def sse(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_llama_vscode_warms_the_cache_then_asks_for_three(http):
    # updateExtraContext: the chunks alone, n_predict 0, no samplers, a 1 ms budget.
    warm = http.post("/infill", json={
        "input_prefix": "", "input_suffix": "", "input_extra": CHUNKS, "prompt": "",
        "n_predict": 0, "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1})
    assert warm.status_code == 200, warm.text
    assert warm.json()["content"] == "" and warm.json()["tokens_predicted"] == 0
    # getFIMCompletion, with the fields newer llama.vscode adds (id_slot, n_cmpl) and a
    # response_fields selection as llama.vim sends.
    r = http.post("/infill", json={
        "id_slot": 0, "input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": CHUNKS,
        "prompt": "instr 1\n  ", "n_predict": 6, "n_cmpl": 3, "top_k": 40, "top_p": 0.99,
        "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
        "n_indent": 2, "t_max_prompt_ms": 500, "t_max_predict_ms": 1,
        "response_fields": ["index", "content", "stop_type", "tokens_predicted",
                            "timings/cache_n", "generation_settings/n_indent"]})
    assert r.status_code == 200, r.text
    answers = r.json()
    assert [a["index"] for a in answers] == [0, 1, 2]
    assert all(set(a) == {"index", "content", "stop_type", "tokens_predicted",
                          "timings/cache_n", "generation_settings/n_indent"} for a in answers)
    # The warm-up's prompt (extra context first, as llama.cpp lays it out) was reused.
    assert answers[0]["timings/cache_n"] >= warm.json()["tokens_evaluated"] - 2
    for a in answers:
        lines = a["content"].split("\n")
        # n_indent 2: no later line starts left of the cursor's indentation.
        assert all(not line.strip() or line.startswith("  ") for line in lines[1:]), a
        # 1 ms: a completion cut by the budget ends at a new line, never mid-line.
        if a["stop_type"] == "limit" and a["tokens_predicted"] < 6:
            assert a["content"].endswith("\n"), a


def test_time_budget_ends_the_line_on_the_real_model(http):
    body = {"prompt": "1\n2\n3\n4\n5\n6\n", "n_predict": 8, "temperature": 0}
    free = http.post("/completion", json=body).json()
    assert free["content"].count("\n") >= 3  # the model counts on, line after line
    timed = http.post("/completion", json={**body, "t_max_predict_ms": 1}).json()
    assert timed["content"] == free["content"][:free["content"].index("\n") + 1]
    assert timed["stop_type"] == "limit" and timed["tokens_predicted"] < free["tokens_predicted"]


def test_tabby_template_prompt_on_completion(http):
    # Tabby's llama.cpp/completion kind fills its prompt_template and streams /completion.
    fmt = get_format("chatml")
    template = f"{fmt.fim_prefix}{{prefix}}{fmt.fim_suffix}{{suffix}}{fmt.fim_middle}"
    events = sse(http.post("/completion", json={
        "seed": 0, "prompt": template.format(prefix=PREFIX, suffix=SUFFIX), "n_predict": 4,
        "temperature": 0.1, "stream": True, "penalty_last_n": 0, "presence_penalty": 0.0}))
    assert all(isinstance(e["content"], str) for e in events)
    assert events[-1]["stop"] is True and not any(e["stop"] for e in events[:-1])
    # The template's markers arrived as FIM tokens: the same prompt /infill builds.
    infill = http.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX,
                                        "n_predict": 1}).json()
    assert events[-1]["tokens_evaluated"] == infill["tokens_evaluated"]


def test_continue_ollama_provider(http):
    show = http.post("/api/show", json={"name": MODEL}).json()
    assert ".Suffix" in show["template"]  # Continue's test before it sends suffix
    stops = [json.loads(line.split(None, 1)[1]) for line in show["parameters"].splitlines()
             if line.startswith("stop ")]
    assert stops == stop_strings(get_format("chatml"))  # every stop word of the Modelfile
    r = http.post("/api/generate", json={
        "model": MODEL, "prompt": PREFIX, "suffix": SUFFIX, "raw": True, "keep_alive": 1800,
        "stream": True, "options": {"temperature": 0.01, "top_p": 0.9, "top_k": 40,
                                    "num_predict": 4, "num_ctx": 1024, "stop": stops}})
    assert r.status_code == 200, r.text
    chunks = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert chunks[-1]["done"] is True and chunks[-1]["eval_count"] <= 4
    assert not any(stop in "".join(c["response"] for c in chunks) for stop in stops)


def test_continue_openai_provider_template_path(http):
    # useLegacyCompletionsEndpoint + promptTemplates.autocomplete: Continue renders the FIM
    # prompt itself and posts it to /v1/completions as plain text.
    prompt = render_autocomplete(autocomplete_template(get_format("chatml")), PREFIX, SUFFIX)
    events = sse(http.post("/v1/completions", json={
        "model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0.01,
        "stop": stop_strings(get_format("chatml")), "stream": True}))
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_package_developer_role_and_suffix(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=[
        {"role": "developer", "content": "Answer with Csound code only."},
        {"role": "user", "content": "A 440 Hz sine."}])
    assert reply.choices[0].finish_reason in ("stop", "length")
    system_only = client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "system", "content": "Answer with Csound code only."},
        {"role": "user", "content": "A 440 Hz sine."}])
    assert system_only.usage.prompt_tokens == reply.usage.prompt_tokens  # the same prompt
    fim = client.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=4,
                                    temperature=0)
    assert isinstance(fim.choices[0].text, str) and fim.usage.completion_tokens <= 4


def test_ollama_package_show_and_fim(server):
    client = ollama.Client(host=server, headers={"Authorization": f"Bearer {KEY}"},
                           timeout=120)
    show = client.show(MODEL)
    assert show.parameters.count("stop") == len(stop_strings(get_format("chatml")))
    out = client.generate(model=MODEL, prompt=PREFIX, suffix=SUFFIX,
                          options={"num_predict": 4, "temperature": 0})
    assert out.done and isinstance(out.response, str) and out.eval_count <= 4
