"""The export's settings, stated once: ``csound-assistant export`` and the pipeline's export
stage (``csound-assistant pipeline``) both default to ``EXPORT_DEFAULTS``.

Q8_0 comes first, and the first type is the one packaged and scored: the fine-tuned model's
distributions are peaky, and greedy answers flip on small logit changes; Q4_K_M played 1-5
points fewer test items than Q8_0 (which matched F16) for every starter and continuation
measured (bench/NOTES.md, "Self-training, continued on the CPU"). For the same reason the gate is
measured and reported, not enforced (Q4_K_M's mean KL is 0.09-0.11 against 0.08 allowed).
Q4_K_M is also written (the smallest, what the `serve`/`eval run` examples name) and IQ4_NL-out4,
the fastest to decode on a CPU (1.5x Q4_K_M's tokens/s on 2 cores; bench/SERVING.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportSettings:
    quant_types: tuple[str, ...] = ("Q8_0", "Q4_K_M", "IQ4_NL-out4")  # the first is packaged
    gate: bool = False  # True: a quantized GGUF past the thresholds stops the export
    gate_tokens: int = 2048  # held-out tokens the gate compares
    imatrix: bool = True
    imatrix_tokens: int = 4096
    lora: bool = True  # also write <name>.lora.gguf


EXPORT_DEFAULTS = ExportSettings()

# What a quant type is for, where the pipeline's summary lists the files.
QUANT_NOTES = {"IQ4_NL-out4": "the fastest to decode on a CPU"}
