"""MiniMax-H3 (cac_align.gen.families.minimax_h3): a modular pipeline's folder is read by its
modular_model_index.json under any name; with noise 0 our sampler (the family's denoiser, one step at
a time) gives the modular pipeline's own video and audio latents, and the audio on the video's
schedule (the control) does not; Best-of-N writes 24 fps videos with their soundtrack and a WAV."""

from __future__ import annotations

import json
import shutil
import subprocess
import wave

import numpy as np
import pytest
import torch

from cac_align.gen.family import family_from_index, family_of
from cac_align.gen.generator import GeneratorConfig
from cac_align.gen.families.minimax_h3 import MINIMAX_H3, audio_sigma
from conftest import REPO_ROOT

TINY = dict(name="tiny-random:minimax-h3", dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_inference_steps=3,
            max_sequence_length=32)
PROMPTS = ["a dog in a park", "a red car on the street slowly"]
SEEDS = (7, 8)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_the_audio_noise_level_follows_the_videos_through_both_shifts():
    # b = 0.5: video 12 * 0.5 / (1 + 11 * 0.5) = 6 / 6.5; audio 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    got = audio_sigma(torch.tensor([1.0, 6.0 / 6.5, 0.0], dtype=torch.float64), 12.0, 3.0)
    assert torch.allclose(got, torch.tensor([1.0, 0.75, 0.0], dtype=torch.float64), atol=1e-12)


def test_a_modular_index_is_minimax_h3_and_the_others_are_not(tmp_path):
    index = {"_class_name": "MiniMaxH3ModularPipeline", "_blocks_class_name": "MiniMaxH3Blocks",
             "transformer": ["diffusers", "MiniMaxH3Transformer3DModel", {"pretrained_model_name_or_path": "/elsewhere"}]}
    assert family_from_index(index, "x") is MINIMAX_H3
    assert family_from_index({"_class_name": "WanPipeline"}, "x").name == "wan2.1"  # the others still read theirs
    folder = tmp_path / "someones-h3-finetune"  # any name: its file decides
    (folder / "transformer").mkdir(parents=True)  # the part its index lists (a part missing: tests/gen/test_missing_parts.py)
    (folder / "modular_model_index.json").write_text(json.dumps(index))
    config = GeneratorConfig(name=str(folder))
    assert config.family is MINIMAX_H3
    assert (config.height, config.width, config.num_frames, config.fps, config.num_inference_steps) == (768, 1344, 124, 24.0, 50)
    assert config.guidance_scale is None and config.flow_shift is None  # guidance-distilled; the checkpoint's shift


def test_the_release_hub_id_is_known_offline_and_a_clip_is_17n_plus_5_frames(hub_cache):
    assert family_of("MiniMaxAI/MiniMax-H3") is MINIMAX_H3  # not cached, no network: its listed name
    assert GeneratorConfig(**TINY, num_frames=141).num_frames == 141  # 17 * 8 + 5
    with pytest.raises(ValueError, match=r"num_frames must be 17k \+ 5"):
        GeneratorConfig(**TINY, num_frames=121)
    with pytest.raises(ValueError, match="guidance_scale does not apply"):
        GeneratorConfig(**TINY, guidance_scale=5.0)
    with pytest.raises(ValueError, match="flow_shift does not apply"):  # its two schedulers' shifts are the checkpoint's
        GeneratorConfig(**TINY, flow_shift=5.0)


def test_context_parallel_is_refused_in_one_line():
    from cac_align.config import RecipeError

    config = GeneratorConfig(**TINY)
    MINIMAX_H3.check_context_parallel(config, 1, {})  # one process: nothing to split
    with pytest.raises(RecipeError, match="parallel.context_parallel must be 1 for MiniMax-H3") as error:
        MINIMAX_H3.check_context_parallel(config, 2, {"num_attention_heads": 2})
    assert "\n" not in str(error.value) and "fsdp2" in str(error.value)
    assert MINIMAX_H3.block_classes == ("MiniMaxH3TransformerBlock", "MiniMaxH3TokenRefinerBlock")  # FSDP2's units


@pytest.fixture(scope="module")
def tiny():
    from cac_align.gen.generator import build_generator

    config = GeneratorConfig(**TINY)
    return config, build_generator(config)


@pytest.fixture(scope="module")
def sampled(tiny):
    """Our sampler's trajectory of PROMPTS x SEEDS with noise 0 on the tiny pipeline."""
    return _ours(*tiny)


def _ours(config, pipe):
    from cac_align.gen.generator import sample_with_log_probs

    family = config.family
    cond, negative = family.encode_prompts(pipe, PROMPTS, None, family.guidance(config), config.max_sequence_length)
    sigmas, timesteps = family.schedule(pipe, config)
    return sample_with_log_probs(pipe, family.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS], config=config,
                                 sigmas=sigmas, timesteps=timesteps, noise_level=0.0)


def _pipelines_own(pipe):
    """The modular pipeline's own latents: MiniMaxH3Blocks without the decoders, on the same components."""
    from diffusers.modular_pipelines import MiniMaxH3Blocks

    blocks = MiniMaxH3Blocks()
    blocks.sub_blocks.pop("decode")
    own = blocks.init_pipeline()
    own.update_components(**{k: v for k, v in pipe.components.items() if v is not None and k != "video_processor"})
    own.set_progress_bar_config(disable=True)
    out = []
    for prompt, seed in zip(PROMPTS, SEEDS):
        state = own(prompt=prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=3, height=32, width=32, num_frames=124)
        out.append((state.get("latents")[0], state.get("audio_latents")))  # (C, F', H', W'), (2, C_a, A)
    return out


@pytest.mark.slow  # the tiny build, our sampler and the pipeline: `pytest -m slow`
def test_with_noise_0_our_sampler_gives_the_pipelines_own_video_and_audio_latents(tiny, sampled, monkeypatch):
    config, pipe = tiny
    assert config.num_frames == 124
    own = _pipelines_own(pipe)
    ours = sampled
    assert ours.latents.shape == (2, 3, 4, 37, 2, 2) and ours.side.shape == (2, 3, 414, 4)  # 3 grid points: 2 forwards; 207 latents x 2 channels
    for i, (video, audio) in enumerate(own):
        ours_audio = ours.side[i, -1].reshape(2, -1, audio.shape[1]).permute(0, 2, 1)
        torch.testing.assert_close(ours.latents[i, -1], video, rtol=0, atol=2e-6)
        torch.testing.assert_close(ours_audio, audio, rtol=0, atol=2e-6)
        assert video.abs().mean() > 0.5 and audio.abs().mean() > 0.5  # not trivially equal
    # the control: the audio stepped on the video's sigmas (as LTX-2's is) is not the pipeline's
    from cac_align.gen.families.minimax_h3 import MiniMaxH3Family

    monkeypatch.setattr(MiniMaxH3Family, "side_sigmas", lambda self, pipe, config, sigmas: sigmas)
    control = _ours(config, pipe)
    ours_audio = control.side[0, -1].reshape(2, -1, own[0][1].shape[1]).permute(0, 2, 1)
    assert (ours_audio - own[0][1]).abs().max() > 1e-2


@pytest.mark.slow  # the tiny build and our sampler: `pytest -m slow`
def test_the_plan_counts_the_denoising_steps_the_sampler_runs(tiny, sampled):
    """Issue #105: MiniMax-H3's grid of ``num_inference_steps`` points ends at 0, so its sampler makes one fewer transformer
    call than the setting; the network table counts what it runs (3 points: 2 steps)."""
    from types import SimpleNamespace

    from cac_align.plan.network import step_traffic

    config, _ = tiny
    ran = sampled.latents.shape[1] - 1  # the trajectory holds the initial latents and one more per step
    assert ran == MINIMAX_H3.denoising_steps(config.num_inference_steps) == config.num_inference_steps - 1 == 2
    recipe = SimpleNamespace(prompts_per_step=1, group_size=2, sample_batch_size=2, train_batch_size=2, timestep_fraction=1.0, beta=0.0,
                             updates_per_step=1, generator=config, parallel=SimpleNamespace(context_parallel=1, reshard_after_forward=True))
    assert step_traffic(recipe, 1, "flow-grpo").sampling_gathers == ran  # one sampling call of 2 samples: one gather a step


@pytest.mark.slow  # a saved pipeline reloaded under an unlisted name, the same latents
def test_a_folder_saved_by_diffusers_under_an_unlisted_name_loads_and_samples_the_same(tiny, sampled, tmp_path, hub_cache):
    from cac_align.gen.generator import build_generator

    config, pipe = tiny
    saved = tmp_path / "saved-elsewhere"
    pipe.save_pretrained(str(saved))  # diffusers' own: it writes this path into modular_model_index.json
    moved = tmp_path / "someone--h3-finetune"
    saved.rename(moved)  # the recorded path no longer exists: the folder's own subfolders are read
    assert not (moved / "model_index.json").exists() and str(saved) in (moved / "modular_model_index.json").read_text()
    loaded_config = GeneratorConfig(**{**TINY, "name": str(moved)})
    assert loaded_config.family is MINIMAX_H3
    loaded = build_generator(loaded_config)
    assert all(torch.equal(a, b) for a, b in zip(loaded.transformer.state_dict().values(), pipe.transformer.state_dict().values()))
    assert loaded.transformer_ref is None  # the reference-to-video transformer is not loaded
    # the same latents up to float rounding (the reloaded text encoder's attention kernel may differ in the last bit)
    torch.testing.assert_close(_ours(loaded_config, loaded).latents, sampled.latents, rtol=0, atol=1e-6)
    # the same files in the Hugging Face cache under a hub id nobody lists, offline
    repo = hub_cache / "models--someone--h3-finetune"
    shutil.copytree(moved, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    cached = GeneratorConfig(**{**TINY, "name": "someone/h3-finetune"})
    assert cached.family is MINIMAX_H3
    from_cache = build_generator(cached)
    assert all(torch.equal(a, b) for a, b in zip(from_cache.transformer.state_dict().values(), pipe.transformer.state_dict().values()))


@pytest.mark.slow  # 4 videos of 124 frames through the tiny VAEs, then DPO on its best and worst
def test_best_of_n_writes_24_fps_videos_with_their_soundtrack_and_a_wav_and_dpo_trains_on_them(tmp_path, monkeypatch):
    import imageio_ffmpeg

    from cac_align.config import load_config
    from cac_align.jobs.best_of_n import BonConfig, run
    from cac_align.video import load_video

    monkeypatch.chdir(REPO_ROOT)  # the recipes' prompt file
    config = load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_minimax_h3.yaml", [f"out_dir={tmp_path / 'run'}"], job="bon")
    run(config)
    rows = [json.loads(line) for line in (tmp_path / "run/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["valid"] for r in rows)
    mp4 = tmp_path / "run" / rows[0]["video"]
    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(mp4)], capture_output=True, text=True)
    assert "Video: h264" in done.stderr and "Audio: aac" in done.stderr and "24 fps" in done.stderr
    video = load_video(str(mp4))
    assert video.fps == 24.0 and video.frames.shape == (124, 32, 32, 3)
    with wave.open(str(mp4.with_suffix(".wav"))) as handle:  # 207 latents x 4 samples, stereo, the tiny VAE's 160 Hz
        assert (handle.getnchannels(), handle.getframerate(), handle.getsampwidth(), handle.getnframes()) == (2, 160, 2, 828)
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    assert np.abs(pcm).max() > 0  # a soundtrack, not silence

    # dpo on the run's pairs (each prompt's best and worst): the LoRA moves, and loads back into the pipeline
    from safetensors.torch import load_file

    from cac_align.gen.generator import build_generator
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.dpo import run as run_dpo

    dpo = load_config(DpoConfig, REPO_ROOT / "recipes/align/dpo_tiny_minimax_h3.yaml", [f"out_dir={tmp_path / 'dpo'}", f"pairs=[{tmp_path / 'run'}]",
                                                                                        "steps=1", "checkpoint_every=1"], job="dpo")
    run_dpo(dpo)
    lora = load_file(str(tmp_path / "dpo/lora/pytorch_lora_weights.safetensors"))
    assert any(("lora_B" in k or "lora.up" in k) and v.abs().max() > 0 for k, v in lora.items())  # B (diffusers' "up") starts at 0: it trained
    trained = build_generator(GeneratorConfig(**{**TINY, "lora": str(tmp_path / "dpo/lora")}))
    assert any("lora_B" in n and p.abs().max() > 0 for n, p in trained.transformer.named_parameters())


@pytest.mark.slow  # the saved tiny folder: counted from its configs on the meta device
def test_the_memory_plan_counts_a_saved_folder_from_its_configs(tiny, tmp_path):
    from cac_align.gen.lora import LoraSettings
    from cac_align.plan.check import plan_generator
    from cac_align.plan.counts import counted_generator
    from cac_align.gen.parallel import ParallelSettings

    _, pipe = tiny
    pipe.save_pretrained(str(tmp_path / "h3"))
    config = GeneratorConfig(name=str(tmp_path / "h3"), device="cpu")  # the release's 768 x 1344 x 124
    counts = counted_generator(config, LoraSettings())
    assert counts.transformers[0].parameters == sum(p.numel() for p in pipe.transformer.parameters())
    assert {c.name for c in counts.others} == {"vae", "audio_vae"} and counts.encoders[0].name == "text_encoder"  # no transformer_ref
    assert all(p.is_meta for p in counts.vae.parameters())  # built from its config.json, not loaded
    plan, _ = plan_generator(config, LoraSettings(), ParallelSettings(), 1, batch_per_process=1, gradient_checkpointing=True)
    assert "1 x 38,222 tokens" in plan.table()  # 37 x 24 x 42 video + 2 x 207 audio + 512 text rows


def test_localized_credit_is_refused_in_one_line_where_the_latent_grid_has_no_map(tmp_path):
    """rl/credit.py maps a window onto 1 + 4k latent frames; MiniMax-H3's 17n + 5 frames make 5n + 2: refused
    before anything is built, naming the family and the setting. Control: Wan's tiny recipe passes the check."""
    from cac_align.config import RecipeError, load_config
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, _Trainer
    from conftest import REPO_ROOT

    recipe = REPO_ROOT / "recipes/align/flow_grpo_tiny_minimax_h3.yaml"
    config = load_config(FlowGrpoConfig, recipe, [f"out_dir={tmp_path / 'run'}", "advantage.localize.enabled=true"], job="flow-grpo")
    with pytest.raises(RecipeError, match=r"advantage.localize: MiniMax-H3's latent grid has no credit map.*advantage.localize.enabled=false"):
        _Trainer(config).setup()
    assert not (tmp_path / "run").exists()
    from cac_align.gen.family import family_of

    assert getattr(family_of("tiny-random:wan"), "localized_credit", True)
