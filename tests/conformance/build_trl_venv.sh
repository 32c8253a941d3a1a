#!/usr/bin/env bash
# Build the trl environment tests/conformance/test_trl_gdpo.py runs trl's own GRPOTrainer in: trl 1.16.0
# (huggingface/trl) from the package registry, in a venv of its own layered on this checkout's venv.
#
#   bash tests/conformance/build_trl_venv.sh [VENV [BASE]]  # default: .venv-trl on .venv (a few seconds with uv's cache warm)
#   pytest -m conformance tests/conformance/test_trl_gdpo.py  # CAC_TRL_PYTHON overrides VENV/bin/python
#
# trl 1.16.0 accepts the torch, transformers and accelerate BASE holds (it asks transformers >= 4.56.2,
# accelerate >= 1.10.1), so they are not installed again: a .pth file adds BASE's site-packages after
# VENV's own, as build_fastvideo_venv.sh does. What trl needs beyond BASE was measured by resolving it
# against BASE's own versions (`uv pip compile` of trl==1.16.0 with `pip freeze` of BASE as
# constraints, 2026-11-28): exactly trl, datasets, pandas, pyarrow, dill and multiprocess, at the versions
# pinned below. They are installed with --no-deps (uv cannot see BASE's packages through the .pth, and
# would install a second torch), and the check at the end imports trl's GRPOTrainer from VENV on BASE's
# torch and transformers.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-trl}"
BASE="${2:-.venv}"
TRL_VERSION=1.16.0
UV="${UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  echo "$(basename "$0"): needs uv (pip install uv; the dev extra installs it)" >&2
  exit 1
fi
base_site="$(cd "$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" && pwd)"
"$UV" venv -q --allow-existing -p "$BASE/bin/python" "$VENV"
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$base_site')" > "$site/_cac_align_base_venv.pth"
"$UV" pip install -q -p "$VENV/bin/python" --no-deps "trl==$TRL_VERSION" "datasets==5.2.0" "pandas==3.1.1" "pyarrow==26.0.1" \
  "dill==0.4.1" "multiprocess==0.70.19"
BASE_SITE="$base_site" "$VENV/bin/python" - <<'PY'
import os
import sys
from importlib.metadata import version
import torch
import transformers
from trl import GRPOConfig, GRPOTrainer  # noqa: F401 - must import
from trl.trainer.utils import nanstd  # noqa: F401 - the std GDPO's normalization uses
own = os.path.realpath(sys.prefix)
for name in ("trl", "datasets", "pandas", "pyarrow"):
    assert os.path.realpath(__import__(name).__file__).startswith(own), f"{name} is not the venv's own"
for module in (torch, transformers):
    assert os.path.realpath(module.__file__).startswith(os.path.realpath(os.environ["BASE_SITE"])), f"{module.__name__} is not the base venv's"
print(f"trl {version('trl')} (torch {torch.__version__}, transformers {transformers.__version__} from {os.environ['BASE_SITE']}) in {sys.prefix}")
PY
