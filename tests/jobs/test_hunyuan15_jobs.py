"""HunyuanVideo-1.5 in the generator jobs, offline, from the shipped tiny recipes (tiny-random:hunyuanvideo15
and its image-to-video twin: diffusers' own HunyuanVideo15Pipeline classes at toy size, a cheap judge):
Best-of-N writes the pipeline's own videos at the release's 24 fps and DPO trains on its best and worst;
Flow-GRPO animating an image trains a LoRA on the attention projections, leaves every base weight as it
was, and the LoRA it writes loads where a generator's LoRA goes (diffusers 0.42.1's HunyuanVideo-1.5
pipelines have no LoRA loader: cac_align.gen.generator writes and reads the same file without one).
Slow on a loaded 2-core machine (each runs the real jobs end to end): `pytest -m slow`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cac_align.config import load_config
from cac_align.gen.generator import GeneratorConfig, build_generator, generate_videos
from cac_align.gen.families.hunyuan15 import HUNYUAN15_I2V
from cac_align.jobs.best_of_n import BonConfig, frames_sha256
from cac_align.rewards.registry import build_reward
from cac_align.run.input_files import read_prompt_rows
from cac_align.video import load_video
from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes/align"
BRIGHTNESS = {"name": "brightness"}  # a cheap judge: these tests are about the generator


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # bon, then dpo: measured 196 s wall on a shared 2-core machine at load ~8 (both tests: 76 s of CPU)
def test_best_of_n_writes_the_pipelines_videos_and_dpo_trains_on_them(tmp_path):
    from cac_align.jobs.best_of_n import run as best_of_n
    from cac_align.jobs.dpo import DpoConfig, run as dpo

    config = load_config(BonConfig, RECIPES / "bon_tiny_hunyuan15.yaml", [f"out_dir={tmp_path / 'bon'}", "n=2"], job="bon")
    best_of_n(config, reward=build_reward(BRIGHTNESS))
    rows = [json.loads(line) for line in (tmp_path / "bon/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["valid"] for r in rows)
    video = load_video(str(tmp_path / "bon" / rows[0]["video"]))
    assert video.fps == 24.0 and video.frames.shape == (9, 32, 32, 3)  # the release's 24 fps (the authors' generate.py)
    made = generate_videos(build_generator(config.generator), config.generator, [rows[0]["prompt"]] * 2, [rows[0]["seed"], rows[1]["seed"]])
    assert [frames_sha256(v) for v in made.frames] == [rows[0]["frames_sha256"], rows[1]["frames_sha256"]]
    # DPO on each prompt's best and worst, encoded by the family's VAE (9 x 32 x 32 -> 3 x 2 x 2)
    out = tmp_path / "dpo"
    dpo(load_config(DpoConfig, RECIPES / "dpo_tiny_hunyuan15.yaml", [f"out_dir={out}", f"pairs=[{tmp_path / 'bon'}]", "log_with=none",
                                                                      "checkpoint_every=0"], job="dpo"))
    from safetensors.torch import load_file

    cached = load_file(str(out / "latents/pair_00000.safetensors"))
    assert cached["winner"].shape == cached["loser"].shape == (4, 3, 2, 2)
    assert {"embeds", "attention_mask", "embeds_2", "attention_mask_2"} <= set(cached)  # both text encoders' tensors
    metrics = _metrics(out)
    assert len(metrics) == 2 and all(np.isfinite(r["train/loss"]) for r in metrics) and metrics[-1]["train/grad_norm"] > 0
    loaded = build_generator(GeneratorConfig(**{**_settings("tiny-random:hunyuanvideo15"), "lora": str(out / "lora")}))
    assert any("lora_B" in n for n, _ in loaded.transformer.named_parameters())


def _settings(name):
    return dict(name=name, dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=9, num_inference_steps=2,
                max_sequence_length=16)


@pytest.mark.slow  # measured 182 s wall on a shared 2-core machine at load ~8
def test_flow_grpo_animating_an_image_trains_a_lora_that_loads_back(tmp_path):
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

    pipe = HUNYUAN15_I2V.build_tiny("tiny-random:hunyuanvideo15-i2v")
    base = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    out = tmp_path / "run"
    config = load_config(FlowGrpoConfig, RECIPES / "flow_grpo_tiny_hunyuan15_i2v.yaml",
                         [f"out_dir={out}", "log_with=none", "checkpoint_every=0", "eval_every=0", "eval_at_start=false"], job="flow-grpo")
    run(config, pipe=pipe, reward=build_reward(BRIGHTNESS))
    metrics = _metrics(out)
    assert [r["train/timesteps"] for r in metrics] == [2, 2] and all(r["train/grad_norm"] > 0 for r in metrics)
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert lora and any(torch.count_nonzero(p) for p in lora.values())  # trained (B starts at 0)
    after = {n.replace(".base_layer", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" not in n}
    assert set(after) == set(base) and all(torch.equal(after[n], base[n]) for n in base)  # every base weight as it was
    # the file written loads into a fresh pipeline (no diffusers LoRA loader on it) and changes its video
    plain = GeneratorConfig(**_settings("tiny-random:hunyuanvideo15-i2v"))
    loaded = build_generator(GeneratorConfig(**_settings("tiny-random:hunyuanvideo15-i2v"), lora=str(out / "lora")))
    assert {n for n, _ in loaded.transformer.named_parameters() if "lora_B" in n} == set(lora)
    image = [read_prompt_rows(str(RECIPES / "prompts_tiny_i2v.jsonl"))[0].image]
    with_lora = generate_videos(loaded, plain, ["a red ball"], [3], images=image).frames
    without = generate_videos(build_generator(plain), plain, ["a red ball"], [3], images=image).frames
    assert with_lora.shape == without.shape == (1, 9, 32, 32, 3) and not np.array_equal(with_lora, without)
