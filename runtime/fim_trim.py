"""A FIM middle cut to what an editor inserts: llama.vscode, Continue and Tabby paste the middle
at the cursor as it comes, so it must end where the editor expects and never repeat the text
after the cursor (issue 26: editors inserted duplicated lines).

- The cursor inside a line (code on both sides of it): the middle ends at its first new line;
  a Csound statement is one line.
- The cursor at the end of a line with code: the middle ends with the first line it writes code
  on (a middle that starts with a new line may add one line below).
- The cursor at the start of a line (nothing before it on the line): the middle may be several
  lines, up to one that repeats the suffix's first line of code.
And a middle whose end repeats the start of the suffix loses the repeated part.

Used on the answers of ``/infill``, ``/v1/completions`` with ``suffix`` and Ollama's
``/api/generate`` with ``suffix``; a streamed answer goes through ``StreamTrim``, which sends
each piece once nothing later can take it back, so streamed and whole answers are the same text.
"""

from __future__ import annotations

CLOSERS = set(")]}\"',")  # one repeated character of these is a repeat; other overlaps need 3
REPEAT_WINDOW = 256  # characters of the suffix a middle's end is compared with


def cursor_kind(prefix: str, suffix: str) -> str:
    """"inside" (code on both sides of the cursor on its line), "line-end" (code before it
    only) or "line-start" (none before it: whole lines may be inserted)."""
    before = prefix.rpartition("\n")[2].strip()
    after = suffix.partition("\n")[0].strip()
    if before and after:
        return "inside"
    return "line-end" if before else "line-start"


def trim_middle(prefix: str, middle: str, suffix: str) -> str:
    """``middle`` cut where the editor expects it to end, without the suffix's repeat."""
    kind = cursor_kind(prefix, suffix)
    if kind == "inside":
        middle = middle.partition("\n")[0]
    elif kind == "line-end":
        lead = len(middle) - len(middle.lstrip("\n"))
        middle = middle[:lead] + middle[lead:].partition("\n")[0]
    else:
        middle = before_suffix_line(middle, suffix)
    return middle[:len(middle) - repeated(middle, suffix)]


def before_suffix_line(middle: str, suffix: str) -> str:
    """A several-line middle up to the first line that repeats the suffix's first line of
    code: a model that writes the next line again would go on to rewrite the rest."""
    target = next((line.strip() for line in suffix.split("\n") if line.strip()), "")
    if not target:
        return middle
    pos = 0
    for line in middle.split("\n")[:-1]:  # whole lines only: the last may be unfinished
        if line.strip() == target:
            return middle[:pos]
        pos += len(line) + 1
    return middle


def repeated(middle: str, suffix: str) -> int:
    """How many characters at the end of ``middle`` repeat the start of ``suffix``: the longest
    such overlap that holds code (3 characters or more, or closing punctuation)."""
    for size in range(min(len(middle), len(suffix), REPEAT_WINDOW), 0, -1):
        overlap = suffix[:size]
        if not middle.endswith(overlap) or not overlap.strip():
            continue
        if size >= 3 or set(overlap.strip()) <= CLOSERS:
            return size
    return 0


class StreamTrim:
    """``trim_middle`` over a streamed answer: ``feed`` returns the part of the text so far that
    no later piece can remove (a repeat of the suffix is at most REPEAT_WINDOW characters; a
    cut only comes at a new line), ``finish`` the rest; ``done`` once the cut is reached (the
    rest of the generation is not sent)."""

    def __init__(self, prefix: str, suffix: str):
        self.prefix, self.suffix = prefix, suffix
        self.text, self.sent, self.done = "", "", False
        self.hold = min(len(suffix), REPEAT_WINDOW)

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        self.text += piece
        final = trim_middle(self.prefix, self.text, self.suffix)
        if cursor_kind(self.prefix, self.suffix) == "line-start":
            self.done = before_suffix_line(self.text, self.suffix) != self.text
            complete = self.text.rfind("\n") + 1  # a cut only comes at a line's start
        else:
            lead = len(self.text) - len(self.text.lstrip("\n"))
            self.done = "\n" in self.text[lead:]
            complete = len(self.text)
        safe = len(final) if self.done else max(0, complete - self.hold)
        return self._send(final[:safe])

    def finish(self) -> str:
        return self._send(trim_middle(self.prefix, self.text, self.suffix))

    def _send(self, upto: str) -> str:
        new = upto[len(self.sent):]
        self.sent += new
        return new


async def trimmed(pieces, prefix: str, suffix: str):
    """A streamed FIM answer's pieces as ``StreamTrim`` lets them through; the generation is
    read to its end (its summary follows it), nothing after the cut is sent."""
    trim = StreamTrim(prefix, suffix)
    async for piece in pieces:
        if out := trim.feed(piece):
            yield out
    if out := trim.finish():
        yield out
