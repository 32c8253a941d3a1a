"""LTX-2 behind the generator interface (cac_align.gen.families.ltx2), on the tiny pipelines of its two layouts
(diffusers' own LTX2Pipeline classes): with the SDE noise off our sampler steps exactly as
``LTX2Pipeline.__call__`` does, video and audio, under the release's guidance (CFG, STG, modality
guidance, rescale); each step costs the forwards the docs count; a recorded log-probability is
recomputed exactly; the model is found from its files; decode, encode and the localized map's
latent grid are the pipeline's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cac_align.gen.family import UnknownGeneratorError, family_of, regenerator_of
from cac_align.gen.generator import GeneratorConfig, build_generator, predict_velocity, sample_with_log_probs, video_velocity
from cac_align.gen.families.ltx2 import GUIDANCE_KEYS, LTX2, LTX23, LTX25, VIDEO_BRANCH
from cac_align.rl.sde import SDESchedule
from cac_align.gen.families.ltx2_tiny import build_tiny_ltx2_pipeline

PROMPTS = ["a red ball on the street", "a dog running"]
SEEDS = (11, 12)
LAYOUTS = {"ltx2": "tiny-random:ltx2", "ltx2.3": "tiny-random:ltx2.3"}
# the release's guidance, STG on block 1 of the tiny model's 2 (the release names block 29 or 28)
FULL = dict(stg_blocks=[1])
NONE = dict(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=1.0, audio_stg_scale=0.0,
            audio_modality_scale=1.0, audio_guidance_rescale=0.0, stg_blocks=None)


def _config(name: str, steps: int = 3, **settings) -> GeneratorConfig:
    return GeneratorConfig(name=name, dtype="float32", vae_dtype="float32", device="cpu", height=64, width=96, num_frames=17,
                           num_inference_steps=steps, max_sequence_length=32, negative_prompt="blurry", **{**FULL, **settings})


@pytest.fixture(scope="module")
def pipes():
    return {layout: build_generator(_config(name)) for layout, name in LAYOUTS.items()}


def _ours(pipe, config, noise_level=0.0):
    family = config.family
    guidance = family.guidance(config)
    cond, negative = family.encode_prompts(pipe, PROMPTS, config.negative_prompt, guidance, config.max_sequence_length)
    sigmas, timesteps = family.schedule(pipe, config)
    denoiser = family.denoiser(pipe)
    trajectory = sample_with_log_probs(pipe, denoiser, cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS], config=config, sigmas=sigmas,
                                       timesteps=timesteps, noise_level=noise_level)
    return trajectory, denoiser, cond, negative, guidance


def _theirs(pipe, config, output_type="latent"):
    guidance = config.family.guidance(config)
    return pipe(prompt=PROMPTS, negative_prompt=[config.negative_prompt] * 2, height=config.height, width=config.width, num_frames=config.num_frames,
                frame_rate=config.fps, num_inference_steps=config.num_inference_steps, max_sequence_length=config.max_sequence_length,
                generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type=output_type,
                spatio_temporal_guidance_blocks=guidance["stg_blocks"], **{k: guidance[k] for k in GUIDANCE_KEYS})


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_ode_sampler_is_the_pipelines_own_video_and_audio(layout, pipes):
    pipe, config = pipes[layout], _config(LAYOUTS[layout])
    trajectory, *_ = _ours(pipe, config)
    theirs = _theirs(pipe, config)  # denormalized: the VAE's latents
    vae, audio_vae = pipe.vae, pipe.audio_vae
    video = trajectory.latents[:, -1] * vae.latents_std.view(1, -1, 1, 1, 1) / vae.config.scaling_factor + vae.latents_mean.view(1, -1, 1, 1, 1)
    assert video.shape == theirs.frames.shape == (2, 8, 3, 2, 3)  # 17 frames -> 3 latent frames (8x), 64 x 96 -> 2 x 3 (32x)
    torch.testing.assert_close(video, theirs.frames.float(), rtol=0, atol=1e-5)
    audio = trajectory.side[:, -1] * audio_vae.latents_std + audio_vae.latents_mean  # packed (B, L, C M'), then (B, C, L, M')
    audio = audio.unflatten(2, (-1, 4)).transpose(1, 2)
    assert audio.shape == theirs.audio.shape == (2, 2, 18, 4)  # 17 frames at 24 fps = 0.71 s: 18 tokens of 40 ms
    torch.testing.assert_close(audio, theirs.audio.float(), rtol=0, atol=1e-5)
    # decoded as the pipeline decodes: the frames and the soundtrack
    output = _theirs(pipe, config, output_type="np")
    frames = LTX2.decode(pipe, trajectory.latents[:, -1])
    expected = np.round(np.clip(np.asarray(output.frames), 0, 1) * 255).astype(np.uint8)
    assert frames.shape == (2, 17, 64, 96, 3) and np.abs(frames.astype(int) - expected).max() <= 1
    wave, rate = LTX2.decode_audio(pipe, trajectory.side[:, -1])
    assert rate == (24000 if layout == "ltx2" else 48000)
    np.testing.assert_allclose(wave, output.audio.float().clamp(-1, 1).numpy(), rtol=0, atol=1e-5)
    # ... and the comparison can fail: without spatio-temporal guidance LTX-2.3 samples other latents
    # (LTX-2's layout has perturbed_attn off, where diffusers' STG forward changes nothing: the same)
    other = _ours(pipe, _config(LAYOUTS[layout], stg_scale=0.0, audio_stg_scale=0.0))[0].latents[:, -1]
    if layout == "ltx2.3":
        assert (other - trajectory.latents[:, -1]).abs().max() > 100 * 1e-5
    else:
        torch.testing.assert_close(other, trajectory.latents[:, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("settings, calls, rows", [
    (FULL, 3, 8),   # CFG batched with the negative prompt (2 rows a sample), + STG, + modality: 4 sample-forwards of 2 samples
    (dict(NONE, guidance_scale=3.0), 1, 4),  # CFG alone
    (NONE, 1, 2),  # none: the conditional forward
    (dict(NONE, audio_guidance_scale=7.0), 1, 4),  # the audio's CFG alone still batches the negative prompt (as the pipeline)
])
def test_each_step_costs_the_forwards_the_docs_count(settings, calls, rows, pipes):
    pipe = pipes["ltx2.3"]
    config = _config(LAYOUTS["ltx2.3"], steps=2, **settings)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"].shape[0]), with_kwargs=True)
    try:
        _ours(pipe, config)
        ours = list(seen)
        seen.clear()
        _theirs(pipe, config)
    finally:
        hook.remove()
    assert ours == seen and len(ours) == 2 * calls and sum(ours) == 2 * rows  # 2 steps


def test_a_recorded_log_prob_is_recomputed_exactly_from_the_recorded_audio(pipes):
    pipe = pipes["ltx2"]
    config = _config(LAYOUTS["ltx2"], steps=3)
    trajectory, denoiser, cond, negative, guidance = _ours(pipe, config, noise_level=0.7)
    assert trajectory.latents.shape == (2, 4, 8, 3, 2, 3) and trajectory.side.shape == (2, 4, 18, 8) and trajectory.log_probs.shape == (2, 3)
    transitions = SDESchedule(trajectory.sigmas, 0.7)
    for j in range(3):
        x, side = trajectory.latents[:, j], trajectory.side[:, j]
        with torch.no_grad():
            v = video_velocity(denoiser, x, trajectory.timesteps[j], cond, negative, guidance, torch.float32, side)
        step = transitions.step(j, x, v, prev_sample=trajectory.latents[:, j + 1])
        assert torch.equal(step.log_prob, trajectory.log_probs[:, j])
        # the audio took the deterministic Euler step with the same call's audio velocity
        with torch.no_grad():
            _, v_audio = predict_velocity(denoiser, x, trajectory.timesteps[j], cond, negative, guidance, torch.float32, side)
        torch.testing.assert_close(trajectory.side[:, j + 1], side + (trajectory.sigmas[j + 1] - trajectory.sigmas[j]) * v_audio, rtol=0, atol=0)
    # ... and another audio input is another velocity: the audio is the transformer's input, not decoration
    with torch.no_grad():
        moved = video_velocity(denoiser, trajectory.latents[:, 1], trajectory.timesteps[1], cond, negative, guidance, torch.float32, torch.zeros_like(side))
        kept = video_velocity(denoiser, trajectory.latents[:, 1], trajectory.timesteps[1], cond, negative, guidance, torch.float32, trajectory.side[:, 1])
    assert (moved - kept).abs().max() > 1e-4


def test_an_ltx2_is_found_from_its_files_and_takes_the_releases_settings(tmp_path):
    for version, family in (("2.0", LTX2), ("2.3", LTX23)):
        build_tiny_ltx2_pipeline(0, version).save_pretrained(str(tmp_path / version))
        assert json.loads((tmp_path / version / "model_index.json").read_text())["_class_name"] == "LTX2Pipeline"
        assert family_of(str(tmp_path / version)) is family
    config = GeneratorConfig(name="Lightricks/LTX-2")  # listed: known by name without its files
    assert (config.height, config.width, config.num_frames, config.fps, config.num_inference_steps) == (512, 768, 121, 24.0, 40)
    assert (config.guidance_scale, config.stg_scale, config.modality_scale, config.guidance_rescale) == (3.0, 1.0, 3.0, 0.7)
    assert (config.audio_guidance_scale, config.stg_blocks, config.max_sequence_length) == (7.0, [29], 1024)
    assert GeneratorConfig(name=str(tmp_path / "2.3")).stg_blocks == [28] and GeneratorConfig(name=str(tmp_path / "2.3")).num_inference_steps == 30
    with pytest.raises(ValueError, match="flow_shift does not apply to Lightricks/LTX-2"):
        GeneratorConfig(name="Lightricks/LTX-2", flow_shift=3.0)  # its scheduler shifts by the token count
    with pytest.raises(ValueError, match="num_frames must be 8k \\+ 1"):
        GeneratorConfig(name="tiny-random:ltx2", num_frames=13)  # 4k + 1 (a Wan length), not 8k + 1
    with pytest.raises(ValueError, match="multiples of 32"):
        GeneratorConfig(name="tiny-random:ltx2", height=48, width=64)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 2 for tiny-random:ltx2"):
        GeneratorConfig(name="tiny-random:ltx2", num_inference_steps=1)  # its schedule would be NaN
    with pytest.raises(ValueError, match="stg_scale does not apply to tiny-random:wan"):
        GeneratorConfig(name="tiny-random:wan", stg_scale=1.0)
    # the saved folder loads through from_pretrained and samples as the built one
    loaded = build_generator(_config(str(tmp_path / "2.0"), steps=2))
    built = build_generator(_config("tiny-random:ltx2", steps=2))
    ours = [_ours(pipe, _config("tiny-random:ltx2", steps=2))[0].latents[:, -1] for pipe in (loaded, built)]
    assert torch.equal(ours[0], ours[1])


def test_an_audio_scale_left_at_0_takes_the_videos_as_the_pipeline_reads_it():
    config = _config("tiny-random:ltx2", stg_scale=0.5, audio_stg_scale=0.0, guidance_rescale=0.3, audio_guidance_rescale=None)
    guidance = LTX2.guidance(config)
    assert guidance["audio_stg_scale"] == 0.5 and guidance["audio_guidance_rescale"] == 0.7  # unset: the release's 0.7
    assert guidance["guidance_rescale"] == 0.3 and guidance["frame_rate"] == 24.0
    assert LTX2.guidance(config, guided=False, fps=8.0) == {**{k: v for k, v in NONE.items() if k != "stg_blocks"}, "stg_blocks": None, "frame_rate": 8.0}


def test_encode_is_the_inverse_of_decode_on_its_grid(pipes):
    pipe = pipes["ltx2"]
    frames = np.random.default_rng(0).integers(0, 256, size=(17, 64, 96, 3), dtype=np.uint8)
    latents = LTX2.encode_video(pipe, frames)
    assert latents.shape == (8, 3, 2, 3) and latents.dtype == torch.float32
    # normalized as the pipeline normalizes: decoding them gives what the VAE decodes of its own latents
    vae = pipe.vae
    with torch.no_grad():
        raw = vae.encode(torch.as_tensor(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1).latent_dist.mode()
    torch.testing.assert_close(latents * vae.latents_std.view(-1, 1, 1, 1) / vae.config.scaling_factor + vae.latents_mean.view(-1, 1, 1, 1), raw[0])
    assert LTX2.decode(pipe, latents[None]).shape == (1, 17, 64, 96, 3)
    assert LTX2.latent_grid(pipe) == (8, 32, (1, 1, 1))


def test_the_localized_map_on_the_ltx2_grid_by_hand(pipes):
    from cac_align.rl.credit import latent_coverage
    from cac_align.regions import Evidence, region_from_evidence

    temporal, spatial, patch = LTX2.latent_grid(pipes["ltx2"])
    # 17 frames of 64 x 96 at 8 fps -> latent frames {0}, {1..8}, {9..16}; cells of 32 x 32 pixels, one token each
    region = region_from_evidence(Evidence((1.25, 2.125), ((1.5, ((0.0, 0.0, 500.0, 500.0),)),)), 17, 8.0, 64, 96)
    # window 1.25 s -> frames 10..16 (latent frame 2); box x 0..48 px, y 0..32 px -> row 0, columns 0 (whole) and 1 (half)
    hard = latent_coverage(region, temporal, spatial, patch, edges="hard")
    expected = np.zeros((3, 2, 3))
    expected[2, 0, :2] = 1.0
    np.testing.assert_array_equal(hard, expected)
    soft = latent_coverage(region, temporal, spatial, patch, edges="soft")
    # latent frame 2 covers pixel frames 9..16, of which 10..16 (7 of 8) are in the window; column 1 is half inside the box
    assert soft[2, 0, 0] == pytest.approx(7 / 8) and soft[2, 0, 1] == pytest.approx(7 / 8 * 0.5) and soft[:2].sum() == 0 and soft[2, 1].sum() == 0


def test_the_lora_of_the_video_branch_leaves_the_audio_branch_as_it_is(pipes):
    from cac_align.gen.lora import LoraSettings, adapted_denoiser

    pipe = build_tiny_ltx2_pipeline(0, "2.0")
    denoiser = adapted_denoiser(pipe, LTX2, LoraSettings(rank=2, alpha=2, target_modules=list(LTX2.lora_target_modules)), seed=0)
    adapted = {name.split(".lora_")[0] for name, p in denoiser.named_parameters() if p.requires_grad}
    per_block = {name.split("transformer_blocks.0.")[1] for name in adapted if "transformer_blocks.0." in name}
    assert per_block == set(VIDEO_BRANCH) and len(adapted) == 2 * len(VIDEO_BRANCH)  # 2 blocks
    assert not any(part in name for name in adapted for part in ("audio_", "video_to_audio", "audio_to_video"))


def _ltx2_index(folder, text_encoder, vocoder="LTX2VocoderWithBWE", duration_head=True):
    """A model_index.json as diffusers 0.42.1's LTX2Pipeline.save_pretrained writes one (components as [library, class],
    an absent optional one as [null, null]), written by hand: no LTX-2.5 of diffusers' classes is built here."""
    index = {"_class_name": "LTX2Pipeline", "_diffusers_version": "0.42.1", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "vae": ["diffusers", "AutoencoderKLLTX2Video"], "audio_vae": ["diffusers", "AutoencoderKLLTX2Audio"],
             "text_encoder": ["transformers", text_encoder], "tokenizer": ["transformers", "GemmaTokenizerFast"],
             "connectors": ["ltx2", "LTX2TextConnectors"], "transformer": ["diffusers", "LTX2VideoTransformer3DModel"],
             "vocoder": ["ltx2", vocoder], "processor": [None, None], "prompt_enhancer": [None, None],
             "duration_head": ["ltx2", "LTX2DurationHead"] if duration_head else [None, None]}
    for part in [name for name, entry in index.items() if isinstance(entry, list) and entry[1] is not None] + ["diffusion_decoder"]:
        (folder / part).mkdir(parents=True)  # its parts, empty (and LTX-2.5's decoder; a part missing is refused: tests/gen/test_missing_parts.py)
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


def test_an_ltx25_is_known_by_its_files_and_never_takes_ltx23s_settings(tmp_path):
    # LTX-2.5's layout: a Gemma-4 text encoder, a duration head and LTX-2.3's 48 kHz vocoder (which alone said LTX-2.3)
    ltx25 = _ltx2_index(tmp_path / "LTX-2.5-finetune", "Gemma4UnifiedForConditionalGeneration")
    assert family_of(ltx25) is LTX25 and regenerator_of(ltx25).family is LTX25
    config = GeneratorConfig(name=ltx25)
    # Lightricks' ltx_pipelines @2362161: LTX_2_4_PARAMS for 2.4 and on (30 steps, STG block 28), 1024 Gemma tokens
    assert (config.height, config.width, config.num_frames, config.fps, config.num_inference_steps) == (512, 768, 121, 24.0, 30)
    assert (config.guidance_scale, config.stg_scale, config.modality_scale, config.guidance_rescale) == (3.0, 1.0, 3.0, 0.7)
    assert (config.audio_guidance_scale, config.stg_blocks, config.max_sequence_length) == (7.0, [28], 1024)
    assert family_of(_ltx2_index(tmp_path / "no-head", "Gemma4UnifiedForConditionalGeneration", duration_head=False)) is LTX25
    assert GeneratorConfig(name="Lightricks/LTX-2.5-Diffusers").num_inference_steps == 30  # listed: known by name without its files
    # the Gemma-3 releases are as before: the vocoder tells them apart
    assert family_of(_ltx2_index(tmp_path / "ltx23", "Gemma3ForConditionalGeneration", duration_head=False)) is LTX23
    assert family_of(_ltx2_index(tmp_path / "ltx2", "Gemma3ForConditionalGeneration", "LTX2Vocoder", duration_head=False)) is LTX2
    # a release we have no source for is refused in one line naming the key, never given another release's settings
    for name, encoder, head in (("gemma5", "Gemma5ForConditionalGeneration", False), ("gemma3-with-head", "Gemma3ForConditionalGeneration", True)):
        folder = _ltx2_index(tmp_path / name, encoder, duration_head=head)
        with pytest.raises(UnknownGeneratorError, match=rf"^generator\.name='{folder}' is an LTX-2 pipeline of no release known here .*"
                                                       r"refused rather than run with another release's") as refused:
            GeneratorConfig(name=folder)
        assert "\n" not in str(refused.value)
        with pytest.raises(UnknownGeneratorError, match=r"^regenerator\.name="):
            regenerator_of(folder)


def _null_ratio_ltx2(folder):
    """A tiny LTX-2 whose VAE is built with diffusers' own class at the size of diffusers' own tests (one block, a 1x
    patch: 2x in space and time) and no explicit compression ratios, saved by diffusers: its vae/config.json has
    ``spatial_compression_ratio: null`` and ``temporal_compression_ratio: null``, which the class derives."""
    from diffusers import AutoencoderKLLTX2Video

    from cac_align.gen.families.ltx2_tiny import _VIDEO_LATENT

    pipe = build_tiny_ltx2_pipeline(0)
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(in_channels=3, out_channels=3, latent_channels=_VIDEO_LATENT, block_out_channels=(8,), decoder_block_out_channels=(8,),
                                 layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
                                 decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatiotemporal",),
                                 upsample_type=("spatiotemporal",), upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False,
                                 patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    pipe.register_modules(vae=vae)
    pipe.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def null_ratio_ltx2(tmp_path_factory):
    return _null_ratio_ltx2(tmp_path_factory.mktemp("null_ratios") / "ltx2")


def test_a_vae_config_with_null_ratios_is_read_as_its_class_derives_them(null_ratio_ltx2):
    """Issue #100, item 11: diffusers writes null where its class derives the ratios; they are read as the class
    derives them (2x and 2x here), and a size that does not fit those ratios is refused in one line before anything
    loads."""
    from cac_align.config import RecipeError, load_config
    from cac_align.jobs.best_of_n import BonConfig
    from conftest import REPO_ROOT

    folder = null_ratio_ltx2
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["spatial_compression_ratio"] is None and vae["temporal_compression_ratio"] is None
    family = family_of(str(folder))
    assert (family.spatial_multiple, family.frame_multiple) == (2, 2)  # the release's are 32 and 8
    with pytest.raises(RecipeError, match=r"num_frames must be 2k \+ 1 \(LTX-2's VAE compresses time 2x\), got 10") as refused:
        load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_ltx2.yaml", [f"generator.name={folder}", "generator.num_frames=10"], job="bon")
    assert "\n" not in str(refused.value)


@pytest.mark.slow  # about 15 s on 2 idle cores (bon and a flow-grpo step from the folder)
def test_a_vae_config_with_null_ratios_runs_bon_and_flow_grpo_from_its_folder(null_ratio_ltx2, tmp_path):
    """A size that fits the ratios the class derives (2x and 2x: 32 x 32 x 5, which the release's 8x in time refuses;
    diffusers' LTX2Pipeline asks sides of 32k): bon and a flow-grpo step run from the folder (refused before this
    round: the ratios were read from the two null fields alone). The toy reward: the folder's VAE is what is tested,
    not the judges (the recipes' other tests run them); at the recipes' 64 x 64 x 9 this VAE's latents are 4x as
    many tokens and the test took about 200 s of CI's slow suite."""
    from cac_align.cli import main

    folder = null_ratio_ltx2
    small = ["generator.height=32", "generator.width=32", "generator.num_frames=5", "reward:={name: brightness}"]
    assert main(["bon", "--config", "align/bon_tiny_ltx2", f"generator.name={folder}", f"out_dir={tmp_path / 'bon'}", "n=2", *small]) == 0
    assert len((tmp_path / "bon" / "candidates.jsonl").read_text().splitlines()) == 2 * 2
    assert main(["flow-grpo", "--config", "align/flow_grpo_tiny_ltx2", f"generator.name={folder}", f"out_dir={tmp_path / 'grpo'}", "steps=1",
                 "group_size=2", "sample_batch_size=2", "train_batch_size=2", "log_with=none", "checkpoint_every=0", "eval_prompts=null",
                 *small]) == 0
    assert (tmp_path / "grpo" / "lora").is_dir()
