"""Our TeleBoost reward function inside TeleBoost's own, unmodified driver code.

TeleBoost (github.com/Tele-AI/TeleBoost) is not on a package registry, so this is not part of the
conformance suite: run it by hand against a checkout of theirs, in an environment where their
driver imports (their ``pip install --no-deps verl==0.7.1`` plus the ``train`` extra's packages)
and this checkout is importable::

    PYTHONPATH=/path/to/TeleBoost:/path/to/cac_align python tests/conformance/teleboost_check.py [OUT.json]

What runs, all theirs but the rollout batch: ``RayVIPOTrainer._reward_and_advantage_phase`` (the
custom reward loaded by ``pkg://`` path from ``reward.custom_reward_function`` and called with the
batch, the result unioned into it, the decoded frames dropped, ``compute_advantage`` (GRPO per
prompt) and ViPO's ``_apply_vipo_broadcast``), then the actor's clamp of the dense advantage
(+-5, their recipe's ``adv_clip_max``) and ``grpo_policy_loss`` with its finite-loss guard, per
sample. The trainer object is made without its ``__init__`` (which starts Ray workers) and given
the config its methods read. The batch is a rollout's shape: ``video_frames`` (B, 3, F, H, W) in
[0, 1], ``pixel_weight_maps`` on the latent grid, ``caption`` and ``uid``.

Checked: our rewards reach their batch in order and equal ours; their dense advantage ``A * M``
equals ours (our GRPO advantage by their formula times our evidence map, their map elsewhere) at
every latent position; a corrupt frame is filled (finite loss, advantage 0); a reward whose model
call raises stops their phase with our reasons, never a NaN or a silent 0. Prints one line per check
and writes the numbers to OUT.json. docs/rewards.md ("TeleBoost") records the commit and results.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from teleboost.algorithms.grpo.loss import grpo_policy_loss
from teleboost.programs.wan.vipo import RayVIPOTrainer
from verl import DataProto

from cac_align.rl.credit import LocalizeSettings, credit_maps
from cac_align.rewards import build_reward
import raising_reward  # noqa: F401  (registers "explodes": a reward whose model call raises)

N, F, H, W = 3, 9, 32, 48  # 3 samples per prompt; a Wan-shaped clip: latent grid (3, 4, 6)
LEVELS = [0.2, 0.8, 0.4, 0.6, 1.0, 0.0]
SPOT = {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}




def rollout(corrupt: int | None = None) -> DataProto:
    frames = torch.full((len(LEVELS), 3, F, H, W), 0.5)
    for i, level in enumerate(LEVELS):
        frames[i, :, :, : H // 2, : W // 2] = level
    if corrupt is not None:
        frames[corrupt, 0, 0, 0, 0] = float("nan")
    maps = torch.rand(len(LEVELS), (F - 1) // 4 + 1, H // 8, W // 8, generator=torch.Generator().manual_seed(0))
    prompts = np.repeat(np.array(["a ball on a floor", "a sign over a shop"], dtype=object), N)
    uids = np.repeat(np.array(["uid-0", "uid-1"], dtype=object), N)
    return DataProto(batch=TensorDict({"video_frames": frames, "pixel_weight_maps": maps}, batch_size=len(LEVELS)),
                     non_tensor_batch={"caption": prompts, "uid": uids})


def trainer(reward_kwargs: dict) -> RayVIPOTrainer:
    config = OmegaConf.create({
        "trainer": {"use_rm": False},
        "reward": {"custom_reward_function": {"path": "pkg://cac_align.integrations.teleboost", "name": "compute_reward",
                                              "reward_kwargs": reward_kwargs},
                   "reward_model": {"type": "single", "enable": False}},
        "algorithm": {"gamma": 1.0, "lam": 1.0, "min_group_std": 0.0},
        "actor_rollout_ref": {"rollout": {"n": N}, "pixel_weight": {"enable": True}},
    })
    tr = object.__new__(RayVIPOTrainer)
    tr.config, tr.use_rm = config, False
    return tr


def actor_losses(dense: torch.Tensor) -> list[float]:
    """Their actor's per-sample loss at ratio 1 (the first update): clamp(A * M, +-5), then
    grpo_policy_loss with its finite guard (it raises FloatingPointError on NaN)."""
    losses = []
    for b in range(dense.shape[0]):
        advantage = torch.clamp(dense[b : b + 1], -5.0, 5.0)
        loss, _ = grpo_policy_loss(advantage=advantage, ratio=torch.ones_like(advantage), clip_range=1e-4)
        losses.append(float(loss))
    return losses


def their_advantages(rewards: np.ndarray) -> np.ndarray:
    g = rewards.reshape(-1, N)
    return ((g - g.mean(axis=1, keepdims=True)) / (g.std(axis=1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)


def main() -> dict:
    results: dict = {}
    kwargs = {"reward": "spot", "sections": {"spot": SPOT}, "fps": 16, "device": "cpu", "localize": {"dilate": 0}}

    # 1. scores in order, equal to ours; A * M equal to ours at every latent position
    data = rollout()
    theirs_before = data.batch["pixel_weight_maps"].clone()
    frames = [v.permute(1, 2, 3, 0).numpy() for v in data.batch["video_frames"]]
    out = trainer(kwargs)._reward_and_advantage_phase(data, None, metrics := {}, {})
    ours = build_reward(SPOT)(frames, None, [{"fps": 16}] * len(LEVELS))
    rewards = out.batch["rewards"].numpy().astype(np.float64)
    advantages = their_advantages(ours.scores)
    credit = credit_maps([dict(d) for d in ours.details], ours.valid, advantages, LocalizeSettings(enabled=True, dilate=0, estimator="vipo"),
                         num_frames=F, fps=16, height=H, width=W)
    expected_maps = np.where(credit.localized[:, None, None, None], credit.maps, theirs_before.numpy())
    expected_dense = advantages[:, None, None, None] * expected_maps
    dense = out.batch["advantages"].numpy()
    results["order"] = {
        "rewards": rewards.tolist(), "ours": ours.scores.tolist(), "max_reward_diff": float(np.abs(rewards - ours.scores).max()),
        "localized": credit.localized.tolist(), "max_dense_diff": float(np.abs(dense - expected_dense).max()),
        "dense_shape": list(dense.shape), "frames_dropped": "video_frames" not in out.batch.keys(),
        "losses": actor_losses(out.batch["advantages"]), "pixel_weight_mean": float(metrics["train/pixel_weight_mean"]),
    }

    # 2. a corrupt frame: filled with its group's mean; advantage 0; every loss finite
    out = trainer(kwargs)._reward_and_advantage_phase(rollout(corrupt=1), None, {}, {})
    results["corrupt"] = {"rewards": out.batch["rewards"].tolist(), "advantage_1": float(out.batch["advantages"][1].abs().max()),
                          "losses": actor_losses(out.batch["advantages"])}

    # 3. a reward whose model call raises: their phase stops with our reasons
    try:
        trainer({"reward": "explodes", "device": "cpu", "fps": 16})._reward_and_advantage_phase(rollout(), None, {}, {})
        results["backend_error"] = {"error": None}
    except Exception as exc:  # noqa: BLE001 - what stopped their phase is the result
        results["backend_error"] = {"error": f"{type(exc).__name__}: {exc}"}

    order = results["order"]
    print(f"rewards in order: max |theirs - ours| = {order['max_reward_diff']:.2e}; localized {order['localized']}")
    print(f"A * M: max |theirs - ours| = {order['max_dense_diff']:.2e} over {order['dense_shape']}; losses finite: {np.isfinite(order['losses']).all()}")
    print(f"corrupt frame: rewards {np.round(results['corrupt']['rewards'], 4).tolist()}, |A_1 * M_1| max {results['corrupt']['advantage_1']:.2e}, "
          f"losses finite: {np.isfinite(results['corrupt']['losses']).all()}")
    print(f"backend error: {results['backend_error']['error']}")
    assert order["max_reward_diff"] < 1e-6 and order["max_dense_diff"] < 1e-5 and np.isfinite(order["losses"]).all()
    assert results["corrupt"]["advantage_1"] < 1e-5 and np.isfinite(results["corrupt"]["losses"]).all()
    assert results["backend_error"]["error"] and "the judge's server went away" in results["backend_error"]["error"]
    return results


if __name__ == "__main__":
    found = main()
    if len(sys.argv) > 1:
        json.dump(found, open(sys.argv[1], "w"), indent=1)
