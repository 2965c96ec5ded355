"""Decoding defaults, stated once: what the server uses for a request that names none, and what
the eval decodes with, so that what is measured is what users get.

They are llama.cpp's own (``llama-server``: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
no repeat penalty), so a client moving between llama-server and ``csound-assistant serve``
gets the same text.
"""

from __future__ import annotations

TEMPERATURE = 0.8  # a request without one; also the eval's when it samples several answers
GREEDY = 0.0  # the eval's single answer: reproducible
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
REPEAT_PENALTY = 1.0  # off: Csound repeats itself legitimately (one line per note)


def eval_temperature(samples: int, temperature: float | None = None) -> float:
    """The eval's temperature: ``temperature`` when given, else greedy for one answer an item
    and sampled for pass@k."""
    if temperature is not None:
        return temperature
    return GREEDY if samples == 1 else TEMPERATURE
