#!/usr/bin/env bash
# Build the UniRL environment tests/conformance/test_unirl_reward.py runs our reward backend in:
# UniRL 0.2.0 (Tencent-Hunyuan/UniRL) from the package registry in a venv of its own, then this
# package.
#
#   bash tests/conformance/build_unirl_venv.sh [VENV]        # default: .venv-unirl (about 20 s with uv's cache warm)
#   pytest -m conformance tests/conformance/test_unirl_reward.py   # CAC_UNIRL_PYTHON overrides VENV/bin/python
#
# unirl 0.2.0 declares Python >= 3.12 and a GPU stack (flash-attn, vllm, sglang, ...); its reward,
# sample and trainer modules use no 3.12-only syntax and need only torch, torchvision, ray (a hard
# import), tqdm, pillow, hydra-core and omegaconf, so it is installed with --no-deps
# --ignore-requires-python beside exactly those (ray and hydra-core at the versions checked).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-unirl}"
UNIRL_VERSION=0.2.0
UV="${UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  echo "$(basename "$0"): needs uv (pip install uv; the dev extra installs it)" >&2
  exit 1
fi
# uv (one cache, hard links): the venv with pip in it (--seed: uv has no --ignore-requires-python), the
# packages unirl's modules import and this checkout in one resolve, then unirl itself by pip; run again,
# it changes only what the checkout changed
"$UV" venv -q --allow-existing --seed -p python3 "$VENV"
"$UV" pip install -q -p "$VENV/bin/python" "torch==2.14.1" "torchvision==0.29.1" "ray==2.60.0" "hydra-core==1.3.8" tqdm pillow -e .
"$VENV/bin/pip" install -q --no-deps --ignore-requires-python "unirl==$UNIRL_VERSION"
"$VENV/bin/python" - <<'PY'
import sys
import hydra, ray, transformers, unirl  # noqa: F401 - all must import
from unirl.reward.service import RewardService  # noqa: F401
from unirl.trainer.diffusion import DiffusionTrainer  # noqa: F401
from importlib.metadata import version
import cac_align.integrations.unirl as ours
assert ours.CacAlignRewardBackend is not None  # our class, built on their RewardBackend
print(f"unirl {version('unirl')} (ray {ray.__version__}, hydra {hydra.__version__}, transformers {transformers.__version__}) with cac_align in {sys.prefix}")
PY
