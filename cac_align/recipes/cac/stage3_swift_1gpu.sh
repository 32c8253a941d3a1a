#!/usr/bin/env bash
# CaC stage 3 on ms-swift on one GPU (80 GB): the paper's setting except the tuner. Full
# fine-tuning of the 8B model does not fit one GPU (weights, gradients and Adam states alone are
# ~140 GB), so this trains LoRA adapters (rank 32, as our own stage-3 recipe's fallback) with vLLM
# colocated and asleep while training; 64 rollouts per step (8 x 8 accumulation), G = 8.
#
#   MODEL=runs/cac_stage2/final DATASET=data/cac/stage3_swift.jsonl OUT=runs/cac_stage3_swift bash recipes/cac/stage3_swift_1gpu.sh
#
# (the dataset: python -m cac_align.integrations.ms_swift prepare recipes/cac/stage3_grpo.yaml ...)
set -euo pipefail
: "${MODEL:?the stage-2 weights (a folder or hub id)}" "${DATASET:?the rows written by prepare}" "${OUT:?the output folder}"
# BIN: the bin/ folder of the ms-swift venv (default: where `swift` is on PATH)
BIN="${BIN:-$(dirname "$(command -v swift)")}"
PLUGIN="$("$BIN/python" -m cac_align.integrations.ms_swift plugin)"
"$BIN/swift" rlhf \
  --rlhf_type grpo \
  --model "$MODEL" --model_type qwen3_vl --template cac_qwen3_vl \
  --external_plugins "$PLUGIN" \
  --dataset "$DATASET" \
  --multi_turn_scheduler cac --max_turns 2 \
  --reward_funcs cac_stage3 \
  --tuner_type lora --lora_rank 32 --lora_alpha 64 --lora_dropout 0 --target_modules all-linear \
  --torch_dtype bfloat16 \
  --use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.4 --sleep_level 1 \
  --num_generations 8 --per_device_train_batch_size 8 --gradient_accumulation_steps 8 \
  --max_completion_length 1024 --completion_length_limit_scope per_round \
  --temperature 1.0 --beta 0.04 --epsilon 0.2 --loss_type grpo \
  --learning_rate 1e-5 --lr_scheduler_type constant --warmup_ratio 0 --max_steps 250 \
  --gradient_checkpointing true --save_steps 25 --save_total_limit 2 --logging_steps 1 \
  --output_dir "$OUT" "$@"
