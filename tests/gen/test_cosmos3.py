"""Cosmos 3 (cac_align.gen.families.cosmos3, issue #107): a saved folder of any name and a cached hub id nobody lists
are read by their model_index.json; bon's frames are diffusers' Cosmos3OmniPipeline.__call__'s with the same seed, hash
for hash, and its waveform exactly (text to video and image to video, one call a row), another seed differs; bon writes
24 fps mp4s with their 48 kHz AAC track and a WAV; what is not run (frame counts not 4k + 1, one frame, the distilled and
text-to-image releases, repair, context parallel, action conditions, a guardrail that is not installed, training a
quantized (FP8) transformer) is refused in one line. The trainers (stage 2): every recipe takes the generation stream's attention (and the sound's projections with
audio: trained); the sampler at noise 0 is the pipeline run with the Euler scheduler on the trainers' grid, video and
sound latents torch.equal (text and image to video); flow-grpo's log-probabilities, the sound's too, are a hand
computation from that scheduler's own step and recompute from the record; a LoRA we write loads with the transformer's
load_lora_adapter and gives our frames; by a folder and an unlisted hub id, bon, flow-grpo, nft and dpo each run one
step, the LoRA moved and nothing else (slow). The memory plan of the Nano from its configs shipped with cac-align: its
parameters, LoRA and tokens counted, its activations one packed sequence a forward. Routed sound-only rewards:
tests/jobs/test_audio_training.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cac_align.config import RecipeError
from cac_align.gen.families.cosmos3 import COSMOS3, NANO, SUPER
from cac_align.gen.family import UnknownGeneratorError, family_from_index, family_of, regenerator_of
from cac_align.gen.generator import GeneratorConfig, frames_to_uint8
from conftest import REPO_ROOT

TINY = dict(name="tiny-random:cosmos3", dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=9,
            num_inference_steps=2)
PROMPTS = ["a dog in a park", "a red car on the street"]
SEEDS = (7, 8)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hashes(frames):
    return [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames]


@pytest.fixture(scope="module")
def tiny():
    from cac_align.gen.generator import build_generator

    config = GeneratorConfig(**TINY)
    return config, build_generator(config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("cosmos3") / "someones-cosmos3-finetune"  # any name: its files decide
    tiny[1].save_pretrained(str(folder))
    return folder


def _pipelines_own(pipe, seed, prompt, **extra):
    """diffusers' own call, as its documentation calls it, at the tiny recipe's settings."""
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), height=32, width=32, num_frames=9, fps=24.0, num_inference_steps=2,
                guidance_scale=6.0, enable_sound=True, **extra)


def test_a_folder_and_an_unlisted_cached_hub_id_are_cosmos3_with_the_release_settings(saved, hub_cache):
    from cac_align.gen.generator import build_generator, generate_videos

    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "Cosmos3OmniPipeline" and "text_encoder" not in index
    repo = hub_cache / "models--someone--cosmos3-finetune"  # the same files as an offline-cached hub id no list knows
    shutil.copytree(saved, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name in (str(saved), "someone/cosmos3-finetune"):
        config = GeneratorConfig(name=name)
        assert config.family is COSMOS3
        # __call__'s defaults (720 x 1280, 189 frames, 24 fps, 35 steps, guidance 6.0) and the docs' shift 10; no text length
        assert (config.height, config.width, config.num_frames, config.fps, config.num_inference_steps, config.guidance_scale,
                config.flow_shift, config.max_sequence_length) == (720, 1280, 189, 24.0, 35, 6.0, 10.0, None)
    assert family_of(NANO) is COSMOS3 and family_of(SUPER) is COSMOS3  # the listed releases, offline and not cached
    loaded_config = GeneratorConfig(**{**TINY, "name": "someone/cosmos3-finetune"})
    made = generate_videos(build_generator(loaded_config), loaded_config, PROMPTS[:1], SEEDS[:1])
    assert made.frames.shape == (1, 9, 32, 32, 3) and made.audio.shape == (1, 2, 19_200) and made.sample_rate == 48_000


def test_bon_frames_and_sound_are_the_pipelines_own_call_per_row_and_another_seed_differs(tiny):
    from diffusers.utils import load_image

    from cac_align.gen.generator import generate_videos
    from cac_align.run.input_files import PromptImage

    config, pipe = tiny
    ours = generate_videos(pipe, config, PROMPTS, SEEDS)
    # 0.375 s at 48 kHz, rounded up to the hop of 1,920: 10 sound latents
    assert ours.frames.shape == (2, 9, 32, 32, 3) and ours.audio.shape == (2, 2, 19_200) and ours.sample_rate == 48_000
    assert COSMOS3.side_shape(pipe, 9, 24.0) == (8, 10)  # the tiny's 8 sound channels x 10 latents
    for row, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        own = _pipelines_own(pipe, seed, prompt, output_type="pt")
        assert _hashes(ours.frames[row:row + 1]) == _hashes(frames_to_uint8(own.video[None]))
        assert np.array_equal(ours.audio[row], own.sound.numpy())
    other = generate_videos(pipe, config, PROMPTS, (7, 9))  # another seed, another video and sound; the first row its own
    assert _hashes(other.frames)[0] == _hashes(ours.frames)[0] and _hashes(other.frames)[1] != _hashes(ours.frames)[1]
    assert not np.array_equal(other.audio[1], ours.audio[1])
    # the family decodes the pipeline's own final latents as the pipeline does (video, and the sound it decodes)
    sounds = []
    decode_sound = pipe.decode_sound
    pipe.decode_sound = lambda latents: sounds.append(latents) or decode_sound(latents)
    try:
        latents = _pipelines_own(pipe, SEEDS[0], PROMPTS[0], output_type="latent").video
    finally:
        del pipe.decode_sound
    assert latents.shape == (1, 48, 3, 2, 2) and _hashes(COSMOS3.decode(pipe, latents)) == _hashes(ours.frames[:1])
    wave, rate = COSMOS3.decode_audio(pipe, sounds[0][None])
    assert rate == 48_000 and np.array_equal(wave[0], ours.audio[0])
    # image to video: one call a row, the image's first frame kept
    image = REPO_ROOT / "recipes/align/image_red_ball.png"
    animated = generate_videos(pipe, config, PROMPTS[:1], SEEDS[:1], images=[PromptImage.of(image)])
    own = _pipelines_own(pipe, SEEDS[0], PROMPTS[0], image=load_image(str(image)), output_type="pt")
    assert _hashes(animated.frames) == _hashes(frames_to_uint8(own.video[None])) and np.array_equal(animated.audio[0], own.sound.numpy())
    assert _hashes(animated.frames) != _hashes(ours.frames[:1])  # the image conditions the video


def test_bon_by_folder_writes_24_fps_mp4s_with_their_48_khz_aac_track_and_a_wav(saved, tmp_path, monkeypatch):
    import imageio_ffmpeg

    from cac_align.config import load_config
    from cac_align.jobs.best_of_n import BonConfig, run
    from cac_align.video import load_video, read_soundtrack

    monkeypatch.chdir(REPO_ROOT)  # the recipe's prompt file
    out = tmp_path / "bon"
    config = load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_cosmos3.yaml", [f"out_dir={out}", f"generator.name={saved}"], job="bon")
    run(config)
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["valid"] for r in rows)  # 2 prompts x 2 candidates
    mp4 = out / rows[0]["video"]
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(mp4)], capture_output=True, text=True).stderr
    assert "Video: h264" in probe and "Audio: aac" in probe and "48000 Hz" in probe and "stereo" in probe and "24 fps" in probe
    assert load_video(str(mp4)).frames.shape == (9, 32, 32, 3)
    sound, rate = read_soundtrack(mp4.with_suffix(".wav"))
    assert rate == 48_000 and sound.shape == (2, 19_200)


def test_what_is_not_run_is_refused_in_one_line_with_its_reason(saved, tmp_path, hub_cache):
    from cac_align.gen.generator import build_generator
    from cac_align.run.input_files import read_prompt_rows

    cases = []
    # frame counts: the VAE floors the video, the sound keeps the count; one frame is an image
    cases.append((ValueError, r"num_frames=10: Cosmos 3's VAE would make 9 frames while its sound is sized for 10 .* 9 or 13$",
                  lambda: GeneratorConfig(**{**TINY, "num_frames": 10})))
    cases.append((ValueError, "num_frames=1 asks Cosmos 3 for an image", lambda: GeneratorConfig(**{**TINY, "num_frames": 1})))
    cases.append((ValueError, "max_sequence_length does not apply", lambda: GeneratorConfig(**{**TINY, "max_sequence_length": 512})))
    # the distilled modular pipeline (by its index, as diffusers saves it and by the class it runs as, and by name offline;
    # a folder saved by diffusers: tests/gen/test_missing_parts.py), a text-to-image release, an Omni modular index alone
    cases.append((UnknownGeneratorError, r"generator.name='x' is a Cosmos3OmniModularPipeline with is_distilled: true: a distilled Cosmos 3, "
                                         r"which no job runs: .* 4 fixed steps .* no sound",
                  lambda: family_from_index({"_class_name": "Cosmos3OmniModularPipeline", "is_distilled": True}, "x")))
    cases.append((UnknownGeneratorError, r"generator.name='x' is a Cosmos3DistilledModularPipeline: a distilled Cosmos 3",
                  lambda: family_from_index({"_class_name": "Cosmos3DistilledModularPipeline"}, "x")))
    cases.append((UnknownGeneratorError, "is a 4-step release: a distilled Cosmos 3", lambda: family_of("nvidia/Cosmos3-Super-Image2Video-4Step")))
    cases.append((UnknownGeneratorError, "text-to-image checkpoint", lambda: GeneratorConfig(name="nvidia/Cosmos3-Super-Text2Image")))
    cases.append((UnknownGeneratorError, "index alone", lambda: family_from_index({"_class_name": "Cosmos3OmniModularPipeline"}, "x")))
    # repair, context parallel, action conditions
    cases.append((UnknownGeneratorError, "is a Cosmos3OmniPipeline, which keeps only a video's leading latent frames", lambda: regenerator_of(str(saved))))
    cases.append((RecipeError, "parallel.context_parallel must be 1 for Cosmos 3", lambda: COSMOS3.check_context_parallel(GeneratorConfig(**TINY), 2, {})))
    prompts = tmp_path / "actions.jsonl"
    prompts.write_text(json.dumps({"prompt": "a robot arm picks a cup", "action": [[0.1, 0.2]]}) + "\n")
    cases.append((RecipeError, "line 1: 'action' .* is not passed to any generator", lambda: read_prompt_rows(prompts)))
    # a checkpoint that asks for the guardrail, without cosmos_guardrail installed
    guarded = tmp_path / "guarded"
    shutil.copytree(saved, guarded)
    index = json.loads((guarded / "model_index.json").read_text())
    (guarded / "model_index.json").write_text(json.dumps({**index, "enable_safety_checker": True}))
    cases.append((RecipeError, r"sets enable_safety_checker.*pip install cosmos_guardrail",
                  lambda: build_generator(GeneratorConfig(**{**TINY, "name": str(guarded)}))))
    # training a quantized transformer (the release's FP8 revision: a quantization_config in its config.json), refused as
    # each trainer's recipe is made, before a weight loads; the same folder's bf16 original is taken (control, below)
    from cac_align.config import load_config
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.nft import NftConfig

    fp8 = tmp_path / "fp8"
    shutil.copytree(saved, fp8)
    config_file = fp8 / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "quantization_config": {"quant_method": "modelopt", "quant_type": "FP8"}}))

    def trainer(cls, job, folder):
        recipe = REPO_ROOT / f"recipes/align/{job.replace('-', '_')}_tiny_cosmos3.yaml"
        return load_config(cls, recipe, [f"out_dir={tmp_path / job}", f"generator.name={folder}"], job=job)

    for cls, job in ((FlowGrpoConfig, "flow-grpo"), (NftConfig, "nft"), (DpoConfig, "dpo")):
        cases.append((RecipeError, r"generator.name=.*fp8.*has a quantization_config \(modelopt.*name the bf16 weights: the release's revision=main",
                      lambda cls=cls, job=job: trainer(cls, job, fp8)))
    assert trainer(FlowGrpoConfig, "flow-grpo", saved).generator.name == str(saved)  # control: the bf16 folder trains
    for error, match, call in cases:
        with pytest.raises(error, match=match) as caught:
            call()
        assert "\n" not in str(caught.value), str(caught.value)


# -- the trainers (stage 2) ------------------------------------------------------------------
def test_every_trainer_takes_the_generation_streams_attention_and_trained_sound_adds_its_own_projections(tmp_path):
    from cac_align.config import load_config
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.nft import NftConfig

    attention = ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]  # the text stream's to_q / to_k / to_v / to_out are not
    for cls, job in ((FlowGrpoConfig, "flow-grpo"), (NftConfig, "nft"), (DpoConfig, "dpo")):
        recipe = REPO_ROOT / f"recipes/align/{job.replace('-', '_')}_tiny_cosmos3.yaml"
        assert list(load_config(cls, recipe, [f"out_dir={tmp_path / job}"], job=job).lora.target_modules) == attention
    trained = load_config(FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_cosmos3.yaml", [f"out_dir={tmp_path}", "audio=trained"],
                          job="flow-grpo")
    assert list(trained.lora.target_modules) == [*attention, "audio_proj_in", "audio_proj_out"]


class _EulerOnTheTrainersGrid:
    """diffusers' FlowMatchEulerDiscreteScheduler at shift 10 handed UniPC's unshifted points, as the pipeline calls it
    (``set_timesteps(N)``): the Euler scheduler whose grid is the trainers' (cac_align.gen.families.cosmos3.trainer_grid)."""

    @staticmethod
    def make(shift=10.0):
        from diffusers import FlowMatchEulerDiscreteScheduler

        class Grid(FlowMatchEulerDiscreteScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, **unused):
                points = np.linspace(1.0, 1.0 / self.config.num_train_timesteps, num_inference_steps + 1)[:-1]
                return super().set_timesteps(sigmas=points, device=device)

        return Grid(shift=shift)


class _OneEulerStep:
    """The same scheduler for one step only, from ``sigmas[0]`` to ``sigmas[1]`` at ``timestep``: the pipeline then takes
    exactly that Euler step from the latents it is given."""

    @staticmethod
    def make(sigma, sigma_next, timestep):
        from diffusers import FlowMatchEulerDiscreteScheduler

        class One(FlowMatchEulerDiscreteScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, **unused):
                self.sigmas = torch.tensor([sigma, sigma_next], dtype=torch.float32)
                self.timesteps = torch.tensor([timestep], dtype=torch.float32)
                self.num_inference_steps, self._step_index, self._begin_index = 1, None, None

        return One()


def _with_scheduler(pipe, scheduler):
    from diffusers import Cosmos3OmniPipeline

    other = Cosmos3OmniPipeline(**{**pipe.components, "scheduler": scheduler}, enable_safety_checker=False)
    other.set_progress_bar_config(disable=True)
    return other


def _pipeline_latents(pipe, prompt, **call):
    """The pipeline's final video latents and the sound latents it decodes (captured at its decode_sound)."""
    seen = {}
    decode_sound = pipe.decode_sound
    pipe.decode_sound = lambda latents: seen.setdefault("sound", latents.clone()) is None or decode_sound(latents)
    try:
        video = pipe(prompt=prompt, height=32, width=32, num_frames=9, fps=24.0, guidance_scale=6.0, enable_sound=True, output_type="latent",
                     **call).video
    finally:
        del pipe.decode_sound
    return video, seen["sound"]


def _sampled(pipe, config, noise_level, images=None, train_side=False):
    from cac_align.gen.generator import encode_conditioning, sample_with_log_probs

    guidance = COSMOS3.guidance(config)
    cond, negative = encode_conditioning(pipe, COSMOS3, PROMPTS, images, config, guidance)
    sigmas, timesteps = COSMOS3.schedule(pipe, config)
    trajectory = sample_with_log_probs(pipe, COSMOS3.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS], config=config,
                                       sigmas=sigmas, timesteps=timesteps, noise_level=noise_level, train_side=train_side)
    return trajectory, cond


def test_the_sampler_at_noise_0_is_the_pipeline_with_euler_on_the_trainers_grid_text_and_image_to_video(tiny):
    from diffusers.utils import load_image

    from cac_align.gen.family import whole_latents
    from cac_align.run.input_files import PromptImage

    config, pipe = tiny
    sigmas, timesteps = COSMOS3.schedule(pipe, config)
    # N = 2 at shift 10: UniPC's points 1 and 0.5005, shifted: 1 and 10 x 0.5005 / (1 + 9 x 0.5005) = 0.909256, then 0; the
    # first exactly 1 (UniPC's own is 0.999999), the timesteps the continuous 1000 sigma (UniPC's: the integers 999, 909)
    assert sigmas[0].item() == 1.0 and sigmas[1].item() == pytest.approx(0.909256, abs=1e-6) and sigmas[2].item() == 0.0
    assert timesteps.dtype == torch.float32 and timesteps.tolist() == pytest.approx([1000.0, 909.256], abs=1e-3)
    euler = _with_scheduler(pipe, _EulerOnTheTrainersGrid.make())
    image = REPO_ROOT / "recipes/align/image_red_ball.png"
    for images, extra in ((None, {}), ([PromptImage.of(image)] * 2, {"image": load_image(str(image))})):
        trajectory, cond = _sampled(pipe, config, 0.0, images)
        assert trajectory.latents.shape[3:] == (3 - (images is not None), 2, 2)  # an image's latent frame is not sampled
        for row, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
            video, sound = _pipeline_latents(euler, prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(seed), **extra)
            assert torch.equal(whole_latents(cond, trajectory.final)[row : row + 1], video), (images, row)
            assert torch.equal(trajectory.side[row, -1], sound), (images, row)


def test_flow_grpo_log_probs_of_both_streams_are_a_hand_computation_from_the_schedulers_own_euler_step(tiny):
    import math

    config, pipe = tiny
    a = 0.7
    trajectory, _ = _sampled(pipe, config, a, train_side=True)  # the sound on its own SDE step too (audio: trained)
    s, timesteps = trajectory.sigmas, trajectory.timesteps
    for j in range(2):
        sigma, sigma_next = float(s[j]), float(s[j + 1])
        one_step = _with_scheduler(pipe, _OneEulerStep.make(sigma, sigma_next, float(timesteps[j])))
        # Flow-GRPO's scale a sqrt(s / (1 - s)), at s = 1 with 1 - sigma_1 below: step 0 is 0.7 sqrt(1 / 0.090744) = 2.3237
        scale = a * math.sqrt(sigma / (1 - (float(s[1]) if j == 0 else sigma)))
        if j == 0:
            assert scale == pytest.approx(2.3237, abs=1e-3)
        dt = sigma_next - sigma
        for row, prompt in enumerate(PROMPTS):
            x, x_next = trajectory.latents[row : row + 1, j], trajectory.latents[row : row + 1, j + 1]
            y, y_next = trajectory.side[row, j], trajectory.side[row, j + 1]
            # the pipeline itself packs, guides and takes the Euler step x + dt v from the recorded latents (no draw)
            euler_x, euler_y = _pipeline_latents(one_step, prompt, num_inference_steps=1, latents=x.clone(), sound_latents=y.clone())
            for state, euler, following, recorded in ((x, euler_x, x_next, trajectory.log_probs[row, j]),
                                                      (y, euler_y, y_next, trajectory.side_log_probs[row, j])):
                v = (euler - state) / dt
                mean = euler + dt * scale**2 / (2 * sigma) * (state + (1 - sigma) * v)
                std = scale * math.sqrt(-dt)
                by_hand = (-((following - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).mean()
                assert abs(float(by_hand) - float(recorded)) < 1e-4, (j, row, float(by_hand), float(recorded))
    assert not torch.equal(trajectory.log_probs[:, 0], trajectory.log_probs[:, 1])  # two steps, two widths: not one number


def test_a_lora_we_write_loads_with_the_transformers_load_lora_adapter_and_gives_our_frames_and_sound(tiny, tmp_path):
    """docs/using_your_lora.md: Cosmos3OmniPipeline has no load_lora_weights; the file our trainers write loads with
    ``pipe.transformer.load_lora_adapter``, and the pipeline then makes our trained transformer's frames and sound."""
    from cac_align.gen.generator import LORA_WEIGHT_NAME, generate_videos
    from conftest import write_trained_lora

    config, _ = tiny
    trained = COSMOS3.build_tiny("tiny-random:cosmos3")
    write_trained_lora(trained.transformer, [*COSMOS3.lora_target_modules, *COSMOS3.audio_lora_target_modules], tmp_path / "lora",
                       COSMOS3.pipeline_class)
    fresh = COSMOS3.build_tiny("tiny-random:cosmos3")
    assert not hasattr(fresh, "load_lora_weights")
    base = generate_videos(fresh, config, PROMPTS[:1], SEEDS[:1])
    fresh.transformer.load_lora_adapter(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME, prefix="transformer")
    ours, theirs = (generate_videos(pipe, config, PROMPTS[:1], SEEDS[:1]) for pipe in (trained, fresh))
    assert _hashes(theirs.frames) == _hashes(ours.frames) and np.array_equal(theirs.audio, ours.audio)
    assert _hashes(base.frames) != _hashes(ours.frames) and not np.array_equal(base.audio, ours.audio)  # control: without it, others


@pytest.mark.slow  # bon and the three trainers' tiny recipes by a folder and by a cached hub id: about 11 s here
def test_every_job_runs_one_step_by_folder_and_by_an_unlisted_hub_id_training_only_the_lora(saved, tmp_path, monkeypatch, hub_cache):
    """A saved tiny pipeline named by its folder, and the same files as an offline-cached hub id no list knows: bon writes
    its candidates, and flow-grpo, nft and dpo (on bon's pairs) each train one step that moves every LoRA weight of the
    generation stream's attention (loaded by its name) and no base weight (the folder's pipeline handed in). By the hub
    id, bon and flow-grpo: nft's trainer is flow-grpo's and dpo loads through the same ``load_generator``, so running
    them by the hub id too repeated the same load (a quarter of this test's time)."""
    from safetensors.torch import load_file

    from cac_align.config import load_config
    from cac_align.gen.generator import LORA_WEIGHT_NAME, build_generator
    from cac_align.jobs import best_of_n, dpo, flow_grpo, nft

    repo = hub_cache / "models--someone--cosmos3-finetune"
    shutil.copytree(saved, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.chdir(REPO_ROOT)  # the recipes' prompt file
    for label, name in (("folder", str(saved)), ("hub", "someone/cosmos3-finetune")):
        out = tmp_path / label
        best_of_n.run(load_config(best_of_n.BonConfig, REPO_ROOT / "recipes/align/bon_tiny_cosmos3.yaml", [f"out_dir={out / 'bon'}",
                                                                                                          f"generator.name={name}"], job="bon"))
        rows = [json.loads(line) for line in (out / "bon" / "candidates.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(r["valid"] for r in rows)
        trainers = (("flow-grpo", flow_grpo, []), ("nft", nft, []), ("dpo", dpo, [f"pairs=[{out / 'bon'}]"]))
        for job, module, extra in trainers if label == "folder" else trainers[:1]:
            recipe = REPO_ROOT / f"recipes/align/{job.replace('-', '_')}_tiny_cosmos3.yaml"
            config = load_config(getattr(module, {"flow-grpo": "FlowGrpoConfig", "nft": "NftConfig", "dpo": "DpoConfig"}[job]), recipe,
                                 [f"out_dir={out / job}", f"generator.name={name}", "steps=1", "checkpoint_every=0", *extra], job=job)
            pipe = build_generator(config.generator) if label == "folder" else None
            base = None if pipe is None else {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
            module.run(config, pipe=pipe)
            (row,) = [json.loads(line) for line in (out / job / "metrics.jsonl").read_text().splitlines()]
            up = [t for k, t in load_file(out / job / "lora" / LORA_WEIGHT_NAME).items() if ".lora_B." in k]
            # 2 layers x 4 projections, every one moved from its zero start
            assert row["train/grad_norm"] > 0 and len(up) == 2 * 4 and all(torch.count_nonzero(t) for t in up), (name, job)
            if base is not None:
                after = {n.replace(".base_layer", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" not in n}
                assert set(after) == set(base) and all(torch.equal(after[n], base[n]) for n in base), job


def test_the_nanos_shipped_configs_plan_one_packed_sequence_a_forward(hub_cache):
    """Cosmos3-Nano counted offline from the configs shipped with cac-align (cac_align/plan/full_size/SOURCES.md, stand-ins
    of diffusers 0.42.1's class defaults): the numbers are hand-worked from those configs, and the activations are those of a
    transformer with no batch axis (every row's block inputs kept, one row's block recomputed at a time)."""
    from cac_align.gen.lora import LoraSettings
    from cac_align.plan import configs as plan_configs
    from cac_align.plan.counts import counted_generator
    from cac_align.plan.rows import activation_bytes

    assert plan_configs.planned_from_shipped(NANO)
    counts = counted_generator(GeneratorConfig(name=NANO), LoraSettings(rank=32))
    transformer = counts.transformers[0]
    assert transformer.parameters == 15_173_669_120  # Qwen3-8B widths, 36 layers, sound 64, action 64 x 32 domains: 15.17B
    assert len(transformer.blocks) == 36 and set(transformer.blocks) == {385_892_864}  # one Cosmos3VLTextMoTDecoderLayer
    # the LoRA's width a layer: add_q_proj 4096 + 4096, add_k_proj and add_v_proj 4096 + 1024 each (8 key-value heads of 128),
    # to_add_out 4096 + 4096 = 26,624; x 36 layers
    assert transformer.lora_width == 26_624 * 36
    assert [o.name for o in counts.others] == ["sound_tokenizer", "vae"] and not counts.encoders  # no text encoder
    # 480 x 832 x 121: 31 latent frames x 15 x 26 patches (2 x 2 over 30 x 52) = 12,090; sound ceil(242,000 / 1,920) = 127;
    # text 1,024 (the estimate): 13,241
    assert counts.tokens_of(121, 480, 832) == 12_090 + 127 + 1_024
    assert counts.one_row_a_forward and counts.vae_one_video
    one_row = 13_241 * 4096 * 2  # one hidden-sized bf16 tensor over one sequence
    # CFG: 2 forwards, checkpointed: 2 x 36 block inputs kept + one block's 24 widths while it is recomputed
    assert activation_bytes(13_241, 4096, 36, 2, True, one_row_a_forward=True) == one_row * (2 * 36 + 24)
    assert activation_bytes(13_241, 4096, 36, 2, True) == one_row * 2 * (36 + 24)  # control: a batched forward's
