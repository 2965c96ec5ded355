"""The X-Csound-* headers: every answer says how it was made, streamed or not, chat or FIM.

- ``X-Csound-Decoder``: plain | csound, the decoder that made the answer (runtime/decoder.py;
  plain also where csound was asked for but no opcode table was found: /health says why);
- ``X-Csound-Verified`` and ``X-Csound-Verdict`` (``--verify N``): which candidate was returned
  (first, candidate-K, repair, unverified) and what the sandbox said of it;
- ``X-Csound-Repairs`` (``--repair N``, answers that went through the repair loop): rounds made.

A streamed answer's headers leave before its text, so they carry what is known then: the
decoder, and for a verified answer (checked before it is streamed) all of the above.
"""

from __future__ import annotations

DECODER = "X-Csound-Decoder"
# Readable by allowed cross-origin pages (CORS expose_headers).
EXPOSED = ["Retry-After", "X-Csound-Repairs", "X-Csound-Verified", "X-Csound-Verdict", DECODER]


def csound_headers(svc, answer=None) -> dict:
    """The headers of an answer made through ``Service.complete_checked`` or
    ``complete_fim_checked`` (``answer``), or of a plain generation (None)."""
    if answer is not None:
        return svc.answer_headers(answer)
    return {DECODER: getattr(svc.backend, "decoder", "plain")}
