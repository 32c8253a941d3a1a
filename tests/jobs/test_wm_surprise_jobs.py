"""``wm_surprise``'s evidence in the jobs that localize: flow-grpo's localized credit weights the window
whose surprise stands out (a combined reward of a toy video reward and wm_surprise, on the tiny Wan), and
``repair`` regenerates that window (tiny VACE). The tiny V-JEPA 2 is random, so its curve is scripted
(the model's own numbers are tests/rewards/test_wm_surprise.py's): a peak at a known window, whose seconds
and latent frames are worked out by hand below."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT

from cac_align.config import load_config
from cac_align.rewards import columns, wm_surprise

TINY_WM = {"name": "wm_surprise", "model": "tiny-random:vjepa2", "device": "cpu", "window": 4, "context": 2}


def _peak_at(index: int, low: float = 0.3, high: float = 0.9):
    """A scripted window_surprises: ``low`` everywhere but ``high`` at window ``index``."""

    def curve(model, clip, starts, *args, **kwargs):
        return [high if i == index else low for i in range(len(starts))]

    return curve


def test_localized_credit_weights_the_window_where_the_world_model_is_surprised(tmp_path, monkeypatch):
    """9 frames at 16 fps, windows of 4 every 1: 6 windows; the peak at window 3 predicts frames 5-6,
    [5/16, 7/16) s. Wan's latent frames: 0 is frame 0, 1 is frames 1-4, 2 is frames 5-8: the window is
    latent frame 2, all 64 of its positions at 192 / 64 = 3, the other two frames 0."""
    from cac_align.gen.families.wan import build_tiny_wan_pipeline
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

    monkeypatch.setattr(wm_surprise, "window_surprises", _peak_at(3))
    config = load_config(FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_localized.yaml",
                         [f"out_dir={tmp_path / 'run'}", "steps=1", "advantage.localize.source=wm_surprise"], job="flow-grpo")
    config.reward = {"name": "combined", "components": [{"name": "brightness", "weight": 1.0}, {**TINY_WM, "stride": 1, "weight": 1.0}]}
    seen = []
    original = columns.credit_maps
    monkeypatch.setattr(columns, "credit_maps", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    run(config, pipe=build_tiny_wan_pipeline(seed=0))
    (maps,) = seen
    assert maps.localized.any() and not maps.missing.any()
    localized = maps.maps[maps.localized]
    assert localized.shape[1:] == (3, 8, 8) and (localized[:, 2] == 3).all() and (localized[:, :2] == 0).all()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["reward/valid_fraction"] == 1.0 and row["localize/evidence_missing"] == 0


def test_repair_regenerates_the_window_where_the_world_model_is_surprised(tmp_path, monkeypatch):
    """16 frames at 8 fps, windows of 4 every 2: 7 windows; the peak at window 2 predicts frames 6-7,
    [0.75, 1.0) s, widened by context_s 0.125 to frames 5-8. The repaired video's curve is flat and lower
    (a better score): the first repair is kept."""
    import numpy as np
    from conftest import smooth_video

    from cac_align.gen.families.vace import build_tiny_vace_pipeline
    from cac_align.jobs.repair import RepairConfig, run
    from cac_align.video import Video, load_video, save_video

    calls = []

    def scripted(model, clip, starts, *args, **kwargs):
        calls.append(len(starts))
        return _peak_at(2)(model, clip, starts) if len(calls) == 1 else [0.2] * len(starts)

    monkeypatch.setattr(wm_surprise, "window_surprises", scripted)
    folder = tmp_path / "in"
    folder.mkdir()
    frames = smooth_video(16, 64, 96, seed=0)
    save_video(Video(frames, 8.0), folder / "v0.mp4", lossless=True)
    (folder / "prompts.txt").write_text("v0\ta ball rolls\n")
    config = load_config(RepairConfig, REPO_ROOT / "recipes/align/repair_tiny.yaml",
                         [f"out_dir={tmp_path / 'out'}", f"videos={folder}", f"prompts={folder / 'prompts.txt'}", "synth_videos=0",
                          "regenerator.num_inference_steps=2"], job="repair")
    config.reward = {**TINY_WM, "stride": 2}
    (row,) = run(config, pipe=build_tiny_vace_pipeline())
    assert row["before"]["status"] == "abnormal" and row["accepted"] and len(row["attempts"]) == 1 and calls == [7, 7]
    assert row["mask"]["frames"] == [5, 6, 7, 8]
    repaired = np.asarray(load_video(row["output"]).frames)
    assert np.array_equal(repaired[:5], frames[:5]) and np.array_equal(repaired[9:], frames[9:])  # whole frames outside the window kept
    assert not np.array_equal(repaired[5:9], frames[5:9])


def test_the_tiny_score_recipe_scores_every_video_with_its_windows(tmp_path):
    from cac_align.cli import main

    out = tmp_path / "score"
    assert main(["score", "--config", str(REPO_ROOT / "recipes/score/wm_surprise_tiny.yaml"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["valid"] and r["reward"] == "wm_surprise" for r in rows)
    for row in rows:  # 1 - the mean of its windows' surprises, each window's seconds those of its predicted frame
        windows = row["details"]["windows"]
        assert len(windows) >= 3 and row["score"] == pytest.approx(1 - sum(w["surprise"] for w in windows) / len(windows), abs=1e-7)
        assert all(b - a > 0 for a, b in (w["window_s"] for w in windows))
