"""VideoReward (VideoAlign; Liu et al. 2025) as a reward: visual quality, motion quality and
text alignment, read by a regression head from a Qwen2-VL-2B.

The checkpoint (HF ``KwaiVGI/VideoReward``) is a folder laid out as the authors' trainer writes
it: ``model_config.json`` (their data, model, LoRA and normalisation settings) and
``checkpoint-N/`` with the weights of the whole wrapped model. The base processor and config
come from ``model_config.model_name_or_path`` (``Qwen/Qwen2-VL-2B-Instruct``), so both must be
reachable (hub ids or local folders; ``base_model`` overrides the second).

**Asked as their inference code asks** (github.com/KwaiVGI/VideoAlign at 219ab9d: ``inference.py``
``VideoVLMRewardInference``, ``vision_process.py``, ``prompt_template.py``, ``trainer.py``
``Qwen2VLRewardModelBT``):

- frames: their ``vision_process.py`` samples ``fps`` (2.0 in the checkpoint's config) frames per
  second of video: ``total / source_fps * fps`` frames, clamped to [4, min(768, total)] and then
  **rounded** to an even count (``round_by_factor``, Python's half-to-even rounding; qwen-vl-utils
  0.0.14 floors instead: 92 frames at 16 fps give them 12, not 10), at
  ``linspace(0, total - 1, n).round()``; ``num_frames`` instead asks for that many (rounded to
  even). Each frame is resized on uint8 with bicubic antialiasing to ``smart_resize(h, w, 28,
  min_pixels=128*28*28, max_pixels=max_frame_pixels)``: a video smaller than 100,352 pixels a
  frame is **upscaled** to it (:func:`videoalign_frames`);
- prompt: the template their config names (``detailed_special``) from ``prompt_template.py``,
  read from your checkout of their repository (``authors_repo`` or ``$VIDEOALIGN_REPO``; parsed,
  never run); without one, a paraphrase of ours that keeps the three reward tokens;
- the chat: one user turn, video then text, the processor's chat template with a generation
  prompt, padded on the right;
- the model: the reward is read at the three special tokens ``<|VQ_reward|>``,
  ``<|MQ_reward|>``, ``<|TA_reward|>`` (added to the tokenizer, embeddings resized to the new
  vocabulary), head ``rm_head`` (a bias-free Linear to ``output_dim`` outputs). The released
  checkpoint's ``model_config.json`` says ``output_dim: 1``: the head's one output is read at each
  token (VQ at the VQ token, ...); a 3-output head is read by its diagonal (VQ from the VQ
  token's first output, ...), as their ``trainer.py`` 159-166 reads both. Their forward hands the text model ``position_ids=None``, so with
  the transformers they pin (4.45.2) the text model numbers the tokens 0, 1, 2, ... in all three
  rotary sections instead of Qwen2-VL's multimodal 3-D positions. We do the same (a port that
  uses the 3-D positions scores differently);
- normalisation: ``(x - mean) / std`` per dimension with the checkpoint's ``inference_config``
  (``use_norm``), ``Overall = VQ + MQ + TA``.

The scalar is ``details["Overall"]`` by default (``score`` picks VQ, MQ or TA); every dimension,
raw and normalised, is in ``details``. The scale is unbounded: in ``combined`` give it a
``normalizer`` (``group`` for GRPO, ``running`` or ``fixed`` with a range you measured).

**Safe loading.** The authors ship ``checkpoint-N/model.pth``, a pickle. It is read only when the
recipe says ``allow_pickle: true`` and then with ``torch.load(weights_only=True)`` (tensors and
plain containers, no code); :func:`convert_checkpoint` writes ``model.safetensors`` beside it
once, which is read from then on without the setting.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.video import Video, VideoError
from cac_align.vlm.config import ModelConfig, model_dtype

log = logging.getLogger(__name__)

__all__ = [
    "judges",
    "AUTHORS_REPO_ENV",
    "DIMENSIONS",
    "REWARD_TOKENS",
    "VideoAlignSettings",
    "VideoReward",
    "VideoRewardConfig",
    "build",
    "build_tiny_qwen2_vl",
    "build_tiny_video_reward",
    "convert_checkpoint",
    "load_video_reward",
    "read_template",
    "videoalign_frames",
]

AUTHORS_REPO_ENV = "VIDEOALIGN_REPO"
AUTHORS_FILE = "prompt_template.py"
# Their template types and the constant of prompt_template.py each one formats (build_prompt).
TEMPLATE_CONSTANTS = {"detailed_special": "DETAILED_PROMPT_WITH_SPECIAL_TOKEN", "detailed": "DETAILED_PROMPT"}
REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
# Heads their trainer reads at the three reward tokens (trainer.py 159-166): one output, read at
# each token (the released checkpoint's model_config.json says output_dim 1), or three, of which
# each token's own dimension is read (the diagonal).
HEAD_OUTPUTS = (1, 3)
DIMENSIONS = ("VQ", "MQ", "TA")
TINY_NAME = "tiny-random:video_reward"
BUILT_IN = "built_in_paraphrase"

# Their vision_process.py constants (VideoAlign 219ab9d, vision_process.py 26-37).
FRAME_FACTOR = 2
MIN_FRAMES = 4
MAX_FRAMES = 768
IMAGE_FACTOR = 28
VIDEO_MIN_PIXELS = 128 * 28 * 28

# Our words, in the structure of their detailed_special template: the three criteria, each
# ending on a line that asks for its rating and holds its reward token; the prompt before the
# last one. Used only when no checkout of their repository is given.
_BUILT_IN_TEMPLATE = (
    "\nYou will rate a generated video on three separate criteria: how it looks, how it moves, and "
    "how well it follows its text prompt.\n\n"
    "**Visual Quality:**\n"
    "Judge each frame as a still picture: plausible bodies and objects, sharpness, rich detail, "
    "pleasing colour and composition, and no unsafe content.\n\n"
    "Please provide the ratings of Visual Quality: <|VQ_reward|>\nEND\n\n"
    "**Motion Quality:**\n"
    "Judge the movement: stable from frame to frame, physically natural, smooth, well blended with "
    "the background, clear while moving, and not nearly static.\n\n"
    "Please provide the ratings of Motion Quality: <|MQ_reward|>\nEND\n\n"
    "**Text Alignment:**\n"
    "Judge the match with the prompt: subjects, actions, setting, style and camera movement.\n\n"
    "Textual prompt - {text_prompt}\n"
    "Please provide the ratings of Text Alignment: <|TA_reward|>\nEND\n"
)
_warned_paraphrase: set[str] = set()


# ---------------------------------------------------------------------------------------
# What the checkpoint says
# ---------------------------------------------------------------------------------------
@dataclass
class VideoAlignSettings:
    """The parts of a VideoReward checkpoint's ``model_config.json`` that inference reads."""

    base_model: str
    fps: float | None = 2.0
    num_frames: int | None = None
    max_pixels: int = 200704
    template_type: str = "detailed_special"
    sample_type: str = "uniform"
    output_dim: int = 1
    reward_token: str = "special"
    use_special_tokens: bool = True
    lora: dict[str, Any] | None = None
    norm: dict[str, float] | None = None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "VideoAlignSettings":
        try:
            raw = json.loads(Path(path).read_text())
            data, model, lora = raw["data_config"], raw["model_config"], raw.get("peft_lora_config") or {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a VideoReward model_config.json ({exc})") from None
        settings = cls(
            base_model=model["model_name_or_path"],
            fps=data.get("fps"),
            num_frames=data.get("num_frames"),
            max_pixels=data.get("max_frame_pixels") or 200704,
            template_type=data.get("prompt_template_type", "detailed_special"),
            sample_type=data.get("sample_type", "uniform"),
            output_dim=int(model.get("output_dim", 1)),  # their ModelConfig's default (utils.py 58)
            reward_token=model.get("reward_token", "special"),
            use_special_tokens=bool(model.get("use_special_tokens", True)),
            lora=lora if lora.get("lora_enable") else None,
            norm=raw.get("inference_config"),
        )
        if settings.reward_token != "special" or not settings.use_special_tokens or settings.output_dim not in HEAD_OUTPUTS:
            raise ValueError(
                f"{path}: this reward reads the three reward tokens (reward_token 'special', use_special_tokens true) with a "
                f"head of {' or '.join(map(str, HEAD_OUTPUTS))} outputs, as VideoAlign's trainer reads them; the checkpoint says "
                f"reward_token={settings.reward_token!r}, use_special_tokens={settings.use_special_tokens}, output_dim={settings.output_dim}"
            )
        if settings.sample_type != "uniform":
            raise ValueError(f"{path}: sample_type {settings.sample_type!r} is not supported (only 'uniform', the release's)")
        if settings.template_type not in TEMPLATE_CONSTANTS:
            raise ValueError(f"{path}: prompt_template_type {settings.template_type!r}; supported: {sorted(TEMPLATE_CONSTANTS)}")
        return settings


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
def _round_by(number: float, factor: int) -> int:
    return round(number / factor) * factor


def frame_count(total: int, source_fps: float, fps: float | None = 2.0, num_frames: int | None = None) -> int:
    """How many frames their ``smart_nframes`` (vision_process.py 129-166) takes from a video."""
    if num_frames is not None:
        count = _round_by(num_frames, FRAME_FACTOR)
    else:
        low = math.ceil(MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
        high = math.floor(min(MAX_FRAMES, total) / FRAME_FACTOR) * FRAME_FACTOR
        count = _round_by(min(max(total / source_fps * fps, low), high), FRAME_FACTOR)
    count = min(count, total)
    if not FRAME_FACTOR <= count <= total:
        raise VideoError(f"VideoReward needs at least {FRAME_FACTOR} frames; this video gives {count} of {total}")
    return count


def videoalign_frames(video: Video, fps: float | None = 2.0, num_frames: int | None = None, max_pixels: int = 200704) -> tuple[Any, list[int]]:
    """The frames VideoAlign's reader gives its processor: ``(uint8 tensor (T, 3, H, W), indices)``.

    Indices as their decord reader picks them (``linspace(0, total - 1, n).round()``), each frame
    resized on uint8 (bicubic, antialiased) to qwen-vl-utils' ``smart_resize`` with factor 28,
    their 100,352-pixel floor and ``max_pixels`` as ceiling.
    """
    import torch
    from qwen_vl_utils.vision_process import smart_resize
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    total = video.num_frames
    count = frame_count(total, video.fps, fps, num_frames)
    indices = torch.linspace(0, total - 1, count).round().long().tolist()
    frames = torch.from_numpy(np.ascontiguousarray(np.asarray(video.frames)[indices])).permute(0, 3, 1, 2)
    height, width = smart_resize(video.height, video.width, factor=IMAGE_FACTOR, min_pixels=VIDEO_MIN_PIXELS, max_pixels=max_pixels)
    resized = tvf.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return resized, indices


# ---------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------
def read_template(path: str | os.PathLike, template_type: str = "detailed_special") -> str:
    """The template string their ``build_prompt`` formats for ``template_type``, read from a
    ``prompt_template.py`` with ``ast`` (their file is parsed, never run)."""
    constant = TEMPLATE_CONSTANTS[template_type]
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == constant for t in node.targets):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    raise ValueError(f"{path}: no string constant {constant} (the {template_type!r} template)")


def resolve_template(authors_repo: str | None, template_type: str, key: str = "reward") -> tuple[str, str]:
    """``(template, prompt_source)``: from the authors' checkout when one is named (the recipe's
    ``authors_repo``, else ``$VIDEOALIGN_REPO``), else our paraphrase."""
    where = f"{key}.authors_repo" if authors_repo else f"the environment variable {AUTHORS_REPO_ENV}"
    root = authors_repo or os.environ.get(AUTHORS_REPO_ENV)
    if not root:
        if template_type != "detailed_special":
            raise ValueError(f"{key}: the {template_type!r} template has no built-in paraphrase; set authors_repo")
        return _BUILT_IN_TEMPLATE, BUILT_IN
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{where}={root}: no such folder (a checkout of github.com/KwaiVGI/VideoAlign)")
    path = folder / AUTHORS_FILE
    if not path.is_file():
        raise ValueError(f"{where}={root}: no {AUTHORS_FILE} there (a checkout of github.com/KwaiVGI/VideoAlign)")
    return read_template(path, template_type), f"authors_script:{path.resolve()}"


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
_MODEL_CLASS: list[Any] = []


def reward_model_class() -> Any:
    """``VideoRewardModel``: transformers' ``Qwen2VLForConditionalGeneration`` with VideoAlign's
    ``rm_head`` (a bias-free Linear from the hidden size to ``output_dim``)."""
    if _MODEL_CLASS:
        return _MODEL_CLASS[0]
    from torch import nn
    from transformers import Qwen2VLForConditionalGeneration

    class VideoRewardModel(Qwen2VLForConditionalGeneration):
        def __init__(self, config: Any, output_dim: int = 1):
            super().__init__(config)
            self.rm_head = nn.Linear(config.text_config.hidden_size, output_dim, bias=False)

    _MODEL_CLASS.append(VideoRewardModel)
    return VideoRewardModel


def reward_logits(model: Any, batch: dict, reward_ids: list[int]) -> Any:
    """``(B, 3)`` raw VQ, MQ, TA for a processed batch, as their ``Qwen2VLRewardModelBT.forward``
    (trainer.py 71-173) computes them: vision features into the video tokens, the text model with
    ``position_ids=None`` (positions 0..L-1 in every rotary section), ``rm_head`` at the three
    reward tokens: a 1-output head's output at each token, a 3-output head's diagonal."""
    import torch

    input_ids = batch["input_ids"]
    inner = model.model
    embeds = inner.get_input_embeddings()(input_ids)
    if batch.get("pixel_values_videos") is not None:
        features = inner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"]).pooler_output
        features = torch.cat(list(features), dim=0).to(embeds.device, embeds.dtype)
        _, video_mask = inner.get_placeholder_mask(input_ids, embeds, video_features=features)
        embeds = embeds.masked_scatter(video_mask, features)
    hidden = inner.language_model(inputs_embeds=embeds, attention_mask=batch.get("attention_mask"), position_ids=None).last_hidden_state
    logits = model.rm_head(hidden)
    mask = torch.isin(input_ids, torch.tensor(reward_ids, device=input_ids.device))
    counts = mask.sum(dim=1)
    if not bool((counts == len(reward_ids)).all()):
        raise ValueError(f"each prompt must hold the three reward tokens once; counts per row: {counts.tolist()}")
    pooled = logits[mask].view(input_ids.shape[0], len(reward_ids), -1)  # (B, 3 tokens, head outputs)
    outputs = pooled.shape[-1]
    if outputs == 1:  # one output, read at each token: VQ at the VQ token, ...
        return pooled[..., 0]
    if outputs == len(reward_ids):  # each token's own dimension
        return pooled.diagonal(dim1=1, dim2=2)
    raise ValueError(f"rm_head has {outputs} outputs; VideoAlign's trainer reads the reward tokens with 1 or 3")


def _target_modules(model: Any, exclude: list[str], count: int) -> list[str]:
    """LoRA targets as their trainer chose them (train_reward.py 43-63): every Linear and
    Embedding whose name holds none of ``exclude``, the last ``count`` of them when count > 0."""
    from torch import nn

    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding)) and not any(x in n for x in exclude)]
    return names[-count:] if count > 0 else names


def _lora_exclude(lora: dict[str, Any]) -> list[str]:
    exclude = lora.get("lora_namespan_exclude") or []
    if isinstance(exclude, str):  # their command line passes a Python list as a string
        exclude = ast.literal_eval(exclude) if exclude.strip().startswith("[") else [exclude]
    exclude = list(exclude)
    if not lora.get("vision_lora"):
        exclude.append("visual")
    return exclude


# transformers 4.45 names (the authors') -> transformers 5 names: the text model moved under
# model.language_model, the vision tower under model.visual.
_RENAMES = ((re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."), (re.compile(r"^visual\."), "model.visual."))


def _current_names(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, tensor in state.items():
        prefix = "base_model.model." if name.startswith("base_model.model.") else ""
        rest = name[len(prefix):]
        for pattern, replacement in _RENAMES:
            rest = pattern.sub(replacement, rest, count=1)
        out[prefix + rest] = tensor
    return out


def _checkpoint_folder(root: Path, step: int) -> Path:
    found = sorted((p for p in root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()), key=lambda p: int(p.name.split("-")[-1]))
    if not found:
        raise FileNotFoundError(f"{root}: no checkpoint-N folder (a VideoReward checkpoint holds model_config.json and checkpoint-N/)")
    if step in (None, -1):
        return found[-1]
    chosen = root / f"checkpoint-{step}"
    if chosen not in found:
        raise FileNotFoundError(f"{root}: no checkpoint-{step}; there are {[p.name for p in found]}")
    return chosen


# A checkpoint's weights are all of the wrapped model's (``model.pth``, their save_full_model) or
# only what training changed (``non_lora_state_dict.pth`` + ``adapter_model.safetensors``, their
# train.sh's default): the rest is the base's. A converted file says which in its metadata.
_LAYOUT_KEY = "cac_align_layout"


def _read_state(folder: Path, allow_pickle: bool, key: str) -> tuple[dict[str, Any], bool]:
    """``(state, partial)``: the checkpoint's tensors, and whether they are only the trained ones."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), "pt") as handle:
            partial = (handle.metadata() or {}).get(_LAYOUT_KEY) == "partial"
        return load_file(str(folder / "model.safetensors")), partial
    pickled = [p for p in (folder / "model.pth", folder / "non_lora_state_dict.pth") if p.is_file()]
    if not pickled:
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor model.pth nor non_lora_state_dict.pth")
    if not allow_pickle:
        raise ValueError(
            f"{folder} holds its weights as a pickle ({pickled[0].name}). Set {key}.allow_pickle: true to read it once with "
            "torch.load(weights_only=True) (tensors only, no code), or convert it first: "
            "python -c \"from cac_align.rewards.video_reward import convert_checkpoint; convert_checkpoint('PATH')\""
        )
    if (folder / "model.pth").is_file():
        return torch.load(folder / "model.pth", map_location="cpu", weights_only=True), False
    if not (folder / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: non_lora_state_dict.pth without the adapter_model.safetensors saved beside it")
    state = torch.load(folder / "non_lora_state_dict.pth", map_location="cpu", weights_only=True)
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    for name, tensor in adapter.items():  # peft's saved names lack the adapter name
        state[re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", name)] = tensor
    return state, True


def convert_checkpoint(path: str | os.PathLike, step: int = -1) -> Path:
    """Write ``model.safetensors`` beside a checkpoint's pickled weights (``model.pth``, or
    ``non_lora_state_dict.pth`` with its adapter; read with ``weights_only=True``), so later loads
    need no pickle. Returns the file written."""
    from safetensors.torch import save_file

    folder = _checkpoint_folder(Path(path), step)
    state, partial = _read_state(folder, allow_pickle=True, key="convert_checkpoint")
    target = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(target), metadata={_LAYOUT_KEY: "partial" if partial else "full"})
    return target


# The base (Qwen2-VL-2B-Instruct, saved with transformers 4.x names: ``model.layers.*``,
# ``visual.*``) into our subclass's transformers-5 names. transformers maps these for its own
# Qwen2VLForConditionalGeneration by class name only; for a subclass it would leave the text model
# at random initialisation (harmless only when a checkpoint overwrites every weight).
_BASE_KEYS = {r"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"}


def load_video_reward(
    name_or_path: str,
    base_model: str | None = None,
    step: int = -1,
    dtype: str = "bfloat16",
    device: str = "auto",
    allow_pickle: bool = False,
    key: str = "reward.model.name",
    attn_implementation: str | None = None,
    merge_lora: bool = False,
) -> tuple[Any, Any, VideoAlignSettings]:
    """``(model, processor, settings)`` from a VideoReward checkpoint folder or hub id, as their
    ``create_model_and_processor`` + ``load_model_from_checkpoint`` build it: the base model and
    processor in ``dtype``, the reward tokens added and the embeddings resized, the LoRA wrapping
    their config describes, the checkpoint's weights (strictly: every name must match).

    The LoRA stays as the authors run it unless ``merge_lora``: unmerged, its weights in the
    model's dtype (their pinned peft 0.10.0 casts a new adapter to its base layer's dtype; peft 0.12
    and later keep adapters in float32 unless ``autocast_adapter_dtype=False``), so in bfloat16 every
    LoRA product is computed in bfloat16 as in their inference. ``merge_lora`` folds the adapters
    (kept in float32) into the weights once: a little faster per call, equal to theirs in float32,
    but in bfloat16 not their numbers (the merged weight rounds differently; docs/rewards.md gives
    the measured difference)."""
    import torch
    from transformers import AutoProcessor

    from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error

    source = check_weights_source(name_or_path, key)
    root = Path(source)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(source))
        except Exception as exc:  # noqa: BLE001  (any hub failure is "weights not found" for the user)
            raise weights_error(name_or_path, key, exc) from exc
    settings = VideoAlignSettings.from_json(root / "model_config.json")
    section = key.split(".model", 1)[0]
    base = check_weights_source(base_model or settings.base_model, f"{section}.base_model")
    target = resolve_device(device, f"{section}.model.device")
    try:
        processor = AutoProcessor.from_pretrained(base, padding_side="right")
        model = reward_model_class().from_pretrained(
            base, output_dim=settings.output_dim, dtype=resolve_dtype(dtype), use_safetensors=True, attn_implementation=attn_implementation,
            key_mapping=_BASE_KEYS,
        )
    except (OSError, ValueError) as exc:
        raise weights_error(base, f"{section}.base_model", exc) from exc
    processor.tokenizer.padding_side = "right"
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    model.resize_token_embeddings(len(processor.tokenizer))
    state, partial = _read_state(_checkpoint_folder(root, step), allow_pickle, section)
    state = _current_names(state)
    if settings.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = settings.lora
        config = LoraConfig(
            target_modules=_target_modules(model, _lora_exclude(lora), int(lora.get("num_lora_modules", -1))),
            r=int(lora.get("lora_r", 16)),
            lora_alpha=int(lora.get("lora_alpha", 32)),
            lora_dropout=0.0,
            use_rslora=bool(lora.get("use_rslora", False)),
            bias="none",
            modules_to_save=lora.get("lora_modules_to_save"),
        )
        model = get_peft_model(model, config, autocast_adapter_dtype=merge_lora)
    missing, unexpected = model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    if partial:  # as their loader: the base's own weights stand for what training did not save; LoRA must all be there
        missing = [name for name in missing if "lora_" in name]
    if missing or unexpected:
        raise ValueError(
            f"{root}: the checkpoint does not fit the model its model_config.json describes: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    if settings.lora is not None:
        # merged: the adapters folded into the weights; unmerged: the model with its LoRA layers in
        # place (what their PeftModel runs), without peft's wrapper, so it reads as the base class
        model = model.merge_and_unload() if merge_lora else model.get_base_model()
    model.to(device=target, dtype=resolve_dtype(dtype)).eval()
    return model, processor, settings


def build_tiny_qwen2_vl(seed: int = 0) -> Any:
    """A tiny random ``Qwen2VLForConditionalGeneration`` and its processor (VideoReward's base
    architecture, Qwen2-VL-2B, at toy size); the processor leaves frames of 3,136 to 12,845,056
    pixels at their size, as Qwen2-VL-2B's does. ``save_pretrained`` gives a base folder."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from cac_align.vlm.tiny import TINY_CHAT_TEMPLATE, TinyVLM, _finish, _mrope_section, _text_config, _token_ids, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        text_config=_text_config(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(16)}),
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = _finish(Qwen2VLForConditionalGeneration(config), tokenizer)
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, size=size),
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2, size=size, do_sample_frames=False, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return TinyVLM(model, processor)


def build_tiny_video_reward(seed: int = 0) -> tuple[Any, Any, VideoAlignSettings]:
    """A tiny random VideoReward built as :func:`load_video_reward` builds the real one: the tiny
    Qwen2-VL base, the reward tokens added, embeddings resized, a random ``rm_head``; with a
    made-up ``inference_config`` so normalisation is exercised."""
    import torch

    base = build_tiny_qwen2_vl(seed)
    model = reward_model_class()(base.model.config, output_dim=1)  # the released checkpoint's head
    model.load_state_dict(base.model.state_dict(), strict=False)  # everything but rm_head
    torch.manual_seed(seed + 1)
    torch.nn.init.normal_(model.rm_head.weight, std=0.2)
    processor = base.processor
    processor.tokenizer.padding_side = "right"
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    model.resize_token_embeddings(len(processor.tokenizer))
    settings = VideoAlignSettings(base_model=TINY_NAME, norm={"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -0.25, "MQ_std": 0.5, "TA_mean": 0.0, "TA_std": 4.0})
    return model.eval(), processor, settings


# ---------------------------------------------------------------------------------------
# The reward
# ---------------------------------------------------------------------------------------
@dataclass
class VideoRewardConfig:
    """Recipe section of ``name: video_reward``.

    Attributes:
        model: ``name``: the VideoReward checkpoint, a hub id (``KwaiVGI/VideoReward``) or its
            folder (``model_config.json`` + ``checkpoint-N/``); ``tiny-random:video_reward`` builds
            a tiny random one in-process (meaningless scores, for tests and demos). ``dtype``
            (bf16 is what the authors run; in bf16 a batch and single calls differ by up to
            ~0.03, so compare scores within one setting), ``device``, ``attn_implementation``.
            In-process only (``backend: hf``): the authors serve it no other way.
        base_model: where the base processor and config come from; None reads the checkpoint's
            ``model_name_or_path`` (``Qwen/Qwen2-VL-2B-Instruct``).
        step: which ``checkpoint-N`` (-1: the latest, as their loader picks).
        score: the scalar: "Overall" (VQ + MQ + TA, their sum), "VQ", "MQ" or "TA".
        use_norm: standardise each dimension with the checkpoint's ``inference_config`` (their
            default); False gives the head's raw outputs.
        fps, num_frames, max_pixels: frame sampling; None takes the checkpoint's (2 fps, no fixed
            count, 200,704 pixels a frame). ``fps`` and ``num_frames`` exclude each other.
        authors_repo: your checkout of github.com/KwaiVGI/VideoAlign (the prompt is read from its
            ``prompt_template.py``); None reads ``$VIDEOALIGN_REPO``; with neither, our paraphrase.
        allow_pickle: read a ``model.pth`` checkpoint (``torch.load(weights_only=True)``).
        merge_lora: fold the checkpoint's LoRA into the weights at load (float32 adapters, merged,
            then cast). Off by default: the LoRA runs unmerged in ``model.dtype``, as the authors'
            inference runs it, so bfloat16 scores are theirs; merged bfloat16 scores differ from
            theirs by up to a few hundredths (docs/rewards.md). In float32 both agree.
        batch_size: videos per forward pass.
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="KwaiVGI/VideoReward"))
    base_model: str | None = None
    step: int = -1
    score: str = "Overall"
    use_norm: bool = True
    fps: float | None = None
    num_frames: int | None = None
    max_pixels: int | None = None
    authors_repo: str | None = None
    allow_pickle: bool = False
    merge_lora: bool = False
    batch_size: int = 2
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        if self.model.backend != "hf":
            raise ValueError("model.backend: VideoReward runs in-process only ('hf'); its authors serve it no other way")
        if self.score not in ("Overall",) + DIMENSIONS:
            raise ValueError(f"score must be one of {('Overall',) + DIMENSIONS}, got {self.score!r}")
        if self.fps is not None and self.num_frames is not None:
            raise ValueError("set fps or num_frames, not both (their inference refuses both)")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.num_frames is not None and self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if self.max_pixels is not None and self.max_pixels < 28 * 28:
            raise ValueError(f"max_pixels must be >= 784, got {self.max_pixels}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class VideoReward(BatchReward):
    """VideoReward's VQ / MQ / TA (and their sum) for each video, in-process.

    ``details[i]``: ``VQ``, ``MQ``, ``TA``, ``Overall`` (normalised when ``use_norm``),
    ``raw`` (the head's three outputs), ``frame_indices``, ``frame_size`` ([H, W] sent),
    ``prompt_source``.
    """

    name = "video_reward"
    score_range = (-math.inf, math.inf)

    def __init__(
        self,
        model: Any,
        processor: Any,
        settings: VideoAlignSettings,
        template: str = _BUILT_IN_TEMPLATE,
        prompt_source: str = BUILT_IN,
        score: str = "Overall",
        use_norm: bool = True,
        fps: float | None = None,
        num_frames: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 2,
        source_fps: float | None = 16.0,
    ):
        if "{text_prompt}" not in template:
            raise ValueError("the VideoReward template needs a {text_prompt} placeholder")
        self.model, self.processor, self.settings = model, processor, settings
        self.template, self.prompt_source = template, prompt_source
        self.score, self.use_norm = score, use_norm
        self.num_frames = num_frames if num_frames is not None else (None if fps is not None else settings.num_frames)
        self.fps = None if self.num_frames is not None else (fps or settings.fps or 2.0)
        self.max_pixels = max_pixels or settings.max_pixels
        self.batch_size, self.source_fps = batch_size, source_fps
        self.reward_ids = processor.tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS))
        if self.use_norm and not settings.norm:
            log.warning("video_reward: the checkpoint has no inference_config; scores are the head's raw outputs")

    def to(self, device: Any) -> "VideoReward":
        self.model.to(device)
        return self

    # -- what reaches the model ---------------------------------------------------------------
    def request(self, video: Video, prompt: str | None) -> dict:
        held = [token for token in REWARD_TOKENS if token in (prompt or "")]
        if held:  # the head would read the prompt's token instead of the template's
            return {"error": f"the prompt holds a reward token ({', '.join(held)})", "error_kind": ErrorKind.PROMPT}
        try:
            frames, indices = videoalign_frames(video, self.fps, self.num_frames, self.max_pixels)
        except VideoError as exc:
            return {"error": str(exc), "error_kind": ErrorKind.VIDEO}
        return {"frames": frames, "indices": indices, "text": self.template.format(text_prompt=prompt)}

    def inputs(self, requests: list[dict]) -> Any:
        """The processor's batch for requests made by :meth:`request` (what the model sees)."""
        chats = [[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": r["text"]}]}] for r in requests]
        texts = [self.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        return self.processor(
            text=texts, videos=[r["frames"] for r in requests], padding=True, return_tensors="pt", do_rescale=True, do_sample_frames=False,
            cap_pixels_per_frame=False,  # their processor (transformers 4.45) had no per-frame cap
        )

    def score_batch(self, requests: list[dict]) -> list[dict]:
        import torch

        good = [i for i, r in enumerate(requests) if "error" not in r]
        answers: list[dict] = [dict(r) if "error" in r else {} for r in requests]
        if not good:
            return answers
        batch = self.inputs([requests[i] for i in good])
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        with torch.inference_mode():
            raw = reward_logits(self.model, batch, self.reward_ids).float().cpu().numpy()
        for row, i in enumerate(good):
            values = dict(zip(DIMENSIONS, (float(x) for x in raw[row])))
            detail = {"raw": dict(values), "frame_indices": requests[i]["indices"], "frame_size": list(requests[i]["frames"].shape[-2:])}
            if self.use_norm and self.settings.norm:
                norm = self.settings.norm
                values = {d: (values[d] - norm[f"{d}_mean"]) / norm[f"{d}_std"] for d in DIMENSIONS}
            values["Overall"] = values["VQ"] + values["MQ"] + values["TA"]
            if not all(math.isfinite(v) for v in values.values()):
                answers[i] = {"error": f"non-finite reward {values}", "error_kind": ErrorKind.SCORE, **detail}
                continue
            answers[i] = {"score": values[self.score], **values, **detail}
        return answers

    def __call__(self, videos: Any, prompts: Any = None, metadata: Any = None) -> Any:
        out = super().__call__(videos, prompts, metadata)
        for entry in out.details:
            entry["prompt_source"] = self.prompt_source
        out.info = {"prompt_sources": {self.name: self.prompt_source}}
        return out


def build(config: VideoRewardConfig, key: str = "reward") -> VideoReward:
    name = config.model.name
    if name == TINY_NAME:
        from cac_align.loading import resolve_device, resolve_dtype

        model, processor, settings = build_tiny_video_reward()
        model.to(device=resolve_device(config.model.device, f"{key}.model.device"), dtype=resolve_dtype(model_dtype(config.model)))
    else:
        model, processor, settings = load_video_reward(
            name, config.base_model, config.step, model_dtype(config.model), config.model.device, config.allow_pickle, f"{key}.model.name",
            attn_implementation=config.model.attn_implementation, merge_lora=config.merge_lora,
        )
    template, source = resolve_template(config.authors_repo, settings.template_type, key)
    if source == BUILT_IN and name != TINY_NAME and name not in _warned_paraphrase:
        _warned_paraphrase.add(name)
        log.warning(
            "%s is asked in our paraphrase of VideoAlign's prompt, not the words it was trained on; set %s.authors_repo "
            "(or $%s) to a checkout of github.com/KwaiVGI/VideoAlign",
            name,
            key,
            AUTHORS_REPO_ENV,
        )
    return VideoReward(
        model,
        processor,
        settings,
        template=template,
        prompt_source=source,
        score=config.score,
        use_norm=config.use_norm,
        fps=config.fps,
        num_frames=config.num_frames,
        max_pixels=config.max_pixels,
        batch_size=config.batch_size,
        source_fps=config.source_fps,
    )


def judges(config: VideoRewardConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: video_reward`` section loads, for the memory plan
    (:mod:`cac_align.rewards.judges`), counted from its base's ``config.json`` (``base_model``,
    else Qwen/Qwen2-VL-2B-Instruct, the base KwaiVGI/VideoReward names; its reward head and LoRA
    are a few million parameters more, not counted): one forward per video, no generation, frames
    at ``fps`` (2 by default, at least 4) or ``num_frames``, within ``max_pixels`` (200,704 by
    default), its prompt (an estimate of 1,500 characters)."""
    import dataclasses

    from cac_align.rewards.judges import Frames, JudgeCall, fit_pixels, judge_of, text_tokens

    height, width = fit_pixels(video.height, video.width, config.max_pixels or 200704)
    count = config.num_frames or max(4, video.frames_at(config.fps or 2.0))
    call = JudgeCall((Frames(min(count, video.frames), height, width),), text_tokens("x" * 1500), 0, config.batch_size)
    judge = judge_of(config.model, f"{where}.model", call)
    if config.model.name == TINY_NAME:
        return [dataclasses.replace(judge, tiny=lambda: build_tiny_video_reward()[0])]
    return [dataclasses.replace(judge, config_name=config.base_model or "Qwen/Qwen2-VL-2B-Instruct")]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "video_reward",
    "cac_align.rewards.video_reward:VideoRewardConfig",
    "cac_align.rewards.video_reward:build",
    "VideoReward (VideoAlign): visual quality, motion quality, text alignment from a Qwen2-VL regression head",
    judges="cac_align.rewards.video_reward:judges",
)
