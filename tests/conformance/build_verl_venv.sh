#!/usr/bin/env bash
# Build the verl environment tests/conformance/test_verl_reward_loop.py runs verl's own reward loop
# in: verl 0.9.1 from the package registry (verl-omni runs on verl's reward loop; verl-omni itself
# is on no registry) in a venv of its own, since verl pins transformers < 5.11; then this package.
#
#   bash tests/conformance/build_verl_venv.sh [VENV]        # default: .venv-verl (about 2 minutes)
#   pytest -m conformance tests/conformance/test_verl_reward_loop.py   # CAC_VERL_PYTHON overrides VENV/bin/python
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-verl}"
VERL_VERSION=0.9.1
stamp="$VENV/.cac_align_verl_$VERL_VERSION"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch/torchvision: the CPU pair of ../shared/ENVIRONMENT.md (as in setup.cfg)
  "$VENV/bin/pip" install -q "verl==$VERL_VERSION" "torch==2.14.1" "torchvision==0.29.1"
  touch "$stamp"
fi
# this checkout, with the dependencies verl's pins leave room for (reinstalled every time, so the venv follows the checkout)
"$VENV/bin/pip" install -q --no-build-isolation -e . 2>&1 | grep -v "^$" || true
"$VENV/bin/python" - <<'PY'
import sys
import ray, transformers, verl  # noqa: F401 - all must import
import cac_align.integrations.verl_omni  # noqa: F401
print(f"verl {verl.__version__} (transformers {transformers.__version__}) with cac_align in {sys.prefix}")
PY
