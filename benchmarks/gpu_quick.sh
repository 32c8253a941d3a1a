#!/usr/bin/env bash
# bash benchmarks/gpu_quick.sh [OUT]           # one H100/H200: the GPU figures that matter, done in at most 9 minutes
# bash benchmarks/gpu_quick.sh --check [OUT]   # the same steps on tiny models on the CPU (under 2 minutes on 2 idle cores;
#                                               # every step runs whatever the load: the deadline is the GPU run's)
#
# The GPU figures most owed first, each step under its own `timeout` and inside one deadline
# (--budget, default 540 s from the start, preflight included), each step printing as it
# measures into OUT/<step>.txt, and OUT/summary.txt collecting every step's RESULT lines as
# they come: a step cut short, or a window that closes, still leaves what was measured. A step
# that cannot get its minimum time before the deadline is skipped with the reason. Random
# weights, nothing downloaded. `bash benchmarks/gpu_all.sh` stays the full measurement (25+
# minutes); in a 15-minute GPU window (the machine's start included) run this one.
#
#   0. bon_wan      one prompt of `cac-align bon` on Wan-2.1-1.3B with UnifiedReward-7B and CaC-8B
#                   in-process at full size (recipes/align/bon_wan_ur_cac.yaml: 5 candidates, offload;
#                   random weights, 2 sampling steps, CaC's answers scripted after each turn's full
#                   budget): its peak, and while generating and while scoring, against the job's memory
#                   plan (#116; benchmarks/memory/bon_memory.py): never measured
#   0b. stage2_8b   one stage-2 step of CaC's training at Qwen3-VL-8B's size, one GPU (the model saved
#                   to disk and loaded by the recipe path; 5 s synthetic videos, so data.max_frames_turn1=20):
#                   its peak against the stage's plan (#116; benchmarks/memory/stage_memory.py): never measured
#   1. judge_ours   the judge (CaCScorer, HFBackend cache=static) at batch 32, 512 tokens per turn,
#                   Qwen3-VL-8B's architecture, as it is now: first and second pass s/video, ms per
#                   token per turn, peak memory (benchmarks/judge/judge_decode.py)
#   2. judge_stock  the same as before #71 (transformers' sdpa and cache sizing), in the same run:
#                   the steady stock vs ours ratio. It reuses the Triton kernels step 1 compiled
#                   (same machine, same inductor cache), so its first pass is not a cold one.
#   3. decode_attention  one decode step's attention alone at the 8B's batch-32 turn-2 shape, stock
#                   vs ours: bytes, KV copies, CUDA time (benchmarks/judge/decode_attention.py)
#   4. ltx2_step    one Flow-GRPO step of LTX-2's architecture at its recipe's 512x768x121 (2 videos,
#                   2 sampling steps, CFG): s per video and step, peak memory, Gemma-3-12B's 24 GB
#                   as arithmetic (wan_grpo_step.py --mode gpu-ltx2)
#   5. ur7b         UnifiedReward-7B's probs scoring (status_encoding.py --mode gpu-ur7b)
#
#   Run order: 0 and 0b first (the memory plans of bon and of the judge's training, never measured),
#   then 1, 2, 3, 4, 5 (benchmarks/README.md has each run's figures). The Wan2.2-TI2V-5B step and its
#   sharded twin with a judge resident (measured on an H200 on 2026-11-27: 0.99 of its plan) moved to
#   gpu_all.sh to make room.
#
# The lent GPU machine (ENVIRONMENT.md) has python 3.12 and torch 2.11 but not this project's
# transformers/diffusers/omegaconf/qwen-vl-utils pins: carry them as wheels. Here, in the
# repository root, once (about 45 MB; needs the package registry):
#     bash benchmarks/gpu_wheels.sh            # -> .whl/ (ignored through .git/info/exclude)
# then one device run (nothing else in the call; 600 s limit, the script ends by itself at 540 s):
#     run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PYTHON=python3 && bash benchmarks/gpu_quick.sh $OUT",
#         carry=[".whl"], timeout_s=600)
# and the files of $OUT come back (summary.txt and one file per step: 8 files, the device tool
# returns at most 8). Adding a step: one `step` line below, in its place in the order, with its
# GPU and --check commands; keep the number of steps at 7 or fewer for that limit.
set -uo pipefail
cd "$(dirname "$0")/.."
CHECK=0
BUDGET=""
BUDGET_GIVEN=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check) CHECK=1 ;;
    --budget) BUDGET="$2"; BUDGET_GIVEN=1; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) OUT="$1" ;;
  esac
  shift
done
CHECK_STEP_S=900  # --check: a step still running after this long is stuck (each takes seconds to a minute)
if [ "$CHECK" = 1 ]; then
  OUT="${OUT:-outputs/gpu_quick_check}"
  BUDGET="${BUDGET:-540}"  # applied to the check's steps only when --budget is given (step(), below)
else
  OUT="${OUT:-outputs/gpu_quick}"
  BUDGET="${BUDGET:-540}"
fi
PY="${PYTHON:-python}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's cac_align, before any installed one
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
SUMMARY="$OUT/summary.txt"
say() { echo "$*" | tee -a "$SUMMARY"; }
: > "$SUMMARY"
say "== gpu_quick $( [ "$CHECK" = 1 ] && echo --check ) $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s, figures in $OUT"

# Preflight: every package the steps import, and (GPU mode) the GPU, named at once
if [ "$CHECK" = 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"
fi
if ! CHECK="$CHECK" "$PY" - 2>&1 <<'PY' | tee -a "$SUMMARY"; then
import importlib.util, os, sys
missing = [m for m in ("torch", "transformers", "diffusers", "peft", "accelerate", "omegaconf", "qwen_vl_utils", "cac_align")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"preflight: missing packages: {', '.join(missing)} (carry them: bash benchmarks/gpu_wheels.sh, see this script's header)")
import torch, transformers, diffusers, cac_align
print(f"preflight: python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"diffusers {diffusers.__version__}, cac_align from {os.path.dirname(cac_align.__file__)}")
if os.environ["CHECK"] == "0" and not torch.cuda.is_available():
    sys.exit("preflight: no CUDA GPU visible to torch (the CPU check is: bash benchmarks/gpu_quick.sh --check)")
if os.environ["CHECK"] == "0":
    print(f"preflight: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
PY
  say "== stopped at the preflight"
  exit 1
fi

FAILED=0
# step NAME CAP_S MIN_S GPU_COMMAND -- CHECK_COMMAND: run the mode's command under
# timeout min(CAP_S, time to the deadline); skip it when less than MIN_S is left.
step() {
  local name="$1" cap="$2" least="$3"
  shift 3
  local gpu=() check=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do gpu+=("$1"); shift; done
  shift
  check=("$@")
  local cmd=("${gpu[@]}")
  [ "$CHECK" = 1 ] && cmd=("${check[@]}")
  local left=$((DEADLINE - $(date +%s)))
  local limit
  if [ "$CHECK" = 1 ] && [ "$BUDGET_GIVEN" = 0 ]; then
    # the CPU check proves every step runs, whatever the machine's load: no step is skipped or cut
    # for time (the deadline is the GPU window's; `--check --budget N` applies one, to try the window's
    # logic without a GPU); a stuck step is still stopped, after CHECK_STEP_S
    limit="$CHECK_STEP_S"
  elif [ "$left" -lt "$least" ]; then
    say "== $name: skipped, ${left} s left before the deadline, it needs at least ${least} s"
    return
  else
    limit=$((cap < left ? cap : left))
  fi
  say "== $name (limit ${limit} s): ${cmd[*]}"
  local began
  began=$(date +%s)
  timeout --kill-after=15 "$limit" "$PY" "${cmd[@]}" 2>&1 | tee "$OUT/$name.txt"
  local status=${PIPESTATUS[0]}
  grep '^RESULT ' "$OUT/$name.txt" | sed "s/^RESULT /$name /" >> "$SUMMARY"
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    say "== $name: stopped at its limit after $(( $(date +%s) - began )) s (what it printed is above and in $OUT/$name.txt)"
    FAILED=1
  elif [ "$status" != 0 ]; then
    say "== $name: failed (exit $status) after $(( $(date +%s) - began )) s; the end of $OUT/$name.txt:"
    tail -n 5 "$OUT/$name.txt" | tee -a "$SUMMARY"
    FAILED=1
  else
    say "== $name: done in $(( $(date +%s) - began )) s"
  fi
}

# (0) the memory plans of #116 against their GPU: bon with its judges in-process, then one stage-2 step at 8B
step bon_wan 240 150 benchmarks/memory/bon_memory.py --mode gpu \
  -- benchmarks/memory/bon_memory.py --mode check
step stage2_8b 200 150 benchmarks/memory/stage_memory.py --mode gpu-8b --stage 2 --steps 1 --set data.max_frames_turn1=20 \
  -- benchmarks/memory/stage_memory.py --mode tiny --stage 2 --steps 1
# (a) the judge, ours then stock (most owed: never measured with the fix; stock in the same run for the ratio)
step judge_ours 240 120 benchmarks/judge/judge_decode.py --mode gpu-8b --attention ours \
  -- benchmarks/judge/judge_decode.py --mode tiny --attention ours --batch 2 --tokens 4 --seconds 2
step judge_stock 280 150 benchmarks/judge/judge_decode.py --mode gpu-8b --attention stock \
  -- benchmarks/judge/judge_decode.py --mode tiny --attention stock --batch 2 --tokens 4 --seconds 2
step decode_attention 90 45 benchmarks/judge/decode_attention.py --device cuda --batch 32 --cache 3840 --repeats 50 \
  -- benchmarks/judge/decode_attention.py --check
# (a') after the judge, the new family: one Flow-GRPO step of LTX-2 at its recipe's 512x768x121 (never measured)
step ltx2_step 240 150 benchmarks/generators/wan_grpo_step.py --mode gpu-ltx2 --sampling-steps 2 --steps 1 \
  -- benchmarks/generators/wan_grpo_step.py --mode cpu-check-ltx2 --sampling-steps 2 --steps 1
# (b) what gpu_all.sh still owes, as time allows
step ur7b 150 90 benchmarks/judge/status_encoding.py --mode gpu-ur7b \
  -- benchmarks/judge/status_encoding.py --mode cpu-check --ur-videos 1

say "== gpu_quick: $(( $(date +%s) - START )) s in all; figures in $OUT (summary.txt: one RESULT line per measured pass)"
exit "$FAILED"
