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

Samples we cannot score. Their ``except Exception`` turns any raise into -1.0, and a NaN would make
its group's advantages NaN; their trainer has no mask. So:

- ``invalid: stop`` (default): raise :class:`RewardStop`, which derives from ``BaseException``
  so that their ``except Exception`` cannot turn it into -1.0: the run stops, saying which video
  and why;
- ``invalid: fill``: the sample gets the mean of the valid scores its prompt has had in this
  group so far (their samples of one prompt are scored one after another), logged and counted; a
  sample with no such earlier score, or more than ``max_invalid`` fills in the run, stops as above.
  The fill is close to its group's mean, so its advantage is close to 0, not exactly 0.

``use_norm`` is accepted and has no effect: our scores are on the reward's own fixed scale
(``ur_cac`` in [0, 1]) and their trainer standardizes each group anyway. Frame sampling is the
reward's own (its section), so ``fps``, ``num_frames`` and ``max_pixels`` are refused if given.
The checkpoint path and dtype their script passes are ignored: the sections file says which
models score, with what dtype, and the device their script passes is used for in-process models.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cac_align.integrations import adapter

__all__ = ["RewardStop", "VideoAlignShaped", "VideoVLMRewardInference", "configure", "install", "main"]

log = logging.getLogger(__name__)

THEIR_MODULE = "fastvideo.models.videoalign.inference"
KEYS = ("VQ", "MQ", "TA", "Overall")
POLICIES = ("stop", "fill")

_SLOTS = adapter.RewardSlots(where="dance_grpo")
_settings: dict[str, Any] = {"reward": "ur_cac", "invalid": "stop", "max_invalid": 16}


class RewardStop(BaseException):
    """A sample our reward could not score, raised past DanceGRPO's ``except Exception`` (which
    would train on -1.0 instead): the run stops with the reason."""


def configure(
    sections: Mapping[str, Any] | str | Path | None = None, reward: str = "ur_cac", invalid: str = "stop", max_invalid: int = 16
) -> None:
    """Which reward the inferencer gives and what happens to samples it cannot score.

    Args:
        sections: reward sections by name (a mapping or a YAML file; e.g. ``ur_cac`` with your
            checkpoints).
        reward: the name whose score fills every VideoAlign key.
        invalid: "stop" (default) or "fill" (module docstring).
        max_invalid: with "fill", the most samples filled in a run before it stops.
    """
    if invalid not in POLICIES:
        raise ValueError(f"invalid must be one of {POLICIES} for DanceGRPO, got {invalid!r}")
    if int(max_invalid) < 0:
        raise ValueError(f"max_invalid must be >= 0, got {max_invalid}")
    _SLOTS.configure(sections)
    _SLOTS.section(reward)  # an unknown name fails now
    _settings.update(reward=reward, invalid=invalid, max_invalid=int(max_invalid))


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
        self.name = reward or _settings["reward"]
        self.invalid = _settings["invalid"]
        self.max_invalid = _settings["max_invalid"]
        self._score = _SLOTS.scorer(self.name, device, invalid="drop")
        self.filled = 0
        self._group: tuple[str | None, list[float]] = (None, [])

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
        ``"reward"`` the reward's name. Raises :class:`RewardStop` for a sample that cannot be
        scored (or fills it: ``invalid: fill``)."""
        del use_norm  # our scale is the reward's own; their trainer standardizes per group anyway
        given = {k: v for k, v in {"fps": fps, "num_frames": num_frames, "max_pixels": max_pixels}.items() if v is not None}
        if given:
            raise ValueError(f"{sorted(given)}: the reward samples frames as its section says; set them there, not per call")
        scored = self._score([str(p) for p in video_paths], list(prompts))
        out = []
        for i, prompt in enumerate(str(p) for p in prompts):
            score = float(scored.scores[i]) if scored.valid[i] else self._fill(video_paths[i], prompt, scored.errors.get(i, "invalid"))
            if scored.valid[i]:
                self._remember(prompt, score)
            out.append({**{key: score for key in KEYS}, "reward": self.name})
        return out

    def _remember(self, prompt: str, score: float) -> None:
        last, scores = self._group
        self._group = (prompt, (scores if last == prompt else []) + [score])

    def _fill(self, path: str, prompt: str, why: str) -> float:
        last, scores = self._group
        earlier = scores if last == prompt else []
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
    sections: Mapping[str, Any] | str | Path | None = None, reward: str | None = None, invalid: str | None = None, max_invalid: int | None = None
) -> None:
    """Put :class:`VideoAlignShaped` where DanceGRPO's ``main()`` imports
    ``VideoVLMRewardInference`` from (``fastvideo.models.videoalign.inference``), without
    importing their VideoAlign code; an already-imported module of theirs gets the attribute."""
    configure(
        sections if sections is not None else _SLOTS.settings["sections"],
        reward or _settings["reward"],
        invalid or _settings["invalid"],
        _settings["max_invalid"] if max_invalid is None else max_invalid,
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

    def _install(sections: Any = None) -> None:
        install(sections, reward=known.reward, invalid=known.invalid)

    adapter.launch(
        "python -m cac_align.integrations.dance_grpo [--reward NAME] [--invalid stop|fill]", "DanceGRPO", (), _install, rest
    )


if __name__ == "__main__":
    from cac_align.integrations.dance_grpo import main as _main

    _main()
