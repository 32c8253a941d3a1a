#!/usr/bin/env bash
# bash benchmarks/gpu_wheels.sh [DIR]
#
# The wheels the lent GPU machine lacks (its image: python 3.12, torch 2.11, transformers 5.17,
# no diffusers / omegaconf / qwen-vl-utils; ENVIRONMENT.md), downloaded here for python 3.12 on
# x86-64 into DIR (default .whl, which this adds to git's exclude file so that it never gets
# committed but travels when a device run names it in `carry`). About 20 MB; the working tree
# and the wheels together must stay under the device tool's 64 MiB. Versions are the ones this
# project's suite runs on. Then, in the device run (benchmarks/gpu_quick.sh's header has the
# whole command):
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# The image's own torch, accelerate, tokenizers, huggingface_hub, safetensors, typer, numpy and
# pillow serve as they are (transformers 5.24 and diffusers 0.42 accept them).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
PIP_PY="${PIP_PYTHON:-python3}"
WHEELS=(
  transformers==5.24.0
  diffusers==0.42.1
  peft==0.21.2
  omegaconf==2.4.0
  qwen-vl-utils==0.0.14
  ftfy==6.3.1
  wcwidth==0.9.4
  regex==2026.11.19  # transformers 5.24 asks for regex >= 2025.10.22
)
case "$DIR" in
  /*) ;;
  *) exclude="$(git rev-parse --git-path info/exclude)"
     mkdir -p "$(dirname "$exclude")"
     grep -qxF "/$DIR/" "$exclude" 2>/dev/null || echo "/$DIR/" >> "$exclude" ;;
esac
mkdir -p "$DIR"
for wheel in "${WHEELS[@]}"; do
  "$PIP_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" "$wheel"
done
ls -1 "$DIR"
du -sh "$DIR"
