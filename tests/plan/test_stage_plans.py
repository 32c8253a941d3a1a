"""The memory plans of CaC's three training stages at 8B (cac_align.plan.stages, issue #116): stage 1's LoRA warm-up,
stage 2's sharded full fine-tuning and stage 3's GRPO with its rollouts, each row by hand from the shipped
Qwen3-VL-8B config and the recipe's numbers (what it counts, where the number comes from), each refused with the
fix at a budget that cannot hold it; the launch read from a recipe's first line and from accelerate's environment;
the job's own start refusing before the model loads.
"""

from __future__ import annotations

import math

import pytest

from conftest import REPO_ROOT
from test_sampling_plan import QWEN3_VL_8B, QWEN3_VL_8B_TEXT, QWEN3_VL_8B_VISION  # by hand from the shipped config

from cac_align.config import RecipeError
from cac_align.jobs import load_recipe
from cac_align.plan.counts import GIB
from cac_align.plan.rows import ACTIVATION_WIDTHS

CAC = REPO_ROOT / "recipes" / "cac"
MODEL = "model=Qwen/Qwen3-VL-8B-Instruct"  # stages 2 and 3 start from the stage before: its architecture

# LoRA on every Linear but the output head ("all-linear", rank 32), per unit of rank: in + out of each
# language layer's q, k, v, o, gate, up, down; each vision block's qkv, proj, fc1, fc2; the merger's and three
# deepstack mergers' two Linears (the patch embedding is a convolution: not adapted)
LORA_WIDTH = 36 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 12288) + (12288 + 4096)) \
    + 27 * ((1152 + 3456) + (1152 + 1152) + 2 * (1152 + 4304)) + 4 * ((4608 + 4608) + (4608 + 4096))
LAYER = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 128 + 3 * 4096 * 12288 + 2 * 4096  # a decoder layer (an FSDP unit)
VISION_BLOCK = 2 * 2304 + (1152 * 3456 + 3456) + (1152 * 1152 + 1152) + (1152 * 4304 + 4304) + (4304 * 1152 + 1152)
VOCAB = 151936


def _tokens(parts: list[tuple[int, bool]], height: int = 340, width: int = 589) -> tuple[int, int]:
    """``(visual tokens, patches)`` of ``(frames, as images)`` parts on Qwen3-VL's grid: a group of 2 frames (an image a
    group of its own) is round(340 / 32) x round(589 / 32) = 11 x 18 = 198 merged tokens and 8 markup tokens; the vision
    tower sees 4 patches a merged token. 340 x 589: a 480 x 832 frame scaled to data.max_pixels = 200,704."""
    groups = sum(frames if images else math.ceil(frames / 2) for frames, images in parts)
    return groups * (198 + 8), groups * 198 * 4


def _text(*prompts: str) -> int:
    from cac_align.rewards.judges import text_tokens

    return text_tokens(*prompts)


def _rows(plan) -> dict[str, int]:
    return {r.label.split(" (")[0].split(":")[0]: r.bytes for r in plan.rows}


def test_the_lora_width_and_the_units_are_the_model_s():
    from cac_align.plan.stages import count_vlm

    counts = count_vlm("Qwen/Qwen3-VL-8B-Instruct")
    assert counts.parameters == QWEN3_VL_8B and counts.vision == QWEN3_VL_8B_VISION
    assert counts.lora_width == LORA_WIDTH == 3_280_864
    assert sorted(counts.units) == sorted((LAYER,) * 36 + (VISION_BLOCK,) * 27)  # FSDP's units: decoder layers and vision blocks
    assert counts.root == QWEN3_VL_8B - 36 * LAYER - 27 * VISION_BLOCK == 1_409_585_536  # embeddings, output head, patch, positions, mergers
    assert QWEN3_VL_8B_TEXT == 2 * VOCAB * 4096 + 36 * LAYER + 4096


def test_stage_1_lora_on_8_gpus_by_hand(hub_cache):
    """Stage 1 (recipes/cac/stage1_warmup.yaml, DDP on 8 GPUs): the frozen bf16 model, the float32 LoRA with its
    gradients, AdamW's moments and DDP's buckets; 4 frames a forward, each an image of 206 tokens, its prompt and an
    answer of at most 1,024 tokens; checkpointed activations, logits; fits 80 GB; refused at 24 GB with the fix."""
    from cac_align.cac.prompts import frame_prompt
    from cac_align.plan.stages import plan_train_cac

    _, config = load_recipe(CAC / "stage1_warmup.yaml")
    plan = plan_train_cac(config, 8, "none")
    lora = 32 * LORA_WIDTH
    visual, patches = _tokens([(1, True)])
    tokens = visual + _text(frame_prompt("x" * 200, style="full")) + 1024
    rows = _rows(plan)
    assert rows["the model"] == 2 * QWEN3_VL_8B
    assert rows["LoRA"] == 4 * lora  # its weights (the first LoRA row); gradients: the same; moments: twice
    assert [r.bytes for r in plan.rows if r.label.startswith("LoRA")] == [4 * lora, 4 * lora]
    assert rows["AdamW's two moments"] == 8 * lora and rows["DDP's gradient buckets"] == 4 * lora
    assert rows["activations of the language model"] == 4 * tokens * 4096 * 2 * (36 + ACTIVATION_WIDTHS)
    assert rows["activations of the vision tower"] == 4 * patches * 1152 * 2 * (27 + ACTIVATION_WIDTHS)
    assert rows["logits"] == 4 * tokens * VOCAB * 10
    assert rows["CUDA context, kernels, NCCL buffers"] == 2 * GIB
    resident = 2 * QWEN3_VL_8B + 4 * lora + 4 * lora + 8 * lora + 4 * lora + 2 * GIB
    train = rows["activations of the language model"] + rows["activations of the vision tower"] + rows["logits"]
    assert plan.peak_bytes == resident + train and plan.refusal(int(80e9)) is None
    # 24 GB (22.35 GiB): fewer frames a forward alone leave the 20.3 GiB of weights (2 frames: 27.2 GiB); sharded with
    # FSDP on these 8 GPUs alone 23.3; both, with 3 frames a forward: the model float32 over 8 (accelerate upcasts it),
    # the LoRA's weights, gradients and moments over 8, the root unit and two layers gathered in bf16, 3/4 of the training
    # phase (the first that fits, on these GPUs)
    sharded = math.ceil(QWEN3_VL_8B / 8) * 4 + math.ceil(lora / 8) * 16 + 2 * 1_409_585_536 + 2 * 2 * LAYER + 2 * GIB + 3 * train // 4
    reason = plan.refusal(int(24e9))
    assert reason.endswith("; launch with recipes/accelerate/fsdp.yaml (FSDP2: weights, gradients and AdamW's moments sharded) on these 8 GPUs "
                           f"and train.per_device_batch_size=3 ({sharded / GIB:.1f} GiB per GPU)")


def test_stage_2_full_fine_tuning_sharded_on_8_gpus_by_hand(hub_cache):
    """Stage 2 (stage2_sft.yaml under recipes/accelerate/fsdp.yaml, 8 GPUs): accelerate's FSDP shards the float32 model
    (it upcasts a bf16 one under mixed precision), its gradients and AdamW's moments 8 ways; the root unit and two
    decoder layers gathered in bf16 while a micro-batch runs; one 64-frame video of 6,592 visual tokens, its prompt
    and an answer; fits 80 GB (39.9 GiB); on 40 GB the fix is more GPUs (16), on 24 GB no setting fits."""
    from cac_align.cac.prompts import turn1_prompt
    from cac_align.plan.stages import launch_sharding, plan_train_cac

    recipe = CAC / "stage2_sft.yaml"
    sharding, units = launch_sharding(recipe)
    assert (sharding, units) == ("fsdp", ("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"))  # its first line's launch
    _, config = load_recipe(recipe, [MODEL])
    plan = plan_train_cac(config, 8, sharding, units)
    shard = math.ceil(QWEN3_VL_8B / 8)
    visual, patches = _tokens([(64, False)])
    assert visual == 6592 and patches == 25344
    tokens = visual + _text(turn1_prompt(64 / 4.0, 4.0, 64, "x" * 200, style="full")) + 1024
    rows = _rows(plan)
    assert rows["the model"] == 4 * shard and rows["what trains"] == 4 * shard and rows["AdamW's two moments"] == 8 * shard
    assert rows["FSDP's root unit, gathered for the step"] == 2 * 1_409_585_536
    assert rows["the largest unit gathered, and the next"] == 2 * 2 * LAYER
    assert rows["activations of the language model"] == tokens * 4096 * 2 * (36 + ACTIVATION_WIDTHS)
    assert rows["activations of the vision tower"] == patches * 1152 * 2 * (27 + ACTIVATION_WIDTHS)
    assert rows["logits"] == tokens * VOCAB * 10
    resident, train = 16 * shard + 2 * GIB, sum(r.bytes for r in plan.rows if r.phase == "train")
    assert plan.peak_bytes == resident + train and f"{plan.peak_bytes / GIB:.2f}" == "39.85" and plan.refusal(int(80e9)) is None
    # 40 GB (37.25 GiB): on 16 GPUs the sharded state halves (16 x P / 16): the first count that fits
    sixteen = 16 * math.ceil(QWEN3_VL_8B / 16) + 2 * GIB + train
    assert plan.refusal(int(40e9)).endswith(f"; launch with recipes/accelerate/fsdp.yaml (FSDP2: weights, gradients and AdamW's moments sharded) "
                                            f"on 16 GPUs ({sixteen / GIB:.1f} GiB per GPU)")
    # 24 GB: what no sharding splits (the root unit, the activations and logits of one video) is 21.5 GiB beside the
    # sharded state: more GPUs alone never fit; on 16 with a scan of 16 frames (8 groups: 1,648 visual tokens) they do
    visual16, patches16 = _tokens([(16, False)])
    tokens16 = visual16 + _text(turn1_prompt(16 / 4.0, 4.0, 16, "x" * 200, style="full")) + 1024
    train16 = 2 * 1_409_585_536 + 2 * 2 * LAYER + tokens16 * 2 * (4096 * (36 + ACTIVATION_WIDTHS) + VOCAB * 5) \
        + patches16 * 1152 * 2 * (27 + ACTIVATION_WIDTHS)
    assert plan.refusal(int(24e9)).endswith(" on 16 GPUs and data.max_frames_turn1=16: a shorter scan (4 s at 4 fps) "
                                            f"({(16 * math.ceil(QWEN3_VL_8B / 16) + 2 * GIB + train16) / GIB:.1f} GiB per GPU)")
    # the same stage on one GPU, not sharded: bf16 weights trained as loaded (2 + 2 + 4 bytes a parameter), 84.5 GiB:
    # refused on 80 GB, the fix the FSDP launch on 4 GPUs (on 2: 65.3 GiB of sharded state and the training phase)
    single = plan_train_cac(config, 1, "none")
    assert _rows(single)["the model"] == 2 * QWEN3_VL_8B and _rows(single)["AdamW's two moments"] == 4 * QWEN3_VL_8B
    four = 16 * math.ceil(QWEN3_VL_8B / 4) + 2 * GIB + train
    assert single.refusal(int(80e9)).endswith(f" on 4 GPUs ({four / GIB:.1f} GiB per GPU)") and four > 0


def test_stage_3_grpo_with_its_rollouts_by_hand_and_refused_full_on_80_gb_with_lora_the_fix(hub_cache):
    """Stage 3 (stage3_grpo.yaml, DDP on 8 GPUs, the paper's full fine-tuning): the float32 policy, its gradients, AdamW's
    moments, DDP's buckets and the bf16 reference (18 + 4 bytes a parameter); 2 rollouts a forward of the whole two-turn
    conversation, logits from the first generated token; the rollouts' KV cache for 16 at once; the reward holds nothing.
    217.7 GiB a GPU: refused on 80 GB, the fix LoRA (56.4 GiB)."""
    from cac_align.cac.prompts import turn1_prompt, turn2_prompt
    from cac_align.plan.stages import plan_train_cac

    _, config = load_recipe(CAC / "stage3_grpo.yaml", [MODEL])
    plan = plan_train_cac(config, 8, "none")
    scan, scan_patches = _tokens([(64, False)])
    clip, clip_patches = _tokens([(32, False)])
    second = _text(turn2_prompt((0.0, 32 / 8.0), 8.0, 32, style="full"))
    tokens = scan + clip + _text(turn1_prompt(64 / 4.0, 4.0, 64, "x" * 200, style="full")) + second + 1024 + 1024
    positions = 1024 + clip + second + 1024  # logits_to_keep: from turn 1's first generated token
    rows = _rows(plan)
    assert rows["the model"] == 4 * QWEN3_VL_8B and rows["what trains"] == 4 * QWEN3_VL_8B
    assert rows["AdamW's two moments"] == 8 * QWEN3_VL_8B and rows["DDP's gradient buckets"] == 4 * QWEN3_VL_8B
    assert rows["the frozen reference"] == 2 * QWEN3_VL_8B
    assert rows["activations of the language model"] == 2 * tokens * 4096 * 2 * (36 + ACTIVATION_WIDTHS)
    assert rows["activations of the vision tower"] == 2 * (scan_patches + clip_patches) * 1152 * 2 * (27 + ACTIVATION_WIDTHS)
    assert rows["logits"] == 2 * positions * VOCAB * 10
    kv = 2 * 36 * 8 * 128 * 2 * tokens * 16  # 144 KiB a token, 16 rollouts generated at once (grpo.generation_batch_size)
    assert rows["rollouts"] == kv and rows["stage 3's reward"] == 0
    train = rows["activations of the language model"] + rows["activations of the vision tower"] + rows["logits"]
    assert train > kv and plan.peak_bytes == 22 * QWEN3_VL_8B + 2 * GIB + train
    assert f"{plan.peak_bytes / GIB:.1f}" == "217.7"
    lora = 32 * LORA_WIDTH
    with_lora = 2 * QWEN3_VL_8B + 4 * lora + 4 * lora + 8 * lora + 4 * lora + 2 * GIB + train  # no reference: the adapters switched off
    reason = plan.refusal(int(80e9))
    assert reason.startswith("memory plan: train-cac needs 217.7 GiB per GPU (stage 3, finetune=full, 8 processes, not sharded")
    assert reason.endswith(f"; finetune=lora train.learning_rate=1.0e-5 (ours: the stage-2 weights frozen, adapters trained) "
                           f"({with_lora / GIB:.1f} GiB per GPU)") and f"{with_lora / GIB:.1f}" == "56.4"
    # on 48 GB (44.7 GiB) LoRA is not enough: with 1 rollout a forward (half the training phase) the rollouts' cache of
    # 16 is the largest phase; with 8 generated at once too (half the cache) it fits, what it learns the same
    lora_resident = with_lora - train
    assert plan.refusal(int(48e9)).endswith(" and train.per_device_batch_size=1 and grpo.generation_batch_size=8: fewer rollouts generated at once "
                                            f"({(lora_resident + max(train // 2, kv // 2)) / GIB:.1f} GiB per GPU)")
    assert "; none of these fits it: shorter samples" in plan.refusal(int(24e9))
    with pytest.raises(RecipeError, match="stage 3 runs under data parallel"):
        plan_train_cac(config, 8, "fsdp")


def test_a_stage_whose_model_is_the_stage_before_s_output_is_unknown_and_says_how_to_plan_it(hub_cache, capsys):
    from cac_align.cli import main

    assert main(["check-recipe", str(CAC / "stage2_sft.yaml")]) == 3
    out = " ".join(capsys.readouterr().out.split())
    assert "UNKNOWN" in out and "not counted: model" in out and "runs/cac_stage1/final/config.json is not on" in out
    assert "an earlier stage writes it there); plan the architecture it will have: model=Qwen/Qwen3-VL-8B-Instruct" in out
    assert main(["check-recipe", "--gpu-gb", "80", str(CAC / "stage2_sft.yaml"), MODEL]) == 0
    out = capsys.readouterr().out
    assert "(job: train-cac): planned: 39.85 GiB a GPU on 8 processes, fits 74.5 GiB" in out and "FSDP" in out


def test_the_launch_from_accelerate_s_environment():
    from cac_align.plan.stages import environment_sharding

    assert environment_sharding({}) == (1, "none", None)
    assert environment_sharding({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_TRANSFORMER_CLS_TO_WRAP": "A,B"}) == (8, "fsdp", ("A", "B"))
    assert environment_sharding({"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == (4, "zero3", None)
    assert environment_sharding({"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == (4, "none", None)


def test_train_cac_refuses_at_its_start_before_the_model_loads(tmp_path):
    from cac_align.jobs.train_cac import run

    out = tmp_path / "stage1"
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("")  # there (a missing one is refused first, in one line): the plan decides
    _, config = load_recipe(CAC / "stage1_tiny.yaml", [f"out_dir={out}", f"annotations={annotations}", "memory_budget_gib=0.0001"])
    with pytest.raises(RecipeError, match=r"^memory plan: train-cac needs .* GiB per GPU \(stage 1, finetune=lora, 1 process, not sharded"):
        run(config)
    assert not out.exists()


def test_the_ms_swift_launchers_are_planned_from_their_arguments_or_say_what_they_cannot_count(hub_cache, capsys):
    """Stage 3 on ms-swift (recipes/cac/stage3_swift.sh): its $MODEL unknown until MODEL= names it; then its own
    arguments planned (ZeRO-3 over 8 GPUs: bf16 weights and gradients 1/8, the optimizer on the CPU with
    --offload_optimizer, the bf16 reference 1/8; 4 rollouts a micro-batch with their 1,024-token answers) and vLLM's
    colocated share not counted, saying so."""
    from cac_align.cli import main
    from cac_align.plan.swift import plan_swift, swift_arguments

    script = CAC / "stage3_swift.sh"
    args = swift_arguments(script.read_text())
    assert (args["deepspeed"], args["tuner_type"], args["per_device_train_batch_size"], args["vllm_gpu_memory_utilization"]) == ("zero3", "full", "4", "0.5")
    assert [r.source for r in plan_swift(script).rows] == ["unknown"]
    plan = plan_swift(script, {"MODEL": "Qwen/Qwen3-VL-8B-Instruct"})
    rows = {r.label.split(" (")[0]: r for r in plan.rows}
    shard = math.ceil(QWEN3_VL_8B / 8)
    assert plan.processes == 8 and rows["the model's bf16 weights and gradients"].bytes == 4 * shard
    assert rows["float32 master weights and AdamW's moments: on the CPU"].bytes == 0 and rows["the frozen reference"].bytes == 2 * shard
    assert rows["vLLM colocated: not counted"].source == "unknown" and "0.5 of each GPU" in rows["vLLM colocated: not counted"].label
    assert main(["check-recipe", str(script), "MODEL=Qwen/Qwen3-VL-8B-Instruct"]) == 3
    assert capsys.readouterr().out.startswith(f"UNKNOWN {script} (job: train-cac stage 3 on ms-swift): not counted: vLLM colocated")
