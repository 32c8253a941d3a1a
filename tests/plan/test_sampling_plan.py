"""The memory plans of ``bon`` and ``repair`` (cac_align.plan.sampling, issue #116): the shipped Best-of-5 on
Wan-2.1-1.3B with UR + CaC in-process and the Wan-VACE repair worked out by hand from the shipped configs (each
row: what it counts and where its number comes from), refused with the fix at budgets that cannot hold them;
and each job's own start refusing before anything loads (the decode of a batch as the batch's own trace:
tests/plan/test_trace.py).
"""

from __future__ import annotations

import pytest
import torch

from conftest import REPO_ROOT

from cac_align.config import RecipeError
from cac_align.jobs import load_recipe
from cac_align.plan.counts import GIB
from cac_align.plan.rows import fixed_overhead_bytes

ALIGN = REPO_ROOT / "recipes" / "align"

# Parameters by hand from the shipped configs (cac_align/plan/full_size/; their sources in its SOURCES.md)
# Wan-2.1-1.3B's transformer (diffusers' conversion script `Wan-T2V-1.3B`: width 1536 = 12 heads x 128, 30 blocks,
# FFN 8960, text 4096, frequencies 256, 16 channels, patch 1 x 2 x 2). A block: self- and cross-attention, each
# 4 Linear(1536, 1536) with bias (4 x 2,360,832) and two RMS norms across heads (2 x 1536): 9,446,400 each;
# cross_attn_norm's LayerNorm 2 x 1536; FFN Linear(1536, 8960) 13,771,520 + Linear(8960, 1536) 13,764,096;
# scale_shift_table 6 x 1536. 2 x 9,446,400 + 3,072 + 27,535,616 + 9,216 = 46,440,704, x 30 = 1,393,221,120.
# Outside the blocks: patch Conv3d(16, 1536, 1x2x2) 99,840; time embedder 256 -> 1536 -> 1536 (394,752 + 2,360,832);
# time projection 1536 -> 9216 (14,164,992); text embedder 4096 -> 1536 -> 1536 (6,292,992 + 2,360,832); output
# Linear(1536, 64) 98,368; scale_shift_table 2 x 1536: 25,775,680.
WAN13_TRANSFORMER = 30 * (2 * (4 * (1536 * 1536 + 1536) + 2 * 1536) + 2 * 1536 + (1536 * 8960 + 8960) + (8960 * 1536 + 1536) + 6 * 1536) \
    + (16 * 4 * 1536 + 1536) + (256 * 1536 + 1536) + (1536 * 1536 + 1536) + (1536 * 9216 + 9216) + (4096 * 1536 + 1536) \
    + (1536 * 1536 + 1536) + (1536 * 64 + 64) + 2 * 1536
# UMT5-XXL's encoder (google/umt5-xxl: vocabulary 256,384 x 4096, once: the encoder's embedding is the shared one;
# 24 layers of attention 4 x 4096 x 4096 (64 heads of 64), its own relative bias 32 x 64, two norms, a gated-GELU
# FFN 3 x 4096 x 10240; a final norm)
UMT5_XXL = 256384 * 4096 + 24 * (4 * 4096 * 4096 + 32 * 64 + 2 * 4096 + 3 * 4096 * 10240) + 4096
# Qwen3-VL-8B (its config.json): the language model, vocabulary 151,936 x 4096 in and out (untied), 36 layers of
# q 4096x4096, k and v 4096x1024, o 4096x4096, q/k norms 2 x 128, MLP 3 x 4096 x 12288, two norms; a final norm.
# The vision tower: patch Conv3d(3, 1152, 2x16x16) with bias, 2304 positions x 1152, 27 blocks (two LayerNorms, qkv
# 1152->3456 and proj with bias, MLP 1152->4304->1152 with bias), a merger (LayerNorm 1152, 4608->4608, 4608->4096)
# and three deepstack mergers (LayerNorm 4608 after the shuffle, the same two Linears).
QWEN3_VL_8B_TEXT = 2 * 151936 * 4096 + 36 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 128 + 3 * 4096 * 12288 + 2 * 4096) + 4096
_MERGER = (4608 * 4608 + 4608) + (4608 * 4096 + 4096)
QWEN3_VL_8B_VISION = (3 * 2 * 16 * 16 * 1152 + 1152) + 2304 * 1152 \
    + 27 * (2 * 2304 + (1152 * 3456 + 3456) + (1152 * 1152 + 1152) + (1152 * 4304 + 4304) + (4304 * 1152 + 1152)) \
    + (2304 + _MERGER) + 3 * (2 * 4608 + _MERGER)
QWEN3_VL_8B = QWEN3_VL_8B_TEXT + QWEN3_VL_8B_VISION
# UnifiedReward-qwen-7b (Qwen2.5-VL-7B's config.json): vocabulary 152,064 x 3584 in and out, 28 layers of q (with
# bias) 3584x3584, k and v (with bias) 3584x512, o 3584x3584, MLP 3 x 3584 x 18944, two norms; a final norm. Vision:
# patch Conv3d(3, 1280, 2x14x14) without bias, 32 blocks (two RMS norms, qkv 1280->3840 and proj with bias, a gated
# MLP 1280->3420 x 2 and 3420->1280 with bias), a merger (RMS norm 1280, 5120->5120, 5120->3584 with bias).
UR_7B = 2 * 152064 * 3584 + 28 * ((3584 * 3584 + 3584) + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584) + 3584 \
    + 3 * 2 * 14 * 14 * 1280 + 32 * (2 * 1280 + (1280 * 3840 + 3840) + (1280 * 1280 + 1280) + 2 * (1280 * 3420 + 3420) + (3420 * 1280 + 1280)) \
    + 1280 + (5120 * 5120 + 5120) + (5120 * 3584 + 3584)
# Qwen3-VL-8B's KV cache a token: 2 (K, V) x 36 layers x 8 heads x 128 x 2 bytes
KV_PER_TOKEN = 2 * 36 * 8 * 128 * 2


def _wan_vae_parameters() -> int:
    """The Wan-2.1 VAE's parameters as diffusers builds ``AutoencoderKLWan()`` (its defaults are that VAE: the shipped
    config's source); the one count here taken from the class rather than by hand."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        return sum(p.numel() for p in AutoencoderKLWan().parameters())


def test_bon_wan_ur_cac_by_hand_from_the_shipped_configs(hub_cache):
    """Best-of-5 on Wan-2.1-1.3B, UR + CaC in-process, offload: each row by hand (module docstring of
    cac_align.plan.sampling), the peak the scoring phase, and the table's figures."""
    from cac_align.plan.counts import counted_generator
    from cac_align.plan.sampling import SAMPLING_WIDTHS, plan_bon
    from cac_align.plan.trace import vae_bytes

    # the hand counts above are the sizes the releases publish (1.42B, 5.68B, 8.77B, 8.29B)
    assert WAN13_TRANSFORMER == 1_418_996_800 and UMT5_XXL == 5_680_910_336
    assert QWEN3_VL_8B == 8_767_123_696 and QWEN3_VL_8B_VISION == 576_388_336 and UR_7B == 8_292_166_656
    _, config = load_recipe(ALIGN / "bon_wan_ur_cac.yaml")
    plan = plan_bon(config)
    rows = {r.label.split(":")[0].split(" (")[0]: r for r in plan.rows}
    vae = _wan_vae_parameters()
    # offload: each model only in its phase, in its dtype (the transformer and UMT5 bf16, the VAE float32)
    assert (rows["transformer"].bytes, rows["transformer"].phase, rows["transformer"].source) == (2 * WAN13_TRANSFORMER, "sample", "counted")
    assert (rows["text_encoder"].bytes, rows["text_encoder"].phase) == (2 * UMT5_XXL, "encode")
    assert (rows["vae"].bytes, rows["vae"].phase) == (4 * vae, "decode")
    # the sampling forward: 5 videos (Wan runs its guidance branches one after the other) x 21 x 30 x 52 = 32,760 tokens
    # x width 1536 x 2 bytes x 16 widths
    assert rows["sampling forward, no gradient"].bytes == 5 * 32760 * 1536 * 2 * SAMPLING_WIDTHS == 8_051_097_600
    assert rows["sampling forward, no gradient"].source == "arithmetic"
    # the decode of the batch: 5 times one video's traced decode (81 frames of 480 x 832, float32)
    one = vae_bytes(counted_generator(config.generator, None), "decode", 1, (81, 480, 832), "float32")
    assert rows["vae decode of 5 videos, untiled"].bytes == 5 * one and rows["vae decode of 5 videos, untiled"].source == "traced"
    # the judges while they score, in bf16; CaC's KV cache for the 5 candidates of a prompt (its max_batch_size 8 capped):
    # its turn 2 holds 21 frames at 4 fps (11 groups) and the 32-frame clip (16 groups), each group 15 x 26 cells of its
    # 32-pixel grid and 8 markup tokens: 27 x 398 = 10,746 visual tokens, then the text and both answers, rounded up to
    # its static cache's 256: 14,080 tokens
    judge = [r for r in plan.rows if r.label.startswith("judge reward.")]
    assert [(r.bytes, r.phase) for r in judge] == [(2 * UR_7B, "score"), (2 * QWEN3_VL_8B, "score")]
    kv = next(r for r in plan.rows if r.label.startswith("judges' KV cache"))
    assert "5 x 14,080 tokens (10,746 visual)" in kv.label and kv.bytes == 5 * 14080 * KV_PER_TOKEN == 10_380_902_400
    assert next(r for r in plan.rows if r.label.startswith("CUDA")).bytes == GIB
    # the peak: the CUDA context + the scoring phase (both judges and the cache), the largest of the four
    score = 2 * UR_7B + 2 * QWEN3_VL_8B + 10_380_902_400
    assert score > max(8_051_097_600 + 2 * WAN13_TRANSFORMER, 5 * one + 4 * vae, 2 * UMT5_XXL)
    assert plan.peak_bytes == GIB + score == 45_573_224_928  # 42.44 GiB
    assert "peak: resident + max(sample, encode, decode, score)" in plan.table()


def test_bon_wan_ur_cac_refused_on_24_gb_with_the_fix_and_fits_48(hub_cache):
    """On a 24 GB card (22.35 GiB) the judges alone are 31.8 GiB: offload keeps them, a smaller batch keeps them, so the
    first fix that fits is serving them, with the decode of 2 videos (1 GiB + VAE + 2 x one decode = 16.7 GiB; 3
    would be 24.3). A 48 GB card (44.7 GiB) holds the 42.4 GiB as it is."""
    from cac_align.plan.refusal import SERVE_THE_JUDGES
    from cac_align.plan.sampling import plan_bon

    _, config = load_recipe(ALIGN / "bon_wan_ur_cac.yaml")
    plan = plan_bon(config)
    assert plan.refusal(int(48e9)) is None
    reason = plan.refusal(int(24e9))
    assert reason.startswith("memory plan: bon needs 42.4 GiB per GPU (batch_size=5, offload=true) but the device has 22.4 GiB; ")
    assert reason.endswith(f"{SERVE_THE_JUDGES}, and batch_size=2 (16.7 GiB per GPU)")
    # without offload, on a 48 GB card: every model resident, 1.42B x 2 + 5.68B x 2 + the judges + the VAE, and the decode
    # of 5 on top, does not fit; offload alone fixes it
    _, resident = load_recipe(ALIGN / "bon_wan_ur_cac.yaml", ["offload=false"])
    reason = plan_bon(resident).refusal(int(48e9))
    assert reason is not None and "; offload=true: the pipeline's modules visit the GPU one at a time" in reason and reason.endswith("(42.4 GiB per GPU)")


def test_repair_with_wan_vace_by_hand_from_the_shipped_configs(hub_cache):
    """Wan2.1-VACE-1.3B regenerating a Wan-2.1 video, CaC (Qwen3-VL-8B) judging in-process: the VACE transformer by
    hand (the 1.3B's and 15 VACE blocks), the segment's copies and the sampling forward with its 15 hints held, the
    judge's cache for one video; the peak; refused on a 24 GB card with the judge served, and what no setting fixes."""
    from cac_align.plan.refusal import SERVE_THE_JUDGES
    from cac_align.plan.sampling import SAMPLING_WIDTHS, counted_regenerator, plan_repair
    from cac_align.plan.trace import vae_bytes

    _, config = load_recipe(ALIGN / "repair_wan_vace_cac.yaml")
    plan = plan_repair(config)
    rows = {r.label.split(" (")[0]: r for r in plan.rows}
    # the VACE transformer: the 1.3B's (WAN13_TRANSFORMER), a VACE patch embedding Conv3d(96, 1536, 1x2x2) and 15 VACE
    # blocks: a Wan block each, with proj_out Linear(1536, 1536) and, on the first, proj_in Linear(1536, 1536)
    block = 2 * (4 * (1536 * 1536 + 1536) + 2 * 1536) + 2 * 1536 + (1536 * 8960 + 8960) + (8960 * 1536 + 1536) + 6 * 1536
    vace = WAN13_TRANSFORMER + (96 * 4 * 1536 + 1536) + 15 * (block + 1536 * 1536 + 1536) + (1536 * 1536 + 1536)
    assert rows["transformer"].bytes == 2 * vace and rows["transformer"].phase == "resident"
    assert rows["text_encoder"].bytes == 2 * UMT5_XXL and rows["vae"].bytes == 4 * _wan_vae_parameters()
    # the segment at its longest, the whole 81 x 480 x 832 video (already 4k + 1 frames, sides multiples of 16): its
    # video and two masked copies (3 channels each) and the mask, float32
    assert rows["the segment's video, mask and masked copies"].bytes == 10 * 81 * 480 * 832 * 4
    counts = counted_regenerator(config.regenerator)
    assert rows["vae encode of the segment, untiled"].bytes == vae_bytes(counts, "encode", 1, (81, 480, 832), "float32")
    assert rows["vae decode of 1 video, untiled"].bytes == vae_bytes(counts, "decode", 1, (81, 480, 832), "float32")
    # one video, one guidance branch at a time, 32,760 tokens of width 1536 in bf16, 16 widths and the 15 hints
    assert rows["sampling forward, no gradient"].bytes == 32760 * 1536 * 2 * (SAMPLING_WIDTHS + 15)
    judge = next(r for r in plan.rows if r.label.startswith("judge reward.model"))
    kv = next(r for r in plan.rows if r.label.startswith("judges' KV cache"))
    assert (judge.bytes, judge.phase) == (2 * QWEN3_VL_8B, "resident") and kv.bytes == 14080 * KV_PER_TOKEN  # one video a call
    resident = 2 * vace + 2 * UMT5_XXL + rows["vae"].bytes + 2 * QWEN3_VL_8B + GIB
    phases = [rows["the segment's video, mask and masked copies"].bytes + rows["vae encode of the segment, untiled"].bytes,
              rows["sampling forward, no gradient"].bytes, rows["vae decode of 1 video, untiled"].bytes, kv.bytes]
    assert plan.peak_bytes == resident + max(phases)
    # 24 GB: the judge served is not enough (the regenerator alone: 2.9 + 10.6 + 0.5 GiB and a decode of 7.6); the line
    # says so and what would be; 40 GB: serving the judge fits
    reason = plan.refusal(int(24e9))
    assert "no setting of repair fits it (it keeps its regenerator on the GPU whole and has no offload): serve the judge, and use a GPU" in reason
    assert plan.refusal(int(40e9)).endswith(f"; {SERVE_THE_JUDGES} ({(plan.peak_bytes - 2 * QWEN3_VL_8B - max(phases) + max(phases[:3])) / GIB:.1f} "
                                           "GiB per GPU)")
    assert fixed_overhead_bytes(1) == GIB


def test_the_two_expert_vace_on_one_80_gb_gpu_is_refused_even_with_its_judge_served(hub_cache):
    """repair_wan22_vace_a14b_cac: two 14B VACE experts (both on the GPU: the job loads the pipeline whole), UMT5-XXL and
    the decode are 84.2 GiB with the judge already served: no setting of repair fits an 80 GB GPU; a 141 GB H200 holds it."""
    from cac_align.plan.sampling import plan_repair

    _, config = load_recipe(ALIGN / "repair_wan22_vace_a14b_cac.yaml")
    plan = plan_repair(config)
    assert [r.label.split(" (")[0] for r in plan.rows if r.phase == "resident" and r.source == "counted"][:2] == ["transformer", "transformer_2"]
    reason = plan.refusal(int(80e9))
    assert reason.startswith("memory plan: repair needs 84.2 GiB per GPU") and "serve the judge" not in reason
    assert plan.refusal(int(141 * GIB)) is None


def test_bon_refuses_at_its_start_before_anything_loads(tmp_path):
    """The job's own start plans (as flow-grpo's setup does): a tiny bon with its models on the device and a budget that
    cannot hold them stops with the fix, and writes nothing."""
    from cac_align.jobs.best_of_n import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    out = tmp_path / "bon"
    _, config = load_recipe(ALIGN / "bon_tiny.yaml", [f"prompts={prompts}", f"out_dir={out}", "generator.device=auto", "memory_budget_gib=0.0001"])
    with pytest.raises(RecipeError, match=r"^memory plan: bon needs .* GiB per GPU \(batch_size=2, offload=false\) but the device has 0.0 GiB; "):
        run(config)
    assert not out.exists()


def test_repair_refuses_at_its_start_before_anything_loads(tmp_path):
    from cac_align.jobs.repair import run

    out = tmp_path / "repair"
    _, config = load_recipe(ALIGN / "repair_tiny_wan.yaml", [f"out_dir={out}", "regenerator.device=auto", "memory_budget_gib=0.0001"])
    with pytest.raises(RecipeError, match=r"^memory plan: repair needs .* GiB per GPU \(one video at a time, a segment of 17 x 64 x 96\)"):
        run(config)
    assert not (out / "parts").exists() and not (out / "results.jsonl").exists()
