#!/usr/bin/env bash
# bash benchmarks/gpu_all.sh [OUT]
#
# Every GPU figure the project still owes (issues #21, #32, #33, #65), in one go on one H100/H200, random
# weights, nothing downloaded; each command's output goes to OUT/<name>.txt (default
# outputs/gpu_benchmarks). Each command prints its figures as it measures them, so one stopped
# by a time limit still leaves what it finished in its file.
#
# Needs the project's runtime packages (pip install -e .; on a machine with its own torch, the
# packages of setup.cfg's install_requires next to it) and a CUDA GPU; PYTHON picks the
# interpreter (default: python). The first run (2026-11-23, one H100, figures in
# benchmarks/README.md) took 25 minutes: the CaC-8B run alone was stopped at 15 unfinished.
# In a GPU window of 15 minutes or less run benchmarks/gpu_quick.sh instead (the judge stock vs
# ours first, then what fits of the rest in 9 minutes); this script stays the full measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_benchmarks}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
# Preflight: every package the four runs import, named at once, rather than one failure per run.
if ! "$PY" - >> "$OUT/gpu.txt" 2>&1 <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "diffusers", "peft", "accelerate", "omegaconf", "qwen_vl_utils", "cac_align")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing packages: {', '.join(missing)} (install the project's requirements: pip install -e .)")
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch")
import diffusers, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "diffusers", diffusers.__version__, torch.cuda.get_device_name())
PY
then
  tail -n 1 "$OUT/gpu.txt"
  exit 1
fi

run() {  # run NAME COMMAND...: its stdout+stderr to OUT/NAME.txt, exit status noted, go on
  local name="$1"
  shift
  echo "== $name: $*"
  "$@" > "$OUT/$name.txt" 2>&1
  echo "exit $?" >> "$OUT/$name.txt"
  tail -n 6 "$OUT/$name.txt"
}

# Issue #65 first (the newest figure owed): one Flow-GRPO step of Wan2.2-TI2V-5B's architecture at its
# recipe's 704x1280x121 (recipes/align/flow_grpo_wan22_ti2v_ur_cac.yaml: LoRA 32, bf16, gradient
# checkpointing), 2 videos x 10 sampling steps: seconds per video and step, peak memory.
run wan22_ti2v_step "$PY" benchmarks/generators/wan_grpo_step.py --mode gpu-ti2v-5b
# Issues #78, #82: the same step on the sharded code path at N=1 with CaC's judge resident, its peak beside the memory
# plan's (0.99 on an H200, 2026-11-27; it was gpu_quick.sh's step 7 until #116's bon_wan and stage2_8b took its place)
run ti2v_sharded "$PY" benchmarks/generators/wan_grpo_step.py --mode gpu-ti2v-5b --sampling-steps 2 --steps 1 --shard fsdp2 --with-judge
# Issue #116: bon's memory plan against one prompt on Wan-2.1-1.3B with UR + CaC in-process at full size
run bon_wan "$PY" benchmarks/memory/bon_memory.py --mode gpu
# Issue #72: one Flow-GRPO step of LTX-2's architecture at its recipe's 512x768x121
# (recipes/align/flow_grpo_ltx2_ur_cac.yaml: CFG, LoRA 32 on the video branch, bf16, gradient
# checkpointing), 2 videos x 10 sampling steps: seconds per video and step, peak memory (the
# 12B text encoder as arithmetic beside it).
run ltx2_step "$PY" benchmarks/generators/wan_grpo_step.py --mode gpu-ltx2
# Issue #32: CaC two-turn scoring at the paper's budget on the dynamic vs the static KV cache
# (model.cache), batch 16 and 32: s/video with compile included (first pass) and excluded
# (second), peak memory (target: <= 4 s per video on one H100). Then stage 3's rollout generation
# (the hf sampler, 16 rollouts per call, 1,024 tokens per turn) in both modes.
run cac_8b_cache_b16 "$PY" benchmarks/judge/score_throughput.py --mode gpu-8b --videos 4 --caches --batch-sizes 16
run cac_8b_cache_b32 "$PY" benchmarks/judge/score_throughput.py --mode gpu-8b --videos 4 --caches --batch-sizes 32
run rollouts_8b "$PY" benchmarks/judge/rollout_throughput.py --mode gpu-8b
# Issue #33: one step of each training stage at Qwen3-VL-8B's size (saved to local disk first,
# ~17 GB in outputs/stage_memory_gpu_8b, then loaded by the recipe path): peak memory, seconds
# per step; stage 2 on one GPU and the arithmetic for 8 under fsdp.yaml; stage 3 with LoRA (the
# 80 GB path), then as shipped (full parameters in float32: ~160 GB by arithmetic, so expected
# out of memory on one 80 GB GPU, reported as such)
run stage1_8b "$PY" benchmarks/memory/stage_memory.py --mode gpu-8b --stage 1
run stage2_8b "$PY" benchmarks/memory/stage_memory.py --mode gpu-8b --stage 2
run stage3_8b_lora "$PY" benchmarks/memory/stage_memory.py --mode gpu-8b --stage 3 --steps 2 --set finetune=lora --set train.learning_rate=1e-5
run stage3_8b "$PY" benchmarks/memory/stage_memory.py --mode gpu-8b --stage 3 --steps 2
# CaC two-turn scoring, Qwen3-VL-8B's architecture at the paper's budget, batched vs one by one (dynamic cache)
run cac_8b "$PY" benchmarks/judge/score_throughput.py --mode gpu-8b --videos 4 --single-videos 1 --repeats 1 --log-calls
# UnifiedReward-7B (Qwen2.5-VL-7B) probabilities: encodings and seconds before/now
run ur_7b "$PY" benchmarks/judge/status_encoding.py --mode gpu-ur7b
# Flow-GRPO step of Wan-2.1-1.3B at 480x832x81: seconds and memory, then with CaC-8B + UR-7B resident (target: within 80 GB)
run wan_step "$PY" benchmarks/generators/wan_grpo_step.py --mode gpu-1.3b
run wan_step_with_rewards "$PY" benchmarks/generators/wan_grpo_step.py --mode gpu-1.3b --with-rewards
# Issue #67: the judge on a fleet, two cac-demo replicas on the one GPU behind vllm-router, under each
# routing policy (benchmarks/judge/served_fleet.py). Needs vLLM (GPU build) in an environment of its own
# with this package installed --no-deps (VLLM_PYTHON names its interpreter) and vllm-router; the
# lent machine's image has neither and cannot download them, so it is skipped there with the reason.
VLLM_PY="${VLLM_PYTHON:-.venv-vllm/bin/python}"
if [ -x "$VLLM_PY" ] && "$VLLM_PY" -c "import vllm" 2>/dev/null && "$PY" -c "import shutil, sys; sys.exit(shutil.which('vllm-router') is None)"; then
  run served_fleet "$PY" benchmarks/judge/served_fleet.py --python "$VLLM_PY" --replicas 2 --devices 0 0 --extra="--gpu-memory-utilization 0.4"
else
  echo "== served_fleet: skipped (no vLLM at $VLLM_PY or no vllm-router: pip install 'cac_align[fleet]')" | tee "$OUT/served_fleet.txt"
fi
echo "== figures in $OUT"
