"""Csound verdicts for the data stage, through ``csound_assistant.sandbox``, cached by content.

A verdict depends only on the code, the Csound version and the sandbox module, so it is cached
under a key made of all three (``~/.cache/csound-assistant/data`` by default, or
``$CSOUND_ASSISTANT_CACHE``); a rebuild re-runs only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

from csound_assistant.artifacts import atomic_write
from csound_assistant.fix_request import first_error

ENV_CACHE = "CSOUND_ASSISTANT_CACHE"
# Render outcomes that prove the code compiled (a render parses and type-checks first, exactly
# like ``check``, then runs). "needs-input-file" is not among them: a missing #include fails
# the parse with that category too.
PROVEN_BY_RENDER = {"ok", "silent", "clipping", "realtime", "gui"}
CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "csound-assistant" / "data")


def normalize(code: str) -> str:
    return code.strip("\n") + "\n"


def _environment_key() -> str:
    from csound_assistant import isolation, manual, sandbox, sandbox_plugins

    try:
        text = subprocess.run(["csound", "--version"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=20).stderr
        found = re.search(r"Csound version[^\n]*", text)  # the rest has run times in it
        version = found.group(0) if found else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        version = "unknown"
    # the sandbox's verdicts depend on its code, on which plugins it loads and on the opcodes
    # the manual documents (a missing plugin's opcode versus an invented one)
    source = b"".join(Path(m.__file__).read_bytes()
                      for m in (sandbox, sandbox_plugins, isolation, manual))
    return hashlib.sha256(CACHE_VERSION.encode() + version.encode() + source).hexdigest()[:16]


class Verifier:
    """Batch ``check`` and ``render`` through the sandbox with a content-addressed cache."""

    def __init__(self, *, workers: int = 2, cache_dir: str | Path | None = None,
                 use_cache: bool = True, progress: bool = False):
        self.workers = workers
        self.progress = progress
        self.cache_path = None
        self.cache: dict[str, dict] = {}
        self.env = _environment_key()
        self.hits = self.misses = 0
        if use_cache:
            self.cache_path = Path(cache_dir or default_cache_dir()) / f"verdicts-{self.env}.json"
            if self.cache_path.is_file():
                try:
                    self.cache = json.loads(self.cache_path.read_text())
                except (OSError, json.JSONDecodeError):
                    self.cache = {}

    def _key(self, kind: str, code: str) -> str:
        return hashlib.sha256(f"{kind}\x00{normalize(code)}".encode()).hexdigest()

    def _run(self, kind: str, codes: list[str], fn, label: str) -> list[dict]:
        keys = [self._key(kind, c) for c in codes]
        todo = {}
        for key, code in zip(keys, codes):
            if key not in self.cache and key not in todo:
                todo[key] = normalize(code)
        self.hits += len(codes) - len(todo)
        self.misses += len(todo)
        if todo:
            results = fn(list(todo.values()), label)
            for key, result in zip(todo, results):
                self.cache[key] = result
            self.save()
        return [self.cache[k] for k in keys]

    def check(self, codes: list[str], label: str = "checking") -> list[dict]:
        """``{"ok", "category", "error"}`` per code (syntax and type check; nothing runs)."""
        from csound_assistant import sandbox

        def fn(batch, label):
            out = []
            for r in self._batched(sandbox.check_many, batch, label):
                out.append({"ok": bool(r.ok), "category": r.category,
                            "error": "" if r.ok else first_error(r)})
            return out

        return self._run("check", codes, fn, label)

    def render(self, codes: list[str], seconds: float = 2.0, label: str = "rendering",
               assets: dict | None = None) -> list[dict]:
        """``{"ok", "category", "peak", "rms", "silent", "clipping", "nan", "error"}`` per code.
        ``assets`` (name -> path) are files the code may read, e.g. the manual's sound files."""
        from csound_assistant import sandbox

        extra = {"assets": assets} if assets else {}

        def fn(batch, label):
            out = []
            for r in self._batched(sandbox.render_many, batch, label, seconds=seconds, **extra):
                out.append({
                    "ok": bool(r.ok), "category": r.category,
                    "peak": _num(getattr(r, "peak", None)), "rms": _num(getattr(r, "rms", None)),
                    "silent": bool(getattr(r, "silent", False)),
                    "clipping": bool(getattr(r, "clipping", False)),
                    "nan": bool(getattr(r, "nan", False)),
                    "error": "" if r.ok else first_error(r),
                })
            return out

        return self._run(self._render_kind(seconds, assets), codes, fn, label)

    def compiles(self, codes: list[str], seconds: float, assets: dict | None = None,
                 label: str = "checking") -> list[dict]:
        """Compile verdicts, reusing a render already made of the same code when it proves
        the code compiled; ``check`` runs for the rest."""
        kind = self._render_kind(seconds, assets)
        verdicts: list[dict | None] = []
        for code in codes:
            rendered = self.cache.get(self._key(kind, code))
            if rendered and rendered["category"] in PROVEN_BY_RENDER:
                verdicts.append({"ok": True, "category": "ok", "error": ""})
            else:
                verdicts.append(None)
        missing = [c for c, v in zip(codes, verdicts) if v is None]
        checked = iter(self.check(missing, label) if missing else [])
        return [v if v is not None else next(checked) for v in verdicts]

    @staticmethod
    def _render_kind(seconds: float, assets: dict | None) -> str:
        return f"render-{seconds}" + ("-assets-" + _assets_key(assets) if assets else "")

    def _batched(self, many, batch: list[str], label: str, **kw):
        return many(batch, workers=self.workers, progress=self.progress, **kw)

    def save(self) -> None:
        if self.cache_path is None:
            return
        with atomic_write(self.cache_path) as fh:
            json.dump(self.cache, fh)


def _assets_key(assets: dict) -> str:
    names = "\n".join(f"{name}\t{Path(str(path)).stat().st_size}"
                      for name, path in sorted(assets.items()))
    return hashlib.sha256(names.encode()).hexdigest()[:12]


def _num(value):
    if value is None:
        return None
    value = float(value)
    return None if value != value else round(value, 6)  # NaN is not JSON
