"""Repairs as training pairs, in miniature: DPO on the judge's repair pairs beside Flow-GRPO.

    python benchmarks/rl/dpo_miniature.py --seeds 0 1 2 --steps 20                      # DPO arms only
    python benchmarks/rl/dpo_miniature.py --seeds 0 1 2 3 4 5 6 7 --steps 20 --grpo --json outputs/dpo_miniature.json

The setting of benchmarks/rl/localized_credit.py: the tiny random Wan (64 x 64, 9 frames at 16 fps,
``recipes/align/flow_grpo_tiny_localized.yaml``) and ``spot_brightness``, a known localized defect
(the top-left quarter's brightness during [0.25, 0.5) s; reward = 1 - that brightness) reported as
CaC reports one. Per seed:

1. **pairs**: the base model samples ``--candidates`` videos (ODE, the recipe's prompts, seeded);
   ``cac-align repair``'s own code (:func:`cac_align.jobs.repair.run`) regenerates each judged
   box-and-window with the tiny *random* Wan-VACE, the toy judges the result, and a repair is kept
   when its spot is darker; kept repairs are the pairs (winner = repair, loser = the sample);
2. **DPO arms** (``cac-align dpo``'s trainer, :class:`cac_align.jobs.dpo._Trainer`), the same
   pairs, steps and settings but the loss's mask: ``dpo_masked`` (LocalDPO: global + masked
   Diffusion-DPO + SFT on the winner, the repaired window and boxes as the mask) and
   ``dpo_global`` (``loss.mask: none``: the global terms only);
3. with ``--grpo``, **Flow-GRPO arms** ``scalar`` and ``localized`` exactly as
   localized_credit.py runs them (its ``run_arm``), on the same probes.

After every step the same 8 probe videos (the prompts and seeds localized_credit.py uses; ODE) are
measured against the base model's: **defect** (the spot's brightness) and **collateral** (the mean
|pixel change|, 0-255, outside the box-and-window), as localized_credit.py measures them. And the
generator's transformer passes each arm spent: sampling (candidates, or Flow-GRPO's rollouts:
samples x steps), the regenerator's (VACE: attempts x steps, counted apart), and training
(forward passes: DPO's policy and reference on winner and loser, 4 per pair per step; Flow-GRPO's
policy per sample per trained step, and the reference when ``beta > 0``; each training forward also
has a backward, not counted).

**What the random VACE's fills mean.** The regenerator has random weights and the tiny VAE's decode
barely depends on its latents, so a "repair" paints the judged box-and-window with a nearly fixed
colour; it is kept where that colour is darker than the sample's spot. Which colour is a property of
the random weights: the tiny VACE of seed 0 (``tiny-random:wan-vace``) fills a spot at brightness
0.59, above every sample's (0.46-0.54), so nothing is kept; seed 5 (``--vace-seed``, the default
here) fills at 0.41. The pairs are real repair
pairs in form (the same video outside the mask, to the pixel; a judged improvement inside it) but
not in content: this measures what the training does with such pairs, not whether VACE can fix a
defect.

**Decoding and encoding.** As in localized_credit.py the videos are a latent preview (latent
channels 0-2 through a sigmoid, in Wan's frame layout). DPO needs the inverse: a pair's loser is
the sample's own latent; its winner is that latent with channels 0-2 of the latent positions whose
pixels the repair changed set to the logit of those pixels' mean (the preview's inverse), and every
other value kept. Not a VAE: each latent position owns exactly its pixels here.

Writes ``--out/results.json`` (every arm's rows per seed) and, with ``--json``, per arm:
``defect_reduction_per_step``, ``change_inside``, ``change_outside``, ``passes`` (sampling,
regenerator, training), and ``passes_to_localized_reduction`` (the passes an arm had spent when its
mean defect reduction first reached the localized Flow-GRPO arm's final one; null if never or
without ``--grpo``). Prints the tables for benchmarks/README.md. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cac_align.config import load_config
from cac_align.rl.sde import flow_sigmas
from cac_align.gen.families.vace import RegeneratorConfig
from cac_align.gen.generator import sample_with_log_probs, scheduler_shift
from cac_align.gen.families.wan import build_tiny_wan_pipeline, encode_prompts, latent_preview
from cac_align.jobs.dpo import DpoConfig, _Trainer as DpoTrainer
from cac_align.jobs.flow_grpo import FlowGrpoConfig, sample_seed
from cac_align.jobs.repair import RepairConfig
from cac_align.jobs.repair import run as repair
from cac_align.rewards.toy import spot_brightness
from cac_align.run.input_files import read_prompts
from cac_align.video import Video, save_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localized_credit as lc  # noqa: E402  (the Flow-GRPO arms and the measures, as that benchmark runs them)

REPO_ROOT = Path(__file__).resolve().parents[2]
DPO_ARMS = ("dpo_masked", "dpo_global")
GRPO_ARMS = ("scalar", "localized")
BOX, WINDOW = lc.BOX, lc.WINDOW


def recipe() -> FlowGrpoConfig:
    return load_config(FlowGrpoConfig, lc.RECIPE, ["out_dir=unused", *lc.TOY], job="flow-grpo")


def probes(pipe, transformer, config: FlowGrpoConfig, prompts: list[str]) -> np.ndarray:
    """The probe videos of localized_credit.py (its ``probe``): ODE samples of fixed prompts and seeds."""
    g = config.generator
    texts = [prompts[i % len(prompts)] for i in range(lc.PROBES)]
    embeds, negative = encode_prompts(pipe, texts, g.negative_prompt, g.guidance_scale, g.max_sequence_length)
    sigmas, timesteps = flow_sigmas(g.num_inference_steps, scheduler_shift(pipe, g.flow_shift))
    generators = [torch.Generator().manual_seed(sample_seed(config.seed, -1, i)) for i in range(lc.PROBES)]
    with torch.no_grad():
        trajectory = sample_with_log_probs(pipe, transformer, embeds, negative, generators, config=g, sigmas=sigmas, timesteps=timesteps,
                                           noise_level=0.0)
    return latent_preview(pipe, trajectory.latents[:, -1])


def candidates(pipe, config: FlowGrpoConfig, prompts: list[str], count: int, seed: int) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """``count`` base-model videos (ODE) and their latents: the samples repair judges."""
    g = config.generator
    texts = [prompts[i % len(prompts)] for i in range(count)]
    embeds, negative = encode_prompts(pipe, texts, g.negative_prompt, g.guidance_scale, g.max_sequence_length)
    sigmas, timesteps = flow_sigmas(g.num_inference_steps, scheduler_shift(pipe, g.flow_shift))
    generators = [torch.Generator().manual_seed(sample_seed(seed, 1000, i)) for i in range(count)]
    with torch.no_grad():
        trajectory = sample_with_log_probs(pipe, pipe.transformer, embeds, negative, generators, config=g, sigmas=sigmas, timesteps=timesteps,
                                           noise_level=0.0)
    latents = trajectory.latents[:, -1].float()
    return latent_preview(pipe, latents), latents, texts


def preview_inverse(sources: dict[str, torch.Tensor], previews: dict[str, np.ndarray]):
    """``encode(pipe, frames)`` for the DPO trainer (module docstring, "Decoding and encoding")."""

    def encode(pipe, frames: np.ndarray) -> torch.Tensor:
        frames = np.asarray(frames)
        key = hashlib.sha256(frames.tobytes()).hexdigest()
        if key in sources:  # a sample: its own latent
            return sources[key].clone()
        # a repair: the sample it was made from (the most pixels alike), its changed blocks inverted
        name = max(previews, key=lambda k: int((previews[k] == frames).all(axis=-1).sum()))
        latent = sources[name].clone()
        groups = [[0]] + [list(range(4 * k - 3, 4 * k + 1)) for k in range(1, latent.shape[1])]
        for k, group in enumerate(groups):
            for i in range(latent.shape[2]):
                for j in range(latent.shape[3]):
                    block = frames[group, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
                    if np.array_equal(block, previews[name][group, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]):
                        continue
                    p = np.clip(block.reshape(-1, 3).mean(axis=0) / 255.0, 0.5 / 255, 254.5 / 255)
                    latent[:3, k, i, j] = torch.as_tensor(np.log(p / (1 - p)), dtype=latent.dtype)
        return latent

    return encode


def make_pairs(seed: int, out: Path, pipe, config: FlowGrpoConfig, prompts: list[str], count: int, vace_seed: int) -> tuple[Path, dict, dict]:
    """Step 1 of the module docstring: the candidates, written lossless, repaired by repair's code."""
    folder = out / f"seed{seed}_pairs"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "videos").mkdir(parents=True)
    videos, latents, texts = candidates(pipe, config, prompts, count, seed)
    sources, previews, rows = {}, {}, []
    for i, (frames, latent, text) in enumerate(zip(videos, latents, texts)):
        path = folder / "videos" / f"c{i:03d}.mp4"
        save_video(Video(frames, config.generator.fps), path, lossless=True)
        sources[hashlib.sha256(frames.tobytes()).hexdigest()] = latent
        previews[hashlib.sha256(frames.tobytes()).hexdigest()] = frames
        rows.append({"video": f"videos/{path.name}", "prompt": text})  # a manifest's paths are relative to it
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = config.reward
    repair_config = RepairConfig(
        out_dir=str(folder / "repair"), videos=str(folder / "manifest.jsonl"), reward={"name": "spot_brightness", "box": r["box"], "window_s": r["window_s"]},
        regenerator=RegeneratorConfig(name="tiny-random:wan-vace", dtype="float32", vae_dtype="float32", device="cpu", num_inference_steps=4,
                                      guidance_scale=1.0),
        attempts=3, min_gain=0.0, context_s=0.0, dilate=0.0, condition_s=0.25, feather=2, seed=seed)
    from cac_align.gen.families.vace import build_tiny_vace_pipeline

    vace = build_tiny_vace_pipeline(seed=vace_seed)  # the recipe's tiny-random:wan-vace is seed 0 (module docstring)
    vace.set_progress_bar_config(disable=True)
    rows = repair(repair_config, pipe=vace)
    cost = {"sampling": count * config.generator.num_inference_steps,
            "regenerator": sum(len(row["attempts"]) for row in rows) * repair_config.regenerator.num_inference_steps,
            "accepted": sum(row["accepted"] for row in rows)}
    return folder / "repair", preview_inverse(sources, previews), cost


def run_dpo_arm(seed: int, arm: str, steps: int, out: Path, pairs: Path, encode, base, config: FlowGrpoConfig, prompts: list[str], args) -> list[dict]:
    folder = out / f"seed{seed}_{arm}"
    shutil.rmtree(folder, ignore_errors=True)
    overrides = [f"out_dir={folder}", f"pairs=[{pairs}]", f"steps={steps}", f"seed={seed}", f"pairs_per_step={args.pairs_per_step}",
                 f"batch_size={args.pairs_per_step}", f"learning_rate={args.lr}", "warmup_steps=0", "mixed_precision=no", "checkpoint_every=0",
                 "log_with=none", "generator.name=tiny-random:wan", "generator.dtype=float32", "generator.device=cpu", "lora.rank=8", "lora.alpha=16",
                 "lora.init=gaussian", f"loss.beta={args.beta}", f"loss.mask={'local' if arm == 'dpo_masked' else 'none'}"]
    dpo_config = load_config(DpoConfig, REPO_ROOT / "recipes/align/dpo_tiny.yaml", overrides, job="dpo")
    pipe = build_tiny_wan_pipeline(seed=0)
    trainer = DpoTrainer(dpo_config, pipe=pipe, encode=encode)
    trainer.setup()
    g = config.generator
    outside = lc.outside_mask(g.num_frames, g.height, g.width, g.fps)
    probe_config = dataclasses.replace(config, seed=seed)
    rows = []

    def measure(step: int, videos: np.ndarray, seconds: float, metrics: dict | None) -> None:
        defect = np.mean([spot_brightness(Video(v, g.fps), BOX, WINDOW)[0] for v in videos])
        change = np.abs(videos.astype(np.float64) - base.astype(np.float64))
        rows.append({"step": step, "defect": float(defect), "collateral": float(change[:, outside].mean()),
                     "inside_change": float(change[:, ~outside].mean()), "seconds": seconds, "train_passes": 4 * args.pairs_per_step * step,
                     **({k: metrics[k] for k in ("train/loss", "train/implicit_acc", "train/margin") if k in metrics} if metrics else {})})

    measure(0, probes(pipe, trainer.unwrapped, probe_config, prompts), 0.0, None)
    for step in range(steps):
        began = time.perf_counter()
        metrics = trainer.train_step(step)
        measure(step + 1, probes(pipe, trainer.unwrapped, probe_config, prompts), time.perf_counter() - began, metrics)
    trainer.cleanup()
    return rows


def grpo_passes(config: FlowGrpoConfig) -> tuple[int, int]:
    """Flow-GRPO's transformer passes per step: (sampling, training forward)."""
    samples = config.prompts_per_step * config.group_size
    cfg = 2 if config.generator.guidance_scale > 1.0 else 1
    steps = config.generator.num_inference_steps
    trained = max(1, round(steps * config.timestep_fraction))
    return samples * steps * cfg, samples * trained * cfg * (2 if config.beta > 0 else 1)


def passes_to(reduction: np.ndarray, passes: np.ndarray, target: float) -> float | None:
    """The passes spent when a mean reduction curve first reaches ``target`` (linear between)."""
    for i in range(1, len(reduction)):
        if reduction[i] >= target:
            share = (target - reduction[i - 1]) / (reduction[i] - reduction[i - 1]) if reduction[i] > reduction[i - 1] else 1.0
            return float(passes[i - 1] + share * (passes[i] - passes[i - 1]))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=16, help="base-model samples per seed that repair judges")
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--vace-seed", type=int, default=5, help="seed of the tiny random VACE's weights (module docstring)")
    parser.add_argument("--lr", type=float, default=1e-2, help="DPO's learning rate (the Flow-GRPO arms' toy rate)")
    parser.add_argument("--beta", type=float, default=5000.0, help="loss.beta (LocalDPO's 5000)")
    parser.add_argument("--grpo", action="store_true", help="also run the Flow-GRPO arms scalar and localized (localized_credit.py's run_arm)")
    parser.add_argument("--out", default="outputs/dpo_miniature")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--target-reduction", type=float, help="without --grpo: the localized arm's final reduction of an earlier --grpo run "
                        "(its summary's localized_final_reduction), for passes_to_localized_reduction")
    parser.add_argument("--summarize", action="store_true", help="only summarize --out/results.json of an earlier run (same arguments)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = recipe()
    prompts = read_prompts(str(REPO_ROOT / config.prompts))
    sample_passes, train_passes = grpo_passes(config)
    arms = [*DPO_ARMS, *(GRPO_ARMS if args.grpo else ())]
    results: dict = {"runs": {}, "costs": {}}
    if args.summarize:
        results = json.loads((out / "results.json").read_text())
    for seed in ([] if args.summarize else args.seeds):
        pipe = build_tiny_wan_pipeline(seed=0)
        base = probes(pipe, pipe.transformer, dataclasses.replace(config, seed=seed), prompts)
        pairs, encode, cost = make_pairs(seed, out, pipe, config, prompts, args.candidates, args.vace_seed)
        results["costs"][str(seed)] = cost
        print(f"seed {seed}: {cost['accepted']} of {args.candidates} repairs kept as pairs ({cost['regenerator']} regenerator passes)", flush=True)
        for arm in DPO_ARMS:
            rows = results["runs"][f"{seed}/{arm}"] = run_dpo_arm(seed, arm, args.steps, out, pairs, encode, base, config, prompts, args)
            for row in rows:
                row["passes"] = cost["sampling"] + row["train_passes"]
            print(f"seed {seed} {arm:11s}: defect {rows[0]['defect']:.4f} -> {rows[-1]['defect']:.4f}, collateral {rows[-1]['collateral']:.3f}, "
                  f"inside {rows[-1]['inside_change']:.3f}", flush=True)
        if args.grpo:
            for arm in GRPO_ARMS:
                rows = results["runs"][f"{seed}/{arm}"] = lc.run_arm(seed, arm, args.steps, out, [], lc.CONFINE, None)
                assert abs(rows[0]["defect"] - float(np.mean([spot_brightness(Video(v, 16.0), BOX, WINDOW)[0] for v in base]))) < 1e-9, "probes differ"
                for row in rows:
                    row["passes"] = row["step"] * (sample_passes + train_passes)
                print(f"seed {seed} {arm:11s}: defect {rows[0]['defect']:.4f} -> {rows[-1]['defect']:.4f}, collateral {rows[-1]['collateral']:.3f}, "
                      f"inside {rows[-1]['inside_change']:.3f}", flush=True)
    if not args.summarize:
        (out / "results.json").write_text(json.dumps(results, indent=1))

    summary: dict = {"seeds": args.seeds, "steps": args.steps, "candidates": args.candidates, "pairs_per_step": args.pairs_per_step, "lr": args.lr,
                     "beta": args.beta, "vace_seed": args.vace_seed, "pairs_kept": {s: c["accepted"] for s, c in results["costs"].items()}, "arms": {}}
    curves = {}
    for arm in arms:
        runs = [results["runs"][f"{seed}/{arm}"] for seed in args.seeds]
        reduction = np.mean([[r[0]["defect"] - row["defect"] for row in r] for r in runs], axis=0)
        passes = np.mean([[row["passes"] for row in r] for r in runs], axis=0)
        collateral = np.mean([[row["collateral"] for row in r] for r in runs], axis=0)
        curves[arm] = (reduction, passes, collateral)
        regenerator = float(np.mean([results["costs"][str(s)]["regenerator"] for s in args.seeds])) if arm in DPO_ARMS else 0.0
        sampling = float(np.mean([results["costs"][str(s)]["sampling"] for s in args.seeds])) if arm in DPO_ARMS else float(sample_passes * args.steps)
        summary["arms"][arm] = {
            "defect_start": float(np.mean([r[0]["defect"] for r in runs])),
            "defect_end": float(np.mean([r[-1]["defect"] for r in runs])),
            "defect_reduction_per_step": float(reduction[-1] / args.steps),
            "change_inside": float(np.mean([r[-1]["inside_change"] for r in runs])),
            "change_outside": float(np.mean([r[-1]["collateral"] for r in runs])),
            "passes": {"sampling": sampling, "regenerator": regenerator, "training": float(passes[-1] - sampling) if arm in DPO_ARMS else float(train_passes * args.steps)},
        }
    # the same reduction, the collateral it cost: each arm where its mean curve first reaches the
    # masked DPO arm's final reduction (the smallest of the arms here)
    masked_target = float(curves["dpo_masked"][0][-1])
    summary["dpo_masked_final_reduction"] = masked_target
    for arm in arms:
        summary["arms"][arm]["collateral_at_dpo_masked_reduction"] = lc.collateral_at_or_null(curves[arm][0], curves[arm][2], masked_target)
    if "localized" in curves or args.target_reduction is not None:
        target = float(curves["localized"][0][-1]) if "localized" in curves else args.target_reduction
        summary["localized_final_reduction"] = target
        for arm in arms:
            summary["arms"][arm]["passes_to_localized_reduction"] = passes_to(curves[arm][0], curves[arm][1], target) if target > 0 else None
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n| arm | defect step 0 -> end | reduction / step | change inside | change outside | inside / outside | collateral at dpo_masked's "
          "reduction | sampling passes | regenerator passes | training passes | passes to localized's reduction |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm, row in summary["arms"].items():
        to = row.get("passes_to_localized_reduction")
        to_text = "-" if "passes_to_localized_reduction" not in row else ("never" if to is None else f"{to:.0f}")
        p = row["passes"]
        at = row["collateral_at_dpo_masked_reduction"]
        print(f"| {arm} | {row['defect_start']:.4f} -> {row['defect_end']:.4f} | {row['defect_reduction_per_step']:.5f} | {row['change_inside']:.2f} | "
              f"{row['change_outside']:.2f} | {row['change_inside'] / max(row['change_outside'], 1e-12):.2f} | {'never' if at is None else f'{at:.2f}'} | "
              f"{p['sampling']:.0f} | {p['regenerator']:.0f} | {p['training']:.0f} | {to_text} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
