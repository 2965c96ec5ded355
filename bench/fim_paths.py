"""The FIM benchmark (eval/natural/fim_*.jsonl) through each path an editor's completion takes
to the packaged GGUF (issue 26's FIM table): compile@1 per path and per cursor kind.

    nice .venv/bin/python bench/fim_paths.py runs/default/export/csound-assistant.Q8_0.gguf \
        --package runs/default/package --tasks eval/natural/fim_dev.jsonl --out bench/results/fim

Paths (each answer greedy, scored by the eval's own judge, ``eval.runner.score_answer``):
- ``infill``: our ``/infill`` (llama.vscode) on the real server app, in-process, with the lookups
  the GGUF asks for and the FIM trimming (runtime/fim_trim.py);
- ``infill-extra``: the same with ``input_extra``: two other items' files, as llama.vscode sends
  chunks of recently opened files;
- ``v1-suffix``: our ``/v1/completions`` with ``suffix`` (Continue's OpenAI provider without a
  template, Tabby-style clients);
- ``continue``: the prompt Continue builds from the generated config's ``promptTemplates.
  autocomplete``, sent to ``/v1/completions`` without ``suffix`` (no lookups, no trimming; the
  config's stop words);
- ``ollama``: the Modelfile's TEMPLATE rendered by Go's text/template as Ollama's /api/generate
  does (tests/gotemplate: Ollama sends a request with an empty suffix, a cursor at the end of
  the file, through the TEMPLATE's chat values), sent raw to llama.cpp with the Modelfile's stop
  words (no lookups, no trimming); it prints how many requests rendered as FIM and as chat.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from modelfiles_helpers import GoTemplate, build_gotemplate  # noqa: E402

from csound_assistant.data import csdcode  # noqa: E402
from csound_assistant.editors.continue_config import render_autocomplete  # noqa: E402
from csound_assistant.eval.models import Generation  # noqa: E402
from csound_assistant.eval.natural_fim import CURSORS, cursor_of  # noqa: E402
from csound_assistant.eval.runner import evaluate_model  # noqa: E402
from csound_assistant.eval.tasks import load_tasks  # noqa: E402
from csound_assistant.prompt_format import get_format  # noqa: E402
from csound_assistant.stage_records import Package  # noqa: E402

PATHS = ("infill", "infill-extra", "v1-suffix", "continue", "ollama")
N_CTX = 2048


class ServerPaths:
    """The eval's model interface (``fim``) over the real server app, one route per label."""

    def __init__(self, client, label: str, extra: dict[str, list[dict]], continue_entry: dict):
        self.client, self.label, self.extra = client, label, extra
        self.template = continue_entry["promptTemplates"]["autocomplete"]
        self.stop = continue_entry.get("defaultCompletionOptions", {}).get("stop", [])
        self.item_by_prefix: dict[tuple[str, str], str] = {}

    def fim(self, prefix, suffix, *, max_tokens, temperature, seed, repeat_penalty):
        started = time.perf_counter()
        common = {"temperature": temperature, "seed": seed, "repeat_penalty": repeat_penalty}
        if self.label.startswith("infill"):
            body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": max_tokens,
                    "cache_prompt": False, **common}
            if self.label == "infill-extra":
                body["input_extra"] = self.extra[self.item_by_prefix[prefix, suffix]]
            out = self.client.post("/infill", json=body).json()
            return Generation(out["content"], time.perf_counter() - started,
                              out["tokens_predicted"])
        if self.label == "v1-suffix":
            body = {"prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, **common}
        else:  # continue
            body = {"prompt": render_autocomplete(self.template, prefix, suffix),
                    "max_tokens": max_tokens, "stop": self.stop, **common}
        out = self.client.post("/v1/completions", json=body).json()
        return Generation(out["choices"][0]["text"], time.perf_counter() - started,
                          out["usage"]["completion_tokens"])


class OllamaPath:
    """The Modelfile's TEMPLATE rendered as Ollama renders /api/generate, sent raw."""

    label = "ollama"

    def __init__(self, gguf: Path, threads: int, package: Package, renderer: GoTemplate):
        from csound_assistant.llamacpp import load

        self.llm = load().Llama(model_path=str(gguf), n_ctx=N_CTX, n_threads=threads,
                                verbose=False, flash_attn=False)
        commands = renderer.run([{"modelfile": package.modelfile.read_text()}])[0]["commands"]
        self.template = next(c["args"] for c in commands if c["name"] == "template")
        self.system = next((c["args"] for c in commands if c["name"] == "system"), "")
        self.stop = [c["args"] for c in commands if c["name"] == "stop"]
        self.renderer = renderer
        self.fim_prefix = get_format(package.prompt_format).fim_prefix
        # How the TEMPLATE rendered each request: an end-of-file cursor (empty suffix) that
        # took the chat branch is answered in prose.
        self.rendered_as: collections.Counter = collections.Counter()

    def fim(self, prefix, suffix, *, max_tokens, temperature, seed, repeat_penalty):
        (result,) = self.renderer.run([{"template": self.template, "system": self.system,
                                        "generate": {"prompt": prefix, "suffix": suffix}}])
        if "error" in result:
            raise SystemExit(f"the Modelfile's TEMPLATE does not render: {result['error']}")
        self.rendered_as["fim" if result["prompt"].startswith(self.fim_prefix) else "chat"] += 1
        started = time.perf_counter()
        out = self.llm.create_completion(result["prompt"], max_tokens=max_tokens,
                                         temperature=temperature, seed=seed,
                                         repeat_penalty=repeat_penalty, stop=self.stop)
        return Generation(out["choices"][0]["text"], time.perf_counter() - started,
                          out["usage"]["completion_tokens"])


def context_chunks(items) -> dict[str, list[dict]]:
    """For each item, the instruments (or UDOs) of the next two items' files as input_extra."""
    files = []
    for item in items:
        code = item.prefix + item.reference + item.suffix
        blocks = csdcode.instruments(code)
        found = csdcode.snippet(code, blocks[0] if blocks else None)
        files.append({"filename": f"{item.id}.{found[0]}", "text": found[1]} if found else None)
    out = {}
    for n, item in enumerate(items):
        others = [files[(n + k) % len(items)] for k in (1, 2)]
        out[item.id] = [f for f in others if f]
    return out


def table(results: dict[str, list[dict]]) -> str:
    kinds = [c for c in CURSORS if any(cursor_of(r["id"]) == c for rs in results.values()
                                         for r in rs)]
    lines = ["| path | compile@1 | sound@1 | " + " | ".join(kinds) + " | p50 latency |",
             "|---" * (len(kinds) + 4) + "|"]
    for path, rows in results.items():
        by_kind = collections.defaultdict(list)
        for r in rows:
            by_kind[cursor_of(r["id"])].append(r["compiled"])
        lat = sorted(r["latency"] for r in rows)
        cells = [f"{sum(by_kind[k]) / len(by_kind[k]):.2f} ({len(by_kind[k])})" for k in kinds]
        lines.append(f"| {path} | {sum(r['compiled'] for r in rows) / len(rows):.2f} | "
                     f"{sum(r['sound'] for r in rows) / len(rows):.2f} | " + " | ".join(cells)
                     + f" | {lat[len(lat) // 2]:.2f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--package", type=Path, required=True,
                    help="the run's package/ folder (Modelfile, config.yaml)")
    ap.add_argument("--tasks", type=Path, required=True)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=48,
                    help="floor of each answer's budget (raised to fit the reference middle)")
    ap.add_argument("--kinds", default=None,
                    help=f"only these cursor kinds, comma-separated ({', '.join(CURSORS)})")
    ap.add_argument("--limit", type=int, default=None, help="first N items (a smoke run)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from starlette.testclient import TestClient

    from csound_assistant.runtime.backend import LlamaBackend
    from csound_assistant.runtime.server import create_app
    from csound_assistant.runtime.settings import Settings

    items = load_tasks(args.tasks)
    run_name = args.tasks.stem  # a run of some kinds does not overwrite the whole table
    if args.kinds:
        kinds = args.kinds.split(",")
        if unknown := set(kinds) - set(CURSORS):
            raise SystemExit(f"unknown cursor kinds {sorted(unknown)}; choose from "
                             f"{', '.join(CURSORS)}")
        items = [item for item in items if cursor_of(item.id) in kinds]
        run_name += "-" + "+".join(kinds)
    items = items[:args.limit]
    paths = args.paths.split(",")
    if unknown := set(paths) - set(PATHS):
        raise SystemExit(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    config = yaml.safe_load((args.package / "config.yaml").read_text())
    continue_entry = next(m for m in config["models"]
                          if "autocomplete" in m.get("roles", []) and m.get("promptTemplates"))
    extra = context_chunks(items)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}

    def run(model, label):
        rows = evaluate_model(model, items, label=label, max_new_tokens=args.max_new_tokens,
                              temperature=0.0)
        (args.out / f"fim-{run_name}-{label}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
        results[label] = rows

    server = [p for p in paths if p != "ollama"]
    if server:
        backend = LlamaBackend(args.gguf, n_ctx=N_CTX, n_threads=args.threads, cache_slots=0)
        app = create_app(Settings(model_path=args.gguf, n_ctx=N_CTX, n_threads=args.threads,
                                  cache_slots=0), backend)
        with TestClient(app) as client:
            for label in server:
                model = ServerPaths(client, label, extra, continue_entry)
                model.item_by_prefix = {(i.prefix, i.suffix): i.id for i in items}
                run(model, label)
    if "ollama" in paths:
        tmp = Path(tempfile.mkdtemp(prefix="fim-paths-"))
        try:
            renderer = GoTemplate(build_gotemplate(tmp))
            ollama = OllamaPath(args.gguf, args.threads, Package.read(args.package), renderer)
            run(ollama, "ollama")
            print(f"ollama: the TEMPLATE rendered {dict(ollama.rendered_as)} of "
                  f"{len(items)} requests")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    results = {p: results[p] for p in paths}
    print(f"\n{args.tasks.name}: {len(items)} items, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; compile@1 per cursor kind (items)")
    print(table(results))
    (args.out / f"fim-{run_name}.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
