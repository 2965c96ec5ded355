"""Typed stage records: what a stage writes, the next reads through the same class; old records
read or say how to rebuild; the export command and the pipeline share one set of defaults."""

from __future__ import annotations

import json

import pytest

from csound_assistant.artifacts import sha256_file, write_record
from csound_assistant.errors import ArtifactError
from csound_assistant.prompt_format import get_format
from csound_assistant.stage_records import (
    Adapter, Base, Data, Eval, Export, Package, recorded_format_name,
)


def export_folder(tmp_path, quants=("Q8_0", "Q4_K_M"), **extra):
    folder = tmp_path / "run" / "export"
    folder.mkdir(parents=True)
    files = {}
    for quant in ("F16", *quants):
        (folder / f"m.{quant}.gguf").write_bytes(b"GGUF")
        files[f"m.{quant}.gguf"] = {"kind": "model", "quant": quant, "sha256": quant.lower()}
    (folder / "m.lora.gguf").write_bytes(b"GGUF")
    files["m.lora.gguf"] = {"kind": "lora"}
    Export.write(folder, name="m", quant_types=quants, files=files,
                 prompt_format=get_format("chatml"), **extra)
    return folder


def test_export_written_and_read_by_the_same_class(tmp_path):
    folder = export_folder(tmp_path)
    export = Export.in_run(tmp_path / "run")
    assert export.quant_types == ("Q8_0", "Q4_K_M") and export.packaged_quant == "Q8_0"
    assert export.packaged_gguf == folder / "m.Q8_0.gguf"
    assert export.gguf("Q4_K_M") == folder / "m.Q4_K_M.gguf"
    assert export.f16_gguf == folder / "m.F16.gguf" and export.lora_gguf == folder / "m.lora.gguf"
    assert export.prompt_format == get_format("chatml")
    assert export.sha256(export.packaged_gguf) == "q8_0"  # the recorded digest, not re-hashed
    with pytest.raises(ArtifactError, match=r"exported as Q8_0, Q4_K_M.*--quant"):
        export.gguf("IQ4_NL")
    (folder / "m.Q8_0.gguf").unlink()
    with pytest.raises(ArtifactError, match=r"<name>\.Q8_0\.gguf.*export --force"):
        export.packaged_gguf
    with pytest.raises(ArtifactError, match="no file of quant type"):
        Export.write(tmp_path, name="m", quant_types=["Q6_K"], files={}, prompt_format="chatml")


def test_old_export_records_read_or_say_how_to_rebuild(tmp_path):
    folder = export_folder(tmp_path)
    record = json.loads((folder / "record.json").read_text())
    del record["quant_types"]  # as `export` wrote it before the field: Q4_K_M was the default
    (folder / "record.json").write_text(json.dumps(record))
    assert Export.read(folder).packaged_gguf.name == "m.Q4_K_M.gguf"
    (folder / "record.json").write_text(json.dumps({"stage": "export", "prompt_format": "chatml"}))
    with pytest.raises(ArtifactError, match=r"quant_types.*`csound-assistant export --force`"):
        Export.read(folder)


def test_the_wrong_or_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ArtifactError, match=r"does not exist: run `csound-assistant export`"):
        Export.in_run(tmp_path)
    write_record(tmp_path / "adapter", "train", prompt_format={"name": "chatml"},
                 base_dir="b", splits_dir=None)
    with pytest.raises(ArtifactError, match="'train' record, not a 'export'"):
        Export.read(tmp_path / "adapter")
    adapter = Adapter.in_run(tmp_path)
    assert adapter.prompt_format == "chatml" and adapter.splits_dir is None
    assert recorded_format_name(tmp_path / "adapter") == "chatml"
    assert recorded_format_name(tmp_path) is None  # no stage folder
    write_record(tmp_path / "base", "base", source={})
    with pytest.raises(ArtifactError, match="prompt_format.*base import --force"):
        Base.in_run(tmp_path)


def test_package_record_names_its_modelfile(tmp_path):
    Package.write(tmp_path, name="m", modelfile="Modelfile", prompt_format="chatml")
    package = Package.read(tmp_path)
    assert package.modelfile == tmp_path / "Modelfile" and package.name == "m"


def test_export_command_and_pipeline_share_their_defaults():
    from csound_assistant.convert.cli import cli
    from csound_assistant.convert.export import export
    from csound_assistant.export_settings import EXPORT_DEFAULTS
    from csound_assistant.pipeline import PipelineConfig

    assert PipelineConfig().export == {"quant_types": list(EXPORT_DEFAULTS.quant_types),
                                       "gate": EXPORT_DEFAULTS.gate,
                                       "gate_tokens": EXPORT_DEFAULTS.gate_tokens}
    options = {p.name: p.default for p in cli.params}
    assert list(options["quant_types"]) == list(EXPORT_DEFAULTS.quant_types)
    assert (options["gate"], options["gate_tokens"]) == (EXPORT_DEFAULTS.gate,
                                                         EXPORT_DEFAULTS.gate_tokens)
    defaults = export.__kwdefaults__
    assert tuple(defaults["quant_types"]) == EXPORT_DEFAULTS.quant_types
    assert (defaults["gate"], defaults["gate_tokens"]) == (EXPORT_DEFAULTS.gate,
                                                           EXPORT_DEFAULTS.gate_tokens)


def test_base_data_adapter_and_eval_are_written_and_read_by_the_same_class(tmp_path):
    run = tmp_path / "run"
    Base.write(run / "base", source={"kind": "gguf"}, prompt_format="chatml", dtype="float32")
    assert Base.in_run(run).prompt_format == "chatml" and Base.in_run(run).source == {
        "kind": "gguf"}

    (run / "data").mkdir()
    (run / "data" / "rows.jsonl").write_text('{"messages": []}\n')
    Data.write(run / "data", rows_file="rows.jsonl", rows=1, limit=None)
    data = Data.in_run(run)
    assert (data.rows_path, data.rows) == (run / "data" / "rows.jsonl", 1)
    assert data.raw["rows_sha256"] == sha256_file(data.rows_path) and data.raw["limit"] is None
    with pytest.raises(ArtifactError, match="lacks rows.jsonl: write the rows"):
        Data.write(tmp_path, rows_file="rows.jsonl", rows=0)

    # relative folders are recorded absolute: the next stage may run from another directory
    (run / "adapter").mkdir()
    Adapter.write(run / "adapter", prompt_format="chatml", base_dir=run / "base",
                  splits_dir=run / "splits", method="lora")
    adapter = Adapter.in_run(run)
    assert adapter.base_dir == (run / "base").resolve() and adapter.base_dir.is_absolute()
    assert adapter.splits_dir == (run / "splits").resolve() and adapter.prompt_format == "chatml"
    assert adapter.raw["stage"] == "train" and adapter.raw["method"] == "lora"

    (run / "eval").mkdir()
    with pytest.raises(ArtifactError, match="lacks report.json"):
        Eval.write(run / "eval", metrics={})
    (run / "eval" / "report.json").write_text("{}")
    Eval.write(run / "eval", metrics={"base": {"compile@1": 0.5}}, settings={"samples": 1})
    assert Eval.in_run(run).metrics == {"base": {"compile@1": 0.5}}
    assert Eval.in_run(run).report_json == run / "eval" / "report.json"
