#!/usr/bin/env bash
# Build the verl environment tests/conformance/test_verl_reward_loop.py runs verl's own reward loop
# in: verl 0.9.1 from the package registry (verl-omni runs on verl's reward loop; verl-omni itself
# is on no registry) in a venv of its own, since verl pins transformers < 5.11; then this package.
#
#   bash tests/conformance/build_verl_venv.sh [VENV]        # default: .venv-verl (about 20 s with uv's cache warm)
#   pytest -m conformance tests/conformance/test_verl_reward_loop.py   # CAC_VERL_PYTHON overrides VENV/bin/python
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-verl}"
VERL_VERSION=0.9.1
UV="${UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  echo "$(basename "$0"): needs uv (pip install uv; the dev extra installs it)" >&2
  exit 1
fi
# one resolve (uv: one cache, hard links): verl, the CPU torch/torchvision pair of ../shared/ENVIRONMENT.md
# (as in setup.cfg), and this checkout with the dependencies verl's pins leave room for; run again, it
# changes only what the checkout changed
"$UV" venv -q --allow-existing -p python3 "$VENV"
"$UV" pip install -q -p "$VENV/bin/python" "verl==$VERL_VERSION" "torch==2.14.1" "torchvision==0.29.1" -e .
"$VENV/bin/python" - <<'PY'
import sys
import ray, transformers, verl  # noqa: F401 - all must import
import cac_align.integrations.verl_omni  # noqa: F401
print(f"verl {verl.__version__} (transformers {transformers.__version__}) with cac_align in {sys.prefix}")
PY
