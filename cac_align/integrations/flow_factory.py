"""Our rewards as Flow-Factory reward models (github.com/X-GenGroup/Flow-Factory), by class path.

How Flow-Factory loads and calls a reward (read at commit a0b2bc5; paths under
``src/flow_factory/``):

- a reward entry of the run config names a class: ``reward_model`` is a registered name or a
  dotted class path, imported with ``importlib`` and built as ``cls(config=RewardArguments,
  accelerator=...)`` (``rewards/registry.py`` 64-112, ``rewards/loader.py`` 40-69); keys it does
  not know go to ``config.extra_kwargs`` (``hparams/abc.py`` 28-64); two entries with equal
  ``reward_model``, dtype, device and extras share one instance (``loader.py`` 154-194);
- a ``GroupwiseRewardModel`` is called once per prompt group with all of its K samples, gathered
  across ranks if they were split (``rewards/reward_processor.py`` 264-339), as ``model(prompt=[...],
  video=[...], ...)``; with ``use_tensor_inputs`` each video is a ``(T, C, H, W)`` float tensor in
  [0, 1] on the model's device (112-148, ``utils/video.py`` 728-746); ``output.rewards`` becomes a
  float32 tensor; ``extra_info`` is not read;
- rewards combine by their entries' ``weight`` (``advantage/advantage_processor.py``: ``sum``
  adds ``weight * reward`` then normalizes per group, 357-386; ``gdpo``, the default, normalizes
  each reward per group, then weights, 403-470). Nothing masks a sample; a raise leaves
  ``prepare_feedback`` (``trainers/grpo.py`` 176-182) and stops the run; a NaN reward makes its
  group's advantages NaN (and, through a global normalization, every one).

Config lines a user copies (``rewards:`` of their YAML)::

    rewards:
      - name: ur_cac                 # the name of ours to score (or set `reward:` below)
        reward_model: cac_align.integrations.flow_factory.CacAlignReward
        weight: 1.0
        batch_size: 8                # unused by a groupwise model (a group is one call)
        fps: 16                      # your pipeline's frame rate (Wan-2.1 16, Wan2.2 / LTX-2 24)
        sections: cac_rewards.yaml   # optional: your checkpoints (else $CAC_ALIGN_REWARDS, else defaults)

Every entry's extra keys: ``reward`` (a name of ours; default: the entry's ``name``), ``sections``,
``invalid`` ("group_mean" default, or "fail"), ``max_invalid_fraction`` (0.5), ``fps`` (the frame
rate of their videos, which reach a reward without one; else the reward section's own
``source_fps``; with neither the class refuses to build, naming the key: Wan-2.1 16, Wan2.2 / LTX-2
24).

Invalid samples. The class is groupwise so that an invalid sample can be filled honestly: it
gets the mean of its group's valid samples (the whole group is in the call), so under ``gdpo``
its advantage for this reward is exactly 0; under ``sum`` its share of the sum is its group's
mean. Each fill is logged with the reason and counted; a group with more than
``max_invalid_fraction`` invalid samples, or none valid, raises
:class:`~cac_align.rewards.base.RewardError`, which stops their run rather than train on made-up
numbers. NaN is never returned (their trainer would spread it).

Groupwise rewards are not computed in their evaluation; ``extra_info`` (validity, errors) is not
read by them, so the log line and :func:`invalid_counts` are where invalid samples show.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cac_align.integrations import adapter
from cac_align.rewards.base import RewardError

__all__ = ["POLICIES", "invalid_counts"]  # CacAlignReward: built from their base class on first use

log = logging.getLogger(__name__)

POLICIES = ("group_mean", "fail")
_counts = {"scored": 0, "invalid": 0}


def invalid_counts() -> dict[str, int]:
    """Samples scored and samples invalid (filled or not) by our rewards in this process so far."""
    return dict(_counts)


def _settings(config: Any) -> dict[str, Any]:
    extra = dict(getattr(config, "extra_kwargs", None) or {})
    known = {"reward", "sections", "invalid", "max_invalid_fraction", "fps"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ValueError(f"flow_factory reward {getattr(config, 'name', '?')!r}: unknown key(s) {unknown}; known: {sorted(known)}")
    settings = {
        "reward": extra.get("reward") or getattr(config, "name", None),
        "sections": extra.get("sections") or adapter.sections_from_env(),
        "invalid": extra.get("invalid", "group_mean"),
        "max_invalid_fraction": float(extra.get("max_invalid_fraction", 0.5)),
        "fps": extra.get("fps"),
    }
    if settings["invalid"] not in POLICIES:
        raise ValueError(
            f"flow_factory reward: invalid must be one of {POLICIES}, got {settings['invalid']!r} (their trainer cannot "
            "mask or drop a sample, and a NaN reward spreads to every advantage)"
        )
    return settings


def _make_class() -> type:
    """Our reward class, a subclass of *their* ``GroupwiseRewardModel`` (their processor sorts
    models by ``isinstance``), built when first asked for so that importing this module does not
    need Flow-Factory."""
    from flow_factory.rewards.abc import GroupwiseRewardModel, RewardModelOutput

    class CacAlignReward(GroupwiseRewardModel):
        """A cac_align reward scoring one Flow-Factory prompt group per call (module docstring)."""

        required_fields = ("video", "prompt")
        use_tensor_inputs = True  # videos as (T, C, H, W) float tensors in [0, 1]

        def __init__(self, config: Any, accelerator: Any) -> None:
            super().__init__(config, accelerator)
            self.settings = _settings(config)
            slots = adapter.RewardSlots(where="flow_factory")
            slots.configure(self.settings["sections"], self.settings["invalid"])
            self.name = self.settings["reward"]
            # their samples reach a reward with no frame rate: the entry's fps, else the section's
            # source_fps, else the run stops at launch naming the key (never Wan-2.1's 16 by default)
            self.fps = adapter.frame_rate(f"flow_factory reward {self.name!r}", "fps in its rewards entry (or source_fps in the reward's section)",
                                          self.settings["fps"], adapter.section_fps(slots.section(self.name)))
            self._score = slots.scorer(self.name, self.device)

        # No **kwargs: their processor passes every sample field a signature with **kwargs accepts
        # (latents and log-probs included, moved to the device), only the named ones otherwise.
        def __call__(self, prompt: list[str], video: list[Any] | None = None) -> Any:
            import torch

            if video is None:
                raise ValueError(f"reward {self.name!r} scores videos; this sample has none")
            videos = [v.detach().float().cpu() if isinstance(v, torch.Tensor) else v for v in video]
            group = [{"group": 0, "fps": self.fps} for _ in videos]  # their call is one prompt group
            scored = self._score(videos, list(prompt), group)
            n, n_invalid = len(videos), int((~scored.valid).sum())
            _counts["scored"] += n
            _counts["invalid"] += n_invalid
            if n_invalid:
                reasons = "; ".join(f"sample {i}: {why}" for i, why in list(scored.errors.items())[:3])
                if n_invalid / n > self.settings["max_invalid_fraction"]:
                    raise RewardError(
                        f"reward {self.name!r}: {n_invalid} of the {n} samples of prompt {prompt[0]!r} could not be scored "
                        f"(more than max_invalid_fraction={self.settings['max_invalid_fraction']:g}); Flow-Factory cannot "
                        f"leave a sample out, so the run stops. First: {reasons}"
                    )
                log.warning(
                    "reward %r: %d of %d samples of a group could not be scored and got the group's mean: %s (%d invalid of %d so far)",
                    self.name, n_invalid, n, reasons, _counts["invalid"], _counts["scored"],
                )
            rewards = torch.as_tensor(np.asarray(scored.scores, dtype=np.float32))
            return RewardModelOutput(rewards=rewards, extra_info={"valid": scored.valid.tolist(), "errors": scored.errors})

    return CacAlignReward


_built: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "CacAlignReward":
        if name not in _built:
            _built[name] = _make_class()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
