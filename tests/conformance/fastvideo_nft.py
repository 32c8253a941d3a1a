"""Run in .venv-fastvideo (fastvideo 0.2.1 from PyPI) by tests/conformance/test_fastvideo_nft.py.

Drives FastVideo's own DiffusionNFT code, ``fastvideo/train/methods/rl/diffusion_nft.py``
(``DiffusionNFTMethod``), on tiny synthetic tensors, and writes what it returned to a JSON file:

1. rewards and advantages: our ``CacAlignRewardScorer`` inside their ``MultiRewardScorer`` (built
   by their ``build_multi_reward_scorer(weights, scorers=...)``), called by their
   ``_score_samples`` on two sampling batches as ``_sample_epoch`` leaves them, then their
   ``_compute_advantages``, ``_reward_metrics`` and ``_reward_diagnostic_metrics``; once with every
   sample valid and once with one sample our reward refuses.
2. the loss: their ``_training_timestep_loss`` on one trained timestep, and our
   ``cac_align.rl.nft.nft_loss`` on the tensors it used (the noised input it drew, the three
   policies' predictions, the clean latents, ``t``, the advantages), plus the gradients of both
   with respect to the trained policy's weight; and controls (beta or the weighting changed).
3. the old policy's decay: their ``_return_decay`` against our ``old_policy_decay``.

The method object is theirs, made without its constructor (which needs models, a dataset and an
optimizer config): the attributes these methods read are set as ``__init__`` and
``on_train_start`` set them. The three policies are small linear stand-ins of FastVideo's
``ModelBase.predict_noise`` (the networks are not what is compared; the loss around them is).

Usage: python fastvideo_nft.py SECTIONS.json OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import torch

start = time.perf_counter()
from fastvideo.train.methods.rl.common import SamplingConfig  # noqa: E402
from fastvideo.train.methods.rl.diffusion_nft import DiffusionNFTMethod  # noqa: E402
from fastvideo.train.methods.rl.rewards import MultiRewardScorer, build_multi_reward_scorer  # noqa: E402

from cac_align.rl import nft  # noqa: E402
from cac_align.integrations.fastvideo import CacAlignRewardScorer  # noqa: E402

import_s = time.perf_counter() - start
sections_path, out_path = sys.argv[1], sys.argv[2]
sections = json.load(open(sections_path))
out: dict = {"import_s": import_s}


def bare_method(**settings) -> DiffusionNFTMethod:
    """Their class, its state set as ``__init__`` / ``on_train_start`` set it (module docstring)."""
    method = DiffusionNFTMethod.__new__(DiffusionNFTMethod)
    torch.nn.Module.__init__(method)
    method._sampling_config = SamplingConfig.from_mapping({"num_steps": 4})
    method._sample_steps = 4
    method._timestep_fraction = 0.5  # two trained timesteps of four
    method._trained_prompt_hashes = set()
    method._adv_clip_max = settings.get("adv_clip_max", 5.0)
    method._adv_mode = settings.get("adv_mode", "all")
    method._nft_beta = settings.get("beta", 0.1)
    method._kl_beta = settings.get("kl_beta", 1e-4)
    return method


# -- 1. rewards and advantages -----------------------------------------------------------------
LEVELS = [[0.2, 0.8, 0.4], [0.6, 1.0, 0.0]]  # brightness of the spot per sampling batch
PROMPTS = [["a ball", "a sign", "a ball"], ["a sign", "a ball", "a sign"]]  # groups shuffled over batches, as K-repeat sampling does


def sample_items(bad: tuple[int, int] | None = None) -> list[dict]:
    items = []
    for b, (levels, prompts) in enumerate(zip(LEVELS, PROMPTS)):
        media = torch.full((3, 3, 9, 16, 24), 0.6)  # [B, C, T, H, W] as their decode_latents returns it
        for i, level in enumerate(levels):
            media[i, :, 2:4, :8, :12] = level  # frames 2-3: the section's window at 8 fps
        if bad is not None and bad[0] == b:
            media[bad[1], :, 3] = 1.5  # out of [0, 1]: our reward refuses this sample
        items.append({"media": media, "prompts": list(prompts), "latents_clean": torch.zeros(3, 1)})
    return items


for case, bad in (("valid", None), ("one_invalid", (1, 0))):
    ours = CacAlignRewardScorer("spot", sections, device="cpu")
    scorer = build_multi_reward_scorer({"spot": 1.0}, scorers={"spot": ours})
    assert isinstance(scorer, MultiRewardScorer)
    method = bare_method()
    method.student = SimpleNamespace(device=torch.device("cpu"))
    method._reward_scorer = scorer
    items = sample_items(bad)
    t0 = time.perf_counter()
    rewards = method._score_samples(items)
    advantages = method._compute_advantages(items, rewards)
    metrics = {**method._reward_metrics(rewards), **method._reward_diagnostic_metrics(items, rewards)}
    out[case] = {
        "rewards": {k: v.tolist() for k, v in rewards.items()},
        "advantages": advantages.tolist(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "last": ours.last,
        "seconds": time.perf_counter() - t0,
    }


# -- 2. the loss ---------------------------------------------------------------------------------
class Policy(torch.nn.Module):
    """A stand-in of FastVideo's ``ModelBase.predict_noise``: ``w * x_t + c * t`` (per channel),
    recording what it was called with."""

    def __init__(self, weight: float, shift: float, trainable: bool, channels: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((channels, 1, 1), weight), requires_grad=trainable)
        self.shift = shift
        self.num_train_timesteps = 1000
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def predict_noise(self, xt, timestep, batch, *, conditional, attn_kind):
        assert conditional is True and batch.timesteps is timestep
        self.calls.append((xt.detach().clone(), timestep.detach().clone()))
        t = (timestep.float() / 1000).view(-1, 1, 1, 1, 1)
        return self.weight * xt + self.shift * t


def loss_case(beta: float, adv_mode: str, kl_beta: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch, frames, channels = 4, 2, 3
    x0 = torch.randn(batch, frames, channels, 4, 4, generator=g)  # latents_clean [B, T, C, H, W]
    sample = {
        "latents_clean": x0,
        "timesteps": torch.tensor([[900.0, 500.0], [750.0, 250.0], [600.0, 100.0], [950.0, 400.0]]),
        "encoder_hidden_states": torch.randn(batch, 5, 8, generator=g),
        "encoder_attention_mask": torch.ones(batch, 5),
    }
    advantages = torch.tensor([1.7, -0.4, 6.0, -2.5])  # one beyond adv_clip_max
    method = bare_method(beta=beta, adv_mode=adv_mode, kl_beta=kl_beta)
    method.student = Policy(0.9, 0.3, True, channels)
    method.old = Policy(0.7, 0.1, False, channels)
    method.reference = Policy(0.5, -0.2, False, channels)
    method.cuda_generator = torch.Generator().manual_seed(seed + 1)  # their noise draw
    losses, _ = method._training_timestep_loss(sample, advantages, 1)
    losses["total_loss"].backward()
    theirs_grad = method.student.weight.grad.clone()

    # ours, on the tensors their call used
    xt, timestep = method.student.calls[-1]
    assert all(torch.equal(xt, p.calls[-1][0]) for p in (method.old, method.reference))
    sigmas = timestep.float() / 1000
    weight = torch.nn.Parameter(method.student.weight.detach().clone())
    t5 = sigmas.view(-1, 1, 1, 1, 1)
    prediction = weight * xt + 0.3 * t5
    old_prediction = (method.old.weight * xt + 0.1 * t5).detach()
    ref_prediction = (method.reference.weight * xt - 0.2 * t5).detach()
    loss, metrics = nft.nft_loss(prediction, old_prediction, xt, x0, sigmas, advantages, beta=beta, adv_clip_max=5.0,
                                 adv_mode=adv_mode, ref_prediction=ref_prediction, kl_beta=kl_beta)
    loss.backward()
    with torch.no_grad():  # controls: the same tensors, beta or the weighting changed
        beta_off, _ = nft.nft_loss(prediction, old_prediction, xt, x0, sigmas, advantages, beta=beta * 1.5, adv_mode=adv_mode,
                                   ref_prediction=ref_prediction, kl_beta=kl_beta)
        credit = torch.ones(batch, frames, 4, 4)  # the weighting: the squared error weighted per latent position
        credit[:, 0] = 1.5
        credit[:, 1] = 0.5
        prediction_c = prediction.detach().transpose(1, 2)  # [B, C, T, H, W]: credit maps are per (T, H, W)
        weighting_off, _ = nft.nft_loss(prediction_c, old_prediction.transpose(1, 2), xt.transpose(1, 2), x0.transpose(1, 2), sigmas,
                                        advantages, beta=beta, adv_mode=adv_mode, ref_prediction=ref_prediction.transpose(1, 2),
                                        kl_beta=kl_beta, credit=credit)
        uniform, _ = nft.nft_loss(prediction_c, old_prediction.transpose(1, 2), xt.transpose(1, 2), x0.transpose(1, 2), sigmas,
                                  advantages, beta=beta, adv_mode=adv_mode, ref_prediction=ref_prediction.transpose(1, 2),
                                  kl_beta=kl_beta, credit=torch.ones(batch, frames, 4, 4))
    return {
        "theirs": {k: float(v) for k, v in losses.items()},
        "ours": {"total_loss": float(loss), **{k: float(v) for k, v in metrics.items()}},
        "theirs_grad": theirs_grad.flatten().tolist(),
        "ours_grad": weight.grad.flatten().tolist(),
        "beta_off": float(beta_off),
        "weighting_off": float(weighting_off),
        "uniform_credit": float(uniform),
        "xt_differs_from_x0": float((xt - x0).abs().max()),
    }


out["loss"] = {f"beta={beta},adv_mode={mode},kl_beta={kl}": loss_case(beta, mode, kl, seed)
               for seed, (beta, mode, kl) in enumerate([(0.1, "all", 1e-4), (1.0, "binary", 0.05), (0.5, "positive_only", 0.0)])}

# -- 3. the old policy's decay -------------------------------------------------------------------
out["decay"] = {str(kind): [[DiffusionNFTMethod._return_decay(step, kind), nft.old_policy_decay(step, kind)] for step in (0, 1, 10, 74, 75, 76, 200, 900)]
                for kind in (0, 1, 2)}

out["total_s"] = time.perf_counter() - start
json.dump(out, open(out_path, "w"))
print(json.dumps({k: v for k, v in out.items() if k.endswith("_s")}))
