"""Read the installed Csound Reference Manual (Debian ``csound-doc``): opcode pages and example
CSDs.

Used by ``csound-assistant data build``. Only the standard library parses the HTML: the manual is
DocBook output with a stable shape (see FACTS.md, "Opcode pages").
"""

from __future__ import annotations

import gzip
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from csound_assistant.errors import DataError

DEFAULT_MANUAL_DIR = Path("/usr/share/doc/csound-doc/html")
OVERVIEW_ROOT = "Part II. Opcodes Overview"

_TAG = re.compile(r"<[^>]+>")
_NAV = re.compile(r'<div class="nav(?:header|footer)">.*?</div>', re.S)


def html_text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(_TAG.sub("", fragment))).strip()


def pre_text(fragment: str) -> str:
    """Text of a ``<pre>`` block, line breaks kept."""
    return html.unescape(_TAG.sub("", fragment)).replace("\x00", "")


@dataclass
class OpcodePage:
    name: str
    summary: str  # the one-line description, without the trailing period
    description: str  # the first paragraph of the Description section
    synopsis: list[str]
    examples: list[str]  # example file names linked from the page, e.g. "moogladder.csd"
    category: str
    page: str  # file name of the page


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


def _title(page_html: str) -> str:
    m = re.search(r"<title>(.*?)</title>", page_html, re.S)
    return html_text(m.group(1)).replace("\xa0", " ") if m else ""


def _up_title(page_html: str) -> str:
    m = re.search(r'<link rel="up"[^>]*title="([^"]*)"', page_html)
    return html_text(m.group(1)).replace("\xa0", " ") if m else ""


def _section(page_html: str, heading: str) -> str:
    """The HTML of the refsect1 whose ``<h2>`` is ``heading`` (empty if absent)."""
    for part in re.split(r"<h2>", page_html)[1:]:
        head, _, body = part.partition("</h2>")
        if html_text(head) == heading:
            return body
    return ""


def parse_opcode_page(path: Path, category: str = "uncategorized") -> OpcodePage | None:
    """An opcode page, or None when ``path`` is not one (no ``refnamediv``)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.search(r'<div class="refnamediv">(.*?)</div>', text, re.S)
    if not m:
        return None
    name_m = re.search(r'<span class="refentrytitle">(.*?)</span>', m.group(1), re.S)
    para_m = re.search(r"<p>(.*?)</p>", m.group(1), re.S)
    if not name_m or not para_m:
        return None
    name = html_text(name_m.group(1))
    summary = html_text(para_m.group(1))
    summary = summary.split("—", 1)[1].strip() if "—" in summary else summary
    description = ""
    desc = _section(text, "Description")
    for p in re.findall(r"<p>(.*?)</p>", desc, re.S):
        if html_text(p):
            description = html_text(p)
            break
    synopsis = [pre_text(s).strip()
                for s in re.findall(r'<pre class="synopsis">(.*?)</pre>', text, re.S)]
    examples = list(dict.fromkeys(re.findall(r'href="examples/([^"]+\.csd)"', text)))
    return OpcodePage(
        name=name, summary=summary.rstrip(". "), description=description,
        synopsis=[s for s in synopsis if s], examples=examples, category=category, page=path.name,
    )


def opcode_categories(manual_dir: Path) -> dict[str, str]:
    """Page file name -> "Signal Modifiers:Standard Filters", from the Opcodes Overview pages
    (an overview page lists the opcodes of its category; sub-categories nest under it)."""
    pages = {p.name: p.read_text(encoding="utf-8", errors="replace")
             for p in manual_dir.glob("*.html")}
    by_title = {_title(text): name for name, text in pages.items()}

    def label(name: str) -> str | None:
        chain, seen = [], set()
        while name and name not in seen:
            seen.add(name)
            up = _up_title(pages[name])
            chain.append(_title(pages[name]))
            if up == OVERVIEW_ROOT:
                return ":".join(reversed(chain[-2:] if len(chain) > 1 else chain))
            name = by_title.get(up)
        return None

    overview = {name: lab for name in pages if (lab := label(name))}
    categories: dict[str, str] = {}
    # deeper (finer) labels win: visit them last
    for name, lab in sorted(overview.items(), key=lambda kv: (kv[1].count(":"), kv[0])):
        body = _NAV.sub("", pages[name])
        for target in re.findall(r'href="([A-Za-z0-9_.-]+\.html)"', body):
            if target not in overview:
                categories[target] = lab
    for name, text in pages.items():
        up = _up_title(text)
        if name not in categories and up and up != "Orchestra Opcodes and Operators":
            categories[name] = up
    return categories


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


def known_opcodes(pages: dict[str, OpcodePage]) -> set[str]:
    """Page names that can appear as opcodes in code (not operators, headers or statements)."""
    from .csdcode import STRUCTURAL

    return {n for n in pages if re.fullmatch(r"[A-Za-z_]\w+", n)} - STRUCTURAL


@dataclass
class Manual:
    pages: dict[str, OpcodePage]  # by opcode name
    examples: dict[str, Example]  # by example name
    directory: Path

    @property
    def known(self) -> set[str]:
        return known_opcodes(self.pages)


def opcode_pages(manual_dir: Path, categories: dict[str, str] | None = None,
                 ) -> dict[str, OpcodePage]:
    """Every opcode page of the manual by name (the first page of a name wins); ``categories``
    (page file -> category) from ``opcode_categories``, else all "uncategorized"."""
    pages: dict[str, OpcodePage] = {}
    for path in sorted(Path(manual_dir).glob("*.html")):
        page = parse_opcode_page(path, (categories or {}).get(path.name, "uncategorized"))
        if page and page.name not in pages:
            pages[page.name] = page
    return pages


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
