"""Helios (cac_align.gen.families.helios, issue #106 stage 1): a saved folder of any name is read by its
model_index.json (HeliosPyramidPipeline refused in one line); bon runs the shipped tiny recipe from a saved folder
and writes 24 fps videos; bon's frames are diffusers' HeliosPipeline.__call__'s with the same seeds, byte for byte
(text to video batched, image to video one row a call), and the family's per-chunk decode gives the pipeline's frames
from its latents; the trainers are refused as their config is read, a frame count the chunks do not make as the
generator's config is read, each in one line."""

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


def test_the_trainers_are_refused_as_their_config_is_read(tmp_path):
    from cac_align.config import load_config
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.nft import NftConfig

    helios = "generator.name=tiny-random:helios"
    for cls, job, recipe in ((FlowGrpoConfig, "flow-grpo", "flow_grpo"), (NftConfig, "nft", "nft"), (DpoConfig, "dpo", "dpo")):
        with pytest.raises(RecipeError, match=r"Helios is not trained here yet \(issue #106\).*per-chunk trajectories: not yet") as error:
            load_config(cls, REPO_ROOT / f"recipes/align/{recipe}_tiny.yaml", [f"out_dir={tmp_path / job}", helios, "generator.num_frames=33"], job=job)
        assert "\n" not in str(error.value)
    # a recipe naming its LoRA's modules itself passes the config; what a trainer asks of the family refuses it
    for ask in (lambda: HELIOS.denoiser(None), lambda: HELIOS.schedule(None, None), lambda: HELIOS.initial_latents(None, None, [])):
        with pytest.raises(RecipeError, match="per-chunk trajectories: not yet"):
            ask()
    with pytest.raises(RecipeError, match="parallel.context_parallel must be 1 for Helios") as error:
        HELIOS.check_context_parallel(GeneratorConfig(**TINY), 2, {})
    assert "\n" not in str(error.value)


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


def test_bon_by_folder_runs_the_tiny_recipe_and_writes_its_24_fps_videos(saved, tmp_path, monkeypatch):
    from cac_align.config import load_config
    from cac_align.jobs.best_of_n import BonConfig, run
    from cac_align.video import load_video

    monkeypatch.chdir(REPO_ROOT)  # the recipe's prompt file
    out = tmp_path / "bon"
    config = load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_helios.yaml", [f"out_dir={out}", f"generator.name={saved}"], job="bon")
    run(config)
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["valid"] for r in rows)  # 2 prompts x 2 candidates
    for row in rows:
        video = load_video(str(out / row["video"]))
        assert video.frames.shape == (65, 32, 32, 3) and video.fps == 24.0
