"""Wan's image-to-video models behind the family interface (cac_align.gen.families.wan): Wan2.1-I2V-14B
(the image's latents and a frame mask as channels beside the noise, CLIP tokens beside the text),
Wan2.2-I2V-A14B (the same channels, two experts, a last frame too) and the TI2V-5B animating an
image (its first latent frame fixed to the image's). With the SDE noise off our sampler gives
diffusers' ``WanImageToVideoPipeline``'s latents for the same image, prompts and seeds; the frames
an image fixes are never stepped, scored or trained; the family is read from the model's files; a
prompt file that does not fit the model is a one-line error; a LoRA of an I2V model goes through
diffusers' files and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cac_align.config import RecipeError
from cac_align.gen.family import Conditioning, UnknownGeneratorError, check_prompt_images, family_of, whole_latents
from cac_align.gen.generator import (GeneratorConfig, build_generator, encode_conditioning, generate_videos, load_lora, sample_with_log_probs,
                                     save_lora, video_velocity)
from cac_align.gen.lora import LoraSettings, add_expert_loras
from cac_align.rl.sde import SDESchedule, flow_grpo_loss
from cac_align.gen.families.wan import TINY_WAN_BUILDERS
from cac_align.gen.families.wan import WAN21_I2V, WAN21_I2V_NEGATIVE_PROMPT, WAN22_I2V_A14B, WAN22_TI2V, WAN_NEGATIVE_PROMPT, WanFamily
from cac_align.run.input_files import PromptImage

PROMPTS = ["a red ball in the park", "a dog walking"]
SEEDS = (11, 12)
CASES = {
    # case: (generator.name, frame side, guidance, guidance_2, a last frame too)
    "wan21-i2v": ("tiny-random:wan21-i2v", 32, 2.0, None, False),
    "wan22-i2v-a14b": ("tiny-random:wan22-i2v-a14b", 32, 2.0, 1.5, False),
    "wan22-i2v-a14b-last": ("tiny-random:wan22-i2v-a14b", 32, 2.0, 1.5, True),
    "wan22-ti2v": ("tiny-random:wan22-ti2v", 64, 2.0, None, False),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two random RGB images of another shape than the frames (40 x 56): a first and a last frame."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("first.png", "last.png"):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / name)
        paths.append(str(root / name))
    return paths


def _config(case: str, steps: int = 3) -> GeneratorConfig:
    name, side, guidance, guidance_2, _ = CASES[case]
    return GeneratorConfig(name=name, dtype="float32", device="cpu", height=side, width=side, num_frames=9, num_inference_steps=steps,
                           guidance_scale=guidance, guidance_scale_2=guidance_2)


def _prompt_image(case: str, images) -> PromptImage:
    return PromptImage(images[0], images[1] if CASES[case][4] else None)


def _ours(pipe, config, image, *, guidance=None, noise_level=0.0, change=None, positions=False):
    """Our SDE sampler's trajectory from ``encode_conditioning``'s conditioning (``change``: a
    function that alters it first, for the controls)."""
    family = config.family
    guidance = family.guidance(config) if guidance is None else guidance
    cond, negative = encode_conditioning(pipe, family, PROMPTS, [image] * len(PROMPTS), config, guidance)
    if change is not None:
        cond = change(cond)
    sigmas, timesteps = family.schedule(pipe, config)
    denoiser = family.denoiser(pipe)
    trajectory = sample_with_log_probs(pipe, denoiser, cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS], config=config,
                                       sigmas=sigmas, timesteps=timesteps, noise_level=noise_level, guidance=guidance, positions=positions)
    return trajectory, cond, denoiser


def _theirs(pipe, config, image):
    """diffusers' ``WanImageToVideoPipeline``'s final latents (the whole video's) for the same
    image, prompts, negative prompt (the family's) and per-sample generators."""
    from diffusers import WanImageToVideoPipeline
    from diffusers.utils import load_image

    animate = pipe if isinstance(pipe, WanImageToVideoPipeline) else WanImageToVideoPipeline.from_pipe(pipe)
    extra = {"guidance_scale_2": config.guidance_scale_2} if config.guidance_scale_2 is not None else {}
    return animate(image=load_image(image.image), last_image=load_image(image.last_image) if image.last_image else None, prompt=PROMPTS,
                   negative_prompt=[config.family.negative_prompt] * len(PROMPTS), height=config.height, width=config.width,
                   num_frames=config.num_frames, num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                   generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent", **extra).frames


def _without(name):
    return lambda cond: Conditioning(**{k: v for k, v in cond.tensors.items() if k != name})


def _replaced(name, edit):
    def change(cond):
        tensor = cond.tensors[name].clone()
        edit(tensor)
        return Conditioning(**{**cond.tensors, name: tensor})
    return change


# what each control breaks: Wan2.1-I2V without its CLIP tokens; the A14B with a mask that marks no
# frame as given; with a last image, a mask that forgets the last frame; the TI2V with a black first frame
CONTROLS = {
    "wan21-i2v": _without("image_embeds"),
    "wan22-i2v-a14b": _replaced("condition", lambda c: c[:, :4].zero_()),
    "wan22-i2v-a14b-last": _replaced("condition", lambda c: c[:, :4, -1].zero_()),
    "wan22-ti2v": _replaced("fixed", lambda f: f.zero_()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_ode_sampler_is_the_image_to_video_pipelines_own(case, images):
    config = _config(case)
    pipe = build_generator(config)
    image = _prompt_image(case, images)
    trajectory, cond, _ = _ours(pipe, config, image)
    theirs = _theirs(pipe, config, image)
    # 9 frames: 3 latent frames; the TI2V's first is the image's and is not sampled
    fixed = 1 if case == "wan22-ti2v" else 0
    channels, latent_side = (48, 4) if case == "wan22-ti2v" else (16, 4)  # the 5B's VAE: 48 channels, 16x; Wan-2.1's: 16, 8x
    assert trajectory.latents.shape == (2, 4, channels, 3 - fixed, latent_side, latent_side)
    assert theirs.shape == (2, channels, 3, latent_side, latent_side)
    torch.testing.assert_close(whole_latents(cond, trajectory.latents[:, -1]), theirs.float(), rtol=0, atol=1e-5)
    # ... and the comparison can fail: the conditioning without what the case's model reads gives other frames
    wrong = _ours(pipe, config, image, change=CONTROLS[case])[0].latents[:, -1]
    assert (wrong - theirs[:, :, fixed:]).abs().max() > 100 * 1e-5


@pytest.mark.parametrize("case", ["wan21-i2v", "wan22-i2v-a14b-last"])
def test_best_of_n_videos_are_the_decoded_ode_samples(case, images, monkeypatch):
    # what `bon` writes (the family's generate: the pipeline's own call with the family's negative prompt,
    # both experts' scales, the last frame) decodes the latents our ODE sampler ends at: the VAE is
    # handed the same latents (the tiny VAE's frames barely depend on them, so the latents are compared)
    config = _config(case)
    pipe = build_generator(config)
    image = _prompt_image(case, images)
    decoded = []
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *args, **kwargs: decoded.append(z.clone()) or decode(z, *args, **kwargs))
    trajectory, cond, _ = _ours(pipe, config, image)
    config.family.decode(pipe, whole_latents(cond, trajectory.latents[:, -1]))
    made = generate_videos(pipe, config, PROMPTS, SEEDS, images=[image] * len(PROMPTS)).frames
    assert made.shape == (2, 9, 32, 32, 3) and len(decoded) == 2
    torch.testing.assert_close(decoded[1], decoded[0], rtol=0, atol=1e-5)


def test_wan21_i2v_samples_with_its_releases_negative_prompt():
    # Wan2.1's wan_i2v_14B.py puts "camera shake" in front of the shared negative prompt; the pipeline
    # comparison above passes the family's, so this pins that the family's is that one
    assert WAN21_I2V.negative_prompt == "镜头晃动，" + WAN_NEGATIVE_PROMPT == WAN21_I2V_NEGATIVE_PROMPT
    assert WAN22_I2V_A14B.negative_prompt == WAN_NEGATIVE_PROMPT == WAN22_TI2V.negative_prompt
    pipe = TINY_WAN_BUILDERS["tiny-random:wan21-i2v"](seed=0)
    guided = {"guidance_scale": 2.0, "guidance_scale_2": None}
    _, default = WAN21_I2V.encode_prompts(pipe, PROMPTS[:1], None, guided, 512)
    _, shared = WAN21_I2V.encode_prompts(pipe, PROMPTS[:1], WAN_NEGATIVE_PROMPT, guided, 512)
    _, own = WAN21_I2V.encode_prompts(pipe, PROMPTS[:1], WAN21_I2V_NEGATIVE_PROMPT, guided, 512)
    assert torch.equal(default.embeds, own.embeds) and not torch.equal(default.embeds, shared.embeds)


def _capture(module, grads):
    """A forward hook keeping the transformer's output, its gradient retained."""
    def hook(_module, _args, _kwargs, output):
        output[0].retain_grad()
        grads.append(output[0])
    return module.register_forward_hook(hook, with_kwargs=True)


def _shift_frame(module, frame):
    """A forward hook adding 1 to the transformer's output at latent frame ``frame``."""
    def hook(_module, _args, _kwargs, output):
        out = output[0].clone()
        out[:, :, frame] += 1.0
        return (out, *output[1:])
    return module.register_forward_hook(hook, with_kwargs=True)


def _step_loss(trajectory, denoiser, cond, guidance, j=1):
    """Flow-GRPO's loss on step ``j`` as ``flow-grpo``'s update builds it: the step's log-prob of
    the recorded next latents recomputed with gradient (``SDESchedule.step(..., prev_sample=...)``),
    the PPO-clip loss against the recorded log-prob with advantages +1 and -1."""
    transitions = SDESchedule(trajectory.sigmas, 0.7)
    x, x_next = trajectory.latents[:, j], trajectory.latents[:, j + 1]
    velocity = video_velocity(denoiser, x, trajectory.timesteps[j], cond, None, guidance, torch.float32)
    policy = transitions.step(j, x, velocity, prev_sample=x_next)
    loss, _ = flow_grpo_loss(policy.log_prob, trajectory.log_probs[:, j], torch.tensor([1.0, -1.0]), clip_range=0.2)
    return loss


def test_an_images_fixed_frame_carries_no_log_prob_and_no_gradient(images):
    config = _config("wan22-ti2v")
    pipe = build_generator(config)
    guidance = config.family.guidance(config, guided=False)  # one forward a step
    trajectory, cond, denoiser = _ours(pipe, config, PromptImage(images[0]), guidance=guidance, noise_level=0.7, positions=True)
    # 3 latent frames, the first the image's: the trajectory and its log-densities hold the other 2
    assert trajectory.latents.shape[3] == 2 and trajectory.log_prob_maps.shape[2] == 2 and cond.fixed.shape[1:] == (48, 1, 4, 4)
    outputs = []
    hook = _capture(pipe.transformer, outputs)
    try:
        loss = _step_loss(trajectory, denoiser, cond, guidance)
        loss.backward()
    finally:
        hook.remove()
    grad = outputs[0].grad  # the transformer's output over the whole video (B, C, 3, H', W')
    assert grad.shape == (2, 48, 3, 4, 4)
    assert torch.count_nonzero(grad[:, :, 0]) == 0  # the image's frame: exactly no gradient
    assert bool((grad[:, :, 1:] != 0).all())  # every generated position: some
    # perturbing the transformer's output at the image's frame leaves the loss as it was; at a generated frame, not
    with torch.no_grad():
        base = _step_loss(trajectory, denoiser, cond, guidance)
        changed = {}
        for frame in (0, 1):
            hook = _shift_frame(pipe.transformer, frame)
            try:
                changed[frame] = _step_loss(trajectory, denoiser, cond, guidance)
            finally:
                hook.remove()
    assert torch.equal(changed[0], base) and abs(float(changed[1] - base)) > 1e-4


def test_channel_conditioning_is_an_input_not_a_latent(images):
    config = _config("wan21-i2v")
    pipe = build_generator(config)
    guidance = config.family.guidance(config, guided=False)
    trajectory, cond, denoiser = _ours(pipe, config, PromptImage(images[0]), guidance=guidance, noise_level=0.7)
    # the transformer reads 36 channels (16 noise + 4 mask + 16 image latents); the sampler steps the 16 it writes, every frame
    assert pipe.transformer.config.in_channels == 36 and trajectory.latents.shape[2:] == (16, 3, 4, 4)
    assert cond.condition.shape == (2, 20, 3, 4, 4) and cond.image_embeds.shape == (2, 17, 32)  # CLIP: 16 patches + the class token
    torch.testing.assert_close(cond.condition[:, :4, 0], torch.ones(2, 4, 4, 4))  # the mask: the first frame is given ...
    assert not cond.condition[:, :4, 1:].any()  # ... and no other
    _step_loss(trajectory, denoiser, cond, guidance).backward()
    assert not cond.condition.requires_grad and not cond.image_embeds.requires_grad
    assert all(p.grad is None for module in (pipe.vae, pipe.image_encoder, pipe.text_encoder) for p in module.parameters())
    assert pipe.transformer.patch_embedding.weight.grad.abs().sum() > 0
    assert pipe.transformer.condition_embedder.image_embedder.ff.net[0].proj.weight.grad.abs().sum() > 0  # the CLIP tokens are read


def test_the_family_is_read_from_the_pipelines_files(tmp_path):
    for name, family in (("tiny-random:wan21-i2v", WAN21_I2V), ("tiny-random:wan22-i2v-a14b", WAN22_I2V_A14B)):
        folder = tmp_path / family.name
        TINY_WAN_BUILDERS[name](seed=0).save_pretrained(str(folder))
        assert family_of(str(folder)) is family
        loaded = family.load(str(folder), dtype="float32", vae_dtype="float32", key="generator.name")
        assert type(loaded).__name__ == "WanImageToVideoPipeline" == family.pipeline_class
        assert (loaded.image_encoder is not None) == (family is WAN21_I2V) and (loaded.transformer_2 is not None) == (family.experts == 2)
    assert WAN22_I2V_A14B.load.__func__ is WanFamily.load  # one loader, the family's class
    # the TI2V-5B's files as the image-to-video pipeline are still the TI2V-5B; one of no known release is refused in one line
    index = json.loads((tmp_path / "wan2.1-i2v" / "model_index.json").read_text())
    from cac_align.gen.family import family_from_index

    assert family_from_index({**index, "image_encoder": [None, None], "expand_timesteps": True}, "x") is WAN22_TI2V
    index["image_encoder"] = [None, None]
    (tmp_path / "wan2.1-i2v" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnknownGeneratorError, match=r"WanImageToVideoPipeline of no Wan release known here") as error:
        family_of(str(tmp_path / "wan2.1-i2v"))
    assert "\n" not in str(error.value) and "wan2.1-i2v" in str(error.value)


def test_prompt_images_that_do_not_fit_the_model_are_one_line_errors(images):
    first, both = PromptImage(images[0]), PromptImage(images[0], images[1])
    cases = [
        (family_of("tiny-random:wan"), [first], "a text-to-video model that takes none"),
        (WAN21_I2V, [None], "prompt 1 gives no image, and Wan2.1-I2V-14B .* is an image-to-video model"),
        (WAN22_I2V_A14B, [both, None], "prompt 2 gives no image"),
        (WAN22_TI2V, [both], "gives a last_image, and Wan2.2-TI2V-5B takes a first frame only"),
        (WAN21_I2V, [both], "gives a last_image, and Wan2.1-I2V-14B takes a first frame only"),
    ]
    for family, given, message in cases:
        with pytest.raises(RecipeError, match=message) as error:
            check_prompt_images(family, given, "prompts.jsonl")
        assert "\n" not in str(error.value)
    check_prompt_images(WAN22_I2V_A14B, [both, first], "prompts.jsonl")  # first-last frame: the A14B-I2V takes it
    check_prompt_images(WAN22_TI2V, [None, None], "prompts.jsonl")  # the TI2V-5B takes text alone too
    # the families refuse the same before they touch a pipeline
    with pytest.raises(ValueError, match="takes a first frame only"):
        WAN21_I2V.encode_images(None, None, [both])
    with pytest.raises(ValueError, match="is an image-to-video model: give each prompt an image"):
        WAN21_I2V.generate(None, _config("wan21-i2v"), PROMPTS, SEEDS)


@pytest.mark.parametrize("name", ["tiny-random:wan21-i2v", "tiny-random:wan22-i2v-a14b"])
def test_an_i2v_lora_goes_through_diffusers_files_and_back(name, tmp_path):
    from cac_align.gen.generator import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2

    family = family_of(name)
    pipe = TINY_WAN_BUILDERS[name](seed=0)
    denoiser = family.denoiser(pipe)
    settings = LoraSettings(rank=4, alpha=4.0, target_modules=list(family.lora_target_modules), experts="both" if family.experts == 2 else "high")
    adapted = add_expert_loras(denoiser, settings, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for expert in denoiser.experts:  # B = 0 at init: give the adapters something to carry
            for pname, param in expert.named_parameters():
                if "lora_B" in pname:
                    param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    for index in adapted:
        save_lora(denoiser.experts[index], tmp_path, weight_name=(LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2)[index], pipeline_class=family.pipeline_class)
    fresh = TINY_WAN_BUILDERS[name](seed=0)
    load_lora(fresh, family, str(tmp_path))
    x = torch.randn(1, 36, 3, 4, 4, generator=generator)
    text = torch.randn(1, 8, 32, generator=generator)
    extra = {"encoder_hidden_states_image": torch.randn(1, 17, 32, generator=generator)} if family is WAN21_I2V else {}
    base = TINY_WAN_BUILDERS[name](seed=0)
    with torch.no_grad():
        for trained, loaded, plain in zip(denoiser.experts, (fresh.transformer, fresh.transformer_2)[: family.experts],
                                          (base.transformer, base.transformer_2)[: family.experts]):
            want, got, without = (m(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False, **extra)[0]
                                  for m in (trained, loaded, plain))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            assert (want - without).abs().max() > 1e-3  # the LoRA changes the velocity: the round trip carried it


def test_animating_an_image_casts_no_module_of_the_text_pipeline():
    """The TI2V-5B is a WanPipeline checkpoint: its image mode runs WanImageToVideoPipeline over the
    same modules, in the dtypes they were loaded in (diffusers' from_pipe would cast them to float32)."""
    from cac_align.gen.generator import GeneratorConfig, generate_videos
    from cac_align.gen.families.wan import build_tiny_wan22_ti2v_pipeline
    from cac_align.run.input_files import read_prompt_rows
    from conftest import REPO_ROOT

    pipe = build_tiny_wan22_ti2v_pipeline(seed=0)
    pipe.transformer.to(torch.bfloat16)
    pipe.text_encoder.to(torch.bfloat16)
    config = GeneratorConfig(name="tiny-random:wan22-ti2v", dtype="bfloat16", device="cpu", height=32, width=32, num_frames=5,
                             num_inference_steps=2, guidance_scale=1.0)
    image = read_prompt_rows(REPO_ROOT / "recipes/align/prompts_tiny_i2v.jsonl")[0].image
    frames = generate_videos(pipe, config, ["a red ball"], [3], [image]).frames
    assert frames.shape == (1, 5, 32, 32, 3)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
