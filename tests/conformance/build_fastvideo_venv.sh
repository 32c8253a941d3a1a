#!/usr/bin/env bash
# Build the FastVideo environment tests/conformance/test_fastvideo_nft.py runs our rewards in:
# fastvideo 0.2.1 (hao-ai-lab/FastVideo) from the package registry in a venv of its own, then
# this package.
#
#   bash tests/conformance/build_fastvideo_venv.sh [VENV]   # default: .venv-fastvideo
#   pytest -m conformance tests/conformance/test_fastvideo_nft.py   # CAC_FASTVIDEO_PYTHON overrides VENV/bin/python
#
# Why not a plain `pip install fastvideo==0.2.1`: it pins torch==2.12.0 (another ~5 GB of torch and
# CUDA libraries no other venv of CI shares), accelerate==1.0.1 and gradio==5.32.0, and pulls ray,
# flashinfer-python, fastvideo-kernel, wandb, moviepy, opencv, torchcodec, ... for its inference
# servers, UIs and GPU kernels. CI has minutes and disk for none of that. So the real package is
# installed with --no-deps beside the torch 2.14.1 / torchvision 0.29.1 pair every other venv here
# holds (its files become hard links to theirs: .ci/run's share_files), and beside exactly the
# modules `import fastvideo.train.methods.rl.diffusion_nft` needs on top of this package's own
# dependencies, as measured (2026-11-27) by importing it and adding each missing module in turn:
# cloudpickle, einops, remote-pdb, scipy, torchdata (--no-deps: it would pull another torch), datasets
# (with its own dependencies: pyarrow, pandas, dill, multiprocess, xxhash). Nothing else of
# fastvideo's requirements (flashinfer, fastvideo-kernel, ray, gradio, ...) is imported on that path:
# the check at the end of this script imports it.
#
# Measured (2026-11-27, 2 cores shared with other jobs, load 8-14): a fresh build 11.5 minutes of wall
# time but 2.6 of CPU (mostly unpacking torch), 6.5 GB, of which 5.5 GB are files identical to .venv's
# (1 GB left after share_files' hard links).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-fastvideo}"
FASTVIDEO_VERSION=0.2.1
stamp="$VENV/.cac_align_fastvideo_$FASTVIDEO_VERSION"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch/torchvision: the CPU pair of ../shared/ENVIRONMENT.md (as in setup.cfg), not fastvideo's 2.12.0 pin
  "$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" "cloudpickle==3.1.3" "einops==0.8.2" "remote-pdb==2.1.0" "datasets==5.2.0" "scipy==1.17.1"
  "$VENV/bin/pip" install -q --no-deps "torchdata==0.11.0" "fastvideo==$FASTVIDEO_VERSION"
  touch "$stamp"
fi
# this checkout (reinstalled every time, so the venv follows the checkout)
"$VENV/bin/pip" install -q --no-build-isolation -e . 2>&1 | grep -v "^$" || true
"$VENV/bin/python" - <<'PY'
import sys
from importlib.metadata import version
import torch
from fastvideo.train.methods.rl.diffusion_nft import DiffusionNFTMethod  # noqa: F401 - must import
from fastvideo.train.methods.rl.rewards import MultiRewardScorer  # noqa: F401
import cac_align.integrations.fastvideo as ours  # noqa: F401
print(f"fastvideo {version('fastvideo')} (torch {torch.__version__}) with cac_align in {sys.prefix}")
PY
