"""Kandinsky 6 in the trainers, offline, from the shipped tiny recipes (tiny-random:kandinsky6: diffusers' own
Kandinsky6TI2VAPipeline classes at toy size, a cheap judge): flow-grpo and dpo each train one step from an
empty folder, their LoRA on the video branch moves and every base weight stays as it was; the audio latents
ride the deterministic path as LTX-2's do. nft's one step is tests/jobs/test_nft.py's (every family's tiny
nft recipe); two processes (FSDP2) against one, tests/jobs/test_parallel.py's (every family's tiny
flow-grpo recipe). Slow (real jobs end to end): `pytest -m slow`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cac_align.config import load_config
from cac_align.gen.families.kandinsky6 import KANDINSKY6, VIDEO_BRANCH
from cac_align.rewards.registry import build_reward
from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes/align"
BRIGHTNESS = {"name": "brightness"}


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_trained(pipe, base):
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert lora and all(torch.count_nonzero(p) for p in lora.values())  # every B moved (it starts at 0)
    assert {n.split(".lora_B")[0].split("visual_transformer_blocks.")[1].split(".", 1)[1] for n in lora} == set(VIDEO_BRANCH)  # the video branch only
    after = {n.replace(".base_layer", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" not in n}
    assert set(after) == set(base) and all(torch.equal(after[n], base[n]) and not after[n].requires_grad for n in base)  # the base as it was


@pytest.mark.slow  # bon (4 videos), flow-grpo one step, dpo one step on bon's pairs: 15 s on an idle 2-core machine
def test_flow_grpo_and_dpo_train_the_video_branch_one_step_from_an_empty_folder(tmp_path):
    from cac_align.jobs.best_of_n import BonConfig
    from cac_align.jobs.best_of_n import run as best_of_n
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.dpo import run as dpo
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.flow_grpo import run as flow_grpo

    pipe = KANDINSKY6.build_tiny("tiny-random:kandinsky6")
    base = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    out = tmp_path / "grpo"
    config = load_config(FlowGrpoConfig, RECIPES / "flow_grpo_tiny_kandinsky6.yaml", [f"out_dir={out}", "steps=1", "checkpoint_every=0"], job="flow-grpo")
    flow_grpo(config, pipe=pipe, reward=build_reward(BRIGHTNESS))
    (row,) = _metrics(out)
    assert row["train/grad_norm"] > 0 and row["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # recomputed with the recorded audio
    _assert_trained(pipe, base)
    assert (out / "lora/pytorch_lora_weights.safetensors").is_file()

    bon = tmp_path / "bon"
    best_of_n(load_config(BonConfig, RECIPES / "bon_tiny_kandinsky6.yaml", [f"out_dir={bon}"], job="bon"), reward=build_reward(BRIGHTNESS))
    pipe = KANDINSKY6.build_tiny("tiny-random:kandinsky6")
    out = tmp_path / "dpo"
    dpo(load_config(DpoConfig, RECIPES / "dpo_tiny_kandinsky6.yaml", [f"out_dir={out}", f"pairs=[{bon}]", "steps=1", "checkpoint_every=0"], job="dpo"),
        pipe=pipe)
    from safetensors.torch import load_file

    cached = load_file(str(out / "latents/pair_00000.safetensors"))
    assert cached["winner"].shape == (4, 3, 4, 4) and {"embeds", "pooled", "text_mask"} <= set(cached)  # HunyuanVideo's VAE: 9 x 32 x 32 -> 3 x 4 x 4
    (row,) = _metrics(out)
    assert np.isfinite(row["train/loss"]) and row["train/grad_norm"] > 0
    _assert_trained(pipe, base)
