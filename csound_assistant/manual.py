"""The installed Csound Reference Manual (Debian ``csound-doc``): where it is, and what its opcode
pages say. The one reader of its HTML: the data build (``data/examples.py``), the opcode lookups
(``opcode_reference.py``) and the sandbox's vocabulary of documented opcodes all use it.

Only the standard library parses the HTML: the manual is DocBook output with a stable shape
(FACTS.md, "Opcode pages").
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MANUAL_DIR = Path("/usr/share/doc/csound-doc/html")
MANUAL_EXAMPLES = DEFAULT_MANUAL_DIR / "examples"
OVERVIEW_ROOT = "Part II. Opcodes Overview"
# Words with manual pages that are statements, header variables or flow control, not opcodes.
STRUCTURAL = {"instr", "endin", "opcode", "endop", "sr", "kr", "ksmps", "nchnls", "nchnls_i",
              "0dbfs", "A4", "if", "then", "else", "elseif", "endif", "while", "until", "do", "od",
              "goto", "igoto", "kgoto", "return"}

_TAG = re.compile(r"<[^>]+>")
_NAV = re.compile(r'<div class="nav(?:header|footer)">.*?</div>', re.S)
_REFNAME = re.compile(r'<div class="refnamediv">(.*?)</div>', re.S)


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
    m = _REFNAME.search(text)
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


def known_opcodes(pages: dict[str, OpcodePage]) -> set[str]:
    """Page names that can appear as opcodes in code (not operators, headers or statements)."""
    return {n for n in pages if re.fullmatch(r"[A-Za-z_]\w+", n)} - STRUCTURAL


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


def documented_opcodes(manual_dir: str | Path = DEFAULT_MANUAL_DIR) -> frozenset[str]:
    """Every name an orchestra opcode page documents (one page may name several), as the
    sandbox uses them to tell a missing plugin from an invented opcode; empty without the
    manual."""
    names: set[str] = set()
    for path in Path(manual_dir).glob("*.html"):
        with open(path, errors="replace") as fh:
            head = fh.read(4000)  # the up link and the heading; the sandbox reads this at start
        if not re.search("Orchestra|Opcodes", _up_title(head)):
            continue  # score statements, utilities, overviews
        m = _REFNAME.search(head)
        if m:
            names.update(re.findall(r"[A-Za-z_]\w*", html_text(m.group(1)).split("\u2014")[0]))
    return frozenset(names)
