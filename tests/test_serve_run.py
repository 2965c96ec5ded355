"""``csound-assistant serve --run NAME``: the server takes the packaged GGUF and the trained
prompt format from the run's export record (the real server in a subprocess, on the embedded
SmolLM2 GGUF)."""

from __future__ import annotations

import httpx
from click.testing import CliRunner

from csound_assistant.cli import main
from csound_assistant.prompt_format import get_format

from modelfiles_helpers import fake_export
from runtime_helpers import serve_process


def test_serve_run_takes_the_packaged_gguf_and_trained_format(tmp_path, embedded_gguf):
    export = fake_export(tmp_path / "runs" / "r1" / "export", embedded_gguf,
                         record={"quant_types": ["Q8_0", "Q4_K_M"]})
    (export / "csound-assistant.Q8_0.gguf").symlink_to(embedded_gguf)
    with open(tmp_path / "server.log", "w+") as log:
        proc, url = serve_process(["--run", "r1", "--work-dir", str(tmp_path / "runs"),
                                   "--n-ctx", "512", "--threads", "1", "--log-level", "warning"],
                                  log)
        try:
            show = httpx.post(f"{url}/api/show", json={"model": "csound-assistant"}, timeout=30)
        finally:
            proc.terminate()
            proc.wait(20)
    assert show.status_code == 200, show.text
    body = show.json()
    # the first quant type the export was asked for, in the export folder
    assert body["modelfile"].startswith(f"FROM {export / 'csound-assistant.Q8_0.gguf'}\n")
    # the trained format's template, not the GGUF's own
    assert body["template"] == get_format("chatml").ollama_template()


def test_serve_run_errors_say_what_to_do(tmp_path, embedded_gguf):
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--run", "none", "--work-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'none' / 'export'} does not exist: run `csound-assistant export`" \
        in result.output
    # a run folder given by path is read there, whatever the work dir: here its export lost
    # the packaged GGUF
    run = tmp_path / "elsewhere"
    fake_export(run / "export", embedded_gguf, record={"quant_types": ["Q8_0", "Q4_K_M"]})
    result = runner.invoke(main, ["serve", "--run", str(run), "--work-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "should hold <name>.Q8_0.gguf" in result.output and "export --force" in result.output
    result = runner.invoke(main, ["serve", str(embedded_gguf), "--run", "r1"])
    assert result.exit_code == 2 and "MODEL (a .gguf) or --run, not both" in result.output
    result = runner.invoke(main, ["serve"], env={"CSOUND_ASSISTANT_MODEL_PATH": ""})
    assert result.exit_code == 2 and "give MODEL (a .gguf) or --run NAME" in result.output
