"""What jobs read: videos (a file, a folder, a JSONL manifest) with their prompts, and prompt files
(text, or JSONL whose lines may give an image to animate: :func:`read_prompt_rows`), or a prompt
set named instead of a file (``prompts: vbench``: :mod:`cac_align.run.prompt_sets`).

Shared by the jobs (``score``, ``repair``, ``bon``, ``flow-grpo``, ``nft``, ``eval vbench``, ``eval
expert``) so that no job imports another. Bad input raises :class:`~cac_align.config.RecipeError`
naming the file and the line.

**One way to read a prompts file, whatever job reads it.** A file is JSON lines when it is named
``.jsonl`` or ``.json``, or when its first line is a JSON object (``{"prompt": ...}`` in a ``.txt``):
by its content, never a JSON line taken as a prompt's text (:func:`is_json_lines`). Otherwise it is
text, one prompt a line. Two kinds of job read one:

- a job that **scores given videos** (``score``, ``repair``) pairs the file's prompts with the videos:
  by name (``name<TAB>prompt`` lines, or JSONL ``{"video", "prompt"}``), or as a plain list in the
  order the user gave the videos (:func:`collect_inputs`);
- a job that **generates from prompts** (``bon``, ``flow-grpo``, ``nft``) takes one prompt a line
  (:func:`read_prompt_rows`). A line with a tab is refused, naming score's by-name format: its
  ``name<TAB>`` would reach the generator as text. Decided so (issue #105) rather than reading a name
  to name the outputs by: a generating job's outputs are named by prompt and index already, and a
  name that changes nothing generated is one more thing to get wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cac_align.config import RecipeError, relative_path_hint
from cac_align.run.prompt_sets import is_prompt_set, vbench_prompts

__all__ = ["ANNOTATIONS_MADE_BY", "JSON_SUFFIXES", "VIDEO_SUFFIXES", "PromptImage", "PromptRow", "check_prompts_read", "collect_inputs", "existing",
           "is_json_lines", "not_videos", "pairing_lines", "prompt_pairs", "read_prompt_rows", "read_prompts", "say_pairing", "slug", "text_lines"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm"}
JSON_SUFFIXES = (".jsonl", ".json")  # a manifest or a prompts file of JSON lines, one object a line
# what a missing annotations file is made by, said after its refusal (train-cac, synth-cot)
ANNOTATIONS_MADE_BY = "`cac-align synth` (rendered videos) or `cac-align convert` (labelled sets, your own labels) writes one"


def existing(path: str | os.PathLike, key: str, kind: str = "file", made_by: str = "") -> Path:
    """A path a job reads, checked before any model loads: one line naming the setting and the path.

    Args:
        path: the setting's value.
        key: the setting (``annotations``, ``pairs``), as the user writes it.
        kind: ``"file"``, ``"folder"`` or ``"file or folder"``: what must be there.
        made_by: what writes it, said after the refusal (``"cac-align synth writes one"``).

    Returns:
        The path.

    Raises:
        RecipeError: nothing there, or a file where a folder goes (or the reverse), naming ``key`` and
            ``path`` and, for a relative path, where it was looked for.
    """
    found = Path(path)
    fits = {"file": found.is_file, "folder": found.is_dir}.get(kind, found.exists)()
    if not fits:
        said = (f"is a {'folder' if found.is_dir() else 'file'}, not a {kind}" if found.exists()
                else f"no such {kind}{relative_path_hint(path)}")
        raise RecipeError(f"{key}={str(path)!r}: {said}" + (f"; {made_by}" if made_by else ""))
    return found


def is_json_lines(path: Path, lines: list[str] | None = None) -> bool:
    """Whether a prompts file (or a manifest) is read as JSON lines: named ``.jsonl`` or ``.json``, or
    its first non-blank line a JSON object (a ``.txt`` that holds ``{"prompt": ...}`` lines)."""
    if path.suffix.lower() in JSON_SUFFIXES:
        return True
    lines = text_lines(path) if lines is None else lines
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first.startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _json_hint(path: Path) -> str:
    """What a ``.json`` file must hold, said beside a line that does not parse (a JSON array, a pretty-printed object)."""
    return " (a .json prompts file or manifest is read as JSON lines: one object a line, no enclosing list)" if path.suffix.lower() == ".json" else ""


def text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a prompts file, a manifest).

    Raises:
        RecipeError: a byte that is not UTF-8, naming the file, the line and the byte (a file
            saved as Latin-1 or cp1252: "café" written with byte 0xe9).
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError(f"{path}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x} at byte {column} of the line); "
                          "save the file as UTF-8") from None


def collect_inputs(videos: str, prompts: str | None) -> tuple[list[str], list[str | None]]:
    """Video paths and their prompts from a file, a folder or a JSONL manifest, and a prompts file.

    A prompts file meets its videos **by name** where the videos have no order of their own (a
    folder): each line names its video, ``name<TAB>prompt`` (the file's name, ``drums.mp4``, or its
    stem, ``drums``) or a JSONL line ``{"video": "drums.mp4", "prompt": "..."}``; every video needs
    one, and a name that is no video of the set is refused. A plain list of prompts (one a line) is
    paired in order only with videos whose order the user wrote: one video file, or a manifest; with
    a folder of several it is refused in one line (sorted file names are not an order anyone chose:
    ``drums.mp4`` would take the first line). Blank lines are skipped (:func:`prompt_pairs`), and a
    manifest's empty ``"prompt"`` is no prompt (as an annotation file writes an unknown one; a job
    whose reward reads the prompt refuses it: :func:`check_prompts_read`). A manifest is named
    ``.jsonl`` or ``.json`` (JSON lines either way). A manifest that gives prompts of its own takes no
    ``prompts`` file beside it: one would replace them, unseen.

    Raises:
        RecipeError: no such file or folder; no video; a manifest line without a ``video``; a prompts
            file that does not give each video its prompt (counts that differ, a name of no video, a
            video named twice or not at all, a plain list for a folder); a prompts file beside a
            manifest with prompts.
    """
    path = Path(videos)
    if not path.exists():
        raise RecipeError(f"videos={videos!r}: no such file or folder{relative_path_hint(videos)}")
    manifest_prompts: list[str | None] = []
    if path.is_dir():
        # hidden files are not videos of the set: a killed writer's temporary file (".x.ab12.mp4")
        paths = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))
        if not paths:
            raise RecipeError(f"videos={videos!r}: the folder holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    elif path.suffix.lower() in JSON_SUFFIXES:
        paths = []
        for number, line in enumerate(text_lines(path), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                video = Path(row["video"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise RecipeError(f"{path}: line {number}: expected an object with a 'video' path ({exc}){_json_hint(path)}") from None
            prompt = row.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise RecipeError(f"{path}: line {number}: 'prompt' must be a string (or absent), got {type(prompt).__name__} {prompt!r}")
            paths.append(str(video if video.is_absolute() else path.parent / video))
            manifest_prompts.append(prompt if prompt is None or prompt.strip() else None)  # "" in a manifest: no prompt given
        if not paths:
            raise RecipeError(f"videos={videos!r}: the manifest holds no videos")
    else:
        paths = [str(path)]
    if prompts is not None:
        given = [k for k, prompt in enumerate(manifest_prompts) if prompt is not None]
        if given:  # two sources for one video's prompt: neither wins in silence
            raise RecipeError(f"videos={videos!r} gives its videos' prompts ({len(given)} of {len(paths)}, the first {manifest_prompts[given[0]]!r} "
                              f"for {Path(paths[given[0]]).name}), and prompts={prompts!r} would replace them: give the prompts in one place "
                              "(drop prompts=, or the manifest's 'prompt' keys)")
        return paths, prompt_pairs(paths, prompts, ordered=not path.is_dir(), videos=videos)
    return paths, manifest_prompts or [None] * len(paths)


def prompt_pairs(paths: list[str], prompts: str, ordered: bool, videos: str = "") -> list[str]:
    """The prompt of each of ``paths`` from the file ``prompts`` (:func:`collect_inputs`): by name
    (``name<TAB>prompt`` lines, or JSONL ``{"video", "prompt"}``), or, where ``ordered`` (the user
    gave the videos' order), a plain list in that order. Blank lines are skipped."""
    file = Path(prompts)
    if not file.is_file():
        raise RecipeError(f"prompts={prompts!r}: no such file{relative_path_hint(prompts)}")
    lines = [(number, line) for number, line in enumerate(text_lines(file), start=1) if line.strip()]
    named = _named_prompts(file, lines)
    if named is not None:
        return _by_name(paths, named, prompts)
    if not ordered and len(paths) > 1:
        raise RecipeError(f"prompts={prompts!r} is a plain list, and videos={videos!r} is a folder: its files have no order to pair the "
                          f"lines with (by sorted name, {Path(paths[0]).name} would take line 1). Name each line's video: "
                          f"'{Path(paths[0]).stem}<TAB>its prompt' (or JSONL {{\"video\": \"{Path(paths[0]).name}\", \"prompt\": ...}}), or list the "
                          "videos in order in a manifest (videos=manifest.jsonl)")
    if len(lines) != len(paths):
        raise RecipeError(f"prompts={prompts!r} has {len(lines)} prompts but videos={videos!r} gives {len(paths)} videos")
    return [line.strip() for _, line in lines]


def _named_prompts(file: Path, lines: list[tuple[int, str]]) -> list[tuple[int, str, str]] | None:
    """``(line, video name, prompt)`` of a prompts file that names its videos (JSONL, or every line
    ``name<TAB>prompt``); None for a plain list (no line has a tab)."""
    if is_json_lines(file, [line for _, line in lines]):
        named = []
        for number, line in lines:
            try:
                row = json.loads(line)
                name, prompt = row["video"], row["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise RecipeError(f"{file}: line {number}: expected an object with a 'video' (its file name) and a 'prompt' ({exc})"
                                  f"{_json_hint(file)}") from None
            if not isinstance(name, str) or not isinstance(prompt, str):
                raise RecipeError(f"{file}: line {number}: 'video' and 'prompt' must be strings")
            named.append((number, name, prompt))
        return named
    tabbed = ["\t" in line for _, line in lines]
    if not any(tabbed):
        return None
    if not all(tabbed):
        number = lines[tabbed.index(False)][0]
        raise RecipeError(f"{file}: line {number} has no tab: give every line as 'video name<TAB>prompt' (or none, a plain list)")
    return [(number, *(part.strip() for part in line.split("\t", 1))) for number, line in lines]  # type: ignore[misc]


def _by_name(paths: list[str], named: list[tuple[int, str, str]], prompts: str) -> list[str]:
    import difflib

    index: dict[str, int] = {Path(path).name: k for k, path in enumerate(paths)}
    stems: dict[str, list[int]] = {}
    for k, path in enumerate(paths):
        stems.setdefault(Path(path).stem, []).append(k)
    index.update({stem: ks[0] for stem, ks in stems.items() if len(ks) == 1 and stem not in index})  # a stem two files share names neither
    found: dict[int, tuple[int, str]] = {}
    for number, name, prompt in named:
        key = Path(name).name
        if key in stems and len(stems[key]) > 1:
            raise RecipeError(f"{prompts}: line {number}: {name!r} names {len(stems[key])} videos "
                              f"({', '.join(Path(paths[k]).name for k in stems[key])}): give its file name")
        if key not in index:
            close = difflib.get_close_matches(key, list(index), n=1)
            raise RecipeError(f"{prompts}: line {number}: no video named {name!r} among the {len(paths)} videos"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        k = index[key]
        if k in found:
            raise RecipeError(f"{prompts}: lines {found[k][0]} and {number} both give {Path(paths[k]).name} a prompt")
        found[k] = (number, prompt)
    missing = [Path(p).name for k, p in enumerate(paths) if k not in found]
    if missing:
        raise RecipeError(f"prompts={prompts!r} gives no prompt to {len(missing)} of the {len(paths)} videos: {', '.join(missing[:5])}"
                          + (", ..." if len(missing) > 5 else ""))
    return [found[k][1] for k in range(len(paths))]


def check_prompts_read(paths: list[str], prompts: list[str | None], reward_name: str, reads_prompt: bool, manifest: str | None = None,
                       needs_prompt: bool = True) -> None:
    """Refuse an empty prompt for a reward whose score depends on the prompt (its ``reads_prompt``):
    it would score the video against nothing and call it valid (as ``bon`` refuses an empty one).

    ``manifest``: the JSONL manifest the videos and their prompts came from (no prompts file beside
    it). For a reward that cannot score a video without its prompt (``needs_prompt``: UnifiedReward),
    where any line gives a prompt, a line whose ``"prompt"`` is empty or absent is refused, naming the
    line. A manifest that gives no prompt at all is a set of videos without prompts, as a folder is;
    and for a reward that reads a prompt where there is one (CaC), a line's empty ``"prompt"`` is an
    unknown prompt, as the converted annotation files write it (docs/train_your_own_cac.md scores one)."""
    if not reads_prompt:
        return
    empty = [Path(p).name for p, q in zip(paths, prompts) if q is not None and not q.strip()]
    if empty:
        raise RecipeError(f"{len(empty)} video(s) have an empty prompt ({', '.join(empty[:5])}), and the reward {reward_name!r} reads the "
                          "prompt: give each its prompt, or leave the prompt out entirely")
    if manifest is None or not needs_prompt or all(q is None for q in prompts):
        return
    rows = [(number, line) for number, line in enumerate(text_lines(Path(manifest)), start=1) if line.strip()]
    lacking = [(number, Path(path).name, "an empty" if "prompt" in json.loads(line) else "no")
               for (number, line), path, prompt in zip(rows, paths, prompts) if prompt is None]
    if lacking:
        number, name, what = lacking[0]
        more = f" (and {len(lacking) - 1} more line(s))" if len(lacking) > 1 else ""
        raise RecipeError(f"{manifest}: line {number} ({name}) has {what} 'prompt'{more}, and the reward {reward_name!r} reads the prompt: "
                          "give every line its prompt, or leave 'prompt' out of every line")


def pairing_lines(paths: list[str], prompts: list[str | None], most: int = 10, where: str = "results.jsonl") -> list[str]:
    """How the videos met their prompts, to print before scoring: ``drums.mp4 <- "a drum solo"``,
    the first ``most`` of them (``where``: the output whose rows name them all)."""
    shown = [f"{Path(p).name} <- {q!r}" for p, q in list(zip(paths, prompts))[:most] if q is not None]
    if len(paths) > most and shown:
        shown.append(f"... and {len(paths) - most} more (each row of {where} names its video and prompt)")
    return shown


def say_pairing(paths: list[str], prompts: list[str | None], where: str = "results.jsonl") -> None:
    """Print how the videos met their prompts (:func:`pairing_lines`) before a job judges them, whatever
    gave the prompts (a prompts file, a manifest); nothing when no video has one. ``where``: the output
    whose rows name every video and prompt."""
    shown = pairing_lines(paths, prompts, where=where)
    if shown:
        print("\n".join(["prompts:", *("  " + line for line in shown)]))


def not_videos(videos: str) -> list[str]:
    """The files of a ``videos`` folder that :func:`collect_inputs` leaves out because their names
    do not end like a video (``notes.txt``), sorted; hidden files and sub-folders are not counted.
    [] for a file or a manifest."""
    path = Path(videos)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in VIDEO_SUFFIXES)


@dataclass(frozen=True)
class PromptImage:
    """The image(s) a prompt animates (image-to-video): the first frame, and the last one where
    the model takes one (Wan's first-last-frame mode). Absolute paths, checked readable.

    Attributes:
        image: the first frame's file.
        last_image: the last frame's file, or None.
        sha256: the files' content hash (a run's fingerprint: a changed image is another run).
    """

    image: str
    last_image: str | None = None
    sha256: str = ""

    @classmethod
    def of(cls, image: Path, last_image: Path | None = None) -> "PromptImage":
        """The image (and last frame) at these paths, with their contents' hash."""
        digest = hashlib.sha256()
        for key, file in (("image", image), ("last_image", last_image)):
            if file is not None:
                digest.update(key.encode() + b"\0" + Path(file).read_bytes())
        return cls(str(image), None if last_image is None else str(last_image), digest.hexdigest())


@dataclass(frozen=True)
class PromptRow:
    """One line of a prompt file: the prompt and, for image-to-video, its :class:`PromptImage`."""

    prompt: str
    image: PromptImage | None = None


_ROW_KEYS = ("prompt", "image", "last_image")


def read_prompts(path: str | os.PathLike, key: str = "prompts") -> list[str]:
    """Prompts from a text file (one per line) or JSON lines ({"prompt": ...} per line), read as
    :func:`read_prompt_rows` reads them (``key``: the setting that names the file).

    Blank lines are skipped; duplicate prompts are kept (they are told apart by index). A line
    that gives an image is refused here (one line naming it): a job that animates images reads
    :func:`read_prompt_rows`.
    """
    rows = read_prompt_rows(path, key)
    for number, row in enumerate(rows, start=1):
        if row.image is not None:
            raise RecipeError(f"{path}: prompt {number} gives an image ({row.image.image}), and this job reads text prompts only")
    return [row.prompt for row in rows]


def read_prompt_rows(path: str | os.PathLike, key: str = "prompts") -> list[PromptRow]:
    """The prompts of a prompt set (``vbench``, ``vbench:<dimension>``, ``vbench:heldout``:
    :mod:`cac_align.run.prompt_sets`), or of a text file (one per line) or of a JSONL file, each line an object with a
    ``"prompt"`` and, for image-to-video, an ``"image"`` (the first frame) and optionally a
    ``"last_image"`` (paths relative to the JSONL file's folder, or absolute).

    Every image is opened here, so a missing or unreadable one is an error naming its line before
    any model loads. Blank lines are skipped; duplicates are kept (told apart by index). A file is
    JSON lines by its name (``.jsonl``, ``.json``) or its content (:func:`is_json_lines`). ``key``: the
    setting that names the file (``eval_prompts``), as a refusal names it.

    Raises:
        RecipeError: no such file; a line that is not such an object; a key that looks meant for
            an image but is not one of those names (``imgae``; other keys are left alone), or an
            ``action`` (Cosmos 3's robotics conditions: passed to no generator) or a ``video`` (a clip to
            continue, Helios's video to video: taken by no job); an
            image that cannot be read; a ``last_image`` without an ``image``; a text line with a
            tab (score's ``name<TAB>prompt``, whose name would reach the generator as text).
    """
    if is_prompt_set(path):  # `vbench`, `vbench:<dimension>`, `...:heldout` (run/prompt_sets.py)
        return [PromptRow(prompt) for prompt in vbench_prompts(str(path))]
    source = Path(path)
    if not source.is_file():
        raise RecipeError(f"{key}={str(path)!r}: " + ("is a folder, not a file" if source.is_dir() else f"no such file{relative_path_hint(path)}"))
    rows: list[PromptRow] = []
    lines = text_lines(source)
    json_lines = is_json_lines(source, lines)  # by its name or its content (module docstring)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not json_lines:
            if "\t" in line.strip():  # score's by-name line: its name would reach the generator as text
                name, _, prompt = line.strip().partition("\t")
                raise RecipeError(f"{source}: line {number} has a tab ({name.strip()!r}<TAB>{_short(prompt.strip())!r}): that is score's by-name "
                                  "format (a video's name, then its prompt), and this job generates from prompts, one a line: give the "
                                  f"prompts alone (cut -f2 {source} > prompts.txt)")
            rows.append(PromptRow(line.strip()))
            continue
        try:
            row = json.loads(line)
            prompt = row["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RecipeError(f"{source}: line {number}: expected an object with a 'prompt' ({exc}){_json_hint(source)}") from None
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecipeError(f"{source}: line {number}: 'prompt' must be a non-empty string")
        _check_image_keys(row, source, number)
        image = _row_image(row, source, number)
        rows.append(PromptRow(prompt.strip(), image))
    if not rows:
        raise RecipeError(f"{key}={str(path)!r}: the file holds no prompts")
    return rows


def _short(text: str, most: int = 40) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def _check_image_keys(row: dict, source: Path, number: int) -> None:
    """Other keys of a line (an ``id``, a caption) are the user's and are left alone, but one that
    looks meant for an image (``imgae``, ``Image``, ``first_image``, ``image_path``) is refused:
    read as text alone, its image would be dropped in silence; so is an ``action`` (Cosmos 3's robotics
    conditions, which no job passes on) and a ``video`` (a clip to continue: Helios's video to video, which no job
    takes)."""
    import difflib

    if "video" in row:  # a clip to continue (Helios's video-to-video): no job samples from one, so it would be dropped in silence
        raise RecipeError(f"{source}: line {number}: 'video' (a clip to continue, Helios's video to video) is not passed to any generator "
                          "here: the jobs generate from text and, where the model takes them, 'image' and 'last_image'; drop the key, or "
                          "give the clip's first frame as 'image'")
    if "action" in row:  # Cosmos 3's robotics conditions: no job passes them (yet), so they would be dropped in silence
        raise RecipeError(f"{source}: line {number}: 'action' (an action condition, Cosmos 3's robotics mode) is not passed to any generator "
                          "here: its runs set their own size, frame count and JSON caption and sample an action stream no reward scores; "
                          "drop the key (or use NVIDIA's cosmos-framework for action runs)")
    for key in sorted(set(row) - set(_ROW_KEYS)):
        near = difflib.get_close_matches(key.lower(), ("image", "last_image"), n=1, cutoff=0.6)
        if near or "image" in key.lower() or "img" in key.lower():
            hint = near[0] if near else "image"
            raise RecipeError(f"{source}: line {number}: unknown key {key!r}: did you mean {hint!r}? (a prompt line gives its image as "
                              "'image' and, where the model takes one, 'last_image')")


def _row_image(row: dict, source: Path, number: int) -> PromptImage | None:
    if row.get("image") is None:
        if row.get("last_image") is not None:
            raise RecipeError(f"{source}: line {number}: a 'last_image' needs an 'image' (the first frame)")
        return None
    paths = {key: _image_path(row[key], key, source, number) for key in ("image", "last_image") if row.get(key) is not None}
    return PromptImage.of(paths["image"], paths.get("last_image"))


def _image_path(value: object, key: str, source: Path, number: int) -> Path:
    """``value`` (a line's ``image`` or ``last_image``) as an absolute path to a readable image."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{source}: line {number}: {key!r} must be a path to an image file, got {value!r}")
    file = Path(value).expanduser()
    file = (file if file.is_absolute() else source.parent / file).resolve()
    if not file.is_file():
        raise RecipeError(f"{source}: line {number}: {key} {value!r}: no such file ({file})")
    try:
        with Image.open(file) as image:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise RecipeError(f"{source}: line {number}: {key} {value!r} cannot be read as an image ({exc})") from None
    return file


def slug(text: str, max_len: int = 60) -> str:
    """A file-name-safe form of a prompt: lower case, words joined by '-'."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:max_len].rstrip("-") or "prompt"
