"""csound_assistant/llamacpp.py: where the llama.cpp build carries AMX code, models load
without llama.cpp's extra buffer types (its AMX path crashes in the first decode)."""

from __future__ import annotations

from csound_assistant.llamacpp import KEEP_AMX, amx_in_build, load


def test_models_load_without_extra_buffers_where_the_build_has_amx(embedded_gguf, monkeypatch):
    monkeypatch.delenv(KEEP_AMX, raising=False)
    llama_cpp = load()
    params = llama_cpp.llama_model_default_params()
    assert params.use_extra_bufts is not amx_in_build(llama_cpp)
    # the guard reaches Llama objects made anywhere, and the model decodes
    llm = llama_cpp.Llama(str(embedded_gguf), n_ctx=256, n_threads=2, verbose=False, seed=0)
    assert llm.model_params.use_extra_bufts is params.use_extra_bufts
    out = llm("instr 1\n", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0
