"""LTX-2.5 in bon, flow-grpo and dpo from the shipped tiny recipes (tiny-random:ltx2.5: diffusers' own
LTX2Pipeline with a Gemma-4 text encoder and a duration head, and the diffusion video decoder that
samples), run from an empty folder: Best-of-N writes 24 fps videos with their soundtrack and a WAV
beside each, the same seed giving the same videos twice and another seed other ones; Flow-GRPO trains
the video branch's LoRA; DPO trains on the Best-of-N run's pairs."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import torch

from cac_align.config import load_config
from cac_align.rewards.registry import build_reward
from cac_align.video import load_video
from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes/align"
BRIGHTNESS = {"name": "brightness"}  # a cheap judge: these tests are about the generator


def _bon(seed: int, out: str):
    from cac_align.jobs.best_of_n import BonConfig, run

    run(load_config(BonConfig, RECIPES / "bon_tiny_ltx25.yaml", [f"out_dir={out}", "n=2", f"seed={seed}"], job="bon"), reward=build_reward(BRIGHTNESS))
    return [json.loads(line) for line in open(f"{out}/candidates.jsonl")]


@pytest.mark.slow  # three Best-of-N runs, a Flow-GRPO step and a DPO step of tiny-random:ltx2.5: `pytest -m slow`; 95 s of CPU (7.5 min wall on 2 cores shared at load 14)
def test_the_tiny_recipes_run_from_an_empty_folder_and_a_seed_names_each_video(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing here: the recipes' recipes/ paths resolve to the shipped files
    rows = _bon(0, "outputs/bon_tiny_ltx25")  # the recipe's own out_dir: where dpo_tiny_ltx25.yaml reads its pairs
    assert len(rows) == 4 and all(r["valid"] for r in rows)
    mp4 = tmp_path / "outputs/bon_tiny_ltx25" / rows[0]["video"]
    video = load_video(str(mp4))
    assert video.fps == 24.0 and video.frames.shape == (9, 64, 96, 3)  # the model's 24 fps
    with wave.open(str(mp4.with_suffix(".wav"))) as handle:  # its soundtrack beside it, at the 48 kHz of LTX-2.3's vocoder
        assert (handle.getnchannels(), handle.getframerate(), handle.getsampwidth()) == (2, 48000, 2) and handle.getnframes() > 0
    # the same seed twice: the same videos (the decoder's draws included)
    again = _bon(0, "again")
    assert [r["frames_sha256"] for r in again] == [r["frames_sha256"] for r in rows]
    # base seed 100 gives candidate seeds 100..103 (seed + prompt x n + candidate), none of the first run's 0..3: other videos
    other = _bon(100, "other")
    assert not {r["frames_sha256"] for r in other} & {r["frames_sha256"] for r in rows}

    from cac_align.gen.families.ltx2 import LTX25, VIDEO_BRANCH
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.flow_grpo import run as flow_grpo

    pipe = LTX25.build_tiny("tiny-random:ltx2.5")
    cheap = ["steps=1", "prompts_per_step=1", "group_size=2", "sample_batch_size=2", "generator.num_inference_steps=2", "eval_every=0",
             "checkpoint_every=0", "log_with=none"]
    flow_grpo(load_config(FlowGrpoConfig, RECIPES / "flow_grpo_tiny_ltx25.yaml", cheap, job="flow-grpo"), pipe=pipe, reward=build_reward(BRIGHTNESS))
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert lora and all(any(n.split(".lora_B")[0].endswith(m) for m in VIDEO_BRANCH) for n in lora)
    assert any(torch.count_nonzero(p) for p in lora.values())  # trained (B starts at 0)

    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.dpo import run as dpo

    dpo(load_config(DpoConfig, RECIPES / "dpo_tiny_ltx25.yaml", ["steps=1", "pairs_per_step=2", "log_with=none", "checkpoint_every=0"], job="dpo"))
    metrics = [json.loads(line) for line in (tmp_path / "outputs/dpo_tiny_ltx25/metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and np.isfinite(metrics[0]["train/loss"]) and metrics[0]["train/grad_norm"] > 0
