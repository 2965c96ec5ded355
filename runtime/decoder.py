"""The Csound-aware decoder: ``serve --decoder csound`` and ``eval run --decoder csound``.

At each step where the answer is orchestra or score code (inside a fenced block or between
``<CsoundSynthesizer>`` tags of a chat answer, or anywhere in a FIM middle), the logits of the
tokens that would break a rule of ``csound_assistant/csound_lexer.py`` (an invented opcode in
opcode position, an opcode whose synopsis takes other outputs, a statement ending with too few
arguments or taking too many, a variable read before it is assigned, an argument of a rate its
slot does not take, an open parenthesis at a statement's end, ``endin`` outside an instrument,
a word in a score field) are set to -inf before llama.cpp's sampler chain runs. Prose is
never touched. Only the highest-logit tokens are judged (``TOP_TOKENS``), in order, until as
many valid ones are found as the sampler can use (1 for greedy, ``top_k`` otherwise) or the
rest would fall to ``min_p``; every token not found valid is then masked, so the chain samples
among valid tokens only.

Each token's text is computed once per model (``TokenTexts``); a request's ``Constraint``
follows the text as it is sampled. A GBNF grammar was the other route; see runtime/README.md
("Csound-aware decoding") for why this one.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np

from csound_assistant.csound_document import Document
from csound_assistant.opcode_args import ArgForms
from csound_assistant.opcode_table import OpcodeTable

from .settings import DECODERS

log = logging.getLogger("csound_assistant.serve")

TOP_TOKENS = 256  # tokens judged per constrained step before the rest of the vocabulary
PENALTY_KEEP = 16  # valid tokens kept when penalties may demote the best ones
SCAN_CHUNK = 4096  # when too few of those are valid: the next tokens by logit, this many a time
GGUF_FIM_KEYS = tuple(f"tokenizer.ggml.fim_{k}_token_id" for k in ("pre", "suf", "mid"))


class TokenTexts:
    """Every token's text, decoded once (special tokens: empty; broken UTF-8: U+FFFD, which
    no identifier contains)."""

    def __init__(self, backend):
        self.texts = [backend.token_bytes(t).decode("utf-8", errors="replace")
                      for t in range(backend.n_vocab)]

    def __getitem__(self, token: int) -> str:
        return self.texts[token]

    def join(self, tokens) -> str:
        return "".join(self.texts[t] for t in tokens)


class CsoundDecoding:
    """What one model's requests share: the opcode table, token texts and FIM token ids."""

    name = "csound"

    def __init__(self, backend, table: OpcodeTable | None = None):
        self.table = table or OpcodeTable.from_manual()
        # argument slot rates from the model's own synopses, else the manual's; None: unjudged
        self.args = ArgForms.from_gguf(getattr(backend, "metadata", None) or {})
        self.texts = TokenTexts(backend)
        self.fim = _fim_ids(backend)

    def start(self, prompt: list[int], sampling, budget: int | None = None) -> Constraint:
        """A request's constraint: a FIM middle continues the prompt's prefix; anything else
        is an answer that starts in prose, which winds down near ``budget`` tokens (the
        engine's limit for the job: ``max_tokens`` or the context's end)."""
        keep = 1 if sampling.temperature <= 0 else min(sampling.top_k or TOP_TOKENS, TOP_TOKENS)
        # min_p drops what is min_p times less likely than the best token left: valid tokens
        # below that need not be looked for. Penalties run after the mask and reorder tokens:
        # then a few more are kept and none is left out for min_p.
        floor = math.log(sampling.min_p) if keep > 1 and sampling.min_p > 0 else -math.inf
        if sampling.repeat_penalty != 1.0 or sampling.frequency_penalty \
                or sampling.presence_penalty:
            keep, floor = max(keep, PENALTY_KEEP), -math.inf
        if prompt and prompt[-1] in self.fim["mid"]:
            pre = _last_index(prompt, self.fim["pre"])
            suf = _last_index(prompt, self.fim["suf"])
            if pre is not None and suf is not None and pre < suf:
                prefix = self.texts.join(prompt[pre + 1:suf])
                suffix = self.texts.join(prompt[suf + 1:-1])
                # the middle's end joins the suffix's first line
                return Constraint(self, Document.for_fim(self.table, prefix, self.args), keep,
                                  floor,
                                  end=suffix.partition("\n")[0] + "\n")
        return Constraint(self, Document.for_chat(self.table, self.texts.join(prompt),
                                                  self.args), keep, floor,
                          budget=sampling.max_tokens if budget is None else budget)


class Constraint:
    """One request's decoder state: ``mask`` before a token is sampled, ``accept`` after."""

    def __init__(self, decoding: CsoundDecoding, doc: Document, keep: int,
                 floor: float = -math.inf, end: str = "\n", budget: int | None = None):
        self.decoding, self.doc, self.keep, self.floor = decoding, doc, keep, floor
        self.budget = budget  # tokens this answer may take (a chat answer winds down near it)
        # A token without text (an end of generation, a turn marker) ends the statement: it
        # is judged as this text, so an answer cannot stop inside ``asig caba``.
        self.end = end
        self.fed = 0  # tokens accepted (for ``follow``)
        self.masked_steps = 0  # steps where a token the sampler could take was refused
        self.stuck_steps = 0  # steps with no valid token (left unmasked: the rules missed
        # a dead end earlier; ``Document.goes_on`` exists to keep this at 0)

    def accept(self, token: int) -> None:
        self.doc.feed(self.decoding.texts[token])
        self.fed += 1

    def follow(self, generated) -> None:
        """Accept the tokens of ``generated`` (all sampled so far) not yet seen."""
        for token in generated[self.fed:]:
            self.accept(int(token))

    def mask(self, logits: np.ndarray) -> bool:
        """Set the logits of tokens that break the rules to -inf, in place; True if a token
        the sampler could have picked was refused."""
        doc = self.doc
        if not doc.judging or not doc.line_ok():
            return False  # prose, or a line already broken (by a FIM prefix): judge nothing
        texts = self.decoding.texts
        if self.keep == 1 and self._allows(texts[int(np.argmax(logits))]):
            return False  # greedy takes the best token, and it is valid
        n = logits.shape[0]
        top = np.argpartition(logits, n - TOP_TOKENS)[n - TOP_TOKENS:] \
            if n > TOP_TOKENS else np.arange(n)
        top = top[np.argsort(-logits[top], kind="stable")]
        valid: list[int] = []
        refused = self._collect(top, logits, valid)
        if len(valid) < self.keep and not self._enough(valid, logits, logits[top[-1]]):
            rest = np.setdiff1d(np.arange(n), top, assume_unique=True)
            rest = rest[np.argsort(-logits[rest], kind="stable")]
            for start in range(0, len(rest), SCAN_CHUNK):  # rare: all favourites broke a rule
                self._collect(rest[start:start + SCAN_CHUNK], logits, valid)
                if len(valid) >= self.keep or self._enough(valid, logits, -math.inf):
                    break
            refused = True
        if not valid:
            log.debug("csound decoder: no valid token after %r; this step is left unmasked",
                      self.doc.line[-60:])
            self.stuck_steps += 1
            return False
        keep = np.zeros(n, dtype=bool)
        keep[valid] = True
        logits[~keep] = -np.inf
        self.masked_steps += refused
        return refused

    def _collect(self, order, logits: np.ndarray, valid: list[int]) -> bool:
        """Add valid tokens of ``order`` (best first) to ``valid`` until there are ``keep`` or
        the rest fall below min_p of the best valid one; True if one was refused on the way."""
        refused = False
        for token in order.tolist():
            if valid and (len(valid) >= self.keep
                          or logits[token] < logits[valid[0]] + self.floor):
                break
            if self._allows(self.decoding.texts[token]):
                valid.append(token)
            else:
                refused = True
        return refused

    def _enough(self, valid: list[int], logits: np.ndarray, below: float) -> bool:
        """Whether every token not yet seen (all at most ``below``) would fall to min_p."""
        return bool(valid) and below < logits[valid[0]] + self.floor

    def _allows(self, text: str) -> bool:
        if self.budget is not None and text \
                and not self.doc.winds_down(text, self.budget - self.fed - 1):
            return False
        return self.doc.allows(text or self.end) and (not text or self.doc.goes_on(text))


def _last_index(tokens: list[int], ids: set[int]):
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] in ids:
            return i
    return None


def _fim_ids(backend) -> dict[str, set[int]]:
    """FIM marker ids this model may be prompted with: the GGUF's and, where they are one
    token of its vocabulary, every project prompt format's."""
    from csound_assistant.prompt_format import FORMATS

    ids = {"pre": set(), "suf": set(), "mid": set()}
    for key, gguf_key in zip(ids, GGUF_FIM_KEYS):
        value = backend.metadata.get(gguf_key)
        if value is not None and re.fullmatch(r"\d+", str(value)):
            ids[key].add(int(value))
    for fmt in FORMATS.values():
        spelled = [backend.tokenize(t.strip(), special=True)
                   for t in (fmt.fim_prefix, fmt.fim_suffix, fmt.fim_middle)]
        if all(len(s) == 1 for s in spelled):
            for key, s in zip(ids, spelled):
                ids[key].add(s[0])
    return ids


def make_decoding(name: str, backend):
    """The decoder ``name`` for ``backend``: None for plain decoding."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; one of: {', '.join(DECODERS)}")
    return CsoundDecoding(backend) if name == "csound" else None
