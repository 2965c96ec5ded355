#!/usr/bin/env bash
# The embedded default (SmolLM2-135M-Instruct) trained by `train run -c gpu-smollm2-qlora` on one
# GPU. A device call carries at most 64 MiB, and the GGUF (98 MB) plus bitsandbytes (43 MB) do
# not fit one, so the GPU steps are three calls made back to back while the machine stays warm
# (what they stage lives in /tmp there; a cold machine means staging again):
#   bash bench/gpu_smollm2.sh prepare runs/exp1   # here: .gpu/p1, .gpu/p2, .gpu/w, .gpu/splits
#   bash bench/gpu_smollm2.sh part1               # device, carry .gpu/p1
#   bash bench/gpu_smollm2.sh base                # device, carry .gpu/p2 .gpu/w: `base import`
#   bash bench/gpu_smollm2.sh train               # device, carry .whl .gpu/splits; results: $OUT
#                                                 # (CONFIG=gpu-smollm2-lora picks another config)
#   bash bench/gpu_smollm2.sh unpack DIR runs/gpu-smollm2   # here: DIR = the reply's files_at
# or, in place of `train`, the recipe sweep of bench/budget_sweep.py (answers come back to $OUT):
#   bash bench/gpu_smollm2.sh sweep NAME:key=v,key=v ...   # device, carry .whl .gpu/splits .gpu/sweep
# (self-training on a GPU is the product command: csound-assistant improve self-train with
#  --set n_gpu_layers=-1; improve/README.md)
# where --opt=value arguments go to `budget_sweep.py train` as they are (--config=..., --items=...,
# --keep-adapters, --adapter=ref=DIR, --jobs=3 to train three at once, --no-answers); a kept
# adapter comes home with `unpack DIR DEST NAME`. A variant's splits=DIR trains on other splits.
# WHEELS=DIR installs DIR/*.whl in place of .whl/*.whl (plain LoRA needs no bitsandbytes: 43 MB
# of the 64 a call carries); SRC=DIR installs the package from DIR in place of the checkout
# (a `git archive HEAD` copy, when the checkout holds unfinished edits).
set -eo pipefail
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
W=/tmp/runs/gpu
install_site() {  # $@: wheels; then the package itself, imported from /tmp/site (not the source tree)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$@"
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
    --target /tmp/site "${SRC:-.}" >/dev/null
}
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CSOUND_ASSISTANT_SYNOPSES=$PWD/.gpu/splits/opcode_reference.json
case "$1" in
  prepare)
    RUN=${2:?give the run whose splits to train on, e.g. runs/exp1}
    gguf=$(.venv/bin/python -c "from csound_assistant.base.importer import embedded_gguf as e; print(e())")
    grep -qxF '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    rm -rf .gpu/p1 .gpu/p2 .gpu/w .gpu/splits && mkdir -p .gpu/p1 .gpu/p2 .gpu/w .gpu/splits
    split -n 2 -d "$gguf" .gpu/gguf.part  # 47 MiB halves, each beside the 15 MiB checkout
    mv .gpu/gguf.part00 .gpu/p1/ && mv .gpu/gguf.part0? .gpu/p2/
    (cd "$(dirname "$gguf")" && sha256sum "$GGUF") > .gpu/p2/gguf.sha256
    cp .whl/gguf-*.whl .gpu/w/
    gzip -c "$RUN"/splits/train.jsonl > .gpu/splits/train.jsonl.gz
    gzip -c "$RUN"/splits/validation.jsonl > .gpu/splits/validation.jsonl.gz
    # the GPU box has no csound-doc: the manual's synopses travel as JSON (opcode_reference.py)
    env -u CSOUND_ASSISTANT_SYNOPSES .venv/bin/python -c "from csound_assistant.opcode_reference import OpcodeReference as R
R.from_manual().save('.gpu/splits/opcode_reference.json')"
    du -sh .gpu/p1 .gpu/p2 .gpu/w .gpu/splits ;;
  part1)
    rm -rf /tmp/stage && mkdir -p /tmp/stage && cp .gpu/p1/gguf.part00 /tmp/stage/
    ls -l /tmp/stage ;;
  base)
    test -f /tmp/stage/gguf.part00 || { echo "no /tmp/stage/gguf.part00: cold machine, stage again"; exit 3; }
    cat /tmp/stage/gguf.part00 .gpu/p2/gguf.part0? > /tmp/stage/$GGUF && rm /tmp/stage/gguf.part00
    (cd /tmp/stage && sha256sum -c "$OLDPWD"/.gpu/p2/gguf.sha256)
    install_site .gpu/w/*.whl
    cd /tmp && python3 -m csound_assistant.cli base import /tmp/stage/$GGUF --out $W/base --force
    cat $W/base/record.json ;;
  train)  # extra arguments go to `train run`, e.g. --set method=lora
    test -f $W/base/record.json || { echo "no $W/base: cold machine, stage again"; exit 3; }
    shift; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
    # RUN_NAME=NAME trains /tmp/runs/NAME on the staged base (two at once: two names, one GPU)
    R=${RUN_NAME:-gpu}
    if [ "$R" != gpu ]; then mkdir -p /tmp/runs/$R && ln -sfn $W/base /tmp/runs/$R/base; fi
    W=/tmp/runs/$R
    [ -n "$SKIP_INSTALL" ] || install_site .whl/*.whl
    rm -rf $W/splits && mkdir -p $W/splits
    for s in train validation; do gunzip -c .gpu/splits/$s.jsonl.gz > $W/splits/$s.jsonl; done
    REPO=$PWD && cd /tmp
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c "import importlib.metadata as m; print({p: m.version(p) for p in ('torch',
        'transformers', 'peft', 'bitsandbytes', 'liger-kernel', 'accelerate')})"
    } 2>&1 | tee $OUT/train.log
    start=$SECONDS
    python3 -m csound_assistant.cli train run -c $REPO/train/configs/${CONFIG:-gpu-smollm2-qlora}.yaml \
      --work-dir /tmp/runs --run $R --force "$@" 2>&1 | tee -a $OUT/train.log
    echo "wall seconds of train run: $((SECONDS - start))" | tee -a $OUT/train.log
    cp $W/adapter/metrics.json $W/adapter/record.json $W/adapter/loss_curve.png $OUT/
    tar -C $W -czf /tmp/$R-adapter.tar.gz adapter && (cd /tmp && sha256sum $R-adapter.tar.gz | sed "s/ $R-adapter/ adapter/") > $OUT/adapter.sha256
    split -b 15M -d /tmp/$R-adapter.tar.gz $OUT/adapter.tar.gz.
    ls -l $OUT ;;
  sweep)
    test -f $W/base/record.json || { echo "no $W/base: cold machine, stage again"; exit 3; }
    shift; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
    install_site ${WHEELS:-.whl}/*.whl
    mkdir -p $W/splits
    for s in train validation; do gunzip -c .gpu/splits/$s.jsonl.gz > $W/splits/$s.jsonl; done
    args=(); for v in "$@"; do [[ $v == -* ]] && args+=("$v") || args+=(--variant "$v"); done
    # the log is written as it goes: a call cut at its time limit still sends it back
    python3 bench/budget_sweep.py train --work $W --items .gpu/sweep/items.json --out "$OUT" \
      "${args[@]}" 2>&1 | grep --line-buffered -v "it/s]$" | tee "$OUT"/sweep.log ;;
  unpack)  # NAME: a sweep variant's kept adapter (NAME-adapter.tar.gz.NN) instead of train's
    FROM=$(cd "${2:?the folder the files came back to}" && pwd); DEST=${3:?e.g. runs/gpu-smollm2}
    PACK=${4:+$4-}adapter
    cat "$FROM"/$PACK.tar.gz.?? > /tmp/$PACK.tar.gz
    (cd /tmp && sha256sum -c "$FROM"/$PACK.sha256)
    mkdir -p "$DEST" && tar -C "$DEST" -xzf /tmp/$PACK.tar.gz && rm /tmp/$PACK.tar.gz
    if [ -f "$FROM"/train.log ]; then cp "$FROM"/train.log "$DEST"/; fi
    ls -l "$DEST"/adapter ;;
  *) echo "usage: $0 prepare RUN | part1 | base | train | sweep [--opt=v] VARIANT... |" \
       "sample --items=F --adapter=NAME=DIR [--opt=v] |" \
       "unpack FROM DEST [NAME]" >&2
     exit 2 ;;
esac
