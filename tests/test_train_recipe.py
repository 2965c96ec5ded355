"""The recipe on the tiny random model: packing keeps documents apart, resume after a kill,
the adapter folder, and an adapter that learns to stop."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from csound_assistant.artifacts import read_record
from csound_assistant.errors import ArtifactError
from csound_assistant.prompt_format import get_format
from csound_assistant.train.batching import (
    BatchPlan, collate_grouped, collate_packed, plan_grouped, plan_packed, trained_tokens,
)
from csound_assistant.train.config import load_config
from csound_assistant.train.encode import encode_row, special_ids
from csound_assistant.train.recipe import CHECKPOINTS, train
from train_helpers import ROWS, make_work

FMT = get_format("chatml")
FAST = ["max_length=256", "batch_tokens=512", "max_batch_rows=4", "lora_dropout=0",
        "progress=false", "warmup_steps=2"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = [encode_row(tokenizer, FMT, r) for r in ROWS * 2]
    return tiny_model_dir, tokenizer, docs


def _loss(model, batch, n):
    return model(**{k: v for k, v in batch.items()}, num_items_in_batch=n).loss


def test_packed_and_unpacked_loss_and_gradients_agree(tiny):
    base, tokenizer, docs = tiny
    pad = special_ids(tokenizer, FMT)["pad"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa")
    n = trained_tokens(docs)
    results = {}
    for name, batch in (("packed", collate_packed(docs)), ("padded", collate_grouped(docs, pad)),
                        ("one by one", None)):
        model.zero_grad()
        if batch is None:
            loss = sum(_loss(model, collate_grouped([d], pad), n) for d in docs)
        else:
            loss = _loss(model, batch, n)
        loss.backward()
        results[name] = (loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    for name in ("padded", "one by one"):
        assert results["packed"][0] == pytest.approx(results[name][0], rel=1e-5)
        torch.testing.assert_close(results["packed"][1], results[name][1], rtol=1e-4, atol=1e-6)
    # control: the same row with positions running on (documents not kept apart) differs
    leaky = collate_packed(docs)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    with torch.no_grad():
        assert _loss(model, leaky, n).item() != pytest.approx(results["packed"][0], rel=1e-3)


def test_loss_on_trained_positions_only_equals_the_full_loss(tiny):
    """The recipe projects onto the vocabulary only where a label is trained; loss and
    gradients must be transformers' own, packed and padded, and the prompt must cost no logits."""
    from csound_assistant.train.recipe import _trained_positions_loss

    base, tokenizer, docs = tiny
    pad = special_ids(tokenizer, FMT)["pad"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa")
    n = trained_tokens(docs)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape[-2]))
    for batch in (collate_packed(docs), collate_grouped(docs, pad)):
        results = []
        for fn in (_loss, _trained_positions_loss):
            model.zero_grad()
            loss = fn(model, dict(batch), n)
            loss.backward()
            results.append((loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
        assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
    hook.remove()
    width = collate_packed(docs)["input_ids"].shape[1]
    assert seen[0] == width and seen[1] < width  # full logits, then only the trained positions


def test_packed_row_layout(tiny):
    _, _, docs = tiny
    batch = collate_packed(docs[:3])
    lengths = [len(d) for d in docs[:3]]
    assert batch["cu_seq_lens_q"].tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    pos = batch["position_ids"][0].tolist()
    assert pos == [*range(lengths[0]), *range(lengths[1]), *range(lengths[2])]
    starts = batch["cu_seq_lens_q"][:-1].tolist()
    assert all(batch["labels"][0, s].item() == -100 for s in starts)


def test_batch_plans_respect_the_token_budget_and_cover_every_row():
    lengths = [5, 300, 40, 200, 120, 60, 500, 10] * 5
    order = list(range(len(lengths)))
    for batches in (plan_packed(lengths, order, 512, 8), plan_grouped(lengths, order, 512, 8, None)):
        assert sorted(i for b in batches for i in b) == order
        assert all(len(b) <= 8 for b in batches)
    assert all(sum(lengths[i] for i in b) <= 512 for b in plan_packed(lengths, order, 512, 8))
    assert all(len(b) * max(lengths[i] for i in b) <= 512
               for b in plan_grouped(lengths, order, 512, 8, None))


def test_batch_order_is_a_function_of_seed_and_step(tiny):
    _, _, docs = tiny
    a, b = (BatchPlan(docs, False, 256, 2, seed=3) for _ in range(2))
    assert [[len(e) for e in m] for m in a.step(5, 2)] == [[len(e) for e in m] for m in b.step(5, 2)]


def test_rows_listed_first_open_every_epoch_in_both_layouts():
    """A continuation's new rows (feedback corrections) lead each epoch, so a run its time
    budget ends a few steps in still trains on them; every row is still seen once an epoch."""
    from csound_assistant.train.encode import Encoded

    lengths = [5, 300, 40, 200, 120, 60, 500, 10] * 30
    docs = [Encoded([1] * n, [1] * n, "chat", row=i) for i, n in enumerate(lengths)]
    first = frozenset({7, 100, 201})
    for packed in (True, False):
        plan = BatchPlan(docs, packed, 512, 2, seed=0, first=first)
        for epoch in range(2):
            batches = plan.epoch(epoch)
            assert set(batches[0]) | set(batches[1]) == first
            assert sorted(i for b in batches for i in b) == list(range(len(docs)))
        plain = BatchPlan(docs, packed, 512, 2, seed=0)
        assert not first <= set(plain.epoch(0)[0]) | set(plain.epoch(0)[1])


def _tree(adapter: Path):
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


def test_adapter_folder_and_resume_after_a_kill(tmp_path, tiny):
    """A run killed (SIGKILL) right after its first checkpoint, then resumed, ends with the
    same adapter, step count and loss history as a run that was never interrupted."""
    base = tiny[0]
    overrides = [*FAST, "max_steps=8", "save_every=3", "eval_every=4", "log_every=1",
                 "learning_rate=5e-3"]
    ref_work = make_work(tmp_path / "ref", base)
    ref = train(load_config(None, overrides), ref_work, log=lambda *a: None)

    work = make_work(tmp_path / "crash", base)
    script = textwrap.dedent(f"""
        import os, signal
        from csound_assistant.train import checkpoint, recipe
        from csound_assistant.train.config import load_config
        save = checkpoint.save
        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.save = save_then_die
        recipe.train(load_config(None, {overrides!r}), {str(work)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (work / "adapter").exists()
    assert [p.name for p in (work / CHECKPOINTS).iterdir()] == ["step-000003"]

    with pytest.raises(ArtifactError, match="config changed"):
        train(load_config(None, [*overrides[:-1], "learning_rate=1e-3"]), work, resume=True,
              log=lambda *a: None)
    lines = []
    out = train(load_config(None, overrides), work, resume=True, log=lines.append)
    assert any("resumed from" in line and "step 3/8" in line for line in lines)
    a, b = _tree(ref), _tree(out)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    ref_m, out_m = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert out_m["resumed_from_step"] == 3 and out_m["steps"] == ref_m["steps"] == 8
    assert [s for s, *_ in out_m["train_loss"]] == list(range(1, 9))
    for (s1, l1, lr1), (s2, l2, lr2) in zip(ref_m["train_loss"], out_m["train_loss"]):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4) and lr1 == pytest.approx(lr2)
    assert not (work / CHECKPOINTS).exists()  # removed once the adapter is published

    # the adapter folder: everything the next stages and a reader need
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
            "prompt_format.json", "train_config.yaml", "metrics.json", "loss_curve.png",
            "record.json"} <= names
    record = read_record(out)
    assert record["prompt_format"] == "chatml" and record["base"]["path"]
    assert record["base"]["files"]["model.safetensors"]
    assert "torch" in record["versions"] and "peft" in record["versions"]
    assert json.loads((out / "prompt_format.json").read_text()) == json.loads(
        json.dumps(FMT.to_record()))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token == "<empty_output>" and tok.eos_token == "<|im_end|>"
    assert len(tok) == len(tiny[1])
    with pytest.raises(ArtifactError, match="already exists"):
        train(load_config(None, overrides), work, log=lambda *a: None)


def test_resume_without_a_checkpoint_is_refused(tmp_path, tiny):
    work = make_work(tmp_path, tiny[0])
    with pytest.raises(ArtifactError, match="no checkpoint"):
        train(load_config(None, FAST), work, resume=True)


def _greedy(model, tokenizer, prompt, n=24):
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=[],
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_tiny_adapter_learns_to_stop_and_lowers_validation_loss(tmp_path, tiny):
    """Fast variant of the stop test: a random 2-layer model learns one short answer and its
    EOS; before training it never emits EOS in 24 greedy tokens."""
    from peft import PeftModel

    base, tokenizer, _ = tiny
    row = {"messages": [{"role": "user", "content": "Say done."},
                        {"role": "assistant", "content": "done"}]}
    work = make_work(tmp_path, base, [row] * 8, [row] * 2)
    adapter = train(load_config(None, [*FAST, "max_steps=40", "learning_rate=3e-2",
                                       "eval_every=0", "lora_r=8"]), work, log=lambda *a: None)
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["val_loss_end"] < metrics["val_loss_start"] - 1.0
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = FMT.chat_prompt([{"role": "user", "content": "Say done."}])
    model = AutoModelForCausalLM.from_pretrained(base)
    assert eos not in _greedy(model, tokenizer, prompt)
    tuned = PeftModel.from_pretrained(model, adapter)
    generated = _greedy(tuned, tokenizer, prompt)
    assert eos in generated, tokenizer.decode(generated)
    assert tokenizer.decode(generated[:generated.index(eos)]) == "done"


@pytest.mark.slow
def test_embedded_adapter_learns_to_stop_and_lowers_validation_loss(tmp_path, base_dir):
    """The real SmolLM2-135M: before, greedy output runs on without <|im_end|> on a Csound
    request (FACTS.md); after a short LoRA run on Csound answers it stops on its own."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    train_rows = [
        {"messages": [{"role": "user", "content": f"Write a Csound instrument playing a sine at "
                                                  f"{f} Hz."},
                      {"role": "assistant", "content": f"instr 1\n  aout poscil 0.3, {f}\n"
                                                       f"  outs aout, aout\nendin"}]}
        for f in (110, 220, 330, 440, 550, 660, 770, 880, 990, 1100, 1210, 1320)]
    val_rows = [train_rows.pop(3), train_rows.pop(7)]
    work = make_work(tmp_path, base_dir, train_rows, val_rows)
    adapter = train(load_config("cpu-smollm2", ["max_steps=12", "eval_every=0", "save_every=0",
                                                "progress=false", "warmup_steps=2", "tasks=[]",
                                                "time_budget_minutes=0"]), work,
                    log=lambda *a: None)
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["val_loss_end"] < metrics["val_loss_start"]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = FMT.chat_prompt([{"role": "user",
                               "content": "Write a Csound instrument playing a sine at 440 Hz."}])
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    assert eos not in _greedy(model, tokenizer, prompt, 48)
    generated = _greedy(PeftModel.from_pretrained(model, adapter), tokenizer, prompt, 48)
    assert eos in generated, tokenizer.decode(generated)
    assert "endin" in tokenizer.decode(generated[:generated.index(eos)])
