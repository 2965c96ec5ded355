"""Convert stage on the real embedded SmolLM2-135M (slow): export with a tiny LoRA adapter, then
load the Q4_K_M in llama-cpp-python, render its embedded chat template, chat until it stops,
and check that base GGUF + GGUF LoRA generates what the merged GGUF generates."""

from __future__ import annotations

import pytest

from convert_helpers import make_adapter
from csound_assistant.convert.export import export
from csound_assistant.convert.gguf_convert import convert
from csound_assistant.prompt_format import get_format

pytestmark = pytest.mark.slow
FMT = get_format("chatml")
CONVERSATION = [
    {"role": "system", "content": "You write Csound."},
    {"role": "user", "content": "What does the oscili opcode do?"},
    {"role": "assistant", "content": "It is an interpolating oscillator."},
    {"role": "user", "content": "What is 2 + 2? Answer with one number."},
]


@pytest.fixture(scope="module")
def embedded_export(base_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("embedded-run")
    # A small update: the model keeps SmolLM2's behaviour (it answers and stops) while every
    # logit still moves, so merge and LoRA paths are distinguishable from the base.
    adapter = make_adapter(base_dir, run / "adapter", b_std=0.002)
    record = export(adapter, run / "export", quant_types=("Q4_K_M",), gate=False)
    return run, record


def test_sizes_and_gate_numbers_are_recorded(embedded_export):
    run, record = embedded_export
    files = record["files"]
    f16 = files["csound-assistant.F16.gguf"]["bytes"]
    q4 = files["csound-assistant.Q4_K_M.gguf"]["bytes"]
    assert 250e6 < f16 < 290e6 and 90e6 < q4 < 120e6, (f16, q4)
    assert files["csound-assistant.Q4_K_M.gguf"]["fallback_tensors"] > 0
    result = record["gate"]["results"]["Q4_K_M"]
    assert result["tokens"] >= 4000 and result["kl_mean"] > 0 and result["same_top_token"] > 0.5
    print("\n" + record["gate"]["table"], "\n", record["timings_s"])


def test_q4_k_m_template_renders_the_prompt_format(embedded_export):
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    run, _ = embedded_export
    llm = Llama(str(run / "export" / "csound-assistant.Q4_K_M.gguf"), n_ctx=1024, verbose=False,
                seed=0)
    template = llm.metadata["tokenizer.chat_template"]
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token="")
    for messages in (CONVERSATION, CONVERSATION[1:]):
        rendered = formatter(messages=messages).prompt
        assert rendered == FMT.chat_prompt(messages)
    # It answers in the trained format and stops by itself.
    out = llm.create_chat_completion(CONVERSATION[1:], max_tokens=96, temperature=0.0)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    assert "<|im_start|>" not in choice["message"]["content"]


def test_lora_gguf_path_matches_merged_path(embedded_export, base_dir, tmp_path):
    from llama_cpp import Llama

    run, _ = embedded_export
    base_gguf = convert(base_dir, tmp_path / "base.F16.gguf", prompt_format=FMT,
                        metadata={"name": "base"})
    prompt = FMT.chat_prompt([{"role": "user", "content": "Write a Csound instrument that "
                                                          "plays a 440 Hz sine wave."}])

    def greedy(path, **kw):
        llm = Llama(str(path), n_ctx=512, verbose=False, seed=0, **kw)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        out = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            if token == llm.token_eos():
                break
            out.append(token)
            if len(out) == 24:
                break
        return out

    merged = greedy(run / "export" / "csound-assistant.F16.gguf")
    with_lora = greedy(base_gguf, lora_path=str(run / "export" / "csound-assistant.lora.gguf"))
    assert with_lora == merged and len(merged) > 4
    assert record_effect(run) > 0  # the adapter does move the logits


def record_effect(run):
    import json

    return json.loads((run / "merged" / "record.json").read_text())["logits_check"][
        "max_abs_adapter_effect"]
