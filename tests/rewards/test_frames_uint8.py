"""Frames stay uint8 from a generator's decoded batch to every reward's judge: what reaches each
judge's processor (in process) or its JPEG encoder (served) is uint8, never a float copy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO_ROOT

SCORE_TINY = sorted((REPO_ROOT / "recipes" / "score").glob("*_tiny.yaml"))


def _dtypes(media: Any) -> list[str]:
    """The element type of every frame or image in a processor's ``videos=`` / ``images=``."""
    from PIL import Image

    if media is None:
        return []
    if isinstance(media, (list, tuple)):
        return [d for item in media for d in _dtypes(item)]
    if isinstance(media, np.ndarray):
        return [str(media.dtype)]
    if isinstance(media, torch.Tensor):
        return [str(media.dtype).removeprefix("torch.")]
    if isinstance(media, Image.Image):
        return ["uint8" if media.mode in ("RGB", "RGBA", "L") else f"PIL {media.mode}"]
    return [type(media).__name__]


def _processors(obj: Any, found: dict[int, Any], depth: int = 0) -> None:
    """Every transformers processor reachable from a reward's attributes (its backends', its
    components')."""
    from transformers import ProcessorMixin

    if depth > 5 or isinstance(obj, (torch.nn.Module, torch.Tensor, np.ndarray, str, bytes, int, float)):
        return
    if isinstance(obj, ProcessorMixin):
        found[id(obj)] = obj
        return
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else vars(obj).values() if hasattr(obj, "__dict__") else []
    for child in children:
        _processors(child, found, depth + 1)


def spy_on_processors(reward: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the ``__call__`` of each processor class the reward holds so that the dtype of every
    frame and image it is given is recorded; the processor then runs as it is. A reward with no processor
    that prepares its frames itself (``prepare(video)``) has that wrapped instead."""
    seen: list[str] = []
    found: dict[int, Any] = {}
    _processors(reward, found)
    for cls in {type(p) for p in found.values()}:
        original = cls.__call__

        def spied(self, *args, __original=original, **kwargs):
            seen.extend(_dtypes(kwargs.get("videos")) + _dtypes(kwargs.get("images")))
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spied)
    if not found and hasattr(reward, "prepare"):  # a reward that resizes frames itself (wm_surprise): what its prepare() reads
        original_prepare = reward.prepare

        def prepare(video, *args, **kwargs):
            seen.append(str(np.asarray(video.frames).dtype))
            return original_prepare(video, *args, **kwargs)

        monkeypatch.setattr(reward, "prepare", prepare)
        return seen
    assert found, "the reward holds no processor"
    return seen


@pytest.mark.parametrize("recipe", SCORE_TINY, ids=lambda path: path.stem)
def test_every_reward_gives_its_judge_uint8_frames_of_a_float_batch(recipe, monkeypatch):
    from cac_align.rewards.registry import build_reward

    reward = build_reward(yaml.safe_load(recipe.read_text())["reward"])
    seen = spy_on_processors(reward, monkeypatch)
    # a generator's decoded batch as a Flow-GRPO-style reward_fn is handed it: float (B, F, C, H, W) in [0, 1]
    batch = torch.rand(2, 9, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    out = reward(batch, ["a cat on a sofa"] * 2, metadata={"fps": 8})  # one prompt: the pairwise rewards compare the two
    assert len(out) == 2 and not any(d.get("error_kind") == "video" for d in out.details)  # both videos loaded
    assert seen and set(seen) == {"uint8"}, seen


def test_a_served_judge_is_sent_uint8_frames():
    from chat_server import ChatServer

    from cac_align.rewards.cac import CaCReward
    from cac_align.vlm.openai import OpenAIBackend

    with ChatServer() as server:
        out = CaCReward(OpenAIBackend("cac", base_url=server.url), batch_size=2)(torch.rand(2, 9, 3, 32, 48), ["a", "b"], metadata={"fps": 8})
    assert out.valid.all() and server.videos  # each request's video part, as the server decoded what travelled
    assert {(frames.dtype.name, frames.shape[-1]) for frames, _ in server.videos} == {("uint8", 3)}


def test_the_payload_refuses_frames_that_are_not_uint8():
    from cac_align.vlm.video_payload import encode_video

    with pytest.raises(ValueError, match="uint8"):
        encode_video(np.full((2, 4, 4, 3), 0.5, dtype=np.float32), 8.0, [0, 1])  # cast, it would travel as zeros
