"""Typed stage records: each stage folder of a run is read through one small object.

A stage writes its outputs and ``record.json`` (``artifacts.write_record``); every later stage,
command or the pipeline reads that folder through the class here (``Export.read(folder)``,
``Export.in_run(run_dir)``) and takes file names from its fields (``Export.packaged_gguf``,
``Export.gguf("Q4_K_M")``), never by rebuilding names or globbing. Each class's ``write`` is the
one the producing stage calls (``Base.write`` in ``base import``, ``Data.write`` in ``data
build``...), so writer and reader cannot drift apart: the fields the reader needs are its
required arguments.

A record from an older version that lacks a field the reader needs fails with the command that
rebuilds it (``ArtifactError``); the raw record stays available as ``.raw``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from .artifacts import RECORD_NAME, is_complete, read_record, sha256_file, write_record
from .errors import ArtifactError, DataError
from .prompt_format import PromptFormat, get_format

PROMPT_FORMAT_FILE = "prompt_format.json"  # the trained format beside an adapter or GGUF


@dataclass(frozen=True)
class StageRecord:
    """What every stage folder has: where it is and its whole record."""

    folder: Path
    raw: dict = field(repr=False)

    STAGE: ClassVar[str]  # the record's "stage" field
    FOLDER: ClassVar[str]  # the folder's name in a run (runs/<run>/<FOLDER>)
    REBUILD: ClassVar[str]  # the command that makes it

    @classmethod
    def read(cls, folder):
        folder = Path(folder)
        if not folder.is_dir():
            raise ArtifactError(f"{cls.STAGE} folder {folder} does not exist: run "
                                f"`{cls.REBUILD}` first")
        raw = read_record(folder)
        stage = raw.get("stage")
        if stage is not None and stage != cls.STAGE:
            raise ArtifactError(f"{folder} holds a {stage!r} record, not a {cls.STAGE!r} one: "
                                "point at the right folder")
        try:
            return cls(folder, raw, **cls._fields(folder, raw))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{folder / RECORD_NAME} lacks {exc} (written by an older version?): rebuild "
                f"it with `{cls.REBUILD} --force`") from None

    @classmethod
    def in_run(cls, run_dir):
        return cls.read(Path(run_dir) / cls.FOLDER)

    @classmethod
    def built_in(cls, run_dir) -> bool:
        return is_complete(Path(run_dir) / cls.FOLDER)

    @classmethod
    def _fields(cls, folder: Path, raw: dict) -> dict:
        return {}


def _format_name(value) -> str | None:
    return value.get("name") if isinstance(value, dict) else value


def format_from_record(value) -> PromptFormat | None:
    """A ``PromptFormat`` from what a record holds: a registered name, or
    ``PromptFormat.to_record()`` (whose trained strings, a custom system prompt say, are kept)."""
    name = _format_name(value)
    if not name:
        return None
    fmt = get_format(name)
    if isinstance(value, dict):
        known = {f.name for f in fields(fmt)}
        fmt = type(fmt)(**{k: v for k, v in value.items() if k in known})
    return fmt


def recorded_format_name(folder) -> str | None:
    """The prompt format named by the finished stage folder ``folder`` (export, package,
    adapter, base...), or None when it is no stage folder or names none."""
    if not is_complete(folder):
        return None
    return _format_name(read_record(folder).get("prompt_format"))


@dataclass(frozen=True)
class Base(StageRecord):
    STAGE, FOLDER, REBUILD = "base", "base", "csound-assistant base import"
    prompt_format: str = ""
    source: dict = field(default_factory=dict)

    @classmethod
    def _fields(cls, folder, raw):
        return {"prompt_format": _format_name(raw["prompt_format"]),
                "source": raw.get("source") or {}}

    @staticmethod
    def write(tmp: Path, *, source: dict, prompt_format: str, **extra) -> dict:
        """``source``: where the weights came from (path, digest, package...)."""
        return write_record(tmp, Base.STAGE, source=source, prompt_format=prompt_format,
                            **extra)


@dataclass(frozen=True)
class Data(StageRecord):
    STAGE, FOLDER, REBUILD = "data", "data", "csound-assistant data build"
    rows_path: Path = Path()
    rows: int = 0

    @classmethod
    def _fields(cls, folder, raw):
        return {"rows_path": folder / raw["rows_file"], "rows": raw["rows"]}

    @staticmethod
    def write(tmp: Path, *, rows_file: str, rows: int, **extra) -> dict:
        """The record of ``tmp``, whose ``rows_file`` holds ``rows`` rows (hashed here)."""
        path = tmp / rows_file
        if not path.is_file():
            raise ArtifactError(f"{tmp} lacks {rows_file}: write the rows before the record")
        return write_record(tmp, Data.STAGE, rows=rows, rows_file=rows_file,
                            rows_sha256=sha256_file(path), **extra)


SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Splits(StageRecord):
    STAGE, FOLDER, REBUILD = "splits", "splits", "csound-assistant data split"
    rows: dict = field(default_factory=dict)  # split -> row count
    feedback_rows: int = 0  # rows taken from a feedback folder into train

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
        return self.folder / f"{split}.jsonl"

    @property
    def train(self) -> Path:
        return self.path("train")

    @property
    def test(self) -> Path:
        return self.path("test")

    @classmethod
    def _fields(cls, folder, raw):
        return {"rows": raw["rows"], "feedback_rows": raw.get("feedback_rows", 0)}

    @staticmethod
    def write(tmp: Path, *, source: Path, rows: dict, **extra) -> dict:
        """The record of ``tmp``, whose ``<split>.jsonl`` files are written."""
        missing = [s for s in SPLITS if not (tmp / f"{s}.jsonl").is_file()]
        if missing:
            raise ArtifactError(f"{tmp} lacks {', '.join(missing)}.jsonl: write every split "
                                "before the record")
        return write_record(tmp, Splits.STAGE, source=str(source),
                            source_sha256=sha256_file(source), rows=rows, **extra)


@dataclass(frozen=True)
class Adapter(StageRecord):
    STAGE, FOLDER, REBUILD = "train", "adapter", "csound-assistant train run"
    prompt_format: str = ""
    base_dir: Path | None = None
    splits_dir: Path | None = None

    @classmethod
    def _fields(cls, folder, raw):
        def path(key):
            return Path(raw[key]) if raw.get(key) else None
        return {"prompt_format": _format_name(raw["prompt_format"]),
                "base_dir": path("base_dir"), "splits_dir": path("splits_dir")}

    @staticmethod
    def write(tmp: Path, *, prompt_format: str, base_dir: Path, splits_dir: Path | None,
              **extra) -> dict:
        """The folders are recorded as absolute paths: a later stage may run elsewhere.
        ``splits_dir`` None: an adapter made without our splits (a test's random LoRA)."""
        splits = {"splits_dir": str(Path(splits_dir).resolve())} if splits_dir else {}
        return write_record(tmp, Adapter.STAGE, prompt_format=prompt_format,
                            base_dir=str(Path(base_dir).resolve()), **splits, **extra)


@dataclass(frozen=True)
class Export(StageRecord):
    STAGE, FOLDER, REBUILD = "export", "export", "csound-assistant export"
    name: str = ""
    quant_types: tuple[str, ...] = ()  # in the order asked for: the first is packaged
    files: dict = field(default_factory=dict)  # file name -> kind, quant, bytes, sha256...
    trained_format: PromptFormat | None = None

    @property
    def packaged_quant(self) -> str:
        return self.quant_types[0]

    @property
    def packaged_gguf(self) -> Path:
        """The GGUF that the package ships and the eval scores."""
        return self.gguf(self.packaged_quant)

    @property
    def f16_gguf(self) -> Path:
        return self.gguf("F16")

    @property
    def lora_gguf(self) -> Path | None:
        names = [n for n, info in self.files.items() if info.get("kind") == "lora"]
        return self.folder / names[0] if names and (self.folder / names[0]).is_file() else None

    @property
    def prompt_format(self) -> PromptFormat:
        """The trained format: ``prompt_format.json`` beside the GGUFs when there is one, else
        the record's."""
        if (self.folder / PROMPT_FORMAT_FILE).is_file():
            return format_from_record(json.loads((self.folder / PROMPT_FORMAT_FILE).read_text()))
        if self.trained_format is None:
            raise ArtifactError(f"{self.folder / RECORD_NAME} names no prompt_format; pass "
                                "--prompt-format (chatml for SmolLM2, llama2-codellama for "
                                "CodeLlama) or rebuild it with `csound-assistant export --force`")
        return self.trained_format

    def gguf(self, quant: str) -> Path:
        """The model GGUF of quant type ``quant`` (F16 included); ArtifactError if the export
        was not asked for it or the file is gone."""
        path = self.folder / f"{self.name}.{quant}.gguf"
        if quant != "F16" and quant not in self.quant_types:
            raise ArtifactError(f"{self.folder} holds no {quant} GGUF (it was exported as "
                                f"{', '.join(self.quant_types)}): pass --quant with one of "
                                f"those, or rerun `csound-assistant export --quant {quant}`")
        if not path.is_file():
            found = ", ".join(sorted(p.name for p in self.folder.glob("*.gguf"))) or "none"
            raise ArtifactError(f"{self.folder} should hold <name>.{quant}.gguf ({path.name}); "
                                f"found {found}. Rerun `csound-assistant export --force`")
        return path

    def sha256(self, path: Path) -> str:
        """A GGUF's digest as the export recorded it (hashed again only if it is not there)."""
        recorded = self.files.get(path.name, {}).get("sha256")
        return recorded or sha256_file(path)

    @classmethod
    def _fields(cls, folder, raw):
        files = raw.get("files") or {}
        quant_types = raw.get("quant_types")
        if not quant_types and files:  # written before the field: its quantized files
            quants = {info["quant"] for info in files.values()
                      if info.get("kind") == "model" and info.get("quant") != "F16"}
            quant_types = sorted(quants, key=lambda q: (q != "Q4_K_M", q))  # the old default
        if not quant_types:
            raise KeyError("quant_types")
        return {"name": raw["name"], "quant_types": tuple(quant_types), "files": files,
                "trained_format": format_from_record(raw.get("prompt_format"))}

    @staticmethod
    def write(tmp: Path, *, name: str, quant_types, files: dict, prompt_format, **extra) -> dict:
        """``prompt_format``: a ``PromptFormat`` or its ``to_record()``. Every quant type must
        have its ``<name>.<quant>.gguf`` among ``files``."""
        missing = [q for q in quant_types if f"{name}.{q}.gguf" not in files]
        if missing:
            raise ArtifactError(f"export record for {tmp}: no file of quant type(s) "
                                f"{', '.join(missing)} among {', '.join(files) or 'no files'}")
        if isinstance(prompt_format, PromptFormat):
            prompt_format = prompt_format.to_record()
        return write_record(tmp, Export.STAGE, name=name, quant_types=list(quant_types),
                            files=files, prompt_format=prompt_format, **extra)


@dataclass(frozen=True)
class BaseGguf(StageRecord):
    """The untrained base as GGUF (the pipeline's comparison for a Hugging Face base)."""

    STAGE, FOLDER, REBUILD = "base-gguf", "base-gguf", "csound-assistant pipeline --from base-gguf"
    gguf: Path = Path()
    quant: str = ""

    @classmethod
    def _fields(cls, folder, raw):
        return {"gguf": folder / raw.get("gguf", f"base.{raw['quant']}.gguf"),
                "quant": raw["quant"]}

    @staticmethod
    def write(tmp: Path, *, gguf: Path, quant: str, **extra) -> dict:
        return write_record(tmp, BaseGguf.STAGE, gguf=gguf.name, quant=quant, **extra)


@dataclass(frozen=True)
class Package(StageRecord):
    STAGE, FOLDER, REBUILD = "modelfile", "package", "csound-assistant modelfile"
    name: str = ""
    prompt_format: str = ""
    modelfile: Path = Path()

    @classmethod
    def _fields(cls, folder, raw):
        return {"name": raw["name"], "prompt_format": _format_name(raw["prompt_format"]),
                "modelfile": folder / raw.get("modelfile", "Modelfile")}

    @staticmethod
    def write(tmp: Path, *, name: str, modelfile: str, prompt_format: str, **extra) -> dict:
        return write_record(tmp, Package.STAGE, name=name, modelfile=modelfile,
                            prompt_format=prompt_format, **extra)


@dataclass(frozen=True)
class Eval(StageRecord):
    STAGE, FOLDER, REBUILD = "eval", "eval", "csound-assistant eval run"
    metrics: dict = field(default_factory=dict)

    @property
    def report_json(self) -> Path:
        return self.folder / "report.json"

    @classmethod
    def _fields(cls, folder, raw):
        return {"metrics": raw.get("metrics") or {}}

    @staticmethod
    def write(tmp: Path, *, metrics: dict, **extra) -> dict:
        """``metrics``: model label -> headline numbers; ``report.json`` is written first."""
        if not (tmp / "report.json").is_file():
            raise ArtifactError(f"{tmp} lacks report.json: write the report before the record")
        return write_record(tmp, Eval.STAGE, metrics=metrics, **extra)


@dataclass(frozen=True)
class Feedback(StageRecord):
    """Rows made from the feedback store (``data from-feedback``); the split stage adds them to
    train. Rows are screened again when read (``feedback_screen.screen``)."""

    STAGE, FOLDER, REBUILD = "feedback", "feedback", "csound-assistant data from-feedback"
    rows_path: Path = Path()
    rows: int = 0

    @classmethod
    def _fields(cls, folder, raw):
        if "drops" not in raw:  # made before the screen existed: its rows were never screened
            raise KeyError("drops (the screen's verdicts)")
        return {"rows_path": folder / raw["rows_file"], "rows": raw["rows"]}

    def rows_sha256(self) -> str:
        return sha256_file(self.rows_path)

    def train_rows(self) -> list[dict]:
        """The rows, each passing the screen as it is today; DataError (with line numbers) for
        a damaged file."""
        from .feedback_screen import screen

        problems, rows = [], []
        lines = self.rows_path.read_text(errors="replace").splitlines() \
            if self.rows_path.is_file() else None
        if lines is None:
            problems.append(f"{self.rows_path.name}: missing")
        for number, line in enumerate(lines or [], 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                problems.append(f"line {number}: not a JSON object")
            elif screen(row) is None:
                rows.append(row)
        if problems:
            raise DataError(f"{self.rows_path} is damaged (rebuild it with `{self.REBUILD} "
                            "--force`)", problems)
        return rows

    @staticmethod
    def write(tmp: Path, *, rows_file: str, rows: int, drops: list, **extra) -> dict:
        return write_record(tmp, Feedback.STAGE, rows_file=rows_file, rows=rows, drops=drops,
                            **extra)
