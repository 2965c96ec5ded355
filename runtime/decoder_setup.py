"""Which decoder a served model runs with, and why (``serve --decoder``, shown in /health).

``--decoder csound`` needs the manual's opcode table. ``export`` writes it into the GGUF
(``csound_assistant.opcode_table``), so the model brings the opcodes of the manual it was
trained from; a GGUF exported before that uses the installed manual (``csound-doc``); with
neither the server decodes plain and says so once in its log and in /health, instead of failing
to start. ``create_app`` and ``serve``'s CLI load their model through ``load_backend``; a
backend built elsewhere (the eval) is ``settle``d by ``Service``. The lookups' synopses follow
the same order (``opcode_reference.model_synopses``, runtime/prompts.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from csound_assistant.constants import GGUF_OPCODE_TABLE
from csound_assistant.opcode_table import OpcodeTable, model_table

log = logging.getLogger("csound_assistant.serve")


@dataclass(frozen=True)
class DecoderState:
    requested: str  # what --decoder asked for
    active: str  # what runs: plain | csound
    opcode_table: str | None = None  # where the table came from: gguf | manual
    opcodes: int = 0
    note: str = ""  # why not the GGUF's table, or why plain although csound was asked for

    def describe(self) -> dict:
        return asdict(self)


def load_backend(settings):
    """The settings' model in a ``LlamaBackend``, with the decoder ``settings.decoder`` asks
    for where it can have one (``attach``)."""
    from .backend import LlamaBackend

    backend = LlamaBackend(
        settings.model_path, lora_path=settings.lora_path, n_ctx=settings.n_ctx,
        n_threads=settings.n_threads, n_gpu_layers=settings.n_gpu_layers,
        cache_slots=settings.cache_slots, parallel=settings.parallel, decoder="plain")
    attach(backend, settings.decoder)
    return backend


def attach(backend, requested: str) -> DecoderState:
    """Give a backend loaded with ``decoder="plain"`` the decoder ``requested``: csound with
    the GGUF's opcode table, else the manual's, else plain (logged once)."""
    if requested != "csound":
        state = DecoderState(requested, "plain")
    else:
        choice = model_table(backend.metadata)
        if choice.table is None:
            state = DecoderState(requested, "plain", note=choice.note)
            log.warning("decoding plain although --decoder csound was asked for: %s; "
                        "re-export the model to carry its opcode table, or install csound-doc",
                        choice.note)
        else:
            from .decoder import CsoundDecoding

            backend.decoding = CsoundDecoding(backend, choice.table)
            backend.decoder = "csound"
            state = _csound(requested, choice.table, choice.source, choice.note)
    backend.decoder_state = state
    return state


def settle(backend) -> DecoderState:
    """The state of a backend built elsewhere: one ``attach`` set up keeps its state; one
    that built its own csound decoder (from the installed manual) gets the GGUF's table when
    the GGUF has one; a backend without a decoder (plain, or a test's fake) stays plain."""
    state = getattr(backend, "decoder_state", None)
    if state is not None:
        return state
    decoding = getattr(backend, "decoding", None)
    if getattr(backend, "decoder", "plain") != "csound" or decoding is None:
        state = DecoderState(getattr(backend, "decoder", "plain"), "plain")
    else:
        value = backend.metadata.get(GGUF_OPCODE_TABLE)
        try:
            if not value:
                raise ValueError(f"the GGUF has no {GGUF_OPCODE_TABLE} (a re-export writes it)")
            decoding.table = OpcodeTable.from_gguf(value)
            state = _csound("csound", decoding.table, "gguf", "")
        except ValueError as exc:
            state = _csound("csound", decoding.table, "manual",
                            f"{exc}; using the installed manual's")
    backend.decoder_state = state
    return state


def _csound(requested: str, table: OpcodeTable, source: str, note: str) -> DecoderState:
    log.info("csound decoder: %d opcodes from the %s%s", len(table.names),
             "GGUF" if source == "gguf" else "installed manual", f" ({note})" if note else "")
    return DecoderState(requested, "csound", source, len(table.names), note)
