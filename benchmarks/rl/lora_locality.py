"""How position-selective can the tiny Wan's LoRA be? The ceiling that confinement works under.

    python benchmarks/rl/lora_locality.py                      # rank 8, lr 1e-2, 40 / 100 / 300 updates, ~1 min on 2 CPU cores
    python benchmarks/rl/lora_locality.py --marked 1           # the same, the defect's tokens marked (localized_credit.py --marked)
    python benchmarks/rl/lora_locality.py --ceiling            # the probes' ceiling: a perfectly local velocity change
    python benchmarks/rl/lora_locality.py --drift              # how far Adam moves the LoRA in the miniature's first steps

``benchmarks/rl/localized_credit.py`` asks Flow-GRPO to change the top-left quarter of latent frames
1-2 and nothing else. Whatever the loss, the LoRA can only do that if some setting of its weights
changes the velocity there more than elsewhere. This measures how far it gets when it is *told*
exactly what to do: plain supervised regression of the LoRA's velocity change ``v_lora - v_base``
onto a target that is ``-delta`` on latent channels 0-2 inside that region and 0 everywhere else
(equal weight on every position), on random latents and timesteps, with the miniature's LoRA
(rank 8, alpha 16, attention projections) and learning rate (1e-2, AdamW). After 40 (the
miniature's 20 steps x 2 updates), 100 and 300 updates it reports the mean |velocity change|
inside and outside the region on held-out latents, and their ratio.

The tiny Wan (as the real one) knows where a token is only through 3D RoPE in self-attention,
which sees relative offsets: with random latents there is no content that marks the region, so a
change confined to a fixed place must come from the grid's edges. A ratio near 1 after 40
updates means no loss could confine the miniature's change in 20 steps; a real defect is marked
by its content (a hand, a sign), which this miniature does not have; ``--marked S`` gives it
one (``localized_credit.mark_defect``: a fixed vector of strength ``S`` added to the defect's
patch embeddings in the base model).

``--ceiling`` asks the other half: if the velocity change *were* confined to the region's latent
positions (-0.1 on channels 0-2 there, at every ODE step, nothing elsewhere), how confined
would the change of ``localized_credit.py``'s probe videos be? It samples the 8 probes as that
benchmark does (its recipe and settings, the base model, ODE) with and without the shift and
reports the mean |pixel change| inside and outside the box-and-window; what is left outside comes
from the latent grid (latent frames 1-2 also cover pixel frames 1-3 and 8, outside the window) and
from the base model's attention carrying the change to other positions on the later steps.

``--drift`` runs 3 steps of ``localized_credit.py``'s scalar arm (seed 0) and prints how far the
LoRA's ``B`` matrices (zero at the start) have moved: with Adam, about the learning rate per
update for every weight, whatever its gradient's size. Not a test.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cac_align.gen.families.wan import WAN21, build_tiny_wan_pipeline
from cac_align.gen.lora import LoraSettings, add_lora


def region_mask(frames: int, height: int, width: int) -> torch.Tensor:
    """``(T, H, W)``: 1 on latent frames 1.. and the top-left quarter (the miniature's defect)."""
    mask = torch.zeros(frames, height, width)
    mask[1:, : height // 2, : width // 2] = 1.0
    return mask


def velocity_change(transformer, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``v_lora - v_base`` for latents ``x`` ``(B, C, T, H, W)`` (the base without grad)."""
    transformer.disable_adapters()
    with torch.no_grad():
        base = transformer(x, t, text, return_dict=False)[0]
    transformer.enable_adapters()
    return transformer(x, t, text, return_dict=False)[0] - base


def probe_ceiling(delta: float, marked: float) -> None:
    """``--ceiling`` (module docstring): the probes' inside/outside under a perfectly local shift."""
    import localized_credit as lc

    from cac_align.config import load_config
    from cac_align.rl.sde import flow_sigmas
    from cac_align.gen.generator import sample_with_log_probs, scheduler_shift
    from cac_align.gen.families.wan import encode_prompts, latent_preview
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, sample_seed
    from cac_align.run.input_files import read_prompts

    config = load_config(FlowGrpoConfig, lc.RECIPE, ["out_dir=outputs/lora_locality", *lc.TOY], job="flow-grpo")
    g = config.generator
    pipe = build_tiny_wan_pipeline(seed=0)
    if marked:
        lc.mark_defect(pipe.transformer, marked)
    base = pipe.transformer
    prompts = read_prompts(config.prompts)
    texts = [prompts[i % len(prompts)] for i in range(lc.PROBES)]
    embeds, negative = encode_prompts(pipe, texts, g.negative_prompt, g.guidance_scale, g.max_sequence_length)
    sigmas, timesteps = flow_sigmas(g.num_inference_steps, scheduler_shift(pipe, g.flow_shift))
    mask = region_mask(3, g.height // 8, g.width // 8).bool()

    def shifted(shift: float):
        def transformer(**inputs):
            velocity = base(**inputs)[0].clone()
            velocity[:, :3] += shift * mask.to(velocity)
            return (velocity,)
        return transformer

    def probes(shift: float) -> np.ndarray:
        generators = [torch.Generator().manual_seed(sample_seed(config.seed, -1, i)) for i in range(lc.PROBES)]
        trajectory = sample_with_log_probs(pipe, shifted(shift), embeds, negative, generators, config=g, sigmas=sigmas,
                                           timesteps=timesteps, noise_level=0.0)
        return latent_preview(pipe, trajectory.latents[:, -1]).astype(np.float64)

    change = np.abs(probes(-delta) - probes(0.0))
    outside = lc.outside_mask(g.num_frames, g.height, g.width, g.fps)
    inside_change, outside_change = change[:, ~outside].mean(), change[:, outside].mean()
    print("| velocity shift on the region's latents | probes' change inside (0-255) | outside | inside / outside |")
    print("| --- | --- | --- | --- |")
    print(f"| -{delta:g} on channels 0-2, every step | {inside_change:.2f} | {outside_change:.2f} | {inside_change / outside_change:.2f} |")


def drift(steps: int = 3) -> None:
    """``--drift`` (module docstring): the LoRA's ``B`` weights after each of the first steps."""
    import localized_credit as lc

    from cac_align.config import load_config
    from cac_align.gen.families.wan import latent_preview
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, _Trainer

    config = load_config(FlowGrpoConfig, lc.RECIPE, ["out_dir=outputs/lora_locality/drift", f"steps={steps}", "seed=0", *lc.TOY,
                                                     *lc.arm_overrides("scalar", 0.0)], job="flow-grpo")
    trainer = _Trainer(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    trainer.setup()
    weights = [p for name, p in trainer.unwrapped.named_parameters() if p.requires_grad and "lora_B" in name]
    updates = config.updates_per_step
    print(f"| step | Adam updates | median abs B weight | / learning rate ({config.learning_rate:g}) |")
    print("| --- | --- | --- | --- |")
    for step in range(steps):
        trainer.train_step(step)
        median = float(torch.cat([p.detach().flatten() for p in weights]).abs().median())
        print(f"| {step + 1} | {updates * (step + 1)} | {median:.4f} | {median / config.learning_rate:.2f} |", flush=True)
    trainer.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, nargs="+", default=[40, 100, 300])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--delta", type=float, default=0.5, help="the target change on channels 0-2 inside the region")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--marked", type=float, default=0.0, help="mark the defect's tokens with this strength (localized_credit.mark_defect)")
    parser.add_argument("--ceiling", action="store_true", help="measure the probes' ceiling instead (module docstring)")
    parser.add_argument("--drift", action="store_true", help="measure how far Adam moves the miniature's LoRA instead (module docstring)")
    args = parser.parse_args()
    if args.drift:
        drift()
        return
    if args.ceiling:
        probe_ceiling(0.1, args.marked)
        return
    torch.manual_seed(args.seed)
    transformer = build_tiny_wan_pipeline(seed=0).transformer
    if args.marked:
        import localized_credit as lc

        lc.mark_defect(transformer, args.marked)
    add_lora(transformer, LoraSettings(rank=args.rank, alpha=2.0 * args.rank, target_modules=list(WAN21.lora_target_modules)), seed=args.seed)
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=args.lr)
    shape = (args.batch, transformer.config.in_channels, 3, 8, 8)  # the miniature's latents: 9 frames of 64 x 64
    text = torch.randn(1, 16, transformer.config.text_dim).expand(args.batch, -1, -1)
    mask = region_mask(*shape[2:])
    target = torch.zeros(shape[1:])
    target[:3] = -args.delta * mask
    held_out = torch.Generator().manual_seed(args.seed + 1)
    x_eval = torch.randn((16, *shape[1:]), generator=held_out)
    t_eval = torch.randint(0, 1000, (16,), generator=held_out).float()

    print("| updates | fit loss | mean abs velocity change inside | outside | inside / outside |")
    print("| --- | --- | --- | --- | --- |")
    for update in range(1, max(args.updates) + 1):
        x = torch.randn(shape)
        t = torch.randint(0, 1000, (args.batch,)).float()
        loss = ((velocity_change(transformer, x, t, text) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if update in args.updates:
            with torch.no_grad():
                change = velocity_change(transformer, x_eval, t_eval, text[:1].expand(16, -1, -1)).abs().mean(dim=(0, 1))  # (T, H, W)
            inside, outside = float(change[mask > 0].mean()), float(change[mask == 0].mean())
            print(f"| {update} | {float(loss.detach()):.5f} | {inside:.4f} | {outside:.4f} | {inside / outside:.2f} |", flush=True)


if __name__ == "__main__":
    main()
