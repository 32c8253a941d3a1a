"""Qwen2.5-VL's multimodal positions as its checkpoints were trained with.

Qwen2.5-VL gives each vision token three rotary positions (time, height, width) and each text
token one, repeated three times. Where the text after an image or a video starts differs:

- Qwen2.5-VL's own code, transformers up to 5.2 and vLLM (the code its checkpoints, e.g.
  UnifiedReward-qwen, were trained and are served with): at the largest position of the vision
  block + 1;
- transformers 5.3 and later: at the block's start + max(height, width) / merge, ignoring how
  far the block reaches in time.

The two agree for an image (one time step) and for Qwen3-VL (each frame pair its own block), and
differ after a video whose time positions outrun its height and width: every later token is
shifted (measured on a tiny random Qwen2.5-VL, 8 frames at 4 fps: log-probabilities 5.4e-3
apart, tests/conformance). :func:`install_trained_positions` makes the in-process backend place
text as the checkpoints were trained, which is also what a vLLM server computes.
"""

from __future__ import annotations

import itertools
import types
from typing import Any

__all__ = ["install_trained_positions", "text_after_vision_at_max_plus_one"]

# model types whose transformers >= 5.3 positions advance by max(h, w) after a vision block
AFFECTED = ("qwen2_5_vl",)


def text_after_vision_at_max_plus_one(position_ids: Any, mm_token_type_ids: Any, attention_mask: Any = None) -> tuple[Any, Any]:
    """Shift every block after an image or a video so that it starts at the largest position so
    far + 1, as Qwen2.5-VL was trained.

    Args:
        position_ids: (3, B, L) long, as transformers' ``get_rope_index`` computed them (each
            block's positions are its start + offsets from 0).
        mm_token_type_ids: (B, L) int, 0 text, 1 image, 2 video.
        attention_mask: (B, L) or None; masked (padding) positions are left as they are.

    Returns:
        (position_ids (3, B, L), rope deltas (B, 1)): the deltas are the largest position + 1 less
        the number of real tokens, as ``get_rope_index`` returns them.
    """
    import torch

    out = position_ids.clone()
    deltas = []
    for row in range(out.shape[1]):
        keep = torch.arange(out.shape[2], device=out.device) if attention_mask is None else attention_mask[row].bool().nonzero().squeeze(1)
        kinds = mm_token_type_ids[row][keep].tolist()
        positions = out[:, row, keep]
        shift, next_start, after_vision, offset = 0, None, False, 0
        for kind, group in itertools.groupby(kinds):
            length = len(list(group))
            block = positions[:, offset : offset + length]
            if after_vision:  # the original rule: start at the largest position so far + 1
                shift += int(next_start - (block.min() + shift))
            block += shift
            next_start = int(block.max()) + 1
            after_vision = kind != 0
            offset += length
        out[:, row, keep] = positions
        deltas.append(int(positions.max()) + 1 - len(kinds))
    return out, torch.tensor(deltas, device=out.device).unsqueeze(1)


def install_trained_positions(model: Any) -> bool:
    """Make an affected model (:data:`AFFECTED`) place text after vision blocks as its
    checkpoints were trained; returns whether anything was installed. Idempotent."""
    inner = getattr(model, "model", None)
    config = getattr(model, "config", None)
    if inner is None or getattr(config, "model_type", None) not in AFFECTED or not hasattr(inner, "get_rope_index"):
        return False
    if getattr(inner, "_cac_align_trained_positions", False):
        return True
    transformers_index = inner.get_rope_index

    def get_rope_index(self: Any, input_ids: Any, mm_token_type_ids: Any, *args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        position_ids, _ = transformers_index(input_ids, mm_token_type_ids, *args, attention_mask=attention_mask, **kwargs)
        return text_after_vision_at_max_plus_one(position_ids, mm_token_type_ids, attention_mask)

    inner.get_rope_index = types.MethodType(get_rope_index, inner)
    inner._cac_align_trained_positions = True
    return True
