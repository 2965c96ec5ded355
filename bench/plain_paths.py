"""The packaged GGUF with nothing of ours around it: the natural benchmark's chat requests
through the prompts other tools build (issue 24's last target, issue 26's chat table).

    .venv/bin/python bench/plain_paths.py runs/default/export/csound-assistant.Q8_0.gguf \
        --package runs/default/package --tasks eval/natural/heldout.jsonl --out bench/results/natural

Paths (each answer greedy, scored by the eval's own judge, ``eval.runner.score_answer``):
- ``gguf-template``: llama-cpp-python's ``create_chat_completion`` with the GGUF's own
  ``tokenizer.chat_template``, what ``llama-server --jinja``, ``llama_cpp.server`` and LM Studio
  render; no lookups.
- ``ollama``: the generated Modelfile's TEMPLATE and SYSTEM rendered by Go's text/template the
  way Ollama's /api/chat does (tests/gotemplate), sent raw with the Modelfile's stop words.
Our own server's path is ``eval run`` (with lookups); its numbers are in bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from modelfiles_helpers import GoTemplate, build_gotemplate  # noqa: E402

from csound_assistant.eval.models import Generation  # noqa: E402
from csound_assistant.eval.runner import evaluate_model, summarize  # noqa: E402
from csound_assistant.eval.tasks import load_tasks  # noqa: E402


ANSWERS: dict[str, Generation] = {}  # by the exact prompt text: paths that render the same
# prompt get the same greedy answer, so it is decoded once (said in the table as "same prompt")


class _Plain:
    """The eval's model interface (``chat``) over a bare llama_cpp.Llama."""

    same_prompt = 0

    def __init__(self, gguf: Path, threads: int):
        from csound_assistant.llamacpp import load

        self.llm = load().Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, verbose=False,
                         flash_attn=False)

    def _generation(self, out: dict, started: float) -> Generation:
        choice = out["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        usage = out.get("usage") or {}
        return Generation(text=text or "", latency=time.perf_counter() - started,
                          tokens=usage.get("completion_tokens", 0),
                          prompt_tokens=usage.get("prompt_tokens", 0))


class GGUFTemplate(_Plain):
    label = "gguf-template"

    def chat(self, messages, *, max_tokens, temperature, seed, repeat_penalty):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self.llm.metadata
        vocab = self.llm._model
        formatter = Jinja2ChatFormatter(meta["tokenizer.chat_template"],
                                        eos_token=vocab.token_get_text(vocab.token_eos()),
                                        bos_token=vocab.token_get_text(vocab.token_bos()))
        prompt = formatter(messages=messages).prompt
        started = time.perf_counter()
        out = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                              temperature=temperature, seed=seed,
                                              repeat_penalty=repeat_penalty)
        ANSWERS[prompt] = self._generation(out, started)
        return ANSWERS[prompt]


class OllamaTemplate(_Plain):
    label = "ollama"

    def __init__(self, gguf: Path, threads: int, modelfile: Path, renderer: GoTemplate):
        super().__init__(gguf, threads)
        commands = renderer.run([{"modelfile": modelfile.read_text()}])[0]["commands"]
        self.template = next(c["args"] for c in commands if c["name"] == "template")
        self.system = next((c["args"] for c in commands if c["name"] == "system"), "")
        self.stop = [c["args"] for c in commands if c["name"] == "stop"]
        self.renderer = renderer

    def chat(self, messages, *, max_tokens, temperature, seed, repeat_penalty):
        prompt = self.renderer.run([{"template": self.template, "system": self.system,
                                     "chat": {"messages": messages}}])[0]["prompt"]
        if prompt in ANSWERS and temperature == 0:
            self.same_prompt += 1
            return ANSWERS[prompt]
        started = time.perf_counter()
        out = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature,
                                         seed=seed, repeat_penalty=repeat_penalty,
                                         stop=self.stop)
        return self._generation(out, started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--package", type=Path, required=True, help="the run's package/ folder")
    ap.add_argument("--tasks", type=Path, required=True)
    ap.add_argument("--paths", default="gguf-template,ollama")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="first N items (a smoke run)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    items = load_tasks(args.tasks)[:args.limit]
    tmp = Path(tempfile.mkdtemp(prefix="plain-paths-"))
    renderer = GoTemplate(build_gotemplate(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    table = []
    for path in args.paths.split(","):
        model = (GGUFTemplate(args.gguf, args.threads) if path == "gguf-template" else
                 OllamaTemplate(args.gguf, args.threads, args.package / "Modelfile", renderer))
        rows = evaluate_model(model, items, label=path, max_new_tokens=args.max_new_tokens)
        summary = summarize(rows, [path], 1)[path]["overall"]
        lat = sorted(r["latency"] for r in rows)
        table.append((path, summary, lat[len(lat) // 2], model.same_prompt))
        name = f"plain-{args.tasks.stem}-{path}"
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (args.out / f"{name}.json").write_text(json.dumps(summary, indent=1))
        del model
    print(f"\n{args.tasks.name}: {len(items)} items, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")
    print("| path | compile@1 | sound@1 | p50 latency | same prompt as an earlier path |")
    print("|---|---|---|---|---|")
    for path, s, p50, same in table:
        print(f"| {path} | {s['compile@1']:.2f} | {s['sound@1']:.2f} | {p50:.1f} s | "
              f"{same} of {len(items)} |")
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
