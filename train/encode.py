"""Training rows -> token ids and labels, from ``PromptFormat.segments(row)``.

The whole row text is tokenized once (as a runtime tokenizes a prompt), and each token takes the
``trained`` flag of the segment its last character lies in: prompts, inputs and FIM
prefix/suffix get label -100, answers and FIM middles keep their ids. Every trained span ends
with the format's stop token (``eos``, or ``fim_end`` for FIM rows), so the last label of every
row is that token's id: it is checked here, not trusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from csound_assistant.data.validate import read_rows
from csound_assistant.errors import ConfigError, DataError
from csound_assistant.prompt_format import ROW_KINDS, PromptFormat, row_kind, to_messages
from csound_assistant.row_identity import row_hash

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    kind: str
    row: int = -1  # index of the row it came from in the list given to encode_split

    def __len__(self):
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass
class EncodedSplit:
    examples: list[Encoded]
    dropped_too_long: int = 0
    kinds: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self.examples)


def single_token_id(tokenizer, text: str, role: str) -> int:
    """The id of ``text``, which must be exactly one existing token (the vocabulary never grows)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(
            f"the prompt format's {role} token {text!r} is {len(ids)} tokens {ids} in this "
            "tokenizer, not one: pick a prompt format that matches the base model"
        )
    return ids[0]


def special_ids(tokenizer, fmt: PromptFormat) -> dict[str, int]:
    ids = {"eos": single_token_id(tokenizer, fmt.eos, "eos"),
           "pad": single_token_id(tokenizer, fmt.pad, "pad")}
    try:
        ids["fim_end"] = single_token_id(tokenizer, fmt.fim_end, "fim_end")
    except ConfigError:
        pass  # only needed when the data has FIM rows; encode_row checks then
    if ids["pad"] in (ids["eos"], ids.get("fim_end")):
        raise ConfigError(f"pad token {fmt.pad!r} equals a stop token: the model would never "
                          "learn to stop; choose another unused token")
    return ids


def encode_row(tokenizer, fmt: PromptFormat, row: dict) -> Encoded:
    segments = fmt.segments(row)
    text = "".join(t for t, _ in segments)
    trained_chars = bytearray(len(text))
    pos = 0
    for seg, trained in segments:
        if trained:
            trained_chars[pos:pos + len(seg)] = b"\x01" * len(seg)
        pos += len(seg)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        at = min(max(end - 1, start), len(text) - 1)
        labels.append(tok if trained_chars[at] else IGNORE)
    return Encoded(list(enc["input_ids"]), labels, row_kind(row))


def check_stop(example: Encoded, stop_ids: dict[str, int], where: str) -> str | None:
    """A problem message when the last trained label is not the row's stop token."""
    trained = [label for label in example.labels if label != IGNORE]
    want = stop_ids.get("fim_end" if example.kind == "fim" else "eos")
    if not trained:
        return f"{where}: nothing to train on (empty answer)"
    if want is None:
        return f"{where}: FIM row, but the format's fim_end is not one token of this tokenizer"
    if trained[-1] != want:
        return f"{where}: answer ends with token {trained[-1]}, not the stop token {want}"
    return None


def read_split(path: Path) -> list[dict]:
    """Rows of a split file, read as ``data validate`` reads rows; every bad line is reported at
    once, as ``path:line: problem`` (unreadable lines first, then rows of no known shape)."""
    if not path.is_file():
        raise DataError(f"split file not found: {path} (run `csound-assistant data split` first)")
    parsed, problems = read_rows(path)
    rows = []
    for n, row in parsed:
        if not isinstance(row, dict) or row_kind(row) is None:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            problems.append(f"line {n}: not one of the row shapes {', '.join(ROW_KINDS)} "
                            f"(keys {keys})")
            continue
        rows.append(row)
    if problems:
        where = [re.sub(r"^line (\d+): ", rf"{path}:\1: ", p) for p in problems]
        raise DataError(f"{len(problems)} bad rows in {path}", where[:50])
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def select_tasks(rows: list[dict], tasks: list[str], where: str) -> list[dict]:
    """The rows whose ``meta.task`` is in ``tasks`` (all rows when ``tasks`` is empty)."""
    if not tasks:
        return rows
    kept = [r for r in rows if (r.get("meta") or {}).get("task") in tasks]
    if not kept:
        found = sorted({str((r.get("meta") or {}).get("task")) for r in rows})
        raise DataError(f"{where}: no row has a meta.task in {tasks}; tasks present: {found}")
    return kept


def weight_tasks(rows: list[dict], weights: dict[str, int]) -> list[dict]:
    """Each row repeated ``weights[task]`` times (1 for tasks not listed, 0 drops them)."""
    if not weights:
        return rows
    return [r for r in rows for _ in range(weights.get((r.get("meta") or {}).get("task"), 1))]


def gets_lookups(row: dict, share: float) -> bool:
    """Whether ``row`` is encoded with the manual lookups when only ``share`` of rows are: a
    fixed draw from the row's text, so every epoch, split and rebuild agrees. Rows without
    lookups teach the model to answer what Ollama, Continue and llama.cpp's own server send,
    which carry none of our extras (issue 26)."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    draw = int(row_hash(row), 16) / 16 ** 16
    return draw < share


def with_reference(row: dict, lookups, share: float = 1.0) -> dict:
    """A row as a runtime with ``lookups`` (``opcode_reference.Lookups``) would have shown it
    to the model: manual synopses under each user turn and before a FIM prefix; for the
    ``1 - share`` of rows that ``gets_lookups`` leaves out, the row as it is."""
    if not gets_lookups(row, share):
        return row
    kind = row_kind(row)
    if kind in ("chat", "instruction") and lookups.chat:
        return {"messages": lookups.row_messages(to_messages(row))}
    if kind == "fim" and lookups.fim:
        return {**row, "prefix": lookups.fim_prefix(row["prefix"], row["suffix"])}
    return row


def encode_split(tokenizer, fmt: PromptFormat, rows: list[dict], max_length: int,
                 stop_ids: dict[str, int], name: str, lookups=None,
                 lookup_share: float = 1.0) -> EncodedSplit:
    out = EncodedSplit([])
    problems = []
    for i, row in enumerate(rows, 1):
        shown = with_reference(row, lookups, lookup_share) if lookups else row
        example = encode_row(tokenizer, fmt, shown)
        example.kind, example.row = row_kind(row), i - 1
        if problem := check_stop(example, stop_ids, f"{name} row {i}"):
            problems.append(problem)
            continue
        if len(example) > max_length:
            out.dropped_too_long += 1
            continue
        out.examples.append(example)
        out.kinds[example.kind] = out.kinds.get(example.kind, 0) + 1
    if problems:
        raise DataError(f"{len(problems)} rows of the {name} split cannot teach stopping",
                        problems[:50])
    if not out.examples:
        raise DataError(f"every row of the {name} split is longer than max_length={max_length} "
                        "tokens; raise max_length")
    return out
