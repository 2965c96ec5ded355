"""Evaluation items: the curated task file (``eval/tasks.jsonl``) and the test split's code rows.

An item is a chat request (``messages``) or a fill-in-the-middle request (``prefix``/``suffix``),
with the opcodes the answer must use and, when known, a reference answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from csound_assistant.errors import DataError

TASKS_PATH = Path(__file__).with_name("tasks.jsonl")
TEST_SECONDS = 5.0
PROSE_TASKS = {"explain", "syntax"}  # data rows whose answers quote code rather than write it
KINDS = ("synthesis", "envelope", "filter", "effect", "udo", "score", "fix", "fim")
# eval/natural/ (requests as people write them) sorts by how one asks; "fix" is shared
NATURAL_KINDS = ("describe", "opcode", "explain")
_CHAT_KEYS = {"id", "kind", "prompt", "required_opcodes", "reference", "broken", "seconds",
              "expect_sound"}
_FIM_KEYS = {"id", "kind", "prefix", "suffix", "required_opcodes", "reference", "seconds",
             "expect_sound"}


@dataclass
class Item:
    id: str
    kind: str
    source: str  # "tasks" or "test"
    messages: list[dict] | None = None
    prefix: str | None = None
    suffix: str | None = None
    required_opcodes: list[str] = field(default_factory=list)
    reference: str | None = None  # the answer (a middle for FIM)
    seconds: float = 2.0

    @property
    def is_fim(self) -> bool:
        return self.prefix is not None


def load_tasks(path: str | Path | None = None) -> list[Item]:
    """Read and validate a task file; every problem is reported with its line number."""
    path = Path(path or TASKS_PATH)
    if not path.is_file():
        raise DataError(f"task file not found: {path}")
    items, problems, seen = [], [], set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc.msg})")
            continue
        where = f"line {number} ({task.get('id', '?')})"
        fim = task.get("kind") == "fim"
        allowed = _FIM_KEYS if fim else _CHAT_KEYS
        needed = {"id", "kind", "required_opcodes"} | ({"prefix", "suffix"} if fim else {"prompt"})
        if missing := needed - task.keys():
            problems.append(f"{where}: missing {', '.join(sorted(missing))}")
            continue
        if unknown := task.keys() - allowed:
            problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if task["kind"] not in KINDS + NATURAL_KINDS:
            problems.append(f"{where}: kind {task['kind']!r} is not one of "
                            f"{', '.join(KINDS + NATURAL_KINDS)}")
        if task["id"] in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(task["id"])
        if not isinstance(task["required_opcodes"], list) or not all(
                isinstance(x, str) and x for x in task["required_opcodes"]):
            problems.append(f"{where}: required_opcodes must be a list of names ('a|b' = either)")
            continue
        items.append(Item(
            id=task["id"], kind=task["kind"], source="tasks",
            messages=None if fim else [{"role": "user", "content": task["prompt"]}],
            prefix=task.get("prefix"), suffix=task.get("suffix"),
            required_opcodes=task["required_opcodes"], reference=task.get("reference"),
            seconds=float(task.get("seconds", 2.0)),
        ))
    if problems:
        raise DataError(f"{path} has {len(problems)} problem(s)", problems)
    return items


def load_test_split(path: str | Path) -> list[Item]:
    """Code-answer rows of a test split: chat/instruction rows whose answer holds Csound, and
    FIM rows. The row's ``meta.opcode`` (when the answer uses it) is the required opcode.
    Answers are rendered for 5 s: manual examples often start their first note late."""
    from csound_assistant.extract import extract_code, opcodes_present
    from csound_assistant.prompt_format import row_kind, to_messages

    path = Path(path)
    if not path.is_file():
        raise DataError(f"test split not found: {path} (run `csound-assistant data split`)")
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        meta = row.get("meta") or {}
        kind, opcode = row_kind(row), meta.get("opcode")
        ident = f"test-{number}"
        task = meta.get("task") or kind
        if task in PROSE_TASKS:
            continue
        if kind == "fim":
            code = row["prefix"] + row["middle"] + row["suffix"]
            required = [opcode] if opcode and all(opcodes_present(code, [opcode])) else []
            items.append(Item(ident, f"fim:{task}", "test", prefix=row["prefix"],
                              suffix=row["suffix"], required_opcodes=required,
                              reference=row["middle"], seconds=TEST_SECONDS))
        elif kind in ("chat", "instruction"):
            messages = to_messages(row)
            if not messages or messages[-1]["role"] != "assistant":
                continue
            answer = extract_code(messages[-1]["content"])
            if answer is None:
                continue
            required = [opcode] if opcode and all(opcodes_present(answer, [opcode])) else []
            items.append(Item(ident, str(task), "test", messages=messages[:-1],
                              required_opcodes=required, reference=answer,
                              seconds=TEST_SECONDS))
    return items


def round_robin(items: list[Item]) -> list[Item]:
    """All items, interleaved over kinds (first of each kind, then second of each, ...)."""
    by_kind: dict[str, list[Item]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item)
    out: list[Item] = []
    for rank in range(max((len(g) for g in by_kind.values()), default=0)):
        out += [group[rank] for group in by_kind.values() if rank < len(group)]
    return out


def spread(items: list[Item], limit: int | None) -> list[Item]:
    """At most ``limit`` items, taken round-robin over kinds so every kind is represented."""
    if not limit or limit >= len(items):
        return items
    order = {id(item): i for i, item in enumerate(items)}
    return sorted(round_robin(items)[:limit], key=lambda item: order[id(item)])
