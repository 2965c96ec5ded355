"""Find the Csound code in a model's answer: fenced blocks, a <CsoundSynthesizer> document, or a
bare orchestra (header, instruments, UDOs). One reading for every judge of an answer: ``eval run``,
``data from-feedback``, ``serve --repair`` and ``serve --verify``."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_CSD = re.compile(r"<CsoundSynthesizer>.*?(?:</CsoundSynthesizer>|\Z)", re.S | re.I)
# Inside a code block, a CSD may also start at its first section: Csound runs a file whose
# opening <CsoundSynthesizer> is missing (small models drop it), as long as it is closed.
_CSD_IN_BLOCK = re.compile(r"(?:<CsoundSynthesizer>|<CsOptions>|<CsInstruments>)"
                           r".*?(?:</CsoundSynthesizer>|\Z)", re.S | re.I)
_NOT_CSOUND = {"python", "py", "bash", "sh", "shell", "text", "console", "json", "javascript",
               "js", "c", "cpp", "lua", "yaml", "html", "xml"}
_ORC_START = re.compile(r"^[ \t]*(?:sr|kr|ksmps|nchnls|0dbfs|instr|opcode|gi\w+|ga\w+)\b", re.M)
_ORC_END = re.compile(r"^[ \t]*(?:endin|endop)\b.*$", re.M)


def _close_csd(code: str) -> str:
    """Complete a CSD whose end was cut off (max tokens) so Csound can judge what is there."""
    if re.search(r"</CsoundSynthesizer>", code, re.I):
        return code
    tail = ""
    if re.search(r"<CsInstruments>", code, re.I) and not re.search(r"</CsInstruments>", code,
                                                                   re.I):
        tail += "\n</CsInstruments>\n<CsScore>\n</CsScore>"
    elif re.search(r"<CsScore>", code, re.I) and not re.search(r"</CsScore>", code, re.I):
        tail += "\n</CsScore>"
    return code.rstrip() + tail + "\n</CsoundSynthesizer>\n"


def _bare_orchestra(text: str) -> str | None:
    start = _ORC_START.search(text)
    ends = list(_ORC_END.finditer(text))
    if not start or not ends or ends[-1].end() <= start.start():
        return None
    return text[start.start(): ends[-1].end()].strip() + "\n"


def extract_code(answer: str) -> str | None:
    """The Csound code in ``answer`` (a CSD, or an orchestra the sandbox wraps), or None."""
    if not answer or not answer.strip():
        return None
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(answer)]
    blocks = [(lang, body) for lang, body in blocks if body.strip() and (
        lang not in _NOT_CSOUND  # a mislabelled fence still counts when it holds Csound
        or re.search(r"<CsoundSynthesizer>|^\s*instr\b", body, re.I | re.M))]
    for _, body in blocks:
        if re.search(r"<CsoundSynthesizer>|<CsInstruments>", body, re.I):
            return _close_csd(_CSD_IN_BLOCK.search(body).group())
    if blocks:
        code = "\n".join(body.strip("\n") for _, body in blocks)
        if re.search(r"\b(?:instr|opcode|endin|out|outs)\b|=", code):
            return code + "\n"
    match = _CSD.search(answer)
    if match:
        return _close_csd(match.group())
    return _bare_orchestra(answer)


def opcodes_present(code: str, required: list[str]) -> list[bool]:
    """Whether each required opcode occurs in ``code``; "a|b" accepts either name."""
    words = set(re.findall(r"[A-Za-z_]\w*", re.sub(r";[^\n]*|//[^\n]*", "", code or "")))
    return [any(alt.strip() in words for alt in need.split("|")) for need in required]
