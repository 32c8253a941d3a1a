"""A model's own files decide its scheduler's shift (cac_align.gen.family.model_flow_shift), for a
fine-tune whose files differ from its release's: a HunyuanVideo-1.5 pipeline built from diffusers'
own classes and saved by ``save_pretrained`` with a scheduler of shift 7.0 (the 480p release: 5.0)
samples at 7.0 and its run's ``cac_align_run.json`` says so; a recipe's ``flow_shift`` overrides it;
a Wan2.2-A14B whose file says diffusers' converted 3.0 still samples at the release's 12.0, one whose
file says 8.0 at 8.0; a name whose files cannot be read takes the release's value. Its VAE's ratios
too (cac_align.gen.family.with_own_ratios): the same fine-tune with a VAE of 4x space and 2x time
takes 7 frames (2k + 1, not 4k + 1) in bon and flow-grpo, and a loaded pipeline whose ratios are not
the validated ones is refused in one line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cac_align.gen.family import model_flow_shift, read_scheduler_config
from cac_align.gen.families.hunyuan15 import HUNYUAN15_T2V, build_tiny_hunyuan15_pipeline
from cac_align.gen.families.wan import WAN22_A14B, build_tiny_wan22_a14b_pipeline
from cac_align.gen.generator import GeneratorConfig, build_generator

TINY = dict(dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=9, num_inference_steps=2, max_sequence_length=16)


def _with_shift(pipe, shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift)
    return pipe


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    """A HunyuanVideo-1.5 "fine-tune": diffusers' own classes, its scheduler's shift 7.0, saved."""
    folder = tmp_path_factory.mktemp("hv15") / "finetune"
    _with_shift(build_tiny_hunyuan15_pipeline(seed=0), 7.0).save_pretrained(str(folder))
    return folder


def test_a_finetunes_scheduler_file_decides_its_shift_and_a_recipe_overrides_it(finetune):
    assert json.loads((finetune / "scheduler/scheduler_config.json").read_text())["shift"] == 7.0
    assert read_scheduler_config(str(finetune))["shift"] == 7.0
    config = GeneratorConfig(name=str(finetune), **TINY)
    assert config.family is HUNYUAN15_T2V and config.flow_shift == 7.0  # not the release's 5.0
    assert GeneratorConfig(name=str(finetune), flow_shift=6.0, **TINY).flow_shift == 6.0  # the recipe's wins
    assert GeneratorConfig(name="tiny-random:hunyuanvideo15", **TINY).flow_shift == 5.0  # no files: the release's
    # it samples at 7.0: N = 2 steps of linspace(1, 0, 3)[:-1] = (1, 0.5) through s x / (1 + (s - 1) x):
    # 7 * 0.5 / (1 + 6 * 0.5) = 0.875 (the release's 5.0 would give 2.5 / 3 = 0.8333)
    pipe = build_generator(config)
    sigmas, timesteps = HUNYUAN15_T2V.schedule(pipe, config)
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.875, 0.0]), atol=1e-6)
    assert torch.allclose(timesteps, torch.tensor([1000.0, 875.0]), atol=1e-3)
    overridden = GeneratorConfig(name=str(finetune), flow_shift=5.0, **TINY)
    assert torch.allclose(HUNYUAN15_T2V.schedule(build_generator(overridden), overridden)[0], torch.tensor([1.0, 2.5 / 3, 0.0]), atol=1e-6)


def test_the_a14bs_converted_shift_takes_the_releases_and_any_other_is_its_own(tmp_path, hub_cache):
    pipe = build_tiny_wan22_a14b_pipeline(seed=0)
    for shift, expected in ((3.0, 12.0), (8.0, 8.0), (12.0, 12.0)):  # 3.0: what diffusers' conversion writes; the release samples at 12.0
        folder = tmp_path / f"a14b_{shift}"
        _with_shift(pipe, shift).save_pretrained(str(folder))
        assert model_flow_shift(WAN22_A14B, str(folder)) == expected
        assert GeneratorConfig(name=str(folder)).flow_shift == expected
        assert GeneratorConfig(name=str(folder), flow_shift=4.0).flow_shift == 4.0
    # a folder whose scheduler file says nothing of a shift, and a listed hub id offline and not cached: the release's
    (tmp_path / "a14b_8.0/scheduler/scheduler_config.json").write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler"}))
    assert GeneratorConfig(name=str(tmp_path / "a14b_8.0")).flow_shift == 12.0
    assert GeneratorConfig(name="Wan-AI/Wan2.2-T2V-A14B-Diffusers").flow_shift == 12.0


def test_a_best_of_n_run_on_the_finetune_samples_at_its_shift_and_records_it(finetune, tmp_path):
    from cac_align.gen.generator import generate_videos
    from cac_align.jobs.best_of_n import BonConfig, frames_sha256, run
    from cac_align.rewards.registry import build_reward

    (tmp_path / "prompts.txt").write_text("a red ball\n")
    config = BonConfig(out_dir=str(tmp_path / "bon"), prompts=str(tmp_path / "prompts.txt"), n=1, batch_size=1, generator=GeneratorConfig(name=str(finetune), **TINY))
    run(config, reward=build_reward({"name": "brightness"}))
    manifest = json.loads((tmp_path / "bon/cac_align_run.json").read_text())
    assert manifest["config"]["generator"]["flow_shift"] == 7.0 and manifest["fingerprint"]["generator"]["flow_shift"] == 7.0
    row = json.loads((tmp_path / "bon/candidates.jsonl").read_text().splitlines()[0])
    # the frames are the fine-tune's at 7.0, not at the release's 5.0
    at = {shift: frames_sha256(generate_videos(build_generator(c), c, ["a red ball"], [row["seed"]]).frames[0])
          for shift, c in ((7.0, GeneratorConfig(name=str(finetune), **TINY)), (5.0, GeneratorConfig(name=str(finetune), flow_shift=5.0, **TINY)))}
    assert row["frames_sha256"] == at[7.0] != at[5.0]
    # the same recipe reruns (resumes) on its folder; one at the release's 5.0 is another run, refused naming the key
    run(config, reward=build_reward({"name": "brightness"}))
    from cac_align.config import RecipeError

    with pytest.raises(RecipeError, match=r"differs in: generator.flow_shift\)"):
        run(dataclasses.replace(config, generator=GeneratorConfig(name=str(finetune), flow_shift=5.0, **TINY)), reward=build_reward({"name": "brightness"}))


def _small_vae_finetune(folder):
    """The tiny HunyuanVideo-1.5 with a VAE of diffusers' own class that compresses 4x in space and
    2x in time (the release's: 16x, 4x), saved: 7 frames (2k + 1, not 4k + 1) -> 4 latent frames."""
    from diffusers import AutoencoderKLHunyuanVideo15

    pipe = build_tiny_hunyuan15_pipeline(seed=0)
    pipe.vae = AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=pipe.vae.config.latent_channels, block_out_channels=(8,) * 3,
                                           layers_per_block=1, spatial_compression_ratio=4, temporal_compression_ratio=2,
                                           downsample_match_channel=False, upsample_match_channel=False).eval()
    pipe.register_modules(vae=pipe.vae)
    pipe.save_pretrained(str(folder))


def test_a_finetunes_vae_config_decides_its_frame_and_side_multiples(tmp_path):
    from cac_align.gen.family import family_of, ratios_from_configs

    # the release's files: 16x space, 4x time, patch 1 -> sides of 16, 4k + 1 frames; Wan's (t, h, w) patch doubles the sides
    assert ratios_from_configs({"spatial_compression_ratio": 16, "temporal_compression_ratio": 4}, {"patch_size": 1, "patch_size_t": 1}) == (16, 4)
    assert ratios_from_configs({"scale_factor_spatial": 16, "scale_factor_temporal": 4}, {"patch_size": [1, 2, 2]}) == (32, 4)
    assert ratios_from_configs({"temperal_downsample": [False, True, True]}, {"patch_size": [1, 2, 2]}) is None  # says nothing: the release's
    folder = tmp_path / "small_vae"
    _small_vae_finetune(folder)
    family = family_of(str(folder))
    assert family.name == HUNYUAN15_T2V.name and (family.spatial_multiple, family.frame_multiple) == (4, 2)
    assert (HUNYUAN15_T2V.spatial_multiple, HUNYUAN15_T2V.frame_multiple) == (16, 4)  # the release's family is untouched
    config = GeneratorConfig(name=str(folder), **{**TINY, "num_frames": 7, "height": 32, "width": 32})  # 7 = 2k + 1, not 4k + 1
    with pytest.raises(ValueError, match=r"num_frames must be 2k \+ 1 .*got 8"):
        GeneratorConfig(name=str(folder), **{**TINY, "num_frames": 8})
    with pytest.raises(ValueError, match=r"num_frames must be 4k \+ 1"):
        GeneratorConfig(name="tiny-random:hunyuanvideo15", **{**TINY, "num_frames": 7})
    from cac_align.gen.generator import generate_videos

    pipe = build_generator(config)
    assert config.family.latent_grid(pipe)[:2] == (2, 4)
    video = generate_videos(pipe, config, ["a red ball"], [3]).frames
    assert video.shape == (1, 7, 32, 32, 3)


def test_a_loaded_vae_that_disagrees_with_the_validated_ratios_is_refused_in_one_line(tmp_path):
    from cac_align.gen.family import check_ratios

    folder = tmp_path / "small_vae"
    _small_vae_finetune(folder)
    pipe = build_generator(GeneratorConfig(name=str(folder), **{**TINY, "num_frames": 7}))  # its files' 4 and 2k + 1: checked, passes
    check_ratios(family_of_folder := GeneratorConfig(name=str(folder), **TINY).family, pipe)
    assert (family_of_folder.spatial_multiple, family_of_folder.frame_multiple) == (4, 2)
    # the release's ratios (what a recipe is validated for where the files say nothing) against this pipeline: refused
    with pytest.raises(ValueError, match=r"^generator.name: the loaded pipeline's VAE and patch take sides in multiples of 4 and 2k \+ 1 frames, but the "
                                         r"recipe was validated for 16 and 4k \+ 1 \(HunyuanVideo-1.5 \(T2V\)'s, from its files\)"):
        check_ratios(HUNYUAN15_T2V, pipe)


@pytest.mark.slow  # flow-grpo's steps on the saved fine-tune, end to end
def test_bon_and_flow_grpo_run_the_small_vae_finetune_at_a_frame_count_only_it_takes(tmp_path):
    from cac_align.config import load_config
    from cac_align.jobs.best_of_n import BonConfig, run as best_of_n
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run as flow_grpo
    from cac_align.rewards.registry import build_reward
    from cac_align.video import load_video
    from conftest import REPO_ROOT

    folder = tmp_path / "small_vae"
    _small_vae_finetune(folder)
    (tmp_path / "prompts.txt").write_text("a red ball\n")
    bon = BonConfig(out_dir=str(tmp_path / "bon"), prompts=str(tmp_path / "prompts.txt"), n=2, batch_size=2,
                    generator=GeneratorConfig(name=str(folder), **{**TINY, "num_frames": 7}))
    best_of_n(bon, reward=build_reward({"name": "brightness"}))
    rows = [json.loads(line) for line in (tmp_path / "bon/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["valid"] for r in rows)
    assert load_video(str(tmp_path / "bon" / rows[0]["video"])).frames.shape == (7, 32, 32, 3)
    out = tmp_path / "grpo"
    config = load_config(FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_hunyuan15.yaml",
                         [f"out_dir={out}", f"generator.name={folder}", "generator.num_frames=7", "steps=1", "log_with=none", "checkpoint_every=0",
                          "eval_every=0", "eval_at_start=false"], job="flow-grpo")
    flow_grpo(config, reward=build_reward({"name": "brightness"}))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["train/grad_norm"] > 0


def test_every_shipped_release_configs_ratios_are_its_familys_or_say_nothing():
    # the release checkpoints' own files (cac_align/plan/full_size/, sources in its SOURCES.md) give the
    # family's values, so a release validates and plans as before; a fine-tune's differ only where its files do
    from cac_align.gen.family import families, family_from_index, ratios_from_configs, read_model_file, read_model_index
    from conftest import REPO_ROOT

    seen = {}
    for folder in sorted((REPO_ROOT / "cac_align/plan/full_size").glob("*/vae")):
        vae, transformer = read_model_file(str(folder.parent), "vae/config.json"), read_model_file(str(folder.parent), "transformer/config.json")
        # the family its index names (the folder holds the configs a plan reads, not every part a pipeline loads: no family_of);
        # a repair pipeline's (Wan-VACE's, which repair's plan reads) is a regenerator family
        index = read_model_index(str(folder.parent))
        kind = "generator" if any(f.pipeline_class == index["_class_name"] for f in families()) else "regenerator"
        family = family_from_index(index, folder.parent.name, kind=kind)
        seen[folder.parent.name] = ratios_from_configs(vae, transformer)
        assert seen[folder.parent.name] in (None, (family.spatial_multiple, family.frame_multiple)), folder.parent.name
    assert seen["Wan-AI--Wan2.2-TI2V-5B-Diffusers"] == (32, 4) and seen["Lightricks--LTX-2"] == (32, 8)
    assert seen["hunyuanvideo-community--HunyuanVideo-1.5-480p_t2v"] == (16, 4) and seen["Wan-AI--Wan2.1-T2V-1.3B-Diffusers"] == (16, 4)
    assert "Wan-AI--Wan2.1-VACE-1.3B-diffusers" in seen  # a regenerator's release configs too
