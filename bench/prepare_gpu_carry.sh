#!/usr/bin/env bash
# Fill what a GPU run carries besides the repo (both git-ignored):
#   .whl/  the wheels of requirements-gpu.lock (the pinned train + cuda extras, less torch)
#   .gpu/  SmolLM2's tokenizer (for `train run` and the gpu tests) and, given a run, its splits
# and, with --pipeline, what `bash bench/gpu_session.sh pipeline` needs besides (both ignored):
#   .csound/  Debian's csound, libcsound64-6.0, their audio libraries and bubblewrap (.deb), the
#             Csound manual without its large sound files and images (manual.tar.xz), and
#             llama.cpp's converter scripts (llama.cpp-tools/)
#   .llama/   llama-cpp-python built here for any x86-64 with AVX2 (no -march=native: the GPU
#             machine's CPU is not this one), slimmed (site.tar.xz), and the small wheels it and
#             the package need that the device image lacks
#
#   bash bench/prepare_gpu_carry.sh [--pipeline] [runs/<run>]
#
# bitsandbytes' wheel holds its library for every CUDA and ROCm release (43 MB); the device's
# torch is CUDA 13, so only the CUDA 13 and CPU libraries are kept (4 MB): the whole carry must
# stay under 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=
if [ "${1:-}" = --pipeline ]; then PIPELINE=1; shift; fi
RUN=${1:-}
for d in /.whl/ /.gpu/ /.csound/ /.llama/; do
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
if [ -n "$PIPELINE" ]; then
  rm -rf .csound .llama && mkdir -p .csound/debs .llama
  (cd .csound/debs && apt-get download csound libcsound64-6.0 libsndfile1 libflac12 \
     libvorbis0a libvorbisenc2 libopus0 libmpg123-0 libmp3lame0 libogg0 bubblewrap)
  # the sound files (>200 kB) and images are 85% of the manual's bytes; a limited data build
  # renders the examples that need them as failures
  tar -C /usr/share/doc/csound-doc -cf - --exclude='*.png' --exclude='html/images' \
    $(cd /usr/share/doc/csound-doc && find html/examples -type f -size +200k -printf '--exclude=%p ') \
    html | xz -T2 -6 > .csound/manual.tar.xz
  "$PY" -m csound_assistant.convert.llama_cpp_tools ensure >/dev/null
  tools=$("$PY" -c 'import importlib.metadata as m, sys
from csound_assistant.convert.llama_cpp_tools import tools_root
print(tools_root(m.version("llama-cpp-python")))')
  mkdir -p .csound/llama.cpp-tools && cp -r "$tools" .csound/llama.cpp-tools/
  # GGML_NATIVE=OFF: a build for this CPU can use instructions (AMX, AVX-512) the other lacks
  if [ ! -f "${LLAMA_WHEEL:-}" ]; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
      -DLLAMA_BUILD_SERVER=OFF" "$PY" -m pip wheel -q --no-deps --no-cache-dir \
      --no-binary llama-cpp-python llama-cpp-python==0.3.36 -w /tmp/llama-portable
    LLAMA_WHEEL=$(ls /tmp/llama-portable/llama_cpp_python-*.whl)
  fi
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-deps --no-compile --target "$site" "$LLAMA_WHEEL"
  rm -rf "$site"/lib "$site"/include "$site"/bin "$site"/share  # copies of llama_cpp/lib
  strip --strip-unneeded "$site"/llama_cpp/lib/*.so* 2>/dev/null || true
  tar -C "$site" -cf - . | xz -T2 -6 > .llama/site.tar.xz
  rm -rf "$site"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .llama diskcache==5.6.3
fi
ls -1 .whl
echo "carry: .whl $(du -sh .whl | cut -f1), .gpu $(du -sh .gpu | cut -f1)" \
  "${PIPELINE:+, .csound $(du -sh .csound | cut -f1), .llama $(du -sh .llama | cut -f1)}" \
  "(with the working tree, 64 MiB at most)"
