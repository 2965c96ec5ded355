"""The manual's synopsis of each opcode a request names, added to the request before the model
reads it: one module for training (train/encode.py), eval (eval/models.py) and the server
(runtime/prompts.py), so the three build the same text.

A small model cannot learn the argument lists of 1,500 opcodes, and the test split holds opcodes
that training never shows (split.py groups rows by opcode). Most wrong answers of the GPU-trained
model call a real opcode with invented arguments (bench/NOTES.md, "Manual lookups"). The
installed manual (`csound-doc`, read by ``manual.py`` as the data build reads it) knows them: a
model trained with ``opcode_reference: true`` sees, under the last user message,

    Csound manual:
    ares dust2 kamp, kdensity

for up to MAX_OPCODES opcodes named in the user's words or quoted in an error message (code
blocks are not searched: a fix request's code names every opcode it uses). The flag travels in
the prompt format record and as the GGUF key ``csound_assistant.opcode_reference``; Ollama
cannot run a lookup, so a model served there gets plain prompts (runtime/README.md).

Fill-in-the-middle requests have no prose: with ``fim_reference`` (a separate flag, GGUF key
``csound_assistant.fim_reference``) the synopses of up to MAX_FIM_OPCODES opcodes on the
cursor's line go in front of the prefix as Csound comments (``; Csound manual:``, then
``; ares dust2 kamp, kdensity``): most wrong FIM middles of the GPU-trained model are that
opcode's argument list.

The synopses travel with the model: ``export`` writes them into the GGUF (``to_gguf``, key
``csound_assistant.synopses``) and the server reads them from there (``model_synopses``), so a
machine without csound-doc serves the lookups the model was trained with. Where neither the GGUF
nor the installed manual has them, the server answers without lookups and says why in /health.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from csound_assistant import gguf_blob
from csound_assistant.constants import (
    ENV_OPCODE_REFERENCE,
    GGUF_FIM_REFERENCE,
    GGUF_OPCODE_REFERENCE,
    GGUF_SYNOPSES,
)
from csound_assistant.manual import DEFAULT_MANUAL_DIR, known_opcodes, opcode_pages

HEADER = "Csound manual:"
MAX_OPCODES = 4
MAX_LINES = 2  # synopsis variants per opcode (dust2 has an a-rate and a k-rate one)
MAX_CHARS = 120
MAX_FIM_OPCODES = 2
# Opcode names that in a request's prose are nearly always English; used only when backticked
# or called an opcode ("the `line` opcode", "what does the max opcode do").
COMMON_WORDS = frozenset(
    "in out and or not if then else line tone pitch control array scale seed active event cent "
    "button print random table sum product max min round int release follow mute clear select "
    "loop".split())

# Code blocks are skipped; blocks of error text (```text) are read: Csound quotes the opcode.
_BLOCK = re.compile(r"```([\w+-]*)[^\n]*\n.*?(?:```|\Z)", re.S)
_READ_BLOCKS = {"text", "console", "output", "error"}
_WORD = re.compile(r"""[`'"]?[A-Za-z_][A-Za-z0-9_]*[`'"]?(?:\s+opcodes?\b)?""")


class OpcodeReference:
    def __init__(self, synopses: dict[str, list[str]]):
        self.synopses = synopses

    @classmethod
    def from_manual(cls, manual_dir: str | Path | None = None) -> OpcodeReference:
        """Every opcode page's synopsis lines (about half a second for the whole manual;
        cached). A machine without the manual (a GPU box that only trains) reads the file
        ``save`` wrote, named by the environment variable ENV_OPCODE_REFERENCE."""
        saved = os.environ.get(ENV_OPCODE_REFERENCE)
        if saved and manual_dir is None:
            return _read_saved(Path(saved))
        return _load(str(Path(manual_dir or DEFAULT_MANUAL_DIR).resolve()))

    # --- in a GGUF: one string, gzipped compact JSON in base64 ---------------------------------
    def to_gguf(self) -> str:
        """``{"version": 1, "synopses": {opcode: [line, ...]}}`` gzipped and base64-encoded
        (about 36 kB for the whole manual; unpacking takes a few milliseconds)."""
        return gguf_blob.pack(SYNOPSES_VERSION, "synopses", self.synopses, sort_keys=True)

    @classmethod
    def from_gguf(cls, value: str) -> OpcodeReference:
        """The synopses ``to_gguf`` wrote; ValueError when ``value`` is not them."""
        try:
            synopses = gguf_blob.unpack(value, SYNOPSES_VERSION, "synopses")
        except ValueError as exc:
            raise ValueError(f"not synopses written by OpcodeReference.to_gguf: {exc}") from None
        if not _is_synopses(synopses) or not synopses:
            raise ValueError("not synopses written by OpcodeReference.to_gguf: expected "
                             "{opcode: [synopsis, ...]} with at least one opcode")
        return cls(synopses)

    def save(self, path: str | Path) -> None:
        from csound_assistant.artifacts import write_json

        write_json(path, self.synopses)

    def describe(self) -> dict:
        """What the records say: how many opcodes, and a hash of the text the model reads."""
        blob = json.dumps(self.synopses, sort_keys=True).encode()
        return {"opcodes": len(self.synopses), "sha256": hashlib.sha256(blob).hexdigest()[:16],
                "max_opcodes": MAX_OPCODES, "max_lines": MAX_LINES}

    def named(self, messages: list[dict]) -> list[str]:
        """Opcodes the user's words name, the latest message first; backticked names and
        "X opcode" first within a message."""
        out: list[str] = []
        for m in reversed([m for m in messages if m.get("role") == "user"]):
            prose = _BLOCK.sub(lambda b: b.group(0) if b.group(1) in _READ_BLOCKS else " ",
                               m.get("content") or "")
            marked, plain = [], []
            for token in _WORD.findall(prose):
                name = token.split()[0].strip("`'\"")
                if name not in self.synopses and token[0] in "'\"":  # a misspelling in an error
                    name = next(iter(difflib.get_close_matches(name, self.synopses, 1, 0.8)), "")
                if name not in self.synopses:
                    continue
                if token[0] in "`'\"" or token.endswith(("opcode", "opcodes")):
                    marked.append(name)
                elif name not in COMMON_WORDS:
                    plain.append(name)
            out += marked + plain
        return list(dict.fromkeys(out))[:MAX_OPCODES]

    def block(self, names: list[str]) -> str:
        lines = [s[:MAX_CHARS] for n in names for s in self.synopses[n][:MAX_LINES]]
        return f"{HEADER}\n" + "\n".join(lines) if lines else ""

    def augment(self, messages: list[dict]) -> list[dict]:
        """``messages`` with the synopses of the opcodes they name under the last user message
        (a new list; unchanged when nothing is named or the last message is not the user's)."""
        if not messages or messages[-1].get("role") != "user":
            return messages
        block = self.block(self.named(messages))
        if not block:
            return messages
        last = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{block}"}
        return [*messages[:-1], last]

    def fim_named(self, prefix: str, suffix: str) -> list[str]:
        """Opcodes on the cursor's line (the prefix's last line and the suffix's first), in
        the order they appear; in code every opcode name is an opcode, English or not."""
        line = prefix.rpartition("\n")[2] + " " + suffix.partition("\n")[0]
        names = [w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line) if w in self.synopses]
        return list(dict.fromkeys(names))[:MAX_FIM_OPCODES]

    def fim_comments(self, prefix: str, suffix: str) -> str:
        """The synopses of the cursor line's opcodes as Csound comment lines ('' if none)."""
        block = self.block(self.fim_named(prefix, suffix))
        return "".join(f"; {line}\n" for line in block.splitlines())

    def augment_row_messages(self, messages: list[dict]) -> list[dict]:
        """A training conversation: each user turn is augmented as the server would have
        augmented it when that turn was the last one."""
        out: list[dict] = []
        for m in messages:
            out.append(m)
            if m.get("role") == "user":
                out = self.augment(out)
        return out


SYNOPSES_VERSION = 1


@dataclass(frozen=True)
class SynopsesChoice:
    """The synopses one model's runtime uses: ``source`` "gguf" (the model's own), "manual"
    (the installed one, or the file ENV_OPCODE_REFERENCE names) or None (neither); ``note``
    says why not the GGUF's."""

    reference: OpcodeReference | None
    source: str | None
    note: str = ""

    @property
    def synopses(self) -> dict[str, list[str]]:
        """{opcode: [synopsis, ...]}, empty where there are none."""
        return self.reference.synopses if self.reference else {}


def from_model(gguf_metadata: dict, key: str, read, manual) -> tuple:
    """(value, source, note) for what a model's runtime needs from the manual: ``read`` of the
    GGUF's own (``key``, written by ``export``), else ``manual()`` (the installed one), else
    None with the reason; never raises on a missing or unreadable value."""
    from csound_assistant.errors import ConfigError, DataError

    value = gguf_metadata.get(key)
    if value:
        try:
            return read(value), "gguf", ""
        except ValueError as exc:
            note = f"the GGUF's {key} cannot be read ({exc}); "
    else:
        note = f"the GGUF has no {key} (a re-export writes it); "
    try:
        return manual(), "manual", note + "using the installed manual's"
    except (DataError, ConfigError) as exc:
        return None, None, note + f"no manual either: {exc}"


def model_synopses(gguf_metadata: dict) -> SynopsesChoice:
    """The synopses for a GGUF (its metadata as llama-cpp-python or ``read_metadata`` gives
    it): the GGUF's own (key GGUF_SYNOPSES, written by ``export``), else the installed
    manual's, else none with the reason; never raises."""
    return SynopsesChoice(*from_model(gguf_metadata, GGUF_SYNOPSES, OpcodeReference.from_gguf,
                                      OpcodeReference.from_manual))


@dataclass(frozen=True)
class Lookups:
    """The lookups one model was trained with, applied as training applied them: training,
    eval, the server and the sweep each hold one of these instead of testing the flags."""

    chat: bool = False  # synopses under the last user message (``opcode_reference``)
    fim: bool = False  # synopses as comments before a FIM prefix (``fim_reference``)
    reference: OpcodeReference | None = None  # loaded only when one of them is on
    source: str | None = None  # where the synopses came from: gguf | manual
    note: str = ""  # why not the GGUF's synopses, or why none although the model asks for them

    @classmethod
    def load(cls, chat: bool, fim: bool) -> Lookups:
        """The installed manual's (training, sweeps); DataError or ConfigError without one."""
        if not (chat or fim):
            return cls(chat, fim)
        return cls(chat, fim, OpcodeReference.from_manual(), "manual")

    @classmethod
    def of_gguf(cls, gguf_metadata: dict, enabled: bool = True) -> Lookups:
        """What a GGUF asks for, with the synopses ``model_synopses`` finds for it; where it
        finds none, no lookups and a ``note`` saying why (never raises). ``enabled=False``
        (``serve --no-opcode-reference``): none."""
        chat = enabled and trained_with_reference(gguf_metadata)
        fim = enabled and trained_with_reference(gguf_metadata, GGUF_FIM_REFERENCE)
        if not (chat or fim):
            return cls()
        choice = model_synopses(gguf_metadata)
        if choice.reference is None:
            return cls(note="no lookups although the model was trained with them: "
                            + choice.note)
        return cls(chat, fim, choice.reference, choice.source, choice.note)

    @property
    def names(self) -> list[str]:
        return [name for name, on in (("chat", self.chat), ("fim", self.fim)) if on]

    def describe(self) -> dict | None:
        """The synopses in use and where they came from; None where the model asks for none."""
        if self.reference:
            return {**self.reference.describe(), "source": self.source, "note": self.note}
        return {"opcodes": 0, "source": None, "note": self.note} if self.note else None

    def messages(self, messages: list[dict]) -> list[dict]:
        """A chat request as the model reads it."""
        return self.reference.augment(messages) if self.chat else messages

    def row_messages(self, messages: list[dict]) -> list[dict]:
        """A training conversation, every user turn as the server would have shown it."""
        return self.reference.augment_row_messages(messages) if self.chat else messages

    def fim_comments(self, prefix: str, suffix: str) -> str:
        """What goes before a FIM prefix ('' when FIM lookups are off or name nothing)."""
        return self.reference.fim_comments(prefix, suffix) if self.fim else ""

    def fim_prefix(self, prefix: str, suffix: str) -> str:
        """``prefix`` as the model reads it (the server cuts comments and code apart instead,
        runtime/prompts.py, to keep the comments when a long prefix must be shortened)."""
        return self.fim_comments(prefix, suffix) + prefix


def _read_saved(path: Path) -> OpcodeReference:
    from csound_assistant.errors import ConfigError

    try:
        synopses = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{ENV_OPCODE_REFERENCE}={path}: cannot read the saved synopses "
                          f"({exc}); write it with OpcodeReference.from_manual().save(FILE) "
                          "on a machine with csound-doc, or unset the variable") from None
    if not _is_synopses(synopses):
        raise ConfigError(f"{ENV_OPCODE_REFERENCE}={path}: expected {{opcode: [synopsis, ...]}} "
                          "as OpcodeReference.save writes it")
    return OpcodeReference(synopses)


def _is_synopses(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values())


def trained_with_reference(gguf_metadata: dict, key: str = GGUF_OPCODE_REFERENCE) -> bool:
    """Whether a GGUF (llama-cpp-python's ``metadata``: strings) asks for manual synopses in
    chat requests (or, with ``key=GGUF_FIM_REFERENCE``, in FIM requests)."""
    return str(gguf_metadata.get(key, "false")).lower() == "true"


@functools.lru_cache(maxsize=4)
def _load(manual_dir: str) -> OpcodeReference:
    from csound_assistant.errors import DataError

    pages = opcode_pages(Path(manual_dir))
    if not pages:
        raise DataError(f"no opcode pages in {manual_dir}: install the manual with "
                        "`apt-get install csound-doc` or pass its folder")
    return OpcodeReference({name: [" ".join(s.split()) for s in pages[name].synopsis]
                            for name in sorted(known_opcodes(pages)) if pages[name].synopsis})
