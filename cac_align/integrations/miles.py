"""Our rewards as a miles custom API reward actor (Miles-Diffusion, github.com/radixark/miles_diffusion).

How miles scores a rollout with a custom API reward (read at d9c69c4 for
``miles/rollout/rm_hub/api.py`` and a380f76 for ``miles/utils/api_rm_config.py``; miles is not on
PyPI):

- ``--rm-type custom_api --custom-api-rm-config FILE`` (or ``base64:<yaml>``) names
  ``actor_class`` (a dotted path, imported and required to subclass their ``ApiRewardActor``),
  ``actor_kwargs`` (plain data: Ray ships them) and ``max_concurrency`` (8);
- their pool builds ``actor_class(**actor_kwargs)`` once, as a Ray actor with no GPU, and scores
  each sample as a batch of one (``score_batch([output], [prompt])``), up to ``max_concurrency``
  at once on the actor's threads: ``build_request(output, prompt)``, ``send_request(request)``,
  ``parse_response(response)`` for each item; a score that is not a finite number raises;
- ``output`` is the sample's ``generated_output``: a CPU tensor ``(C, T, H, W)``, float in [0, 1];
  no frame rate comes with it; a raise fails the rollout, and the number returned becomes the
  sample's reward, normalized within its prompt's group; nothing masks a sample.

What this module gives: ``CacAlignRewardActor`` (a subclass of *their* ``ApiRewardActor``, built on
first use so that importing this module does not need miles). Every frame of the video is scored,
at the frame rate you give (``fps``); the judge is whatever the reward's section says, in this
process or served (``backend: openai``). Its ``actor_kwargs``:

- ``reward``: a name of ours or of your sections file (default ``ur_cac``, the paper's reward);
- ``sections``: a YAML file of reward sections (or a mapping); else ``$CAC_ALIGN_REWARDS``; else
  the paper's checkpoints;
- ``fps``: the frame rate of your videos (miles passes none; else the section's ``source_fps``;
  with neither the actor refuses to build, naming the key: Wan-2.1 16, Wan2.2 / LTX-2 24);
- ``invalid``: what a sample we could not score becomes. ``fail`` (default): the actor raises
  :class:`~cac_align.rewards.base.RewardError` with the reason, so miles fails the rollout rather
  than train on a made-up number (their group normalization has no mask, and a NaN would spread
  to the whole group). ``value``: the sample gets ``invalid_value`` (which you must give, a finite
  number on the reward's scale, e.g. its group-neutral value), logged with the reason and counted
  (:func:`invalid_counts`);
- ``device``: where in-process judges go (``auto``: CUDA when the actor's process sees one; their
  actor has no GPU, so serve a large judge with ``cac-align serve`` and a ``backend: openai``
  section).

Config a user writes (``--custom-api-rm-config cac_reward.yaml``)::

    actor_class: cac_align.integrations.miles.CacAlignRewardActor
    max_concurrency: 8
    actor_kwargs:
      reward: ur_cac
      sections: /abs/path/cac_rewards.yaml
      fps: 16
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from cac_align.integrations import adapter
from cac_align.rewards.base import RewardError

__all__ = ["POLICIES", "invalid_counts"]  # CacAlignRewardActor: built from their base class on first use

log = logging.getLogger(__name__)

POLICIES = ("fail", "value")
_counts = {"scored": 0, "invalid": 0}
_counts_lock = threading.Lock()


def invalid_counts() -> dict[str, int]:
    """Samples scored and samples invalid by our actor in this process so far."""
    with _counts_lock:
        return dict(_counts)


def _policy(invalid: str, invalid_value: Any) -> float | None:
    """The value an invalid sample gets (None: the actor raises), checked."""
    if invalid not in POLICIES:
        raise ValueError(f"miles actor: invalid must be one of {POLICIES}, got {invalid!r} (miles cannot mask a sample, and a NaN "
                         "reward spreads to its whole group)")
    if invalid == "fail":
        if invalid_value is not None:
            raise ValueError("miles actor: invalid_value is used only with invalid: value")
        return None
    if invalid_value is None or isinstance(invalid_value, bool):
        raise ValueError("miles actor: invalid: value needs invalid_value, a finite number on the reward's scale (none is assumed)")
    value = float(invalid_value)
    if not math.isfinite(value):
        raise ValueError(f"miles actor: invalid_value must be finite, got {invalid_value!r}")
    return value


def _make_class() -> type:
    """Our actor, a subclass of *their* ``ApiRewardActor`` (their pool refuses any other class)."""
    from miles.rollout.rm_hub.api import ApiRewardActor

    class CacAlignRewardActor(ApiRewardActor):
        """A cac_align reward scoring one miles sample per request (module docstring)."""

        def __init__(self, reward: str = "ur_cac", sections: Any = None, fps: Any = None, invalid: str = "fail",
                     invalid_value: Any = None, device: str = "auto") -> None:
            self.fill = _policy(invalid, invalid_value)
            slots = adapter.RewardSlots(where="miles")
            slots.configure(sections or adapter.sections_from_env(), "drop")
            self.name = reward
            self.fps = adapter.frame_rate(f"miles reward {reward!r}", "fps in actor_kwargs (or source_fps in the reward's section)",
                                          fps, adapter.section_fps(slots.section(reward)))
            self._score = slots.scorer(reward, _device(device))

        def build_request(self, output: Any, prompt: str) -> dict[str, Any]:
            """Their ``(C, T, H, W)`` tensor as our ``(T, C, H, W)`` frames (a view: every frame,
            never copied as float), with its prompt and the frame rate given."""
            shape = tuple(getattr(output, "shape", ()))
            if len(shape) != 4 or shape[0] != 3:
                raise ValueError(f"miles reward {self.name!r}: expected a video (C=3, T, H, W), got shape {shape}")
            return {"video": output.detach().permute(1, 0, 2, 3), "prompt": prompt}

        def send_request(self, request: dict[str, Any]) -> Any:
            return self._score([request["video"]], [request["prompt"]], [{"fps": self.fps}])

        def parse_response(self, response: Any) -> float:
            valid = bool(response.valid[0])
            with _counts_lock:
                _counts["scored"] += 1
                _counts["invalid"] += not valid
                counts = dict(_counts)
            if valid:
                return float(response.scores[0])
            reason = response.errors.get(0, "invalid")
            if self.fill is None:
                raise RewardError(f"miles reward {self.name!r}: a sample could not be scored ({reason}); miles cannot leave a sample "
                                  "out, so the rollout stops (invalid: value gives such samples a number you choose)")
            log.warning("miles reward %r: a sample could not be scored and got invalid_value %g: %s (%d invalid of %d so far)",
                        self.name, self.fill, reason, counts["invalid"], counts["scored"])
            return self.fill

    CacAlignRewardActor.__module__ = __name__
    CacAlignRewardActor.__qualname__ = "CacAlignRewardActor"  # pickled by reference: Ray's worker imports it here
    return CacAlignRewardActor


def _device(device: str) -> Any:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_built: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "CacAlignRewardActor":
        if name not in _built:
            _built[name] = _make_class()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
