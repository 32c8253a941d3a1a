"""The denoisers: what every family's velocity model gives the trainers (:class:`Denoiser`: its
experts, their LoRAs, the reference policy), and Wan's (:class:`WanDenoiser`): which transformer
(expert) serves a timestep, the timestep tensor it is given, and classifier-free guidance, as diffusers'
``WanPipeline.__call__`` computes them (diffusers 0.42, ``pipelines/wan/pipeline_wan.py``, the
denoising loop), so that our sampler and trainers step exactly as the pipeline does.

- **Wan-2.1**: one transformer; the timestep is one number per sample.
- **Wan2.2-TI2V-5B** (``expand_timesteps``): one transformer; every latent token gets its own
  timestep, ``(B, F' * H' / 2 * W' / 2)``. For text-to-video they are all ``t`` (the pipeline's
  mask is all ones: no frame is conditioned); animating an image, the first latent frame is the
  image's (the conditioning's ``fixed``) and its tokens get timestep 0, as
  ``WanImageToVideoPipeline`` does with ``expand_timesteps``.
- **Image-to-video through channels** (``WanImageToVideoPipeline`` without ``expand_timesteps``:
  Wan2.1-I2V, Wan2.2-I2V-A14B): the conditioning's ``condition`` (the frame mask and the image's
  latents) is concatenated to the latents on the channel axis, and Wan2.1-I2V's CLIP tokens
  (``image_embeds``) go to the transformer beside the text, for the conditional and the
  unconditional forward alike.
- **Wan2.2-A14B** (``transformer_2`` and ``boundary_ratio``): two experts of the same shape;
  ``transformer`` serves timesteps ``t >= boundary_ratio * num_train_timesteps`` (the high-noise
  steps) with ``guidance_scale``, ``transformer_2`` the rest with ``guidance_scale_2``.

:class:`WanDenoiser` is a ``torch.nn.Module`` holding the experts, so that one accelerate
``prepare`` wraps both (DDP or FSDP) and a LoRA on either trains through one forward. A sampler
calls it with one timestep for the batch; a trainer that noises each sample to its own level (dpo)
with one per sample, and each sample then goes to its own level's expert.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from cac_align.gen.family import fixed_frames

__all__ = ["Denoiser", "WanDenoiser"]


class Denoiser(torch.nn.Module):
    """What every family's denoiser (the velocity of a step; :class:`WanDenoiser`,
    :class:`cac_align.gen.families.ltx2.LTX2Denoiser`) gives the trainers: its transformers (experts), which
    of them serves a timestep, which carry a trained LoRA, the reference policy (their LoRAs off),
    and the noise levels the adapted ones serve. One transformer by default."""

    transformer: Any
    family: Any = None  # the family that built it: whose LoRA files it writes (its pipeline class)

    @property
    def experts(self) -> list[Any]:
        """The transformers, high-noise first."""
        return [self.transformer]

    def expert_index(self, timestep: Any) -> int:
        """The expert serving the scalar ``timestep`` (one transformer: 0)."""
        return 0

    def sigma_range(self) -> tuple[float, float]:
        """The noise levels the adapted experts serve (one transformer: all of (0, 1))."""
        return 0.0, 1.0

    def trained_experts(self) -> list[int]:
        """The experts with trainable parameters (a LoRA), by index."""
        return [i for i, expert in enumerate(self.experts) if any(p.requires_grad for p in expert.parameters())]

    def _adapted(self) -> list[Any]:
        return [expert for expert in self.experts if getattr(expert, "_hf_peft_config_loaded", False)]

    def disable_adapters(self) -> None:
        """Every expert's LoRA off: the reference policy (the base model)."""
        for expert in self._adapted():
            expert.disable_adapters()

    def enable_adapters(self) -> None:
        for expert in self._adapted():
            expert.enable_adapters()


class WanDenoiser(Denoiser):
    """The experts of a Wan pipeline and how a step calls them (module docstring).

    Args:
        transformer: the (high-noise) transformer.
        transformer_2: the low-noise expert, or None.
        boundary_timestep: the first timestep served by ``transformer`` when there are two
            (``boundary_ratio * num_train_timesteps``); None with one expert.
        expand_timesteps: per-token timesteps (Wan2.2-TI2V-5B).
    """

    def __init__(
        self,
        transformer: Any,
        transformer_2: Any = None,
        boundary_timestep: float | None = None,
        expand_timesteps: bool = False,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        if (transformer_2 is None) != (boundary_timestep is None):
            raise ValueError("two experts need a boundary timestep, and a boundary needs two experts")
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary_timestep = None if boundary_timestep is None else float(boundary_timestep)
        self.expand_timesteps = bool(expand_timesteps)
        self.num_train_timesteps = int(num_train_timesteps)
        # sharded experts (cac_align.gen.parallel): every process calls every expert, in order, in a
        # call with one timestep per sample, since a sharded expert's all-gather needs every process
        self.every_expert = False

    @classmethod
    def from_pipeline(cls, pipe: Any, family: Any) -> "WanDenoiser":
        """The denoiser of a diffusers ``WanPipeline`` of ``family``
        (:class:`~cac_align.gen.families.wan.WanFamily`: its experts and per-token timesteps, read from the
        model's files), with the pipeline config's ``boundary_ratio`` and its scheduler's
        ``num_train_timesteps``."""
        steps = int(pipe.scheduler.config.num_train_timesteps)
        if family.experts == 2:
            denoiser = cls(pipe.transformer, pipe.transformer_2, float(pipe.config["boundary_ratio"]) * steps, family.expand_timesteps, steps)
        else:
            denoiser = cls(pipe.transformer, None, None, family.expand_timesteps, steps)
        denoiser.family = family
        return denoiser

    # -- which expert, which timestep tensor --------------------------------------------------
    @property
    def experts(self) -> list[Any]:
        """The transformers, high-noise first."""
        return [self.transformer] if self.transformer_2 is None else [self.transformer, self.transformer_2]

    def expert_index(self, timestep: Any) -> int:
        """0 (``transformer``) or 1 (``transformer_2``) for the scalar ``timestep``, as the
        pipeline chooses: ``transformer`` unless a boundary exists and ``t`` is below it."""
        if self.boundary_timestep is None:
            return 0
        return 0 if float(timestep) >= self.boundary_timestep else 1

    def sigma_range(self) -> tuple[float, float]:
        """The noise levels ``sigma = t / num_train_timesteps`` the adapted experts serve: all of
        (0, 1) with one transformer or both adapted, ``[boundary, 1)`` for the high-noise expert
        alone, ``(0, boundary)`` for the low-noise one. A trainer that draws its own noise levels
        (dpo) draws them here, so that every pair trains a LoRA."""
        trained = self.trained_experts()
        if self.boundary_timestep is None or len(trained) != 1:
            return 0.0, 1.0
        boundary = self.boundary_timestep / self.num_train_timesteps
        return (boundary, 1.0) if trained == [0] else (0.0, boundary)

    def model_timestep(self, timestep: Any, latents: torch.Tensor, fixed: int = 0) -> torch.Tensor:
        """The timestep tensor the transformer is given: ``(B,)``, or with per-token timesteps
        ``(B, F' * H' / p_h * W' / p_w)``, each sample's all equal to its ``t``, except the
        tokens of the first ``fixed`` latent frames (an image's), which get 0. ``latents`` are the
        whole video's. ``timestep`` is a scalar (a sampling step) or one per sample ``(B,)`` (dpo)."""
        t = torch.as_tensor(timestep).to(latents.device)
        batch = latents.shape[0]
        if not self.expand_timesteps:
            return t.expand(batch)
        _, p_h, p_w = self.transformer.config.patch_size
        frames, height, width = latents.shape[2:]
        tokens = frames * (height // p_h) * (width // p_w)
        mask = torch.ones((frames, height, width), dtype=torch.float32, device=latents.device)
        mask[:fixed] = 0  # the pipeline's first_frame_mask: the image's frame stays at timestep 0
        if t.ndim == 0:
            per_token = (mask[:, ::p_h, ::p_w] * t).flatten()  # the pipeline's mask[0][0][:, ::2, ::2] * t
            assert per_token.numel() == tokens
            return per_token.unsqueeze(0).expand(batch, -1)
        return t.view(batch, 1) * mask[:, ::p_h, ::p_w].flatten().unsqueeze(0)

    # -- the velocity ----------------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timestep: Any,
        cond: Any,
        negative: Any,
        guidance: Mapping[str, Any],
        dtype: Any = None,
        side: Any = None,
    ) -> torch.Tensor:
        """The (classifier-free guided) velocity at ``timestep``, as the pipeline computes it.

        Args:
            latents: ``(B, C, F', H', W')``.
            timestep: a scalar tensor (the scheduler's ``t``: one step of a sampler), or one per
                sample ``(B,)`` (a trainer noising each sample to its own level): each sample is
                then served by its own timestep's expert, one call per expert.
            cond / negative: :class:`~cac_align.gen.generator.Conditioning` with ``embeds``
                ``(B, L, D)`` (negative: None without CFG).
            guidance: ``guidance_scale``, the (high-noise) expert's scale, and
                ``guidance_scale_2``, the low-noise expert's (None: the same, as the pipeline
                defaults).
            dtype: the transformers' parameter dtype (inputs are cast to it).
            side: must be None (Wan makes video alone).
        """
        if side is not None:
            raise ValueError("Wan generates video alone: it has no side latents")
        guidance_scale, guidance_scale_2 = guidance["guidance_scale"], guidance.get("guidance_scale_2")
        t = torch.as_tensor(timestep)
        if t.ndim == 0:
            return self._velocity(self.expert_index(t), latents, t, cond, negative, guidance_scale, guidance_scale_2, dtype)
        indices = [self.expert_index(value) for value in t.tolist()]
        if self.every_expert and len(self.experts) > 1:
            return self._every_expert(indices, latents, t, cond, negative, guidance_scale, guidance_scale_2, dtype)
        if len(set(indices)) == 1:
            return self._velocity(indices[0], latents, t, cond, negative, guidance_scale, guidance_scale_2, dtype)
        rows = {index: torch.tensor([i for i, e in enumerate(indices) if e == index], device=latents.device) for index in sorted(set(indices))}
        parts = [
            self._velocity(index, latents[r], t.to(latents.device)[r], cond[r], None if negative is None else negative[r],
                           guidance_scale, guidance_scale_2, dtype)
            for index, r in rows.items()
        ]
        order = torch.cat(list(rows.values()))  # the rows as the parts hold them: put each back in its place
        return torch.cat(parts)[torch.argsort(order)]

    def _every_expert(self, indices: list[int], latents: torch.Tensor, t: torch.Tensor, cond: Any, negative: Any, guidance_scale: float,
                      guidance_scale_2: float | None, dtype: Any) -> torch.Tensor:
        """:meth:`forward` with one timestep per sample when the experts are sharded: each expert in
        turn on its own rows, and an expert that serves none of this process's rows on the first row,
        its output times zero added (so its forward and backward, and their collectives, run on
        every process; the sum is unchanged)."""
        t = t.to(latents.device)
        out = None
        for index in range(len(self.experts)):
            rows = torch.tensor([i for i, e in enumerate(indices) if e == index], device=latents.device, dtype=torch.long)
            empty = rows.numel() == 0
            take = rows if not empty else torch.zeros(1, dtype=torch.long, device=latents.device)
            part = self._velocity(index, latents[take], t[take], cond[take], None if negative is None else negative[take],
                                  guidance_scale, guidance_scale_2, dtype)
            if out is None:
                out = torch.zeros((latents.shape[0], *part.shape[1:]), dtype=part.dtype, device=part.device)
            out = out + part.sum() * 0.0 if empty else out.index_put((rows,), part)
        return out

    def _velocity(self, index: int, latents: torch.Tensor, t: torch.Tensor, cond: Any, negative: Any, guidance_scale: float,
                  guidance_scale_2: float | None, dtype: Any) -> torch.Tensor:
        """One expert's guided velocity of the generated ``latents``: an image's fixed frames in
        front (and out of the result), its conditioning channels beside, its CLIP tokens with the
        text (module docstring)."""
        model = self.experts[index]
        scale = guidance_scale if index == 0 or guidance_scale_2 is None else guidance_scale_2
        fixed = fixed_frames(cond)
        x = latents if not fixed else torch.cat([cond.fixed.to(latents.device, latents.dtype), latents], dim=2)
        timesteps = self.model_timestep(t, x, fixed)
        if cond.has("condition"):
            x = torch.cat([x, cond.condition.to(x.device, x.dtype)], dim=1)
        x = x.to(dtype) if dtype is not None else x
        image = cond.image_embeds.to(x.device) if cond.has("image_embeds") else None
        extra = {} if image is None else {"encoder_hidden_states_image": image.to(dtype) if dtype is not None else image}
        velocity = model(hidden_states=x, timestep=timesteps, encoder_hidden_states=cond.embeds, return_dict=False, **extra)[0]
        if guidance_scale > 1.0:  # the pipeline guides both experts when its (first) scale is above 1
            uncond = model(hidden_states=x, timestep=timesteps, encoder_hidden_states=negative.embeds, return_dict=False, **extra)[0]
            velocity = uncond + scale * (velocity - uncond)
        return velocity[:, :, fixed:]  # the generated frames' velocity: the image's are not stepped
