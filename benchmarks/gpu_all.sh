#!/usr/bin/env bash
# bash benchmarks/gpu_all.sh [OUT]
#
# Every GPU figure the project still owes (issue #21), in one go on one H100/H200, random
# weights, nothing downloaded; each command's output goes to OUT/<name>.txt (default
# outputs/gpu_benchmarks). Each run fits in a 10-minute slot; run them one by one if needed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_benchmarks}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1

run() {  # run NAME COMMAND...: its stdout+stderr to OUT/NAME.txt, exit status noted, go on
  local name="$1"
  shift
  echo "== $name: $*"
  "$@" > "$OUT/$name.txt" 2>&1
  echo "exit $?" >> "$OUT/$name.txt"
  tail -n 6 "$OUT/$name.txt"
}

# CaC two-turn scoring, Qwen3-VL-8B's architecture at the paper's budget (target: <= 5 s per video)
run cac_8b python benchmarks/score_throughput.py --mode gpu-8b --videos 4 --repeats 1
# UnifiedReward-7B (Qwen2.5-VL-7B) probabilities: encodings and seconds before/now
run ur_7b python benchmarks/status_encoding.py --mode gpu-ur7b
# Flow-GRPO step of Wan-2.1-1.3B at 480x832x81: seconds and memory, then with CaC-8B + UR-7B resident (target: within 80 GB)
run wan_step python benchmarks/wan_grpo_step.py --mode gpu-1.3b
run wan_step_with_rewards python benchmarks/wan_grpo_step.py --mode gpu-1.3b --with-rewards
echo "== figures in $OUT"
