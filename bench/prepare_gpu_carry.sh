#!/usr/bin/env bash
# Fill what a GPU run carries besides the repo (both git-ignored):
#   .whl/  the wheels of requirements-gpu.lock (the pinned train + cuda extras, less torch)
#   .gpu/  SmolLM2's tokenizer (for `train run` and the gpu tests) and, given a run, its splits
#
#   bash bench/prepare_gpu_carry.sh [runs/<run>]
#
# bitsandbytes' wheel holds its library for every CUDA and ROCm release (43 MB); the device's
# torch is CUDA 13, so only the CUDA 13 and CPU libraries are kept (4 MB): the whole carry must
# stay under 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-}
for d in /.whl/ /.gpu/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
PY=${PYTHON:-.venv/bin/python}

rm -rf .whl && mkdir -p .whl
grep -E '^[A-Za-z0-9_.-]+==' requirements-gpu.lock | cut -d' ' -f1 | xargs \
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl
"$PY" - <<'PY'
import glob, re, zipfile
from pathlib import Path

wheel = Path(glob.glob(".whl/bitsandbytes-*.whl")[0])
drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[0-2]\d|rocm\d+)\.so$")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if drop.search(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(keepends=True)
                            if not drop.search(line.split(b",")[0].decode()))
        dst.writestr(item, data)
slim.replace(wheel)
PY

mkdir -p .gpu/tokenizer
"$PY" - <<'PY'
from csound_assistant.base.importer import embedded_gguf
from transformers import AutoTokenizer

gguf = embedded_gguf()
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(".gpu/tokenizer")
PY
if [ -n "$RUN" ]; then
  rm -rf .gpu/splits && mkdir -p .gpu/splits
  cp "$RUN"/splits/train.jsonl "$RUN"/splits/validation.jsonl .gpu/splits/
fi
ls -1 .whl
echo "carry: .whl $(du -sh .whl | cut -f1), .gpu $(du -sh .gpu | cut -f1)" \
  "(with the working tree, 64 MiB at most)"
