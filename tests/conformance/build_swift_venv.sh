#!/usr/bin/env bash
# Build the ms-swift environment CaC stage 3 runs in on the paper's engine (recipes/cac/stage3_swift*.sh)
# and tests/conformance/test_ms_swift_grpo.py drives: ms-swift 4.6.0 from the package registry in a
# venv of its own, since it pins transformers < 5.20, trl < 1.0 and peft < 0.21; then this package.
#
#   bash tests/conformance/build_swift_venv.sh [VENV]       # default: .venv-swift (about 30 s with uv's cache warm)
#   pytest -m conformance tests/conformance/test_ms_swift_grpo.py   # CAC_SWIFT_BIN overrides VENV/bin
#
# Steps: ms-swift with the CPU torch/torchvision pair of ../shared/ENVIRONMENT.md (as in setup.cfg);
# msgspec, which ms-swift 4.6.0's GRPO trainer imports without declaring it; then this checkout
# with the dependencies ms-swift's pins leave room for. On GPU machines add what the paper's
# launcher uses: pip install deepspeed and the vllm release ms-swift 4.6.0 supports.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-swift}"
SWIFT_VERSION=4.6.0
UV="${UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  echo "$(basename "$0"): needs uv (pip install uv; the dev extra installs it)" >&2
  exit 1
fi
# one resolve (uv: one cache, hard links); run again, it changes only what the checkout changed
"$UV" venv -q --allow-existing -p python3 "$VENV"
"$UV" pip install -q -p "$VENV/bin/python" "ms-swift==$SWIFT_VERSION" "torch==2.14.1" "torchvision==0.29.1" msgspec -e .
"$VENV/bin/python" - <<'PY'
import sys
import swift, transformers  # noqa: F401 - both must import
from swift.rlhf_trainers import grpo_trainer  # noqa: F401 - the GRPO trainer (it needs msgspec)
import cac_align.integrations.ms_swift.cac_plugin  # noqa: F401 - our plugin registers with this ms-swift
print(f"ms-swift {swift.__version__} (transformers {transformers.__version__}) with cac_align in {sys.prefix}")
PY
