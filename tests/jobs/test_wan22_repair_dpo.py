"""Wan2.2 in `cac-align repair` and `cac-align dpo`, offline on the tiny pipelines: the two-expert
VACE (tiny-random:wan22-vace-a14b, the Wan2.2-VACE-Fun-A14B's layout) repairs from its shipped tiny
recipe with each expert serving its own steps; dpo trains both tiny Wan2.2 layouts from their shipped
tiny recipes, each pair encoded by the model's own VAE, a one-expert LoRA trained only at the noise
levels its expert serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cac_align.cli import main
from cac_align.config import RecipeError, load_config
from cac_align.jobs.dpo_pairs import read_pairs
from cac_align.gen.families.wan import build_tiny_wan22_a14b_pipeline
from cac_align.gen.families.vace import (RegeneratorConfig, build_regenerator, build_tiny_vace_pipeline, build_tiny_wan22_vace_a14b_pipeline, plan_repair,
                                regenerate)
from cac_align.gen.generator import GeneratorConfig, build_generator
from cac_align.jobs.dpo import DpoConfig, pair_noise, run
from cac_align.jobs.repair import RepairConfig
from cac_align.jobs.repair import run as repair
from cac_align.regions import Evidence, region_from_evidence
import forked_launch
from conftest import REPO_ROOT, smooth_video, free_port

RECIPES = REPO_ROOT / "recipes/align"


def _expert_calls(pipe) -> tuple[dict[int, list[float]], list]:
    """Every call's timestep, per expert (0: ``transformer``, 1: ``transformer_2``), and the hooks."""
    calls: dict[int, list[float]] = {0: [], 1: []}
    hooks = [expert.register_forward_hook(lambda m, a, k, out, i=i: calls[i].append(float(k["timestep"].flatten()[0])), with_kwargs=True)
             for i, expert in enumerate((pipe.transformer, pipe.transformer_2))]
    return calls, hooks


@pytest.fixture(scope="module")
def repaired_a14b(tmp_path_factory) -> Path:
    """A finished run of recipes/align/repair_tiny_wan22_a14b.yaml, on 4 of its 8 scenes."""
    out = tmp_path_factory.mktemp("repair22") / "run"
    config = load_config(RepairConfig, RECIPES / "repair_tiny_wan22_a14b.yaml", [f"out_dir={out}", "synth_videos=4"], job="repair")
    pipe = build_regenerator(config.regenerator)
    calls, hooks = _expert_calls(pipe)
    try:
        rows = repair(config, pipe=pipe)
    finally:
        for hook in hooks:
            hook.remove()
    assert sum(r["accepted"] for r in rows) == 4
    # each attempt: the shift-12 schedule's timesteps 1000 and 961 on the high-noise expert, 861 and
    # 126 on the low-noise one (the recipe's comment), each with its unconditional pass (CFG 5)
    attempts = sum(len(r["attempts"]) for r in rows)
    assert [round(t) for t in calls[0]] == [1000, 1000, 961, 961] * attempts
    assert [round(t) for t in calls[1]] == [861, 861, 126, 126] * attempts
    return out


def test_the_wan22_vace_repairs_with_both_experts_and_loads_from_a_folder(repaired_a14b, tmp_path):
    rows = [json.loads(line) for line in (repaired_a14b / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["valid"] and r["accepted"] for r in rows)
    # the ordinary from_pretrained path: a saved two-expert VACE loads both experts and fills alike
    vace = build_tiny_wan22_vace_a14b_pipeline()
    vace.save_pretrained(str(tmp_path / "vace22"))
    settings = dict(dtype="float32", vae_dtype="float32", device="cpu", num_inference_steps=4, guidance_scale=5.0)
    loaded = build_regenerator(RegeneratorConfig(name=str(tmp_path / "vace22"), **settings))
    assert loaded.transformer_2 is not None and loaded.config.boundary_ratio == 0.875
    frames = smooth_video(17, 64, 96, seed=2)
    plan = plan_repair(region_from_evidence(Evidence((0.5, 1.0), ((0.5, ((0.0, 0.0, 500.0, 500.0),)),)), 17, 8.0, 64, 96), 8.0)
    config = RegeneratorConfig(name="tiny-random:wan22-vace-a14b", **settings)
    fill = regenerate(vace, frames, plan, "a ball", 3, config)
    np.testing.assert_array_equal(regenerate(loaded, frames, plan, "a ball", 3, config), fill)
    # guidance_scale_2 is the low-noise expert's scale: another one gives another fill ...
    other = RegeneratorConfig(name="tiny-random:wan22-vace-a14b", guidance_scale_2=1.5, **settings)
    assert np.abs(regenerate(vace, frames, plan, "a ball", 3, other).astype(int) - fill).max() > 0
    # ... and names a second expert a one-transformer VACE does not have (its files say so: one transformer)
    with pytest.raises(RecipeError, match="guidance_scale_2=1.5 is a second expert's scale"):
        RegeneratorConfig(name="tiny-random:wan-vace", guidance_scale_2=1.5, **settings)
    build_tiny_vace_pipeline().save_pretrained(str(tmp_path / "vace21"))
    with pytest.raises(RecipeError, match="guidance_scale_2=1.5 is a second expert's scale"):
        RegeneratorConfig(name=str(tmp_path / "vace21"), guidance_scale_2=1.5, **settings)


def _dpo(layout: str, out: Path, pairs: Path, *overrides: str) -> DpoConfig:
    return load_config(DpoConfig, RECIPES / f"dpo_tiny_wan22_{layout}.yaml", [f"out_dir={out}", f"pairs=[{pairs}]", "log_with=none", *overrides],
                       job="dpo")


def test_dpo_on_the_tiny_a14b_recipe_trains_the_expert_serving_each_pairs_level(repaired_a14b, tmp_path):
    out = tmp_path / "dpo"
    recipe = RECIPES / "dpo_tiny_wan22_a14b.yaml"
    assert main(["dpo", "--config", str(recipe), "--out", str(out), f"pairs=[{repaired_a14b}]"]) == 0
    cached = load_file(str(out / "latents/pair_00000.safetensors"))
    assert cached["winner"].shape == (16, 5, 8, 12) and cached["mask"].sum() == 2 * 4 * 6  # Wan-2.1's VAE: 8x, 16 channels
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[0]["train/dpo"] == pytest.approx(np.log(2), abs=1e-6)
    # the levels drawn (loss.shift 3 in the tiny recipe): both experts got pairs, so both LoRAs moved
    config = load_config(DpoConfig, recipe, ["out_dir=x"], job="dpo")
    levels = [float(pair_noise(config.seed, step, p, tuple(cached["winner"].shape), config.loss)[1]) for step in range(4) for p in range(4)]
    assert any(s >= 0.875 for s in levels) and any(s < 0.875 for s in levels)
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_transformer_2.safetensors"):
        lora = load_file(str(out / "lora" / name))
        assert any("lora.up" in k and torch.count_nonzero(v) for k, v in lora.items()), name  # diffusers names B "up"
    pipe = build_generator(GeneratorConfig(name="tiny-random:wan22-a14b", dtype="float32", device="cpu", lora=str(out / "lora")))
    assert all(any("lora" in n for n, _ in expert.named_parameters()) for expert in (pipe.transformer, pipe.transformer_2))


def test_a_one_expert_dpo_lora_sees_only_its_experts_levels(repaired_a14b, tmp_path):
    pipe = build_tiny_wan22_a14b_pipeline(seed=0)
    frozen = {n: p.detach().clone() for n, p in pipe.transformer_2.named_parameters()}
    calls, hooks = _expert_calls(pipe)
    try:
        run(_dpo("a14b", tmp_path / "high", repaired_a14b, "lora.experts=high", "steps=2", "checkpoint_every=0"), pipe=pipe)
    finally:
        for hook in hooks:
            hook.remove()
    # every pair was noised to a level the high-noise expert serves: the low-noise one never ran
    assert calls[0] and min(calls[0]) >= 875.0 and calls[1] == []
    assert all(torch.equal(p, frozen[n]) for n, p in pipe.transformer_2.named_parameters())
    assert any(torch.count_nonzero(p) for n, p in pipe.transformer.named_parameters() if "lora_B" in n)
    assert sorted(p.name for p in (tmp_path / "high/lora").iterdir()) == ["README.md", "pytorch_lora_weights.safetensors"]  # and its model card


@pytest.mark.slow  # ~8 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_dpo_on_the_tiny_ti2v_recipe_encodes_pairs_with_its_own_vae(tmp_path):
    # the TI2V-5B has no VACE: its pairs come from any repair (here the Wan-2.1 VACE's, of
    # recipes/align/repair_tiny_wan.yaml, on 4 scenes)
    pairs = tmp_path / "repair"
    repair(load_config(RepairConfig, RECIPES / "repair_tiny_wan.yaml", [f"out_dir={pairs}", "synth_videos=4"], job="repair"))
    # the 5B's VAE and 2x2 patches need sides that are multiples of 32: 64 x 96 are; a model needing
    # 64 would skip every pair, counted with the reason
    assert len(read_pairs([str(pairs)], 32).pairs) == 4
    skipped = read_pairs([str(pairs)], 64)
    assert skipped.pairs == [] and skipped.skipped == {"repair: sides not multiples of 64 (the model's VAE x its patches)": 4}
    out = tmp_path / "dpo"
    pipe = build_generator(GeneratorConfig(name="tiny-random:wan22-ti2v", dtype="float32", device="cpu"))
    timesteps: list[torch.Tensor] = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, k, o: timesteps.append(k["timestep"].detach().clone()), with_kwargs=True)
    try:
        run(_dpo("ti2v", out, pairs), pipe=pipe)
    finally:
        hook.remove()
    cached = load_file(str(out / "latents/pair_00000.safetensors"))
    # 17 x 64 x 96 frames through the 5B's VAE (48 channels, 4x in time, 16x in space): 5 x 4 x 6. The
    # regenerated frames 3-8 (the judged [0.5, 1.0) s widened by 0.125 s, at 8 fps) touch latent frames
    # 1 (pixel frames 1-4) and 2 (5-8); the top-left quarter's 32 x 48 pixels are latent rows 0-1 and
    # columns 0-2 (16 pixels each)
    assert cached["winner"].shape == cached["loser"].shape == (48, 5, 4, 6) and cached["mask"].shape == (5, 4, 6)
    expected = torch.zeros(5, 4, 6)
    expected[1:3, :2, :3] = 1.0
    assert torch.equal(cached["mask"], expected)
    # every token of a pair's latent has the pair's timestep: (2 pairs x winner/loser, 5 x 2 x 3 tokens)
    assert timesteps[0].shape == (4, 30) and torch.equal(timesteps[0], timesteps[0][:, :1].expand(4, 30))
    assert torch.equal(timesteps[0][:2, 0], timesteps[0][2:, 0])  # winner and loser at one level
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/dpo"] == pytest.approx(np.log(2), abs=1e-6) and rows[-1]["train/margin"] != 0.0
    loaded = build_generator(GeneratorConfig(name="tiny-random:wan22-ti2v", dtype="float32", device="cpu", lora=str(out / "lora")))
    assert any("lora" in n for n, _ in loaded.transformer.named_parameters())


@pytest.mark.slow  # two processes: `pytest -m slow` (.ci/run runs it after the default suite)
def test_two_processes_train_the_a14b_as_one(repaired_a14b, tmp_path):
    """`accelerate launch`, two gloo processes (2 pairs each, one a micro-batch) against one process,
    LoRAs on both experts: a micro-batch whose pair one expert serves leaves the other's LoRA
    unused in its backward (DDP's find_unused_parameters, set by the job), and the two processes
    still end with the one process's LoRAs, on both ranks."""
    import os
    import sys

    overrides = ["steps=2", "batch_size=1", "checkpoint_every=0", "warmup_steps=2", "loss.beta=1"]
    one = build_tiny_wan22_a14b_pipeline(seed=0)
    run(_dpo("a14b", tmp_path / "one", repaired_a14b, *overrides), pipe=one)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "DPO_RECIPE": str(RECIPES / "dpo_tiny_wan22_a14b.yaml")}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(REPO_ROOT / "tests/dpo_two_process.py"),
               str(repaired_a14b), str(tmp_path / "two"), *overrides]
    done = forked_launch.accelerate_launch(command, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"two/rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1) and all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    from cac_align.gen.families.wan import WAN22_A14B

    mine = {n: p.detach() for n, p in WAN22_A14B.denoiser(one).named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in mine} == {"transformer", "transformer_2"} and set(mine) == set(rank0)
    for name, value in mine.items():
        scale = float(value.abs().max())
        assert float((rank0[name] - value).abs().max()) <= 1e-3 * max(scale, 1e-12), name
