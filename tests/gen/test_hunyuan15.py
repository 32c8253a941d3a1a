"""HunyuanVideo-1.5 behind the generator interface (cac_align.gen.families.hunyuan15), on its tiny text-to-video
and image-to-video pipelines (diffusers' own HunyuanVideo15Pipeline and
HunyuanVideo15ImageToVideoPipeline classes): with the SDE noise off our sampler gives the pipeline's
own final latents under the release's guidance, text to video and image to video, and the comparison
fails for other settings or another image; ``generate`` is the pipeline's video; a folder saved by
diffusers' classes and cached under a hub id nobody lists is found as its family and samples as the
built one; the release settings, the frame-size buckets and the refusal of context parallel."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from cac_align.config import RecipeError
from cac_align.gen.family import family_of
from cac_align.gen.generator import GeneratorConfig, build_generator, encode_conditioning, generate_videos, sample_with_log_probs
from cac_align.gen.families.hunyuan15 import HUNYUAN15_I2V, HUNYUAN15_T2V, NEGATIVE_PROMPT, check_bucket
from cac_align.run.input_files import PromptImage

PROMPTS = ["a red ball on the street", 'a sign that says "hello"']  # the second quotes a glyph text: ByT5 encodes it
SEEDS = (11, 12)
NAMES = {"t2v": "tiny-random:hunyuanvideo15", "i2v": "tiny-random:hunyuanvideo15-i2v"}
TOL = 1e-5  # float rounding of our batch of 2 (CFG rows batched) against the pipeline's separate forwards


def _config(name: str, steps: int = 2, **settings) -> GeneratorConfig:
    # 32 x 32 is a bucket of the tiny transformer's target_size 32; 9 frames -> 3 latent frames (4x), 32 -> 2 (16x)
    return GeneratorConfig(name=name, dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=9,
                           num_inference_steps=steps, max_sequence_length=16, negative_prompt="blurry", **settings)


@pytest.fixture(scope="module")
def pipes():
    return {mode: build_generator(_config(name)) for mode, name in NAMES.items()}  # 0.7 s each


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two first frames of coloured 8 x 8 blocks, 40 x 48 (centre-cropped and resized to 32 x 32)."""
    folder = tmp_path_factory.mktemp("frames")
    found = []
    for seed in (0, 1):
        blocks = np.random.default_rng(seed).integers(0, 256, size=(5, 6, 3))
        path = folder / f"first-{seed}.png"
        PIL.Image.fromarray(np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)).save(path)
        found.append(PromptImage(image=str(path)))
    return found


def _ours(pipe, config, images=None):
    family = config.family
    guidance = family.guidance(config)
    cond, negative = encode_conditioning(pipe, family, PROMPTS, images, config, guidance)
    sigmas, timesteps = family.schedule(pipe, config)
    return sample_with_log_probs(pipe, family.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS], config=config,
                                 sigmas=sigmas, timesteps=timesteps, noise_level=0.0).latents[:, -1]


def _theirs(pipe, config, image=None):
    """The pipeline's own final latents, its guider set to ``config``'s scale and its text length to
    ``config``'s (the attributes its ``__call__`` reads)."""
    from diffusers.utils import load_image

    pipe.guider = pipe.guider.new(guidance_scale=config.guidance_scale)
    pipe.tokenizer_max_length = config.max_sequence_length
    size = {} if image is not None else dict(height=config.height, width=config.width)
    extra = {"image": load_image(image.image)} if image is not None else {}  # the file as it is: the pipeline picks 32 x 32 and crops
    try:
        return pipe(prompt=PROMPTS, negative_prompt=[config.negative_prompt] * 2, num_frames=config.num_frames, num_inference_steps=config.num_inference_steps,
                    generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent", **size, **extra).frames.float()
    finally:
        pipe.guider = pipe.guider.new(guidance_scale=6.0)
        pipe.tokenizer_max_length = 1000


@pytest.mark.slow  # 65 s wall at load ~8 on 2 cores (the file: 44 s of CPU), over the default suite's share: `pytest -m slow`
def test_the_ode_sampler_is_the_text_to_video_pipelines_own_latents(pipes):
    pipe, config = pipes["t2v"], _config(NAMES["t2v"])
    ours, theirs = _ours(pipe, config), _theirs(pipe, config)
    assert ours.shape == theirs.shape == (2, 4, 3, 2, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)
    # ... and the comparison can fail: without CFG (one forward a step) the pipeline samples other latents
    unguided = _theirs(pipe, _config(NAMES["t2v"], guidance_scale=1.0))
    assert (unguided - ours).abs().max() > 100 * TOL
    # generate (Best-of-N) is the pipeline's latents decoded one video at a time, as its VAE decodes one
    frames = generate_videos(pipe, config, PROMPTS, SEEDS).frames
    assert frames.shape == (2, 9, 32, 32, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, HUNYUAN15_T2V.decode(pipe, theirs))
    with torch.no_grad():
        one = pipe.vae.decode(theirs[:1] / pipe.vae.config.scaling_factor, return_dict=False)[0]
    expected = np.round(np.clip(pipe.video_processor.postprocess_video(one, output_type="np"), 0, 1) * 255).astype(np.uint8)
    assert np.abs(frames[:1].astype(int) - expected).max() <= 1


@pytest.mark.slow  # the image-to-video twin of the test above (57 s wall at load ~8): `pytest -m slow`
def test_the_ode_sampler_is_the_image_to_video_pipelines_own_latents(pipes, images):
    pipe, config = pipes["i2v"], _config(NAMES["i2v"])
    rows = [images[0], images[0]]  # a group shares its prompt's image
    ours = _ours(pipe, config, rows)
    theirs = _theirs(pipe, config, images[0])
    assert ours.shape == theirs.shape == (2, 4, 3, 2, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)
    # the image conditions every step: another image, other latents
    other = _ours(pipe, config, [images[1], images[1]])
    assert (other - ours).abs().max() > 100 * TOL
    frames = generate_videos(pipe, config, PROMPTS, SEEDS, images=rows).frames
    np.testing.assert_array_equal(frames, HUNYUAN15_I2V.decode(pipe, theirs))
    # a frame size the image-to-video pipeline would not pick for that image is refused in one line
    with pytest.raises(RecipeError, match="is not one of HunyuanVideo-1.5's frame sizes for its target size 32"):
        check_bucket(pipe, 48, 32)


@pytest.mark.slow  # 27 s wall at load ~8, with the module's two tiny pipelines built (61 s): `pytest -m slow`
def test_a_saved_pipeline_under_an_unlisted_hub_id_is_its_family_and_samples_as_built(pipes, hub_cache, tmp_path):
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    for mode, family in (("t2v", HUNYUAN15_T2V), ("i2v", HUNYUAN15_I2V)):
        folder = tmp_path / mode
        pipes[mode].save_pretrained(str(folder))
        repo = hub_cache / f"models--someone--hv15-{mode}-finetune"  # the hub cache's layout
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        assert family_of(f"someone/hv15-{mode}-finetune") is family
    # the release's settings, each with its source in cac_align/gen/families/hunyuan15.py
    config = GeneratorConfig(name="someone/hv15-t2v-finetune")
    assert (config.height, config.width, config.num_frames, config.fps, config.num_inference_steps) == (480, 848, 121, 24.0, 50)
    assert (config.guidance_scale, config.flow_shift, config.max_sequence_length, NEGATIVE_PROMPT) == (6.0, 5.0, 1000, "")
    assert family_of("hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v") is HUNYUAN15_I2V  # listed: known by name, not cached
    with pytest.raises(ValueError, match="num_frames must be 4k \\+ 1"):
        GeneratorConfig(name=NAMES["t2v"], num_frames=11)
    with pytest.raises(ValueError, match="stg_scale does not apply"):
        GeneratorConfig(name=NAMES["t2v"], stg_scale=1.0)
    with pytest.raises(RecipeError, match="context_parallel > 1 is not supported for HunyuanVideo-1.5"):
        HUNYUAN15_T2V.check_context_parallel(config, 2, {})
    # the memory plan counts it from its configs on the meta device (the cached folder's config.json files, no weights)
    from cac_align.gen.lora import LoraSettings
    from cac_align.plan.counts import count_generator
    from cac_align.plan.trace import vae_bytes

    for mode, encoders in (("t2v", ["text_encoder", "text_encoder_2"]), ("i2v", ["text_encoder", "text_encoder_2", "image_encoder"])):
        counts = count_generator(GeneratorConfig(name=f"someone/hv15-{mode}-finetune"), LoraSettings(rank=4))
        (transformer,) = counts.transformers
        assert transformer.parameters == sum(p.numel() for p in pipes[mode].transformer.parameters())  # 4.3M: the 2048-wide ByT5 projection
        assert len(transformer.blocks) == 2 and transformer.lora_width > 0 and [c.name for c in counts.encoders] == encoders
        assert (counts.hidden_size, counts.num_heads, counts.context_parallel, counts.vae_one_video) == (16, 2, False, True)
        # its VAE is traced on one video whatever the batch (it decodes video by video: diffusers' fails on two)
        assert vae_bytes(counts, "decode", 4, (9, 32, 32), "float32") == vae_bytes(counts, "decode", 1, (9, 32, 32), "float32") > 0
    # loaded back through from_pretrained, it samples what the built one samples
    loaded = build_generator(_config("someone/hv15-t2v-finetune", steps=2))
    assert torch.equal(_ours(loaded, _config("someone/hv15-t2v-finetune", steps=2)), _ours(pipes["t2v"], _config(NAMES["t2v"], steps=2)))
