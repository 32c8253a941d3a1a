"""Our UniRL reward backend inside UniRL 0.2.0's own code (run in .venv-unirl by
tests/conformance/test_unirl_reward.py, which compares the results with our rewards computed in
our own environment).

    .venv-unirl/bin/python tests/conformance/unirl_reward_service.py SECTIONS.json OUT.json

Their code, unmodified: the ``reward:`` section is built as their trainer builds it in its Ray
actor (``trainer/hydra.py::parse_hydra_cfg``, then ``distributed/group/worker.py::Worker.
_resolve_init_kwargs``: nested ``_target_`` sections first) and as ``hydra.utils.instantiate``
builds it; each scenario runs ``DiffusionTrainer._rollout_and_score`` (their request sample with
forked sample ids, ``RewardService.score_and_attach``, the logged mean reward,
``Part.compute_advantages``) on a trainer object whose only stand-in is the rollout engine: it
returns the given videos instead of generating them. No Ray cluster, no GPU.
"""

from __future__ import annotations

import json
import math
import sys
import traceback

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from unirl.distributed.group.worker import Worker
from unirl.trainer.diffusion import DiffusionTrainer, _run_cleanup_steps
from unirl.trainer.hydra import parse_hydra_cfg
from unirl.trainer.residency import DEFAULT_RESIDENCY_POLICY, ResidencyPlanner
from unirl.types.primitives import Texts, Video, Videos
from unirl.types.sample import Part, Sample
from unirl.types.sampling import DiffusionSamplingParams
from unirl.utils.wandb_logger import UniRLWandBLogger
from unirl.utils.wandb_metrics import compute_rollout_sample_metrics

import raising_reward  # noqa: F401  (registers "explodes": a reward whose model call raises)

PROMPTS = ["a ball on a floor", "a sign over a shop"]
PER_PROMPT = 3
FRAMES, HEIGHT, WIDTH = 9, 32, 48
LEVELS = [0.2, 0.8, 0.4, 0.6, 1.0, 0.0]  # the top-left quarter's brightness, one per sample




def videos(levels=LEVELS, corrupt: dict | None = None) -> list[torch.Tensor]:
    """``(T, C, H, W)`` frames in [0, 1], bf16 as their Wan VAE returns them."""
    out = []
    for i, level in enumerate(levels):
        v = torch.full((FRAMES, 3, HEIGHT, WIDTH), 0.5)
        v[:, :, : HEIGHT // 2, : WIDTH // 2] = level
        if corrupt and i in corrupt:
            v[0, 0, 0, 0] = corrupt[i]
        out.append(v.to(torch.bfloat16))
    return out


class GivenVideos:
    """The one stand-in: their rollout engine, returning the given videos for the frontier."""

    dp_size = 1

    def __init__(self, frames: list[torch.Tensor]):
        self.frames = frames

    def generate(self, sample: Sample) -> Sample:
        assert sample.parts[-1].batch_size == len(self.frames)
        return sample.with_filled_frontier(primitives={"video": Videos.from_list([Video(frames=f) for f in self.frames])})

    def wake_up(self):
        pass

    def sleep(self):
        pass


def trainer_built_service(reward_cfg):
    """Their trainer's own construction of the ``reward:`` section (in its Ray actor)."""
    parsed = parse_hydra_cfg(reward_cfg)
    role_cls = parsed.pop("role_cls")
    worker = Worker.__new__(Worker)
    worker._roles = {}
    return role_cls(**worker._resolve_init_kwargs(parsed))


def trainer(service, frames, global_std: bool) -> DiffusionTrainer:
    """A DiffusionTrainer without its __init__ (a GPU device pool): the attributes
    ``_rollout_and_score`` reads, set as their __init__ sets them for FlowGRPO on Wan."""
    tr = DiffusionTrainer.__new__(DiffusionTrainer)
    tr.sampling_params = {"diffusion": DiffusionSamplingParams(num_inference_steps=4, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                                                               samples_per_prompt=PER_PROMPT, eta=0.7)}
    tr._noise_latent_shape = tr._eval_noise_latent_shape = None
    tr._control = {}
    tr.rollout = GivenVideos(frames)
    tr.reward, tr.reward_stack = service, None
    tr._algo_requires_advantages, tr._adv_use_global_std = True, global_std
    tr._uses_ema = tr._rollout_is_trainside = tr._staged_weight_sync = False
    tr.weight_sync = None
    tr._residency = ResidencyPlanner(DEFAULT_RESIDENCY_POLICY, train=None, rollout=(tr.rollout.wake_up, tr.rollout.sleep), reward=None,
                                     run_steps=_run_cleanup_steps)
    tr.wandb_logger = UniRLWandBLogger(enabled=False)
    return tr


def inputs() -> Sample:
    return Sample.request(Part.input(sample_ids=[f"p{i}" for i in range(len(PROMPTS))], primitives={"text": Texts(texts=list(PROMPTS))},
                                     metadata=[{"row": i} for i in range(len(PROMPTS))]))


def plain(values):
    return None if values is None else [None if not math.isfinite(float(v)) else float(v) for v in values]


def scenario(backend: dict, frames, build: str = "trainer", global_std: bool = False) -> dict:
    config = OmegaConf.create({"reward": {"_target_": "unirl.reward.service.RewardService",
                                          "backend": {"_target_": "cac_align.integrations.unirl.CacAlignRewardBackend", **backend}}})
    try:
        service = trainer_built_service(config.reward) if build == "trainer" else instantiate(config.reward)
    except Exception as exc:  # noqa: BLE001 - what their code raised is the result
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    available = bool(service.is_available())
    try:
        tr = trainer(service, frames, global_std)
        sample = tr._build_request_sample(inputs(), rollout_id=0)
        out, mean_reward = tr._rollout_and_score(sample, rollout_id=0)
        part = out.parts[-1]
        metrics = compute_rollout_sample_metrics(sample=out)
        return {
            "available": available,
            "sample_ids": list(part.sample_ids),
            "rewards": plain(part.rewards.tolist()),
            "advantages": plain(part.advantages.tolist()),
            "mean_reward": None if not math.isfinite(mean_reward) else mean_reward,
            "mean_reward_is_nan": math.isnan(mean_reward),
            "components": {k: plain(v.tolist()) for k, v in (part.component_rewards or {}).items()},
            "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        }
    except Exception as exc:  # noqa: BLE001 - what their code raised is the result
        return {"available": available, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}


def main() -> None:
    sections = json.load(open(sys.argv[1]))
    spot = {"reward": "spot", "sections": sections, "device": "cpu", "fps": 16}
    results = {
        "spot": scenario(spot, videos()),
        "spot_hydra_global_std": scenario(spot, videos(), build="instantiate", global_std=True),
        "ur_cac": scenario({"reward": "ur", "sections": sections, "device": "cpu", "fps": 16}, videos()),
        # whole groups are known with their samples_per_prompt: the fill is the group's valid mean
        "corrupt_group_mean": scenario({**spot, "samples_per_prompt": PER_PROMPT}, videos(corrupt={1: float("nan")})),
        # without it, whether a group is whole is unknown: the sample is excluded (NaN, advantage 0)
        "corrupt_excluded": scenario(spot, videos(corrupt={1: float("nan")})),
        "corrupt_fail": scenario({**spot, "invalid": "fail"}, videos(corrupt={4: 3.0})),
        "backend_error": scenario({"reward": "explodes", "device": "cpu", "fps": 16}, videos()),
        "not_loaded": scenario({"reward": "judge", "sections": {"judge": {"name": "cac", "model": {"name": "/nonexistent/ckpt"}}}, "device": "cpu"},
                               videos()),
    }
    json.dump(results, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
