#!/usr/bin/env bash
# One GPU-machine session step, run from the repo root there (see bench/NOTES.md):
#   bash bench/gpu_session.sh bench    # bench/train_throughput.py, seed vs project settings
#   bash bench/gpu_session.sh recipe   # `train run` QLoRA on a CodeLlama-7B-shaped random base
#   bash bench/gpu_session.sh ddp      # the same on 1 GPU, then 2 GPUs under accelerate launch
# Needs .whl/ (../shared/gpu/wheels.sh) and .gpu/ (tokenizer/ and splits/, made by
# bench/prepare_gpu_carry.sh) carried along. Results go to $OUT.
set -eo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
  --target /tmp/site . >/dev/null
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd /tmp  # import the installed package, not the source folders
python3 - <<'PY'
import importlib.metadata as m, torch, inspect
from torch.nn.attention.varlen import varlen_attn
print(torch.cuda.get_device_name(), torch.cuda.device_count(), "GPU(s)",
      {p: m.version(p) for p in ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel",
                                 "accelerate")})
print("varlen_attn", inspect.signature(varlen_attn))
PY
REPO=$OLDPWD
base() {  # a CodeLlama-7B-shaped random base with SmolLM2's tokenizer, and the splits
  W=/tmp/runs/gpu
  if [ ! -f $W/base/record.json ]; then
    python3 $REPO/bench/random_base.py $W/base --tokenizer $REPO/.gpu/tokenizer
  fi
  mkdir -p $W && rm -rf $W/splits && cp -r $REPO/.gpu/splits $W/splits
}
collect() {  # $1: tag
  cp /tmp/runs/gpu/adapter/metrics.json $OUT/$1-metrics.json
  cp /tmp/runs/gpu/adapter/record.json $OUT/$1-record.json
  cp /tmp/runs/gpu/adapter/loss_curve.png $OUT/$1-loss_curve.png 2>/dev/null || true
}
case "$1" in
  bench)
    python3 $REPO/bench/train_throughput.py --out $OUT/bench.json $BENCH_ARGS 2>&1 | tee $OUT/bench.log ;;
  recipe)
    base
    python3 -m csound_assistant.cli train run -c $REPO/train/configs/codellama-7b-qlora.yaml --work-dir /tmp/runs \
      --run gpu --force --set max_steps=${STEPS:-30} --set eval_every=10 --set save_every=10 \
      --set warmup_steps=5 2>&1 | tee $OUT/recipe.log
    collect qlora ;;
  ddp)
    base
    for n in 1 2; do
      accelerate launch --num_processes $n --num_machines 1 --mixed_precision no \
        --dynamo_backend no -m csound_assistant.cli train run -c $REPO/train/configs/codellama-7b-qlora-2gpu.yaml \
        --work-dir /tmp/runs --run gpu --force --set max_steps=${STEPS:-16} \
        --set eval_every=0 --set save_every=0 --set eval_batches=4 2>&1 | tee $OUT/ddp$n.log
      collect ddp$n
    done ;;
esac
