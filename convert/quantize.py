"""``csound-assistant export quantize``: llama.cpp's quantizer through llama-cpp-python.

``llama_model_quantize`` is the library function behind ``llama-quantize``. The installed
llama.cpp takes an importance matrix as a list of (tensor name, per-column mean of squared
activations) in its quantize parameters; ``importance_matrix`` computes exactly that statistic
(what ``llama-imatrix`` collects: sum of x² / count for the input of every matrix multiply) on
Csound text with the merged model in torch, named with gguf-py's tensor-name map.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from csound_assistant.constants import OUTPUT_TENSOR_TYPES, QUANT_TYPES
from csound_assistant.errors import ExportError

from .gguf_convert import staged_file


def check_quant_types(quant_types) -> list[str]:
    wrong = [q for q in quant_types if q not in QUANT_TYPES]
    if wrong:
        raise ExportError(f"unknown quantization type(s) {', '.join(wrong)}; choose from "
                          f"{', '.join(QUANT_TYPES)} (spelled as llama.cpp spells them)")
    return list(dict.fromkeys(quant_types))


def imatrix_supported() -> tuple[bool, str]:
    """Whether the installed llama.cpp's quantizer accepts importance-matrix data."""
    import llama_cpp

    fields = dict(llama_cpp.llama_model_quantize_params._fields_)
    if "imatrix" in fields and hasattr(llama_cpp, "llama_model_imatrix_data"):
        return True, "llama_model_quantize_params.imatrix (llama_model_imatrix_data list)"
    return False, (f"llama-cpp-python {llama_cpp.__version__} does not expose importance-matrix "
                   "input to llama_model_quantize; quantizing without one")


def quantize(src_gguf: str | Path, dst_gguf: str | Path, quant_type: str = "Q4_K_M", *,
             imatrix: dict | None = None, nthread: int = 0, verbose: bool = False) -> dict:
    """Quantize ``src_gguf`` (F16/F32) to ``quant_type``; return the tensor-type census."""
    import llama_cpp

    (quant_type,) = check_quant_types([quant_type])
    src, dst = Path(src_gguf), Path(dst_gguf)
    if not src.is_file():
        raise ExportError(f"GGUF to quantize not found: {src}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant_type])
    params.nthread = nthread
    if quant_type in OUTPUT_TENSOR_TYPES:
        output = OUTPUT_TENSOR_TYPES[quant_type]  # llama-quantize --output-tensor-type
        params.output_tensor_type = getattr(llama_cpp, f"GGML_TYPE_{output}")
    keep_alive = None
    if imatrix:
        supported, why = imatrix_supported()
        if not supported:
            raise ExportError(why)
        keep_alive = _imatrix_array(imatrix)
        params.imatrix = ctypes.cast(keep_alive[0],
                                     ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with staged_file(dst) as tmp:
        with _CapturedStderr(verbose) as captured:
            status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(),
                                                    ctypes.byref(params))
        if status != 0:
            tail = "\n".join(captured.text.strip().splitlines()[-5:])
            raise ExportError(f"llama.cpp could not quantize {src} to {quant_type} "
                              f"(status {status}):\n{tail}")
    del keep_alive
    census = tensor_types(dst)
    fallback = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", captured.text)
    census["fallback_tensors"] = int(fallback.group(1)) if fallback else 0
    return census


class _CapturedStderr:
    """llama.cpp's quantizer reports per-tensor fallbacks through its log (Python's sys.stderr
    via llama-cpp-python's callback) and printf (file descriptor 2): keep both off the terminal
    (unless ``show``) and readable afterwards as ``text``."""

    def __init__(self, show: bool):
        self.show, self.text = show, ""

    def __enter__(self):
        from llama_cpp import _logger

        self._level = _logger.logger.level
        _logger.set_verbose(True)
        if not self.show:
            sys.stderr.flush()
            self._py, sys.stderr = sys.stderr, io.StringIO()
            self._buf = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._buf.fileno(), 2)
        return self

    def __exit__(self, *exc):
        from llama_cpp import _logger

        _logger.logger.setLevel(self._level)
        if not self.show:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._buf.seek(0)
            self.text = self._buf.read().decode(errors="replace") + sys.stderr.getvalue()
            self._buf.close()
            sys.stderr = self._py
        return False


def tensor_types(gguf_path: str | Path) -> dict:
    """How many tensors (and bytes) of each ggml type a GGUF holds, and bits per weight."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path, "r")
    counts, weights, nbytes = Counter(), 0, 0
    for t in reader.tensors:
        counts[t.tensor_type.name] += 1
        weights += int(t.n_elements)
        nbytes += int(t.n_bytes)
    return {"tensors": dict(counts.most_common()), "n_tensors": len(reader.tensors),
            "bits_per_weight": round(8 * nbytes / max(weights, 1), 3)}


def _imatrix_array(imatrix: dict):
    import llama_cpp
    import numpy as np

    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    buffers = []
    for i, (name, values) in enumerate(imatrix.items()):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ExportError(f"importance matrix for {name} has non-finite values")
        buffers.append((name.encode(), arr))
        entries[i].name = buffers[-1][0]
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = arr.size
    entries[len(imatrix)].name = None  # the list ends at a NULL name
    return entries, buffers


def importance_matrix(merged_dir: str | Path, texts: list[str], *, gguf_arch: str = "llama",
                      max_tokens: int = 4096, ctx: int = 512, log=print) -> dict:
    """Per-tensor mean squared input activations of every linear layer, keyed by GGUF name."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_arch), None)
    if arch is None:
        raise ExportError(f"gguf-py has no architecture {gguf_arch!r} for the importance matrix")
    name_map = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    tied = getattr(model.config, "tie_word_embeddings", False)
    sums: dict[str, torch.Tensor] = {}
    counts: Counter = Counter()

    def hook(gguf_name):
        def fn(module, inputs, output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(0)
            counts[gguf_name] += x.shape[0]
        return fn

    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name == "lm_head":
            gguf_name = "token_embd.weight" if tied else "output.weight"
        else:
            gguf_name = name_map.get_name(name + ".weight", try_suffixes=(".weight",))
        if gguf_name:
            handles.append(module.register_forward_hook(hook(gguf_name)))
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False).input_ids[:max_tokens]
    if len(ids) < ctx // 4:
        raise ExportError(f"only {len(ids)} tokens of text for the importance matrix")
    with torch.no_grad():
        for start in range(0, len(ids), ctx):
            model(input_ids=torch.tensor([ids[start:start + ctx]]))
    for h in handles:
        h.remove()
    log(f"imatrix: {len(sums)} tensors from {len(ids)} tokens")
    return {k: (sums[k] / counts[k]).numpy() for k in sums}


def copy_gguf(src: Path, dst: Path) -> None:
    """F16 asked for by name: the converter's output already is it."""
    with staged_file(dst) as tmp:
        shutil.copyfile(src, tmp)
