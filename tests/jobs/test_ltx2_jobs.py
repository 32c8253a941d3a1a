"""LTX-2 in every generator job, offline, from the shipped tiny recipes (tiny-random:ltx2: diffusers'
own LTX2Pipeline classes at toy size): Best-of-N writes each candidate with its soundtrack,
Flow-GRPO trains a LoRA on the video branch (the audio on the deterministic path) and resumes
exactly, repair regenerates the judged window's whole frames through LTX2ConditionPipeline, and
DPO trains on those repairs on LTX-2's latent grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cac_align.config import load_config
from cac_align.gen.generator import LORA_WEIGHT_NAME, GeneratorConfig, build_generator, generate_videos
from cac_align.gen.families.ltx2 import LTX2, VIDEO_BRANCH
from cac_align.gen.families.ltx2_repair import SegmentLayout, segment_layout
from cac_align.jobs.best_of_n import BonConfig, frames_sha256
from cac_align.rewards.registry import build_reward
from cac_align.video import load_video
import forked_launch
from conftest import REPO_ROOT, free_port

RECIPES = REPO_ROOT / "recipes/align"
BRIGHTNESS = {"name": "brightness"}  # a cheap judge: these tests are about the generator
UNGUIDED = ["generator.guidance_scale=1.0", "generator.stg_scale=0.0", "generator.modality_scale=1.0", "generator.guidance_rescale=0.0",
            "generator.audio_guidance_scale=1.0"]


def _streams(path) -> str:
    """What ffmpeg says the file's streams are."""
    import imageio_ffmpeg

    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return "\n".join(line for line in done.stderr.splitlines() if "Stream" in line)


def test_best_of_n_writes_each_candidate_with_its_soundtrack(tmp_path):
    from cac_align.jobs.best_of_n import run

    config = load_config(BonConfig, RECIPES / "bon_tiny_ltx2.yaml", [f"out_dir={tmp_path / 'run'}", "n=2"], job="bon")
    run(config, reward=build_reward(BRIGHTNESS))
    rows = [json.loads(line) for line in (tmp_path / "run/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["valid"] for r in rows)
    mp4 = tmp_path / "run" / rows[0]["video"]
    streams = _streams(mp4)
    assert "Video: h264" in streams and "Audio: aac" in streams and "24000 Hz" in streams and "24 fps" in streams
    video = load_video(str(mp4))  # the judges read the frames, at the model's 24 fps
    assert video.fps == 24.0 and video.frames.shape == (9, 64, 64, 3)
    # each candidate is the pipeline's own video and soundtrack for its seed (the first prompt's two, as batched)
    made = generate_videos(build_generator(config.generator), config.generator, [rows[0]["prompt"]] * 2, [rows[0]["seed"], rows[1]["seed"]])
    assert [frames_sha256(v) for v in made.frames] == [rows[0]["frames_sha256"], rows[1]["frames_sha256"]]
    with wave.open(str(mp4.with_suffix(".wav"))) as handle:  # beside the mp4, 16-bit: the soundtrack losslessly
        assert (handle.getnchannels(), handle.getframerate(), handle.getsampwidth()) == (2, 24000, 2)
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").reshape(-1, 2).T / 32767.0
    assert made.audio.shape == (2, 2, 7920)  # 9 frames at 24 fps: 9 audio tokens -> 33 mel frames x 240 samples
    np.testing.assert_allclose(pcm, made.audio[0], rtol=0, atol=1.0 / 32767)
    chosen = [r for r in rows if r["chosen"]]
    assert all((tmp_path / "run/chosen" / f"{r['prompt_index']:05d}_{name}.wav").is_file() for r, name in
               zip(chosen, ("a-cat-walking-in-the-park", "a-person-holding-a-red-cup")))


def _flow(out, *overrides):
    from cac_align.jobs.flow_grpo import FlowGrpoConfig

    cheap = ["prompts_per_step=1", "group_size=2", "sample_batch_size=2", "generator.num_inference_steps=2", "eval_every=0", "eval_at_start=false", "log_with=none",
             *UNGUIDED]  # the guided velocity is tests/gen/test_ltx2.py's: here, one forward a step
    return load_config(FlowGrpoConfig, RECIPES / "flow_grpo_tiny_ltx2.yaml", [f"out_dir={out}", *cheap, *overrides], job="flow-grpo")


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_flow_grpo_trains_the_video_branch_and_its_lora_loads(tmp_path):
    from cac_align.jobs.flow_grpo import run

    pipe = LTX2.build_tiny("tiny-random:ltx2")
    base = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    out = tmp_path / "run"
    run(_flow(out, "steps=2", "checkpoint_every=0", "eval_prompts=recipes/align/prompts_tiny.txt", "eval_videos=1"), pipe=pipe,
        reward=build_reward(BRIGHTNESS))
    rows = _metrics(out)
    assert [r["train/timesteps"] for r in rows] == [2, 2] and all(r["train/grad_norm"] > 0 for r in rows)
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert lora and all(any(n.split(".lora_B")[0].endswith(m) for m in VIDEO_BRANCH) for n in lora)  # the video branch alone
    assert any(torch.count_nonzero(p) for p in lora.values())  # trained (B starts at 0)
    after = {n.replace(".base_layer", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" not in n}
    assert set(after) == set(base) and all(torch.equal(after[n], base[n]) for n in base)  # every base weight, audio's included, as it was
    (eval_video,) = (out / "eval/step_000002").glob("*.mp4")  # the held-out video with its soundtrack
    assert "Audio: aac" in _streams(eval_video)
    # the LoRA written is diffusers' file for LTX2Pipeline: it loads where a generator's LoRA goes, and changes the video
    settings = dict(name="tiny-random:ltx2", dtype="float32", device="cpu", height=64, width=64, num_frames=9, num_inference_steps=2,
                    stg_blocks=[1], max_sequence_length=32)
    loaded = build_generator(GeneratorConfig(**settings, lora=str(out / "lora")))
    assert {n for n, _ in loaded.transformer.named_parameters() if "lora_B" in n} == set(lora)
    plain = GeneratorConfig(**settings)
    with_lora = generate_videos(loaded, plain, ["a red ball"], [3]).frames
    without = generate_videos(build_generator(plain), plain, ["a red ball"], [3]).frames
    assert with_lora.shape == without.shape and not np.array_equal(with_lora, without)


@pytest.mark.slow  # three runs: `pytest -m slow` (.ci/run runs it after the default suite)
def test_flow_grpo_resumes_exactly(tmp_path):
    from cac_align.jobs.flow_grpo import run

    reward = build_reward(BRIGHTNESS)
    run(_flow(tmp_path / "straight", "steps=3", "checkpoint_every=2"), reward=reward)
    run(_flow(tmp_path / "resumed", "steps=2", "checkpoint_every=2"), reward=reward)
    run(_flow(tmp_path / "resumed", "steps=3", "checkpoint_every=2", "resume=true"), reward=reward)
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    keys = [k for k in straight[-1] if k.startswith(("train/", "reward/"))]
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    assert (tmp_path / "straight/lora" / LORA_WEIGHT_NAME).read_bytes() == (tmp_path / "resumed/lora" / LORA_WEIGHT_NAME).read_bytes()


@pytest.mark.slow  # two processes: `pytest -m slow` (.ci/run runs it after the default suite)
def test_two_processes_train_as_one(tmp_path):
    """One step on two gloo processes (`accelerate launch`) against one process: both ranks hold the
    LoRA one process trains, and log the same reward and loss."""
    from cac_align.jobs.flow_grpo import run

    recipe = RECIPES / "flow_grpo_tiny_ltx2.yaml"
    pipe = LTX2.build_tiny("tiny-random:ltx2")
    run(load_config(type(_flow(tmp_path)), recipe, [f"out_dir={tmp_path / 'one'}", "steps=1", "log_with=none", "eval_every=0", "eval_at_start=false",
                                                           "checkpoint_every=0"],
                    job="flow-grpo"), pipe=pipe)
    one = {n: p.detach() for n, p in LTX2.denoiser(pipe).named_parameters() if p.requires_grad}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(REPO_ROOT / "tests/generator_two_process.py"), str(recipe), str(tmp_path / "two")]
    done = forked_launch.accelerate_launch(command, env=env, cwd=REPO_ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "two/world.json").read_text()) == {"num_processes": 2}
    rank0, rank1 = (load_file(str(tmp_path / f"two/rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1) == set(one) and all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    for name, value in one.items():  # as for Wan: 1e-5 is a hundredth of a wrong update's error at lr 1e-3
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5)
    (row_two,), (row_one,) = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    for key in ("reward/mean", "train/kl"):
        assert row_two[key] == pytest.approx(row_one[key], rel=1e-4, abs=1e-9), key


# ---------------------------------------------------------------------------------------
# Repair through LTX2ConditionPipeline, then DPO on its pairs
# ---------------------------------------------------------------------------------------
def test_the_segment_around_a_window_by_hand():
    # frames 3..8 of 33, up to 2 kept frames a side: the clip before is frame 2 alone (the longest 8a + 1 run within 2
    # frames), at latent index 0, so the segment starts at input frame 2; the 6 window frames fill latent 1 (segment
    # frames 1..8: input 3..10); the keyframe is input frame 11 (segment frame 9, the first of latent 2) appended at
    # index 2 over a tail of one latent (8 frames): 1 + 8 + 8 = 17 generated, 1 appended
    assert segment_layout(3, 8, 33, 2) == SegmentLayout(2, 17, ((2, 1, 0), (11, 1, 2)), 1)
    # 121 frames at 24 fps, a 1 s window widened by 0.25 s a side (frames 42..77: 36), 0.5 s (12 frames) to condition:
    # before, frames 33..41 (9 = 8 + 1 <= 12) at index 0; the window, 5 latents (40 frames: 42..81); after, frames
    # 82..90 (9) at index 1 + 1 + 5 = 7 over a 2-latent tail (16): 9 + 40 + 16 = 65 generated, 9 appended
    assert segment_layout(42, 77, 121, 12) == SegmentLayout(33, 65, ((33, 9, 0), (82, 9, 7)), 9)
    # no frame before: the window starts at latent 0 (1 frame) and takes latent 1 (frames 1..8), keyframe frame 9
    assert segment_layout(0, 4, 33, 2) == SegmentLayout(0, 17, ((9, 1, 2),), 1)
    # no frame after the window's latents: no keyframe, no tail
    assert segment_layout(24, 32, 33, 2) == SegmentLayout(23, 17, ((23, 1, 0),), 0)
    # nothing to condition on (condition_s 0): the window alone, from latent 0
    assert segment_layout(3, 8, 33, 0) == SegmentLayout(3, 9, (), 0)
    with pytest.raises(ValueError, match="first <= last < total"):
        segment_layout(8, 3, 33, 2)


class _Recording:
    """The tiny condition pipeline, recording what each call was given."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


@pytest.fixture(scope="module")
def repaired(tmp_path_factory):
    from cac_align.jobs.repair import RepairConfig, run

    out = tmp_path_factory.mktemp("repair") / "run"
    config = load_config(RepairConfig, RECIPES / "repair_tiny_ltx2.yaml", [f"out_dir={out}", "synth_videos=4", "attempts=2"], job="repair")
    pipe = _Recording(config.regenerator.family.build_tiny(config.regenerator.name))
    run(config, pipe=pipe)
    return out, pipe.calls


def test_repair_regenerates_a_segment_and_keeps_every_frame_outside_the_window(repaired):
    out, calls = repaired
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and any(r["accepted"] for r in rows)
    tried = [r for r in rows if r["attempts"]]
    assert tried and len(calls) == sum(len(r["attempts"]) for r in rows)
    for row in tried:
        # spot_brightness's window [0.5, 1.0) s widened by context_s 0.125 at 8 fps: frames 3..8, whole (LTX-2 keeps no pixels inside a frame)
        assert row["mask"]["frames"] == [3, 4, 5, 6, 7, 8] and row["mask"]["boxes"] == [] and row["mask"]["window_s"] == [0.5, 1.0]
        # the segment over input frames 2..18 (test_the_segment_around_a_window_by_hand), 17 generated + 1 appended a try, at 2 steps
        assert row["mask"]["segment"] == [2, 19] and row["frame_steps"] == len(row["attempts"]) * 18 * 2
    for call in calls:  # what the pipeline was given: the 17-frame segment, input frame 2 at index 0, input frame 11 at index 2
        assert call["num_frames"] == 17 and [(c.index, len(c.frames)) for c in call["conditions"]] == [(0, 1), (2, 1)]
    for row in rows:
        if not row["accepted"]:
            continue
        before, after = np.asarray(load_video(row["video"]).frames), np.asarray(load_video(row["output"]).frames)
        assert before.shape == after.shape and len(before) == 33
        kept = [f for f in range(33) if f not in row["mask"]["frames"]]
        assert np.array_equal(before[kept], after[kept])  # every pixel outside the window is the input's, exactly (lossless)
        assert not np.array_equal(before[3:9], after[3:9])  # the window is new
        conditioned = [[np.asarray(c.frames)[0] for c in call["conditions"]] for call in calls]
        assert any(np.array_equal(first, before[2]) and np.array_equal(last, before[11]) for first, last in conditioned)  # the input's own frames


def test_repair_costs_less_than_best_of_n(repaired):
    out, _ = repaired
    summary = json.loads((out / "summary.json").read_text())
    # per try: repair 18 frames (17 generated + 1 keyframe) x 2 steps; Best-of-N a whole 33-frame video x 2 steps
    assert summary["best_of_n_frame_steps"] == summary["attempts"] * 33 * 2
    assert summary["frame_steps"] == summary["attempts"] * 18 * 2
    assert summary["frame_steps_vs_best_of_n"] == pytest.approx(18 / 33) and summary["frame_steps_vs_best_of_n"] < 1.0


def test_dpo_trains_the_video_branch_on_ltx2s_grid(repaired, tmp_path):
    from cac_align.jobs.dpo import DpoConfig, run

    config = load_config(DpoConfig, RECIPES / "dpo_tiny_ltx2.yaml", [f"out_dir={tmp_path / 'run'}", f"pairs=[{repaired[0]}]", "log_with=none", "steps=2",
                                                                     "pairs_per_step=2", "checkpoint_every=0"], job="dpo")
    pipe = LTX2.build_tiny("tiny-random:ltx2")
    run(config, pipe=pipe)
    cached = load_file(str(tmp_path / "run/latents/pair_00000.safetensors"))
    assert cached["winner"].shape == cached["loser"].shape == (8, 5, 2, 3)  # 33 x 64 x 96 through LTX-2's VAE (8x, 32x)
    expected = torch.zeros(5, 2, 3)
    expected[1] = 1.0  # frames 3..8 lie in latent frame 1 (pixel frames 1..8), whole frames
    assert torch.equal(cached["mask"], expected)
    assert {"embeds", "audio_embeds", "attention_mask"} <= set(cached)  # the prompt's two contexts and their mask
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(r["train/loss"]) for r in rows) and rows[-1]["train/grad_norm"] > 0
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert lora and any(torch.count_nonzero(p) for p in lora.values())
    assert all(any(n.split(".lora_B")[0].endswith(m) for m in VIDEO_BRANCH) for n in lora)
    loaded = build_generator(GeneratorConfig(name="tiny-random:ltx2", dtype="float32", device="cpu", height=64, width=96, num_frames=17,
                                             lora=str(tmp_path / "run/lora")))
    assert any("lora_B" in n for n, _ in loaded.transformer.named_parameters())


def test_dpo_resumes_exactly(repaired, tmp_path):
    """2 steps straight == 1 step, then resume=true to 2: the LoRA file and the logged losses."""
    from cac_align.jobs.dpo import DpoConfig, run

    def config(out, *overrides):
        return load_config(DpoConfig, RECIPES / "dpo_tiny_ltx2.yaml", [f"out_dir={out}", f"pairs=[{repaired[0]}]", "log_with=none", "pairs_per_step=2",
                                                                      "checkpoint_every=1", *overrides], job="dpo")

    run(config(tmp_path / "straight", "steps=2"))
    run(config(tmp_path / "resumed", "steps=1"))
    run(config(tmp_path / "resumed", "steps=2", "resume=true"))
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2] and [r["train/loss"] for r in resumed] == [r["train/loss"] for r in straight]
    assert (tmp_path / "straight/lora" / LORA_WEIGHT_NAME).read_bytes() == (tmp_path / "resumed/lora" / LORA_WEIGHT_NAME).read_bytes()
