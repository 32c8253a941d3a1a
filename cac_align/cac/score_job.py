"""`cac-align score`: score videos with CaC; write results.jsonl and an HTML evidence report.

    cac-align score --config recipes/score/cac_tiny.yaml          # offline, tiny random model
    cac-align score --config recipes/score/cac.yaml videos=DIR out_dir=runs/score

Steps: 1. collect videos (a file, a folder, or a JSONL manifest with "video" and "prompt");
2. build the backend; 3. score in batches (tqdm): each video is decoded once, scored, and its
evidence PNG drawn while the frames are in memory; each batch is appended to results.jsonl so a
killed run keeps what it scored; 4. write report.html.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from cac_align.cac.infer import CaCOptions, CaCResult, CaCScorer
from cac_align.config import RecipeError

__all__ = ["ModelConfig", "ScoreConfig", "collect_inputs", "build_backend", "run"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm"}
TINY_PREFIX = "tiny-random:"


@dataclass
class ModelConfig:
    """Which VLM answers, and how it is loaded.

    Attributes:
        name: hub id ("Qwen/Qwen3-VL-8B-Instruct"), a local checkpoint folder, or
            "tiny-random:qwen3_vl" for the tiny random model built in-process (meaningless scores).
            With ``backend: openai`` it is the served model name.
        backend: "hf" (in-process transformers) or "openai" (an OpenAI-compatible server: vLLM).
        base_url: the server's root including /v1 (``backend: openai``); localhost by default.
        api_key_env: name of an environment variable holding the server's API key (keys are
            never written in recipes).
        dtype, device, attn_implementation, trust_remote_code: passed to ``load_vlm``.
        max_batch_size: requests per forward pass (hf) or concurrent HTTP requests (openai).
    """

    name: str = MISSING
    backend: str = "hf"
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = None
    dtype: str = "bfloat16"
    device: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    max_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.backend not in ("hf", "openai"):
            raise ValueError(f"model.backend must be 'hf' or 'openai', got {self.backend!r}")


@dataclass
class ScoreConfig:
    """Config of `cac-align score`.

    Attributes:
        out_dir: receives results.jsonl, report.html and evidence/.
        videos: a video file, a folder of videos, or a JSONL manifest of {"video", "prompt"}.
        prompts: optional text file with one generating prompt per line, in video order.
        synth_videos: if > 0 (and ``videos`` unset), first render this many small synthetic
            anomaly videos into out_dir/synth and score those: the offline demo.
        source_fps: frame rate of array inputs; files carry their own.
        batch_size: videos per CaC batch.
        model: the VLM.
        cac: the CaC protocol options (modes, fps, frame caps, token budget).
    """

    out_dir: str = MISSING
    videos: str | None = None
    prompts: str | None = None
    synth_videos: int = 0
    source_fps: float | None = None
    batch_size: int = 8
    model: ModelConfig = field(default_factory=ModelConfig)
    cac: CaCOptions = field(default_factory=CaCOptions)

    def __post_init__(self) -> None:
        if (self.videos is None) == (self.synth_videos <= 0):
            raise ValueError("set exactly one of 'videos' (files to score) or 'synth_videos' (> 0, an offline demo)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def collect_inputs(videos: str, prompts: str | None) -> tuple[list[str], list[str | None]]:
    """Video paths and their prompts from a file, a folder or a JSONL manifest."""
    path = Path(videos)
    if not path.exists():
        raise RecipeError(f"videos={videos!r}: no such file or folder")
    manifest_prompts: list[str | None] = []
    if path.is_dir():
        paths = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not paths:
            raise RecipeError(f"videos={videos!r}: the folder holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    elif path.suffix == ".jsonl":
        paths = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                video = Path(row["video"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise RecipeError(f"{path}: line {number}: expected an object with a 'video' path ({exc})") from None
            paths.append(str(video if video.is_absolute() else path.parent / video))
            manifest_prompts.append(row.get("prompt"))
    else:
        paths = [str(path)]
    if prompts is not None:
        lines = Path(prompts).read_text(encoding="utf-8").splitlines()
        if len(lines) != len(paths):
            raise RecipeError(f"prompts={prompts!r} has {len(lines)} lines but videos={videos!r} gives {len(paths)} videos")
        return paths, list(lines)
    return paths, manifest_prompts or [None] * len(paths)


def build_backend(model: ModelConfig) -> Any:
    """The backend ``model`` names (tiny random models are built in-process, not downloaded)."""
    import os

    from cac_align.vlm.hf import HFBackend

    if model.backend == "openai":
        from cac_align.vlm.openai import OpenAIBackend

        api_key = None
        if model.api_key_env:
            api_key = os.environ.get(model.api_key_env)
            if api_key is None:
                raise RecipeError(f"model.api_key_env={model.api_key_env!r}: that environment variable is not set")
        return OpenAIBackend(model.name, base_url=model.base_url, api_key=api_key, max_workers=model.max_batch_size)

    if model.name.startswith(TINY_PREFIX):
        from cac_align.tiny_job import TINY_BUILDERS

        kind = model.name[len(TINY_PREFIX) :]
        if kind not in ("qwen3_vl", "qwen2_5_vl"):
            raise RecipeError(f"model.name={model.name!r}: tiny VLMs are 'tiny-random:qwen3_vl' or 'tiny-random:qwen2_5_vl'")
        tiny = TINY_BUILDERS[kind](0)
        return HFBackend(tiny.model, tiny.processor, max_batch_size=model.max_batch_size)
    return HFBackend.from_pretrained(
        model.name,
        max_batch_size=model.max_batch_size,
        dtype=model.dtype,
        device=model.device,
        attn_implementation=model.attn_implementation,
        trust_remote_code=model.trust_remote_code,
        key="model.name",
    )


def run(config: ScoreConfig, backend: Any = None) -> list[CaCResult]:
    """Score, write results.jsonl and the report; ``backend`` overrides ``config.model``."""
    from tqdm.auto import tqdm

    from cac_align.cac.evidence import evidence_path, write_evidence_png, write_report
    from cac_align.video import VideoError, load_video

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # 1. inputs
    if config.synth_videos > 0:
        from cac_align.data.synthetic import SynthConfig, generate

        records = generate(SynthConfig(out_dir=str(out / "synth"), n=config.synth_videos, height=64, width=96, fps=8.0, duration_s=2.0))
        paths = [str(out / "synth" / r.video) for r in records]
        prompts: list[str | None] = [r.prompt for r in records]
    else:
        assert config.videos is not None
        paths, prompts = collect_inputs(config.videos, config.prompts)
    # 2. backend
    scorer = CaCScorer(backend if backend is not None else build_backend(config.model), config.cac)
    # 3. score in batches: decode once, score, draw evidence, append results
    results: list[CaCResult] = []
    partial = out / "results.jsonl.partial"
    (out / "evidence").mkdir(parents=True, exist_ok=True)
    for stale in (out / "evidence").glob("*.png"):  # never link a previous run's picture
        stale.unlink()
    with partial.open("w", encoding="utf-8") as handle, tqdm(total=len(paths), desc="CaC scoring", unit="video") as bar:
        for start in range(0, len(paths), config.batch_size):
            batch = paths[start : start + config.batch_size]
            loaded: list[Any] = []
            for path in batch:
                try:
                    loaded.append(load_video(path, source_fps=config.source_fps))
                except VideoError:
                    loaded.append(path)  # the scorer turns it into an invalid result with the reason
            scored = scorer.score(loaded, prompts[start : start + config.batch_size], source_fps=config.source_fps)
            for offset, (path, video, result) in enumerate(zip(batch, loaded, scored)):
                handle.write(json.dumps({"video": path, **result.to_dict()}, default=_jsonable) + "\n")
                if result.valid and not isinstance(video, str):
                    write_evidence_png(result, video, evidence_path(out, start + offset))
            handle.flush()
            results.extend(scored)
            bar.update(len(batch))
    partial.replace(out / "results.jsonl")
    # 4. report
    report = write_report(results, paths, out)
    valid = sum(r.valid for r in results)
    print(f"scored {len(results)} videos ({valid} valid): {out / 'results.jsonl'}, {report}")
    return results


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
