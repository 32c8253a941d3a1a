#!/usr/bin/env bash
# The install most users make: a wheel, not an editable checkout. Builds this checkout's wheel,
# installs it into a fresh venv (nothing of the checkout on the path), and, each from an empty
# folder: runs README's main job by name (docs/score.md, "Recipes by name"; 16 videos, every one valid; the Python API's
# reward by the model's name alone gives the same verdicts), then the offline road of
# docs/train_your_own_cac.md as written (the bash block after `<!-- offline-check -->`: tiny rows
# and videos from the package, convert, synth-cot, three stages, score, bench, export, flow-grpo), and reads what each
# hop wrote.
#
#   bash tests/wheel_check.sh [VENV]      # default: .venv-wheel (removed afterwards; about 4 minutes)
#
# The build must print no package-data warning (a recipes/ or models/ file setuptools was
# not told about is left out of the wheel, or warned about and shipped by accident).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${1:-.venv-wheel}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac  # a relative VENV is under the checkout
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK" "$VENV" "$ROOT/build"' EXIT

# 1. the wheel, with no warning about package data: built in an isolated environment by setuptools (pyproject.toml's
# backend), through uv's build front end when uv is there (the dev extra has it; 2 s instead of pip's 9 s for a venv with
# `build`), else through pypa's `build`; either prints setuptools' own log, which is searched below
UV="${UV:-$(command -v uv || true)}"
if [ -n "$UV" ]; then
  "$UV" build --wheel --out-dir "$WORK/dist" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
else
  python3 -m venv "$WORK/build-env"
  "$WORK/build-env/bin/pip" install -q build
  "$WORK/build-env/bin/python" -m build --wheel --outdir "$WORK/dist" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
fi
if grep -E "absent from the \`packages\` configuration|package_data|Package '.*' is" "$WORK/build.log"; then
  echo "wheel check: the wheel's build warned about package data (above)" >&2
  exit 1
fi
wheel="$(ls "$WORK"/dist/cac_align-*.whl)"
# the checkout is no longer read from here on: a caller that waits to write into it (.ci/run's install) may go on
if [ -n "${WHEEL_BUILT:-}" ]; then touch "$WHEEL_BUILT"; fi

# 2. a fresh venv with the wheel (not editable) and its dependencies. Installed by uv when it is there
# (the dev extra has it; .ci/run's case): the same wheel and the same resolution of its requirements as
# pip's, from uv's cache through hard links, without pip's minutes of unpacking and compiling torch
# again; by pip otherwise
if [ -n "$UV" ]; then
  "$UV" venv -q -p python3 "$VENV"
  "$UV" pip install -q -p "$VENV/bin/python" "$wheel"
else
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "$wheel"
fi

# 3. README's main job by name (docs/score.md), from an empty folder, with the installed package only
mkdir "$WORK/empty"
cd "$WORK/empty"
env -u PYTHONPATH "$VENV/bin/cac-align" score --config score/cac_demo > "$WORK/score.log" 2>&1 || { tail -20 "$WORK/score.log"; exit 1; }
env -u PYTHONPATH "$VENV/bin/python" - "$ROOT" <<'PY'
import json, sys
from pathlib import Path

import cac_align

checkout = Path(sys.argv[1]).resolve() / "cac_align"
where = Path(cac_align.__file__).resolve()
assert "site-packages" in where.parts and checkout not in where.parents, f"cac_align came from {where}, not the installed wheel"
rows = [json.loads(line) for line in Path("outputs/score_demo/results.jsonl").read_text().splitlines()]
valid = sum(r["valid"] for r in rows)
assert len(rows) == 16 and valid == 16, f"{valid} of {len(rows)} valid"
assert Path("outputs/score_demo/report.html").is_file()
# The Python API with nothing but the model's name asks cac-demo as the recipe does: its folder's cac_align.json gives
# the turns' rates and frame caps, the token budget, the wording, the pixel grid and the float32 it was trained in
# (without them, 2 of 4 of these videos came out invalid). Checked here, where the main job already ran (it was a slow
# test of its own that ran the job a second time), on every fourth of its videos (a quarter of the scoring: all
# 16 were each a second scoring of what the job had just scored)
from cac_align.rewards.registry import build_reward

asked = rows[::4]
out = build_reward({"name": "cac", "model": {"name": "cac-demo"}})([r["video"] for r in asked], [r["prompt"] for r in asked])
assert out.valid.all(), "the Python API found invalid videos the recipe scored"
assert [d["status"] for d in out.details] == [r["status"] for r in asked], "the Python API's verdicts are not the recipe's"
worst = max(abs(float(a) - r["score"]) for a, r in zip(out.scores, asked))
assert worst <= 1e-5, f"the Python API's scores are {worst:.3g} off the recipe's"
print(f"wheel check: {len(rows)} videos, {valid} valid, from {where.parent}; the Python API agrees on {len(asked)} of them (its scores at most {worst:.1e} off)")
PY
# these rows are the README main job's in-process rows the conformance suite compares served runs with
# (tests/conformance/readme_job.py): under .ci/run, which names CAC_TEST_SHARED_DIR for the whole run, they are left there
# (written whole, then renamed) and the job is not scored in-process a second time
if [ -n "${CAC_TEST_SHARED_DIR:-}" ]; then
  mkdir -p "$CAC_TEST_SHARED_DIR"
  cp outputs/score_demo/results.jsonl "$CAC_TEST_SHARED_DIR/readme_job_results.partial"
  mv "$CAC_TEST_SHARED_DIR/readme_job_results.partial" "$CAC_TEST_SHARED_DIR/readme_job_results.jsonl"
fi

# 4. docs/train_your_own_cac.md's offline road, as written, from another empty folder: only the
# installed `cac-align` on the path (the block may not call anything else, e.g. a checkout script)
mkdir "$WORK/guide"
env -u PYTHONPATH "$VENV/bin/python" - "$ROOT/docs/train_your_own_cac.md" > "$WORK/guide.sh" <<'PY'
import re, shlex, sys

text = open(sys.argv[1], encoding="utf-8").read()
block = re.search(r"<!-- offline-check -->\s*```bash\n(.*?)```", text, re.S)
assert block, "no bash block after <!-- offline-check --> in docs/train_your_own_cac.md"
lines = [line for line in re.sub(r"\\\n\s*", " ", block.group(1)).splitlines() if line.strip() and not line.lstrip().startswith("#")]
programs = sorted({shlex.split(line)[0] for line in lines})
assert programs == ["cac-align"], f"the offline block runs {programs}, not only cac-align"
print("\n".join(lines))
PY
cd "$WORK/guide"
env -u PYTHONPATH PATH="$VENV/bin:$PATH" bash -euo pipefail "$WORK/guide.sh" > "$WORK/guide.log" 2>&1 || { tail -30 "$WORK/guide.log"; exit 1; }
lora="outputs/public_tiny/flow_grpo/lora"
test -f "$lora/pytorch_lora_weights.safetensors" && test ! -e outputs/public_tiny/flow_grpo/checkpoints || { tail -30 "$WORK/guide.log"; exit 1; }
grep -qF "flow-grpo: done; LoRA in $lora (generator.lora=$lora samples with it)" "$WORK/guide.log" || { tail -30 "$WORK/guide.log"; exit 1; }
# what each hop of the road wrote (it was a slow test of its own that ran the road a second time, in the checkout)
env -u PYTHONPATH "$VENV/bin/python" - <<'PY' || { tail -30 "$WORK/guide.log"; exit 1; }
import json
from pathlib import Path

from cac_align.cac.infer import MODEL_SETTINGS
from cac_align.cac.schema import load_annotations
from cac_align.models import model_settings

out = Path("outputs/public_tiny")
converted = load_annotations(out / "converted/annotations.jsonl", check_videos=True).records
assert len(converted) == 9 and {r.source for r in converted} >= {"ViF-CoT-4K", "VideoPhy-2"}, "convert"
cot = load_annotations(out / "cot/annotations.jsonl").records
assert len(cot) == 9 and all(r.cot for r in cot), "synth-cot"
# status-only records: no boxes for stage 1 (v_label_a's sign, a Character anomaly labelled without a box), no window for
# stage 2 (the two VideoPhy-2 records and v_label_b): counted, not dropped silently
stage1 = json.loads((out / "stage1/data.json").read_text())["stats"]["train"]
stage2 = json.loads((out / "stage2/data.json").read_text())["stats"]["train"]
assert stage1["anomalies_without_boxes"] == 1 and stage2["anomalies_without_window"] == 3, (stage1, stage2)
for stage in ("stage1", "stage2", "stage3"):
    assert (out / stage / "final/model.safetensors").is_file(), stage
    # how to ask it travels with it: the data section's settings (stage 3: and its token budget)
    settings = model_settings(str(out / stage / "final"))
    assert set(settings) == set(MODEL_SETTINGS) - ({"max_new_tokens"} if stage != "stage3" else set()), stage
assert model_settings(str(out / "my_cac")) == model_settings(str(out / "stage3/final")), "export carries the settings"
assert (out / "stage3/adapter/adapter_model.safetensors").is_file()
scored = [json.loads(line) for line in (out / "score/results.jsonl").read_text().splitlines()]
assert len(scored) == 9 and json.loads((out / "score/cac_align_run.json").read_text())["job"] == "score"
coverage = json.loads((out / "bench/bench.json").read_text())["systems"]["cac"]["coverage"]
assert (coverage["annotated"], coverage["invalid"] + coverage["scored"], coverage["missing"]) == (9, 9, 0), coverage
# the exported folder (float16 weights) is what flow-grpo scored its videos with, beside UnifiedReward
exported, trained = (out / "my_cac/model.safetensors").stat().st_size, (out / "stage3/final/model.safetensors").stat().st_size
assert exported < 0.55 * trained
assert "outputs/public_tiny/my_cac" in (out / "flow_grpo/cac_align_run.json").read_text()
rewards = [row for row in map(json.loads, (out / "flow_grpo/metrics.jsonl").read_text().splitlines()) if row["step"] > 0]  # not step 0's
assert 0.0 < rewards[0]["reward/cac_raw_mean"] < 1.0 and 0.0 < rewards[0]["reward/ur_cac_mean"] < 1.0, rewards[0]
PY
echo "wheel check: docs/train_your_own_cac.md's offline road ran as written ($(wc -l < "$WORK/guide.sh") commands), from $WORK/guide"
