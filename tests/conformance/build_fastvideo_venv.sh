#!/usr/bin/env bash
# Build the FastVideo environment tests/conformance/test_fastvideo_nft.py runs our rewards and NFT
# loss in: fastvideo 0.2.1 (hao-ai-lab/FastVideo) from the package registry, in a venv of its own
# layered on this checkout's venv.
#
#   bash tests/conformance/build_fastvideo_venv.sh [VENV [BASE]]  # default: .venv-fastvideo on .venv (about 1 minute)
#   pytest -m conformance tests/conformance/test_fastvideo_nft.py  # CAC_FASTVIDEO_PYTHON overrides VENV/bin/python
#
# Why not a plain `pip install fastvideo==0.2.1`: it pins torch==2.12.0 (another ~5 GB of torch and
# CUDA libraries), accelerate==1.0.1 and gradio==5.32.0, and pulls ray, flashinfer-python,
# fastvideo-kernel, wandb, moviepy, opencv, torchcodec, ... for its inference servers, UIs and GPU
# kernels; CI has minutes and disk for none of that. The real package is installed with --no-deps,
# beside exactly the modules `import fastvideo.train.methods.rl.diffusion_nft` needs on top of this
# package's own dependencies, as measured (2026-11-27) by importing it and adding each missing module
# in turn: cloudpickle, einops, remote-pdb, scipy, torchdata (--no-deps: it would pull another
# torch), datasets (with its own dependencies: pyarrow, pandas, dill, multiprocess, xxhash). Nothing
# else of fastvideo's requirements (flashinfer, fastvideo-kernel, ray, gradio, ...) is imported on
# that path: the check at the end of this script imports it.
#
# Everything else it imports (torch 2.14.1, torchvision, transformers, diffusers, this package) is
# exactly what BASE (this checkout's venv) holds, so VENV does not install it again: a .pth file
# adds BASE's site-packages (with its .pth files: the editable install of this checkout) after
# VENV's own. VENV's own site-packages come first and hold only the eight packages above and their
# dependencies; fastvideo's torch, accelerate and tokenizers pins are not met (pip says so) and
# need not be on this path. Measured (2026-11-27, 2 cores shared with other jobs, load ~14): a full
# venv of the same packages (torch and our dependencies installed into it) took 11 minutes of wall
# time (2.6 of CPU) and 6.5 GB (1 GB after .ci/run's hard links); this one 3.3 minutes (0.9 of CPU)
# and 0.33 GB.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-fastvideo}"
BASE="${2:-.venv}"
FASTVIDEO_VERSION=0.2.1
stamp="$VENV/.cac_align_fastvideo_$FASTVIDEO_VERSION"
base_site="$(cd "$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" && pwd)"
if [ ! -f "$stamp" ]; then
  "$BASE/bin/python" -m venv "$VENV"  # the base venv's interpreter: the same Python version
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$base_site')" > "$site/_cac_align_base_venv.pth"
  "$VENV/bin/pip" install -q --no-deps "fastvideo==$FASTVIDEO_VERSION" "torchdata==0.11.0"
  "$VENV/bin/pip" install -q "cloudpickle==3.1.3" "einops==0.8.2" "remote-pdb==2.1.0" "datasets==5.2.0" "scipy==1.17.1" \
    "torch==2.14.1" "torchvision==0.29.1"  # (already in BASE: pip installs nothing for them, and refuses if BASE holds others)
  touch "$stamp"
fi
BASE_SITE="$base_site" "$VENV/bin/python" - <<'PY'
import os
import sys
from importlib.metadata import version
import torch
from fastvideo.train.methods.rl.diffusion_nft import DiffusionNFTMethod  # noqa: F401 - must import
from fastvideo.train.methods.rl.rewards import MultiRewardScorer  # noqa: F401
import cac_align.integrations.fastvideo as ours  # noqa: F401
import cac_align.rl.nft  # noqa: F401
own = os.path.realpath(sys.prefix)
for name in ("fastvideo", "datasets"):
    assert os.path.realpath(__import__(name).__file__).startswith(own), f"{name} is not the venv's own"
assert os.path.realpath(torch.__file__).startswith(os.path.realpath(os.environ["BASE_SITE"])), "torch is not the base venv's"
print(f"fastvideo {version('fastvideo')} (torch {torch.__version__} from {os.environ['BASE_SITE']}) with cac_align in {sys.prefix}")
PY
