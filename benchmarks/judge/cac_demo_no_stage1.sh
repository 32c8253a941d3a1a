#!/usr/bin/env bash
# bash benchmarks/judge/cac_demo_no_stage1.sh [OUT]
#
# The paper's "without stage 1" ablation, in miniature: stage 2 of recipes/cac/demo_stage2.yaml
# trained from the random small model instead of stage 1's weights (same steps, same stream; the
# vision tower trains too, freeze_vision=false: frozen it would stay random),
# scored with two turns on the default split of a reproduce_cac_demo.sh run in OUT (its
# bench_default/ must exist), and benched. About 40 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/cac_demo}
if [ ! -e "$OUT/stage2_no_stage1/final/config.json" ]; then
  cac-align train-cac --config recipes/cac/demo_stage2.yaml model=tiny-random:qwen3_vl_small freeze_vision=false out_dir="$OUT/stage2_no_stage1"
fi
if [ ! -e "$OUT/eval/no_stage1/results.jsonl" ]; then
  cac-align score --config recipes/score/cac_demo.yaml synth_videos=0 videos="$OUT/bench_default/annotations.jsonl" \
    out_dir="$OUT/eval/no_stage1" batch_size=16 reward.model.name="$OUT/stage2_no_stage1/final" \
    reward.options.prompt_style=compact reward.options.max_pixels=24576 reward.options.size_multiple=64
fi
cac-align eval bench annotations="$OUT/bench_default/annotations.jsonl" out_dir="$OUT/bench/no_stage1" \
  "predictions={stages12: $OUT/eval/stages12/results.jsonl, no_stage1: $OUT/eval/no_stage1/results.jsonl}"
