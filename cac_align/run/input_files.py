"""What jobs read: videos (a file, a folder, a JSONL manifest) with their prompts, and prompt files.

Shared by the jobs (``score``, ``bon``, ``flow-grpo``, ``eval vbench``, ``eval expert``) so that
no job imports another. Bad input raises :class:`~cac_align.config.RecipeError` naming the file
and the line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cac_align.config import RecipeError, relative_path_hint

__all__ = ["VIDEO_SUFFIXES", "collect_inputs", "not_videos", "read_prompts", "slug"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm"}


def collect_inputs(videos: str, prompts: str | None) -> tuple[list[str], list[str | None]]:
    """Video paths and their prompts from a file, a folder or a JSONL manifest."""
    path = Path(videos)
    if not path.exists():
        raise RecipeError(f"videos={videos!r}: no such file or folder{relative_path_hint(videos)}")
    manifest_prompts: list[str | None] = []
    if path.is_dir():
        # hidden files are not videos of the set: a killed writer's temporary file (".x.ab12.mp4")
        paths = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))
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
            prompt = row.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise RecipeError(f"{path}: line {number}: 'prompt' must be a string (or absent), got {type(prompt).__name__} {prompt!r}")
            paths.append(str(video if video.is_absolute() else path.parent / video))
            manifest_prompts.append(prompt)
        if not paths:
            raise RecipeError(f"videos={videos!r}: the manifest holds no videos")
    else:
        paths = [str(path)]
    if prompts is not None:
        if not Path(prompts).is_file():
            raise RecipeError(f"prompts={prompts!r}: no such file{relative_path_hint(prompts)}")
        lines = Path(prompts).read_text(encoding="utf-8").splitlines()
        if len(lines) != len(paths):
            raise RecipeError(f"prompts={prompts!r} has {len(lines)} lines but videos={videos!r} gives {len(paths)} videos")
        return paths, list(lines)
    return paths, manifest_prompts or [None] * len(paths)


def not_videos(videos: str) -> list[str]:
    """The files of a ``videos`` folder that :func:`collect_inputs` leaves out because their names
    do not end like a video (``notes.txt``), sorted; hidden files and sub-folders are not counted.
    [] for a file or a manifest."""
    path = Path(videos)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in VIDEO_SUFFIXES)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file (one per line) or JSONL ({"prompt": ...} per line).

    Blank lines are skipped; duplicate prompts are kept (they are told apart by index).
    """
    source = Path(path)
    if not source.is_file():
        raise RecipeError(f"prompts={str(path)!r}: no such file{relative_path_hint(path)}")
    prompts: list[str] = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if source.suffix == ".jsonl":
            try:
                prompt = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise RecipeError(f"{source}: line {number}: expected an object with a 'prompt' ({exc})") from None
            if not isinstance(prompt, str) or not prompt.strip():
                raise RecipeError(f"{source}: line {number}: 'prompt' must be a non-empty string")
            prompts.append(prompt.strip())
        else:
            prompts.append(line.strip())
    if not prompts:
        raise RecipeError(f"prompts={str(path)!r}: the file holds no prompts")
    return prompts


def slug(text: str, max_len: int = 60) -> str:
    """A file-name-safe form of a prompt: lower case, words joined by '-'."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:max_len].rstrip("-") or "prompt"
