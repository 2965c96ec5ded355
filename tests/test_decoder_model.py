"""The Csound-aware decoder (runtime/decoder.py) driving real logits: the embedded SmolLM2 GGUF's
tokenizer and model through the real ``LlamaBackend``, the one-at-a-time engine and the batched
one, and the real app."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from csound_assistant.errors import ConfigError
from csound_assistant.opcode_table import OpcodeTable
from csound_assistant.runtime.backend import LlamaBackend, Sampling
from csound_assistant.runtime.prompts import PromptBuilder
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

PREFIX = "instr 1\n  kenv madsr 0.1, 0.2, 0.5, 0.3\n  asig "
SUFFIX = "\n  outs asig, asig\nendin\n"


@pytest.fixture(scope="module")
def backend(embedded_gguf):
    b = LlamaBackend(embedded_gguf, n_ctx=1024, n_threads=1, cache_slots=0, decoder="csound")
    yield b
    b.close()


@pytest.fixture(scope="module")
def prompts(backend):
    return PromptBuilder(backend, "chatml")


def boosted(backend, text: str, value: float = 30.0) -> np.ndarray:
    """Logits that make the first token of ``text`` by far the model's favourite."""
    logits = np.zeros(backend.n_vocab, dtype=np.float32)
    logits[backend.tokenize(text, special=False)[0]] = value
    return logits


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_an_invented_opcode_cannot_be_sampled_in_opcode_position(backend, prompts, temperature):
    tokens, _ = prompts.fim_tokens(PREFIX, SUFFIX, budget=900)
    constraint = backend.constraint(tokens, Sampling(temperature=temperature, top_k=40))
    invented = backend.tokenize("emuls", special=False)[0]
    real = backend.tokenize("oscili", special=False)[0]
    logits = boosted(backend, "emuls")
    logits[real] = 20.0  # the model's second choice begins a real opcode
    assert constraint.mask(logits)
    assert logits[invented] == -np.inf
    survivors = np.flatnonzero(np.isfinite(logits))
    assert 1 <= len(survivors) <= 40
    texts = constraint.decoding.texts
    for token in survivors:  # every token left can still begin a real a-rate opcode
        assert constraint.doc.allows(texts[token] or constraint.end), texts[token]
    assert int(np.argmax(logits)) == real


def test_prose_is_never_masked(backend, prompts):
    tokens = prompts.chat_tokens([{"role": "user", "content": "What is an emuls?"}])
    constraint = backend.constraint(tokens, Sampling(temperature=0))
    logits = boosted(backend, "emuls")
    before = logits.copy()
    assert not constraint.mask(logits)
    assert np.array_equal(logits, before)
    for token in backend.tokenize("An emuls is not a Csound opcode.", special=False):
        constraint.accept(token)
    assert not constraint.mask(logits)
    assert np.array_equal(logits, before)


def test_a_chat_answers_code_block_is_masked_after_its_fence(backend, prompts):
    tokens = prompts.chat_tokens([{"role": "user", "content": "A sine, please."}])
    constraint = backend.constraint(tokens, Sampling(temperature=0))
    for token in backend.tokenize("Here:\n```csound\ninstr 1\n  asig ", special=False):
        constraint.accept(token)
    logits = boosted(backend, "emuls")
    assert constraint.mask(logits)
    assert logits[backend.tokenize("emuls", special=False)[0]] == -np.inf


def test_the_fim_prefix_decides_which_rules_apply_at_the_cursor(backend, prompts):
    """Orchestra: an invented opcode is refused; score: a score statement is fine and words
    are not; options: nothing is judged."""
    head = "<CsoundSynthesizer>\n<CsOptions>\n"
    in_score = "<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\nendin\n</CsInstruments>\n" \
               "<CsScore>\n"
    for prefix, text, judged in ((PREFIX, "emuls", True), (in_score, "i", False),
                                 (in_score, "emuls", True), (head, "emuls", False)):
        tokens, _ = prompts.fim_tokens(prefix, "e\n</CsScore>\n", budget=900)
        constraint = backend.constraint(tokens, Sampling(temperature=0))
        assert constraint.mask(boosted(backend, text)) is judged, (prefix, text)


@pytest.mark.parametrize("parallel", [1, 2])
def test_greedy_decoding_after_an_output_writes_a_real_opcode(embedded_gguf, parallel):
    """The whole path: the app, the engine (one at a time, or the batched one masking the
    context's logits in place) and the real model's greedy choice."""
    b = LlamaBackend(embedded_gguf, n_ctx=1024, n_threads=1, cache_slots=0, parallel=parallel,
                     decoder="csound")
    settings = Settings(prompt_format="chatml", decoder="csound", parallel=parallel,
                        n_ctx=1024)
    table = OpcodeTable.from_manual()
    try:
        with TestClient(create_app(settings, b)) as client:
            r = client.post("/v1/completions", json={
                "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 12, "temperature": 0})
            assert r.status_code == 200, r.text
            middle = r.json()["choices"][0]["text"]
            word = middle.split()[0].split(",")[0] if middle.split() else ""
            assert word in table and table.takes(word, ("a",)), middle
            chat = client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            assert chat.headers["x-csound-decoder"] == "csound"
            metrics = client.get("/metrics").text
    finally:
        b.close()
    assert "csound_assistant_decoder_csound_total 2" in metrics
    # every step had a valid token: no dead end left the model to write unjudged
    assert "csound_assistant_decoder_stuck_steps_total 0" in metrics


def test_serve_decodes_csound_unless_told_plain_and_refuses_unknown_decoders():
    assert Settings().decoder == "csound"
    assert Settings.from_env({"CSOUND_ASSISTANT_DECODER": "plain"}).decoder == "plain"
    with pytest.raises(ConfigError, match="decoder must be one of plain, csound"):
        Settings(decoder="grammar")


CSD_SCORE = "<CsoundSynthesizer>\n<CsInstruments>\ninstr Bass\nendin\n</CsInstruments>\n<CsScore>\n"


@pytest.mark.parametrize("prefix, bad, good", [
    # a variable never assigned (describe-thunder)
    ("instr 1\n  asig vco2 0.5, 220\n  aout = asig *", " thunder", " as"),
    # an a-rate slot: no number while no a-rate variable exists (describe-fm-bell)
    ("instr 1\n  aout tone ", "0", "("),
    # a k variable cannot end tone's a-rate first argument
    ("instr 1\n  kenv linseg 0, 1, 1\n  asig vco2 0.5, 220\n  aout tone kenv", ",", "*"),
    # a call glued to the opcode after outputs (describe-tubular-bell)
    ("instr 1\n  a1 oscili", "(", " "),
    # a statement cannot end with a parenthesis open (fix-unbalanced-paren)
    ("instr 1\n  kcps = cpspch(p4", "\n", ")"),
    # a function as an opcode takes its output's rate (describe-drum-pattern)
    ("instr 1\n  aout floor ", "0", "("),
    # no endin without an instrument
    ("instr 1\nendin\nendin", "\n", "g"),  # only another word (a label) may go on
    # a named instrument is quoted in the score (fix-unquoted-instr-name)
    (CSD_SCORE + "i", " Bass", ' "'),
    # a broken or non-ASCII token in code (describe-kalimba)
    ("instr 1\n  aout tone", "\u00e9", " "),
    # an opcode's call has no space before ``(`` (explain-delayr-delayw)
    ("instr 1\n  a1 = 1 + oscili", " (", "("),
    # two operands with no operator between (fix-freeverb-outputs)
    ("instr 1\n  a1 vco2 0.3, 220\n  outs a1", " a", ","),
    # a token that leaves no way on: after ``,\\`` only a comment may come, and the line
    # goes on after a dot with nothing valid (generated set)
    ("instr 1\n  kx = 1\n  a2 tone kx", ",\\", " *"),
    ("instr 1\n  kx = 1\n  ky = kx", " .", " *"),
    ("instr 1\n  kx = 1\n  ky = kx", " (", " *"),
    ("instr 1\n  kx = 1\n  ky = kx", " ?", " >"),
])
def test_a_token_that_breaks_a_rule_cannot_be_sampled(backend, prompts, prefix, bad, good):
    """The real tokenizer: the rule's offending token is masked and a valid one stays."""
    bad_id, good_id = (backend.tokenize(t, special=False) for t in (bad, good))
    assert len(bad_id) == 1 and len(good_id) == 1, (bad_id, good_id)
    tokens, _ = prompts.fim_tokens(prefix, "\n", budget=900)
    constraint = backend.constraint(tokens, Sampling(temperature=0))
    logits = np.zeros(backend.n_vocab, dtype=np.float32)
    logits[bad_id[0]], logits[good_id[0]] = 30.0, 20.0
    assert constraint.mask(logits), (prefix, bad)
    assert logits[bad_id[0]] == -np.inf
    assert int(np.argmax(logits)) == good_id[0]


def test_a_csd_answer_near_its_budget_closes_instead_of_starting_another_block(backend, prompts):
    """With 40 tokens left inside an instrument the model may only end it; with 90 left
    between instruments it may only close the orchestra: the file gets its score and closing
    tags instead of stopping mid-instrument at max_tokens."""
    tokens = prompts.chat_tokens([{"role": "user", "content": "A sine, please."}])
    start = ("Here:\n```csound\n<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\n"
             "instr 1\n  asig oscili 0.5, 440\n")
    for budget, after, bad, good in [(40, "", "outs", "endin"),
                                     (90, "  outs asig, asig\nendin\n", "instr", "</")]:
        constraint = backend.constraint(tokens, Sampling(temperature=0, max_tokens=1000))
        constraint.budget = None
        for token in backend.tokenize(start + after, special=False):
            constraint.accept(token)
        constraint.budget = constraint.fed + budget
        logits = boosted(backend, bad)
        logits[backend.tokenize(good, special=False)[0]] = 20.0
        assert constraint.mask(logits)
        assert int(np.argmax(logits)) == backend.tokenize(good, special=False)[0]
        constraint.budget = constraint.fed + 1000  # far from the end: nothing winds down
        logits = boosted(backend, bad)
        assert not constraint.mask(logits)
