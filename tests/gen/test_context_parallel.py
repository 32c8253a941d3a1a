"""Context parallel for the generator families: LTX-2's own plan and Wan's (diffusers') give on two
processes what one process gives (tests/ltx2_context_parallel.py under torch's elastic agent, gloo, fp32), and a
video or a model the degree cannot split is refused before anything loads, naming the setting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from cac_align.config import RecipeError
from cac_align.gen.generator import GeneratorConfig
from cac_align.gen.families.ltx2 import LOCAL_ATTENTIONS, LTX2, LTX23
from cac_align.gen.families.wan import WAN21
from conftest import REPO_ROOT

LTX2_HEADS = {"num_attention_heads": 32, "audio_num_attention_heads": 32}  # the release's (diffusers' conversion)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """tests/ltx2_context_parallel.py on two processes, forked by torch's elastic agent from a process that imported
    the libraries once (tests/forked_launch.py; ``CAC_TEST_TORCHRUN=1``: the ``torchrun`` command)."""
    import forked_launch

    out = tmp_path_factory.mktemp("context_parallel") / "result.json"
    script = REPO_ROOT / "tests/ltx2_context_parallel.py"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    if env.get("CAC_TEST_TORCHRUN"):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script), str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    else:
        done = forked_launch.launch(script, [str(out)], processes=2, port=_free_port(), env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(out.read_text())["cases"]


@pytest.mark.slow  # two processes, ~55 s on 2 CPU cores: `pytest -m slow tests/gen/test_context_parallel.py`
@pytest.mark.parametrize("name", ["tiny-random:ltx2", "tiny-random:ltx2.3", "tiny-random:wan", "tiny-random:wan21-i2v", "tiny-random:wan22-ti2v+image"])
def test_two_processes_give_one_process_velocities_and_lora_gradients(two_processes, name):
    case = two_processes[name]
    # the video really was split: each process's output layer saw half the tokens
    assert case["output_tokens_per_process"] == [case["video_tokens"] // 2]
    assert case["plan_alone_video_max_diff"] == 0.0  # applying the family's plan changes nothing in one process
    # the guided velocities (CFG, STG, modality guidance for LTX-2) of both streams
    assert case["video_max_diff"] <= 2e-5
    if case["audio_tokens"] is not None:
        assert case["audio_max_diff"] <= 2e-5
    # the LoRA gradients of a loss on the video velocity: summed over the group, one process's
    # (diffusers' output gather gives each process its own chunk's share)
    assert case["grad_summed_max_diff"] <= 2e-5 * case["grad_max_abs"]
    # the control: one process's gradient alone, without the sum, is not
    assert case["grad_own_rank_max_diff_min_over_ranks"] >= 0.1 * case["grad_max_abs"]
    if case["audio_tokens"] is not None:
        # LTX-2's second control: the video-to-audio gather keeping each process's own share of the
        # gradient (as diffusers' AllGatherFunction does) instead of summing them (measured: 6% and 60%)
        assert case["grad_summed_max_diff_gather_without_sum"] >= 0.02 * case["grad_max_abs"]


@pytest.mark.slow
def test_ltx2_audio_the_degree_does_not_divide_and_diffusers_own_plan(two_processes):
    # LTX-2.3 at 25 fps: 17 frames are 17 audio tokens, odd, and still equal (the audio is whole on every process)
    assert two_processes["tiny-random:ltx2.3"]["audio_tokens"] == 17
    # diffusers' own LTX-2 plan on the same call fails in the rope (issue 78's report)
    for name in ("tiny-random:ltx2", "tiny-random:ltx2.3"):
        assert "must match the size of tensor b" in two_processes[name]["diffusers_plan_error"]


# -- the plan in one process ----------------------------------------------------------------------
@pytest.mark.parametrize("family", [LTX2, LTX23], ids=["ltx2", "ltx2.3"])
def test_the_ltx2_plan_changes_nothing_in_one_process(family):
    config = GeneratorConfig(name=family.tiny_names[0], dtype="float32", vae_dtype="float32", device="cpu", height=64, width=96, num_frames=17,
                             num_inference_steps=3, max_sequence_length=32, negative_prompt="blurry", stg_blocks=[1])
    pipe = family.build_tiny(config.name, seed=0)
    guidance = family.guidance(config)
    cond, negative = family.encode_prompts(pipe, ["a dog running"], config.negative_prompt, guidance, config.max_sequence_length)
    latents, side = family.initial_latents(pipe, config, [torch.Generator().manual_seed(1)])
    denoiser = family.denoiser(pipe)
    with torch.no_grad():
        before = denoiser(latents, 600.0, cond, negative, guidance, side=side)
        plan = family.context_parallel_plan(pipe.transformer)
        after = denoiser(latents, 600.0, cond, negative, guidance, side=side)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # bit for bit
    # the tiny models use split rope: cos/sin (B, H, T, r), split along T
    assert plan["rope"][0].split_dim == plan["cross_attn_rope"][1].split_dim == 2 and plan["rope"][0].expected_dims == 4
    assert plan[""]["hidden_states"].split_dim == 1 and plan["proj_out"].gather_dim == 1
    assert "encoder_hidden_states" not in plan[""] and "audio_rope" not in plan  # text and audio stay whole
    block = pipe.transformer.transformer_blocks[0]
    for name in LOCAL_ATTENTIONS:  # what enable_parallelism sets never reaches these attentions
        processor = getattr(block, name).processor
        processor._parallel_config = object()
        assert processor._parallel_config is None
    assert type(block.attn1.processor).__module__.startswith("diffusers")  # the video self-attention runs Ulysses
    processors = [getattr(block, name).processor for name in LOCAL_ATTENTIONS]
    family.context_parallel_plan(pipe.transformer)  # twice: the same processors
    assert [getattr(block, name).processor for name in LOCAL_ATTENTIONS] == processors


def test_the_plan_follows_the_rope_layout():
    interleaved = SimpleNamespace(config=SimpleNamespace(rope_type="interleaved"), transformer_blocks=[])
    plan = LTX2.context_parallel_plan(interleaved)  # cos/sin (B, T, D)
    assert plan["rope"][0].split_dim == 1 and plan["rope"][0].expected_dims == 3 and plan["cross_attn_rope"][0].split_dim == 1


def test_wan_takes_diffusers_own_plan():
    from cac_align.gen.families.wan import build_tiny_wan_pipeline

    transformer = build_tiny_wan_pipeline(seed=0).transformer
    assert WAN21.context_parallel_plan(transformer) is type(transformer)._cp_plan


# -- the check before loading ----------------------------------------------------------------------
def _ltx2(**settings):
    """The release's size (512 x 768, 121 frames at 24 fps) unless ``settings`` say otherwise."""
    return GeneratorConfig(name="tiny-random:ltx2", device="cpu", **{"height": 512, "width": 768, "num_frames": 121, **settings})


def test_the_release_settings_split_over_8():
    # 121 frames of 512 x 768: 16 x 16 x 24 = 6144 latent tokens, 32 heads
    for degree in (1, 2, 4, 8):
        LTX2.check_context_parallel(_ltx2(), degree, LTX2_HEADS)
    # the audio (126 tokens at 24 fps; 17 heads here) is whole on every process: it need not divide
    LTX2.check_context_parallel(_ltx2(fps=25.0), 4, {**LTX2_HEADS, "audio_num_attention_heads": 17})


def test_video_tokens_the_degree_does_not_divide_name_the_frames_that_would():
    # 17 frames of 64 x 96: 3 x 2 x 3 = 18 tokens; 4 needs 2 | latent frames -> 4 latent frames = 25 frames
    with pytest.raises(RecipeError, match=r"18 latent tokens.*generator.num_frames=25 \(4 latent frames\)"):
        LTX2.check_context_parallel(_ltx2(height=64, width=96, num_frames=17), 4, LTX2_HEADS)
    LTX2.check_context_parallel(_ltx2(height=64, width=96, num_frames=25), 4, LTX2_HEADS)
    # Wan-2.1: 9 frames of 32 x 32 -> 3 x 2 x 2 = 12 tokens (VAE 8x, patch 2); 8 needs 2 | latent frames -> 13 frames
    wan = GeneratorConfig(name="tiny-random:wan", device="cpu", height=32, width=32, num_frames=9)
    with pytest.raises(RecipeError, match=r"12 latent tokens.*generator.num_frames=13"):
        WAN21.check_context_parallel(wan, 8, {"num_attention_heads": 8})
    WAN21.check_context_parallel(GeneratorConfig(name="tiny-random:wan", device="cpu", height=32, width=32, num_frames=13), 8,
                                 {"num_attention_heads": 8})


def test_heads_the_degree_does_not_divide_name_the_degree():
    # Wan-2.1-1.3B: 12 heads; its 81 frames of 480 x 832 (21 x 30 x 52 tokens) would split over 8
    wan = GeneratorConfig(name="tiny-random:wan", device="cpu", height=480, width=832, num_frames=81)
    with pytest.raises(RecipeError, match=r"12 attention heads.*num_attention_heads.*parallel.context_parallel to one that divides 12 \(2, 3, 4, 6"):
        WAN21.check_context_parallel(wan, 8, {"num_attention_heads": 12})
    with pytest.raises(RecipeError, match="num_attention_heads"):
        LTX2.check_context_parallel(_ltx2(), 3, LTX2_HEADS)  # 6144 tokens divide by 3, 32 heads do not
