"""Commands of the eval stage: check, run, feedback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from csound_assistant.clicommon import domain_errors, force_option, run_option, work_dir_option


def _work(work_dir, run) -> Path:
    from csound_assistant.artifacts import work_dir as resolve

    return resolve(work_dir, run)


@click.group()
def cli():
    """Check Csound in the sandbox; score models on Csound tasks."""


@cli.command()
@click.argument("file", type=click.File("r"))
@click.option("--render", "do_render", is_flag=True,
              help="Also render it offline and report peak, RMS, silence, clipping, NaN.")
@click.option("--seconds", type=click.FloatRange(0.01, 60), default=2.0, show_default=True,
              help="Seconds of audio to render (the score is cut there).")
@click.option("--timeout", type=click.FloatRange(0.5, 600), default=30.0, show_default=True,
              help="Wall-clock limit in seconds.")
@click.option("--wav", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep the rendered WAV (32-bit float) here (implies --render).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(file, do_render, seconds, timeout, wav, as_json):
    """Check a .csd or orchestra file in the Csound sandbox and print its diagnostics with line
    numbers of FILE (an orchestra fragment is wrapped in a CSD first). Exits 1 when the code
    has errors, was refused, or (with --render) rendered silence, NaN or nothing. FILE may be
    - for stdin. Nothing runs outside the sandbox: shell, file-writing and Python opcodes are
    refused before Csound starts.

    \b
    Examples:
        csound-assistant eval check instrument.orc
        csound-assistant eval check song.csd --render --wav /tmp/song.wav
        cat song.csd | csound-assistant eval check - --json
    """
    from csound_assistant import sandbox

    code = file.read()
    name = getattr(file, "name", "<stdin>")
    if do_render or wav:
        result = sandbox.render(code, seconds=seconds, timeout=timeout, keep_wav=wav)
        failed = not result.audible
    else:
        result = sandbox.check(code, timeout=timeout)
        failed = not result.ok
    if as_json:
        body = result.to_dict()
        body["stderr"] = body["stderr"][-8000:]
        click.echo(json.dumps({"file": name, **body}, indent=2))
    else:
        for d in result.diagnostics:
            location = f"{name}:{d.line}" if d.line else name
            click.echo(f"{location}: {d.severity}: {d.message}")
        summary = f"{name}: {result.category}"
        if hasattr(result, "peak") and result.peak is not None:
            summary += (f" (peak {result.peak:.3f}, rms {result.rms:.3f}, {result.seconds:.2f} s, "
                        f"{result.channels} ch @ {result.sample_rate} Hz)")
        for note in result.notes:
            summary += f"\n  note: {note}"
        click.echo(summary)
    sys.exit(1 if failed else 0)


def _parse_models(model, compare) -> dict[str, str]:
    """``[LABEL=]SPEC`` strings -> {label: spec}; default labels from the file names."""
    models: dict[str, str] = {}
    for text in [m for m in (model, *compare) if m]:
        label, _, spec = text.partition("=") if "=" in text and "://" not in text.split("=")[0] \
            else ("", "", text)
        if not label:
            label = "base" if spec == "embedded" else (
                spec if "://" in spec else Path(spec).name.removesuffix(".gguf"))
        while label in models:
            label += "'"
        models[label] = spec
    return models


def _exported_gguf(work: Path) -> Path:
    """The GGUF ``modelfile`` would package from the run's export folder."""
    from csound_assistant.errors import ArtifactError
    from csound_assistant.stage_records import Export

    try:
        return Export.in_run(work).packaged_gguf
    except ArtifactError as exc:
        raise click.UsageError(f"no MODEL given and no usable export in {work / 'export'} "
                               f"({exc}); name a .gguf, `embedded` or a URL") from exc


@cli.command("run")
@click.argument("model", required=False)
@click.option("--compare", multiple=True, metavar="[LABEL=]MODEL",
              help="Another model in the same report (repeatable): a base vs fine-tuned or an "
                   "F16 vs Q4_K_M comparison.")
@click.option("--tasks", "tasks_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Task file [default: the shipped eval/tasks.jsonl].")
@click.option("--no-tasks", is_flag=True, help="Skip the task file (test split only).")
@click.option("--test", "test_path", type=click.Path(dir_okay=False), default=None,
              help="A test split JSONL [default: <work-dir>/<run>/splits/test.jsonl if present].")
@click.option("--no-test", is_flag=True, help="Skip the test split.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Items per source, spread over kinds (0 = all).")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Answers per item; k > 1 also reports pass@k (sampled at --temperature).")
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="Sampling temperature [default: 0 (greedy) for one sample, 0.8 for more].")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="New tokens per answer; raised per item to fit its reference answer.")
@click.option("--repeat-penalty", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
              help="llama.cpp's repeat penalty (Ollama's default is 1.1): it breaks greedy "
                   "loops but garbles numbers that the tokenizer spells digit by digit.")
@click.option("--repair", type=click.IntRange(min=0, max=5), default=0, show_default=True,
              help="Send a chat answer whose code does not compile back with Csound's error, "
                   "up to N times, as `serve --repair N` does; first_* columns keep the first "
                   "answer's verdict.")
@click.option("--verify", type=click.IntRange(min=0, max=8), default=0, show_default=True,
              help="Ask a GGUF through the server's own path (runtime/verify.py, as `serve "
                   "--verify N`): up to N candidates per chat answer, decoded together, the "
                   "first that plays returned, else a repair, else the best; first_* columns "
                   "score the first candidate.")
@click.option("--verify-seconds", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, help="Seconds one verified answer may take (with --verify).")
@click.option("--decoder", type=click.Choice(["csound", "plain"]), default=None,
              help="How a GGUF decodes, as `serve --decoder` [default: csound, serve's "
                   "default]: csound allows only real opcodes with the argument counts their "
                   "synopses take in Csound code; plain is the model's own choice. A URL "
                   "decodes as that server does.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="llama.cpp threads [default: 1 on a busy machine, else up to 4].")
@click.option("--n-ctx", type=click.IntRange(min=256), default=2048, show_default=True)
@click.option("--prompt-format", default=None,
              help="Project prompt format for GGUFs [default: from the export record, else "
                   "chatml; llama2-codellama for CodeLlama].")
@click.option("--api-model", default=None,
              help="Model name for an OpenAI-compatible URL [default: the first it lists].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Report folder [default: <work-dir>/<run>/eval].")
@work_dir_option
@run_option
@force_option
def run_command(model, compare, tasks_path, no_tasks, test_path, no_test, limit, samples,
                temperature, max_new_tokens, repeat_penalty, repair, verify, verify_seconds,
                decoder, threads, n_ctx, prompt_format, api_model, out_dir, work_dir, run, force):
    """Score models on Csound: compile@1, sound@1, required-opcode coverage, latency (and
    pass@k with --samples k), on the curated task file and the run's test split. MODEL is a
    .gguf file, `embedded` (the embedded SmolLM2 base) or an OpenAI-compatible URL, each
    optionally as LABEL=MODEL. Without MODEL: the run's exported GGUF (the first quant type the
    export was asked for: the pipeline's Q8_0) compared with the embedded base. Writes
    report.json, report.md and report.png.

    \b
    Examples:
        csound-assistant eval run embedded --no-test --limit 0
        csound-assistant eval run tuned=runs/default/export/csound-assistant.Q4_K_M.gguf \\
            --compare base=embedded
        csound-assistant eval run f16=runs/default/export/csound-assistant.F16.gguf \\
            --compare q4=runs/default/export/csound-assistant.Q4_K_M.gguf --out /tmp/quant
        csound-assistant eval run http://127.0.0.1:8080/v1 --samples 5
        csound-assistant eval run embedded --tasks eval/natural/dev.jsonl --no-test \\
            --limit 0 --verify 4 --verify-seconds 30
    """
    from .runner import run_eval

    work = _work(work_dir, run)
    with domain_errors():
        if model is None:
            model, compare = f"fine-tuned={_exported_gguf(work)}", compare or ("base=embedded",)
        models = _parse_models(model, compare)
        if test_path is None and not no_test and (work / "splits" / "test.jsonl").is_file():
            test_path = work / "splits" / "test.jsonl"
        report = run_eval(
            models, out_dir or work / "eval", tasks_path=tasks_path,
            test_path=None if no_test else test_path, use_tasks=not no_tasks,
            max_new_tokens=max_new_tokens, limit=limit or None, samples=samples,
            temperature=temperature, repeat_penalty=repeat_penalty, repair=repair,
            verify=verify, verify_seconds=verify_seconds, decoder=decoder, n_threads=threads,
            n_ctx=n_ctx, prompt_format=prompt_format, api_model=api_model, force=force,
            log=lambda m: click.echo(m, err=True))
    from .report import markdown

    click.echo(markdown(report).split("\n## ")[0])
    click.echo(f"report written to {out_dir or work / 'eval'}")


@cli.command()
@click.argument("completion_id")
@click.option("--good/--bad", required=True, help="Was the completion right?")
@click.option("--correction", type=click.File("r"), default=None,
              help="A file with the corrected answer (- for stdin).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="CSOUND_ASSISTANT_FEEDBACK_DB",
              help="The server's --feedback-db [env CSOUND_ASSISTANT_FEEDBACK_DB; default: "
                   "<work-dir>/<run>/feedback.db].")
@click.option("--show", is_flag=True,
              help="Print the completion (its first 200 characters) before marking it.")
@work_dir_option
@run_option
def feedback(completion_id, good, correction, db, show, work_dir, run):
    """Mark a recorded completion good or bad, optionally attaching a corrected answer; then
    `csound-assistant data from-feedback` turns corrections into training rows.

    \b
    Examples:
        csound-assistant eval feedback 12 --good
        csound-assistant eval feedback 13 --bad --correction fixed.csd
    """
    from csound_assistant.logtext import shorten
    from csound_assistant.feedback_store import FeedbackStore

    db = db or _work(work_dir, run) / "feedback.db"
    if not db.is_file():
        raise click.ClickException(f"no feedback database at {db}: start the server with "
                                   f"--feedback-db {db}, or pass --db")
    with FeedbackStore(db) as store:
        try:
            if show:  # cut short: a prompt or output can be megabytes, or hold escape codes
                row = store.get(completion_id)
                click.echo(f"prompt: {shorten(row['prompt'])}\noutput: {shorten(row['output'])}")
            store.mark(completion_id, good, correction.read() if correction else None)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'\"")) from None
        counts = store.counts()
    click.echo(f"completion {completion_id} marked {'good' if good else 'bad'}"
               + (" with a correction" if correction else "")
               + f" ({counts['corrected']} corrected of {counts['completions']} recorded)")
