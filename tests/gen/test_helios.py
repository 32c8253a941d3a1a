"""Helios (cac_align.gen.families.helios, issue #106): a saved folder of any name is read by its model_index.json
(HeliosPyramidPipeline refused in one line); by that folder and by an unlisted hub id (the same files, cached offline)
bon writes 24 fps videos, its frames __call__'s, and flow-grpo, nft and dpo each train one step (slow); bon's frames are diffusers' HeliosPipeline.__call__'s with the same seeds, byte for byte (text to video batched,
image to video one row a call), and the family's per-chunk decode gives the pipeline's frames from its latents; a frame
count the chunks do not make is refused as the generator's config is read, in one line. flow-grpo's per-chunk sampler (stage 2): at noise 0 the Euler-configured pipeline's latents, torch.equal (text
and image to video); its SDE log-probs a hand computation from the scheduler's own steps, and recomputed from the
record alone (nft's teacher-forced history is the sampled one); a flow-grpo step of the tiny recipe credits a window's
chunk only and moves every LoRA weight; dpo's cache encodes chunk by chunk and a pair trains a drawn chunk with each
member's own history. Credit maps by chunk: tests/rl/test_credit.py; nft's one step: tests/jobs/test_nft.py (slow)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from cac_align.config import RecipeError
from cac_align.gen.families.helios import HELIOS, HELIOS_NEGATIVE_PROMPT, frames_made
from cac_align.gen.family import UnknownGeneratorError, family_from_index, family_of, regenerator_of
from cac_align.gen.generator import GeneratorConfig
from conftest import REPO_ROOT

TINY = dict(name="tiny-random:helios", dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=65,
            num_inference_steps=2, max_sequence_length=16)
PROMPTS = ["a dog in a park", "a red car on the street"]
SEEDS = (7, 8)


def _hashes(frames):
    return [hashlib.sha256(torch.as_tensor(f).contiguous().numpy().tobytes()).hexdigest() for f in frames]


@pytest.fixture(scope="module")
def tiny():
    from cac_align.gen.generator import build_generator

    config = GeneratorConfig(**TINY)
    return config, build_generator(config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("helios") / "someones-helios-finetune"  # any name: its files decide
    tiny[1].save_pretrained(str(folder))
    return folder


def test_a_saved_folder_of_any_name_is_helios_with_the_release_settings(saved, hub_cache):
    assert json.loads((saved / "model_index.json").read_text())["_class_name"] == "HeliosPipeline"
    config = GeneratorConfig(name=str(saved))
    assert config.family is HELIOS and family_of("BestWishYsh/Helios-Base") is HELIOS  # the listed hub id, offline and not cached
    # infer_helios.py's defaults: 384 x 640, 99 frames (which come back as 97), 24 fps, 50 steps, guidance 5.0
    assert (config.height, config.width, config.num_frames, config.fps, config.num_inference_steps, config.guidance_scale) == (384, 640, 97, 24.0, 50, 5.0)
    assert config.max_sequence_length == 512 and config.negative_prompt is None and HELIOS.negative_prompt == HELIOS_NEGATIVE_PROMPT
    assert HELIOS.block_classes == ("HeliosTransformerBlock",) and HELIOS.LORA_TARGETS == ("to_q", "to_k", "to_v", "to_out.0")
    with pytest.raises(ValueError, match="flow_shift does not apply"):  # the pipeline shifts by the chunk's tokens, never by a setting
        GeneratorConfig(**{**TINY, "flow_shift": 3.0})
    # Helios-Mid / -Distilled: recognized, refused for every job in one line
    for flags, which in (({"is_cfg_zero_star": True}, "Helios-Mid"), ({"is_distilled": True}, "Helios-Distilled")):
        with pytest.raises(UnknownGeneratorError, match=rf"generator.name='x' is a HeliosPyramidPipeline \({which}\), which no job runs yet") as error:
            family_from_index({"_class_name": "HeliosPyramidPipeline", **flags}, "x")
        assert "\n" not in str(error.value) and "BestWishYsh/Helios-Base" in str(error.value)
    with pytest.raises(UnknownGeneratorError, match="is a HeliosPipeline, which has no inpainting mode") as error:
        regenerator_of(str(saved))
    assert "\n" not in str(error.value)


def test_a_frame_count_the_chunks_do_not_make_is_refused_in_one_line_naming_its_neighbours():
    assert [frames_made(n) for n in (1, 33, 34, 65, 97, 99, 129, 132, 165, 198)] == [33, 33, 65, 65, 97, 97, 129, 129, 165, 197]
    for n in (33, 65, 97, 129):
        assert GeneratorConfig(**{**TINY, "num_frames": n}).num_frames == n
    for n, made, nearest in ((81, 97, "65 or 97"), (99, 97, "97 or 129"), (9, 33, "33"), (34, 65, "33 or 65")):
        with pytest.raises(ValueError, match=rf"generator.num_frames={n}: Helios makes chunks of 33 frames .* would return {made} frames, not {n}; "
                                             rf"set num_frames to {nearest}$") as error:
            GeneratorConfig(**{**TINY, "num_frames": n})
        assert "\n" not in str(error.value)


def test_every_trainer_takes_the_attention_projections_and_context_parallel_is_refused_in_one_line(tmp_path):
    from cac_align.config import load_config
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.nft import NftConfig

    for cls, job, recipe in ((FlowGrpoConfig, "flow-grpo", "flow_grpo"), (NftConfig, "nft", "nft"), (DpoConfig, "dpo", "dpo")):
        config = load_config(cls, REPO_ROOT / f"recipes/align/{recipe}_tiny_helios.yaml", [f"out_dir={tmp_path / job}"], job=job)
        assert config.lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    with pytest.raises(RecipeError, match="parallel.context_parallel must be 1 for Helios") as error:
        HELIOS.check_context_parallel(GeneratorConfig(**TINY), 2, {})
    assert "\n" not in str(error.value)
    # video to video (a clip to continue): a prompt line's 'video' is refused as the file is read, not dropped in silence
    from cac_align.run.input_files import read_prompt_rows

    prompts = tmp_path / "continue.jsonl"
    prompts.write_text('{"prompt": "a red ball rolls", "video": "clip.mp4"}\n')
    with pytest.raises(RecipeError, match=r"line 1: 'video' \(a clip to continue, Helios's video to video\) is not passed") as error:
        read_prompt_rows(prompts)
    assert "\n" not in str(error.value) and "give the clip's first frame as 'image'" in str(error.value)
    prompts.write_text('{"prompt": "a red ball rolls", "id": "clip.mp4"}\n')  # the control: another key is the user's, left alone
    assert [row.prompt for row in read_prompt_rows(prompts)] == ["a red ball rolls"]


def _pipelines_own(pipe, config, prompts, seeds, **extra):
    return pipe(prompt=list(prompts), negative_prompt=[HELIOS_NEGATIVE_PROMPT] * len(prompts), generator=[torch.Generator().manual_seed(s) for s in seeds],
                height=config.height, width=config.width, num_frames=config.num_frames, num_inference_steps=config.num_inference_steps,
                guidance_scale=5.0, max_sequence_length=config.max_sequence_length, **extra).frames


def test_bon_frames_are_the_pipelines_own_hash_for_hash_and_the_family_decodes_its_latents_as_it_does(tiny):
    from cac_align.gen.generator import frames_to_uint8, generate_videos

    config, pipe = tiny
    ours = generate_videos(pipe, config, PROMPTS, SEEDS).frames
    assert ours.shape == (2, 65, 32, 32, 3)  # 2 chunks of 33 frames, cut to 4k + 1
    own = frames_to_uint8(_pipelines_own(pipe, config, PROMPTS, SEEDS, output_type="pt"))
    assert _hashes(ours) == _hashes(own)
    other = generate_videos(pipe, config, PROMPTS, (7, 9)).frames  # another seed, another video; the first row its own
    assert _hashes(other)[0] == _hashes(ours)[0] and _hashes(other)[1] != _hashes(ours)[1]
    latents = _pipelines_own(pipe, config, PROMPTS, SEEDS, output_type="latent")
    assert latents.shape == (2, 16, 18, 4, 4)  # 2 chunks of 9 latent frames
    assert _hashes(HELIOS.decode(pipe, latents)) == _hashes(ours)  # per chunk, joined, cut: the pipeline's decode


def test_bon_animates_an_image_one_row_a_call_as_the_pipeline_does(tiny):
    from diffusers.utils import load_image

    from cac_align.gen.generator import frames_to_uint8, generate_videos
    from cac_align.run.input_files import PromptImage

    config, pipe = tiny
    config = GeneratorConfig(**{**TINY, "num_frames": 33})
    image = REPO_ROOT / "recipes/align/image_red_ball.png"
    ours = generate_videos(pipe, config, PROMPTS[:1], SEEDS[:1], images=[PromptImage.of(Path(image))]).frames
    own = pipe(prompt=PROMPTS[:1], image=load_image(str(image)), negative_prompt=[HELIOS_NEGATIVE_PROMPT], generator=torch.Generator().manual_seed(SEEDS[0]),
               height=32, width=32, num_frames=33, num_inference_steps=2, guidance_scale=5.0, max_sequence_length=16, output_type="pt").frames
    assert ours.shape == (1, 33, 32, 32, 3) and _hashes(ours) == _hashes(frames_to_uint8(own))
    text_only = generate_videos(pipe, config, PROMPTS[:1], SEEDS[:1]).frames
    assert _hashes(text_only) != _hashes(ours)  # the image conditions the video


@pytest.mark.slow  # every job's tiny recipe twice (a folder, a cached hub id): 12 s here
def test_every_job_runs_one_step_by_folder_and_by_an_unlisted_hub_id_and_bon_is_the_pipelines_own_frames(tiny, saved, tmp_path, monkeypatch,
                                                                                                           hub_cache):
    """A saved tiny pipeline named by its folder, and the same files as an offline-cached hub id no list knows: its
    files say Helios; bon's frames are HeliosPipeline.__call__'s, hash for hash; bon writes 24 fps videos, and
    flow-grpo, nft and dpo (on bon's pairs) each train one step that moves every LoRA weight."""
    import shutil

    from cac_align.config import load_config
    from safetensors.torch import load_file

    from cac_align.gen.generator import LORA_WEIGHT_NAME, build_generator, frames_to_uint8, generate_videos
    from cac_align.jobs.best_of_n import BonConfig
    from cac_align.jobs.best_of_n import run as best_of_n
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.dpo import run as dpo
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.flow_grpo import run as flow_grpo
    from cac_align.jobs.nft import NftConfig
    from cac_align.jobs.nft import run as nft
    from cac_align.video import load_video

    config, pipe = tiny
    own = _hashes(frames_to_uint8(_pipelines_own(pipe, config, PROMPTS, SEEDS, output_type="pt")))
    commit = "0" * 40
    repo = hub_cache / "models--someone--helios-finetune"
    shutil.copytree(saved, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.chdir(REPO_ROOT)  # the recipes' prompt file
    one_step = ["steps=1", "checkpoint_every=0"]
    for label, name in (("folder", str(saved)), ("hub", "someone/helios-finetune")):
        loaded_config = GeneratorConfig(**{**TINY, "name": name})
        assert loaded_config.family is HELIOS
        assert _hashes(generate_videos(build_generator(loaded_config), loaded_config, PROMPTS, SEEDS).frames) == own
        out = tmp_path / label
        best_of_n(load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_helios.yaml", [f"out_dir={out / 'bon'}", f"generator.name={name}"], job="bon"))
        rows = [json.loads(line) for line in (out / "bon" / "candidates.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(r["valid"] for r in rows)  # 2 prompts x 2 candidates
        for row in rows:
            video = load_video(str(out / "bon" / row["video"]))
            assert video.frames.shape == (65, 32, 32, 3) and video.fps == 24.0
        for job, cls, run, extra in (("flow-grpo", FlowGrpoConfig, flow_grpo, []), ("nft", NftConfig, nft, []),
                                     ("dpo", DpoConfig, dpo, [f"pairs=[{out / 'bon'}]"])):
            recipe = REPO_ROOT / f"recipes/align/{job.replace('-', '_')}_tiny_helios.yaml"
            run(load_config(cls, recipe, [f"out_dir={out / job}", f"generator.name={name}", *one_step, *extra], job=job))  # loaded by its name
            (row,) = [json.loads(line) for line in (out / job / "metrics.jsonl").read_text().splitlines()]
            lora = load_file(out / job / "lora" / LORA_WEIGHT_NAME)
            up = [t for k, t in lora.items() if ".lora.up." in k]  # diffusers' names: 2 blocks x 2 attentions x 4 projections
            assert row["train/grad_norm"] > 0 and len(up) == 2 * 2 * 4 and all(torch.count_nonzero(t) for t in up), (name, job)


# -- flow-grpo's per-chunk sampler (stage 2) ---------------------------------------------------------
CHUNKED = {**TINY, "num_frames": 97}  # 3 chunks of 2 steps each: chunk 2 reads a history of both earlier chunks


@pytest.fixture(scope="module")
def euler(tiny):
    """The tiny pipeline with the scheduler set to plain Euler (the release samples with UniPC, bon's), and the
    3-chunk config."""
    from diffusers import HeliosPipeline, HeliosScheduler

    pipe = HeliosPipeline(**{**tiny[1].components, "scheduler": HeliosScheduler.from_config(tiny[1].scheduler.config, scheduler_type="euler")})
    pipe.set_progress_bar_config(disable=True)
    return GeneratorConfig(**CHUNKED), pipe


def _sampled(pipe, config, noise_level):
    from cac_align.gen.generator import encode_conditioning, sample_with_log_probs

    guidance = HELIOS.guidance(config)
    cond, negative = encode_conditioning(pipe, HELIOS, PROMPTS, None, config, guidance)
    sigmas, timesteps = HELIOS.schedule(pipe, config)
    trajectory = sample_with_log_probs(pipe, HELIOS.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS], config=config,
                                       sigmas=sigmas, timesteps=timesteps, noise_level=noise_level)
    return trajectory, cond, negative, guidance


def test_the_sampler_at_noise_0_is_the_euler_configured_pipeline_chunk_by_chunk(euler):
    config, pipe = euler
    trajectory, *_ = _sampled(pipe, config, 0.0)
    # K = 3 chunks of N = 2 steps, flattened: 3 x (2 + 1) states, 3 x 2 log-probs; the video is every chunk's last state
    assert trajectory.chunks == 3 and trajectory.latents.shape == (2, 9, 16, 9, 4, 4) and trajectory.log_probs.shape == (2, 6)
    assert trajectory.sigmas.dtype == torch.float64  # the scheduler's own, so dt rounds as its Euler step rounds it
    own = _pipelines_own(pipe, config, PROMPTS, SEEDS, output_type="latent")
    assert own.shape == (2, 16, 27, 4, 4) and torch.equal(trajectory.final, own)


def test_per_chunk_sde_log_probs_are_a_hand_computation_from_the_schedulers_steps_and_recompute_from_the_record(euler):
    import copy
    import math

    import numpy as np
    from diffusers.pipelines.helios.pipeline_helios import calculate_shift

    from cac_align.gen.generator import predict_velocity, sde_transitions, step_conditioning, video_conditioning

    config, pipe = euler
    a, N, K = 0.7, 2, 3
    trajectory, cond, negative, guidance = _sampled(pipe, config, a)
    lp = trajectory.log_probs
    # step 0's width: the schedule starts at s0 = 0.99937 (mu = 0.5 + 0.65 (36 - 256) / 3840 = 0.46276 for the 9 x 4 x 4 / 4 = 36
    # tokens of a chunk; s = e^mu / (e^mu + 1/t - 1) at t = 0.999, 0.4995: 0.99937, 0.61320), taken as pure noise:
    # sigma_t = 0.7 sqrt(0.99937 / (1 - 0.61320)) = 1.1252, std = 1.1252 sqrt(0.99937 - 0.61320) = 0.6992 (~ a), not
    # 0.7 sqrt(0.99937 / 0.00063) sqrt(0.38617) = 17.3 as the plain square-root scale would make it
    s = trajectory.sigmas
    transitions = sde_transitions(HELIOS, s, a)
    assert float(s[0]) == pytest.approx(0.99937, abs=1e-5) and float(s[1]) == pytest.approx(0.61320, abs=1e-5)
    assert float(transitions.noise_scale(0)) * math.sqrt(float(s[0] - s[1])) == pytest.approx(0.6992, abs=2e-4)

    # by hand: the pipeline's own scheduler (Euler-configured, reset per chunk) for the Euler part and the sigmas, the
    # transformer called with a history built here as the pipeline builds it, Flow-GRPO's correction and Gaussian on top
    embeds, negative_embeds = pipe.encode_prompt(PROMPTS, [HELIOS_NEGATIVE_PROMPT] * 2, do_classifier_free_guidance=True, max_sequence_length=16)
    indices = torch.arange(29).split([1, 16, 2, 1, 9])  # prefix, long, mid, 1x, the chunk
    mu = calculate_shift(36, 256, 4096, 0.5, 1.15)
    history, prefix = torch.zeros(2, 16, 19, 4, 4), torch.zeros(2, 16, 1, 4, 4)
    for k in range(K):
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(N, sigmas=np.linspace(0.999, 0.0, N + 1)[:-1], mu=mu)
        long_, mid, one = history[:, :, -19:].split([16, 2, 1], dim=2)
        inputs = dict(indices_hidden_states=indices[4][None], indices_latents_history_short=torch.cat([indices[0], indices[3]])[None],
                      indices_latents_history_mid=indices[2][None], indices_latents_history_long=indices[1][None],
                      latents_history_short=torch.cat([prefix, one], dim=2), latents_history_mid=mid, latents_history_long=long_)
        for j, t in enumerate(scheduler.timesteps):
            step = k * N + j
            x, x_next = trajectory.latents[:, step + k], trajectory.latents[:, step + k + 1]
            with torch.no_grad():
                cond_v, uncond_v = (pipe.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=e, return_dict=False, **inputs)[0]
                                    for e in (embeds, negative_embeds))
            v = uncond_v + 5.0 * (cond_v - uncond_v)
            sigma, sigma_next = float(scheduler.sigmas[j]), float(scheduler.sigmas[j + 1])
            euler_step = scheduler.step(v, t, x, return_dict=False)[0]  # x + (sigma' - sigma) v
            noise_scale = a * math.sqrt(sigma / (1 - (float(scheduler.sigmas[1]) if j == 0 else sigma)))
            dt = sigma_next - sigma
            mean = euler_step + dt * noise_scale**2 / (2 * sigma) * (x + (1 - sigma) * v)
            std = noise_scale * math.sqrt(-dt)
            by_hand = (-((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3, 4))
            # equal to float rounding (1.2e-7 measured); the control below shows a wrong history moves them 20x past this
            assert torch.allclose(by_hand, lp[:, step], rtol=0, atol=1e-5), (k, j, by_hand, lp[:, step])
        final = trajectory.latents[:, k * (N + 1) + N]
        prefix = final[:, :, :1] if k == 0 else prefix  # the first chunk's first latent frame, from then on
        history = torch.cat([history, final], dim=2)

    # the training pass: each step recomputed from the record alone (the history rebuilt from the recorded chunk finals)
    model, dtype = HELIOS.denoiser(pipe), pipe.transformer.dtype
    for step in range(K * N):
        k, j = divmod(step, N)
        x, x_next = trajectory.latents[:, step + k], trajectory.latents[:, step + k + 1]
        with torch.no_grad():
            step_cond = step_conditioning(HELIOS, cond, trajectory.latents, k, K)
            v = predict_velocity(model, x, trajectory.timesteps[j], step_cond, negative, guidance, dtype)
            assert torch.equal(transitions.step(j, x, v, prev_sample=x_next).log_prob, lp[:, step])
            # nft's teacher forcing (the video's own clean earlier chunks) is the history the chunk was sampled with
            forced = video_conditioning(HELIOS, cond, trajectory.final, k, K)
            assert all(torch.equal(forced.tensors[key], step_cond.tensors[key]) for key in step_cond.tensors)
            if k == 2:  # control: the previous chunk's history in place of this chunk's moves the log-probs (2e-4 on the tiny model)
                v = predict_velocity(model, x, trajectory.timesteps[j], step_conditioning(HELIOS, cond, trajectory.latents, 1, K), negative, guidance, dtype)
                wrong_history = transitions.step(j, x, v, prev_sample=x_next).log_prob
                assert (wrong_history - lp[:, step]).abs().max() > 5e-5


def test_flow_grpo_trains_the_tiny_recipe_per_chunk_and_a_window_credits_only_its_chunks_steps(tmp_path):
    from cac_align.config import load_config
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run, trained_timesteps
    from cac_align.rewards.registry import build_reward

    # seed 1 trains steps 0 and 1 of the 2 chunks x 2 steps: the first chunk's alone
    assert trained_timesteps(4, 0.5, 0, 1) == [0, 1]

    def one_step(window, out):
        pipe = HELIOS.build_tiny("tiny-random:helios")
        base = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
        # every sample localized (apply_to all; the toy judge flags its window on every video), nothing outside the window,
        # no KL: a step's gradient comes from its chunk's share of the credit map alone
        config = load_config(FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_helios.yaml",
                             [f"out_dir={out}", f"prompts={REPO_ROOT / 'recipes/align/prompts_tiny.txt'}", "steps=1", "checkpoint_every=0", "seed=1",
                              "timestep_fraction=0.5", "beta=0", "advantage.localize.enabled=true", "advantage.localize.apply_to=all",
                              "advantage.localize.dilate=0"], job="flow-grpo")
        run(config, pipe=pipe, reward=build_reward({"name": "spot_brightness", "box": [0, 0, 1000, 1000], "window_s": list(window)}))
        (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert row["train/timesteps"] == 2 and row["localize/localized_fraction"] == 1.0
        return row, pipe, base

    # a window in the second chunk ([1.5, 2.0) s at 24 fps: frames 36 .. 47): the first chunk's steps take none of it
    row, pipe, _ = one_step((1.5, 2.0), tmp_path / "second")
    assert row["train/grad_norm"] == 0.0
    # control: the window moved into the first chunk ([0.5, 1.0) s: frames 12 .. 23) trains its steps
    row, pipe, base = one_step((0.5, 1.0), tmp_path / "first")
    assert row["train/grad_norm"] > 0 and row["train/ratio_mean"] == 1.0  # the recomputed log-probs are the recorded ones
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert len(lora) == 2 * 2 * 4 and all(torch.count_nonzero(p) for p in lora.values())  # 2 blocks x 2 attentions x 4 projections, each moved
    after = {n.replace(".base_layer", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" not in n}
    assert set(after) == set(base) and all(torch.equal(after[n], base[n]) for n in base)  # the base as it was
    assert (tmp_path / "first/lora/pytorch_lora_weights.safetensors").is_file()


def test_image_to_video_at_noise_0_is_the_pipeline_given_the_images_posterior_mean_without_its_noise(euler):
    from diffusers.utils import load_image

    from cac_align.gen.family import Conditioning
    from cac_align.gen.generator import encode_conditioning, sample_with_log_probs
    from cac_align.run.input_files import PromptImage

    config, pipe = euler
    config = GeneratorConfig(**{**TINY, "num_frames": 65})
    image = PromptImage.of(REPO_ROOT / "recipes/align/image_red_ball.png")
    guidance = HELIOS.guidance(config)
    cond, negative = encode_conditioning(pipe, HELIOS, PROMPTS, [image, image], config, guidance)
    # the image alone and the last latent of a 33-frame clip of it, each the posterior's mean, normalized as the pipeline does
    vae = pipe.vae
    mean, inv_std = (torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1), 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1))
    pixels = pipe.video_processor.preprocess(load_image(str(image.image)), height=32, width=32).unsqueeze(2)
    with torch.no_grad():
        assert torch.equal(cond.image_latents[:1], (vae.encode(pixels).latent_dist.mean - mean) * inv_std)
        assert torch.equal(cond.fake_image_latents[:1], ((vae.encode(pixels.repeat(1, 1, 33, 1, 1)).latent_dist.mean - mean) * inv_std)[:, :, -1:])
    sigmas, timesteps = HELIOS.schedule(pipe, config)
    generators = lambda: [torch.Generator().manual_seed(s) for s in SEEDS]  # noqa: E731
    trajectory = sample_with_log_probs(pipe, HELIOS.denoiser(pipe), cond, negative, generators(), config=config, sigmas=sigmas, timesteps=timesteps,
                                       noise_level=0.0)
    own = pipe(prompt=PROMPTS, negative_prompt=[HELIOS_NEGATIVE_PROMPT] * 2, image_latents=cond.image_latents, fake_image_latents=cond.fake_image_latents,
               add_noise_to_image_latents=False, generator=generators(), height=32, width=32, num_frames=65, num_inference_steps=2, guidance_scale=5.0,
               max_sequence_length=16, output_type="latent").frames
    assert own.shape == (2, 16, 19, 4, 4) and torch.equal(trajectory.final, own[:, :, 1:])  # the pipeline's latents hold the fake frame first
    text_only = sample_with_log_probs(pipe, HELIOS.denoiser(pipe), Conditioning(embeds=cond.embeds), negative, generators(), config=config,
                                      sigmas=sigmas, timesteps=timesteps, noise_level=0.0)
    assert (text_only.final - trajectory.final).abs().max() > 1e-2  # control: the image conditions every chunk


def test_the_memory_plans_tokens_per_forward_are_what_the_transformer_sees(tiny):
    _, pipe = tiny
    seen = []
    hook = pipe.transformer.blocks[0].register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("hidden_states", args[0] if args else None).shape[1]), with_kwargs=True)
    try:
        for height, width in ((32, 32), (48, 80)):
            seen.clear()
            pipe(prompt=["a"], generator=torch.Generator().manual_seed(0), height=height, width=width, num_frames=33, num_inference_steps=1,
                 guidance_scale=1.0, max_sequence_length=16, output_type="latent")
            # 48 x 80: the chunk 9 x 6/2 x 10/2 = 135, short 2 x 3 x 5 = 30, mid 1 x 2 x 3 = 6, long 4 x 1 x 2 = 8: 179
            assert seen == [HELIOS.sequence_tokens(33, height, width)] and HELIOS.sequence_tokens(97, height, width) == seen[0]
    finally:
        hook.remove()
    assert HELIOS.sequence_tokens(33, 48, 80) == 179 and HELIOS.sequence_tokens(97, 384, 640) == 11040  # the release's: 8,640 + 2,400


def test_the_memory_plan_traces_the_vae_chunk_by_chunk_as_the_family_runs_it(tiny, monkeypatch):
    """The plan's VAE rows trace the calls the family makes: decode a 9-latent-frame chunk at a time (2 calls for 65
    frames, not one of 17 latent frames), and dpo's encode 33 frames at a time (97 frames: 3 calls, the last padded)."""
    from diffusers import AutoencoderKLWan

    from cac_align.gen.lora import LoraSettings
    from cac_align.plan import trace
    from cac_align.plan.counts import counted_generator

    config, pipe = tiny
    calls = []
    for method in ("decode", "encode"):
        original = getattr(AutoencoderKLWan, method)
        monkeypatch.setattr(AutoencoderKLWan, method, lambda self, x, *a, _o=original, _m=method, **k: calls.append((_m, tuple(x.shape))) or _o(self, x, *a, **k))
    monkeypatch.setattr(trace, "_VAE_TRACES", {})  # traced afresh here
    counts = counted_generator(config, LoraSettings(rank=4))
    assert counts.vae_clip == 9 and counts.latent_frames_of(97) == 27
    planned = {}
    for what, batch, frames in (("decode", 2, 65), ("encode", 1, 97)):
        calls.clear()
        planned[what] = trace.vae_bytes(counts, what, batch, (frames, 32, 32), "float32")
        assert planned[what] > 0 and calls, what
        planned[what] = [c for c in calls if c[0] == what]  # the probe encode the decode's trace makes to learn the latent grid aside
    calls.clear()
    HELIOS.decode(pipe, torch.randn(2, 16, 18, 4, 4))
    assert calls == planned["decode"] == [("decode", (2, 16, 9, 4, 4))] * 2
    calls.clear()
    HELIOS.encode_video(pipe, torch.randint(0, 256, (97, 32, 32, 3), dtype=torch.uint8).numpy())
    assert calls == planned["encode"] == [("encode", (1, 3, 33, 32, 32))] * 3


def test_dpo_encodes_chunk_by_chunk_and_trains_a_drawn_chunk_with_each_members_own_history(tiny, tmp_path, monkeypatch):
    from cac_align.config import load_config
    from cac_align.gen.family import Conditioning
    from cac_align.jobs.best_of_n import BonConfig
    from cac_align.jobs.best_of_n import run as best_of_n
    from cac_align.jobs.dpo import DpoConfig, chunk_rows, pair_chunk
    from cac_align.jobs.dpo import run as dpo

    _, pipe = tiny
    # the cache's encode: each 33-frame chunk alone (the VAE restarts there), the last chunk's cut frames its last frame repeated
    frames = torch.randint(0, 256, (97, 32, 32, 3), dtype=torch.uint8).numpy()
    latents = HELIOS.encode_video(pipe, frames)
    assert latents.shape == (16, 27, 4, 4)
    last = torch.as_tensor(frames[66:]).permute(3, 0, 1, 2)[None]
    last = torch.cat([last, last[:, :, -1:], last[:, :, -1:]], dim=2) / 127.5 - 1.0  # 31 frames + 2 repeats = 33
    vae = pipe.vae
    with torch.no_grad():
        own = (vae.encode(last).latent_dist.mode() - torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)) / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    assert torch.allclose(latents[:, 18:], own[0], atol=1e-5)
    with pytest.raises(ValueError, match="encodes the videos it makes .* got 81 frames"):
        HELIOS.encode_video(pipe, frames[:81])

    # a micro-batch of 2 pairs of 2 chunks, the first pair drawn to train chunk 1, the second chunk 0: each member's own
    # history (the buffer's 19 frames are 10 zeros and its chunk 0: frames 0 .. 5 end the long history, 6, 7 the mid, 8 the
    # short after the prefix, its first frame; all zeros before chunk 0)
    batch = {"winner": torch.randn(2, 16, 18, 4, 4), "loser": torch.randn(2, 16, 18, 4, 4), "mask": torch.zeros(2, 18, 4, 4)}
    part, cond_w, cond_l = chunk_rows(HELIOS, batch, Conditioning(embeds=torch.randn(2, 3, 32)), [1, 0], 2)
    assert torch.equal(part["winner"][0], batch["winner"][0, :, 9:]) and torch.equal(part["loser"][1], batch["loser"][1, :, :9])
    for cond, name in ((cond_w, "winner"), (cond_l, "loser")):
        first = batch[name][0, :, :9]
        assert torch.equal(cond.history_long[0, :, -6:], first[:, :6]) and cond.history_long[0, :, :10].abs().sum() == 0
        assert torch.equal(cond.history_mid[0], first[:, 6:8]) and torch.equal(cond.history_short[0], first[:, [0, 8]])
        assert cond.history_long[1].abs().sum() == 0 and cond.history_short[1].abs().sum() == 0
    assert {pair_chunk(0, step, 0, 2) for step in range(8)} == {0, 1}  # drawn, both chunks over steps

    monkeypatch.chdir(REPO_ROOT)  # the recipes' prompt file
    best_of_n(load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_helios.yaml", [f"out_dir={tmp_path / 'bon'}"], job="bon"))
    trained = HELIOS.build_tiny("tiny-random:helios")
    out = tmp_path / "dpo"
    dpo(load_config(DpoConfig, REPO_ROOT / "recipes/align/dpo_tiny_helios.yaml", [f"out_dir={out}", f"pairs=[{tmp_path / 'bon'}]", "steps=1",
                                                                                  "checkpoint_every=0"], job="dpo"), pipe=trained)
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["train/grad_norm"] > 0 and all(torch.count_nonzero(p) for n, p in trained.transformer.named_parameters() if "lora_B" in n)


def test_a_lora_we_write_loads_into_diffusers_own_helios_pipeline_and_gives_our_frames(tmp_path):
    """docs/using_your_lora.md: the file our trainers write loads with HeliosPipeline's own ``load_lora_weights``
    (HeliosLoraLoaderMixin), and the pipeline then makes the frames our trained transformer makes, hash for hash."""
    from cac_align.gen.generator import LORA_WEIGHT_NAME, generate_videos
    from conftest import write_trained_lora

    config = GeneratorConfig(**{**TINY, "num_frames": 33})
    trained = HELIOS.build_tiny("tiny-random:helios")
    write_trained_lora(trained.transformer, list(HELIOS.lora_target_modules), tmp_path / "lora", HELIOS.pipeline_class)
    fresh = HELIOS.build_tiny("tiny-random:helios")
    base = generate_videos(fresh, config, PROMPTS[:1], SEEDS[:1]).frames
    fresh.load_lora_weights(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME)
    ours, theirs = (generate_videos(pipe, config, PROMPTS[:1], SEEDS[:1]).frames for pipe in (trained, fresh))
    assert _hashes(theirs) == _hashes(ours) and _hashes(base) != _hashes(ours)  # control: without it, other frames
