#!/usr/bin/env bash
# Create .venv and install cogrpo with its test extra. Safe to run again: an
# existing environment is reused and only updated.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# torch and torchvision are pinned to the pair that installs from local disk on the
# project's CPU machines (a newer torch would download several GB of CUDA wheels).
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev]"
