"""What Csound itself takes in each argument slot of each synopsis form: a number, an i, k or
a-rate variable, a string, an fsig. The answer is ``csound_assistant/csound_slot_types.json``,
which the Csound-aware decoder reads (``opcode_args.ArgForms``): a slot of a measured form is
refused exactly what Csound refused there, so ``a1 oscil kamp, kcps, kfn`` (a k variable where
Csound wants an i-time table) or ``pvsynth 0.5`` (a number for an fsig) cannot be written.

For each form (one synopsis line of the installed manual) a statement is built from fillers of
the synopsis' own rates (``asig``, ``kk``, ``ii``, ``"x"``, ``fsig``, a number for
optional-rate names); a form whose filled statement does not compile is left unmeasured (the
decoder then judges it by the loose rule). Then each slot gets each of the six kinds in turn.
Statements are compiled in batches with ``csound --syntax-check-only`` (which runs nothing):
Csound stops at the first error and names its line, so a batch is compiled again without each
failing statement until the rest compile. A form is stored only where Csound differs from the
decoder's loose rule (``opcode_args.loose_slots``) in some slot.

    .venv/bin/python bench/csound_slot_types.py --write   # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from csound_assistant.opcode_args import KINDS, SLOT_TYPES_FILE, ArgForms, form_key, loose_slots

VALUE = {"c": "1", "i": "ii", "k": "kk", "a": "asig", "S": '"x"', "f": "fsig"}
FILLER = {"a": "asig", "k": "kk", "i": "ii", "S": '"x"', "f": "fsig", "x": "1"}
OUTPUT = {"a": "aO", "k": "kO", "i": "iO", "S": "SO", "f": "fO"}
HEAD = ("<CsoundSynthesizer>\n<CsInstruments>\nsr=48000\nksmps=64\nnchnls=2\n0dbfs=1\n"
        "instr 1\nasig = a(0)\nkk init 1\nii init 1\nfsig pvsanal asig, 1024, 256, 1024, 1\n")
TAIL = "endin\n</CsInstruments>\n<CsScore>\ni 1 0 1\ne\n</CsScore>\n</CsoundSynthesizer>\n"
FIRST_LINE = HEAD.count("\n") + 1
BATCH = 120


def statement(name, form, rates, slot, value, tag):
    outs = form.out_rates[:max(form.out_min, 1)] if form.out_max else ()
    if any(r not in OUTPUT for r in outs) or any(r not in FILLER for r in rates):
        return None
    count = max(form.arg_min, slot + 1 if slot is not None else 0)
    if count > len(rates):
        return None
    args = [value if k == slot else FILLER[rates[k]] for k in range(count)]
    names = ", ".join(f"{OUTPUT[r]}{tag}_{k}" for k, r in enumerate(outs))
    return f"{names} {name} {', '.join(args)}".strip()


def compile_errors(lines: list[str], csound: str) -> tuple[bool, int | None]:
    """(compiled, the 0-based index of the failing statement): the line Csound names, taken
    only where its message shows that statement (its tagged output, or its opcode)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csd"
        path.write_text(HEAD + "\n".join(lines) + "\n" + TAIL)
        try:
            run = subprocess.run([csound, "--syntax-check-only", "-d", "-+msg_color=0",
                                  "-+rtaudio=null", "-+rtmidi=null", str(path)],
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return False, None
    err = run.stderr.decode(errors="replace")
    if run.returncode == 0 and "error:" not in err.lower():
        return True, None
    m = re.search(r"[Ll]ine:? (\d+)", err)
    index = int(m.group(1)) - FIRST_LINE if m else -1
    if not 0 <= index < len(lines) or lines[index].split()[0].rstrip(",") not in err:
        return False, None
    return False, index


def passing(lines: list[str], csound: str) -> set[int]:
    """Indices of ``lines`` that compile beside the others that do: a failing statement Csound
    names is dropped and the rest compiled again; where it names none, the group is halved."""
    good: set[int] = set()
    stack = [list(range(len(lines)))]
    while stack:
        group = stack.pop()
        if not group:
            continue
        ok, bad = compile_errors([lines[i] for i in group], csound)
        if ok:
            good.update(group)
        elif bad is not None:
            stack.append(group[:bad] + group[bad + 1:])
        elif len(group) > 1:
            stack += [group[:len(group) // 2], group[len(group) // 2:]]
    return good


def measure(table: ArgForms, csound: str, jobs: int) -> dict:
    bases, cases = {}, {}  # key -> statement; (key, slot, kind) -> statement
    for name, forms in table.forms.items():
        for form, rates in forms:
            key = form_key(name, form, rates)
            base = statement(name, form, rates, None, None, f"b{len(bases)}")
            if base is None or key in bases:
                continue
            bases[key] = base
            for slot in range(len(rates)):
                for kind in KINDS:
                    line = statement(name, form, rates, slot, VALUE[kind], f"c{len(cases)}")
                    if line:
                        cases[key, slot, kind] = line

    def run(items):
        lines = [line for _, line in items]
        good = passing(lines, csound)
        return [(k, i in good) for i, (k, _) in enumerate(items)]

    def batched(mapping, label):
        items = list(mapping.items())
        chunks = [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
        out, started = {}, time.time()
        with ThreadPoolExecutor(jobs) as pool:
            for done, result in enumerate(pool.map(run, chunks), 1):
                out.update(result)
                print(f"\r{label}: {done}/{len(chunks)} batches, {time.time() - started:.0f} s",
                      end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return out

    base_ok = batched(bases, "forms")
    cases = {k: v for k, v in cases.items() if base_ok[k[0]]}
    case_ok = batched(cases, "slots")
    measured: dict[str, list[str]] = {}
    for key in (k for k, ok in base_ok.items() if ok):
        rates = key.split("|")[2]
        slots = ["".join(kind for kind in KINDS if case_ok.get((key, slot, kind), True))
                 for slot in range(len(rates))]
        measured[key] = slots
    return {"forms": len(bases), "measured": sum(base_ok.values()), "slots": measured}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write {SLOT_TYPES_FILE.name}")
    ap.add_argument("--csound", default="csound")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    table = ArgForms.from_manual()
    if table is None:
        print("no Csound manual installed (csound-doc)", file=sys.stderr)
        return 1
    version = subprocess.run([args.csound, "--version"], capture_output=True, text=True)
    version = re.search(r"version (\S+)", version.stdout + version.stderr)
    result = measure(table, args.csound, args.jobs)
    differs = {key: slots for key, slots in result["slots"].items()
               if slots != loose_slots(key)}
    print(f"{result['forms']} forms; {result['measured']} compile filled from their synopsis; "
          f"Csound differs from the loose rule in {len(differs)}")
    if args.write:
        doc = {"csound": version.group(1) if version else "unknown",
               "made_by": "python bench/csound_slot_types.py --write",
               "kinds": "".join(KINDS), "forms": differs}
        tmp = SLOT_TYPES_FILE.with_suffix(".json.tmp")  # a killed write leaves the old table
        tmp.write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
        tmp.replace(SLOT_TYPES_FILE)
        print(f"wrote {SLOT_TYPES_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
