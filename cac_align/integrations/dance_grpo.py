"""Our rewards in VideoAlign's inferencer shape, for DanceGRPO (github.com/XueZeyue/DanceGRPO).

How DanceGRPO asks VideoAlign (read at commit 15cc71d, ``fastvideo/train_grpo_hunyuan.py``):

- inside ``main()`` (lines 520-525), on every rank: ``from fastvideo.models.videoalign.inference
  import VideoVLMRewardInference`` and ``VideoVLMRewardInference("./videoalign_ckpt",
  device=f"cuda:{device}", dtype=torch.bfloat16)``;
- per sampled video (lines 249-269): the video is written as an mp4 (``export_to_video``, ``--fps``,
  8 in their script), then ``inferencer.reward([abs_path], [caption], use_norm=True)`` is called
  with that one video, and ``reward[0]["VQ"]`` and ``reward[0]["MQ"]`` become two rewards, each
  standardized within its prompt group; their script trains on VQ (``--vq_coef 1.0 --mq_coef
  0.0``), their SkyReels script on MQ;
- ``except Exception`` around the call (lines 274-278) puts **-1.0** in both, logs nothing, and
  trains on it: a failure is a strongly negative made-up reward.

VideoAlign's own ``reward(video_paths, prompts, fps=None, num_frames=None, max_pixels=None,
use_norm=True)`` (KwaiVGI/VideoAlign 219ab9d, ``inference.py`` 176-203) returns one dict per video
with float ``VQ``, ``MQ``, ``TA`` and ``Overall`` (their sum).

:class:`VideoAlignShaped` has that shape: each key holds our one reward's score (``Overall`` too;
it is not a sum), with the reward's name under ``"reward"``. Swap one line of their script, or
none with the launcher (it puts our class where their import looks)::

    from cac_align.integrations.dance_grpo import VideoVLMRewardInference   # instead of theirs
    # or, no edit:  torchrun ... -m cac_align.integrations.dance_grpo --rewards cac_rewards.yaml \\
    #                   --reward ur_cac fastvideo/train_grpo_hunyuan.py ... --use_videoalign

Which reward. :func:`configure` (or the launcher's ``--rewards``/``--reward``) says it; with the
one-line swap alone, the sections come from ``$CAC_ALIGN_REWARDS`` (a YAML file of reward sections,
as for the other trainers) and the name from ``$CAC_ALIGN_REWARD`` (default ``ur_cac``).

Samples we cannot score. Their ``except Exception`` turns any raise into -1.0, and a NaN would make
its group's advantages NaN; their trainer has no mask. So nothing this class raises is an
``Exception``: every failure inside ``reward()`` (a sample we could not score, a reward section's
own ``invalid: fail`` refusal, a crashed model, a wrong call) becomes :class:`RewardStop`, which
derives from ``BaseException`` so that their handler cannot turn it into -1.0: the run stops,
saying which video and why. For samples we could not score, ``invalid`` chooses:

- ``stop`` (default): stop as above;
- ``fill``: the sample gets the mean of the valid scores its group has had so far, logged and
  counted. A group is what their advantages standardize together: ``group_size`` consecutive
  samples (their ``--num_generations``, 16 by default; the launcher reads it from their arguments)
  of one prompt, scored one after another. A step's samples are whole groups, so a group never
  reaches into the previous step. A sample with no earlier valid score in its group, or more than
  ``max_invalid`` fills in the run, stops as above. The fill is close to its group's mean, so its
  advantage is close to 0, not exactly 0.

``use_norm`` is accepted and has no effect: our scores are on the reward's own fixed scale
(``ur_cac`` in [0, 1]) and their trainer standardizes each group anyway. Frame sampling is the
reward's own (its section), so ``fps``, ``num_frames`` and ``max_pixels`` are refused if given.
The checkpoint path and dtype their script passes are ignored: the sections file says which
models score, with what dtype, and the device their script passes is used for in-process models.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cac_align.integrations import adapter

__all__ = ["RewardStop", "VideoAlignShaped", "VideoVLMRewardInference", "configure", "configure_from_env", "install", "main", "reset"]

log = logging.getLogger(__name__)

THEIR_MODULE = "fastvideo.models.videoalign.inference"
KEYS = ("VQ", "MQ", "TA", "Overall")
POLICIES = ("stop", "fill")
ENV_REWARD = "CAC_ALIGN_REWARD"  # the reward's name for the one-line swap (sections: $CAC_ALIGN_REWARDS)
THEIR_GROUP_FLAG = "--num_generations"  # their argparse flag: samples per prompt, standardized together
THEIR_GROUP_DEFAULT = 16  # its default in train_grpo_hunyuan.py (15cc71d, lines 978-983)

_SLOTS = adapter.RewardSlots(where="dance_grpo")
_DEFAULTS: dict[str, Any] = {"reward": "ur_cac", "invalid": "stop", "max_invalid": 16, "group_size": THEIR_GROUP_DEFAULT, "configured": False}
_settings: dict[str, Any] = dict(_DEFAULTS)


class RewardStop(BaseException):
    """A sample our reward could not score, raised past DanceGRPO's ``except Exception`` (which
    would train on -1.0 instead): the run stops with the reason."""


def configure(
    sections: Mapping[str, Any] | str | Path | None = None,
    reward: str = "ur_cac",
    invalid: str = "stop",
    max_invalid: int = 16,
    group_size: int = THEIR_GROUP_DEFAULT,
) -> None:
    """Which reward the inferencer gives and what happens to samples it cannot score.

    Args:
        sections: reward sections by name (a mapping or a YAML file; e.g. ``ur_cac`` with your
            checkpoints).
        reward: the name whose score fills every VideoAlign key.
        invalid: "stop" (default) or "fill" (module docstring).
        max_invalid: with "fill", the most samples filled in a run before it stops.
        group_size: their ``--num_generations``: with "fill", a group's earlier scores are those of
            the last ``group_size`` consecutive samples at most (module docstring).
    """
    if invalid not in POLICIES:
        raise ValueError(f"invalid must be one of {POLICIES} for DanceGRPO, got {invalid!r}")
    if int(max_invalid) < 0:
        raise ValueError(f"max_invalid must be >= 0, got {max_invalid}")
    if int(group_size) < 1:
        raise ValueError(f"group_size (their {THEIR_GROUP_FLAG}) must be >= 1, got {group_size}")
    _SLOTS.configure(sections)
    _SLOTS.section(reward)  # an unknown name fails now
    _settings.update(reward=reward, invalid=invalid, max_invalid=int(max_invalid), group_size=int(group_size), configured=True)


def configure_from_env() -> None:
    """The one-line swap's configuration: sections from ``$CAC_ALIGN_REWARDS``, the reward's name
    from ``$CAC_ALIGN_REWARD`` (default ``ur_cac``); the rest at their defaults."""
    configure(adapter.sections_from_env(), reward=os.environ.get(ENV_REWARD) or _DEFAULTS["reward"])


def reset() -> None:
    """Forget every setting (the next inferencer configures itself from the environment)."""
    _SLOTS.configure(None)
    _settings.clear()
    _settings.update(_DEFAULTS)


class VideoAlignShaped:
    """``VideoVLMRewardInference(load_from_pretrained, load_from_pretrained_step=-1, device="cuda",
    dtype=torch.bfloat16)`` with our reward behind it (module docstring).

    Args:
        load_from_pretrained, load_from_pretrained_step, dtype: accepted for their call; unused
            (the sections file says which models, and their dtype).
        device: where in-process models go (their script passes ``cuda:<rank>``).
        reward: the reward name (default: :func:`configure`'s, ``ur_cac``).
    """

    def __init__(
        self, load_from_pretrained: Any = None, load_from_pretrained_step: int = -1, device: Any = "cuda", dtype: Any = None, *, reward: str | None = None
    ) -> None:
        del load_from_pretrained, load_from_pretrained_step, dtype
        if not _settings["configured"]:  # the one-line swap: nothing called configure or install
            configure_from_env()
        self.name = reward or _settings["reward"]
        self.invalid = _settings["invalid"]
        self.max_invalid = _settings["max_invalid"]
        self.group_size = _settings["group_size"]
        self._score = _SLOTS.scorer(self.name, device, invalid="drop")
        self.filled = 0
        self._seen = 0  # samples scored so far: sample k belongs to count-group k // group_size
        self._group: tuple[int, str | None, list[float]] = (-1, None, [])  # (count-group, prompt, its valid scores)

    def reward(
        self,
        video_paths: Sequence[str],
        prompts: Sequence[str],
        fps: float | None = None,
        num_frames: int | None = None,
        max_pixels: int | None = None,
        use_norm: bool = True,
    ) -> list[dict[str, Any]]:
        """One dict per video: ``VQ``, ``MQ``, ``TA`` and ``Overall`` each hold the score,
        ``"reward"`` the reward's name. Raises :class:`RewardStop` (never an ``Exception``, which
        their handler would turn into -1.0) for anything that goes wrong, a sample that cannot be
        scored included (or fills it: ``invalid: fill``)."""
        del use_norm  # our scale is the reward's own; their trainer standardizes per group anyway
        try:
            given = {k: v for k, v in {"fps": fps, "num_frames": num_frames, "max_pixels": max_pixels}.items() if v is not None}
            if given:
                raise ValueError(f"{sorted(given)}: the reward samples frames as its section says; set them there, not per call")
            scored = self._score([str(p) for p in video_paths], list(prompts))
        except Exception as exc:  # a refusal of the reward itself (invalid: fail), a crash, a wrong call
            raise RewardStop(
                f"reward {self.name!r} on {[str(p) for p in video_paths]}: {type(exc).__name__}: {exc}. DanceGRPO would train on -1.0 "
                "for it, so the run stops (docs/rewards.md, 'DanceGRPO')"
            ) from exc
        out = []
        for i, prompt in enumerate(str(p) for p in prompts):
            self._enter(prompt)
            score = float(scored.scores[i]) if scored.valid[i] else self._fill(video_paths[i], scored.errors.get(i, "invalid"))
            if scored.valid[i]:
                self._group[2].append(score)
            out.append({**{key: score for key in KEYS}, "reward": self.name})
        return out

    def _enter(self, prompt: str) -> None:
        """Count one more sample; a new group starts every ``group_size`` samples (their advantage
        groups, whole within a step) and wherever the prompt changes."""
        group = self._seen // self.group_size
        self._seen += 1
        if self._group[0] != group or self._group[1] != prompt:
            self._group = (group, prompt, [])

    def _fill(self, path: str, why: str) -> float:
        earlier = self._group[2]
        if self.invalid == "stop" or not earlier or self.filled >= self.max_invalid:
            reason = (
                "invalid: stop" if self.invalid == "stop"
                else "no earlier valid sample of this prompt's group to fill from" if not earlier
                else f"more than max_invalid={self.max_invalid} samples filled in this run"
            )
            raise RewardStop(
                f"reward {self.name!r} could not score {path}: {why} ({reason}). DanceGRPO would train on -1.0 "
                "for it, so the run stops (docs/rewards.md, 'DanceGRPO')"
            )
        self.filled += 1
        value = float(np.mean(earlier))
        log.warning("reward %r could not score %s (%s): filled with its group's mean so far %.4f (%d filled)", self.name, path, why, value, self.filled)
        return value


VideoVLMRewardInference = VideoAlignShaped  # the name their import asks for


def install(
    sections: Mapping[str, Any] | str | Path | None = None,
    reward: str | None = None,
    invalid: str | None = None,
    max_invalid: int | None = None,
    group_size: int | None = None,
) -> None:
    """Put :class:`VideoAlignShaped` where DanceGRPO's ``main()`` imports
    ``VideoVLMRewardInference`` from (``fastvideo.models.videoalign.inference``), without
    importing their VideoAlign code; an already-imported module of theirs gets the attribute.
    Settings not given keep what was configured before (sections: else ``$CAC_ALIGN_REWARDS``)."""
    if sections is None:
        sections = _SLOTS.settings["sections"] if _settings["configured"] else adapter.sections_from_env()
    configure(
        sections,
        reward or _settings["reward"],
        invalid or _settings["invalid"],
        _settings["max_invalid"] if max_invalid is None else max_invalid,
        _settings["group_size"] if group_size is None else group_size,
    )
    module = sys.modules.get(THEIR_MODULE)
    if module is None:
        module = types.ModuleType(THEIR_MODULE, "cac_align's VideoAlign-shaped reward (cac_align.integrations.dance_grpo)")
        sys.modules[THEIR_MODULE] = module
    module.VideoVLMRewardInference = VideoAlignShaped


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--reward", default=None)
    parser.add_argument("--invalid", choices=POLICIES, default=None)
    known, rest = parser.parse_known_args(argv if argv is not None else sys.argv[1:])
    # their own --num_generations (after the script's name) is the group size a fill looks back over
    theirs = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    theirs.add_argument(THEIR_GROUP_FLAG, type=int, default=None)
    group_size = theirs.parse_known_args(rest)[0].num_generations

    def _install(sections: Any = None) -> None:
        install(sections, reward=known.reward, invalid=known.invalid, group_size=group_size)

    adapter.launch(
        "python -m cac_align.integrations.dance_grpo [--reward NAME] [--invalid stop|fill]", "DanceGRPO", (), _install, rest
    )


if __name__ == "__main__":
    from cac_align.integrations.dance_grpo import main as _main

    _main()
