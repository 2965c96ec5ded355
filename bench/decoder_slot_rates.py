"""Which argument slots that the manual calls a-rate only or string only does Csound itself take
a number in? The answer is ``CSOUND_TAKES_ANY`` in ``csound_assistant/opcode_args.py`` (the
Csound-aware decoder must never refuse what Csound takes).

For each such (opcode, slot) one statement is built from the synopsis (a-slots ``asig``,
numbers elsewhere, strings in S slots); if it compiles, the same statement with ``1`` (and
with a k variable) in the slot is compiled too. ``csound --syntax-check-only`` runs nothing.

    .venv/bin/python bench/decoder_slot_rates.py            # ~5 min on 2 loaded cores
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from csound_assistant import opcode_args
from csound_assistant.opcode_args import ArgForms

KNOWN = opcode_args.CSOUND_TAKES_ANY
opcode_args.CSOUND_TAKES_ANY = frozenset()  # judge every slot as the manual says

FILLER = {"a": "asig", "k": "1", "i": "1", "S": '"x"', "x": "1"}
OUTPUT = {"a": "aO{}", "k": "kO{}", "i": "iO{}", "S": "SO{}"}
CSD = ("<CsoundSynthesizer>\n<CsInstruments>\nsr=48000\nksmps=64\nnchnls=2\n0dbfs=1\n"
       "instr 1\nasig = a(0)\nkk init 1\n{}\nendin\n</CsInstruments>\n<CsScore>\ni 1 0 1\ne\n"
       "</CsScore>\n</CsoundSynthesizer>\n")


def statement(name, form, rates, slot, value):
    outs = [OUTPUT.get(r) for r in (form.out_rates[:max(form.out_min, 1)] if form.out_max
                                    else ())]
    count = max(form.arg_min, slot + 1)
    if None in outs or count > len(rates) or any(r not in FILLER for r in rates[:count]):
        return None
    args = [value if k == slot else FILLER[rates[k]] for k in range(count)]
    return f"{', '.join(o.format(k) for k, o in enumerate(outs))} {name} {', '.join(args)}"


def compiles(body: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csd"
        path.write_text(CSD.format(body))
        run = subprocess.run(["csound", "--syntax-check-only", "-d", "-+msg_color=0",
                              "-+rtaudio=null", "-+rtmidi=null", str(path)],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return run.returncode == 0 and b"error:" not in run.stderr.lower()


def main() -> int:
    table = ArgForms.from_manual()
    if table is None:
        print("no Csound manual installed (csound-doc)", file=sys.stderr)
        return 1
    cases = {}
    for name, forms in table.forms.items():
        for form, rates in forms:
            outputs = form.out_rates[:1] if form.out_max else ()
            for slot, rate in enumerate(rates):
                only = table.only_audio(name, outputs, slot) if rate == "a" else \
                    rate == "S" and table.refuses(name, outputs, slot, "c")
                base = statement(name, form, rates, slot, FILLER[rate]) if only else None
                if base and (name, slot) not in cases:
                    cases[name, slot] = (base, statement(name, form, rates, slot, "1"))

    def check(case):
        base, number = cases[case]
        return case, compiles(base) and compiles(number)

    with ThreadPoolExecutor(2) as pool:
        takes = sorted(case for case, ok in pool.map(check, cases) if ok)
    print(f"{len(cases)} slots checked; Csound takes a number in {len(takes)}:")
    print(takes)
    print("not yet in CSOUND_TAKES_ANY:", sorted(set(takes) - KNOWN))
    print("in it but not found now:", sorted(KNOWN - set(takes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
