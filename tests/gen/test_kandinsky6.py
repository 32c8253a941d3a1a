"""Kandinsky 6 (cac_align.gen.families.kandinsky6): a folder or cached hub id is read by its model_index.json
(the scheduler tells SFT from pi-Flow); with noise 0 our sampler (the family's denoiser, one step at a time)
gives the pipeline's own video and audio latents, text to video and image to video, and another image or
another guidance does not; Best-of-N writes 24 fps videos with 44.1 kHz sound (AAC in the mp4, a WAV
beside); pi-Flow checkpoints sample in bon and are refused by the trainers in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cac_align.config import RecipeError
from cac_align.gen.family import family_from_index, family_of
from cac_align.gen.families.kandinsky6 import KANDINSKY6, KANDINSKY6_DISTILLED, SFT_CHECKPOINT, _negative, _with_mode_reference
from cac_align.gen.generator import GeneratorConfig
from conftest import REPO_ROOT

TINY = dict(name="tiny-random:kandinsky6", dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=9,
            num_inference_steps=2, max_sequence_length=32)
PROMPTS = ["a dog in a park", "a red car on the street"]
SEEDS = (7, 8)
IMAGES = [REPO_ROOT / "recipes/align/image_red_ball.png", REPO_ROOT / "recipes/align/image_blue_cup.png"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _index(scheduler: str) -> dict:
    return {"_class_name": "Kandinsky6TI2VAPipeline", "scheduler": ["diffusers", scheduler], "transformer": ["diffusers", "Kandinsky6Transformer3DModel"],
            "audio_vae": ["diffusers", "MMAudioVAE"], "vocoder": ["diffusers", "MMAudioVocoder"]}


def _folder(folder: Path, index: dict) -> Path:
    """A folder of ``index`` and an empty folder for each part it lists (a part missing is refused: tests/gen/test_missing_parts.py)."""
    for part in [name for name, entry in index.items() if isinstance(entry, list)]:
        (folder / part).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_the_index_names_kandinsky6_and_its_scheduler_tells_sft_from_pi_flow(tmp_path):
    assert family_from_index(_index("FlowMatchEulerDiscreteScheduler"), "x") is KANDINSKY6
    assert family_from_index(_index("PiflowScheduler"), "x") is KANDINSKY6_DISTILLED
    assert family_from_index({"_class_name": "WanPipeline"}, "x").name == "wan2.1"  # the others still read theirs
    for scheduler, family, settings in (("FlowMatchEulerDiscreteScheduler", KANDINSKY6, (50, 5.0)), ("PiflowScheduler", KANDINSKY6_DISTILLED, (16, 1.0))):
        folder = _folder(tmp_path / f"someones-k6-{scheduler}", _index(scheduler))  # any name: its file decides
        config = GeneratorConfig(name=str(folder))
        assert config.family is family
        # the authors' README (Pro: 864 x 480, 125 frames at 24 fps), the pipeline's 1024 text tokens
        assert (config.height, config.width, config.num_frames, config.fps, config.max_sequence_length) == (480, 864, 125, 24.0, 1024)
        assert (config.num_inference_steps, config.guidance_scale) == settings and config.flow_shift is None  # the checkpoint's shift


def test_release_hub_ids_are_known_offline_and_frames_are_4k_plus_1(hub_cache):
    assert family_of(SFT_CHECKPOINT) is KANDINSKY6  # not cached, no network: its listed name
    assert family_of("kandinskylab/Kandinsky-6.0-Pro-distill-5s-Diffusers") is KANDINSKY6_DISTILLED
    assert GeneratorConfig(**{**TINY, "num_frames": 13}).num_frames == 13
    with pytest.raises(ValueError, match=r"num_frames must be 4k \+ 1"):
        GeneratorConfig(**{**TINY, "num_frames": 11})
    with pytest.raises(ValueError, match="multiples of 16"):
        GeneratorConfig(**{**TINY, "height": 40})
    with pytest.raises(ValueError, match="stg_scale does not apply"):
        GeneratorConfig(**{**TINY, "stg_scale": 1.0})


def test_context_parallel_repair_an_empty_negative_prompt_and_pi_flow_training_are_refused_in_one_line(tmp_path):
    config = GeneratorConfig(**TINY)
    KANDINSKY6.check_context_parallel(config, 1, {})  # one process: nothing to split
    for refuse in (lambda: KANDINSKY6.check_context_parallel(config, 2, {}), lambda: KANDINSKY6.context_parallel_plan(None)):
        with pytest.raises(RecipeError, match="parallel.context_parallel must be 1 for Kandinsky 6: diffusers 0.42.1 declares no _cp_plan") as error:
            refuse()
        assert "\n" not in str(error.value) and "fsdp2" in str(error.value)
    with pytest.raises(ValueError, match="negative_prompt='' cannot turn Kandinsky 6's negative prompt off") as error:
        _negative(None, "")
    assert "\n" not in str(error.value)
    with pytest.raises(RecipeError, match=rf"PiflowScheduler.*not trained here; train the SFT checkpoint \(generator.name={SFT_CHECKPOINT}\)") as error:
        KANDINSKY6_DISTILLED.denoiser(None)  # refused before the pipeline is looked at
    assert "\n" not in str(error.value)
    from cac_align.gen.family import UnknownGeneratorError, regenerator_of

    folder = _folder(tmp_path / "k6", _index("FlowMatchEulerDiscreteScheduler"))
    with pytest.raises(UnknownGeneratorError, match=r"regenerator.name=.* is a Kandinsky6TI2VAPipeline, which cannot condition on the frames repair keeps") as error:
        regenerator_of(str(folder))
    assert "\n" not in str(error.value)
    assert KANDINSKY6.block_classes == ("Kandinsky6TransformerEncoderBlock", "Kandinsky6FusedTransformerDecoderBlock")  # FSDP2's units


@pytest.fixture(scope="module")
def tiny():
    from cac_align.gen.generator import build_generator

    config = GeneratorConfig(**TINY)
    return config, build_generator(config)


def _images(paths):
    from cac_align.run.input_files import PromptImage

    return None if paths is None else [PromptImage.of(Path(p)) for p in paths]


def _ours(config, pipe, images=None, seeds=SEEDS):
    from cac_align.gen.generator import encode_conditioning, sample_with_log_probs

    family = config.family
    guidance = family.guidance(config)
    cond, negative = encode_conditioning(pipe, family, PROMPTS, _images(images), config, guidance)
    sigmas, timesteps = family.schedule(pipe, config)
    return sample_with_log_probs(pipe, family.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in seeds], config=config,
                                 sigmas=sigmas, timesteps=timesteps, noise_level=0.0)


def _pipelines_own(pipe, images=None, mode=True, guidance=5.0):
    """The pipeline's own final latents, one call per prompt (each its generator): video (C, F', H', W'), audio (C_a, L).
    ``mode``: with its encode_image taking the posterior's mode (what bon runs); False: diffusers' class as it is."""
    from diffusers.utils import load_image

    run = _with_mode_reference(pipe) if mode else pipe
    out = []
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        image = None if images is None else load_image(str(images[i]))
        video, audio = run(prompt=[prompt], image=image, generator=[torch.Generator().manual_seed(seed)], height=32, width=32, num_frames=9,
                           num_inference_steps=2, guidance_scale=guidance, max_sequence_length=32, output_type="latent", return_dict=False)
        out.append((video[0], audio[0]))
    return out


@pytest.mark.slow  # the tiny build (3 s), two samplers and six pipeline calls: `pytest -m slow`
@pytest.mark.parametrize("images", [None, IMAGES], ids=["t2v", "i2v"])
def test_with_noise_0_our_sampler_gives_the_pipelines_own_video_and_audio_latents(tiny, images):
    config, pipe = tiny
    ours = _ours(config, pipe, images)
    assert ours.latents.shape == (2, 3, 4, 3, 4, 4) and ours.side.shape == (2, 3, 17, 4)  # 9 frames -> 3 x 4 x 4; ceil(9/24 x 44100/1024) = 17
    own = _pipelines_own(pipe, images)
    for i, (video, audio) in enumerate(own):
        torch.testing.assert_close(ours.latents[i, -1], video, rtol=0, atol=2e-5)
        torch.testing.assert_close(ours.side[i, -1].T, audio, rtol=0, atol=2e-5)
        assert video.abs().mean() > 0.5 and audio.abs().mean() > 0.5  # not trivially equal
    # controls: guidance 3 instead of 5, and (image to video) each prompt animating the other's image
    for control in (_pipelines_own(pipe, images, guidance=3.0), *([_pipelines_own(pipe, IMAGES[::-1])] if images else [])):
        # (50x the agreement above: the tiny random transformer moves little with its image)
        assert (control[0][0] - ours.latents[0, -1]).abs().max() > 1e-3 and (control[0][1] - ours.side[0, -1].T).abs().max() > 1e-3
    if images:  # diffusers' own encode_image draws the image's latents: the departure the module docstring states, measured
        drawn = _pipelines_own(pipe, images, mode=False)
        assert (drawn[0][0] - ours.latents[0, -1]).abs().max() > 1e-3


@pytest.mark.slow  # bon's path twice and once more from a saved folder and a cached hub id nobody lists
def test_bon_videos_are_the_samplers_and_the_same_seed_gives_the_same_frames_from_a_folder_and_the_cache(tiny, tmp_path, hub_cache):
    from cac_align.gen.generator import build_generator, generate_videos

    config, pipe = tiny
    for images in (None, _images(IMAGES)):
        made = generate_videos(pipe, config, PROMPTS, list(SEEDS), images=images)
        assert made.frames.shape == (2, 9, 32, 32, 3) and made.audio.shape == (2, 1, 17 * 1024) and made.sample_rate == 44_100
        again = generate_videos(pipe, config, PROMPTS, list(SEEDS), images=images)
        assert np.array_equal(made.frames, again.frames) and np.array_equal(made.audio, again.audio)
        ours = _ours(config, pipe, None if images is None else IMAGES)
        decoded = config.family.decode(pipe, ours.latents[:, -1])
        assert np.abs(decoded.astype(int) - made.frames.astype(int)).max() <= 1  # the sampler's video at noise 0 is bon's (one level of rounding)
        sound, rate = config.family.decode_audio(pipe, ours.side[:, -1])
        assert rate == 44_100 and np.abs(sound - made.audio).max() < 1e-4
    other = generate_videos(pipe, config, PROMPTS, [9, 10])
    assert not np.array_equal(other.frames, made.frames if images is None else generate_videos(pipe, config, PROMPTS, list(SEEDS)).frames)
    # a folder saved by diffusers under an unlisted name, and the same files as an offline-cached hub id
    folder = tmp_path / "someone--k6-finetune"
    pipe.save_pretrained(str(folder))
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "Kandinsky6TI2VAPipeline"
    repo = hub_cache / "models--someone--k6-finetune"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    reference = generate_videos(pipe, config, PROMPTS, list(SEEDS))
    for name in (str(folder), "someone/k6-finetune"):
        loaded_config = GeneratorConfig(**{**TINY, "name": name})
        assert loaded_config.family is KANDINSKY6
        loaded = build_generator(loaded_config)
        remade = generate_videos(loaded, loaded_config, PROMPTS, list(SEEDS))
        assert np.abs(remade.frames.astype(int) - reference.frames.astype(int)).max() <= 1


@pytest.mark.slow  # bon on the tiny recipe, then the pi-Flow twin: bon samples it, flow-grpo refuses it before any step
def test_best_of_n_writes_24_fps_video_with_44_1_khz_aac_and_a_wav_and_pi_flow_samples_but_does_not_train(tmp_path, monkeypatch):
    import imageio_ffmpeg

    from cac_align.config import load_config
    from cac_align.jobs.best_of_n import BonConfig, run
    from cac_align.video import load_video, read_soundtrack

    monkeypatch.chdir(REPO_ROOT)  # the recipes' prompt file
    for name in ("tiny-random:kandinsky6", "tiny-random:kandinsky6-distill"):
        out = tmp_path / name.split(":")[1]
        config = load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_kandinsky6.yaml", [f"out_dir={out}", f"generator.name={name}"], job="bon")
        run(config)
        rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(r["valid"] for r in rows)
        mp4 = out / rows[0]["video"]
        done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(mp4)], capture_output=True, text=True)
        assert "Video: h264" in done.stderr and "Audio: aac" in done.stderr and "44100 Hz" in done.stderr and "24 fps" in done.stderr
        assert load_video(str(mp4)).frames.shape == (9, 32, 32, 3) and load_video(str(mp4)).fps == 24.0
        wav, rate = read_soundtrack(mp4.with_suffix(".wav"))
        assert rate == 44_100 and wav.shape == (1, 17 * 1024) and np.abs(wav).max() > 0  # mono, 17 audio latents of 1024 samples
    assert config.generator.guidance_scale == 1.0  # the distilled release's (no CFG)
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.flow_grpo import run as flow_grpo
    from cac_align.jobs.nft import NftConfig

    refused = rf"not trained here; train the SFT checkpoint \(generator.name={SFT_CHECKPOINT}\)"
    distill = "generator.name=tiny-random:kandinsky6-distill"
    for cls, job, recipe in ((FlowGrpoConfig, "flow-grpo", "flow_grpo"), (NftConfig, "nft", "nft"), (DpoConfig, "dpo", "dpo")):
        with pytest.raises(RecipeError, match=refused):  # refused as the recipe loads, before anything is built
            load_config(cls, REPO_ROOT / f"recipes/align/{recipe}_tiny_kandinsky6.yaml", [f"out_dir={tmp_path / job}", distill], job=job)
    # a recipe that names its LoRA's modules passes the config: the trainer's denoiser refuses it, before any step
    trainer = load_config(FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_kandinsky6.yaml",
                          [f"out_dir={tmp_path / 'train'}", distill, "lora.target_modules=[to_query]"], job="flow-grpo")
    with pytest.raises(RecipeError, match=refused):
        flow_grpo(trainer)
    assert not (tmp_path / "train" / "lora").exists() and not (tmp_path / "train" / "metrics.jsonl").exists()


@pytest.mark.slow  # a saved tiny folder counted from its configs on the meta device
def test_the_memory_plan_counts_a_saved_folder_from_its_configs(tiny, tmp_path):
    from cac_align.gen.lora import LoraSettings
    from cac_align.plan.check import plan_generator
    from cac_align.plan.counts import counted_generator
    from cac_align.plan.trace import audio_decode_bytes, traced_peak_bytes
    from cac_align.gen.parallel import ParallelSettings

    _, pipe = tiny
    pipe.save_pretrained(str(tmp_path / "k6"))
    config = GeneratorConfig(name=str(tmp_path / "k6"), device="cpu")  # the release's 480 x 864 x 125
    counts = counted_generator(config, LoraSettings())
    assert counts.transformers[0].parameters == sum(p.numel() for p in pipe.transformer.parameters())
    assert {c.name for c in counts.others} == {"vae", "audio_vae", "vocoder"} and [c.name for c in counts.encoders] == ["text_encoder", "text_encoder_2"]
    assert (counts.hidden_size, counts.num_heads) == (32, 2)  # model_dim 32, heads of sum(axes_dims) = 16
    plan, _ = plan_generator(config, LoraSettings(), ParallelSettings(), 1, batch_per_process=1, gradient_checkpointing=True)
    assert "1 x 51,840 tokens" in plan.table()  # 32 latent frames x 30 x 54 patches
    # the soundtracks' decode traced with the decode of a sample batch: the audio VAE and the vocoder on the meta device
    family = config.family
    sound = audio_decode_bytes(counts, 2, 121, 24.0, "float32")
    vocoder_out = 2 * 260 * 1024 * 4  # ceil(121 / 24 x 44100 / 1024) = 260 latents of 1024 samples, 2 videos, float32
    decode, latents, kept = family.audio_decode({"audio_vae": pipe.audio_vae, "vocoder": pipe.vocoder}, 2, 121, 24.0, "float32")
    assert sound >= vocoder_out and sound == traced_peak_bytes(decode, latents, keep=kept)
    assert audio_decode_bytes(counts, 4, 121, 24.0, "float32") > sound  # it grows with the batch
    plan, _ = plan_generator(config, LoraSettings(), ParallelSettings(), 1, batch_per_process=1, gradient_checkpointing=True, decode_batch=2)
    assert "or its sound's (audio VAE + vocoder" in plan.table()


@pytest.mark.slow  # the Pro's configs on the meta device, planned at 2 and 4 processes (about 5 s)
def test_the_real_recipes_header_is_the_memory_plans_gpu_count(tmp_path, hub_cache):
    """flow_grpo_kandinsky6_ur_cac.yaml's header: 4 x 80 GB GPUs at least at 81 frames (2 do not fit); the release's
    125 frames fit at no sharding. Planned from the Pro's published configs in an offline cache, as a run plans it."""
    from omegaconf import OmegaConf

    from cac_align.gen.lora import LoraSettings
    from cac_align.plan.check import plan_generator
    from cac_align.plan.counts import GIB
    from cac_align.gen.parallel import ParallelSettings
    from full_size_configs import KANDINSKY6_PRO, write_hub_cache

    write_hub_cache(hub_cache, {SFT_CHECKPOINT: KANDINSKY6_PRO})
    recipe = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "recipes/align/flow_grpo_kandinsky6_ur_cac.yaml"))
    generator = GeneratorConfig(**{**recipe["generator"], "device": "cpu"})
    assert generator.family is KANDINSKY6 and generator.num_frames == 81
    lora = LoraSettings(rank=32, alpha=64, target_modules=list(KANDINSKY6.lora_target_modules))

    def peak(processes, frames=81):
        config = GeneratorConfig(**{**recipe["generator"], "device": "cpu", "num_frames": frames})
        plan, _ = plan_generator(config, lora, ParallelSettings(shard="fsdp2"), processes, batch_per_process=2, gradient_checkpointing=True,
                                 decode_batch=1)  # train_batch_size 1 x 2 rows with CFG; sample_batch_size 1
        return plan.peak_bytes / GIB, plan

    four, plan = peak(4)
    h100 = 81_559 / 1024  # GiB an H100 80 GB reports (81,559 MiB)
    assert 60 < four < h100 and peak(2)[0] > h100
    assert 29e9 < sum(t.parameters for t in plan.inputs["counts"].transformers) < 31e9  # the README's 29 B
    assert peak(16, frames=125)[0] > h100  # the release's 125 frames: no sharding fits them (header)


def test_a_lora_we_write_loads_into_diffusers_own_kandinsky6_as_docs_say(tmp_path):
    """docs/using_your_lora.md (issue #100, item 10): Kandinsky6TI2VAPipeline has no load_lora_weights; the file our
    trainers write loads with ``pipe.transformer.load_lora_adapter(folder, weight_name=..., prefix="transformer")`` and
    gives the trained weights (B nonzero here, as a trained LoRA's), in a fresh pipeline built by diffusers' classes."""
    import torch

    from cac_align.gen.family import family_of
    from cac_align.gen.generator import LORA_WEIGHT_NAME
    from conftest import write_trained_lora

    family = family_of("tiny-random:kandinsky6")
    trained = family.build_tiny("tiny-random:kandinsky6", seed=0)
    assert not hasattr(trained, "load_lora_weights")
    write_trained_lora(trained.transformer, list(family.lora_target_modules), tmp_path / "lora", family.pipeline_class)
    fresh = family.build_tiny("tiny-random:kandinsky6", seed=0)
    fresh.transformer.load_lora_adapter(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME, prefix="transformer", adapter_name="mine")
    ours = {n.replace(".default", ""): p for n, p in trained.transformer.named_parameters() if "lora_" in n}
    theirs = {n.replace(".mine", ""): p for n, p in fresh.transformer.named_parameters() if "lora_" in n}
    assert ours.keys() == theirs.keys() and ours
    assert all(torch.equal(ours[n].float(), theirs[n].float()) for n in ours)
