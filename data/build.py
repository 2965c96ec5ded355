"""``csound-assistant data build``: a Csound-verified training set from the installed manual.

Top to bottom: read the manual; render every example CSD briefly with Csound in the sandbox (a
render parses and type-checks first, so it doubles as the compile check; a syntax-only check
settles the cases a render cannot); propose instrument fragments and broken variants and verify
them the same way; turn what survived into rows; confirm every code answer compiled; write
``rows.jsonl`` and ``record.json`` (counts by reason) into the stage folder atomically.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import resource
import time
from pathlib import Path

from csound_assistant.artifacts import stage_output
from csound_assistant.errors import DataError
from csound_assistant.manual import DEFAULT_MANUAL_DIR
from csound_assistant.prompt_format import row_kind
from csound_assistant.stage_records import Data

from . import csdcode, minimal, patches, rows, self_source
from .examples import Example, load_manual, opcodes_used
from .validate import CHARS_PER_TOKEN, row_text
from .verify import PROVEN_BY_RENDER, Verifier

ROWS_NAME = "rows.jsonl"
RENDER_SECONDS = 1.0
MAX_CODE_CHARS = 5000  # longer examples still count, but make no code-answer rows
MAX_FIX_CHARS = 3500
FIM_CUTS = 1  # FIM splits of each kind per example (data/rows.py fim_rows)
FIXES_PER_EXAMPLE = 1  # kinds rotate over examples; 2 doubles the fix rows and the check time
# Examples that read a sound file the user lacks become variants that make their own source
# (data/self_source.py) where one plays: a demanding user expects answers that play (issue 24)
SELF_SOURCE = True
QUIETER = 0.25  # the level of a second try at a variant that clipped
# Render outcomes that keep a compiling example (flagged in meta.render); others drop it.
KEEP_RENDER = {"ok", "silent", "clipping", "needs-input-file", "realtime", "gui", "timeout"}
# Render outcomes after which a syntax check decides whether the example compiled.
CHECK_AFTER_RENDER = {"needs-input-file", "timeout", "crash"}
LICENSE = "GFDL-1.2-or-later"
ATTRIBUTION = ("Derived from The Canonical Csound Reference Manual (Debian package csound-doc), "
               "GNU Free Documentation License 1.2 or later, no Invariant Sections, no "
               "Front-Cover Texts, no Back-Cover Texts.")


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _render_flags(render: dict) -> dict:
    return {k: render.get(k) for k in ("category", "peak", "silent", "clipping", "nan")}


def build_dataset(out_dir: str | Path, *, manual_dir: str | Path = DEFAULT_MANUAL_DIR,
                  limit: int | None = None, workers: int = 2, force: bool = False,
                  cache_dir: str | Path | None = None, use_cache: bool = True,
                  fixes_per_example: int = FIXES_PER_EXAMPLE, fim_cuts: int = FIM_CUTS,
                  fim_kinds: tuple = rows.FIM_KINDS, fim_context_share: float = 0.0,
                  max_tokens: int | None = 2048,
                  strip_comments: bool = False, patch_count: int = patches.COUNT,
                  self_source: bool = SELF_SOURCE, progress: bool = False, log=print) -> dict:
    """Build ``out_dir/rows.jsonl`` + ``record.json``; return the record.

    ``limit`` keeps N manual examples spread over the manual (quick runs and tests);
    ``strip_comments`` drops the examples' comments (shorter answers for small models);
    ``self_source`` puts self-sourcing variants in place of examples that read a sound file.
    Verdicts are cached by content (``cache_dir``), so a rebuild only re-checks what changed.
    """
    t0, cpu0, load0 = time.monotonic(), _cpu_seconds(), os.getloadavg()[0]
    out_dir = Path(out_dir)
    patch_count = min(patch_count, limit) if limit else patch_count  # quick builds: a few
    if out_dir.exists() and not force:
        raise DataError(f"{out_dir} already exists; pass --force to rebuild it")
    manual = load_manual(manual_dir, limit=limit, strip_comments=strip_comments)
    known, pages = manual.known, manual.pages
    synopses = {name: page.synopsis for name, page in pages.items()}
    verifier = Verifier(workers=workers, cache_dir=cache_dir, use_cache=use_cache,
                        progress=progress)
    assets = _manual_assets(manual.directory)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    # 1. every example: render it (a render compiles first, so it is also the compile check);
    #    where the render cannot tell whether it compiled, check it
    examples = list(manual.examples.values())
    log(f"rendering {len(examples)} manual examples with Csound ({RENDER_SECONDS:g} s each, "
        f"{workers} workers)")
    renders = verifier.render([ex.code for ex in examples], RENDER_SECONDS, "render examples",
                              assets)
    unsure = [ex.code for ex, r in zip(examples, renders) if r["category"] in CHECK_AFTER_RENDER]
    checks = dict(zip(unsure, verifier.check(unsure, "check examples")))
    good: list[tuple[Example, dict]] = []
    compiled = 0
    for ex, r in zip(examples, renders):
        category = r["category"]
        counts["example_render"][category] += 1
        check = checks.get(ex.code)
        if check is not None and not check["ok"]:
            counts["example_dropped"][check["category"]] += 1
            continue
        if (check is not None or category in PROVEN_BY_RENDER
                or category in ("nan", "runtime-error")):
            compiled += 1  # an init/performance error or NaN comes after a successful compile
        if r.get("nan") or category not in KEEP_RENDER:
            counts["example_dropped"][category] += 1
        else:
            good.append((ex, _render_flags(r)))
    if self_source:
        good = _self_sourced(good, manual, verifier, counts)
    good, aliases = _dedupe_and_group(good, known, counts)

    # 2. orchestra fragments (the main instrument alone) and broken variants, verified
    fragments = _fragments(good, known, verifier, counts, assets)
    fixes = _fixes(good, known, synopses, verifier, counts, fixes_per_example)

    # 3. rows
    # a limited (quick) build makes page rows only for the opcodes its examples are about
    page_names = {ex.opcode for ex in examples} if limit else set(manual.pages)
    out_rows = _make_rows(good, aliases, fragments, fixes, manual, page_names, counts,
                          fim_cuts, fim_kinds, fim_context_share)
    out_rows += _minimal_rows(manual, page_names, out_rows, verifier, counts, assets)
    out_rows += _patch_rows(patch_count, verifier, counts, assets)
    sourced = {f"examples/{ex.path.name}": render["self_source"] for ex, render in good
               if "self_source" in render}
    for row in out_rows:  # every row made from a variant says what stands in for the file
        if row["meta"].get("source") in sourced:
            row["meta"]["self_source"] = sourced[row["meta"]["source"]]

    # 4. every code answer once more: it must compile, and carry its render flags
    answers = [(i, code) for i, row in enumerate(out_rows) for code in rows.code_answers(row)]
    log(f"final check of {len(answers)} code answers")
    # render first: a render that ran proves the compile, so only the rest need a syntax check
    final_render = verifier.render([code for _, code in answers], RENDER_SECONDS, "final render",
                                   assets)
    final = verifier.compiles([code for _, code in answers], RENDER_SECONDS, assets, "final check")
    bad = set()
    for (i, _), c, r in zip(answers, final, final_render):
        if not c["ok"] or r.get("nan"):
            bad.add(i)
            counts["row_dropped"]["answer-failed-final-check"] += 1
        elif "render" not in out_rows[i]["meta"]:
            out_rows[i]["meta"]["render"] = _render_flags(r)
    out_rows = [row for i, row in enumerate(out_rows) if i not in bad]
    seen = set()
    for i, row in enumerate(out_rows):  # a different question about the same code stays
        key = json.dumps({k: v for k, v in row.items() if k != "meta"}, sort_keys=True)
        if key in seen:
            bad.add(-1 - i)
            counts["row_dropped"]["duplicate"] += 1
        seen.add(key)
    out_rows = [row for i, row in enumerate(out_rows) if -1 - i not in bad]
    if max_tokens:  # estimated from characters: rows a training context cannot hold
        limit_chars = max_tokens * CHARS_PER_TOKEN
        long = [len(row_text(row)) > limit_chars for row in out_rows]
        counts["row_dropped"]["too-long"] += sum(long)
        out_rows = [row for row, too_long in zip(out_rows, long) if not too_long]
    if not out_rows:
        raise DataError("no rows survived verification: is Csound installed (`csound --version`)?")

    by_task = collections.Counter(row["meta"]["task"] for row in out_rows)
    by_format = collections.Counter(row_kind(row) for row in out_rows)
    categories = collections.Counter(row["meta"]["category"] for row in out_rows)
    opcodes = collections.Counter(row["meta"]["opcode"] for row in out_rows
                                  if row["meta"]["opcode"])
    wall, cpu = time.monotonic() - t0, _cpu_seconds() - cpu0
    with stage_output(out_dir, force=force) as tmp:
        with open(tmp / ROWS_NAME, "w") as fh:
            for row in out_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        record = Data.write(
            tmp, rows=len(out_rows), rows_file=ROWS_NAME,
            code_answers_checked=len(answers),
            rows_with_code=sum(1 for row in out_rows if rows.code_answers(row)),
            rows_by_task=dict(sorted(by_task.items())), rows_by_format=dict(by_format),
            examples={"total": len(examples), "compiled": compiled, "used": len(good)},
            counts={k: dict(sorted(v.items())) for k, v in counts.items()},
            categories=dict(categories.most_common()), opcodes=dict(opcodes.most_common()),
            eval_opcodes=_eval_opcodes(good, pages),
            manual_dir=str(manual.directory), limit=limit, strip_comments=strip_comments,
            workers=workers,
            fixes_per_example=fixes_per_example, fim_cuts=fim_cuts, max_tokens=max_tokens,
            self_source=self_source,
            **({"fim_kinds": list(fim_kinds), "fim_context_share": fim_context_share}
               if (tuple(fim_kinds), fim_context_share) != (rows.FIM_KINDS, 0.0) else {}),
            patches={"candidates": patch_count, "seed": patches.SEED},
            render_seconds=RENDER_SECONDS,
            cache={"hits": verifier.hits, "misses": verifier.misses,
                   "path": str(verifier.cache_path) if verifier.cache_path else None},
            wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1),
            load_average={"start": round(load0, 1), "end": round(os.getloadavg()[0], 1),
                          "cores": os.cpu_count()},
            license=LICENSE, attribution=ATTRIBUTION,
        )
    return record


def _self_sourced(good, manual, verifier, counts) -> list[tuple[Example, dict]]:
    """``good`` with each example that reads a sound file replaced by its self-sourcing variant
    (``data/self_source.py``) where the variant renders cleanly and audibly *without* the
    manual's files and the request does not ask for a file. Counted in ``counts["self_source"]``
    by outcome, and in ``counts["self_source_plays"]`` by what was replaced."""
    proposals: dict[int, self_source.Variant] = {}
    for i, (ex, _) in enumerate(good):
        if not self_source.reads_file(ex.code):
            continue
        try:
            proposals[i] = self_source.variant(ex.code)
        except self_source.NotConverted as exc:
            counts["self_source"][f"not-converted:{exc.reason}"] += 1
    # no assets: a variant that still reads a file fails here as it would for the user
    renders = dict(zip(proposals, verifier.render([v.code for v in proposals.values()],
                                                  RENDER_SECONDS, "self-sourcing variants")))
    quieter = {i: self_source.variant(good[i][0].code, QUIETER) for i, r in renders.items()
               if r["category"] == "clipping"}  # a steady source can be louder than the file
    again = verifier.render([v.code for v in quieter.values()], RENDER_SECONDS,
                            "quieter self-sourcing variants")
    for (i, found), r in zip(quieter.items(), again):
        if r["category"] == "ok":
            proposals[i], renders[i] = found, r
            counts["self_source"]["quieter-try-plays"] += 1
    out = list(good)
    for i, found in proposals.items():
        ex, r = good[i][0], renders[i]
        for what, n in found.replaced.items():
            counts["self_source_tried"][what] += n
        if r["category"] != "ok":
            counts["self_source"][f"variant-{r['category']}"] += 1
            continue
        for what, n in found.replaced.items():
            counts["self_source_plays"][what] += n
        used = opcodes_used(found.code, manual.known)
        page = manual.pages.get(ex.opcode or "")
        if self_source.asks_for_file(ex.opcode, page.summary if page else "", used,
                                     manual.known):
            counts["self_source"]["original-kept:asks-for-a-file"] += 1
            continue
        counts["self_source"]["replaced"] += 1
        out[i] = (dataclasses.replace(ex, code=found.code, opcodes=used),
                  _render_flags(r) | {"self_source": found.description})
    return out


def _dedupe_and_group(good, known, counts) -> tuple[list, dict[str, str]]:
    """Drop examples whose code repeats another's; give examples that share their main
    instrument one group, so that ``data split`` keeps the shared code on one side."""
    from .verify import normalize

    by_code, kept, aliases = {}, [], {}
    for ex, render in good:
        key = normalize(ex.code)
        if key in by_code:
            counts["example_dropped"]["duplicate-of-another-example"] += 1
            aliases[ex.name] = by_code[key]
            continue
        by_code[key] = ex.name
        kept.append((ex, render))
    by_block: dict[str, str] = {}
    for ex, _ in kept:
        block = csdcode.main_instrument(ex.code, ex.opcode, known)
        if block is None:
            continue
        text = re.sub(r"\s+", " ", csdcode.strip_code_comments(csdcode.block_text(ex.code, block)))
        ex.group = by_block.setdefault(text, ex.name)
        if ex.group != ex.name:
            counts["example_grouped"]["shares-an-instrument-with-another"] += 1
    return kept, aliases


def _fragments(good, known, verifier, counts, assets) -> dict[str, tuple]:
    """Example name -> (block, its code, render flags) for main instruments that compile and
    sound on their own (the sandbox wraps them with a header and a score line)."""
    proposals = {}
    for ex, _ in good:
        block = csdcode.main_instrument(ex.code, ex.opcode, known)
        if block is None:
            continue
        text = csdcode.block_text(ex.code, block)
        if len(text) > MAX_CODE_CHARS or not csdcode.self_contained(ex.code, text):
            counts["fragment"]["skipped-not-self-contained"] += 1
            continue
        proposals[ex.name] = (block, text)
    # a render compiles first, so it also reports syntax errors; the kept ones are checked
    # once more with every other answer at the end
    renders = verifier.render([t for _, t in proposals.values()], RENDER_SECONDS,
                              "render fragments", assets)
    kept = {}
    for (name, (block, text)), r in zip(proposals.items(), renders):
        if r["category"] == "ok" and not r["silent"] and not r["nan"]:
            kept[name] = (block, text, _render_flags(r))
        else:
            counts["fragment"][f"render-{r['category']}"] += 1
    counts["fragment"]["kept"] = len(kept)
    return kept


def _fixes(good, known, synopses, verifier, counts, per_example: int) -> dict[str, list[tuple]]:
    """Example name -> [(breakage, Csound's error)] for breakages that really fail."""
    candidates: dict[str, list[csdcode.Breakage]] = {}
    for ex, _ in good:
        if len(ex.code) > MAX_FIX_CHARS:
            continue
        found = csdcode.breakages(ex.code, ex.opcode, known, synopses)
        # rotate the preferred kinds so every kind is well represented
        start = sum(map(ord, ex.name)) % len(csdcode.BREAKERS)
        order = csdcode.BREAKERS[start:] + csdcode.BREAKERS[:start]
        found.sort(key=lambda b: order.index(b.kind))
        candidates[ex.name] = found
    verified: dict[str, list[tuple]] = collections.defaultdict(list)
    for round_ in range(2):  # second round: fall back to other kinds where the first ones compiled
        batch = []
        for name, found in candidates.items():
            need = per_example - len(verified[name])
            take = found[:need] if round_ == 0 else found[per_example:][:need]
            batch += [(name, b) for b in take]
        results = verifier.check([b.code for _, b in batch],
                                 f"check broken variants ({round_ + 1})")
        for (name, b), c in zip(batch, results):
            counts["fix_proposed"][b.kind] += 1
            if c["ok"]:
                counts["fix_rejected_still_compiles"][b.kind] += 1
            elif c["category"] in ("timeout", "crash", "refused") or not c["error"]:
                counts["fix_rejected_no_error"][b.kind] += 1
            else:
                verified[name].append((b, c["error"]))
                counts["fix_verified"][b.kind] += 1
    return verified


def _make_rows(good, aliases, fragments, fixes, manual, page_names, counts,
               fim_cuts: int = FIM_CUTS, fim_kinds: tuple = rows.FIM_KINDS,
               fim_context_share: float = 0.0) -> list[dict]:
    pages, known = manual.pages, manual.known
    pool = rows.fim_context_pool([ex for ex, _ in good], known) if fim_context_share else None
    out: list[dict] = []
    page_example: dict[str, tuple[Example, dict]] = {}
    good_by_name = {ex.name: (ex, r) for ex, r in good}
    for page in pages.values():
        for name in page.examples:
            name = name.removesuffix(".csd")
            hit = good_by_name.get(aliases.get(name, name))
            if hit and len(hit[0].code) <= MAX_CODE_CHARS:
                page_example[page.name] = hit
                break
    for ex, render in good:
        page = pages.get(ex.opcode or "")
        small = len(ex.code) <= MAX_CODE_CHARS
        if not small:
            counts["example_skipped"]["too-long-for-code-rows"] += 1
        block = csdcode.main_instrument(ex.code, ex.opcode, known)
        if page and small:
            out.append(rows.write_row(ex, page, render))
        if block is not None and (row := rows.explain_row(ex, block, pages, known)):
            out.append(row)
        if page and ex.name in fragments:
            fblock, text, frender = fragments[ex.name]
            out.append(rows.orchestra_row(ex, page, fblock, text, frender))
        if small and block is not None:
            out.append(rows.completion_row(ex, block))
            out += rows.fim_rows(ex, known, fim_cuts, fim_kinds, pool, fim_context_share)
        for breakage, error in fixes.get(ex.name, []):
            out.append(rows.fix_row(ex, breakage, error))
    for page in pages.values():
        if page.name not in page_names:
            continue
        hit = page_example.get(page.name)
        group = hit[0].group if hit else f"page:{page.name}"
        if hit:
            ex, render = hit
            use_chat = rows.pick([True, False], page.name, "chat-or-instruction")
            out.append((rows.chat_row if use_chat else rows.opcode_row)(page, ex, render))
        if page.name in known and (row := rows.syntax_row(page, group)):
            out.append(row)
    return out


def _minimal_rows(manual, page_names, out_rows, verifier, counts, assets) -> list[dict]:
    """A minimal CSD per opcode (``data/minimal.py``), kept when it renders audibly without
    clipping. Each goes in its opcode's split group (that of its syntax row), so an opcode whose
    example is held out for testing has its minimal program held out too."""
    groups = {r["meta"]["opcode"]: r["meta"]["group"] for r in out_rows
              if r["meta"]["task"] == "syntax"}
    pages = [manual.pages[name] for name in sorted(page_names & manual.known)
             if name in manual.pages]
    candidates = [(page, code) for page in pages if (code := minimal.program(page))]
    renders = verifier.render([code for _, code in candidates], RENDER_SECONDS,
                              "minimal programs", assets)
    kept = []
    for (page, code), render in zip(candidates, renders):
        counts["minimal_render"][render["category"]] += 1
        if render["category"] == "ok":
            group = groups.get(page.name, f"page:{page.name}")
            kept.append(minimal.row(page, code, group, _render_flags(render)))
    return kept


def _patch_rows(n: int, verifier, counts, assets) -> list[dict]:
    """``n`` patches (``data/patches.py``), kept when they render audibly without clipping.
    They name no sound files, but rendering with the same ``assets`` as the final check of
    every answer lets that check reuse these renders (the cache key includes the assets)."""
    candidates = patches.candidates(n, seed=patches.SEED)
    codes = [patches.program(p) for p in candidates]
    renders = verifier.render(codes, RENDER_SECONDS, "patches", assets)
    kept = []
    for p, code, render in zip(candidates, codes, renders):
        counts["patch_render"][render["category"]] += 1
        if render["category"] == "ok":
            kept.append(patches.row(p, code, _render_flags(render), patches.SEED))
    return kept


def _manual_assets(manual_dir: Path) -> dict:
    """The sound and table files beside the manual's examples (fox.wav, ...), which the
    sandbox stages for an example that names them."""
    from csound_assistant import sandbox

    finder = getattr(sandbox, "manual_assets", None)
    return finder(manual_dir / "examples") if finder else {}


def _eval_opcodes(good, pages) -> list[dict]:
    """Opcodes with a working manual example, by category: prompts for the eval stage."""
    seen, out = set(), []
    for ex, render in good:
        page = pages.get(ex.opcode or "")
        if (page and page.name not in seen and render.get("category") == "ok"
                and not render.get("silent")):
            seen.add(page.name)
            out.append({"opcode": page.name, "category": page.category, "summary": page.summary,
                        "example": ex.name})
    return sorted(out, key=lambda d: (d["category"], d["opcode"]))
