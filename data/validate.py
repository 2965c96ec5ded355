"""``csound-assistant data validate``: find every problem in a dataset file at once.

Reads JSONL or a JSON array of rows in any of the four formats (chat ``messages``,
``instruction``/``input``/``output``, ``prompt``/``completion``, FIM ``prefix``/``middle``/
``suffix``) and never modifies it. ``validate_file`` raises ``DataError`` whose ``problems`` list
every defect as ``line N: ...``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from csound_assistant.errors import DataError
from csound_assistant.prompt_format import ROW_KINDS, get_format, row_kind

ROLES = ("system", "user", "assistant")
MAX_DEPTH = 64  # a row nests 3 levels; far deeper JSON is damage or an attack on the parser
CHARS_PER_TOKEN = 2.5  # measured: the built set averages 2.5 characters per SmolLM2 token
REQUIRED = {
    "instruction": {"instruction": True, "output": True, "input": False},
    "completion": {"prompt": True, "completion": True},
    "fim": {"prefix": False, "middle": True, "suffix": False},  # prefix/suffix may be empty
}


@dataclass
class Report:
    path: Path
    rows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    compiled: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def read_rows(path: str | Path) -> tuple[list[tuple[int, object]], list[str]]:
    """``[(line, parsed)]`` from JSONL or a JSON array, plus parse problems (never raises on
    bad content). A JSON array's elements get the line where each element starts. Lines that
    are not UTF-8 or nest deeper than ``MAX_DEPTH`` are problems, with their line numbers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lines, bad, problems = _decode_lines(path.read_bytes())
    if next((line for line in lines if line.strip()), "").lstrip().startswith("["):
        rows, array_problems = _read_array("\n".join(lines))
        return rows, problems + array_problems
    rows = []
    for number, line in enumerate(lines, 1):
        if number in bad or not line.strip():
            continue
        try:
            row = json.loads(line)
            too_deep = _depth(row) > MAX_DEPTH
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:  # Python's parser gives up near 1,000 levels
            too_deep = True
        if too_deep:
            problems.append(f"line {number}: {_too_deep(line)}")
        else:
            rows.append((number, row))
    return rows, problems


def _read_array(text: str) -> tuple[list[tuple[int, object]], list[str]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    rows, problems = [], []

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            problems.append(f"line {line_of(pos)}: invalid JSON (the array is not closed with ']')")
            break
        if text[pos] == "]":
            if text[pos + 1:].strip():
                problems.append(f"line {line_of(pos + 1)}: invalid JSON (text after the array)")
            break
        try:
            obj, end = decoder.raw_decode(text, pos)
            too_deep = _depth(obj) > MAX_DEPTH
        except json.JSONDecodeError as exc:
            problems.append(f"line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                            "the rest of the array was not read")
            break
        except RecursionError:  # the element's end is unknown: the rest cannot be read
            problems.append(f"line {line_of(pos)}: {_too_deep(text[pos:])}; the rest of the "
                            "array was not read")
            break
        if too_deep:
            problems.append(f"line {line_of(pos)}: {_too_deep(text[pos:end])}")
        else:
            rows.append((line_of(pos), obj))
        pos = end
    return rows, problems


def _decode_lines(data: bytes) -> tuple[list[str], set[int], list[str]]:
    """The file's lines, the numbers of those that are not UTF-8, and a problem for each of
    those, naming the bad byte: never silently replaced. (An array file is still parsed with
    the bad bytes replaced, to find its other problems.)"""
    lines, bad, problems = [], set(), []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append(raw.decode("utf-8", errors="replace"))
            bad.add(number)
            problems.append(f"line {number}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                            f"{exc.start + 1} of the line); save the file as UTF-8")
    return lines, bad, problems


def _depth(value) -> int:
    """How deeply lists and objects nest in ``value`` (a string or number is 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:  # deeper is reported anyway: no need to walk further
            stack += [(child, level + 1) for child in item]
    return deepest


def _too_deep(text: str) -> str:
    """The problem for JSON nested past ``MAX_DEPTH`` (counted on the text: it may be too deep
    for Python's parser to read at all)."""
    level = deepest = 0
    for bracket in re.findall(r"[][{}]", re.sub(r'"(?:[^"\\]|\\.)*"', "", text)):
        level += 1 if bracket in "[{" else -1
        deepest = max(deepest, level)
    return f"JSON nested {deepest} levels deep (at most {MAX_DEPTH} allowed; a row needs 3)"


def _check_string(row: dict, key: str, required: bool, where: str) -> list[str]:
    if key not in row:
        return [f"{where}: missing field '{key}'"] if required else []
    value = row[key]
    if not isinstance(value, str):
        return [f"{where}: field '{key}' must be a string, got {type(value).__name__}"]
    if required and not value.strip():
        return [f"{where}: field '{key}' is empty"]
    return []


def _check_messages(messages, where: str) -> list[str]:
    if not isinstance(messages, list):
        return [f"{where}: 'messages' must be a list, got {type(messages).__name__}"]
    if not messages:
        return [f"{where}: 'messages' is empty"]
    problems = []
    expected = "user"
    for i, m in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            problems.append(f"{at} must be an object with 'role' and 'content', "
                            f"got {type(m).__name__}")
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(f"{at}: unknown role {role!r} (use one of {', '.join(ROLES)})")
            continue
        if not isinstance(content, str):
            problems.append(f"{at}: 'content' must be a string, got {type(content).__name__}")
        elif not content.strip():
            problems.append(f"{at}: 'content' is empty")
        if role == "system":
            if i != 0:
                problems.append(f"{at}: a system message is only allowed first")
            continue
        if role != expected:
            problems.append(f"{at}: role '{role}' out of order (expected '{expected}': turns "
                            "alternate user/assistant, starting with user)")
        expected = "assistant" if role == "user" else "user"
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if roles and roles[-1] != "assistant":
        problems.append(f"{where}: the last message must be from the assistant (it is the answer "
                        "trained on)")
    return problems


def check_row(row, where: str) -> tuple[str | None, list[str]]:
    """The row's kind and its structural problems."""
    if not isinstance(row, dict):
        return None, [f"{where}: a row must be a JSON object, got {type(row).__name__}"]
    kind = row_kind(row)
    problems = []
    if "meta" in row and not isinstance(row["meta"], dict):
        problems.append(f"{where}: 'meta' must be an object, got {type(row['meta']).__name__}")
    if kind is None:
        return None, problems + [
            f"{where}: unknown format (keys {sorted(row)}); expected one of: "
            "'messages'; 'instruction' + 'output' (+ 'input'); 'prompt' + 'completion'; "
            "'prefix' + 'middle' + 'suffix'"]
    if kind == "chat":
        problems += _check_messages(row["messages"], where)
    else:
        for key, required in REQUIRED[kind].items():
            problems += _check_string(row, key, required, where)
    return kind, problems


def row_text(row: dict, prompt_format: str = "chatml") -> str:
    """The full training text of a row, as the training stage renders it."""
    return "".join(text for text, _ in get_format(prompt_format).segments(row))


def token_counter(tokenizer: str | None):
    """``len(tokens)`` with a tokenizer folder/file (``tokenizer.json``), else a char estimate."""
    if not tokenizer:
        return lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)
    from tokenizers import Tokenizer

    path = Path(tokenizer)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"no tokenizer at {path}: pass a folder holding tokenizer.json (for "
                        "example runs/default/base) or omit --tokenizer for the char heuristic")
    tok = Tokenizer.from_file(str(path))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _content_key(row: dict) -> str:
    body = {k: v for k, v in row.items() if k != "meta"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def validate_rows(rows: list[tuple[int, object]], *, max_tokens: int | None = None,
                  tokenizer: str | None = None, prompt_format: str = "chatml") -> Report:
    report = Report(path=Path("-"), rows=len(rows))
    count = token_counter(tokenizer) if max_tokens else None
    seen: dict[str, int] = {}
    for line, row in rows:
        where = f"line {line}"
        kind, problems = check_row(row, where)
        report.problems += problems
        if kind is None or problems:
            continue
        report.kinds[kind] = report.kinds.get(kind, 0) + 1
        key = _content_key(row)
        if key in seen:
            report.problems.append(f"{where}: duplicate of line {seen[key]}")
        else:
            seen[key] = line
        if count is not None:
            n = count(row_text(row, prompt_format))
            if n > max_tokens:
                how = "tokens" if tokenizer else "tokens (estimated from characters)"
                report.problems.append(f"{where}: too long: {n} {how} > --max-tokens {max_tokens}")
    return report


def compile_problems(rows: list[tuple[int, object]], *, workers: int = 2) -> tuple[int, list[str]]:
    """Check every code answer with Csound through the sandbox; problems name the line."""
    from .rows import code_answers
    from .verify import Verifier

    jobs = []
    for line, row in rows:
        if isinstance(row, dict) and row_kind(row):
            try:
                codes = code_answers(row)
            except (KeyError, TypeError):
                continue
            jobs += [(line, i, code) for i, code in enumerate(codes, 1)]
    results = Verifier(workers=workers).check([code for _, _, code in jobs])
    problems = []
    for (line, i, _), result in zip(jobs, results):
        if not result["ok"]:
            problems.append(f"line {line}: code answer {i} does not compile "
                            f"({result['category']}): {result['error']}")
    return len(jobs), problems


def validate_file(path: str | Path, *, max_tokens: int | None = None, tokenizer: str | None = None,
                  prompt_format: str = "chatml", compile: bool = False, workers: int = 2) -> Report:
    """Validate ``path``; raise ``DataError`` listing every problem, else return the report."""
    path = Path(path)
    rows, parse_problems = read_rows(path)
    report = validate_rows(rows, max_tokens=max_tokens, tokenizer=tokenizer,
                           prompt_format=prompt_format)
    report.path = path
    report.problems = parse_problems + report.problems
    if not rows and not parse_problems:
        report.problems.append(f"{path}: no rows (the file is empty)")
    if compile:
        report.compiled, problems = compile_problems(rows, workers=workers)
        report.problems += problems
    report.problems.sort(key=_line_number)
    if report.problems:
        raise DataError(f"{path}: {len(report.problems)} problem(s) in {report.rows} row(s); "
                        f"formats accepted: {', '.join(ROW_KINDS)}", problems=report.problems)
    return report


def _line_number(problem: str) -> int:
    head = problem.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0
