#!/usr/bin/env bash
# CaC stage 3 (two-turn GRPO) on ms-swift at the paper's scale: full fine-tuning sharded with
# DeepSpeed ZeRO-3, rollouts on vLLM colocated with training (asleep while the model trains),
# G = 8, 64 rollouts per step, lr 1e-6, 250 steps (CaC §3.2 "Stage 3"; the paper: 16 H200s, 42 h).
# Run it on each node (torchrun's NNODES / NODE_RANK / MASTER_ADDR as usual), in the ms-swift venv:
#
#   bash tests/conformance/build_swift_venv.sh .venv-swift               # once
#   .venv-swift/bin/python -m cac_align.integrations.ms_swift prepare recipes/cac/stage3_grpo.yaml data/cac/stage3_swift.jsonl
#   BIN=.venv-swift/bin NNODES=2 NODE_RANK=0 MASTER_ADDR=... MODEL=runs/cac_stage2/final DATASET=data/cac/stage3_swift.jsonl \
#     OUT=runs/cac_stage3_swift bash recipes/cac/stage3_swift.sh
#
# The data section (splits, 4/8 fps, frame and pixel caps, prompt style) and the reward weights
# are the stage-3 recipe's, written into the dataset by `prepare`; the rewards are ours (Eq. 2-6).
# Batch: NPROC_PER_NODE x NNODES x per-device 4 = 64 rollouts per step on 16 GPUs; keep the product at
# 64 on other counts (gradient_accumulation_steps). Unmeasured here (no GPU): docs/cac_training.md.
set -euo pipefail
: "${MODEL:?the stage-2 weights (a folder or hub id)}" "${DATASET:?the rows written by prepare}" "${OUT:?the output folder}"
# BIN: the bin/ folder of the ms-swift venv (default: where `swift` is on PATH)
BIN="${BIN:-$(dirname "$(command -v swift)")}"
PLUGIN="$("$BIN/python" -m cac_align.integrations.ms_swift plugin)"
NPROC_PER_NODE="${NPROC_PER_NODE:-8}" "$BIN/swift" rlhf \
  --rlhf_type grpo \
  --model "$MODEL" --model_type qwen3_vl --template cac_qwen3_vl \
  --external_plugins "$PLUGIN" \
  --dataset "$DATASET" \
  --multi_turn_scheduler cac --max_turns 2 \
  --reward_funcs cac_stage3 \
  --tuner_type full --freeze_vit false --freeze_aligner false \
  --torch_dtype bfloat16 --deepspeed zero3 \
  --use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.5 --sleep_level 1 \
  --offload_model true --offload_optimizer true \
  --num_generations 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 1 \
  --max_completion_length 1024 --completion_length_limit_scope per_round \
  --temperature 1.0 --beta 0.04 --epsilon 0.2 --loss_type grpo \
  --learning_rate 1e-6 --lr_scheduler_type constant --warmup_ratio 0 --max_steps 250 \
  --gradient_checkpointing true --save_steps 25 --save_total_limit 2 --logging_steps 1 \
  --output_dir "$OUT" "$@"
