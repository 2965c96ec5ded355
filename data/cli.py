"""Commands of the data stage: build, validate, split, stats, push."""

from pathlib import Path

import click

from csound_assistant.clicommon import domain_errors, force_option, run_option, work_dir_option
from csound_assistant.manual import DEFAULT_MANUAL_DIR

from . import patches


def _work(work_dir, run) -> Path:
    from csound_assistant.artifacts import work_dir as resolve

    return resolve(work_dir, run)


@click.group()
def cli():
    """Build, validate, split and inspect Csound training data."""


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <work-dir>/<run>/data].")
@click.option("--manual-dir", type=click.Path(path_type=Path, file_okay=False),
              default=DEFAULT_MANUAL_DIR, show_default=True,
              help="The Csound manual's HTML folder (Debian package csound-doc).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only N manual examples, spread over the manual (quick runs).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Parallel Csound processes.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              envvar="CSOUND_ASSISTANT_CACHE",
              help="Cache of Csound verdicts by content [env CSOUND_ASSISTANT_CACHE; "
                   "default: ~/.cache/csound-assistant/data].")
@click.option("--no-cache", is_flag=True, help="Check everything again, ignoring the cache.")
@click.option("--fixes-per-example", type=click.IntRange(0, 5), default=1, show_default=True,
              help="Fix-the-bug rows per example (each costs a Csound check).")
@click.option("--fim-cuts", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Fill-in-the-middle rows of each kind per example, at different statements. "
                   "The extra ones are for training only: `data split` keeps them out of "
                   "validation and test (the shipped starter was trained on 5).")
@click.option("--fim-kinds", default="fim-line,fim-expression", show_default=True,
              help="FIM cut kinds, comma-separated: fim-line, fim-expression (today's), and "
                   "fim-opcode, fim-argument, fim-score, fim-snippet, fim-eof (issue 26).")
@click.option("--fim-context-share", type=click.FloatRange(0, 1), default=0.0,
              show_default=True,
              help="Share of FIM rows given repository context (input_extra: other examples' "
                   "instruments or UDOs), as llama.vscode sends it.")
@click.option("--max-tokens", type=click.IntRange(min=0), default=2048, show_default=True,
              help="Drop rows longer than this many tokens (estimated at 2.5 characters per "
                   "token, as the chatml prompt renders them); 0 keeps all.")
@click.option("--strip-comments", is_flag=True,
              help="Drop the examples' comments: answers about 40% shorter, which a small model "
                   "learns faster (the main job's default for the embedded model).")
@click.option("--patches", "patch_count", type=click.IntRange(min=0), default=patches.COUNT,
              show_default=True,
              help="Patches to draw (a source, envelope, filter and effect in one short "
                   "instrument, asked for in words); the ones Csound plays cleanly become rows. "
                   "0 for none.")
@click.option("--self-source/--no-self-source", default=True, show_default=True,
              help="Put, in place of an example that reads a sound file (fox.wav, beats.wav, "
                   "a GEN01 table), a variant that makes its own source, where that variant "
                   "plays without the file; the original stays where the request asks for a "
                   "file (the pipeline's data key `self_source`).")
@work_dir_option
@run_option
@force_option
def build(out_dir, manual_dir, limit, workers, cache_dir, no_cache, fixes_per_example, fim_cuts,
          fim_kinds, fim_context_share, max_tokens, strip_comments, patch_count, self_source,
          work_dir, run, force):
    """Build a Csound-verified training set from the installed manual: instruction, chat,
    completion, fill-in-the-middle and fix-the-bug rows, every code answer checked and rendered
    by Csound in the sandbox. Writes rows.jsonl and record.json (counts by reason).

    \b
    Examples:
        csound-assistant data build
        csound-assistant data build --limit 50 --out /tmp/data --force
        csound-assistant data build --strip-comments
    """
    from .build import build_dataset

    out_dir = out_dir or _work(work_dir, run) / "data"
    # the top-level command kills child process groups on SIGTERM/SIGHUP/Ctrl-C (cli.main)
    with domain_errors():
        record = build_dataset(out_dir, manual_dir=manual_dir, limit=limit, workers=workers,
                               force=force, cache_dir=cache_dir, use_cache=not no_cache,
                               fixes_per_example=fixes_per_example, fim_cuts=fim_cuts,
                               fim_kinds=tuple(k.strip() for k in fim_kinds.split(",") if k.strip()),
                               fim_context_share=fim_context_share,
                               strip_comments=strip_comments,
                               max_tokens=max_tokens or None, patch_count=patch_count,
                               self_source=self_source, progress=True,
                               log=lambda m: click.echo(m, err=True))
    click.echo(summary(record))
    click.echo(f"rows written to {out_dir / record['rows_file']}")


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def summary(record: dict) -> str:
    lines = [f"{record['rows']} rows, {record['rows_with_code']} with code answers "
             f"({record['code_answers_checked']} code answers compile-checked and rendered) "
             f"in {record['wall_seconds']} s wall, {record['cpu_seconds']} s CPU (load average "
             f"{record['load_average']['start']} -> {record['load_average']['end']} on "
             f"{record['load_average']['cores']} cores)",
             "examples: " + ", ".join(f"{k} {v}" for k, v in record["examples"].items())]
    for key in ("example_render", "example_dropped", "self_source", "fix_verified",
                "fix_rejected_still_compiles", "fragment", "row_dropped"):
        if record["counts"].get(key):
            lines.append(f"{key}: " + _counts(record["counts"][key]))
    lines.append("rows by task: " + _counts(record["rows_by_task"]))
    return "\n".join(lines)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="Flag rows longer than this (the training context length).")
@click.option("--tokenizer", default=None,
              help="Folder or tokenizer.json to count tokens with (e.g. runs/default/base); "
                   "default: estimate 2.5 characters per token.")
@click.option("--prompt-format", default="chatml", show_default=True,
              help="Prompt format used to render rows when measuring length.")
@click.option("--compile", "compile_", is_flag=True,
              help="Also compile-check every code answer with Csound (sandboxed).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def validate(file, max_tokens, tokenizer, prompt_format, compile_, workers):
    """Check a JSONL file (or a JSON array) of training rows and report every problem at once
    with its line number; exit non-zero if there is any. The file is never modified.

    Accepts chat {"messages": [...]}, {"instruction", "input", "output"}, {"prompt",
    "completion"} and FIM {"prefix", "middle", "suffix"} rows.

    \b
    Examples:
        csound-assistant data validate my_rows.jsonl
        csound-assistant data validate runs/default/data/rows.jsonl --max-tokens 2048 --compile
    """
    from .validate import validate_file

    with domain_errors():
        report = validate_file(file, max_tokens=max_tokens, tokenizer=tokenizer,
                               prompt_format=prompt_format, compile=compile_, workers=workers)
    kinds = ", ".join(f"{k} {v}" for k, v in report.kinds.items())
    extra = f"; {report.compiled} code answers compile" if compile_ else ""
    click.echo(f"{file}: {report.rows} rows OK ({kinds}){extra}")


@cli.command()
@click.argument("rows_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <work-dir>/<run>/splits].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ratios", default="0.9,0.05,0.05", show_default=True,
              help="train,validation,test shares (normalized).")
@click.option("--keep-in-train", "keep_in_train", default=None, metavar="ADAPTER_DIR",
              type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Keep every source example whose rows this adapter was trained on (its "
                   "train_rows.sha1.txt.gz) in train, e.g. train/starter before continuing it.")
@click.option("--feedback", "feedback_dir", default=None,
              type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="A `data from-feedback` folder whose rows join train [default: without "
                   "ROWS_FILE, <work-dir>/<run>/feedback when it is finished].")
@click.option("--no-feedback", is_flag=True, help="Leave the run's feedback rows out.")
@work_dir_option
@run_option
@force_option
def split(rows_file, out_dir, seed, ratios, keep_in_train, feedback_dir, no_feedback, work_dir,
          run, force):
    """Split rows into train/validation/test deterministically by --seed, keeping all rows of
    one source example (meta.group) in the same split. Rows made from feedback (`data
    from-feedback`) join train only.

    \b
    Examples:
        csound-assistant data split
        csound-assistant data split my_rows.jsonl --out /tmp/splits --ratios 0.8,0.1,0.1 --seed 1
        csound-assistant data split --keep-in-train train/starter --force
    """
    from csound_assistant.errors import DataError
    from csound_assistant.row_identity import ROW_HASHES, trained_rows
    from csound_assistant.stage_records import Data, Feedback

    from .split import split_dataset

    work = _work(work_dir, run)
    out_dir = out_dir or work / "splits"
    with domain_errors():
        feedback = None
        if feedback_dir and not no_feedback:
            feedback = Feedback.read(feedback_dir)
        elif not (rows_file or no_feedback) and Feedback.built_in(work):
            feedback = Feedback.in_run(work)  # the run's own data: the run's own feedback
        rows_file = rows_file or Data.in_run(work).rows_path
        kept = None
        if keep_in_train is not None:
            kept = trained_rows(keep_in_train)
            if kept is None:
                raise DataError(f"{keep_in_train} lists no training rows ({ROW_HASHES}): "
                                "only an adapter made by `train make-starter` does")
        record = split_dataset(rows_file, out_dir, seed=seed, ratios=ratios, force=force,
                               keep_in_train=kept, feedback=feedback)
    click.echo("rows: " + ", ".join(f"{k} {v}" for k, v in record["rows"].items())
               + "; groups: " + ", ".join(f"{k} {v}" for k, v in record["groups"].items()))
    if feedback:
        click.echo(f"train holds {record['feedback_rows']} rows from {feedback.folder}")
    click.echo(f"splits written to {out_dir}")


@cli.command()
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where stats.json, stats.md and tokens.png go [default: <file's folder>/stats].")
@click.option("--tokenizer", default=None,
              help="Folder or tokenizer.json to count tokens with; default: chars/2.5.")
@click.option("--prompt-format", default="chatml", show_default=True)
@click.option("--manual-dir", type=click.Path(path_type=Path, file_okay=False),
              default=DEFAULT_MANUAL_DIR, show_default=True,
              help="Manual used to measure opcode coverage (skipped when absent).")
@work_dir_option
@run_option
def stats(file, out_dir, tokenizer, prompt_format, manual_dir, work_dir, run):
    """Counts per format, task and category, opcode coverage and a token-length histogram.

    \b
    Examples:
        csound-assistant data stats
        csound-assistant data stats runs/default/splits/train.jsonl --tokenizer runs/default/base
    """
    from .stats import markdown, write_stats

    file = file or _work(work_dir, run) / "data" / "rows.jsonl"
    out_dir = out_dir or file.parent / "stats"
    known = None
    with domain_errors():
        if (manual_dir / "examples").is_dir():
            from .examples import load_manual

            known = {n for n in load_manual(manual_dir, limit=1).known}
        result = write_stats(file, out_dir, tokenizer=tokenizer, prompt_format=prompt_format,
                             known_opcodes=known)
    click.echo(markdown(result))
    click.echo(f"written to {out_dir}/stats.json, stats.md, tokens.png")


@cli.command()
@click.argument("repo_id")
@click.option("--splits", "splits_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Split folder [default: <work-dir>/<run>/splits].")
@click.option("--token", envvar="HF_TOKEN", default=None, help="Hub token [env HF_TOKEN].")
@click.option("--public", is_flag=True, help="Make a new repository public (default: private).")
@work_dir_option
@run_option
def push(repo_id, splits_dir, token, public, work_dir, run):
    """Upload the split dataset to the Hugging Face Hub as REPO_ID (a dataset repository), with
    a dataset card carrying the GFDL licence and attribution.

    \b
    Example:
        HF_TOKEN=hf_... csound-assistant data push me/csound-assistant-data
    """
    from .push import push_dataset

    splits_dir = splits_dir or _work(work_dir, run) / "splits"
    with domain_errors():
        url = push_dataset(splits_dir, repo_id, token=token, private=not public)
    click.echo(f"pushed to {url}")


@cli.command("from-feedback")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="CSOUND_ASSISTANT_FEEDBACK_DB",
              help="The server's --feedback-db [env CSOUND_ASSISTANT_FEEDBACK_DB; default: "
                   "<work-dir>/<run>/feedback.db].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <work-dir>/<run>/feedback].")
@click.option("--include-good", is_flag=True,
              help="Also learn from completions marked good without a correction.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@work_dir_option
@run_option
@force_option
def from_feedback(db, out_dir, include_good, workers, work_dir, run, force):
    """Turn corrected completions from the feedback store into training rows. A row is kept
    only if it is under 64 kB, the sandbox's scan refuses nothing anywhere in it (prompt
    included) and Csound's check in the sandbox passes; record.json says why each other row
    was dropped. Kept rows go to <run>/feedback/ only: `data split` (or the next `pipeline`)
    adds them to the train split.

    \b
    Example:
        csound-assistant data from-feedback --force
        csound-assistant pipeline      # re-splits with them, retrains and exports again
        # stage by stage instead:
        csound-assistant data split --force && csound-assistant train run --force
    """
    from .from_feedback import rows_from_feedback

    work = _work(work_dir, run)
    with domain_errors():
        record = rows_from_feedback(
            db or work / "feedback.db", out_dir or work / "feedback", include_good=include_good,
            force=force, workers=workers, log=lambda m: click.echo(m, err=True))
    click.echo(f"{record['rows']} rows kept of {record['considered']} "
               f"(dropped: {record['dropped'] or 'none'})")
    click.echo("next: `csound-assistant pipeline` re-splits with them and retrains (or, stage "
               "by stage, `csound-assistant data split --force`)")
