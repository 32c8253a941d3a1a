"""Localized credit in miniature: does spreading the advantage by the reward's evidence fix the
defect with less change elsewhere?

    python benchmarks/localized_credit.py                      # 3 seeds x 2 arms x 12 steps, ~4 min on 2 CPU cores
    python benchmarks/localized_credit.py --seeds 0 1 2 3 4 --steps 20

The tiny random Wan (64 x 64, 9 frames) is trained with Flow-GRPO on ``spot_brightness``: a
known, localized defect (brightness of the top-left quarter during [0.25, 0.5) s; reward =
1 - that brightness), reported as CaC reports one (status, window, boxes). Two arms from the same
seeds, the same steps and every other setting equal:

- **scalar**: ``advantage.localize.enabled=false`` (Flow-GRPO as shipped);
- **localized**: ``advantage.localize`` of ``recipes/align/flow_grpo_tiny_localized.yaml``
  (a worse-than-its-group video's advantage only on its box and window, ``outside: 0``).

After every step, the same 8 probe videos (fixed prompts and seeds, deterministic ODE sampling:
the same noise in every arm and step) are generated and measured against the step-0 policy's:

- **defect**: the spot's mean brightness (what the reward penalizes); its reduction per step is
  the arm's learning speed on the defect;
- **collateral**: the mean |pixel change| (0-255) outside the defect's box-and-window, against
  the step-0 video of the same seed: what the update changed that it had no reason to.

Decoding: like ``benchmarks/flow_grpo_toy.py``, the tiny random VAE's decode barely depends on the
latents, so the videos are a *latent preview* in Wan's own layout: latent channels 0-2 through a
sigmoid as RGB, latent frame 0 as pixel frame 0 and latent frame k as pixel frames 4k - 3 .. 4k,
each latent pixel as an 8 x 8 block. Each latent position then owns exactly the pixels the credit
map gives it, which a real VAE (with receptive fields across blocks) only approximates: this
measures the credit assignment, not Wan's decoder.

Writes ``--out/results.json`` (every step of every arm and seed) and prints the table for
benchmarks/README.md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cac_align.config import load_config
from cac_align.gen.wan import build_tiny_wan_pipeline
from cac_align.jobs.flow_grpo import FlowGrpoConfig, _Trainer, sample_seed
from cac_align.rewards.toy import spot_brightness
from cac_align.video import Video

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes/align/flow_grpo_tiny_localized.yaml"
# As benchmarks/flow_grpo_toy.py: a bigger group and LoRA and a faster learning rate than the
# smoke-test recipe, no KL, no EMA, so that a dozen steps show a trend.
TOY = [
    "group_size=8", "prompts_per_step=2", "sample_batch_size=8", "train_batch_size=4", "updates_per_step=2",
    "lora.rank=8", "lora.alpha=16", "learning_rate=1e-2", "beta=0.0", "ema_decay=null", "log_with=none", "checkpoint_every=0",
]
PROBES = 8
BOX, WINDOW = [0.0, 0.0, 500.0, 500.0], [0.25, 0.5]


def wan_layout_preview(pipe, latents):
    """uint8 ``(B, 4 (F' - 1) + 1, 8 H', 8 W', 3)``: sigmoid of latent channels 0-2 as RGB, laid out
    as Wan's VAE lays out pixels (module docstring)."""
    rgb = torch.sigmoid(latents[:, :3].float()).permute(0, 2, 3, 4, 1).cpu().numpy()
    frames = [0] + [k for k in range(1, rgb.shape[1]) for _ in range(4)]
    rgb = np.repeat(np.repeat(rgb[:, frames], 8, axis=2), 8, axis=3)
    return np.round(rgb * 255.0).astype(np.uint8)


def outside_mask(num_frames: int, height: int, width: int, fps: float) -> np.ndarray:
    """``(F, H, W)`` bool: the pixels outside the defect's box-and-window."""
    inside = np.zeros((num_frames, height, width), dtype=bool)
    frames = [i for i in range(num_frames) if WINDOW[0] <= i / fps < WINDOW[1]]
    inside[frames, : int(BOX[3] / 1000 * height), : int(BOX[2] / 1000 * width)] = True
    return ~inside


def probe(trainer: _Trainer) -> np.ndarray:
    """The probe videos under the current LoRA: ODE samples of fixed prompts and seeds."""
    prompts = [trainer.prompts[i % len(trainer.prompts)] for i in range(PROBES)]
    embeds, negative = trainer._encode(prompts)
    _, videos = trainer._sample(embeds, negative, [sample_seed(trainer.config.seed, -1, i) for i in range(PROBES)], 0.0)
    return videos


def run_arm(seed: int, localized: bool, steps: int, out: Path, extra: list[str]) -> list[dict]:
    folder = out / f"seed{seed}_{'localized' if localized else 'scalar'}"
    shutil.rmtree(folder, ignore_errors=True)
    config = load_config(FlowGrpoConfig, RECIPE, [f"out_dir={folder}", f"steps={steps}", f"seed={seed}", *TOY,
                                                  f"advantage.localize.enabled={str(localized).lower()}", *extra], job="flow-grpo")
    trainer = _Trainer(config, pipe=build_tiny_wan_pipeline(seed=0), decode=wan_layout_preview)
    trainer.setup()
    g = config.generator
    outside = outside_mask(g.num_frames, g.height, g.width, g.fps)
    rows, start = [], probe(trainer)

    def measure(step: int, videos: np.ndarray, seconds: float) -> None:
        defect = np.mean([spot_brightness(Video(v, g.fps), BOX, WINDOW)[0] for v in videos])
        change = np.abs(videos.astype(np.float64) - start.astype(np.float64))  # (P, F, H, W, 3)
        collateral = float(change[:, outside].mean())
        inside = float(change[:, ~outside].mean())
        rows.append({"step": step, "defect": float(defect), "collateral": collateral, "inside_change": inside, "seconds": seconds})

    measure(0, start, 0.0)
    for step in range(steps):
        began = time.perf_counter()
        metrics = trainer.train_step(step)
        measure(step + 1, probe(trainer), time.perf_counter() - began)
        rows[-1]["reward"] = metrics["reward/mean"]
        rows[-1]["localized_fraction"] = metrics.get("localize/localized_fraction")
    trainer.cleanup()
    return rows


def collateral_at(reduction: np.ndarray, collateral: np.ndarray, target: float) -> float:
    """The collateral change when a run's defect reduction first reaches ``target`` (linear
    between the two steps around it)."""
    for i in range(1, len(reduction)):
        if reduction[i] >= target:
            share = (target - reduction[i - 1]) / (reduction[i] - reduction[i - 1]) if reduction[i] > reduction[i - 1] else 1.0
            return float(collateral[i - 1] + share * (collateral[i] - collateral[i - 1]))
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="outputs/localized_credit")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for both arms, e.g. advantage.localize.apply_to=all")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for seed in args.seeds:
        for arm in ("scalar", "localized"):
            results[f"{seed}/{arm}"] = run_arm(seed, arm == "localized", args.steps, out, args.overrides)
            last = results[f"{seed}/{arm}"][-1]
            print(f"seed {seed} {arm:9s}: defect {results[f'{seed}/{arm}'][0]['defect']:.4f} -> {last['defect']:.4f}, "
                  f"collateral {last['collateral']:.3f}, change inside {last['inside_change']:.3f}", flush=True)
    (out / "results.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "runs": results}, indent=1))
    print(f"\n| seed | arm | defect step 0 | defect step {args.steps} | reduction / step | collateral (0-255) | change inside (0-255) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {"scalar": [], "localized": []}
    for seed in args.seeds:
        for arm in ("scalar", "localized"):
            rows = results[f"{seed}/{arm}"]
            reduction = (rows[0]["defect"] - rows[-1]["defect"]) / args.steps
            summary[arm].append((reduction, rows[-1]["collateral"], rows[-1]["inside_change"]))
            print(f"| {seed} | {arm} | {rows[0]['defect']:.4f} | {rows[-1]['defect']:.4f} | {reduction:.5f} | {rows[-1]['collateral']:.3f} | {rows[-1]['inside_change']:.3f} |")
    for arm, values in summary.items():
        red, col, ins = (float(np.mean([v[k] for v in values])) for k in range(3))
        print(f"| mean | {arm} | | | {red:.5f} | {col:.3f} | {ins:.3f} |")
    (s_red, s_col, _), (l_red, l_col, _) = (tuple(np.mean(summary[a], axis=0)) for a in ("scalar", "localized"))
    print(f"\nlocalized / scalar: defect reduction per step x{l_red / s_red:.2f}, collateral change x{l_col / s_col:.2f}")
    # at the same defect reduction: each arm's mean curve (over seeds) of collateral against
    # reduction, read at the smaller of the two arms' final reductions
    curves = {}
    for arm in ("scalar", "localized"):
        runs = [results[f"{seed}/{arm}"] for seed in args.seeds]
        reduction = np.mean([[r[0]["defect"] - row["defect"] for row in r] for r in runs], axis=0)
        collateral = np.mean([[row["collateral"] for row in r] for r in runs], axis=0)
        curves[arm] = (reduction, collateral)
    target = min(curves["scalar"][0][-1], curves["localized"][0][-1])
    if target > 0:
        at = {arm: collateral_at(*curve, target) for arm, curve in curves.items()}
        print(f"at the same defect reduction ({target:.4f}, the first step each arm reaches it): collateral scalar "
              f"{at['scalar']:.3f}, localized {at['localized']:.3f} (x{at['localized'] / at['scalar']:.2f})")
    summary_out = {"defect_reduction_per_step": {"scalar": s_red, "localized": l_red}, "collateral": {"scalar": s_col, "localized": l_col}}
    (out / "summary.json").write_text(json.dumps(summary_out, indent=1))


if __name__ == "__main__":
    main()
