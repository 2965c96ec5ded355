#!/usr/bin/env bash
# One GPU-machine session step, run from the repo root there (results in bench/NOTES.md):
#   bash bench/gpu_session.sh bench    # bench/train_throughput.py: the seed's SFTTrainer vs the
#                                      # recipe and its variants, each row in its own process
#   bash bench/gpu_session.sh tests    # pytest -m gpu (tests/test_gpu_*.py)
#   bash bench/gpu_session.sh recipe   # `train run` QLoRA on a CodeLlama-7B-shaped random base
#   bash bench/gpu_session.sh ddp      # the same on 1 GPU, then 2 GPUs under accelerate launch
#   bash bench/gpu_session.sh fsdp     # bench/fsdp_shape.py: QLoRA at CodeLlama-34B shape, plain
#                                      # vs FSDP2 with CPU offload, each in its own process
#   bash bench/gpu_session.sh pipeline # `csound-assistant pipeline codellama-7b-random-gpu.yaml`
#                                      # end to end (needs prepare_gpu_carry.sh --pipeline's
#                                      # .csound/ and .llama/ too); PIPELINE_TIMEOUT (s) stops
#                                      # it, and a second call on the warm machine resumes it
# Several steps in one call: bash bench/gpu_session.sh tests bench
# Needs .whl/ and .gpu/ carried along (bash bench/prepare_gpu_carry.sh [runs/<run>]: the wheels
# of requirements-gpu.lock, SmolLM2's tokenizer, a run's splits for recipe/ddp). Extra arguments
# for the bench: BENCH_ARGS="--rows ..."; TESTS_TIMEOUT caps pytest (seconds), TESTS_K picks
# tests (pytest -k). Results go to
# $OUT (at most 8 files come back).
set -eo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REPO=$PWD
install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$@"
}
install .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The pinned transformers/peft were written against torch 2.13; the image has an older torch.
if ! python3 -c 'from transformers import LlamaForCausalLM; import peft, trl' 2>/tmp/pinned.err
then
  echo "the pinned transformers/peft do not import on this torch: $(tail -1 /tmp/pinned.err)"
  echo "falling back to the image's transformers and peft"
  rm -rf /tmp/site
  install $(ls .whl/*.whl | grep -v -E '/(transformers|peft|huggingface_hub)-')
fi
install --no-build-isolation . >/dev/null
export CSOUND_ASSISTANT_GPU_TOKENIZER=$REPO/.gpu/tokenizer
cd /tmp  # import the installed package, not the source folders
python3 - <<'PY' | tee "$OUT/versions.txt"
import importlib.metadata as m, torch
print(torch.cuda.get_device_name(), torch.cuda.device_count(), "GPU(s), CUDA", torch.version.cuda,
      {p: m.version(p) for p in ("torch", "transformers", "peft", "trl", "bitsandbytes",
                                 "liger-kernel", "accelerate", "datasets", "huggingface-hub")})
PY
base() {  # a CodeLlama-7B-shaped random base with SmolLM2's tokenizer, and the splits
  W=/tmp/runs/gpu
  if [ ! -f $W/base/record.json ]; then
    python3 $REPO/bench/random_base.py $W/base --tokenizer $REPO/.gpu/tokenizer
  fi
  mkdir -p $W && rm -rf $W/splits && cp -r $REPO/.gpu/splits $W/splits
}
csound_setup() {  # Debian's Csound and bubblewrap, the manual, llama.cpp for export and eval
  # Csound runs in a sandbox that clears the environment and binds only the system library
  # folders, so LD_LIBRARY_PATH cannot reach a library folder elsewhere: the libraries go to
  # /usr/local/lib (in the loader's path; ldconfig), the binaries and plugins under it.
  local deb=/tmp/csound-debs C=/usr/local/lib/csound-debian
  if [ ! -x $C/csound ]; then
    rm -rf $deb && mkdir -p $deb $C /usr/local/lib/csound
    for f in $REPO/.csound/debs/*.deb; do dpkg -x "$f" $deb; done
    cp -a $deb/usr/lib/x86_64-linux-gnu/lib*.so* /usr/local/lib/
    cp -a $deb/usr/lib/x86_64-linux-gnu/csound/plugins64-6.0 /usr/local/lib/csound/
    # bwrap in /usr/bin: the sandbox starts it with PATH=/usr/bin:/bin (isolation.run)
    cp $deb/usr/bin/csound $C/csound && cp $deb/usr/bin/bwrap /usr/bin/bwrap
    ldconfig
    mkdir -p /usr/share/doc/csound-doc && tar -C /usr/share/doc/csound-doc -xJf $REPO/.csound/manual.tar.xz
    mkdir -p /tmp/llama-site && tar -C /tmp/llama-site -xJf $REPO/.llama/site.tar.xz
    install $REPO/.llama/*.whl
  fi
  export CSOUND_ASSISTANT_CSOUND=$C/csound OPCODE6DIR64=/usr/local/lib/csound/plugins64-6.0
  export PYTHONPATH=/tmp/site:/tmp/llama-site
  export CSOUND_ASSISTANT_LLAMA_CPP_TOOLS=$REPO/.csound/llama.cpp-tools
  $C/csound --version 2>&1 | head -1
  local why
  why=$(python3 -c 'from csound_assistant import isolation, sandbox
print(isolation.probe(sandbox.CSOUND) or "")')
  if [ -n "$why" ]; then
    echo "no sandbox here ($why): CSOUND_ASSISTANT_UNISOLATED=1, Csound runs with limits only"
    export CSOUND_ASSISTANT_UNISOLATED=1
  else
    echo "Csound runs in bubblewrap's sandbox"
  fi
}
collect() {  # $1: tag
  cp /tmp/runs/gpu/adapter/metrics.json $OUT/$1-metrics.json
  cp /tmp/runs/gpu/adapter/record.json $OUT/$1-record.json
}
for step in "$@"; do
  case "$step" in
    bench)
      # shellcheck disable=SC2086
      python3 $REPO/bench/train_throughput.py --out-dir /tmp/bench $BENCH_ARGS 2>&1 \
        | tee $OUT/bench.log \
        || echo "bench: exit status $?"
      cp /tmp/bench/table.md /tmp/bench/train_throughput.json $OUT/ 2>/dev/null || true
      tar czf $OUT/bench-rows.tar.gz -C /tmp bench ;;
    tests)
      timeout ${TESTS_TIMEOUT:-600} python3 -m pytest -c $REPO/pyproject.toml --rootdir $REPO -m gpu -p no:cacheprovider \
        -o addopts="" -ra -v ${TESTS_K:+-k "$TESTS_K"} $REPO/tests/test_gpu_*.py 2>&1 \
        | tee $OUT/tests.log \
        || echo "tests: exit status $?" ;;
    recipe)
      base
      python3 -m csound_assistant.cli train run -c $REPO/train/configs/codellama-7b-qlora.yaml \
        --work-dir /tmp/runs --run gpu --force --set max_steps=${STEPS:-30} --set eval_every=10 \
        --set save_every=10 --set warmup_steps=5 2>&1 | tee $OUT/recipe.log
      collect qlora ;;
    ddp)
      base
      for n in 1 2; do
        accelerate launch --num_processes $n --num_machines 1 --mixed_precision no \
          --dynamo_backend no -m csound_assistant.cli train run \
          -c $REPO/train/configs/codellama-7b-qlora-2gpu.yaml --work-dir /tmp/runs --run gpu \
          --force --set max_steps=${STEPS:-16} --set eval_every=0 --set save_every=0 \
          --set eval_batches=4 2>&1 | tee $OUT/ddp$n.log
        collect ddp$n
      done ;;
    fsdp)
      # shellcheck disable=SC2086
      python3 $REPO/bench/fsdp_shape.py --out-dir /tmp/fsdp $FSDP_ARGS 2>&1 | tee $OUT/fsdp.log \
        || echo "fsdp: exit status $?"
      tar czf $OUT/fsdp-rows.tar.gz -C /tmp fsdp ;;
    pipeline)
      csound_setup
      B=$HOME/random-7b-smollm2-tokenizer
      [ -f $B/record.json ] || python3 $REPO/bench/random_base.py $B --tokenizer $REPO/.gpu/tokenizer
      # the run's folders peak at ~62 GB (base, merged, two F16 GGUFs): more than the disk
      # holds beside the random base, so they live in memory
      mount -o remount,size=110G /dev/shm
      timeout ${PIPELINE_TIMEOUT:-540} python3 -m csound_assistant.cli pipeline \
        codellama-7b-random-gpu.yaml --work-dir /dev/shm/runs 2>&1 | tee -a $OUT/pipeline.log \
        || echo "pipeline: exit status $?"
      R=/dev/shm/runs/codellama-7b-random-gpu
      cp $R/SUMMARY.md $OUT/ 2>/dev/null || true
      (cd $R && tar czf $OUT/pipeline-records.tar.gz --ignore-failed-read */record.json \
         */metrics.json eval/report.md eval/report.json adapter/loss_curve.png 2>/dev/null) \
        || true ;;
    *) echo "gpu_session.sh: unknown step '$step' (bench, tests, recipe, ddp, fsdp, pipeline)" >&2
       exit 2 ;;
  esac
done
