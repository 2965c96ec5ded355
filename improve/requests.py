"""What a self-training round asks: train-split requests, and natural describe-the-sound
requests made from the manual's opcode pages. Never a validation or test request: a prompt
whose text is a held-out row's is refused, and natural requests name only opcodes that no
held-out row teaches (the split groups rows by opcode, so those are the held-out opcodes)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from csound_assistant.eval.runner import token_budget
from csound_assistant.eval.tasks import TEST_SECONDS, Item, load_test_split
from csound_assistant.row_identity import content_key

HELD_OUT = ("validation", "test")
# Describe-the-sound phrasings: {what} is the manual's one-line summary ("random impulses",
# "something that generates granular synthesis textures"), {family} the last part of its
# category ("random (noise) generators"). None names the opcode: the model must choose it.
PHRASINGS = (
    "I'd like to hear {what}. Can you write it as a Csound file?",
    "Make me a short Csound piece where you can hear {what}.",
    "In Csound, write an instrument built on {what}, and a score that plays it for a few "
    "seconds.",
    "I'm new to Csound. Could you show a complete CSD with {what}? It's for {family}.",
    "How would I get {family} in Csound? I want {what}, with a score to hear it.",
)


def prompt_key(item: Item) -> str:
    """A request's identity, its answer aside: the same text as a held-out row's prompt is
    that row's request, whatever the row's answer."""
    if item.is_fim:
        return content_key({"prefix": item.prefix, "middle": "", "suffix": item.suffix})
    return content_key({"messages": [*item.messages, {"role": "assistant", "content": ""}]})


def held_out(splits_dir: Path) -> tuple[set[str], set[str]]:
    """The prompt keys and the opcodes (``meta.opcode``) of the validation and test rows."""
    keys, opcodes = set(), set()
    for name in HELD_OUT:
        path = splits_dir / f"{name}.jsonl"
        if not path.is_file():
            continue
        keys |= {prompt_key(i) for i in load_test_split(path)}
        for line in path.read_text().splitlines():
            if line.strip():
                opcode = (json.loads(line).get("meta") or {}).get("opcode")
                if opcode:
                    opcodes.add(opcode)
    return keys, opcodes


def refuse_held_out(items: list[Item], keys: set[str]) -> tuple[list[Item], list[str]]:
    """``items`` without those whose request is a validation or test row's (their ids)."""
    kept, refused = [], []
    for item in items:
        (refused if prompt_key(item) in keys else kept).append(item)
    return kept, [i.id for i in refused]


def train_requests(splits_dir: Path, kinds: list[str], max_new_tokens: int,
                   max_budget: int) -> list[tuple[Item, int]]:
    """Train-split rows of ``kinds`` as (item ``train-LINE``, token budget)."""
    out = []
    for item in load_test_split(splits_dir / "train.jsonl"):
        if item.kind.removeprefix("fim:") not in kinds:
            continue
        item.id, item.source = "train-" + item.id.partition("-")[2], "train"
        budget = token_budget(item, max_new_tokens)
        out.append((item, min(budget, max_budget) if max_budget else budget))
    return out


def natural_requests(pages: dict, opcodes: set[str], n: int, seed: int,
                     budget: int) -> list[tuple[Item, int]]:
    """``n`` describe-the-sound requests, each from one of ``opcodes``' manual pages (an
    ``OpcodePage``: ``summary``, ``category``), which the answer must use to be kept."""
    usable = sorted(o for o in opcodes if o in pages and pages[o].summary)
    rng = random.Random(seed)
    out = []
    for opcode in rng.sample(usable, min(n, len(usable))):
        page = pages[opcode]
        text = rng.choice(PHRASINGS).format(what=_what(page.summary),
                                            family=page.category.split(":")[-1].lower())
        ident = "natural-" + hashlib.sha1(text.encode()).hexdigest()[:10]
        out.append((Item(ident, "natural", "natural",
                         messages=[{"role": "user", "content": text}],
                         required_opcodes=[opcode], seconds=TEST_SECONDS), budget))
    return out


def _what(summary: str) -> str:
    """A summary as the object of "hear": "Generates ..." -> "something that generates ..."."""
    first, _, rest = summary.partition(" ")
    text = summary[0].lower() + summary[1:]
    if first.endswith("s") and not first.endswith("ss") and first[0].isupper() and rest:
        return "something that " + text
    return text


def train_opcodes(splits_dir: Path) -> set[str]:
    """The opcodes (``meta.opcode``) the train split teaches."""
    out = set()
    for line in (splits_dir / "train.jsonl").read_text().splitlines():
        if line.strip():
            opcode = (json.loads(line).get("meta") or {}).get("opcode")
            if opcode:
                out.add(opcode)
    return out


def manual_pages() -> dict:
    from csound_assistant.manual import DEFAULT_MANUAL_DIR, opcode_categories, opcode_pages

    return opcode_pages(DEFAULT_MANUAL_DIR, opcode_categories(DEFAULT_MANUAL_DIR))
