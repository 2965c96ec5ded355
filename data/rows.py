"""Training rows from manual examples and opcode pages, in the four row formats, with varied
phrasing and provenance in ``meta``.

Every function here is pure: it receives code that Csound already accepted (``data/build.py``
checks it through the sandbox) and returns row dicts. Phrasing is picked by a seeded hash of the
row's group and task, so a rebuild gives the same rows.
"""

from __future__ import annotations

import hashlib
import random
import re

from csound_assistant.fix_request import FIX_PROMPTS, fence, fix_input
from csound_assistant.manual import OpcodePage

from . import csdcode
from .examples import Example

MAX_DESCRIPTION_CHARS = 420

WRITE_PROMPTS = [
    "Write a Csound instrument that uses {op} ({summary}).",
    "Show me a complete Csound example that uses the {op} opcode.",
    "How do I use {op} in Csound? Please give me a working .csd file.",
    "I need a Csound patch built around {op}. Can you write one?",
    "Write a CSD that demonstrates {op}{others}.",
    "Give me an example .csd using {op}. Keep it self-contained.",
    "Demonstrate the {op} opcode ({summary}) in a complete Csound file.",
    "I'm learning Csound. Could you write an example that shows how {op} works?",
    "Write a Csound orchestra and score that use {op}{others}.",
    "Can you write a small Csound piece that uses {op}? ({summary})",
]
WRITE_INTROS = [
    "Here is a complete CSD that uses `{op}` ({summary}).",
    "This example is built around `{op}` ({summary}){others}.",
    "Below is a self-contained Csound file that demonstrates `{op}`.",
    "Here is a working example: {described}.",
]
EXPLAIN_PROMPTS = [
    "Explain this Csound instrument.",
    "What does this instrument do?",
    "Walk me through this Csound code line by line.",
    "Can you explain what each line of this instrument does?",
    "I found this instrument in an example. What does it do?",
    "Describe what this Csound instrument computes.",
]
OPCODE_PROMPTS = [
    "What does the {op} opcode do? Show an example.",
    "What is {op} in Csound, and how do I use it?",
    "Explain {op} with a short example.",
    "How does {op} work? Give me a working example.",
    "What is {op} for? An example would help.",
]
SYNTAX_PROMPTS = [
    "What is the syntax of {op}?",
    "What arguments does {op} take?",
    "How do I call the {op} opcode?",
    "Show me the signature of {op} in Csound.",
]
CHAT_OPENERS = [
    "What is {op} used for in Csound?",
    "What does {op} do?",
    "I keep seeing {op} in Csound code. What is it?",
]
CHAT_FOLLOWUPS = [
    "Show me a complete example.",
    "Can you give me a full .csd that uses it?",
    "Great, could you write an example I can run?",
]
ORCHESTRA_PROMPTS = [
    "Write just the instrument definition (no score) for a Csound instrument using {op}.",
    "Give me only the instr ... endin block of an instrument that uses {op}.",
    "Write the orchestra code for an instrument built on {op} ({summary}).",
]
def pick(options: list[str], *key: str) -> str:
    digest = hashlib.sha256("\x00".join(key).encode()).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def rng_for(*key: str) -> random.Random:
    return random.Random(hashlib.sha256("\x00".join(key).encode()).hexdigest())


_PROPER = {"moog", "gaussian", "cauchy", "poisson", "euclidean", "mandelbrot", "runge-kutte",
           "sallen-key", "steiner-parker", "mel", "weibull", "hilbert", "butterworth", "fourier",
           "bessel", "chebyshev", "karplus-strong", "csound", "jack", "lua", "python", "faust"}


def lower_first(text: str) -> str:
    """"A simple oscillator" -> "a simple oscillator"; acronyms ("ATS", "FM", "STKBowed") and
    names ("Moog ladder") keep their case."""
    word = text.split(" ", 1)[0].strip(",.")
    if not word or word.lower() in _PROPER or not (len(word) == 1 or word[1:].islower()):
        return text
    return text[:1].lower() + text[1:]


def is_verb_phrase(summary: str) -> bool:
    """Opcode summaries are noun phrases ("Moog ladder lowpass filter") or start with a verb
    in the third person ("Writes stereo audio ...")."""
    word = summary.split(" ", 1)[0].strip(",.")
    if len(word) < 3 or not word[1:].islower():
        return False
    return word.lower().endswith("s") and not word.lower().endswith(("ss", "us", "is", "ics"))


_BASE_VERBS = set("""read generate get write trace return convert calculate set allow send copy
print modify compute transfer adjust sense extract load save apply trigger distribute change
construct start listen open close break query create delete compress perform analyze analyse
multiply produce scale concatenate compare assign turn declare export distort exit fill enable sum
show view resynthesize resynthesise arpeggiate obtain freeze shift retrieve initialise initialize
mix smooth track retain combine warp reshape select emulate flush take split strip call estimate
activate access""".split())
_DETERMINERS = {"a", "an", "the", "another", "two", "three", "one"}


def describe(op: str, summary: str) -> str:
    """`op` + a predicate: "`outs` writes stereo audio...", "`moogladder` is a Moog ladder...",
    "`sequ` is used to emulate a hardware sequencer"."""
    text = lower_first(summary)
    word = summary.split(" ", 1)[0].strip(",.").lower()
    rest = summary.split(" ", 1)[1] if " " in summary else ""
    if is_verb_phrase(summary) or (word.endswith("ly") and is_verb_phrase(rest)):
        return f"`{op}` {text}"
    if word in _BASE_VERBS or (word.endswith("ly") and len(word) > 4):
        return f"`{op}` is used to {text}"
    if word in ("deprecated", "this", "same", "similar", "can", "opcode"):
        return f"`{op}`: {summary}"
    if word in _DETERMINERS:
        return f"`{op}` is {text}"
    article = "an" if text[:1].lower() in "aeiou" else "a"
    return f"`{op}` is {article} {text}"


def short_description(page: OpcodePage) -> str:
    text = page.description
    if not text or text.rstrip(". ").lower() == page.summary.lower():
        return ""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    out = ""
    for s in sentences:
        if len(out) + len(s) > MAX_DESCRIPTION_CHARS and out:
            break
        out = f"{out} {s}".strip()
    return out


def meta(example: Example | None, task: str, *, group: str, opcode: str | None, category: str,
         **extra) -> dict:
    return {
        "source": f"examples/{example.path.name}" if example else extra.pop("source", None),
        "opcode": opcode, "category": category, "group": group, "task": task, **extra,
    }


def _others(example: Example, skip: set[str], n: int = 2) -> list[str]:
    common = {"out", "outs", "outch", "outc", "print", "prints", "printk", "printks", "init",
              "ftgen"}
    return [o for o in example.opcodes if o not in skip and o not in common][:n]


def after_note(example: Example, render: dict | None) -> str:
    """One sentence after the code: how to run it, or what it needs."""
    category = (render or {}).get("category", "ok")
    if source := (render or {}).get("self_source"):  # data/self_source.py: needs no file
        files = " or ".join(f"`{f}`" for f in source["replaces"])
        return (f"Instead of reading {files}, it makes its own source ({source['with']}), so it "
                "plays without any sound file.")
    files = re.findall(r'"([^"/]+\.(?:wav|aif|aiff|mp3|ogg|flac|sf2|mid|txt|pvx|ats|het|lpc))"',
                       example.code, flags=re.I)
    if files:
        return f"It reads `{files[0]}`, so put that file next to the .csd before running it."
    if category == "realtime":
        return "It needs realtime input (MIDI or audio), so run it with your devices enabled."
    if (render or {}).get("silent"):
        return "It prints its results to the console rather than making sound."
    if re.search(r"^\s*-odac", example.code, flags=re.M):
        return f"Run it with `csound {example.name}.csd`; the `-odac` option plays it in real time."
    return f"Render it with `csound -o {example.name}.wav {example.name}.csd`."


def write_row(example: Example, page: OpcodePage, render: dict | None) -> dict:
    key = (example.name, "write")
    others = _others(example, {page.name})
    others_txt = f" together with {' and '.join(others)}" if others else ""
    fields = dict(op=page.name, summary=page.summary, described=describe(page.name, page.summary),
                  others=others_txt)
    prompt = pick(WRITE_PROMPTS, *key).format(**fields)
    combined = f", combined with {', '.join(f'`{o}`' for o in others)}" if others else ""
    intro = pick(WRITE_INTROS, *key, "intro").format(**{**fields, "others": combined})
    output = f"{intro}\n\n{fence(example.code)}\n\n{after_note(example, render)}"
    return {"instruction": prompt, "input": "", "output": output,
            "meta": meta(example, "write", group=example.group, opcode=page.name,
                         category=page.category, opcodes=example.opcodes, render=render)}


def explain_text(code: str, block: csdcode.Instrument, pages: dict[str, OpcodePage],
                 known: set[str]) -> str:
    sts = csdcode.statements(code, known, block)
    lines = [f"This is instrument {block.name}."]
    pfields = sorted(set(re.findall(r"\bp([4-9]|\d\d)\b", csdcode.block_text(code, block))),
                     key=int)
    if pfields:
        lines[0] += " It reads " + ", ".join(f"p{p}" for p in pfields) + " from the score."
    lines.append("")
    described = 0
    for st in sts:
        page = pages.get(st.opcode)
        if not page or described >= 10:
            continue
        text = code.split("\n")[st.line].strip()
        text = csdcode.code_part(text).strip()
        what = f"- `{text}`: {describe(st.opcode, page.summary)}"
        if st.outputs:
            what += f"; the result goes to `{', '.join(st.outputs)}`"
        lines.append(what + ".")
        described += 1
    outs = [st for st in sts
            if st.opcode.startswith("out") or st.opcode in ("fout", "zaw", "chnset")]
    lines.append("")
    if outs:
        lines.append(f"The instrument sends its signal out with `{outs[-1].opcode}`.")
    else:
        lines.append("It makes no audio output of its own; it works through the statements above.")
    return "\n".join(lines)


def explain_row(example: Example, block: csdcode.Instrument, pages: dict[str, OpcodePage],
                known: set[str]) -> dict | None:
    body = explain_text(example.code, block, pages, known)
    if body.count("\n- ") < 2:
        return None
    return {"instruction": pick(EXPLAIN_PROMPTS, example.name, "explain"),
            "input": fence(csdcode.block_text(example.code, block)), "output": body,
            "meta": meta(example, "explain", group=example.group, opcode=example.opcode,
                         category=example.category, opcodes=example.opcodes)}


def opcode_answer(page: OpcodePage) -> str:
    desc = short_description(page)
    return f"{describe(page.name, page.summary)}." + (f" {desc}" if desc else "")


def opcode_row(page: OpcodePage, example: Example, render: dict | None) -> dict:
    prompt = pick(OPCODE_PROMPTS, page.name, "opcode").format(op=page.name)
    output = (f"{opcode_answer(page)}\n\nHere is a complete example:\n\n{fence(example.code)}\n\n"
              f"{after_note(example, render)}")
    return {"instruction": prompt, "input": "", "output": output,
            "meta": meta(example, "opcode", group=example.group, opcode=page.name,
                         category=page.category, render=render)}


def chat_row(page: OpcodePage, example: Example, render: dict | None) -> dict:
    key = (page.name, "chat")
    messages = [
        {"role": "user", "content": pick(CHAT_OPENERS, *key).format(op=page.name)},
        {"role": "assistant", "content": opcode_answer(page)},
        {"role": "user", "content": pick(CHAT_FOLLOWUPS, *key, "follow")},
        {"role": "assistant", "content": f"Here is a complete CSD that uses `{page.name}`.\n\n"
                                         f"{fence(example.code)}\n\n{after_note(example, render)}"},
    ]
    return {"messages": messages,
            "meta": meta(example, "chat", group=example.group, opcode=page.name,
                         category=page.category, render=render)}


def syntax_row(page: OpcodePage, group: str) -> dict | None:
    if not page.synopsis:
        return None
    forms = "\n".join(f"- `{line}`" for line in page.synopsis[:8] if "\n" not in line)
    if not forms:
        return None
    optional = (" Arguments in square brackets are optional."
                if any("[" in s for s in page.synopsis) else "")
    output = f"`{page.name}` ({lower_first(page.summary)}) is called like this:\n\n{forms}\n\n" \
             f"The first letter of each name gives its rate: i (init), k (control), a (audio), " \
             f"S (string), f (spectral).{optional}"
    return {"instruction": pick(SYNTAX_PROMPTS, page.name, "syntax").format(op=page.name),
            "input": "", "output": output,
            "meta": meta(None, "syntax", group=group, opcode=page.name, category=page.category,
                         source=page.page)}


def orchestra_row(example: Example, page: OpcodePage, block: csdcode.Instrument, block_code: str,
                  render: dict | None) -> dict:
    pfields = sorted(set(re.findall(r"\bp([4-9]|\d\d)\b", block_code)), key=int)
    first = block.name.split(",")[0].strip()
    ident = first if first.isdigit() else f'"{first}"'
    note = ("It reads " + ", ".join(f"p{p}" for p in pfields) + " from the score, so give those "
            f"values on each `i {ident}` line.") if pfields else \
        f"Play it with a score line such as `i {ident} 0 2`."
    prompt = pick(ORCHESTRA_PROMPTS, example.name, "orc").format(op=page.name, summary=page.summary)
    output = f"Here is the instrument, using `{page.name}`.\n\n{fence(block_code)}\n\n{note}"
    return {"instruction": prompt, "input": "", "output": output,
            "meta": meta(example, "orchestra", group=example.group, opcode=page.name,
                         category=page.category, render=render)}


def completion_row(example: Example, block: csdcode.Instrument) -> dict:
    lines = example.code.split("\n")
    prompt = "\n".join(lines[: block.start + 1]) + "\n"
    return {"prompt": prompt, "completion": example.code[len(prompt):],
            "meta": meta(example, "complete", group=example.group, opcode=example.opcode,
                         category=example.category)}


FIM_KINDS = ("fim-line", "fim-expression")  # the cuts the main job makes today
# Cursor positions editors ask at that the two above never show (issue 26): after an output
# variable, inside an argument list, inside <CsScore>, in a loose .orc/.udo file, at the end of
# a file (empty suffix). ``data build`` makes them when asked to (rows.fim_rows ``kinds``).
NEW_FIM_KINDS = ("fim-opcode", "fim-argument", "fim-score", "fim-snippet", "fim-eof")
CONTEXT_CHARS = 1500  # one input_extra chunk at most (llama.vscode sends 64-line chunks)


def fim_context_pool(examples: list[Example], known: set[str]) -> list[dict]:
    """Repository context to draw from: each example's main instrument (an ``.orc`` chunk) or
    its user-defined opcodes (a ``.udo`` chunk), in llama.cpp's ``input_extra`` shape plus the
    opcodes it uses and its group (a row never gets its own example's code as context)."""
    pool = []
    for ex in examples:
        block = csdcode.main_instrument(ex.code, ex.opcode, known)
        found = csdcode.snippet(ex.code, block)
        if found is None or len(found[1]) > CONTEXT_CHARS:
            continue
        ext, text = found
        opcodes = {w for w in re.findall(r"[A-Za-z_]\w*", text) if w in known}
        pool.append({"filename": f"{ex.name}.{ext}", "text": text, "opcodes": opcodes,
                     "group": ex.group})
    return pool


def fim_context(pool: list[dict], group: str, middle: str, rng: random.Random) -> list[dict]:
    """One or two chunks for a row: where the pool has one, another file that uses an opcode of
    the middle (context that helps), and a file that does not (context to ignore), in a
    random order, as an editor gathers recently opened files."""
    others = [c for c in pool if c["group"] != group]
    if not others:
        return []
    wanted = set(re.findall(r"[A-Za-z_]\w*", middle))
    useful = [c for c in others if c["opcodes"] & wanted]
    chosen = [rng.choice(useful)] if useful else []
    unrelated = [c for c in others if not c["opcodes"] & wanted]
    if unrelated and (not chosen or rng.random() < 0.5):
        chosen.append(rng.choice(unrelated))
    rng.shuffle(chosen)
    return [{"filename": c["filename"], "text": c["text"]} for c in chosen]


def _new_cut(kind: str, example: Example, known: set[str], block, sts, rng):
    """(prefix, middle, suffix, extra meta) of one of NEW_FIM_KINDS, or None."""
    code = example.code
    if kind == "fim-opcode":
        outs = [st for st in sts if st.outputs]
        return (csdcode.fim_opcode_split(code, rng.choice(outs)), {}) if outs else None
    if kind == "fim-argument":
        with_args = [st for st in sts if st.args]
        return (csdcode.fim_argument_split(code, rng.choice(with_args), rng), {}) \
            if with_args else None
    if kind == "fim-score":
        return csdcode.fim_score_split(code, rng), {}
    if kind == "fim-eof":
        return csdcode.fim_end_split(code, rng), {}
    found = csdcode.snippet(code, block)  # fim-snippet: a cut inside a loose .orc/.udo file
    if found is None:
        return None
    ext, text = found
    inner = csdcode.statements(text, known)
    if not inner:
        return None
    how = rng.choice(["fim-line", "fim-opcode", "fim-argument", "fim-eof"])
    st = rng.choice(inner)
    cut = {"fim-line": lambda: csdcode.fim_line_split(text, st, rng.choice([1, 1, 2])),
           "fim-opcode": lambda: csdcode.fim_opcode_split(text, st),
           "fim-argument": lambda: csdcode.fim_argument_split(text, st, rng),
           "fim-eof": lambda: csdcode.fim_end_split(text, rng)}[how]()
    return cut, {"file": ext, "cursor": how}


def fim_rows(example: Example, known: set[str], cuts: int = 1, kinds=FIM_KINDS,
             context: list[dict] | None = None, context_share: float = 0.0) -> list[dict]:
    """One line-level and one expression-level split inside the example's main instrument, and
    with ``cuts`` N up to N of each at different statements. An editor asks for a middle
    anywhere in a file, and one cut per example shows the model one place per file; the extra
    cuts (``meta.cut`` 1..N-1) are training material only: ``data split`` keeps them out of
    validation and test, whose rows stay the first cut's whatever N is.

    ``kinds`` adds cuts of NEW_FIM_KINDS (one each per cut, where the code has the place);
    with a ``context`` pool (``fim_context_pool``), ``context_share`` of the rows carry
    repository context in ``input_extra``. The defaults make today's rows, byte for byte."""
    block = csdcode.main_instrument(example.code, example.opcode, known)
    if block is None:
        return []
    sts = csdcode.statements(example.code, known, block)
    if not sts:
        return []
    rows, seen = [], set()
    with_args = [s for s in sts if s.args]
    for cut in range(cuts):
        rng = rng_for(example.name, "fim" if cut == 0 else f"fim{cut}")
        st = rng.choice(sts)
        n_lines = rng.choice([1, 1, 2, 3])
        prefix, middle, suffix = csdcode.fim_line_split(example.code, st, n_lines)
        if "fim-line" in kinds and middle.strip() and ("fim-line", middle, len(prefix)) not in seen:
            rows.append(("fim-line", prefix, middle, suffix, cut, {}))
            seen.add(("fim-line", middle, len(prefix)))
        if with_args and "fim-expression" in kinds:
            st = (next((s for s in with_args if s.opcode == example.opcode), rng.choice(with_args))
                  if cut == 0 else rng.choice(with_args))
            prefix, middle, suffix = csdcode.fim_expression_split(example.code, st)
            if middle.strip() and ("fim-expression", middle, len(prefix)) not in seen:
                rows.append(("fim-expression", prefix, middle, suffix, cut, {}))
                seen.add(("fim-expression", middle, len(prefix)))
        for kind in NEW_FIM_KINDS:
            if kind not in kinds:
                continue
            made = _new_cut(kind, example, known, block, sts, rng_for(example.name, kind, str(cut)))
            if not made or not made[0]:
                continue
            (prefix, middle, suffix), extra = made
            if middle.strip() and (kind, middle, len(prefix)) not in seen:
                rows.append((kind, prefix, middle, suffix, cut, extra))
                seen.add((kind, middle, len(prefix)))
    out = []
    for task, p, m, s, cut, extra in rows:
        row = {"prefix": p, "middle": m, "suffix": s}
        rng = rng_for(example.name, task, str(cut), "context")
        if context and rng.random() < context_share:
            if chunks := fim_context(context, example.group, m, rng):
                row["input_extra"] = chunks
        row["meta"] = meta(example, task, group=example.group, opcode=example.opcode,
                           category=example.category, **({"cut": cut} if cut else {}), **extra)
        out.append(row)
    return out


def fix_row(example: Example, breakage: csdcode.Breakage, error: str) -> dict:
    prompt = pick(FIX_PROMPTS, example.name, breakage.kind)
    output = f"{breakage.explanation}\n\n{fence(example.code)}"
    return {"instruction": prompt,
            "input": fix_input(breakage.code, error),
            "output": output,
            "meta": meta(example, f"fix-{breakage.kind}", group=example.group,
                         opcode=example.opcode, category=example.category, bug=breakage.kind,
                         error=error.strip(), bug_line=breakage.line)}


_FENCED = re.compile(r"```csound\n(.*?)\n```", re.S)


def code_answers(row: dict) -> list[str]:
    """The Csound code a row asks the model to produce: fenced answers, completions, FIM wholes."""
    if "messages" in row:
        texts = [m.get("content", "") for m in row["messages"] if m.get("role") == "assistant"]
        return [c for t in texts if isinstance(t, str) for c in _FENCED.findall(t)]
    if "output" in row:
        return _FENCED.findall(row["output"]) if isinstance(row["output"], str) else []
    if "completion" in row:
        return [row["prompt"] + row["completion"]]
    if "middle" in row:
        return [row["prefix"] + row["middle"] + row["suffix"]]
    return []
