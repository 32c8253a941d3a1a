"""Wan2.2 in the generator jobs, offline on the tiny pipelines of its two layouts
(tiny-random:wan22-ti2v, tiny-random:wan22-a14b): found by name or from a saved folder, sampled
with the model's own settings (cac_align.gen.family), Best-of-N from the shipped tiny recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cac_align.cli import main
from cac_align.config import RecipeError, load_config
from cac_align.gen.family import family_of
from cac_align.gen.families.wan import build_tiny_wan22_a14b_pipeline, build_tiny_wan22_ti2v_pipeline
from cac_align.gen.generator import GeneratorConfig, build_generator, generate_videos
from cac_align.jobs.best_of_n import BonConfig, frames_sha256
from cac_align.video import load_video
import forked_launch
from conftest import REPO_ROOT, free_port

BUILDERS = {"ti2v": build_tiny_wan22_ti2v_pipeline, "a14b": build_tiny_wan22_a14b_pipeline}


def test_a_generators_unset_settings_are_its_models_own():
    # the release's settings (Wan2.2 wan/configs/wan_ti2v_5B.py, wan_t2v_A14B.py), Wan-2.1's as before
    ti2v = GeneratorConfig(name="Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    assert (ti2v.height, ti2v.width, ti2v.num_frames, ti2v.fps, ti2v.num_inference_steps, ti2v.guidance_scale, ti2v.flow_shift) == (704, 1280, 121, 24.0, 50, 5.0, 5.0)
    a14b = GeneratorConfig(name="Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    assert (a14b.height, a14b.width, a14b.num_frames, a14b.fps, a14b.num_inference_steps) == (720, 1280, 81, 16.0, 40)
    assert (a14b.guidance_scale, a14b.guidance_scale_2, a14b.flow_shift) == (4.0, 3.0, 12.0)
    wan21 = GeneratorConfig()
    assert (wan21.height, wan21.width, wan21.num_frames, wan21.fps, wan21.guidance_scale, wan21.flow_shift) == (480, 832, 81, 16.0, 5.0, None)
    assert GeneratorConfig(name="Wan-AI/Wan2.2-TI2V-5B-Diffusers", fps=30.0, height=480, width=832 // 32 * 32).fps == 30.0  # set: yours
    # a recipe section naming Wan2.2 gets Wan2.2's settings, not the job default's Wan-2.1
    config = load_config(BonConfig, None, ["out_dir=x", "prompts=p.txt", "generator.name=Wan-AI/Wan2.2-TI2V-5B-Diffusers"], job="bon")
    assert (config.generator.height, config.generator.width, config.generator.fps) == (704, 1280, 24.0)
    with pytest.raises(ValueError, match="multiples of 32"):
        GeneratorConfig(name="tiny-random:wan22-ti2v", height=48, width=48)  # 16x VAE x 2x2 patches
    with pytest.raises(ValueError, match="guidance_scale_2 is the second expert's scale"):
        GeneratorConfig(name="tiny-random:wan22-ti2v", guidance_scale_2=3.0)


@pytest.mark.parametrize("layout", list(BUILDERS))
def test_a_saved_wan22_loads_by_path_as_its_family_and_samples_alike(layout, tmp_path):
    pipe = BUILDERS[layout](seed=0)
    pipe.save_pretrained(str(tmp_path / "model"))
    assert family_of(str(tmp_path / "model")).name == f"wan2.2-{layout}"  # from its model_index.json
    side = 64 if layout == "ti2v" else 32
    common = dict(dtype="float32", vae_dtype="float32", device="cpu", height=side, width=side, num_frames=9, num_inference_steps=3, negative_prompt="")
    loaded = build_generator(GeneratorConfig(name=str(tmp_path / "model"), **common))
    assert (loaded.transformer_2 is not None) == (layout == "a14b") and loaded.config.expand_timesteps == (layout == "ti2v")
    config = GeneratorConfig(name=f"tiny-random:wan22-{layout}", **common)
    saved = generate_videos(loaded, GeneratorConfig(name=str(tmp_path / "model"), **common), ["a red ball"], [3]).frames
    built = generate_videos(build_generator(config), config, ["a red ball"], [3]).frames
    assert saved.shape == (1, 9, side, side, 3) and np.array_equal(saved, built)


@pytest.mark.parametrize("layout", list(BUILDERS))
def test_best_of_n_on_the_tiny_wan22_recipe(layout, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = REPO_ROOT / f"recipes/align/bon_tiny_wan22_{layout}.yaml"
    assert main(["bon", "--config", str(recipe), "--out", "run"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["valid"] for r in rows) and sum(r["chosen"] for r in rows) == 2
    video = load_video(str(tmp_path / "run" / rows[0]["video"]))
    # written at the model's own fps (the TI2V-5B's 24; the A14B's 16), which the rewards read
    assert video.fps == (24.0 if layout == "ti2v" else 16.0) and video.frames.shape[0] == 9
    # each candidate is the pipeline's own video for its seed (the A14B: both experts, their two scales)
    config = load_config(BonConfig, recipe, ["out_dir=x"], job="bon").generator
    pair = generate_videos(build_generator(config), config, [rows[0]["prompt"]] * 2, [rows[0]["seed"], rows[1]["seed"]]).frames  # as batched
    assert [frames_sha256(v) for v in pair] == [rows[0]["frames_sha256"], rows[1]["frames_sha256"]]  # the frames before H.264


# ---------------------------------------------------------------------------------------
# Flow-GRPO on the tiny Wan2.2 recipes
# ---------------------------------------------------------------------------------------
def _flow(layout: str, out, *overrides):
    from cac_align.jobs.flow_grpo import FlowGrpoConfig

    recipe = REPO_ROOT / f"recipes/align/flow_grpo_tiny_wan22_{layout}.yaml"
    return load_config(FlowGrpoConfig, recipe, [f"out_dir={out}", "log_with=none", "eval_every=0", "eval_at_start=false", *overrides],
                       job="flow-grpo")


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(module):
    """The base weights by their names before a LoRA wrapped their layers (peft's ``base_layer``)."""
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in module.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("layout, experts, trained_steps", [
    ("ti2v", "high", 4),  # one transformer: every step (per-token timesteps)
    # one expert alone: ~4 s each of the default suite (2026-11-26), in the slow suite (.ci/run runs it)
    pytest.param("a14b", "high", 2, marks=pytest.mark.slow),  # the high-noise expert's steps: t = 1000, 960.7 >= 875 (shift 12, 4 steps)
    pytest.param("a14b", "low", 2, marks=pytest.mark.slow),   # the low-noise expert's: t = 861.4, 126.0
    ("a14b", "both", 4),
])
def test_flow_grpo_trains_the_adapted_experts_only(layout, experts, trained_steps, tmp_path):
    from cac_align.gen.generator import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2
    from cac_align.jobs.flow_grpo import run

    pipe = BUILDERS[layout](seed=0)
    base = {name: _weights(expert) for name, expert in (("high", pipe.transformer), ("low", getattr(pipe, "transformer_2", None))) if expert is not None}
    out = tmp_path / "run"
    run(_flow(layout, out, "steps=2", "checkpoint_every=0", f"lora.experts={experts}"), pipe=pipe)
    rows = _metrics(out)
    assert [r["train/timesteps"] for r in rows] == [trained_steps] * 2 and all(r["train/grad_norm"] > 0 for r in rows)
    adapted = {"high": {"high"}, "low": {"low"}, "both": {"high", "low"}}[experts]
    for name, expert in (("high", pipe.transformer), ("low", getattr(pipe, "transformer_2", None))):
        if expert is None:
            continue
        lora = {n: p for n, p in expert.named_parameters() if "lora_B" in n}
        if name in adapted:  # its LoRA trained (B starts at 0), its base weights frozen
            assert lora and any(int(torch.count_nonzero(p)) for p in lora.values()), name
        else:  # no LoRA at all: the expert is bit for bit the base model
            assert not lora, name
        after = _weights(expert)
        assert set(after) == set(base[name]) and all(torch.equal(after[n], base[name][n]) for n in base[name]), name
    files = sorted(p.name for p in (out / "lora").iterdir() if p.suffix == ".safetensors")
    assert files == sorted({"high": [LORA_WEIGHT_NAME], "low": [LORA_WEIGHT_NAME_2], "both": [LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2]}[experts])
    # the LoRA loads where a generator's LoRA goes, into the experts it was trained on
    side = 64 if layout == "ti2v" else 32
    loaded = build_generator(GeneratorConfig(name=f"tiny-random:wan22-{layout}", dtype="float32", device="cpu", height=side, width=side,
                                             num_frames=9, num_inference_steps=4, lora=str(out / "lora")))
    for name, expert in (("high", loaded.transformer), ("low", getattr(loaded, "transformer_2", None))):
        if expert is not None:
            assert any("lora" in n for n, _ in expert.named_parameters()) == (name in adapted), name


def test_a_one_transformer_model_refuses_a_second_experts_lora(tmp_path):
    from cac_align.jobs.flow_grpo import run

    with pytest.raises(RecipeError, match="lora.experts='low': this generator has one transformer"):
        run(_flow("ti2v", tmp_path / "run", "steps=1", "lora.experts=low"))


@pytest.mark.slow  # ~24 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
@pytest.mark.parametrize("layout", list(BUILDERS))
def test_flow_grpo_resumes_exactly(layout, tmp_path):
    """2 steps, then resume=true to 3 == a straight 3-step run: the LoRA files and every logged
    training number, as for Wan-2.1."""
    from cac_align.jobs.flow_grpo import run

    run(_flow(layout, tmp_path / "straight", "steps=3", "checkpoint_every=2"))
    run(_flow(layout, tmp_path / "resumed", "steps=2", "checkpoint_every=2"))
    run(_flow(layout, tmp_path / "resumed", "steps=3", "checkpoint_every=2", "resume=true"))
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    keys = [k for k in straight[-1] if k.startswith(("train/", "reward/"))]
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    for name in (p.name for p in (tmp_path / "straight/lora").iterdir() if p.suffix == ".safetensors"):
        assert (tmp_path / "straight/lora" / name).read_bytes() == (tmp_path / "resumed/lora" / name).read_bytes()


@pytest.mark.slow  # two processes: `pytest -m slow` (.ci/run runs it after the default suite)
@pytest.mark.parametrize("layout, experts", [("ti2v", "high"), ("a14b", "both")])
def test_two_processes_train_as_one(layout, experts, tmp_path):
    """One step on two gloo processes (`accelerate launch`): both ranks hold the LoRA one process
    trains, and log its losses. The A14B with a LoRA on both experts: each backward runs through
    one expert, so the other's LoRA is an unused parameter in it (DDP's find_unused_parameters)."""
    import os
    import sys

    from safetensors.torch import load_file

    from cac_align.jobs.flow_grpo import run

    pipe = BUILDERS[layout](seed=0)
    run(_flow(layout, tmp_path / "one", "steps=1", "checkpoint_every=0", f"lora.experts={experts}"), pipe=pipe)
    experts_of = [("transformer", pipe.transformer), ("transformer_2", getattr(pipe, "transformer_2", None))]
    one = {f"{name}.{n}": p.detach() for name, e in experts_of if e is not None for n, p in e.named_parameters() if p.requires_grad}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(REPO_ROOT / "tests/generator_two_process.py"), str(REPO_ROOT / f"recipes/align/flow_grpo_tiny_wan22_{layout}.yaml"),
               str(tmp_path / "two"), f"lora.experts={experts}"]
    done = forked_launch.accelerate_launch(command, env=env, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "two/world.json").read_text()) == {"num_processes": 2}
    rank0, rank1 = (load_file(str(tmp_path / f"two/rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1) == set(one) and all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    trained = {n.split(".")[0] for n, v in rank0.items() if "lora_B" in n and torch.count_nonzero(v)}
    assert trained == ({"transformer", "transformer_2"} if experts == "both" else {"transformer"})
    # Adam's first update is about lr * g / (|g| + eps) per weight (lr 1e-3): a weight whose
    # gradient is near eps moves by an amount the split's rounding changes; 1e-5 is 1% of a step,
    # a hundredth of what a wrong update would be off by
    for name, value in one.items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5)
    (row_two,), (row_one,) = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert row_two["train/timesteps"] == row_one["train/timesteps"]
    for key in ("reward/mean", "train/kl"):
        assert row_two[key] == pytest.approx(row_one[key], rel=1e-4, abs=1e-9), key
    assert row_two["train/grad_norm"] == pytest.approx(row_one["train/grad_norm"], rel=1e-3)


# ---------------------------------------------------------------------------------------
# Localized credit on the TI2V-5B's latent grid (4 x 16 x 16 compression)
# ---------------------------------------------------------------------------------------
def test_the_localized_map_on_the_ti2v_grid_by_hand():
    from cac_align.rl.credit import latent_coverage
    from cac_align.regions import Evidence, region_from_evidence

    pipe = build_tiny_wan22_ti2v_pipeline(seed=0)
    grid = dict(temporal=pipe.vae_scale_factor_temporal, spatial=pipe.vae_scale_factor_spatial, patch=tuple(pipe.transformer.config.patch_size))
    assert grid == {"temporal": 4, "spatial": 16, "patch": (1, 2, 2)}  # the 5B's VAE and patches, read off the pipeline
    # the 5B's own video (121 frames at 24 fps, 704 x 1280), window [1.0, 2.0) s, box [0, 0, 500, 500]
    region = region_from_evidence(Evidence((1.0, 2.0), ((1.5, ((0.0, 0.0, 500.0, 500.0),)),)), num_frames=121, fps=24.0, height=704, width=1280)
    cover = latent_coverage(region, **grid)
    # (121 - 1) / 4 + 1 = 31 latent frames of 704 / 16 = 44 x 1280 / 16 = 80
    assert cover.shape == (31, 44, 80)
    # frame i at i / 24 s: [1.0, 2.0) is frames 24 .. 47; latent k >= 1 holds frames 4k - 3 .. 4k:
    # k = 6 (21 .. 24) through k = 12 (45 .. 48)
    assert np.flatnonzero(cover.any(axis=(1, 2))).tolist() == list(range(6, 13))
    # the box: y 0 .. 352 px -> latent rows 0 .. 21 (352 / 16 = 22, whole 2 x 2 patches);
    # x 0 .. 640 px -> latent columns 0 .. 39 (640 / 16 = 40)
    assert np.flatnonzero(cover[8].any(axis=1)).tolist() == list(range(22))
    assert np.flatnonzero(cover[8].any(axis=0)).tolist() == list(range(40))
    assert cover.sum() == 7 * 22 * 40


def test_localized_flow_grpo_on_the_ti2v_grid(tmp_path):
    """The tiny localized recipe's toy defect (spot_brightness: the top-left quarter during
    [0.25, 0.5) s) on tiny-random:wan22-ti2v: the maps are on its grid, 3 x 4 x 4 for 9 frames of
    64 x 64 (16x), and cover the quarter's 2 x 2 latents of the frames the window touches."""
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
    from cac_align.rewards import columns

    seen = []
    original = columns.credit_maps

    def recording(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    config = load_config(FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_localized.yaml",
                         [f"out_dir={tmp_path / 'run'}", "steps=1", "log_with=none", "checkpoint_every=0", "generator.name=tiny-random:wan22-ti2v",
                          "generator.fps=16"], job="flow-grpo")
    columns.credit_maps = recording
    try:
        run(config)
    finally:
        columns.credit_maps = original
    (maps,) = seen
    located = [m for m, ok in zip(maps.maps, maps.localized) if ok]
    assert located and all(m.shape == (3, 4, 4) for m in maps.maps)
    # window [0.25, 0.5) s at 16 fps: frames 4 .. 7 -> latent frames 1 (1 .. 4) and 2 (5 .. 8);
    # the quarter (32 x 32 px of 64 x 64) -> latents rows 0 .. 1, columns 0 .. 1
    expected = np.zeros((3, 4, 4), dtype=bool)
    expected[1:3, 0:2, 0:2] = True
    assert all(np.array_equal(m > 0, expected) for m in located)
