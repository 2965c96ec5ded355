"""Commands of the convert stage: ``csound-assistant export`` and its steps."""

from __future__ import annotations

from pathlib import Path

import click

from csound_assistant.clicommon import domain_errors, force_option, run_option, work_dir_option
from csound_assistant.constants import DEFAULT_MODEL_NAME, QUANT_TYPES
from csound_assistant.export_settings import EXPORT_DEFAULTS

quant_option = click.option(
    "--quant", "quant_types", multiple=True, type=click.Choice(list(QUANT_TYPES)),
    default=list(EXPORT_DEFAULTS.quant_types), show_default=True,
    envvar="CSOUND_ASSISTANT_QUANT",
    help="llama.cpp quantization type; repeat for several (F16 is always written). The first "
         "is the one `modelfile` packages and `eval run` scores.")
name_option = click.option("--name", default=DEFAULT_MODEL_NAME, show_default=True,
                           help="Model name: file names and GGUF general.name.")
adapter_option = click.option("--adapter", "adapter_dir", type=click.Path(file_okay=False),
                              help="Adapter folder [default: <work-dir>/<run>/adapter].")
base_option = click.option("--base", "base_dir", type=click.Path(file_okay=False),
                           help="Full-precision base folder [default: the one the adapter's "
                                "record names].")


def _run_dir(work_dir, run) -> Path:
    from csound_assistant.artifacts import work_dir as resolve

    return resolve(work_dir, run)


@click.group(invoke_without_command=True)
@work_dir_option
@run_option
@adapter_option
@base_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Export folder [default: <work-dir>/<run>/export].")
@quant_option
@name_option
@click.option("--gate/--no-gate", default=EXPORT_DEFAULTS.gate, show_default=True,
              help="Fail when a quantized GGUF drifts from F16 beyond the thresholds (without "
                   "it the gate is measured and recorded only).")
@click.option("--gate-tokens", default=EXPORT_DEFAULTS.gate_tokens, show_default=True,
              help="Held-out tokens the gate compares.")
@click.option("--lora/--no-lora", default=EXPORT_DEFAULTS.lora, show_default=True,
              help="Also write <name>.lora.gguf (the adapter alone).")
@click.option("--imatrix/--no-imatrix", default=EXPORT_DEFAULTS.imatrix, show_default=True,
              help="Quantize with an importance matrix from the train split (or the manual).")
@click.option("--push", "push_repo", metavar="REPO_ID", help="Then upload to this Hub repo.")
@force_option
@click.pass_context
def cli(ctx, work_dir, run, adapter_dir, base_dir, out_dir, quant_types, name, gate, gate_tokens,
        lora, imatrix, push_repo, force):
    """Merge, convert to GGUF, quantize and gate a trained model (all steps).

    Reads runs/<run>/adapter, writes runs/<run>/merged and runs/<run>/export
    (<name>.F16.gguf, <name>.<QUANT>.gguf for each --quant, <name>.lora.gguf, SHA256SUMS,
    README.md, record.json). The defaults are the pipeline's (csound_assistant/export_settings.py).

    \b
    Example:
        csound-assistant export --run demo --quant Q4_K_M --quant Q8_0
    Steps alone: export merge | convert | lora | quantize | gate | push | tools
    """
    if ctx.invoked_subcommand is not None:
        return
    from .export import export, push

    run_dir = _run_dir(work_dir, run)
    out = Path(out_dir) if out_dir else run_dir / "export"
    with domain_errors():
        export(Path(adapter_dir) if adapter_dir else run_dir / "adapter", out,
               quant_types=quant_types, gate=gate, lora=lora, name=name, force=force,
               merged_dir=run_dir / "merged" if not out_dir else None,
               base_dir=base_dir, imatrix=imatrix,
               gate_tokens=gate_tokens, log=click.echo)
        if push_repo:
            push(out, push_repo, log=click.echo)


@cli.command("merge")
@work_dir_option
@run_option
@adapter_option
@base_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Merged folder [default: <work-dir>/<run>/merged].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
              default="auto", show_default=True, help="Weights dtype (auto: the base's).")
@force_option
def merge_cmd(work_dir, run, adapter_dir, base_dir, out_dir, dtype, force):
    """Merge a LoRA adapter into its full-precision base (a 4-bit base is refused).

    \b
    Example:
        csound-assistant export merge --run demo
    """
    from .merge import merge

    run_dir = _run_dir(work_dir, run)
    with domain_errors():
        merge(Path(adapter_dir) if adapter_dir else run_dir / "adapter",
              Path(out_dir) if out_dir else run_dir / "merged", base_dir=base_dir, dtype=dtype,
              force=force, log=click.echo)


@cli.command("convert")
@click.argument("merged_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("gguf_path", type=click.Path(dir_okay=False))
@name_option
@click.option("--outtype", type=click.Choice(["f16", "bf16", "f32", "q8_0"]), default="f16",
              show_default=True)
def convert_cmd(merged_dir, gguf_path, name, outtype):
    """Convert a merged HF folder to GGUF with llama.cpp's convert_hf_to_gguf.py, embedding
    the prompt format (chat template, stop, pad and FIM token ids) and provenance.

    \b
    Example:
        csound-assistant export convert runs/demo/merged model.F16.gguf
    """
    from .export import provenance
    from .merge import load_prompt_format, resolve_adapter

    with domain_errors():
        merged = Path(merged_dir)
        fmt = load_prompt_format(merged)
        meta = {"name": name}
        from csound_assistant.artifacts import read_record

        adapter_dir = read_record(merged).get("adapter", {}).get("dir")
        if adapter_dir and Path(adapter_dir).is_dir():
            meta = provenance(resolve_adapter(adapter_dir), name)
        from .gguf_convert import convert

        convert(merged, gguf_path, prompt_format=fmt, metadata=meta, outtype=outtype,
                log=click.echo)
        click.echo(f"wrote {gguf_path}")


@cli.command("lora")
@work_dir_option
@run_option
@adapter_option
@base_option
@click.argument("gguf_path", type=click.Path(dir_okay=False))
@name_option
def lora_cmd(work_dir, run, adapter_dir, base_dir, gguf_path, name):
    """Convert the peft adapter to a GGUF LoRA (llama.cpp's convert_lora_to_gguf.py).

    \b
    Example:
        csound-assistant export lora --run demo csound-assistant.lora.gguf
    """
    from .export import provenance
    from .gguf_convert import convert_lora
    from .merge import resolve_adapter

    run_dir = _run_dir(work_dir, run)
    with domain_errors():
        adapter = resolve_adapter(Path(adapter_dir) if adapter_dir else run_dir / "adapter",
                                  base_dir)
        convert_lora(adapter.dir, adapter.base_dir, gguf_path,
                     metadata=provenance(adapter, name), log=click.echo)
        click.echo(f"wrote {gguf_path}")


@cli.command("quantize")
@click.argument("src_gguf", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst_gguf", type=click.Path(dir_okay=False))
@click.option("--type", "quant_type", type=click.Choice(list(QUANT_TYPES)),
              default=EXPORT_DEFAULTS.quant_types[0], show_default=True)
@click.option("--imatrix-from", "merged_dir", type=click.Path(exists=True, file_okay=False),
              help="Merged HF folder: compute an importance matrix on Csound text with it.")
@click.option("--splits", "splits_dir", type=click.Path(file_okay=False),
              help="Splits folder whose train.jsonl feeds the importance matrix.")
@click.option("--verbose", is_flag=True, help="Show llama.cpp's per-tensor log.")
def quantize_cmd(src_gguf, dst_gguf, quant_type, merged_dir, splits_dir, verbose):
    """Quantize a GGUF with llama.cpp's quantizer (llama_model_quantize).

    \b
    Example:
        csound-assistant export quantize model.F16.gguf model.Q4_K_M.gguf --type Q4_K_M
    """
    from .gate import heldout_texts, spread
    from .merge import load_prompt_format
    from .quantize import importance_matrix, quantize

    with domain_errors():
        im = None
        if merged_dir:
            texts, source = heldout_texts(splits_dir, load_prompt_format(Path(merged_dir)),
                                          "imatrix")
            click.echo(f"imatrix: from {source}")
            tokens = EXPORT_DEFAULTS.imatrix_tokens
            im = importance_matrix(merged_dir, spread(texts, tokens), log=click.echo)
        census = quantize(src_gguf, dst_gguf, quant_type, imatrix=im, verbose=verbose)
        click.echo(f"wrote {dst_gguf}: {census['bits_per_weight']} bits/weight, tensors "
                   f"{census['tensors']} ({census['fallback_tensors']} fell back to other types)")


@cli.command("gate")
@click.argument("f16_gguf", type=click.Path(exists=True, dir_okay=False))
@click.argument("quant_gguf", type=click.Path(exists=True, dir_okay=False))
@click.option("--type", "quant_type", type=click.Choice(list(QUANT_TYPES)),
              default=EXPORT_DEFAULTS.quant_types[0], show_default=True,
              help="Which thresholds apply.")
@click.option("--splits", "splits_dir", type=click.Path(file_okay=False),
              help="Splits folder whose test.jsonl is the held-out text [default: the Csound "
                   "manual examples].")
@click.option("--format", "format_name", default="chatml", show_default=True,
              help="Prompt format for rendering split rows.")
@click.option("--tokens", default=EXPORT_DEFAULTS.gate_tokens, show_default=True,
              help="Held-out tokens to compare.")
def gate_cmd(f16_gguf, quant_gguf, quant_type, splits_dir, format_name, tokens):
    """Compare a quantized GGUF with the F16 GGUF: perplexity, KL divergence, same top token.
    Exits with status 1 when past the thresholds.

    \b
    Example:
        csound-assistant export gate model.F16.gguf model.Q4_K_M.gguf --type Q4_K_M
    """
    from csound_assistant.prompt_format import get_format

    from .gate import gate, heldout_texts, spread, table

    with domain_errors():
        texts, source = heldout_texts(Path(splits_dir) if splits_dir else None,
                                      get_format(format_name), "gate")
        click.echo(f"held-out text: {source}")
        results = gate(f16_gguf, {quant_type: Path(quant_gguf)}, spread(texts, tokens),
                       max_tokens=tokens)
        click.echo(table(results))


@cli.command("push")
@work_dir_option
@run_option
@click.argument("repo_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Export folder [default: <work-dir>/<run>/export].")
@click.option("--private", is_flag=True)
def push_cmd(work_dir, run, repo_id, out_dir, private):
    """Upload a finished export folder to the Hugging Face Hub (needs network and a token).

    \b
    Example:
        csound-assistant export push --run demo you/csound-assistant-GGUF
    """
    from .export import push

    with domain_errors():
        push(Path(out_dir) if out_dir else _run_dir(work_dir, run) / "export", repo_id,
             private=private, log=click.echo)


@cli.command("tools")
@click.option("--sdist", type=click.Path(exists=True, dir_okay=False),
              help="Use this llama_cpp_python-<version>.tar.gz instead of downloading.")
def tools_cmd(sdist):
    """Fetch llama.cpp's converter scripts from the matching llama-cpp-python sdist (once).

    \b
    Example:
        csound-assistant export tools
    """
    from .llama_cpp_tools import ensure

    with domain_errors():
        ensure(sdist=sdist, log=click.echo)
