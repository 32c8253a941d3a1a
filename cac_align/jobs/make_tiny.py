"""`cac-align make-tiny`: build the tiny random models and save them as model directories; with
``convert_videos: true``, also render the videos that the tiny public-set rows name.

The saved directories load through the same code a real recipe uses for hub ids
(``load_vlm``, a generator family's ``from_pretrained``), so offline demos and tests can point a
recipe's ``model:`` or ``generator.name`` key at them. Random weights: outputs are meaningless, code paths are real.

``recipes/tiny/convert_tiny_videos.yaml`` (``models: []``, ``convert_videos: true``) writes
``outputs/public_tiny/videos``, the input of ``recipes/data/convert_tiny.yaml``: the first step of
docs/train_your_own_cac.md's offline road, from any folder (:mod:`cac_align.data.convert.tiny`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import MISSING

from cac_align.cac.train.setup import SMALL_VLM
from cac_align.vlm.tiny import TINY_VLM_BUILDERS

__all__ = ["MakeTinyConfig", "TINY_BUILDERS", "run"]


def _generator(name: str) -> Callable[[int], Any]:
    """The builder of the tiny generator ``tiny-random:<name>``, through its family."""

    def build(seed: int) -> Any:
        from cac_align.gen.family import family_of

        return family_of(f"tiny-random:{name}").build_tiny(f"tiny-random:{name}", seed)

    return build


# The tiny generators of every family (``tiny-random:<name>``), saved as diffusers writes them: a
# saved folder is found as its family from its model_index.json, as a real checkpoint is.
TINY_GENERATORS = ("wan", "wan22-ti2v", "wan22-a14b", "ltx2", "ltx2.3")

# name -> builder(seed) returning an object with save_pretrained(path)
TINY_BUILDERS: dict[str, Callable[[int], Any]] = {
    **TINY_VLM_BUILDERS,  # qwen3_vl (CaC), qwen2_5_vl (UnifiedReward)
    **SMALL_VLM,  # qwen3_vl_small (cac-demo's start)
    **{name: _generator(name) for name in TINY_GENERATORS},  # Wan-2.1, Wan2.2 (TI2V-5B, A14B), LTX-2, LTX-2.3
}


@dataclass
class MakeTinyConfig:
    """Config of `cac-align make-tiny`.

    Attributes:
        out_dir: folder that receives one sub-folder per model (``out_dir/qwen3_vl`` ...).
        models: which tiny models to build (keys of ``TINY_BUILDERS``; may be empty with
            ``convert_videos``).
        convert_videos: also render the flat videos that the rows of
            ``recipes/data/convert_tiny.yaml`` name, into ``out_dir/videos``.
        seed: seed of the random weights.
        overwrite: rebuild models whose folder already exists (otherwise they are kept, so a
            killed run resumes where it stopped).
    """

    out_dir: str = MISSING
    models: list[str] = field(default_factory=lambda: ["qwen3_vl", "qwen2_5_vl", "wan"])
    convert_videos: bool = False
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in TINY_BUILDERS]
        if unknown:
            raise ValueError(f"models: unknown tiny model(s) {unknown}; choose from {list(TINY_BUILDERS)}")
        if not self.models and not self.convert_videos:
            raise ValueError("models: list at least one tiny model (or set convert_videos: true)")


def run(config: MakeTinyConfig) -> dict[str, Path]:
    """Build and save each requested tiny model (and the convert videos); returns {name: directory}."""
    from tqdm.auto import tqdm

    from cac_align.run.folder import share_modes

    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        from cac_align.config import RecipeError

        raise RecipeError(f"out_dir={str(out)!r} is a file, not a folder; choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in tqdm(config.models, desc="tiny models", unit="model", disable=not config.models):
        target = out / name
        # A complete save ends with its index/config file; a half-written folder is rebuilt.
        done_marker = target / (".complete")
        if done_marker.exists() and not config.overwrite:
            tqdm.write(f"{name}: kept existing {target}")
        else:
            TINY_BUILDERS[name](config.seed).save_pretrained(str(target))
            share_modes(target)  # safetensors writes 0600 files
            done_marker.write_text("built by cac-align make-tiny\n")
            tqdm.write(f"{name}: wrote {target}")
        written[name] = target
    if config.convert_videos:
        from cac_align.data.convert.tiny import CONVERT_TINY_VIDEOS, make_convert_tiny_videos

        written["convert_videos"] = make_convert_tiny_videos(out / "videos")
        share_modes(out / "videos")
        print(f"convert_videos: wrote {len(CONVERT_TINY_VIDEOS)} videos in {out / 'videos'} (the ones recipes/data/convert_tiny.yaml's rows name)")
    return written
