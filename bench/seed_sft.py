"""The seed's training script at CodeLlama-7B shape: trl's SFTTrainer with the seed guide's
arguments, one configuration per process, timed. `bench/train_throughput.py` runs it as the
baseline row of its table; it also runs alone:

    python bench/seed_sft.py /tmp/codellama-7b-random --out seed.json [--steps 14]

The seed guide's arguments: CodeLlama-7B loaded in 4-bit NF4 with double quantisation, LoRA
r=16, alpha=32, dropout 0.05 on q/k/v/o, per-device batch 4 x gradient accumulation 4,
learning rate 2e-4, sequences up to 2048 tokens, padded per batch, no packing; everything else
trl's default (gradient checkpointing on, AdamW, linear schedule, logging every 10 steps).
Changes today's trl/transformers force, and nothing else:
- ``fp16=True`` -> ``bf16=True``: fp16 loss scaling fails on a bf16 checkpoint
  ("_amp_foreach_non_finite_check_and_unscale_cuda not implemented for 'BFloat16'"), so the
  4-bit compute dtype is bf16 too;
- ``tokenizer=`` -> ``processing_class=``; ``dataset_text_field``/``max_seq_length`` (SFTTrainer
  keywords) -> ``SFTConfig`` (``max_length=2048``); ``TrainingArguments`` -> ``SFTConfig``;
- ``warmup_ratio`` (gone from transformers 5) -> ``warmup_steps`` (0 over these few steps).
The documents are random token ids with the real dataset's lengths, given already tokenized
(trl then skips its tokenizer), so the text field becomes an ``input_ids`` column; the loss is
on every token, as with the seed's text field. The tokenizer is a word-level one over the
CodeLlama vocabulary size, used only for its EOS (the seed's pad token).

Measured: real (non-pad) tokens/s over the optimizer steps after the first ``--warmup``
(counted at the model's input, from the attention mask), and peak GPU memory of the whole
process (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import docs_for_bench, versions  # noqa: E402

SEED = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj",
            "o_proj"], per_device_train_batch_size=4, gradient_accumulation_steps=4,
            learning_rate=2e-4, max_length=2048)


def word_level_tokenizer(vocab_size: int, out: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.pad_token = tokenizer.eos_token  # the seed's choice: CodeLlama has no pad token
    tokenizer.save_pretrained(out)
    return tokenizer


def run(model_dir: Path, steps: int, warmup: int, lengths: str | None) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    docs = docs_for_bench(steps * 16, lengths)
    dataset = Dataset.from_dict({"input_ids": [ids for ids, _ in docs]})
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)  # seed: float16
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant,
                                                 device_map="auto")
    lora = LoraConfig(r=SEED["r"], lora_alpha=SEED["lora_alpha"],
                      lora_dropout=SEED["lora_dropout"], target_modules=SEED["target_modules"],
                      bias="none", task_type="CAUSAL_LM")
    work = Path(tempfile.mkdtemp(prefix="seed-sft-"))
    tokenizer = word_level_tokenizer(model.config.vocab_size, work / "tokenizer")
    config = SFTConfig(
        output_dir=str(work / "out"), per_device_train_batch_size=4,
        gradient_accumulation_steps=4, learning_rate=2e-4, max_length=2048, bf16=True,
        max_steps=steps, warmup_steps=0, save_strategy="no", report_to="none",
        dataloader_num_workers=0, seed=0,
    )

    counted = {"on": False, "real": [], "computed": []}

    def count(module, args, kwargs):  # every micro-batch's tokens, as the model receives them
        if counted["on"]:
            mask = kwargs["attention_mask"]
            counted["real"].append(mask.sum())
            counted["computed"].append(mask.numel())

    clock = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                clock["t0"] = time.perf_counter()
                counted["on"] = True

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == steps:
                torch.cuda.synchronize()
                clock["t1"] = time.perf_counter()

    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
    trainer.model.register_forward_pre_hook(count, with_kwargs=True)
    trainer.train()
    seconds = clock["t1"] - clock["t0"]
    real = int(torch.stack(counted["real"]).sum())
    computed = sum(counted["computed"])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"tokens_s": real / seconds, "computed_tokens_s": computed / seconds,
            "real_over_computed": real / computed, "seconds": seconds,
            "timed_steps": steps - warmup, "micro_batches": len(counted["real"]),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "gradient_checkpointing": trainer.args.gradient_checkpointing,
            "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
            "losses": losses,
            "seed_arguments": SEED, "versions": versions()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=14,
                    help="optimizer steps, the first --warmup untimed")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lengths", default=None, help="JSON [[tokens, prompt tokens], ...]")
    a = ap.parse_args()
    result = run(a.model_dir, a.steps, a.warmup, a.lengths)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("losses", "versions")}))


if __name__ == "__main__":
    main()
