#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what a GPU run needs besides the repo: SmolLM2's tokenizer and
# the splits of a run.   bench/prepare_gpu_carry.sh [runs/<run>]
set -euo pipefail
RUN=${1:-runs/default}
grep -qxF '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/tokenizer .gpu/splits
cp "$RUN"/base/tokenizer.json "$RUN"/base/tokenizer_config.json .gpu/tokenizer/
cp "$RUN"/base/chat_template.jinja .gpu/tokenizer/ 2>/dev/null || true
cp "$RUN"/splits/train.jsonl "$RUN"/splits/validation.jsonl .gpu/splits/
du -sh .gpu
