"""The manual's example CSDs, read for ``csound-assistant data build``: each example tidied, with
the opcode page that links it and the known opcodes it uses. The opcode pages themselves are
read by ``csound_assistant.manual``.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

from csound_assistant.errors import DataError
from csound_assistant.manual import (
    DEFAULT_MANUAL_DIR,
    OpcodePage,
    known_opcodes,
    opcode_categories,
    opcode_pages,
)


@dataclass
class Example:
    name: str  # file name without .csd / .csd.gz
    path: Path
    code: str
    opcode: str | None = None  # the opcode whose page links it (or whose name it bears)
    category: str = "uncategorized"
    opcodes: list[str] = field(default_factory=list)  # known opcodes it uses, in order of use
    group: str = ""  # examples sharing code share a group (set by the build); default: name

    def __post_init__(self):
        self.group = self.group or self.name


def read_csd(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\x00", "")


def example_name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".csd")


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def orchestra(code: str) -> str:
    m = re.search(r"<CsInstruments>(.*?)</CsInstruments>", code, re.S)
    return m.group(1) if m else code


def strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), code, flags=re.S)
    code = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', code)
    return re.sub(r"(;|//).*", "", code)


def opcodes_used(code: str, known: set[str]) -> list[str]:
    """Known opcode names used in the orchestra of ``code``, first use first."""
    words = _WORD.findall(strip_comments(orchestra(code)))
    return list(dict.fromkeys(w for w in words if w in known))


@dataclass
class Manual:
    pages: dict[str, OpcodePage]  # by opcode name
    examples: dict[str, Example]  # by example name
    directory: Path

    @property
    def known(self) -> set[str]:
        return known_opcodes(self.pages)


def load_manual(manual_dir: str | Path = DEFAULT_MANUAL_DIR, *, limit: int | None = None,
                strip_comments: bool = False) -> Manual:
    """Parse every opcode page and example CSD of the installed manual.

    ``limit`` keeps N examples spread evenly over the sorted names, for quick runs. Examples are
    tidied (``csdcode.tidy_csd``), and with ``strip_comments`` lose their comments too.
    """
    from .csdcode import tidy_csd

    manual_dir = Path(manual_dir)
    examples_dir = manual_dir / "examples"
    if not examples_dir.is_dir():
        raise DataError(
            f"no Csound manual at {manual_dir} (expected {examples_dir}). Install it with "
            "`apt-get install csound-doc` or pass --manual-dir."
        )
    pages = opcode_pages(manual_dir, opcode_categories(manual_dir))
    known = known_opcodes(pages)
    linked: dict[str, OpcodePage] = {}
    for page in pages.values():
        for ex in page.examples:
            linked.setdefault(example_name(Path(ex)), page)
    paths = sorted(p for p in examples_dir.iterdir() if p.name.endswith((".csd", ".csd.gz")))
    if limit is not None and limit < len(paths):
        step = len(paths) / limit  # spread over the alphabet, not just the ATS* examples
        paths = [paths[int(i * step)] for i in range(limit)]
    examples: dict[str, Example] = {}
    for path in paths:
        name = example_name(path)
        if name in examples:
            continue
        code = tidy_csd(read_csd(path), strip_comments)
        page = linked.get(name) or pages.get(re.sub(r"[-_]?\d+$", "", name)) or pages.get(name)
        used = opcodes_used(code, known)
        examples[name] = Example(
            name=name, path=path, code=code,
            opcode=page.name if page else (used[0] if used else None),
            category=page.category if page else "uncategorized", opcodes=used,
        )
    if not examples:
        raise DataError(f"no example .csd files in {examples_dir}")
    return Manual(pages=pages, examples=examples, directory=manual_dir)
