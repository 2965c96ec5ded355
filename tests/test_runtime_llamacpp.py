"""llama.cpp server parity of /infill and /completion with a fake model (issue 26, item 3):
cache warming, t_max_predict_ms, n_cmpl, samplers, response_fields, extra context, and the
OpenAI developer role and /api/show stop words that came with it."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

from runtime_helpers import BYTE0, FakeBackend

WARM = {"input_prefix": "", "input_suffix": "", "prompt": "", "n_predict": 0, "samplers": [],
        "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1,
        "input_extra": [{"text": "opcode Foo, a, a\nxout ain\nendop\n", "time": 1,
                         "filename": "udo.inc"}]}


def make_client(backend=None, **settings):
    settings.setdefault("prompt_format", "chatml")
    return TestClient(create_app(Settings(**settings), backend or FakeBackend("  oscili")))


def b(text: str) -> list[int]:
    return [BYTE0 + x for x in text.encode()]


def test_cache_warming_reads_the_prompt_and_answers_empty():
    backend = FakeBackend("aout oscili 0.1, 440\n")
    with make_client(backend) as c:
        r = c.post("/infill", json=WARM)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["content"] == "" and body["tokens_predicted"] == 0
        assert body["stop"] is True and body["stop_type"] == "limit"
        assert body["generation_settings"]["n_predict"] == 0
        warmed = backend.prompts[-1]
        # The real request after it shares the extra context: it is served from the cache.
        r = c.post("/infill", json={**WARM, "input_prefix": "instr 1\n", "n_predict": 8,
                                    "samplers": ["top_k", "top_p", "infill"]})
        assert r.json()["content"] == "aout osc"
        assert r.json()["timings"]["cache_n"] == len(warmed) - 2  # all but FIM_SUF, FIM_MID
        r = c.post("/completion", json={"prompt": "instr 1\n", "n_predict": 0})
        assert r.json()["content"] == "" and r.json()["tokens_evaluated"] == len("instr 1\n")


def test_time_budget_stops_at_the_next_new_line():
    # Each token takes 20 ms: a 1 ms budget is spent long before the first new line.
    backend = FakeBackend("aout oscili 1, 440\nouts aout, aout\nendin\n", delay=0.02)
    with make_client(backend) as c:
        body = {"input_prefix": "instr 1\n", "input_suffix": "", "n_predict": 64}
        timed = c.post("/infill", json={**body, "t_max_predict_ms": 1}).json()
        assert timed["content"] == "aout oscili 1, 440\n"
        assert timed["stop_type"] == "limit" and timed["has_new_line"] is True
        assert c.post("/infill", json=body).json()["content"] == backend.reply
        events = c.post("/completion", json={"prompt": "instr 1\n", "n_predict": 64,
                                             "t_max_predict_ms": 1, "stream": True}).text
        assert '"content": "outs' not in events and '"stop_type": "limit"' in events


def test_n_cmpl_answers_an_array():
    backend = FakeBackend("  oscili")
    with make_client(backend) as c:
        r = c.post("/infill", json={"input_prefix": "a", "input_suffix": "b", "n_predict": 4,
                                    "n_cmpl": 3, "seed": 5,
                                    "response_fields": ["index", "content"]})
        assert r.json() == [{"index": i, "content": "  os"} for i in range(3)]
        assert len(backend.prompts) == 3 and backend.overlaps == 0
        r = c.post("/completion", json={"prompt": "x", "n_predict": 2, "n": 2})
        assert [x["index"] for x in r.json()] == [0, 1]
        single = c.post("/completion", json={"prompt": "x", "n_predict": 2, "n_cmpl": 1})
        assert isinstance(single.json(), dict)


@pytest.mark.parametrize("body, message", [
    ({"n_cmpl": 9}, "'n_cmpl' must be between 1 and 8"),
    ({"n_cmpl": 0}, "'n_cmpl' must be between 1 and 8"),
    ({"n_cmpl": 2, "stream": True}, "set 'stream' to false"),
    ({"samplers": [1, 2]}, "'samplers' must be a list of sampler names"),
    ({"t_max_predict_ms": "soon"}, "'t_max_predict_ms' must be a number"),
    ({"id_slot": -2}, "'id_slot' must be between -1"),
])
def test_parity_fields_are_validated(body, message):
    with make_client() as c:
        r = c.post("/infill", json={"input_prefix": "a", **body})
        assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_samplers_select_the_chain_and_unknown_names_are_ignored():
    with make_client() as c:
        def settings(samplers):
            r = c.post("/infill", json={"input_prefix": "a", "n_predict": 2, "top_k": 40,
                                        "top_p": 0.5, "min_p": 0.1, "temperature": 0.3,
                                        "samplers": samplers, "id_slot": 0})
            assert r.status_code == 200, r.text
            return r.json()["generation_settings"]
        def chain(samplers):
            s = settings(samplers)
            return s["top_k"], s["top_p"], s["min_p"], s["temperature"]
        assert chain(["top_k", "top_p", "min_p", "temperature"]) == (40, 0.5, 0.1, 0.3)
        assert chain("kpmt") == (40, 0.5, 0.1, 0.3)
        # llama.vscode's chain: no min_p, no temperature sampler (llama.cpp then draws at 1).
        assert chain(["top_k", "top_p", "infill", "no_such_sampler"]) == (40, 0.5, 0.0, 1.0)
        assert chain([]) == (0, 1.0, 0.0, 1.0)


def test_response_fields_follow_llama_cpp():
    with make_client() as c:
        r = c.post("/infill", json={"input_prefix": "a", "n_predict": 2, "response_fields": [
            "content", "generation_settings/seed", "timings/no_such", "no/such/path"]})
        # A path that exists is kept even when its value is null; others are left out.
        assert r.json() == {"content": "  ", "generation_settings/seed": None}


def test_extra_context_uses_the_models_repository_tokens():
    backend = FakeBackend("x")
    backend.metadata.update({"tokenizer.ggml.fim_pre_token_id": "11",
                             "tokenizer.ggml.fim_suf_token_id": "12",
                             "tokenizer.ggml.fim_mid_token_id": "13",
                             "tokenizer.ggml.fim_rep_token_id": "16",
                             "tokenizer.ggml.fim_sep_token_id": "1"})
    with make_client(backend, prompt_format=None) as c:
        c.post("/infill", json={"input_prefix": "p", "input_suffix": "s",
                                "input_extra": [{"filename": "a.udo", "text": "T"}]})
        assert backend.prompts[-1] == [16, *b("myproject\n"), 1, *b("a.udo\n"), *b("T"), 1,
                                       *b("filename\n"), 11, *b("p"), 12, *b("s"), 13]
        # Too little room: the end of the extra context is kept, the cursor's code whole.
        c.post("/infill", json={"input_prefix": "p" * 100, "input_suffix": "",
                                "n_predict": 200, "input_extra": [
                                    {"filename": "big.orc", "text": "y" * 300}]})
        prompt = backend.prompts[-1]
        assert len(prompt) == 512 - 200 and prompt[-103:] == [11, *b("p" * 100), 12, 13]
        assert prompt[:-103] == [*b("y" * (len(prompt) - 103 - 10)), 1, *b("filename\n")]


def test_developer_role_is_a_system_message_and_show_lists_every_stop_word():
    backend = FakeBackend("ok")
    with make_client(backend) as c:
        r = c.post("/v1/chat/completions", json={"messages": [
            {"role": "developer", "content": "Answer in Csound."},
            {"role": "user", "content": "A sine."}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert "system\nAnswer in Csound." in backend.detokenize(backend.prompts[-1])
        show = c.post("/api/show", json={"model": "csound-assistant"}).json()
        assert show["parameters"].splitlines() == [
            'stop "<|im_end|>"', 'stop "<|endoftext|>"', 'stop "<|im_start|>"']
        assert show["parameters"] in show["modelfile"].replace("PARAMETER ", "")
