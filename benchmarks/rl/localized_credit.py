"""Localized credit in miniature: does spreading the advantage by the reward's evidence fix the
defect with less change elsewhere?

    python benchmarks/rl/localized_credit.py --arms scalar localized      # 3 seeds x 12 steps
    python benchmarks/rl/localized_credit.py --seeds 0 1 2 3 4 5 6 7 --steps 20 --json outputs/localized_credit.json \
        --cac-demo-bench outputs/cac_demo/bench/default/bench.json     # every arm, the figures in a file
    python benchmarks/rl/localized_credit.py --seeds 0 1 2 3 4 5 6 7 --steps 20 --arms scalar localized confined shuffled shuffled_localized \
        --json outputs/lc_controls.json                                 # with the no-signal controls
    python benchmarks/rl/localized_credit.py ... --marked 1                # the marked miniature

The tiny random Wan (64 x 64, 9 frames) is trained with Flow-GRPO on ``spot_brightness``: a
known, localized defect (brightness of the top-left quarter during [0.25, 0.5) s; reward =
1 - that brightness), reported as CaC reports one (status, window, boxes). Arms from the same
seeds, the same steps and every other setting equal:

- **scalar**: ``advantage.localize.enabled=false`` (Flow-GRPO as shipped);
- **localized**: ``advantage.localize`` of ``recipes/align/flow_grpo_tiny_localized.yaml``
  (a worse-than-its-group video's advantage only on its box and window, ``outside: 0``);
- **confined**: localized plus ``confine`` (the per-position KL to the reference outside the
  region, ``--confine``);
- **vipo**: localized with ``estimator: vipo`` (ViPO's own normalization of the same map);
- **wrong_pP**: localized, but each sample's evidence is right only with probability P: otherwise
  its window is moved off the defect (to [0, 0.25) s, temporal IoU 0) and its box to another
  quarter of the frame, chosen at random (the score stays right: only the evidence is wrong);
- **cac_demo_errors**: evidence wrong as cac-demo's is on its bench split, over the anomalous
  videos it flags (``videos`` rows of ``--cac-demo-bench``'s bench.json, system
  ``--cac-demo-system``): right (window IoU >= 0.5 and a box on the defect) at its rate, only the
  window right, only the boxes right, or neither, each at its measured rate; P is its "right" share;
- **shuffled** / **shuffled_localized** (controls, only when named): the scalar / localized arm
  with ``advantage.shuffle_scores=true``, flow-grpo's no-signal control (each group's scores
  permuted among its videos): the same scores and evidence, no relation between a video and its
  score. What these arms change is the optimizer's drift, not the reward's signal; an arm's
  change beyond theirs is what its signal did.
- **nft_scalar** / **nft_localized** (only when named): the same miniature trained by
  ``cac-align nft``'s trainer (DiffusionNFT: ODE samples of the old policy, nft_tiny.yaml's
  ``nft_beta``; the recipe's SDE settings off), with the map off / on (localized NFT: the map
  weights the per-position x0 errors, docs/nft.md). The line "localized NFT / scalar NFT" is the
  ratio of their defect reductions per step.

``--marked S`` runs the *marked miniature*: the base transformer adds a fixed vector of strength
``S`` to the patch embeddings of the defect's tokens (:func:`mark_defect`), so the defect's place
carries content of its own (as a hand does); without it, only the grid's edges tell that place
apart (``benchmarks/rl/lora_locality.py``).

After every step, the same 8 probe videos (fixed prompts and seeds, deterministic ODE sampling:
the same noise in every arm and step) are generated and measured against the step-0 policy's:

- **defect**: the spot's mean brightness (what the reward penalizes); its reduction per step is
  the arm's learning speed on the defect;
- **collateral**: the mean |pixel change| (0-255) outside the defect's box-and-window, against
  the step-0 video of the same seed: what the update changed that it had no reason to.

Decoding: like ``benchmarks/rl/flow_grpo_toy.py``, the tiny random VAE's decode barely depends on the
latents, so the videos are a *latent preview* in Wan's own layout
(:func:`cac_align.gen.families.wan.latent_preview`): latent channels 0-2 through a sigmoid as RGB, latent
frame 0 as pixel frame 0 and latent frame k as pixel frames 4k - 3 .. 4k, each latent pixel as an
8 x 8 block. Each latent position then owns exactly the pixels the credit
map gives it, which a real VAE (with receptive fields across blocks) only approximates: this
measures the credit assignment, not Wan's decoder.

Writes ``--out/results.json`` (every step of every arm and seed), ``--json`` (per arm:
``defect_reduction_per_step``, ``change_inside``, ``change_outside``,
``collateral_at_scalar_reduction``, ``evidence_p``; and the break-even P of the wrong-evidence arms)
and prints the tables for benchmarks/README.md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from cac_align.config import load_config
from cac_align.gen.families.wan import build_tiny_wan_pipeline, latent_preview
from cac_align.jobs.flow_grpo import FlowGrpoConfig, _Trainer, sample_seed
from cac_align.jobs.nft import NftConfig, _NftTrainer
from cac_align.rewards.base import RewardBase, RewardOutput
from cac_align.rewards.toy import SpotBrightnessReward, spot_brightness
from cac_align.video import Video

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "recipes/align/flow_grpo_tiny_localized.yaml"
# As benchmarks/rl/flow_grpo_toy.py: a bigger group and LoRA and a faster learning rate than the
# smoke-test recipe, no KL, no EMA, so that a dozen steps show a trend.
TOY = [
    "group_size=8", "prompts_per_step=2", "sample_batch_size=8", "train_batch_size=4", "updates_per_step=2",
    "lora.rank=8", "lora.alpha=16", "learning_rate=1e-2", "beta=0.0", "ema_decay=null", "log_with=none", "checkpoint_every=0",
]
PROBES = 8
MARKER_SEED = 123  # the marked miniature's marker direction (mark_defect)
CONFINE = 0.001  # the confined arm's advantage.localize.confine (benchmarks/README.md: the sweep that chose it)
BOX, WINDOW = [0.0, 0.0, 500.0, 500.0], [0.25, 0.5]
# where wrong evidence points: a window before the defect's (temporal IoU 0) and another quarter
WRONG_WINDOW = [0.0, 0.25]
WRONG_BOXES = [[500.0, 0.0, 1000.0, 500.0], [0.0, 500.0, 500.0, 1000.0], [500.0, 500.0, 1000.0, 1000.0]]
WRONG_P = (0.75, 0.5, 0.25, 0.0)
CONTROLS = ("shuffled", "shuffled_localized")  # only when named: no signal, the optimizer's own drift
# DiffusionNFT (`cac-align nft`, only when named): scalar NFT, and NFT whose x0 errors the map weights
NFT_ARMS = ("nft_scalar", "nft_localized")
NFT = ["noise_level=0", "clip_range=0.0001", "nft_beta=0.1"]  # the recipe's SDE settings off; nft_tiny.yaml's beta
ARMS = ("scalar", "localized", "confined", "vipo", *(f"wrong_p{p:g}" for p in WRONG_P), "cac_demo_errors", *CONTROLS, *NFT_ARMS)


class WrongEvidence(RewardBase):
    """``spot_brightness`` whose evidence is wrong at controlled rates (module docstring): per
    abnormal sample, with probability ``mix["right"]`` the window and boxes stay on the defect, with
    ``mix["window"]`` only the window does (the boxes move to another quarter), with ``mix["boxes"]``
    only the boxes do (the window moves to [0, 0.25) s), otherwise both move. The score is untouched."""

    def __init__(self, reward: SpotBrightnessReward, mix: dict[str, float], seed: int, fps: float):
        self.reward, self.seed, self.fps, self.calls = reward, seed, fps, 0
        self.cases = ("right", "window", "boxes", "wrong")
        self.probs = np.array([mix.get(c, 0.0) for c in self.cases], dtype=np.float64)
        self.probs = self.probs / self.probs.sum()
        self.name, self.score_range = reward.name, reward.score_range

    def __call__(self, videos, prompts, metadata=None) -> RewardOutput:
        output = self.reward(videos, prompts, metadata)
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        for entry in output.details:
            if entry.get("status") != "abnormal":
                continue
            case = self.cases[rng.choice(len(self.cases), p=self.probs)]
            entry["evidence_case"] = case
            if case == "right":
                continue
            window = entry["window_s"] if case == "window" else list(WRONG_WINDOW)
            box = entry["boxes"][0]["boxes"][0] if case == "boxes" else WRONG_BOXES[rng.integers(len(WRONG_BOXES))]
            frames = [i for i in range(int(np.ceil(window[1] * self.fps))) if window[0] <= i / self.fps < window[1]]
            entry["window_s"] = list(window)
            entry["boxes"] = [{"frame": i, "time_s": i / self.fps, "boxes": [list(box)]} for i in frames]
        return output


def cac_demo_errors(bench: Path, system: str) -> tuple[dict[str, float], int]:
    """cac-demo's localization on its bench split (bench.json's per-video rows), over the anomalous
    videos it flags: the shares whose window agrees (IoU >= 0.5) and a box touches the defect
    ("right"), only the window ("window"), only a box ("boxes"), neither ("wrong"); a row that
    could not be graded counts as wrong there. Returns the shares and how many were flagged."""
    rows = json.loads(bench.read_text())["systems"][system]["videos"]
    flagged = [r for r in rows if r["truth"] == "abnormal" and r["status"] == "abnormal"]
    if not flagged:
        raise SystemExit(f"{bench}: system {system!r} flags no anomalous video")
    counts = dict.fromkeys(("right", "window", "boxes", "wrong"), 0)
    for r in flagged:
        window, boxes = bool(r.get("window_agrees")), bool(r.get("boxes_touch_defect"))
        counts["right" if window and boxes else "window" if window else "boxes" if boxes else "wrong"] += 1
    return {k: v / len(flagged) for k, v in counts.items()}, len(flagged)


def outside_mask(num_frames: int, height: int, width: int, fps: float) -> np.ndarray:
    """``(F, H, W)`` bool: the pixels outside the defect's box-and-window."""
    inside = np.zeros((num_frames, height, width), dtype=bool)
    frames = [i for i in range(num_frames) if WINDOW[0] <= i / fps < WINDOW[1]]
    inside[frames, : int(BOX[3] / 1000 * height), : int(BOX[2] / 1000 * width)] = True
    return ~inside


def probe(trainer: _Trainer) -> np.ndarray:
    """The probe videos under the current LoRA: ODE samples of fixed prompts and seeds."""
    prompts = [trainer.prompts[i % len(trainer.prompts)] for i in range(PROBES)]
    embeds, negative = trainer._encode(prompts, [None] * len(prompts))
    nft = isinstance(trainer, _NftTrainer)
    if nft:  # the policy's own samples, not its old policy's (as the nft trainer evaluates)
        trainer._evaluating = True
    try:
        _, videos = trainer._sample(embeds, negative, [sample_seed(trainer.config.seed, -1, i) for i in range(PROBES)], 0.0)
    finally:
        if nft:
            trainer._evaluating = False
    return videos


def arm_overrides(arm: str, confine: float) -> list[str]:
    """The recipe overrides of an arm (module docstring)."""
    if arm in NFT_ARMS:
        return [*arm_overrides(arm.removeprefix("nft_"), confine), *NFT]
    control = ["advantage.shuffle_scores=true"] if arm in CONTROLS else []
    if arm in ("scalar", "shuffled"):
        return ["advantage.localize.enabled=false", *control]
    extra = ["advantage.localize.enabled=true", *control]
    if arm == "confined":
        extra.append(f"advantage.localize.confine={confine}")
    if arm == "vipo":
        extra.append("advantage.localize.estimator=vipo")
    return extra


def mark_defect(transformer, strength: float) -> None:
    """The marked miniature (``--marked``): the base transformer adds ``strength`` times a fixed
    random vector (seed ``MARKER_SEED``) to its patch embeddings at the defect's tokens, the
    top-left 2 x 2 patches of latent frames 1-2 (the box and window's latent positions), in every
    arm, in the reference and at step 0 alike. Those tokens then carry content of their own, as a
    hand or a sign does in a real video; the unmarked miniature's defect is a place on random
    latents that only the grid's edges tell apart (``benchmarks/rl/lora_locality.py``)."""
    import torch

    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    marker = strength * torch.randn(dim, generator=torch.Generator().manual_seed(MARKER_SEED)).view(1, dim, 1, 1, 1)

    def add_marker(module, inputs, output):  # output: (B, dim, T', H' / 2, W' / 2) patch embeddings
        if tuple(output.shape[2:]) != (3, 4, 4):
            raise ValueError(f"the marker's region is the miniature's (3 x 4 x 4 patches), got {tuple(output.shape[2:])}")
        marked = output.clone()
        marked[:, :, 1:, :2, :2] += marker.to(output)
        return marked

    transformer.patch_embedding.register_forward_hook(add_marker)


def run_arm(seed: int, arm: str, steps: int, out: Path, extra: list[str], confine: float, mix: dict[str, float] | None,
            marked: float = 0.0) -> list[dict]:
    folder = out / f"seed{seed}_{arm}"
    shutil.rmtree(folder, ignore_errors=True)
    nft = arm in NFT_ARMS
    config = load_config(NftConfig if nft else FlowGrpoConfig, RECIPE, [f"out_dir={folder}", f"steps={steps}", f"seed={seed}", *TOY,
                         *arm_overrides(arm, confine), *extra], job=None if nft else "flow-grpo")
    reward = None
    if mix is not None:
        r = config.reward
        reward = WrongEvidence(SpotBrightnessReward(r["box"], r["window_s"], r.get("threshold", 0.0)), mix, seed, config.generator.fps)
    pipe = build_tiny_wan_pipeline(seed=0)
    if marked:
        mark_defect(pipe.transformer, marked)
    trainer = (_NftTrainer if nft else _Trainer)(config, reward=reward, pipe=pipe, decode=latent_preview)
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
        rows[-1]["confine_kl"] = metrics.get("train/confine_kl")
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


def collateral_at_or_null(reduction: np.ndarray, collateral: np.ndarray, target: float) -> float | None:
    """:func:`collateral_at`, None where the curve never reaches ``target``."""
    value = collateral_at(reduction, collateral, target) if target > 0 else float("nan")
    return None if not np.isfinite(value) else value


def break_even(points: list[tuple[float, float]], scalar: float) -> float | None:
    """The evidence accuracy p below which localized credit stops beating the scalar estimator:
    where the arms' defect reduction per step (``(p, reduction)`` pairs) crosses the scalar's,
    linear between the two arms around it. 0.0 if it beats scalar even at p = 0, None if it never
    does (not even at p = 1)."""
    points = sorted(points, reverse=True)  # from p = 1 down
    if points[0][1] <= scalar:
        return None
    for (p_hi, r_hi), (p_lo, r_lo) in zip(points, points[1:]):
        if r_lo <= scalar:
            return float(p_lo + (scalar - r_lo) / (r_hi - r_lo) * (p_hi - p_lo))
    return 0.0


def summarize(results: dict, arms: list[str], seeds: list[int], steps: int, evidence: dict[str, float], mixes: dict[str, dict]) -> dict:
    """The ``--json`` figures (module docstring): per arm, means over seeds."""
    curves, out = {}, {}
    for arm in arms:
        runs = [results[f"{seed}/{arm}"] for seed in seeds]
        reduction = np.mean([[r[0]["defect"] - row["defect"] for row in r] for r in runs], axis=0)
        collateral = np.mean([[row["collateral"] for row in r] for r in runs], axis=0)
        curves[arm] = (reduction, collateral)
        out[arm] = {
            "defect_reduction_per_step": float(reduction[-1] / steps),
            "change_inside": float(np.mean([r[-1]["inside_change"] for r in runs])),
            "change_outside": float(collateral[-1]),
            "evidence_p": evidence.get(arm),
        }
        if arm in mixes:
            out[arm]["evidence_mix"] = mixes[arm]
    if "scalar" in curves:
        target = float(curves["scalar"][0][-1])
        for arm in arms:
            out[arm]["collateral_at_scalar_reduction"] = collateral_at_or_null(*curves[arm], target)
    summary: dict = {"seeds": seeds, "steps": steps, "arms": out}
    wrong = [(evidence[a], out[a]["defect_reduction_per_step"]) for a in arms if a.startswith("wrong_p") or a == "localized"]
    if "scalar" in out and len(wrong) > 1:
        summary["break_even_p"] = break_even(wrong, out["scalar"]["defect_reduction_per_step"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--arms", nargs="+", choices=ARMS, metavar="ARM",
                        help=f"of {', '.join(ARMS)} (default: all but the controls; cac_demo_errors only with --cac-demo-bench)")
    parser.add_argument("--confine", type=float, default=CONFINE, help="advantage.localize.confine of the confined arm")
    parser.add_argument("--cac-demo-bench", type=Path, help="bench.json of cac-align eval bench on cac-demo's bench split (the cac_demo_errors arm)")
    parser.add_argument("--cac-demo-system", default="two_turn", help="its system name in that bench.json")
    parser.add_argument("--marked", type=float, default=0.0,
                        help="the marked miniature: the defect's tokens carry a marker of this strength (mark_defect; 0: today's miniature)")
    parser.add_argument("--out", default="outputs/localized_credit")
    parser.add_argument("--json", type=Path, help="write the per-arm figures here")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every arm, e.g. advantage.localize.apply_to=all")
    args = parser.parse_args()
    if args.arms is None:
        args.arms = [a for a in ARMS if a not in CONTROLS and (a != "cac_demo_errors" or args.cac_demo_bench is not None)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evidence = {"localized": 1.0, "confined": 1.0, "vipo": 1.0, "shuffled_localized": 1.0, **{f"wrong_p{p:g}": p for p in WRONG_P}}
    mixes = {f"wrong_p{p:g}": {"right": p, "wrong": 1.0 - p} for p in WRONG_P}
    if "cac_demo_errors" in args.arms:
        if args.cac_demo_bench is None:
            parser.error("the cac_demo_errors arm needs --cac-demo-bench (benchmarks/README.md says how to make it)")
        mixes["cac_demo_errors"], flagged = cac_demo_errors(args.cac_demo_bench, args.cac_demo_system)
        evidence["cac_demo_errors"] = mixes["cac_demo_errors"]["right"]
        print(f"cac-demo on the {flagged} anomalous videos it flags: " + ", ".join(f"{k} {v:.3f}" for k, v in mixes["cac_demo_errors"].items()), flush=True)
    results = {}
    for seed in args.seeds:
        for arm in args.arms:
            rows = results[f"{seed}/{arm}"] = run_arm(seed, arm, args.steps, out, args.overrides, args.confine, mixes.get(arm), args.marked)
            print(f"seed {seed} {arm:15s}: defect {rows[0]['defect']:.4f} -> {rows[-1]['defect']:.4f}, "
                  f"collateral {rows[-1]['collateral']:.3f}, change inside {rows[-1]['inside_change']:.3f}", flush=True)
    (out / "results.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "confine": args.confine, "marked": args.marked, "runs": results}, indent=1))
    print(f"\n| seed | arm | defect step 0 | defect step {args.steps} | reduction / step | collateral (0-255) | change inside (0-255) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        for arm in args.arms:
            rows = results[f"{seed}/{arm}"]
            reduction = (rows[0]["defect"] - rows[-1]["defect"]) / args.steps
            print(f"| {seed} | {arm} | {rows[0]['defect']:.4f} | {rows[-1]['defect']:.4f} | {reduction:.5f} | {rows[-1]['collateral']:.3f} | {rows[-1]['inside_change']:.3f} |")
    summary = summarize(results, args.arms, args.seeds, args.steps, evidence, mixes)
    summary["marked"] = args.marked
    scalar = summary["arms"].get("scalar")
    print("\n| arm | evidence p | defect reduction / step | change inside | change outside | inside / outside | collateral at scalar's reduction |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm, row in summary["arms"].items():
        ratio = f" (x{row['defect_reduction_per_step'] / scalar['defect_reduction_per_step']:.2f})" if scalar and arm != "scalar" else ""
        at = row.get("collateral_at_scalar_reduction")
        at_text = "never" if at is None else f"{at:.1f}" + (f" (x{at / scalar['change_outside']:.2f})" if scalar else "")
        p = "" if row["evidence_p"] is None else f"{row['evidence_p']:.3g}"
        print(f"| {arm} | {p} | {row['defect_reduction_per_step']:.5f}{ratio} | {row['change_inside']:.1f} | {row['change_outside']:.1f} | "
              f"{row['change_inside'] / row['change_outside']:.2f} | {at_text} |")
    if "nft_scalar" in summary["arms"] and "nft_localized" in summary["arms"]:
        a, b = summary["arms"]["nft_localized"], summary["arms"]["nft_scalar"]
        print(f"\nlocalized NFT / scalar NFT, defect reduction per step: {a['defect_reduction_per_step'] / b['defect_reduction_per_step']:.2f}")
    if "break_even_p" in summary:
        print(f"\nbreak-even evidence accuracy (defect reduction per step = scalar's): {summary['break_even_p']}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
