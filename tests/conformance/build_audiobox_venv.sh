#!/usr/bin/env bash
# Build the AudioBox-Aesthetics environment tests/conformance/test_audiobox_package.py runs our audiobox reward in:
# audiobox-aesthetics 0.0.4 (Meta, PyPI) in a venv of its own, beside this package.
#
#   bash tests/conformance/build_audiobox_venv.sh [VENV]      # default: .venv-audiobox (about 30 s with uv's cache warm)
#   pytest -m conformance tests/conformance/test_audiobox_package.py   # CAC_AUDIOBOX_PYTHON overrides VENV/bin/python
#
# audiobox-aesthetics requires torchaudio (its predictor resamples with it) and so the torch a torchaudio
# release pins; .venv keeps torch 2.14.1, which no torchaudio release names. torchaudio 2.11.0's
# resampling and MelSpectrogram are torch code and run on torch 2.14.1, so the venv holds the torch pair
# of .venv, torchaudio 2.11.0, this checkout, and audiobox-aesthetics with --no-deps beside what its
# modules import (huggingface_hub, rich, requests; submitit is its CLI's only).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-audiobox}"
AUDIOBOX_VERSION=0.0.4
UV="${UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  echo "$(basename "$0"): needs uv (pip install uv; the dev extra installs it)" >&2
  exit 1
fi
"$UV" venv -q --allow-existing -p python3 "$VENV"
"$UV" pip install -q -p "$VENV/bin/python" "torch==2.14.1" "torchvision==0.29.1" "torchaudio==2.11.0" huggingface_hub rich requests -e ".[audio]"
"$UV" pip install -q -p "$VENV/bin/python" --no-deps "audiobox-aesthetics==$AUDIOBOX_VERSION"
"$VENV/bin/python" - <<'PY'
import sys
from importlib.metadata import version
import torch, torchaudio
from audiobox_aesthetics.infer import AesPredictor  # noqa: F401 - their predictor must import
from audiobox_aesthetics.model.aes import AesMultiOutput  # noqa: F401
from cac_align.rewards.audiobox import load_audiobox  # noqa: F401
print(f"audiobox-aesthetics {version('audiobox-aesthetics')} (torch {torch.__version__}, torchaudio {torchaudio.__version__}) with cac_align in {sys.prefix}")
PY
