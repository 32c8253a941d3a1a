"""Preference pairs for the generator from finished runs: repairs (localized) and Best-of-N (global),
as the ``dpo`` job reads them (its second module, as ``train_cac_grpo`` is ``train-cac``'s). It stands
with the job because it reads what jobs wrote (their run folders) and the reward registry (whether two
runs were judged alike): both above the generator library of ``gen/``, which it used to sit in.

- **Repair** (a ``cac-align repair`` run folder): each *accepted* row is a pair: the winner is the
  kept repair (``output``), the loser the input video (``video``), the prompt the row's; the mask
  is what the repair regenerated: the judged window and boxes (the row's ``mask``) widened by the
  run's ``context_s`` and ``dilate`` (read from its manifest), as :mod:`cac_align.regions` turns
  them into a region, pooled onto Wan's latent grid by :func:`cac_align.rl.credit.latent_coverage`.
  A repair keeps the input's frame count, size and frame rate, so winner and loser must agree on
  them: anything else is an error naming the row (a changed file), not a skip.
- **Best-of-N** (a ``cac-align bon`` run folder): per prompt the best and the worst valid
  candidate (``candidates.jsonl``), no mask (plain Diffusion-DPO).

Every run must have been judged by the same judge (its manifest's reward section; where it was
served does not count): pairs of two judges are refused with one line naming both. Rows that give
no pair are skipped and counted by reason (a repair that was not accepted, a
prompt with fewer than two valid candidates or all scored alike, a video the trained model's VAE
cannot encode as it is: not ``k * frame_multiple + 1`` frames (Wan: 4k + 1, LTX-2: 8k + 1), or sides
that are not multiples of its ``spatial_multiple``: 16 for Wan-2.1 and the Wan2.2 A14B, 32 for the
TI2V-5B and LTX-2).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cac_align.config import RecipeError
from cac_align.regions import Evidence, EvidenceError, Region, read_evidence, region_from_evidence

__all__ = ["Pair", "PairError", "PairSet", "latent_mask", "pair_region", "read_pairs"]

log = logging.getLogger(__name__)


class PairError(RecipeError):
    """A pair that cannot be what it claims (winner and loser of different shapes, a file gone):
    the message names the source row. A refusal of the input, so the CLI says it in one line."""


@dataclass(frozen=True)
class Pair:
    """One preference pair.

    Attributes:
        prompt: the prompt both videos were generated from.
        winner, loser: video files.
        source: "repair" or "bon".
        where: the source row, for messages (``runs/repair/results.jsonl:3``).
        evidence: the judged window and boxes a repair regenerated (None for Best-of-N).
        dilate, context_s: how that repair widened them (its manifest's settings).
        scores: ``(winner, loser)`` the judge's scores.
        frames, height, width, fps: the videos' geometry (both the same).
        image: the image both videos animate (a Best-of-N run of an image-to-video model:
            :class:`~cac_align.run.input_files.PromptImage`, the run folder's copy), or None.
    """

    prompt: str
    winner: str
    loser: str
    source: str
    where: str
    evidence: Evidence | None
    dilate: float
    context_s: float
    scores: tuple[float, float]
    frames: int
    height: int
    width: int
    fps: float
    image: Any = None


@dataclass
class PairSet:
    """The pairs of some runs and what was skipped.

    Attributes:
        pairs: in source order, then row order.
        skipped: reason -> how many rows gave no pair for it.
        sha256: a digest of every pair (files and their sizes, prompts, scores, masks): what a
            training run's fingerprint records.
    """

    pairs: list[Pair]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        # files by name, size and the judge's scores: a run folder rewritten with other videos under
        # the same names is other pairs (a training run's latent cache would not match them)
        # an image-to-video pair's image by content (added only then: text-to-video pair sets keep their digest)
        listed = [(p.prompt, p.winner, p.loser, Path(p.winner).stat().st_size, Path(p.loser).stat().st_size, p.scores, p.source,
                   None if p.evidence is None else repr(p.evidence), p.dilate, p.context_s, *([p.image.sha256] if p.image else []))
                  for p in self.pairs]
        return hashlib.sha256(json.dumps(listed).encode("utf-8")).hexdigest()

    def summary(self) -> str:
        by_source = Counter(p.source for p in self.pairs)
        kinds = ", ".join(f"{n} from {s}" for s, n in sorted(by_source.items())) or "none"
        skipped = "; ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])) or "none"
        return f"{len(self.pairs)} pairs ({kinds}); skipped: {skipped}"


def _resolve(path: str, folder: Path, recorded_out_dir: str | None) -> Path:
    """A video path as a run recorded it: absolute; relative to where the run was started (the
    current folder, usually); or, for a file inside the run folder (its outputs, a demo's rendered
    inputs) recorded under the run's own ``out_dir`` or relative to it, that file in ``folder``
    wherever the folder is now."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    if recorded_out_dir:
        recorded = Path(recorded_out_dir).parts
        if p.parts[: len(recorded)] == recorded and (folder / Path(*p.parts[len(recorded) :])).exists():
            return folder / Path(*p.parts[len(recorded) :])
    if (folder / p).exists():
        return folder / p
    return p


def _geometry(path: Path, where: str) -> tuple[int, int, int, float]:
    from cac_align.video import VideoError, load_video

    if not path.is_file():
        raise PairError(f"{where}: video {str(path)!r} not found (a relative path is read from the current folder, as the run recorded it, "
                        "or inside the run folder: run from where that run was started, or give absolute paths)")
    try:
        video = load_video(str(path), lazy=True)
    except VideoError as exc:
        raise PairError(f"{where}: {exc}") from exc
    return video.num_frames, video.height, video.width, float(video.fps)


def _unfit(frames: int, height: int, width: int, multiples: tuple[int, ...]) -> str | None:
    """Why the model's VAE cannot encode a video of this shape as it is, or None."""
    multiple, frame_multiple, remainder = (*multiples, 1)[:3]  # remainder: 1, or MiniMax-H3's 5 (17k + 5)
    if frames < remainder or (frames - remainder) % frame_multiple:
        return f"not {frame_multiple}k + {remainder} frames (the model's VAE): {frames}"
    if height % multiple or width % multiple:
        return f"sides not multiples of {multiple} (the model's VAE x its patches): {height}x{width}"
    return None


def _repair_pairs(folder: Path, config: dict, skipped: Counter, multiple: tuple[int, int]) -> list[Pair]:
    from cac_align.run.folder import read_jsonl_log

    results = folder / "results.jsonl"
    rows = read_jsonl_log(results)
    if not rows:
        raise PairError(f"{folder}: a repair run folder without results (results.jsonl): is the run finished?")
    dilate, context_s = float(config.get("dilate", 50.0)), float(config.get("context_s", 0.25))
    pairs = []
    for number, (_, row) in enumerate(rows, start=1):
        where = f"{results}:{number}"
        if not row.get("accepted"):
            why = "invalid input" if not row.get("valid") else ("no attempt beat the original" if row.get("attempts") else "passed through (not repaired)")
            skipped[f"repair: {why}"] += 1
            continue
        mask = row.get("mask") or {}
        try:
            evidence = read_evidence({"status": "abnormal", "window_s": mask.get("window_s"), "boxes": mask.get("boxes") or []})
        except EvidenceError as exc:
            raise PairError(f"{where}: its mask cannot be read: {exc}") from exc
        if evidence is None:
            raise PairError(f"{where}: an accepted repair without a window or boxes in its mask")
        recorded = config.get("out_dir")
        winner, loser = _resolve(row["output"], folder, recorded), _resolve(row["video"], folder, recorded)
        w, l = _geometry(winner, where), _geometry(loser, where)
        if w[:3] != l[:3] or abs(w[3] - l[3]) > 1e-6:
            raise PairError(f"{where}: winner {winner} is {w[0]} frames of {w[1]}x{w[2]} at {w[3]:g} fps, loser {loser} {l[0]} frames of "
                            f"{l[1]}x{l[2]} at {l[3]:g} fps; a repair keeps them equal: was a file replaced?")
        unfit = _unfit(*w[:3], multiple)
        if unfit:
            skipped[f"repair: {unfit.split(':')[0]}"] += 1
            continue
        region = region_from_evidence(evidence, w[0], w[3], w[1], w[2], dilate=dilate, context_s=context_s)
        if mask.get("frames") is not None and [int(f) for f in np.flatnonzero(region.frames)] != [int(f) for f in mask["frames"]]:
            raise PairError(f"{where}: the mask rebuilt from its evidence (dilate {dilate:g}, context_s {context_s:g} from the run's manifest) "
                            f"covers other frames than the repair regenerated ({mask['frames']})")
        after, before = (row.get("after") or {}).get("score"), (row.get("before") or {}).get("score")
        pairs.append(Pair(str(row.get("prompt") or ""), str(winner), str(loser), "repair", where, evidence, dilate, context_s,
                          (float(after), float(before)), *w))
    return pairs


def _bon_pairs(folder: Path, skipped: Counter, multiple: tuple[int, int]) -> list[Pair]:
    from cac_align.run.folder import read_jsonl_log

    path = folder / "candidates.jsonl"
    rows = read_jsonl_log(path)
    if not rows:
        raise PairError(f"{folder}: a bon run folder without candidates.jsonl: is the run finished?")
    groups: dict[int, list[tuple[int, dict]]] = {}
    for number, (_, row) in enumerate(rows, start=1):
        groups.setdefault(int(row["prompt_index"]), []).append((number, row))
    pairs = []
    for _, members in sorted(groups.items()):
        valid = [(n, r) for n, r in members if r.get("valid") and r.get("score") is not None]
        if len(valid) < 2:
            skipped["bon: fewer than two valid candidates"] += 1
            continue
        best = max(valid, key=lambda nr: (nr[1]["score"], -nr[1]["candidate"]))
        worst = min(valid, key=lambda nr: (nr[1]["score"], nr[1]["candidate"]))
        if best[1]["score"] <= worst[1]["score"]:
            skipped["bon: every valid candidate scored the same"] += 1
            continue
        where = f"{path}:{best[0]}"
        winner, loser = _resolve(best[1]["video"], folder, None), _resolve(worst[1]["video"], folder, None)
        w, l = _geometry(winner, where), _geometry(loser, f"{path}:{worst[0]}")
        if w[:3] != l[:3] or abs(w[3] - l[3]) > 1e-6:
            raise PairError(f"{where}: candidates {winner} and {loser} of one prompt differ in frames, size or fps ({w} vs {l})")
        unfit = _unfit(*w[:3], multiple)
        if unfit:
            skipped[f"bon: {unfit.split(':')[0]}"] += 1
            continue
        image = _pair_image(folder, best[1], worst[1], where)
        pairs.append(Pair(str(best[1]["prompt"]), str(winner), str(loser), "bon", where, None, 0.0, 0.0,
                          (float(best[1]["score"]), float(worst[1]["score"])), *w, image=image))
    return pairs


def _pair_image(folder: Path, best: dict, worst: dict, where: str) -> Any:
    """The image a Best-of-N pair's two candidates animate (their rows' ``image`` and
    ``last_image``: the run folder's copies), the same for both, or None for text-to-video."""
    from cac_align.run.input_files import PromptImage

    keys = ("image", "last_image")
    if any(best.get(k) != worst.get(k) for k in keys):
        raise PairError(f"{where}: the two candidates of one prompt animate different images ({best.get('image')} vs {worst.get('image')})")
    if not best.get("image"):
        return None
    files = {k: _resolve(best[k], folder, None) for k in keys if best.get(k)}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise PairError(f"{where}: the image its candidates animate is gone ({missing[0]})")
    return PromptImage.of(files["image"], files.get("last_image"))


def read_pairs(sources: Sequence[str], spatial_multiple: int = 16, frame_multiple: int = 4, frame_remainder: int = 1) -> PairSet:
    """The pairs of finished ``repair`` and ``bon`` run folders (module docstring).

    ``spatial_multiple``, ``frame_multiple``: what the trained model's frame sides must be
    multiples of and its frame count ``k * frame_multiple + 1`` (the family's,
    :class:`cac_align.gen.family.GeneratorFamily`); pairs of other shapes are skipped and counted.

    Raises:
        PairError: a folder that is neither, an unfinished one, or a row that is not a pair it
            claims to be (naming the row).
    """
    from cac_align.run.folder import read_manifest

    pairs: list[Pair] = []
    skipped: Counter = Counter()
    judged: list[tuple[str, Any]] = []  # (source, its reward section)
    for source in sources:
        folder = Path(source)
        if folder.is_file():  # a results.jsonl / candidates.jsonl: its folder
            folder = folder.parent
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest is None:
            raise PairError(f"pairs: {source!r} is not a run folder of `cac-align repair` or `cac-align bon` (no cac_align_run.json)")
        job = manifest.get("job")
        if job in ("repair", "bon"):
            _check_one_judge(judged, source, (manifest.get("config") or {}).get("reward"))
        if job == "repair":
            pairs += _repair_pairs(folder, manifest.get("config") or {}, skipped, (spatial_multiple, frame_multiple, frame_remainder))
        elif job == "bon":
            pairs += _bon_pairs(folder, skipped, (spatial_multiple, frame_multiple, frame_remainder))  # its candidates are recorded relative to its folder
        else:
            raise PairError(f"pairs: {source!r} is a {job!r} run; pairs come from `repair` (localized) or `bon` (global) runs")
    return PairSet(pairs, dict(skipped))


def _check_one_judge(judged: list[tuple[str, Any]], source: str, section: Any) -> None:
    """A pair is one judge's preference: runs judged by judges that would score differently (the
    reward, its model or its options; not where it was served) are refused with one line."""
    from cac_align.rewards.registry import describe_reward, reward_differences

    if section is None:
        raise PairError(f"pairs: {source!r} records no reward section in its cac_align_run.json, so its judge is unknown")
    for other, theirs in judged:
        differ = reward_differences(theirs, section)
        if differ:
            raise PairError(f"pairs: {other!r} was judged by {describe_reward(theirs)}, {source!r} by {describe_reward(section)} (differing: "
                            f"{', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}); train on one judge's pairs per run")
    judged.append((source, section))


def pair_region(pair: Pair) -> Region | None:
    """The region a repair pair's winner was regenerated on (None for a pair without a mask)."""
    if pair.evidence is None:
        return None
    return region_from_evidence(pair.evidence, pair.frames, pair.fps, pair.height, pair.width, dilate=pair.dilate, context_s=pair.context_s)


def latent_mask(pair: Pair, temporal: int = 4, spatial: int = 8, chunk_frames: int | None = None) -> Any:
    """``(T_lat, H_lat, W_lat)`` float32 in {0, 1}: the latent positions whose pixels the repair
    regenerated (any of them: ``edges: hard``, no widening to patches), or None for a pair
    without a mask. ``chunk_frames``: the VAE restarts every this many frames (Helios's 33;
    :func:`cac_align.rl.credit.latent_frames`)."""
    from cac_align.rl.credit import latent_coverage

    region = pair_region(pair)
    if region is None:
        return None
    return latent_coverage(region, temporal, spatial, patch=(1, 1, 1), edges="hard", chunk_frames=chunk_frames)
