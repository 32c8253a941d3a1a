#!/usr/bin/env bash
# bash benchmarks/judge/reproduce_cac_demo.sh [OUT] [--export]
#
# Rebuilds the shipped cac-demo model from a clean checkout, offline, on a CPU:
#   held-out synthetic sets -> stage 1 -> stage 2 -> stage 3 -> evaluation (bench, ablations,
#   Best-of-5 in miniature) -> model card -> (with --export) cac_align/models/cac-demo.
# 65-76 minutes on the project's 2-core machine: 65 with nothing else running (docs/cac_training.md,
# "The demo model"). The reasoning step of the chain (synth-cot's template) happens inside the
# stages: they render their videos on the fly and write each target's checklist reasoning.
# A killed run: rerun the same command; each finished step is skipped (its output exists) and a
# stage killed midway continues from its last checkpoint (resume=true; from step 0 when it has none).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=outputs/cac_demo
EXPORT=0
for arg in "$@"; do
  case "$arg" in
    --export) EXPORT=1 ;;
    *) OUT="$arg" ;;
  esac
done
mkdir -p "$OUT"
TIMES="$OUT/timings.jsonl"

step() {  # step NAME DONE_MARKER COMMAND...: run unless DONE_MARKER exists; log the seconds it took
  local name="$1" marker="$2"
  shift 2
  if [ -e "$marker" ]; then
    echo "== $name: done already ($marker)"
    return
  fi
  echo "== $name"
  local start
  start=$(date +%s)
  "$@"
  echo "{\"step\": \"$name\", \"seconds\": $(( $(date +%s) - start ))}" >> "$TIMES"
}

# 1. held-out evaluation videos: seeds no training stream uses (training: 1000, 2000, 3000; eval during training: 999)
step "synth default split" "$OUT/bench_default/annotations.jsonl" \
  cac-align synth --config recipes/synth/default.yaml out_dir="$OUT/bench_default" n=200 seed=5000
step "synth hard split" "$OUT/bench_hard/annotations.jsonl" \
  cac-align synth --config recipes/synth/hard.yaml out_dir="$OUT/bench_hard" n=200 seed=5001

# 2. the three stages, on videos rendered on the fly
step "stage 1" "$OUT/stage1/final/config.json" \
  cac-align train-cac --config recipes/cac/demo_stage1.yaml out_dir="$OUT/stage1" resume=true
step "stage 2" "$OUT/stage2/final/config.json" \
  cac-align train-cac --config recipes/cac/demo_stage2.yaml model="$OUT/stage1/final" out_dir="$OUT/stage2" resume=true
step "stage 3" "$OUT/stage3/final/config.json" \
  cac-align train-cac --config recipes/cac/demo_stage3.yaml model="$OUT/stage2/final" out_dir="$OUT/stage3" resume=true

# 3. evaluation: two-turn (the paper's protocol), single-turn (ablation), stages 1+2 only (ablation)
# (the trained folders carry the data sections' settings in their cac_align.json; these state the
# shipped demo's, which every evaluated model is asked with)
SETTINGS=(reward.options.prompt_style=compact reward.options.max_pixels=24576 reward.options.size_multiple=64
          reward.options.max_frames_turn2=8 reward.options.max_new_tokens=320)
score() {  # score NAME MODEL SPLIT [overrides...]
  local name="$1" model="$2" split="$3"
  shift 3
  step "score $name" "$OUT/eval/$name/results.jsonl" \
    cac-align score --config recipes/score/cac_demo.yaml synth_videos=0 videos="$OUT/bench_$split/annotations.jsonl" \
      out_dir="$OUT/eval/$name" batch_size=16 reward.model.name="$model" "${SETTINGS[@]}" "$@"
}
score two_turn "$OUT/stage3/final" default
score two_turn_hard "$OUT/stage3/final" hard
score single_turn "$OUT/stage3/final" default reward.options.mode=single_turn
score stages12 "$OUT/stage2/final" default
step "bench default" "$OUT/bench/default/bench.json" \
  cac-align eval bench annotations="$OUT/bench_default/annotations.jsonl" out_dir="$OUT/bench/default" \
    "predictions={two_turn: $OUT/eval/two_turn/results.jsonl, single_turn: $OUT/eval/single_turn/results.jsonl, stages12: $OUT/eval/stages12/results.jsonl}"
step "bench hard" "$OUT/bench/hard/bench.json" \
  cac-align eval bench annotations="$OUT/bench_hard/annotations.jsonl" out_dir="$OUT/bench/hard" \
    "predictions={two_turn: $OUT/eval/two_turn_hard/results.jsonl}"

# 4. Best-of-5 in miniature: 40 prompts x 5 synthetic candidates, half of them planted
step "prompts" "$OUT/bon_prompts.txt" bash -c "for i in 1 2 3 4 5; do cat recipes/align/demo_prompts.txt; done > '$OUT/bon_prompts.txt'"
step "best-of-5" "$OUT/bon/anomaly_rates.json" \
  cac-align bon --config recipes/align/bon_demo.yaml prompts="$OUT/bon_prompts.txt" out_dir="$OUT/bon" \
    reward.model.name="$OUT/stage3/final" "${SETTINGS[@]}"

# 5. model card and results (the figures docs/cac_training.md reports), then the export
python benchmarks/judge/cac_demo_report.py "$OUT"
if [ "$EXPORT" = 1 ]; then
  cac-align export source="$OUT/stage3/final" out_dir=cac_align/models/cac-demo \
    "settings={max_frames_turn2: 8}" card="$OUT/card.md"  # over stage 3's own: its clips were < 1 s at 8 fps
fi
echo "== done: $OUT/results.json, $OUT/card.md"
