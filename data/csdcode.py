"""Light-weight structure of Csound code: instrument blocks, opcode statements, and the edits
that make fix-the-bug and fill-in-the-middle rows.

Nothing here judges validity: every edit is checked by real Csound through
``csound_assistant.sandbox`` (``data/build.py``). This module only proposes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from csound_assistant.manual import STRUCTURAL

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# outputs (optional), opcode, optional :rate annotation, arguments
_STATEMENT = re.compile(
    r"^(?P<indent>\s*)(?P<outs>(?:[A-Za-z_][\w\[\]]*\s*,\s*)*[A-Za-z_][\w\[\]]*\s+)?"
    r"(?P<op>[A-Za-z_]\w*)(?::[aikSf])?(?P<gap>\s+|$)(?P<args>.*)$"
)


@dataclass
class Statement:
    line: int  # 0-based line index in the code
    indent: str
    outputs: list[str]
    opcode: str
    args: list[str]
    args_start: int  # column where the argument text starts
    args_end: int  # column where it ends (before a trailing comment)


@dataclass
class Instrument:
    name: str  # "1", "Bass", "1, 2"
    start: int  # line index of `instr`
    end: int  # line index of `endin`


def code_part(line: str) -> str:
    """``line`` without its ``;`` or ``//`` comment (strings respected)."""
    out, in_str = [], False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            in_str = not in_str
        if not in_str and (ch == ";" or line.startswith("//", i)):
            break
        out.append(ch)
    return "".join(out)


def strip_code_comments(code: str) -> str:
    return "\n".join(code_part(line) for line in code.split("\n"))


_OPTIONS = re.compile(r"(<CsOptions>)(.*?)(</CsOptions>)", re.S)


def _strip_block_comments(code: str) -> str:
    """``/* ... */`` removed outside strings (its newlines kept, so line numbers still match)."""
    out, i, in_str = [], 0, False
    while i < len(code):
        ch = code[i]
        if ch == '"' and (i == 0 or code[i - 1] != "\\"):
            in_str = not in_str
        if not in_str and code.startswith("/*", i):
            end = code.find("*/", i + 2)
            end = len(code) if end < 0 else end + 2
            out.append("\n" * code.count("\n", i, end))
            i = end
            continue
        if ch == "\n":
            in_str = False  # an unclosed quote never spans lines
        out.append(ch)
        i += 1
    return "".join(out)


def tidy_csd(code: str, strip_comments: bool = False) -> str:
    """The same piece with less to read: ``<CsOptions>`` keeps only its flags (the manual's
    "Select audio/midi flags here" boilerplate goes), trailing spaces and runs of blank lines go,
    and with ``strip_comments`` every comment too. The result is checked by Csound like any
    other code (``data/build.py``); a small model learns Csound, not the manual's prose, from it.
    """
    def options(m: re.Match) -> str:
        flags = [code_part(line).strip() for line in m.group(2).split("\n")]
        body = "\n".join(f for f in flags if f)
        return f"{m.group(1)}\n{body}\n{m.group(3)}" if body else f"{m.group(1)}\n{m.group(3)}"

    code = _OPTIONS.sub(options, code)
    if strip_comments:
        code = _strip_block_comments(code)
    lines, blank = [], True  # True: no blank line at the start either
    for line in code.split("\n"):
        kept = code_part(line) if strip_comments else line
        kept = kept.rstrip()
        if not kept.strip():
            if kept == line.rstrip() and not blank:  # an originally blank line: one is kept
                lines.append("")
                blank = True
            continue
        lines.append(kept)
        blank = False
    while lines and not lines[-1]:
        lines.pop()
    text = "\n".join(lines) + "\n"
    return re.sub(r"(<Cs\w+>)\n\n", r"\1\n", re.sub(r"\n\n(</Cs\w+>)", r"\n\1", text))


def split_args(text: str) -> list[str]:
    """Top-level comma split: parentheses, brackets and strings keep their commas."""
    args, depth, cur, in_str = [], 0, [], False
    for ch in text:
        if ch == '"':
            in_str = not in_str
        elif not in_str and ch in "([":
            depth += 1
        elif not in_str and ch in ")]":
            depth -= 1
        if ch == "," and depth == 0 and not in_str:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return args


_BARE = re.compile(r"^(?P<indent>\s*)(?P<op>[A-Za-z_]\w*)(?::[aikSf])?(?P<gap>\s+|$)(?P<args>.*)$")


def parse_statement(line: str, index: int, known: set[str]) -> Statement | None:
    code = code_part(line).rstrip()
    m = _BARE.match(code)  # `outs a1, a1`: no outputs
    if not m or m.group("op") not in known:
        m = _STATEMENT.match(code)
    if not m or m.group("op") not in known or m.group("op") in STRUCTURAL:
        return None
    if m.group("args").lstrip().startswith("="):
        return None
    outs = m.groupdict().get("outs") or ""
    outputs = [o.strip() for o in outs.split(",") if o.strip()]
    return Statement(
        line=index, indent=m.group("indent"), outputs=outputs, opcode=m.group("op"),
        args=split_args(m.group("args")), args_start=m.start("args"), args_end=len(code),
    )


def instruments(code: str) -> list[Instrument]:
    lines = code.split("\n")
    found, start, name = [], None, ""
    for i, line in enumerate(lines):
        text = code_part(line).strip()
        m = re.match(r"instr\s+(.+)$", text)
        if m and start is None:
            start, name = i, m.group(1).strip()
        elif re.match(r"endin\b", text) and start is not None:
            found.append(Instrument(name=name, start=start, end=i))
            start = None
    return found


def statements(code: str, known: set[str], block: Instrument | None = None) -> list[Statement]:
    lines = code.split("\n")
    lo, hi = (block.start + 1, block.end) if block else (0, len(lines))
    out = []
    for i in range(lo, hi):
        st = parse_statement(lines[i], i, known)
        if st:
            out.append(st)
    return out


def main_instrument(code: str, opcode: str | None, known: set[str]) -> Instrument | None:
    """The instrument that uses ``opcode`` (else the first one)."""
    blocks = instruments(code)
    for block in blocks:
        if opcode and any(st.opcode == opcode for st in statements(code, known, block)):
            return block
    return blocks[0] if blocks else None


def block_text(code: str, block: Instrument) -> str:
    return "\n".join(code.split("\n")[block.start: block.end + 1])


def variables_defined(code: str, known: set[str], block: Instrument) -> set[str]:
    names = set()
    for st in statements(code, known, block):
        names.update(re.sub(r"\[.*", "", o) for o in st.outputs)
    lines = code.split("\n")[block.start + 1: block.end]
    for line in lines:
        m = re.match(r"\s*([A-Za-z_]\w*)\s*(?:=|init\b)", code_part(line))
        if m:
            names.add(m.group(1))
    return names


def all_identifiers(code: str) -> set[str]:
    return set(_IDENT.findall(code))


_PRINTS = {"print", "printk", "printks", "prints", "printf", "printf_i", "printk2", "puts",
           "println"}
_LIVE_INPUT = {"in", "ins", "inch", "inq", "inh", "ino", "inx", "massign", "notnum", "cpsmidi",
               "veloc", "ampmidi", "midictrl", "ctrl7", "midiin", "pchbend", "aftouch"}


def self_contained(csd: str, block_code: str) -> bool:
    """Whether an instrument is likely to sound on its own (without its CSD): no global
    variables, no score-made tables, no files, no live input, not a print demo. A guess that
    saves renders; the render decides."""
    code = strip_code_comments(block_code)
    words = set(_IDENT.findall(code))
    score = re.search(r"<CsScore>(.*?)</CsScore>", csd, re.S)
    return not (
        re.search(r"\bg[aikS]\w*", code)
        or (score and re.search(r"^\s*f\s*\d", score.group(1), re.M))
        or re.search(r'"[^"]+\.\w{2,4}"', block_code)
        or words & _LIVE_INPUT
        or (words & _PRINTS and not any(w.startswith("out") for w in words))
    )


# --- fill in the middle ----------------------------------------------------------------------
def fim_line_split(code: str, st: Statement, n_lines: int = 1) -> tuple[str, str, str]:
    """Middle = ``n_lines`` whole lines starting at the statement's line (newline included)."""
    lines = code.split("\n")
    n_lines = max(1, min(n_lines, len(lines) - 1 - st.line))
    before = "\n".join(lines[: st.line]) + "\n"
    middle = "\n".join(lines[st.line: st.line + n_lines]) + "\n"
    after = "\n".join(lines[st.line + n_lines:])
    return before, middle, after


def fim_expression_split(code: str, st: Statement) -> tuple[str, str, str]:
    """Middle = the argument list of one statement (an expression boundary inside a line)."""
    lines = code.split("\n")
    offset = sum(len(line) + 1 for line in lines[: st.line])
    a, b = offset + st.args_start, offset + st.args_end
    return code[:a], code[a:b], code[b:]


# Cursor positions editors ask at (issue 26). Each cut returns (prefix, middle, suffix) with
# prefix + middle + suffix == the code it was given, or None where the code has no such place.
def _offset(code: str, line: int) -> int:
    return sum(len(text) + 1 for text in code.split("\n")[:line])


def fim_opcode_split(code: str, st: Statement) -> tuple[str, str, str] | None:
    """After the output variables (``  asig |``): the middle is the opcode and its arguments,
    to the end of the statement (a trailing comment stays in the suffix)."""
    if not st.outputs:
        return None
    m = _STATEMENT.match(code_part(code.split("\n")[st.line]).rstrip())
    if not m or m.group("op") != st.opcode or not m.group("outs"):
        return None
    a, b = _offset(code, st.line) + m.start("op"), _offset(code, st.line) + st.args_end
    return code[:a], code[a:b], code[b:]


def fim_argument_split(code: str, st: Statement, rng) -> tuple[str, str, str] | None:
    """Inside an argument list: the cursor after an argument's first characters or at its
    start (never the first argument's start: that is ``fim_expression_split``); the middle
    runs to the end of that argument, or on to the end of the statement."""
    if not st.args:
        return None
    line = code.split("\n")[st.line]
    text = line[st.args_start:st.args_end]
    starts, pos = [], 0
    for arg in st.args:  # each argument's column in the line, found in order
        pos = text.find(arg, pos)
        if pos < 0:
            return None
        starts.append((st.args_start + pos, st.args_start + pos + len(arg)))
        pos += len(arg)
    places = [(i, start + k) for i, (start, end) in enumerate(starts)
              for k in range(0 if i else 1, end - start)]
    if not places:
        return None
    i, col = rng.choice(places)
    stop = starts[i][1] if rng.random() < 0.5 and i + 1 < len(starts) else st.args_end
    base = _offset(code, st.line)
    return code[:base + col], code[base + col:base + stop], code[base + stop:]


_SCORE = re.compile(r"<CsScore[^>]*>\n(.*?)</CsScore>", re.S)


def fim_score_split(code: str, rng) -> tuple[str, str, str] | None:
    """Inside ``<CsScore>``: one or two whole event lines (``i``/``f``), or the rest of an
    ``i`` line after its instrument number."""
    m = _SCORE.search(code)
    if not m:
        return None
    first = code.count("\n", 0, m.start(1))
    lines = code.split("\n")
    events = [first + k for k, text in enumerate(m.group(1).split("\n"))
              if re.match(r"\s*[if]\s*[\d\"]", text)]
    if not events:
        return None
    n = events[rng.randrange(len(events))]
    if rng.random() < 0.5 and (head := re.match(r"\s*i\s*(\d+|\"[^\"]+\")\s+", lines[n])):
        a = _offset(code, n) + head.end()
        b = _offset(code, n) + len(code_part(lines[n]).rstrip())
        return (code[:a], code[a:b], code[b:]) if b > a else None
    count = 2 if n + 1 in events and rng.random() < 0.3 else 1
    a, b = _offset(code, n), _offset(code, n + count)
    return code[:a], code[a:b], code[b:]


def fim_end_split(code: str, rng) -> tuple[str, str, str] | None:
    """End of file: the middle runs from one of the last four lines with code (closing tags
    and a lone ``e`` are not code) to the end; the suffix is empty."""
    lines = code.rstrip("\n").split("\n")
    filled = [k for k, text in enumerate(lines)
              if code_part(text).strip() and not re.fullmatch(r"\s*(</\w+>|e)\s*", text)]
    if len(filled) < 3:
        return None
    n = filled[-rng.choice([1, 2, 3, 4])] if len(filled) > 4 else filled[-1]
    a = _offset(code, n)
    return code[:a], code[a:], ""


_UDO = re.compile(r"^[ \t]*opcode\b.*?^[ \t]*endop\b[^\n]*", re.S | re.M)


def snippet(code: str, block: Instrument | None) -> tuple[str, str] | None:
    """A loose file an editor might hold instead of a CSD: the code's user-defined opcodes as a
    ``.udo`` file, else its main instrument as an ``.orc`` file. (extension, text)."""
    udos = _UDO.findall(code)
    if udos:
        return "udo", "\n\n".join(udos) + "\n"
    if block is None:
        return None
    return "orc", block_text(code, block) + "\n"


# --- breaking working code the way people do ------------------------------------------------
@dataclass
class Breakage:
    kind: str
    code: str  # the broken code
    line: int  # 1-based line of the edit
    explanation: str  # why it fails and how the fix repairs it (for the answer)


def _replace_line(code: str, index: int, new: str | None) -> str:
    lines = code.split("\n")
    if new is None:
        del lines[index]
    else:
        lines[index] = new
    return "\n".join(lines)


def break_missing_endin(code: str, block: Instrument, known: set[str]) -> Breakage | None:
    return Breakage(
        "missing-endin", _replace_line(code, block.end, None), block.end + 1,
        f"Instrument {block.name} is never closed: every `instr` block must end with `endin`, "
        f"so add `endin` after its last statement.",
    )


def _misspell(name: str) -> list[str]:
    cands = []
    if len(name) >= 5:
        i = len(name) // 2
        cands.append(name[:i] + name[i + 1:])  # dropped letter
        cands.append(name[: i - 1] + name[i] + name[i - 1] + name[i + 1:])  # swapped letters
    if len(name) >= 3:
        cands.append(name[:-1] + name[-1] * 2)  # doubled last letter
        cands.append(name + "e" if not name.endswith("e") else name[:-1])
    return [c for c in cands if c != name]


def break_misspelled_opcode(code: str, block: Instrument, known: set[str], main: str | None
                            ) -> Breakage | None:
    sts = [st for st in statements(code, known, block) if len(st.opcode) >= 4]
    sts.sort(key=lambda st: st.opcode != main)
    idents = all_identifiers(code)
    for st in sts:
        for bad in _misspell(st.opcode):
            if bad in known or bad in idents:
                continue
            line = code.split("\n")[st.line]
            new = re.sub(rf"\b{re.escape(st.opcode)}\b", bad, line, count=1)
            return Breakage(
                "misspelled-opcode", _replace_line(code, st.line, new), st.line + 1,
                f"`{bad}` on line {st.line + 1} is not a Csound opcode: it is a misspelling of "
                f"`{st.opcode}`.",
            )
    return None


def break_k_for_a(code: str, block: Instrument, known: set[str]) -> Breakage | None:
    lines = code.split("\n")
    idents = all_identifiers(code)
    for st in statements(code, known, block):
        if len(st.outputs) != 1 or not re.fullmatch(r"a\w+", st.outputs[0]):
            continue
        a_name = st.outputs[0]
        k_name = "k" + a_name[1:]
        if k_name in idents:
            continue
        users = [s for s in statements(code, known, block)
                 if s.line > st.line and any(re.search(rf"\b{a_name}\b", x) for x in s.args)]
        if not users:
            continue
        body = lines[block.start: block.end + 1]
        body = [re.sub(rf"\b{a_name}\b", k_name, line) for line in body]
        broken = "\n".join(lines[: block.start] + body + lines[block.end + 1:])
        return Breakage(
            "k-rate-for-a-rate", broken, st.line + 1,
            f"`{k_name}` is a control-rate (k) variable, but it carries the audio signal made by "
            f"`{st.opcode}` on line {st.line + 1} and read by `{users[0].opcode}`, which needs an "
            f"audio-rate signal. Name it `{a_name}` so it runs at a-rate.",
        )
    return None


def required_args(synopsis: list[str], opcode: str) -> int | None:
    """The smallest number of required arguments over the synopsis lines of ``opcode``."""
    counts = []
    for line in synopsis:
        m = re.search(rf"\b{re.escape(opcode)}\b(.*)", line)
        if not m:
            continue
        required = m.group(1).split("[")[0]
        counts.append(len([a for a in required.split(",") if a.strip()]))
    return min(counts) if counts else None


def break_argument_count(code: str, block: Instrument, known: set[str],
                         synopses: dict[str, list[str]]) -> Breakage | None:
    lines = code.split("\n")
    for st in statements(code, known, block):
        need = required_args(synopses.get(st.opcode, []), st.opcode)
        if not need or need < 2 or len(st.args) < need:
            continue
        kept = st.args[: need - 1]
        line = lines[st.line]
        new = line[: st.args_start] + ", ".join(kept) + line[st.args_end:]
        return Breakage(
            "wrong-argument-count", _replace_line(code, st.line, new), st.line + 1,
            f"`{st.opcode}` on line {st.line + 1} needs at least {need} arguments but gets "
            f"{len(kept)}. Restore the missing arguments: `{st.opcode} {', '.join(st.args)}`.",
        )
    return None


def break_undefined_variable(code: str, block: Instrument, known: set[str]) -> Breakage | None:
    lines = code.split("\n")
    defined = variables_defined(code, known, block)
    idents = all_identifiers(code)
    for st in statements(code, known, block):
        for arg in st.args:
            for name in _IDENT.findall(arg):
                if name not in defined or len(name) < 3 or name[0] not in "aki":
                    continue
                bad = name[:-1] if len(name) > 3 else name + "1"
                if bad in idents or bad in known:
                    bad = name + "2"
                if bad in idents:
                    continue
                line = lines[st.line]
                head, tail = line[: st.args_start], line[st.args_start:]
                new = head + re.sub(rf"\b{name}\b", bad, tail, count=1)
                return Breakage(
                    "undefined-variable", _replace_line(code, st.line, new), st.line + 1,
                    f"`{bad}` on line {st.line + 1} is used but never defined; the variable "
                    f"defined earlier in the instrument is `{name}`.",
                )
    return None


BREAKERS = ("missing-endin", "misspelled-opcode", "k-rate-for-a-rate", "wrong-argument-count",
            "undefined-variable")


def breakages(code: str, opcode: str | None, known: set[str], synopses: dict[str, list[str]]
              ) -> list[Breakage]:
    """Every kind of breakage this code admits (each still to be verified by Csound)."""
    block = main_instrument(code, opcode, known)
    if block is None:
        return []
    found = [
        break_missing_endin(code, block, known),
        break_misspelled_opcode(code, block, known, opcode),
        break_k_for_a(code, block, known),
        break_argument_count(code, block, known, synopses),
        break_undefined_variable(code, block, known),
    ]
    return [b for b in found if b is not None and b.code != code]
