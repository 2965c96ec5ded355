"""Convert stage on the tiny random model: merge, llama.cpp's converters, quantizer, gate, export.

Real peft, real llama.cpp (scripts from the sdist, library through llama-cpp-python); the
slower tests on the embedded SmolLM2 are in test_convert_embedded.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from convert_helpers import TARGETS as TARGET_NAMES, make_adapter
from csound_assistant import constants as C
from csound_assistant.convert import gate as gate_mod
from csound_assistant.convert.export import export, push
from csound_assistant.convert.gguf_convert import convert, convert_lora, read_metadata
from csound_assistant.convert.llama_cpp_tools import ensure, find
from csound_assistant.convert.merge import merge, resolve_adapter
from csound_assistant.convert.quantize import quantize, tensor_types
from csound_assistant.errors import ArtifactError, ExportError, GateFailed
from csound_assistant.prompt_format import get_format

FMT = get_format("chatml")
QUIET = dict(log=lambda *a, **k: None)
TEXT = "<|im_start|>user\nWrite an oscillator.<|im_end|>\n<|im_start|>assistant\ninstr 1\n aSig"


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny-run") / "adapter")


@pytest.fixture(scope="module")
def tiny_merged(tiny_adapter):
    return merge(tiny_adapter, tiny_adapter.parent / "merged", **QUIET)


@pytest.fixture(scope="module")
def tiny_export(tiny_adapter, tiny_merged):
    out = tiny_adapter.parent / "export"
    record = export(tiny_adapter, out, quant_types=("Q8_0", "Q4_K_M"), gate_tokens=512, **QUIET)
    return out, record


def _hf_logits(folder, text=TEXT):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits[0].numpy()


def _cpp_logits(gguf, text=TEXT, **kw):
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=128, logits_all=True, verbose=False, seed=0, **kw)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


# --- llama.cpp tools ---------------------------------------------------------------------------
def test_tools_are_installed_for_the_installed_library():
    import llama_cpp

    tools = find()
    assert tools.version == llama_cpp.__version__
    assert tools.convert_hf.is_file() and tools.convert_lora.is_file()
    assert (tools.root / "gguf-py" / "gguf" / "gguf_writer.py").is_file()
    # ensure() on a complete folder is a no-op: nothing downloaded, same place.
    t = time.perf_counter()
    assert ensure(**QUIET).root == tools.root
    assert time.perf_counter() - t < 5


def _fake_sdist(path: Path, version: str, with_converter=True) -> Path:
    src = path.parent / "src" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    (src / "gguf-py" / "gguf").mkdir(parents=True)
    (src / "gguf-py" / "gguf" / "__init__.py").write_text("")
    (src / "conversion").mkdir()
    (src / "conversion" / "__init__.py").write_text("")
    (src / "ggml").mkdir()
    (src / "ggml" / "big.c").write_text("not wanted")
    if with_converter:
        (src / C.LLAMA_CPP_CONVERT_HF).write_text("print('hf')")
    (src / C.LLAMA_CPP_CONVERT_LORA).write_text("print('lora')")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(path.parent / "src" / f"llama_cpp_python-{version}", f"llama_cpp_python-{version}")
    return path


def test_tools_extract_only_the_converters_from_an_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv(C.ENV_LLAMA_CPP_TOOLS, str(tmp_path / "tools"))
    sdist = _fake_sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz", "9.9.9")
    tools = ensure("9.9.9", sdist=sdist, **QUIET)
    assert tools.root == tmp_path / "tools" / "9.9.9"
    assert tools.convert_hf.read_text() == "print('hf')"
    assert (tools.root / "conversion" / "__init__.py").is_file()
    assert not (tools.root / "ggml").exists()
    assert json.loads((tools.root / "tools.json").read_text())["version"] == "9.9.9"
    assert find("9.9.9").root == tools.root


def test_tools_missing_or_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(C.ENV_LLAMA_CPP_TOOLS, str(tmp_path / "tools"))
    with pytest.raises(ExportError, match="llama_cpp_tools ensure"):
        find("9.9.8")
    bad = _fake_sdist(tmp_path / "llama_cpp_python-9.9.8.tar.gz", "9.9.8", with_converter=False)
    with pytest.raises(ExportError, match="convert_hf_to_gguf.py"):
        ensure("9.9.8", sdist=bad, **QUIET)
    assert not (tmp_path / "tools" / "9.9.8").exists()
    # No index reachable: pip fails, and the error says how to get the sdist another way.
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(ExportError, match="(?s)offline.*--sdist"):
        ensure("9.9.8", **QUIET)


# --- merge ---------------------------------------------------------------------------------------
def test_merge_equals_base_plus_adapter(tiny_model_dir, tiny_adapter, tiny_merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((tiny_merged / "record.json").read_text())
    check = record["logits_check"]
    assert check["max_abs_diff_merged_vs_adapter"] <= check["tolerance"]
    assert check["max_abs_adapter_effect"] > 100 * check["max_abs_diff_merged_vs_adapter"]
    # Independently: the saved merged folder reproduces base+adapter and differs from base.
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(TEXT, return_tensors="pt", add_special_tokens=False).input_ids
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits[0].numpy()
        adapted = PeftModel.from_pretrained(base, tiny_adapter).eval()
        adapted_logits = adapted(input_ids=ids).logits[0].numpy()
    merged_logits = _hf_logits(tiny_merged)
    np.testing.assert_allclose(merged_logits, adapted_logits, atol=1e-4)
    assert np.abs(merged_logits - base_logits).max() > 1e-2
    # The merged tokenizer carries the trained format, with pad != eos.
    merged_tok = AutoTokenizer.from_pretrained(tiny_merged)
    assert merged_tok.chat_template == FMT.jinja_chat_template()
    assert merged_tok.pad_token == FMT.pad and merged_tok.pad_token_id != merged_tok.eos_token_id
    assert not list(tiny_merged.parent.glob(".merged.partial-*"))


def test_merge_refuses_a_quantized_base(tiny_model_dir, tiny_adapter, tmp_path):
    base4 = tmp_path / "base-4bit"
    shutil.copytree(tiny_model_dir, base4)
    config = json.loads((base4 / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4"}
    (base4 / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="quantized \\(bitsandbytes\\).*full-precision"):
        merge(tiny_adapter, tmp_path / "merged", base_dir=base4, **QUIET)
    assert not (tmp_path / "merged").exists()


def test_adapter_problems_are_reported_together(tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ArtifactError) as err:
        resolve_adapter(tmp_path / "adapter")
    message = str(err.value)
    for problem in ("adapter_config.json", "adapter weights", "prompt_format.json", "base model"):
        assert problem in message
    with pytest.raises(ArtifactError, match="not found"):
        resolve_adapter(tmp_path / "missing")


# --- merge of a bf16 base -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_adapter(tiny_model_dir, tmp_path_factory):
    """A bf16 copy of the tiny base and an adapter whose B is large enough that merging in bf16
    moves the logits by more than 3% of the largest (what refused the random 7B's merge)."""
    import torch
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("bf16-run")
    base = run / "base"
    shutil.copytree(tiny_model_dir, base)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    assert json.loads((base / "config.json").read_text())["dtype"] == "bfloat16"
    return make_adapter(base, run / "adapter", b_std=0.5)


def test_merge_of_a_bf16_base_is_checked_in_float32_and_saved_rounded_once(bf16_adapter):
    import torch
    from safetensors.torch import load_file

    merged = merge(bf16_adapter, bf16_adapter.parent / "merged", **QUIET)
    check = json.loads((merged / "record.json").read_text())["logits_check"]
    assert check["compared_in"] == "float32"
    assert check["max_abs_diff_merged_vs_adapter"] <= check["tolerance"]
    # bf16 alone moves the logits by more than the old 3%-of-the-largest tolerance allowed.
    assert check["max_abs_diff_bfloat16_vs_float32"] > 0.03 * check["largest_logit"]
    assert check["weights_read_back"] > 0
    # Weight level, from the files alone: merged W = bf16(W + (alpha/r) B @ A) within bf16's
    # rounding, for every adapted module, and every other weight is the base's, bit for bit.
    base = load_file(bf16_adapter.parent / "base" / "model.safetensors")
    lora = load_file(bf16_adapter / "adapter_model.safetensors")
    config = json.loads((bf16_adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    out = load_file(merged / "model.safetensors")
    adapted = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
               for k in lora if k.endswith(".lora_A.weight")}
    assert len(adapted) == 2 * len(TARGET_NAMES)
    for name, weight in base.items():
        module = name.removesuffix(".weight")
        assert out[name].dtype == torch.bfloat16
        if module not in adapted:
            assert torch.equal(out[name], weight), name
            continue
        a = lora[f"base_model.model.{module}.lora_A.weight"].float()
        b = lora[f"base_model.model.{module}.lora_B.weight"].float()
        expected = weight.float() + scale * (b @ a)
        torch.testing.assert_close(out[name].float(), expected, rtol=2**-8, atol=1e-6, msg=name)
        assert (out[name].float() - weight.float()).abs().max() > 0.1


@pytest.mark.parametrize("fault", ["scale 5% high", "one module left out"])
def test_merge_refuses_a_wrong_merge_of_a_bf16_base(bf16_adapter, tmp_path, monkeypatch, fault):
    """A merge bug the bf16 check's 3% tolerance could hide is refused in float32."""
    from peft.tuners.lora.layer import Linear

    real = Linear.get_delta_weight
    calls = []

    def faulty(self, adapter):
        calls.append(self)
        delta = real(self, adapter)
        if fault == "scale 5% high":
            return 1.05 * delta
        return delta * 0 if len(calls) == 1 else delta

    monkeypatch.setattr(Linear, "get_delta_weight", faulty)
    with pytest.raises(ExportError, match="(?s)in float32.*not folded in.*nothing written"):
        merge(bf16_adapter, tmp_path / "merged", **QUIET)
    assert calls and not (tmp_path / "merged").exists()


# --- convert, LoRA, quantize ---------------------------------------------------------------------
def test_convert_embeds_prompt_format_and_provenance(tiny_export):
    from transformers import AutoTokenizer

    out, record = tiny_export
    meta = read_metadata(out / "csound-assistant.F16.gguf")
    tok = AutoTokenizer.from_pretrained(out.parent / "merged")
    ids = tok.convert_tokens_to_ids
    assert meta[C.GGUF_CHAT_TEMPLATE] == FMT.jinja_chat_template()
    assert meta[C.GGUF_EOS_TOKEN_ID] == ids(FMT.eos)
    assert meta[C.GGUF_EOT_TOKEN_ID] == ids(FMT.fim_end)
    assert meta[C.GGUF_PAD_TOKEN_ID] == ids(FMT.pad) != meta[C.GGUF_EOS_TOKEN_ID]
    assert meta[C.GGUF_FIM_PRE_TOKEN_ID] == ids("<jupyter_start>")
    assert meta[C.GGUF_FIM_SUF_TOKEN_ID] == ids("<jupyter_text>")
    assert meta[C.GGUF_FIM_MID_TOKEN_ID] == ids("<jupyter_code>")
    assert meta[C.GGUF_GENERAL_NAME] == "csound-assistant"
    assert meta[C.GGUF_GENERAL_DATASET] == record["metadata"]["dataset"]
    assert meta[C.GGUF_GENERAL_BASE_MODEL] == record["metadata"]["base_model"]
    assert meta[C.GGUF_GENERAL_LICENSE] == record["metadata"]["license"]
    # The quantized files inherit every key from the F16.
    q = read_metadata(out / "csound-assistant.Q4_K_M.gguf")
    for key in (C.GGUF_CHAT_TEMPLATE, C.GGUF_PAD_TOKEN_ID, C.GGUF_FIM_PRE_TOKEN_ID,
                C.GGUF_GENERAL_DATASET):
        assert q[key] == meta[key]
    # llama.cpp itself treats both the answer end and the middle end as end of generation.
    from llama_cpp import Llama

    llm = Llama(str(out / "csound-assistant.Q8_0.gguf"), n_ctx=64, verbose=False)
    assert llm.token_eos() == ids(FMT.eos)
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_is_eog(vocab, ids(FMT.eos))
    assert llama_cpp.llama_vocab_is_eog(vocab, ids(FMT.fim_end))
    assert not llama_cpp.llama_vocab_is_eog(vocab, ids(FMT.pad))


def test_lora_gguf_on_base_gguf_matches_merged_gguf(tiny_model_dir, tiny_adapter, tiny_export,
                                                    tmp_path):
    out, record = tiny_export
    lora = out / "csound-assistant.lora.gguf"
    meta = read_metadata(lora)
    assert meta[C.GGUF_ADAPTER_TYPE] == "lora"
    assert meta[C.GGUF_GENERAL_BASE_MODEL] == record["metadata"]["base_model"]
    base_gguf = convert(tiny_model_dir, tmp_path / "base.F16.gguf", prompt_format=FMT,
                        metadata={"name": "base"}, **QUIET)
    merged = _cpp_logits(out / "csound-assistant.F16.gguf")
    base = _cpp_logits(base_gguf)
    with_lora = _cpp_logits(base_gguf, lora_path=str(lora))
    effect = np.abs(merged - base).max()
    assert effect > 1e-2
    assert np.abs(with_lora - merged).max() < 0.05 * effect
    assert (with_lora.argmax(-1) == merged.argmax(-1)).mean() >= 0.95


def _types_by_name(gguf_path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(gguf_path)).tensors}


def test_quantize_by_llama_cpp_names(tiny_export, tmp_path):
    out, record = tiny_export
    files = record["files"]
    assert files["csound-assistant.Q8_0.gguf"]["tensors"].get("Q8_0", 0) > 0
    q4 = files["csound-assistant.Q4_K_M.gguf"]
    # 64 columns is no multiple of the 256-wide K-quant block: llama.cpp falls back, and says so.
    assert q4["fallback_tensors"] > 0
    assert q4["bits_per_weight"] < 16
    assert tensor_types(out / "csound-assistant.F16.gguf")["tensors"].get("F16", 0) > 0
    # Q4_0's 32-wide blocks fit 64 columns, so most matrices get it (one falls back, as in
    # llama.cpp for SmolLM2 too)
    q4_0 = quantize(out / "csound-assistant.F16.gguf", tmp_path / "m.Q4_0.gguf", "Q4_0")
    assert q4_0["tensors"].get("Q4_0", 0) > q4_0["fallback_tensors"]
    # IQ4_NL keeps the output matrix at 8 bits; IQ4_NL-out4 (llama-quantize --output-tensor-type
    # iq4_nl) quantizes it to IQ4_NL too and leaves every other tensor as IQ4_NL has it
    for quant in ("IQ4_NL", "IQ4_NL-out4"):
        quantize(out / "csound-assistant.F16.gguf", tmp_path / f"m.{quant}.gguf", quant)
    mix, out4 = (_types_by_name(tmp_path / f"m.{q}.gguf") for q in ("IQ4_NL", "IQ4_NL-out4"))
    output = "output.weight" if "output.weight" in mix else "token_embd.weight"  # tied: one
    assert mix[output] != "IQ4_NL" and out4[output] == "IQ4_NL"
    assert {n: t for n, t in out4.items() if n != output} == \
        {n: t for n, t in mix.items() if n != output}
    with pytest.raises(ExportError, match="Q4_K_M"):
        quantize(out / "csound-assistant.F16.gguf", tmp_path / "x.gguf", "Q4_KM")
    with pytest.raises(ExportError, match="not found"):
        quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()


# --- gate --------------------------------------------------------------------------------------
def test_gate_of_a_model_against_itself_is_zero(tiny_export):
    out, _ = tiny_export
    f16 = out / "csound-assistant.F16.gguf"
    stats = gate_mod.compare(f16, f16, gate_mod.manual_texts("gate")[:20], max_tokens=256,
                             ctx=128, progress=False)
    assert stats["tokens"] == 256 - 2
    assert stats["kl_mean"] < 1e-6 and stats["same_top_token"] == 1.0
    assert stats["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_gate_thresholds_and_table():
    good = {"tokens": 100, "ppl_f16": 10.0, "ppl": 10.2, "ppl_ratio": 1.02, "kl_mean": 0.02,
            "kl_p99": 0.2, "same_top_token": 0.95}
    assert gate_mod.judge("Q4_K_M", good)["passed"]
    bad = gate_mod.judge("Q8_0", good)
    assert not bad["passed"] and any("mean KL" in r for r in bad["reasons"])
    text = gate_mod.table({"Q4_K_M": gate_mod.judge("Q4_K_M", good), "Q8_0": bad})
    assert "| Q4_K_M | 100 |" in text and "FAIL" in text and "Llama-2-7B" in text
    # The manual's halves for the gate and the importance matrix never share an example.
    assert not set(gate_mod.manual_files("gate")) & set(gate_mod.manual_files("imatrix"))
    assert not set(gate_mod.manual_texts("gate")) & set(gate_mod.manual_texts("imatrix"))
    assert len(gate_mod.manual_texts("gate")) > 500


def test_gate_texts_come_from_the_test_split(tmp_path):
    rows = [{"instruction": "Make a sine.", "output": "instr 1\nendin"},
            {"prefix": "instr 1\n", "middle": "a1 oscili 1, 440\n", "suffix": "endin"}]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    texts, source = gate_mod.heldout_texts(tmp_path, FMT, "gate")
    assert source.endswith("test.jsonl") and len(texts) == 2
    assert texts[0].endswith("instr 1\nendin<|im_end|>\n") and "<jupyter_code>" in texts[1]
    (tmp_path / "test.jsonl").write_text('{"instruction": "x", "output": "y"}\nnot json\n')
    with pytest.raises(Exception, match="test.jsonl:2"):
        gate_mod.heldout_texts(tmp_path, FMT, "gate")


# --- the export folder ---------------------------------------------------------------------------
def test_export_folder(tiny_export):
    out, record = tiny_export
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["csound-assistant.F16.gguf", "csound-assistant.Q8_0.gguf",
                            "csound-assistant.Q4_K_M.gguf", "csound-assistant.lora.gguf",
                            "SHA256SUMS", "README.md", "record.json"])
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    from csound_assistant.artifacts import sha256_file

    assert {f: sha256_file(out / f) for f in sums} == sums and len(sums) == 4
    results = record["gate"]["results"]
    assert set(results) == {"Q8_0", "Q4_K_M"}
    for r in results.values():
        assert r["passed"] and r["tokens"] > 400 and 0 <= r["kl_mean"] < r["threshold"]["kl"]
    assert record["imatrix"]["used"] and record["imatrix"]["tensors"] > 0
    assert set(record["timings_s"]) >= {"merge", "convert", "lora", "imatrix", "gate"}
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "gguf" and front["license"] == record["metadata"]["license"]
    assert "| Q8_0 |" in card and "csound-assistant.Q4_K_M.gguf" in card
    # Reused merge: the same adapter is not merged twice.
    assert record["merged_reused"] is True


def test_export_refuses_to_overwrite_and_push_offline(tiny_adapter, tiny_export, monkeypatch):
    out, _ = tiny_export
    with pytest.raises(ArtifactError, match="--force"):
        export(tiny_adapter, out, **QUIET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="offline"):
        push(out, "someone/csound-assistant", **QUIET)


def test_gate_failure_publishes_nothing_unless_no_gate(tiny_adapter, tiny_export, monkeypatch,
                                                       tmp_path):
    impossible = gate_mod.Threshold(-1.0, 1.1, 0.0)
    monkeypatch.setitem(gate_mod.THRESHOLDS, "Q8_0", impossible)
    out = tmp_path / "export"
    with pytest.raises(GateFailed, match="Q8_0") as err:
        export(tiny_adapter, out, quant_types=("Q8_0",), lora=False, imatrix=False, gate=True,
               merged_dir=tiny_adapter.parent / "merged", gate_tokens=256, **QUIET)
    assert not err.value.results["Q8_0"]["passed"]
    assert not out.exists() and not list(tmp_path.iterdir())
    # --no-gate: the same numbers are measured and recorded, nothing is raised.
    done, _ = tiny_export
    results = gate_mod.gate(done / "csound-assistant.F16.gguf",
                            {"Q8_0": done / "csound-assistant.Q8_0.gguf"},
                            gate_mod.manual_texts("gate"), enforce=False, max_tokens=256,
                            progress=False)
    assert results["Q8_0"]["passed"] is False and results["Q8_0"]["reasons"]


KILL_SCRIPT = """
import sys
from csound_assistant.convert.export import export
export(sys.argv[1], sys.argv[2], quant_types=("Q8_0",), merged_dir=sys.argv[3], imatrix=False,
       gate_tokens=256)
"""


def test_kill_during_conversion_leaves_no_final_named_file(tiny_adapter, tiny_export, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tiny_adapter), str(out),
         str(tiny_adapter.parent / "merged")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # Wait until llama.cpp's converter is running (its output reaches us through our pipe).
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("convert: convert_hf_to_gguf.py"):
            break
    assert seen and seen[-1].startswith("convert: "), "export ended early:\n" + "".join(seen)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    time.sleep(0.5)
    assert not out.exists()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(any(part.startswith(".") for part in p.relative_to(tmp_path).parts)
               for p in leftovers), leftovers


def test_cli_help_lists_steps_and_rejects_bad_quant(tmp_path):
    from click.testing import CliRunner

    from csound_assistant.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    for step in ("merge", "convert", "lora", "quantize", "gate", "push", "tools"):
        assert step in result.output
    result = runner.invoke(main, ["export", "--quant", "Q4_KM", "--work-dir", str(tmp_path)])
    assert result.exit_code == 2 and "Q4_K_M" in result.output
    result = runner.invoke(main, ["export", "--work-dir", str(tmp_path), "--run", "none"])
    assert result.exit_code == 1 and "adapter folder not found" in result.output
