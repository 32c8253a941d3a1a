"""The shipped cac-demo model: loads by its built-in name and judges fresh synthetic videos.

The videos are rendered here from a seed that no training run and no benchmark uses (4242), so
the model has never seen them. The assertions are what the model card measures, with margins,
and no more: cac-demo flags the extra arm (Human Distortion) with a reward near 0 and boxes it,
flags some floating balls (Physical Violations: recall 0.50 on the default split), and calls
almost every clean video normal; on the other three types it mostly answers "normal"
(docs/cac_training.md, "The demo model"). A random model writes no readable answer and fails
every assertion below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cac_align.config import load_config
from cac_align.data.synthetic import NORMAL, SynthConfig, video_kinds, make_spec, planted_boxes, render
from cac_align.eval.metrics import auroc
from cac_align.models import builtin_path, model_settings
from cac_align.jobs.export import folder_size
from conftest import REPO_ROOT

SEED = 4242  # training streams use 999-3000, the benchmarks 5000-6000 and the README demo 7
ARM = "Human Distortion"
FLOAT = "Physical Violations"


@pytest.fixture(scope="module")
def scored():
    from cac_align.rewards.cac import CaCRewardConfig, build
    from cac_align.video import Video
    from cac_align.vlm.config import ModelConfig

    synth = load_config(SynthConfig, REPO_ROOT / "recipes/synth/default.yaml", ["out_dir=unused", "n=32", f"seed={SEED}", "normal_fraction=0.5"], job="synth")
    kinds = video_kinds(synth)
    specs = [make_spec(synth, i, kinds[i]) for i in range(synth.n)]
    videos = [Video(render(spec)[0], spec.fps) for spec in specs]
    # nothing but the name and the batch: the rest is the folder's cac_align.json
    reward = build(CaCRewardConfig(model=ModelConfig(name="cac-demo", device="cpu", max_batch_size=16)))
    assert reward.scorer.options.max_frames_turn2 == 8 and reward.scorer.options.max_new_tokens == 320
    assert next(reward.scorer.backend.model.parameters()).dtype == torch.float32
    return specs, reward(videos, [f"A ball rolls along the floor past a '{s.sign_word}' sign while a person walks by." for s in specs])


def test_the_shipped_folder_is_small_and_says_how_to_ask_it():
    path = builtin_path("cac-demo")
    assert (path / "config.json").is_file() and (path / "README.md").is_file()
    assert folder_size(path) < 25e6
    # how it was trained: wording, pixel grid, both turns' rates and caps (clips of at most 7 frames
    # in stage 2), stage 3's token budget and float32
    assert model_settings("cac-demo") == {"prompt_style": "compact", "max_pixels": 24576, "size_multiple": 64, "scan_fps": 4.0, "clip_fps": 8.0,
                                          "max_frames_turn1": 64, "max_frames_turn2": 8, "max_new_tokens": 320, "dtype": "float32"}
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl"  # the real transformers architecture


@pytest.mark.slow  # ~19 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_clean_videos_pass_and_extra_arms_and_floats_are_flagged(scored):
    """Measured on these 32 videos (2026-11-23): 15 of 16 clean videos normal (rewards 0.68-0.88,
    one false alarm at 0.00), 3 of 3 arms and 2 of 3 floats abnormal at 0.00; AUROC 0.94 for
    clean against arms, 0.81 against floats."""
    specs, out = scored
    kinds = np.array([s.kind for s in specs])
    normal, arm, float_ = kinds == NORMAL, kinds == ARM, kinds == FLOAT
    assert normal.sum() == 16 and arm.sum() >= 2 and float_.sum() >= 2
    assert out.valid.all()  # every video's status could be read, in both turns
    statuses = np.array([d["status"] for d in out.details])
    # reward = P(normal) / (P(normal) + P(abnormal)) (CaC Eq. 7)
    passed = (statuses[normal] == "normal") & (out.scores[normal] > 0.5)
    assert passed.sum() >= 14
    assert (statuses[arm] == "abnormal").all() and out.scores[arm].max() < 0.1
    assert (statuses[float_] == "abnormal").sum() >= 1 and out.scores[float_].min() < 0.1
    broken = arm | float_
    assert auroc(np.concatenate([out.scores[normal], out.scores[broken]]), [True] * normal.sum() + [False] * broken.sum()) > 0.8


@pytest.mark.slow  # with the test above (their shared fixture: 19 s) of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_turn2_boxes_land_on_the_extra_arm(scored):
    from cac_align.cac.schema import box_iou

    specs, out = scored
    ious = []
    for spec, details in zip(specs, out.details):
        if spec.kind != ARM:
            continue
        truth = planted_boxes(spec)  # pixels of the source frames
        for entry in details["boxes"]:
            frame = min(spec.num_frames - 1, int(np.floor(entry["time_s"] * spec.fps + 1e-6)))
            if frame in truth:
                gt = [1000 * truth[frame][0] / spec.width, 1000 * truth[frame][1] / spec.height,
                      1000 * truth[frame][2] / spec.width, 1000 * truth[frame][3] / spec.height]
                ious.append(max(box_iou(gt, b) for b in entry["boxes"]))
    assert len(ious) >= 4 and np.mean(ious) > 0.5
