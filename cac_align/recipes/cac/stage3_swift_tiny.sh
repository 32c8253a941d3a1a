#!/usr/bin/env bash
# CaC stage 3 on ms-swift, offline on the CPU: two GRPO steps of a tiny random Qwen3-VL through
# our plugin (transformers generates, no vLLM). What tests/conformance/test_ms_swift_grpo.py runs.
#
#   MODEL=<a tiny model folder> DATASET=<rows from prepare> OUT=outputs/cac_stage3_swift_tiny bash recipes/cac/stage3_swift_tiny.sh
#
# A random model never writes a verdict, so its rollouts all end after turn 1 with the same
# reward; the test adds a probe plugin that scripts some answers (EXTRA_PLUGINS).
set -euo pipefail
: "${MODEL:?a model folder}" "${DATASET:?the rows written by prepare}" "${OUT:?the output folder}"
# BIN: the bin/ folder of the ms-swift venv (default: where `swift` is on PATH)
BIN="${BIN:-$(dirname "$(command -v swift)")}"
PLUGIN="$("$BIN/python" -m cac_align.integrations.ms_swift plugin)"
# shellcheck disable=SC2086  # EXTRA_PLUGINS: more plugin files, space-separated
"$BIN/swift" rlhf \
  --rlhf_type grpo \
  --model "$MODEL" --model_type qwen3_vl --template cac_qwen3_vl \
  --external_plugins "$PLUGIN" ${EXTRA_PLUGINS:-} \
  --dataset "$DATASET" \
  --multi_turn_scheduler cac --max_turns 2 \
  --reward_funcs cac_stage3 \
  --tuner_type full --freeze_vit false --freeze_aligner false \
  --torch_dtype float32 --use_vllm false \
  --num_generations 2 --per_device_train_batch_size 4 --gradient_accumulation_steps 1 \
  --max_completion_length 64 --completion_length_limit_scope per_round \
  --temperature 1.0 --beta 0.04 --epsilon 0.2 --loss_type grpo \
  --learning_rate 1e-4 --lr_scheduler_type constant --warmup_ratio 0 --max_steps 2 \
  --gradient_checkpointing false --save_strategy steps --save_steps 2 --save_only_model true --logging_steps 1 \
  --dataloader_num_workers 0 --report_to none --seed 42 \
  --output_dir "$OUT" "$@"
