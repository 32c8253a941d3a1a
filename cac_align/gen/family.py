"""Which Wan a generator name is, and that model's own sampling settings.

A family is found from the name a recipe gives (``generator.name``): the hub ids, the tiny
in-process pipelines, or a local ``save_pretrained`` copy (its ``model_index.json``: a
``transformer_2`` is the A14B's second expert, ``expand_timesteps`` the TI2V-5B's per-token
timesteps). Every setting a recipe leaves unset (``null``) takes the family's value here; the
jobs read the settings, never the family (``GeneratorConfig`` fills them in).

The Wan2.2 values are the release's own (github.com/Wan-Video/Wan2.2 ``wan/configs/wan_t2v_A14B.py``
and ``wan_ti2v_5B.py``); Wan-2.1's are this package's defaults since the start (CaC §4.2: 480p,
81 frames, 50 steps; diffusers' guidance 5.0; the checkpoint scheduler's shift):

| family | size (H x W) | frames | fps | steps | guidance | shift | latent grid (t, h, w) |
| --- | --- | --- | --- | --- | --- | --- | --- |
| Wan-2.1 T2V-1.3B | 480 x 832 | 81 | 16 | 50 | 5.0 | the checkpoint's (3.0) | 4 x 8 x 8 |
| Wan2.2-TI2V-5B | 704 x 1280 | 121 | 24 | 50 | 5.0 | 5.0 | 4 x 16 x 16 |
| Wan2.2-T2V-A14B | 720 x 1280 | 81 | 16 | 40 | 4.0 high-noise, 3.0 low-noise | 12.0 | 4 x 8 x 8 |

The A14B's shift is set here because its diffusers checkpoint's scheduler was converted with
3.0 (diffusers' ``scripts/convert_wan_to_diffusers.py``), not the release's 12.0; the 5B's is
5.0 either way. All three share Wan-2.1's negative prompt (byte for byte in the release configs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "WanFamily", "family_of"]


@dataclass(frozen=True)
class WanFamily:
    """A Wan model family: its experts, its latent grid, its own sampling settings.

    Attributes:
        name: "wan2.1", "wan2.2-ti2v" or "wan2.2-a14b".
        experts: 1, or 2 (a high-noise and a low-noise transformer).
        spatial_multiple: frame sides must be multiples of this (VAE compression x patch size).
        defaults: the ``GeneratorConfig`` settings a recipe may leave unset (module docstring).
    """

    name: str
    experts: int
    spatial_multiple: int
    defaults: dict[str, Any] = field(default_factory=dict)


FAMILIES = {
    "wan2.1": WanFamily("wan2.1", 1, 16, {
        "height": 480, "width": 832, "num_frames": 81, "fps": 16.0, "num_inference_steps": 50, "guidance_scale": 5.0,
        "guidance_scale_2": None, "flow_shift": None,
    }),
    "wan2.2-ti2v": WanFamily("wan2.2-ti2v", 1, 32, {
        # wan_ti2v_5B.py: sample_fps 24, frame_num 121, sample_steps 50, sample_guide_scale 5.0,
        # sample_shift 5.0; its only sizes are 1280 x 704 and 704 x 1280
        "height": 704, "width": 1280, "num_frames": 121, "fps": 24.0, "num_inference_steps": 50, "guidance_scale": 5.0,
        "guidance_scale_2": None, "flow_shift": 5.0,
    }),
    "wan2.2-a14b": WanFamily("wan2.2-a14b", 2, 16, {
        # wan_t2v_A14B.py: sample_fps 16, frame_num 81, sample_steps 40, sample_guide_scale
        # (3.0, 4.0) for the (low-, high-)noise experts, sample_shift 12.0, boundary 0.875
        "height": 720, "width": 1280, "num_frames": 81, "fps": 16.0, "num_inference_steps": 40, "guidance_scale": 4.0,
        "guidance_scale_2": 3.0, "flow_shift": 12.0,
    }),
}

# names -> family, besides local folders (read from their model_index.json)
_KNOWN = {
    "tiny-random:wan": "wan2.1",
    "tiny-random:wan22-ti2v": "wan2.2-ti2v",
    "tiny-random:wan22-a14b": "wan2.2-a14b",
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": "wan2.2-ti2v",
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": "wan2.2-a14b",
}


def family_of(name: str) -> WanFamily:
    """The family of ``generator.name`` (module docstring); Wan-2.1 for any other Wan name."""
    if name in _KNOWN:
        return FAMILIES[_KNOWN[name]]
    index = Path(str(name)).expanduser() / "model_index.json"
    if index.is_file():
        try:
            data = json.loads(index.read_text())
        except (OSError, ValueError):
            data = {}
        transformer_2 = data.get("transformer_2")
        if isinstance(transformer_2, list) and transformer_2 and transformer_2[0] is not None:
            return FAMILIES["wan2.2-a14b"]
        if data.get("expand_timesteps"):
            return FAMILIES["wan2.2-ti2v"]
    return FAMILIES["wan2.1"]
