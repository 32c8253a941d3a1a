"""Skyra (Li et al., CVPR 2026; github.com/JoeLeelyf/Skyra) as a reward with localized evidence.

Skyra is a Qwen2.5-VL-7B fine-tune that decides whether a video is AI-generated and grounds the
decision in visual artifacts: its reasoning tags each one as
``<type>L3 Category</type> in <t>[start, end]</t> at <bbox>[x1, y1, x2, y2]</bbox>`` and its
answer is ``<answer>Fake</answer>`` or ``<answer>Real</answer>``. It is the public model closest
to what CaC does, so its verdict becomes a reward and its tags become evidence in ``score``'s
report, like CaC's window and boxes.

**What is asked** (their inference at commit 808e10d: ``eval/utils/ViFBench.py``,
``eval/models/Qwen2_5_VL.py`` and ``eval/models/Qwen2_5_VL_vLLM.py``):

- a system turn holding their ``SYSTEM_PROMPT`` (ViFBench.py line 8: the output format and the
  artifact categories);
- one user turn built as their ``_build_user_prompt`` (ViFBench.py 90-119) builds it: a header
  line, one ``[T=<seconds, 2 decimals>s] <image>`` line per frame, a closing request, joined with
  newlines; then split at each ``<image>`` into text parts (those that are blank after stripping
  are left out) with one still image after every part but the last (Qwen2_5_VL.py 44-71);
- greedy decoding, 2048 new tokens (Qwen2_5_VL.py 105-109; their vLLM path allows 8192).

The words are theirs and are read at run time from your checkout of their repository
(``authors_repo`` or ``$SKYRA_REPO``; the file is parsed with ``ast``, never run). Without a
checkout a built-in paraphrase in our own words is asked, with the same tag and answer format and
the category names as data, and a warning for a real checkpoint (the model was trained on theirs).

**Frames.** Their benchmark feeds frames extracted beforehand (``1.png ...`` and
``timestamps.txt``); the extraction is not in their repository. We take the video's frames at
``fps`` (default 2.0: a frame every 0.5 s, nearest source frame,
:func:`cac_align.video.sample_times`), evenly thinned to ``max_frames`` (default 32, the image
limit their vLLM engine is started with) by ``round(linspace(0, K - 1, max_frames))``; each
frame's stamp is its source time. How a frame is sized depends on ``frames``:

- ``hf`` (their transformers path, the default in-process): the frame as decoded; the
  checkpoint's own processor resizes it (Qwen2.5-VL: ``smart_resize`` with factor 28 between its
  ``min_pixels`` and ``max_pixels``);
- ``vllm`` (their vLLM path, and what a server is sent): each frame resized first by
  qwen-vl-utils' ``fetch_image`` to ``min_pixels`` = 224*224 .. ``max_pixels`` = 1280*28*28
  (Qwen2_5_VL_vLLM.py 76-81), then sent losslessly (PNG).

**The reward.** Their code has no probability anywhere: the verdict is the text of the first
``<answer>...</answer>``, "fake" in it (checked first) -> Fake, else "real" -> Real, else the
text itself (their metrics count anything but "real" as fake); no ``<answer>`` -> "Error"
(ViFBench.py 121-132). A binary verdict is a poor reward for ranking N samples of one prompt, so
``scoring: probs`` (default) reads, from the same greedy generation, the probabilities of the two
answer words right after ``<answer>`` and gives
``P(Real) / (P(Real) + P(Fake))``: "how sure Skyra is that it sees no artifact", CaC's Eq. 7 with
Real for normal. ``scoring: verdict`` gives their verdict as 1 (Real) or 0 (Fake). Either way a
generation without an ``<answer>`` tag is invalid (``parse``), and probabilities with no mass on
the two words are invalid (``score``), never 0.

**Evidence** (``details``): ``verdict``, ``status`` ("normal" for Real, "abnormal" for Fake,
else None), ``artifacts`` (each tag: its L3 ``category``, CaC ``type`` through the ViF-CoT
converter's mapping or None for Skyra's low-level categories, ``window_s``, its box in 0-1000 and
its sentence), ``windows_s``, ``window_s`` (from the first artifact's start to the last one's end)
and ``boxes`` (per shown frame inside an artifact's window: ``{"frame", "time_s", "type",
"boxes"}``, CaC's layout, so the report draws them). Tags of a Real verdict clear regions (their
RL reward reads them so); they are kept as ``cleared`` and drawn nowhere. Boxes whose coordinates
all lie in [0, 1] are fractions; others are pixels of the image the model saw (the resized frame,
as Qwen2.5-VL grounds).
"""

from __future__ import annotations

import ast
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from cac_align.rewards.authors import authors_file, warn_paraphrase
from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.video import Video
from cac_align.vlm.backend import Backend, ChatRequest, generate_and_read, text_part
from cac_align.vlm.config import ModelConfig, build_backend

log = logging.getLogger(__name__)

__all__ = [
    "judges",
    "SkyraConfig",
    "SkyraPrompt",
    "SkyraReward",
    "build",
    "frame_indices",
    "parse_verdict",
    "read_prompt",
    "user_content",
]

AUTHORS_REPO_ENV = "SKYRA_REPO"
AUTHORS_FILE = "eval/utils/ViFBench.py"
DEFAULT_MODEL = "JoeLeelyf/Skyra-SFT"
BUILT_IN = "built_in_paraphrase"
FRAME_MODES = ("hf", "vllm")
SCORINGS = ("probs", "verdict")
ANSWER_OPEN = "<answer>"
CHOICES = ("Real", "Fake")
# Their vLLM path's per-image bounds (Qwen2_5_VL_vLLM.py 79-80).
VLLM_MIN_PIXELS = 224 * 224
VLLM_MAX_PIXELS = 1280 * 28 * 28
PATCH_FACTOR = 28  # Qwen2.5-VL: 14-pixel patches merged 2 x 2


# ---------------------------------------------------------------------------------------
# The prompt
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SkyraPrompt:
    """The words of a Skyra request: the system prompt and the pieces of the user turn.

    ``frame_line`` is called with a frame's time in seconds and returns its line, which holds
    ``<image>`` where the frame goes.
    """

    system: str
    header: str
    frame_line: Callable[[float], str]
    closing: str
    separator: str = "\n"
    source: str = BUILT_IN

    def user_text(self, times_s: Any) -> str:
        return self.separator.join([self.header, *(self.frame_line(float(t)) for t in times_s), self.closing])


def _built_in_system() -> str:
    """Our own words for the system prompt: the format Skyra was trained to write, and its
    category names (data, as the ViF-CoT converter lists them)."""
    from cac_align.data.convert.vif_cot import CATEGORY_MAP, LOW_LEVEL

    names = "\n".join(f"- {name}" for name in (*LOW_LEVEL, *CATEGORY_MAP))
    return (
        "You review the frames of a video and judge whether it was made by an AI video generator.\n"
        "Write your reasoning inside <think>...</think>, then a one-word verdict, Fake or Real, inside "
        "<answer>...</answer>.\nIn your reasoning, describe what the frames show, then check them step by step. "
        "Tag every artifact you find, in time order, as\n"
        "<type>Category</type> in <t>[start, end]</t> at <bbox>[x1, y1, x2, y2]</bbox>\n"
        f"using one of these categories:\n{names}\n"
    )


def built_in_prompt() -> SkyraPrompt:
    return SkyraPrompt(
        system=_built_in_system(),
        header="The video's frames, each after its time:",
        frame_line=lambda t: f"[T={t:.2f}s] <image>",
        closing="\nIs this video real or AI-generated? Explain what you see.",
    )


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _line_renderer(node: ast.JoinedStr, where: str) -> Callable[[float], str]:
    """An f-string of one variable (``f"[T={ts:.2f}s] <image>"``) as a function of that value."""
    pieces: list[str | str] = []
    specs: list[tuple[int, str]] = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            pieces.append(value.value)
        elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) and value.conversion == -1:
            spec = ""
            if value.format_spec is not None:
                parts = [_string(v) for v in getattr(value.format_spec, "values", [])]
                if any(p is None for p in parts):
                    raise ValueError(f"{where}: the frame line's format is not a plain format spec")
                spec = "".join(parts)  # type: ignore[arg-type]
            specs.append((len(pieces), spec))
            pieces.append("")
        else:
            raise ValueError(f"{where}: the frame line is not an f-string of the frame's time")
    if len(specs) != 1:
        raise ValueError(f"{where}: the frame line formats {len(specs)} values; expected the frame's time only")
    slot, spec = specs[0]

    def render(seconds: float) -> str:
        out = list(pieces)
        out[slot] = format(seconds, spec)
        return "".join(out)

    return render


def read_prompt(path: str | os.PathLike) -> SkyraPrompt:
    """Skyra's prompt from their ``ViFBench.py``, parsed with ``ast`` (never run).

    Reads the module constant ``SYSTEM_PROMPT`` and, in ``_build_user_prompt``: the first item of
    the list ``prompt_lines`` starts as (the header), the f-string appended per frame (the frame
    line), the string appended after the loop (the closing), and the separator of the final
    ``join``.

    Raises:
        ValueError: naming what the file lacks (a different layout than their commit 808e10d).
    """
    path = Path(path)
    where = str(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=where)
    system = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SYSTEM_PROMPT" for t in node.targets):
            system = _string(node.value)
    if system is None:
        raise ValueError(f"{where}: no string constant SYSTEM_PROMPT")
    function = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_build_user_prompt"), None)
    if function is None:
        raise ValueError(f"{where}: no function _build_user_prompt")
    header = closing = separator = None
    frame_line = None
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "prompt_lines" for t in node.targets):
            if isinstance(node.value, ast.List) and node.value.elts:
                header = _string(node.value.elts[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target, args = node.func.value, node.args
            if node.func.attr == "append" and isinstance(target, ast.Name) and target.id == "prompt_lines" and len(args) == 1:
                if isinstance(args[0], ast.JoinedStr):
                    frame_line = _line_renderer(args[0], where)
                elif _string(args[0]) is not None:
                    closing = _string(args[0])
            elif node.func.attr == "join" and _string(target) is not None and len(args) == 1:
                if isinstance(args[0], ast.Name) and args[0].id == "prompt_lines":
                    separator = _string(target)
    missing = [name for name, value in (("the header", header), ("the frame line", frame_line), ("the closing line", closing),
                                        ("the join", separator)) if value is None]
    if missing:
        raise ValueError(f"{where}: _build_user_prompt lacks {', '.join(missing)} in the layout of their commit 808e10d")
    return SkyraPrompt(system, header, frame_line, closing, separator, f"authors_script:{path.resolve()}")  # type: ignore[arg-type]


_warned_paraphrase: set[str] = set()


def resolve_prompt(authors_repo: str | None, model_name: str, key: str = "reward") -> SkyraPrompt:
    """The prompt a section asks: from the authors' checkout (``authors_repo``, else
    ``$SKYRA_REPO``), else the built-in paraphrase (with a warning once per real model)."""
    from cac_align.config import RecipeError

    found = authors_file(authors_repo, AUTHORS_REPO_ENV, AUTHORS_FILE, "github.com/JoeLeelyf/Skyra", key)
    if found is None:
        warn_paraphrase("skyra", model_name, AUTHORS_REPO_ENV, "Skyra", key, _warned_paraphrase)
        return built_in_prompt()
    path, where = found
    try:
        return read_prompt(path)
    except (ValueError, SyntaxError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def user_content(text: str, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user turn as their inference splits it: text parts between ``<image>`` marks (blank
    ones left out), one image after each part but the last."""
    pieces = text.split("<image>")
    if len(pieces) - 1 != len(images):
        raise ValueError(f"the prompt has {len(pieces) - 1} <image> marks for {len(images)} frames")
    content: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            content.append(text_part(piece))
        if i < len(pieces) - 1:
            content.append(images[i])
    return content


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
def frame_indices(num_frames: int, source_fps: float, fps: float, max_frames: int) -> np.ndarray:
    """Source frame indices Skyra is shown: one per ``1 / fps`` seconds (nearest frame), evenly
    thinned to ``max_frames`` by ``round(linspace(0, K - 1, max_frames))``."""
    from cac_align.video import sample_times

    indices = sample_times(num_frames, source_fps, fps)
    if len(indices) > max_frames:
        indices = indices[np.round(np.linspace(0, len(indices) - 1, max_frames)).astype(int)]
    return indices


def shown_size(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) of a frame as the model sees it (qwen-vl-utils' ``smart_resize``, factor 28)."""
    from qwen_vl_utils.vision_process import smart_resize

    return tuple(smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels))  # type: ignore[return-value]


def vllm_frame(frame: np.ndarray, min_pixels: int, max_pixels: int) -> np.ndarray:
    """A frame resized as their vLLM path resizes it: qwen-vl-utils' ``fetch_image`` on the image."""
    from PIL import Image
    from qwen_vl_utils.vision_process import fetch_image

    image = fetch_image({"image": Image.fromarray(frame), "min_pixels": min_pixels, "max_pixels": max_pixels})
    return np.asarray(image.convert("RGB"))


def png_image_part(frame: np.ndarray) -> dict[str, Any]:
    """A still image sent losslessly by every backend (their frames are PNG files)."""
    import io

    from PIL import Image

    from cac_align.vlm.backend import image_part

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return image_part(np.ascontiguousarray(frame), png=buffer.getvalue())


# ---------------------------------------------------------------------------------------
# The answer
# ---------------------------------------------------------------------------------------
def parse_verdict(text: str) -> str | None:
    """Their ``_parse_response``: the first ``<answer>...</answer>``'s text, "Fake" when it holds
    "fake", else "Real" when it holds "real" (case-insensitive), else the stripped text; None when
    there is no answer tag (their "Error")."""
    import re

    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if match is None:
        return None
    answer = match.group(1).strip()
    if "fake" in answer.lower():
        return "Fake"
    if "real" in answer.lower():
        return "Real"
    return answer


def answer_prefix(text: str) -> str | None:
    """The generation up to the first ``<answer>`` and the blanks after it: where the verdict word
    is read. None without the tag."""
    at = text.find(ANSWER_OPEN)
    if at < 0:
        return None
    end = at + len(ANSWER_OPEN)
    while end < len(text) and text[end] in " \t\n":
        end += 1
    return text[:end]


def _to_thousandths(box: list[float], fractions: bool, size: tuple[int, int]) -> list[float]:
    height, width = size
    scale = (1000.0, 1000.0) if fractions else (1000.0 / width, 1000.0 / height)
    x0, y0, x1, y1 = box
    out = [x0 * scale[0], y0 * scale[1], x1 * scale[0], y1 * scale[1]]
    return [float(min(1000.0, max(0.0, v))) for v in out]


def evidence(text: str, verdict: str | None, times_s: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """The evidence fields of ``details`` from an answer's tags (see the module docstring)."""
    from cac_align.data.convert import BadRow
    from cac_align.data.convert.vif_cot import CATEGORY_MAP, find_tags

    try:
        tags = find_tags(text)
    except BadRow as exc:
        return {"artifacts": [], "cleared": [], "windows_s": [], "window_s": None, "boxes": [], "evidence_error": str(exc)}
    boxes_given = [t["box"] for t in tags if t["box"] is not None and any(t["box"])]
    fractions = all(0.0 <= v <= 1.0 for box in boxes_given for v in box)
    artifacts = []
    for tag in tags:
        start, end = sorted(tag["time"])
        box = tag["box"] if tag["box"] is not None and any(tag["box"]) else None
        artifacts.append({
            "category": tag["category"],
            "type": CATEGORY_MAP.get(tag["category"]),
            "window_s": [float(start), float(end)],
            "box": _to_thousandths(box, fractions, size) if box is not None else None,
            "sentence": tag["sentence"],
        })
    if verdict != "Fake":  # a real video's tags clear regions; nothing is flagged
        return {"artifacts": [], "cleared": artifacts, "windows_s": [], "window_s": None, "boxes": []}
    boxes = []
    for artifact in artifacts:
        if artifact["box"] is None:
            continue
        start, end = artifact["window_s"]
        inside = [k for k, t in enumerate(times_s) if start <= t <= end]
        if not inside:  # a window between two shown frames: the nearest one
            inside = [int(np.argmin(np.abs(times_s - start)))]
        for k in inside:
            boxes.append({"frame": k, "time_s": float(times_s[k]), "type": artifact["type"] or artifact["category"],
                          "category": artifact["category"], "boxes": [artifact["box"]]})
    windows = [a["window_s"] for a in artifacts]
    span = [min(w[0] for w in windows), max(w[1] for w in windows)] if windows else None
    return {"artifacts": artifacts, "cleared": [], "windows_s": windows, "window_s": span, "boxes": boxes}


# ---------------------------------------------------------------------------------------
# The reward
# ---------------------------------------------------------------------------------------
@dataclass
class _Request:
    chat: ChatRequest
    times_s: np.ndarray
    size: tuple[int, int]  # (height, width) of the image the model sees


class SkyraReward(BatchReward):
    """Skyra's verdict over any :class:`Backend`: ``P(Real) / (P(Real) + P(Fake))`` after
    ``<answer>`` (``scoring: probs``) or 1 / 0 for Real / Fake (``scoring: verdict``).

    ``details``: ``verdict``, ``status``, ``valid``, ``p_real``, ``p_fake`` (None when not read), ``answer`` (the raw
    text), ``frames`` (count), the evidence fields (:func:`evidence`), ``prompt_source``.
    """

    name = "skyra"
    score_range = (0.0, 1.0)
    needs_prompt = False  # Skyra judges the video alone
    reads_prompt = False

    def __init__(
        self,
        backend: Backend,
        prompt: SkyraPrompt | None = None,
        fps: float = 2.0,
        max_frames: int = 32,
        frames: str = "hf",
        min_pixels: int = VLLM_MIN_PIXELS,
        max_pixels: int = VLLM_MAX_PIXELS,
        scoring: str = "probs",
        max_new_tokens: int = 2048,
        min_choice_mass: float = 1e-6,
        source_fps: float | None = 16.0,
        batch_size: int = 8,
    ):
        if frames not in FRAME_MODES:
            raise ValueError(f"frames must be one of {FRAME_MODES}, got {frames!r}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.backend = backend
        self.prompt = prompt or built_in_prompt()
        self.fps, self.max_frames = fps, max_frames
        self.frames = frames
        self.scoring = scoring
        self.max_new_tokens = max_new_tokens
        self.min_choice_mass = min_choice_mass
        self.source_fps, self.batch_size = source_fps, batch_size
        if frames == "hf":  # the checkpoint's processor resizes: its bounds say what the model sees
            self.min_pixels, self.max_pixels = processor_bounds(backend)
        else:
            self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def to(self, device: Any) -> "SkyraReward":
        self.backend.to(device)
        return self

    def request(self, video: Video, prompt: str | None) -> _Request:
        indices = frame_indices(video.num_frames, video.fps, self.fps, self.max_frames)
        times = np.asarray(video.timestamps)[indices]
        pixels = [np.asarray(video.frames[int(i)]) for i in indices]
        size = shown_size(video.height, video.width, self.min_pixels, self.max_pixels)
        if self.frames == "vllm":
            pixels = [vllm_frame(p, self.min_pixels, self.max_pixels) for p in pixels]
        images = [png_image_part(p) for p in pixels]
        chat = [
            {"role": "system", "content": [text_part(self.prompt.system)]},
            {"role": "user", "content": user_content(self.prompt.user_text(times), images)},
        ]
        return _Request(chat, times, size)

    def score_batch(self, requests: list[_Request]) -> list[dict]:
        chats = [r.chat for r in requests]
        if self.scoring == "probs":
            completions, probs = generate_and_read(self.backend, chats, CHOICES, answer_prefix, self.max_new_tokens)
        else:  # the verdict alone: what a generation reads along is kept, nothing is asked again
            completions, probs = self.backend.generate_scored(chats, list(CHOICES), answer_prefix, max_new_tokens=self.max_new_tokens)
            probs = np.array(probs, dtype=float)
        return [self._detail(r, c.text, p) for r, c, p in zip(requests, completions, probs)]

    def _detail(self, request: _Request, text: str, probs: np.ndarray) -> dict:
        verdict = parse_verdict(text)
        p_real, p_fake = (float(probs[0]), float(probs[1]))
        status = {"Real": "normal", "Fake": "abnormal"}.get(verdict or "")
        read = {"p_real": p_real if math.isfinite(p_real) else None, "p_fake": p_fake if math.isfinite(p_fake) else None}  # JSON-safe
        detail: dict[str, Any] = {"verdict": verdict, "status": status, **read, "answer": text,
                                  "frames": len(request.times_s), "prompt_source": self.prompt.source, "valid": False}
        detail.update(evidence(text, verdict, request.times_s, request.size))
        if verdict is None:
            return {**detail, "error": "no <answer>...</answer> in Skyra's answer", "error_kind": ErrorKind.PARSE}
        if self.scoring == "verdict":
            if verdict not in CHOICES:
                return {**detail, "error": f"the answer {verdict!r} is neither Real nor Fake", "error_kind": ErrorKind.PARSE}
            score = 1.0 if verdict == "Real" else 0.0
        else:
            mass = p_real + p_fake
            if not math.isfinite(mass) or mass < self.min_choice_mass:
                return {**detail, "error": f"P(Real) + P(Fake) = {mass:.3g} after <answer> (below {self.min_choice_mass:g})",
                        "error_kind": ErrorKind.SCORE}
            score = p_real / mass
        return {**detail, "valid": True, "score": score}

    def invalid_detail(self, error: str, kind: str) -> dict:
        return {"error": error, "error_kind": kind, "valid": False, "status": None, "window_s": None, "boxes": []}


def processor_bounds(backend: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) of an in-process model's image processor (what ``frames: hf``
    leaves the resizing to)."""
    bounds = backend.image_pixel_bounds()
    if bounds is None:
        raise ValueError("frames: hf leaves the resizing to the model's own processor, which only an in-process (hf) "
                         "model has; use frames: vllm for a served model (their vLLM path)")
    return bounds


# ---------------------------------------------------------------------------------------
# Recipe section
# ---------------------------------------------------------------------------------------
@dataclass
class SkyraConfig:
    """Recipe section of ``name: skyra``.

    Attributes:
        model: the checkpoint (default ``JoeLeelyf/Skyra-SFT``, see huggingface.co/collections/JoeLeelyf/skyra;
            CC BY 4.0) or a served model (``backend: openai``).
        scoring: "probs" (P(Real) / (P(Real) + P(Fake)) after ``<answer>``) or "verdict" (1 / 0).
        fps: frames per second shown (a frame every 1 / fps seconds; default 2.0).
        max_frames: at most this many frames (evenly thinned; their vLLM engine allows 32 images).
        frames: "hf" (their transformers path: the model's processor resizes) or "vllm" (each frame
            resized by qwen-vl-utils to [min_pixels, max_pixels] first, as their vLLM path does).
            None: hf in-process, vllm for a served model.
        min_pixels, max_pixels: the bounds of ``frames: vllm`` (their 224*224 and 1280*28*28).
        max_new_tokens: generation budget (their transformers path: 2048).
        min_choice_mass: P(Real) + P(Fake) below this is invalid (``score``).
        authors_repo: your checkout of github.com/JoeLeelyf/Skyra (the prompt is read from
            ``eval/utils/ViFBench.py`` there); None reads ``$SKYRA_REPO``; with neither, our paraphrase.
        source_fps: frame rate of array/tensor input without ``fps`` in metadata.

    Videos scored together are the model's batch: ``model.max_batch_size``.
    """

    MOVED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {"batch_size": ("model.max_batch_size", "the videos scored together are the model's batch")}

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=DEFAULT_MODEL))
    scoring: str = "probs"
    fps: float = 2.0
    max_frames: int = 32
    frames: str | None = None
    min_pixels: int = VLLM_MIN_PIXELS
    max_pixels: int = VLLM_MAX_PIXELS
    max_new_tokens: int = 2048
    min_choice_mass: float = 1e-6
    authors_repo: str | None = None
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.frames is not None and self.frames not in FRAME_MODES:
            raise ValueError(f"frames must be one of {FRAME_MODES} or null, got {self.frames!r}")
        if not self.fps > 0 or self.max_frames < 1:
            raise ValueError(f"fps must be > 0 and max_frames >= 1, got {self.fps} and {self.max_frames}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.frames == "hf" and self.model.backend != "hf":
            raise ValueError("frames: hf leaves resizing to the model's own processor, which a served model does not expose; use frames: vllm")


def build(config: SkyraConfig, key: str = "reward") -> SkyraReward:
    """Build the reward a ``name: skyra`` section describes (loads the model)."""
    prompt = resolve_prompt(config.authors_repo, config.model.name, key)
    backend = build_backend(config.model, key=f"{key}.model")
    frames = config.frames or ("hf" if config.model.backend == "hf" else "vllm")
    return SkyraReward(
        backend,
        prompt,
        fps=config.fps,
        max_frames=config.max_frames,
        frames=frames,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        scoring=config.scoring,
        max_new_tokens=config.max_new_tokens,
        min_choice_mass=config.min_choice_mass,
        source_fps=config.source_fps,
        batch_size=config.model.max_batch_size,
    )


def judges(config: SkyraConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: skyra`` section loads, for the memory plan (:mod:`cac_align.rewards.judges`):
    the video at ``fps`` (at most ``max_frames`` frames) within ``max_pixels`` a frame, its question
    (an estimate of 3,000 characters) and ``max_new_tokens``."""
    from cac_align.rewards.judges import Frames, JudgeCall, fit_pixels, judge_of, text_tokens

    height, width = fit_pixels(video.height, video.width, config.max_pixels)
    frames = Frames(video.frames_at(config.fps, config.max_frames), height, width)
    call = JudgeCall((frames,), text_tokens("x" * 3000), config.max_new_tokens, config.model.max_batch_size)
    return [judge_of(config.model, f"{where}.model", call)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "skyra",
    "cac_align.rewards.skyra:SkyraConfig",
    "cac_align.rewards.skyra:build",
    "Skyra's AI-generated-video verdict -> P(Real) after <answer>, its artifact tags as evidence (window, boxes, types)",
    judges="cac_align.rewards.skyra:judges",
)
