"""Counting the judges a run holds on its GPUs: each in-process reward model's weights (from its
``config.json`` on the meta device, or an encoder's safetensors header) and its KV cache at its
longest call (arithmetic); a served one holds nothing here (:func:`count_judges`). Which models a
reward section loads, each reward says (:func:`cac_align.rewards.registry.reward_judges`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cac_align.plan.configs import ENCODER_FILES, ConfigsNotFound, encoder_weight_files, judge_config_file
from cac_align.plan.counts import dtype_bytes


# Markup tokens around each group of frames a Qwen-VL prompt holds (vision start and end, a
# Qwen3-VL "<t seconds>" stamp): an estimate.
_FRAME_GROUP_MARKUP = 8


# Without a vision config that says its grid: a token per 28 x 28 pixels, 2 frames a group (Qwen2.5-VL's).
_DEFAULT_GRID = (14, 2, 2)


@dataclass(frozen=True)
class JudgeCount:
    """A judge as a GPU holds it (:func:`count_judge`).

    Attributes:
        judge: what the reward section says it loads (:class:`~cac_align.rewards.judges.JudgeModel`).
        weight_bytes: its parameters in its dtype (counted; 0 when it holds nothing on the GPU).
        kv_bytes: its KV cache at its longest call (arithmetic; 0 when it holds nothing on the GPU).
        tokens: the cache's length per row (the longest call's visual + text + generated tokens,
            rounded up to ``length_multiple`` for a static cache).
        visual_tokens: the visual tokens in it (estimated from the frames and the judge's vision grid).
        note: how it is held ("served", "on the CPU") when not on the GPU.
        dtype: the dtype it is held in (a tiny one's as built).
    """

    judge: Any
    weight_bytes: int
    kv_bytes: int
    tokens: int = 0
    visual_tokens: int = 0
    note: str = ""
    dtype: str = ""


def judge_module(judge: Any) -> Any:
    """The model a judge runs: the tiny one built (``tiny-random:...``), or its architecture built
    from its ``config.json`` on the meta device (no weight read, no memory taken).

    Raises:
        ConfigsNotFound: its ``config.json`` is not on this machine.
    """

    if judge.tiny is not None:  # built once a process (a tiny model's random weights are drawn from a fixed seed)
        if judge.name not in _TINY_JUDGES:
            _TINY_JUDGES[judge.name] = judge.tiny()
        return _TINY_JUDGES[judge.name]
    name = judge.config_name or judge.name
    found = judge_config_file(name)
    if found is None:
        raise ConfigsNotFound([(name, "config.json")])
    return _meta_judge(found, Path(found).stat().st_mtime_ns)


_TINY_JUDGES: dict[str, Any] = {}  # the tiny judges built, by name


@functools.lru_cache(maxsize=16)
def _meta_judge(config_file: str, stamp: int) -> Any:
    """An image-text-to-text model built from ``config_file`` on the meta device, once per process
    for a file as it is; read-only."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(Path(config_file).parent))
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def visual_tokens(frames: Sequence[Any], vision_config: Any) -> int:
    """The visual tokens of ``frames`` (:class:`~cac_align.rewards.judges.Frames`) for a Qwen-VL
    vision tower (an estimate): each side rounded to its grid of ``patch_size x spatial_merge_size``
    pixels, ``temporal_patch_size`` frames of a video in one group (an image is a group of its own),
    and a few markup tokens a group. Qwen2.5-VL at 480 x 832: 17 x 30 = 510 tokens a group; Qwen3-VL
    (32-pixel grid): 15 x 26 = 390."""
    patch, merge, temporal = (int(getattr(vision_config, key, default) or default)
                              for key, default in zip(("patch_size", "spatial_merge_size", "temporal_patch_size"), _DEFAULT_GRID))
    grid = patch * merge
    total = 0
    for part in frames:
        groups = part.count if part.images else math.ceil(part.count / temporal)
        cells = max(1, round(part.height / grid)) * max(1, round(part.width / grid))
        total += groups * (cells + _FRAME_GROUP_MARKUP)
    return total


_SAFETENSORS_ELEMENT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                        "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def safetensors_bytes(files: Sequence[str], dtype: Any) -> int:
    """The bytes the tensors of ``files`` take held in ``dtype``, from their headers only (shape and
    dtype of each; no tensor is read): ``numel x`` the bytes of ``dtype`` for a floating tensor
    (``from_pretrained(dtype=...)`` and ``load_state_dict`` into a model built in ``dtype`` both hold
    it so), ``numel x`` its stored element size for an integer or boolean one (kept as it is)."""
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for key in weights.keys():
                piece = weights.get_slice(key)
                kind = piece.get_dtype()
                size = dtype_bytes(dtype) if kind.startswith(("F", "BF")) else _SAFETENSORS_ELEMENT[kind]
                total += math.prod(piece.get_shape()) * size
    return total


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, rows: int, dtype: Any) -> int:
    """A KV cache: ``2 (K and V) x layers x kv_heads x head_dim x tokens x rows x dtype bytes``
    (arithmetic). Qwen3-VL-8B (36 layers, 8 KV heads of 128) in bf16: 144 KiB a token."""
    return 2 * layers * kv_heads * head_dim * tokens * rows * dtype_bytes(dtype)


def count_judge(judge: Any) -> JudgeCount:
    """Count a judge (:class:`~cac_align.rewards.judges.JudgeModel`) as its GPU holds it: its
    parameters in its dtype (a tiny one as built: ``numel x element_size`` of each parameter) and
    its KV cache at its longest call (:func:`kv_cache_bytes` of its text config at the call's
    tokens and rows). An encoder (``judge.encoder``): its safetensors header's tensors in its dtype
    (:func:`safetensors_bytes`) and no KV cache. A served judge, or one on the CPU, holds nothing on
    the GPU: 0.

    Raises:
        ConfigsNotFound: an in-process judge's ``config.json`` (an encoder's safetensors file) is not
            on this machine.
    """
    if not judge.in_process:
        return JudgeCount(judge, 0, 0, note="served")
    if not judge.on_gpu:
        return JudgeCount(judge, 0, 0, note="on the CPU")
    if judge.encoder and judge.tiny is not None:  # a tiny random encoder: as built, no KV cache
        params = list(judge_module(judge).parameters())
        return JudgeCount(judge, sum(p.numel() * p.element_size() for p in params), 0, dtype=str(params[0].dtype).removeprefix("torch."))
    if judge.encoder:  # no generation, no KV cache: its weights from its safetensors header(s)
        files = encoder_weight_files(judge.name)
        if files is None:
            raise ConfigsNotFound([(judge.name, ENCODER_FILES)])
        return JudgeCount(judge, safetensors_bytes(files, judge.dtype), 0, dtype=judge.dtype)
    model = judge_module(judge)
    params = list(model.parameters())
    if judge.tiny is not None:  # as built: its own dtypes
        weights, dtype = sum(p.numel() * p.element_size() for p in params), params[0].dtype
    else:
        weights, dtype = sum(p.numel() for p in params) * dtype_bytes(judge.dtype), judge.dtype
    text = model.config.get_text_config()
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    call = judge.call
    seen = visual_tokens(call.frames, getattr(model.config, "vision_config", None))
    tokens = seen + call.text_tokens + call.new_tokens
    if judge.cache != "dynamic":  # a static cache is as long as its prompt and budget, rounded up
        tokens = -(-tokens // judge.length_multiple) * judge.length_multiple
    kv = kv_cache_bytes(int(text.num_hidden_layers), kv_heads, head_dim, tokens, call.rows, dtype)
    return JudgeCount(judge, int(weights), kv, tokens, seen, dtype=str(dtype).removeprefix("torch."))


def judge_models(sections: Mapping[str, Any], video: Any) -> tuple[list[Any], list[Any]]:
    """The judges ``sections`` load and the sections whose models are unknown, said by each reward."""
    from cac_align.rewards.judges import UnknownJudge
    from cac_align.rewards.registry import reward_judges

    said = [judge for where, section in sections.items() for judge in reward_judges(section, where, video)]
    return [j for j in said if not isinstance(j, UnknownJudge)], [j for j in said if isinstance(j, UnknownJudge)]


def _judge_missing(judge: Any) -> tuple[str, str] | None:
    """``(name, what)`` when ``judge`` is held on the GPU and what the plan counts it from is not on
    this machine: a judge's ``config.json``, an encoder's safetensors file(s); None otherwise."""
    if not judge.on_gpu or judge.tiny is not None:
        return None
    if judge.encoder:
        return None if encoder_weight_files(judge.name) is not None else (judge.name, ENCODER_FILES)
    name = judge.config_name or judge.name
    return None if judge_config_file(name) is not None else (name, "config.json")


def missing_configs(judges: Sequence[Any]) -> list[tuple[str, str]]:
    """``(name, what)`` of each judge on the GPU whose config (an encoder's weights) is not on this machine."""
    missing: list[tuple[str, str]] = []
    for judge in judges:
        need = _judge_missing(judge)
        if need is not None and need not in missing:
            missing.append(need)
    return missing


def _not_here(judge: Any, name: str) -> str:
    """Why ``judge`` is not counted: what is missing, and how to get it."""
    from cac_align.loading import looks_like_path

    if not judge.encoder:
        return f"{name}'s config.json is not on this machine: hf download {name} --include '*.json'"
    if not name:
        return f"{judge.where} is not set (its safetensors weights are what the plan counts)"
    if name.endswith(".safetensors") or looks_like_path(name):
        return f"{name}: no safetensors weights there (a .safetensors file, or a folder with model.safetensors or its shards)"
    return f"{name}'s safetensors weights are not on this machine: hf download {name} --include '{ENCODER_FILES}'"


def count_judges(sections: Mapping[str, Any], video: Any, strict: bool = True) -> tuple[list[JudgeCount], list[Any]]:
    """The judges of ``sections`` (recipe key -> reward section: the ``reward``, each of
    ``eval_rewards``), counted (:func:`count_judge`), and those that are not: the sections whose
    models are not known before they load (:class:`~cac_align.rewards.judges.UnknownJudge`) and,
    unless ``strict``, the judges whose ``config.json`` (an encoder's safetensors weights) is not on
    this machine.

    Args:
        video: the videos they score (:class:`~cac_align.rewards.judges.VideoShape`).
        strict: raise for a missing config instead of leaving that judge uncounted.

    Raises:
        ConfigsNotFound: ``strict``, naming every in-process judge whose ``config.json`` (an
            encoder's weights) is not here.
    """
    from cac_align.rewards.judges import UnknownJudge

    judges, unknown = judge_models(sections, video)
    missing = missing_configs(judges)
    if missing and strict:
        raise ConfigsNotFound(missing)
    needs = [(j, _judge_missing(j)) for j in judges]
    counted = [count_judge(j) for j, need in needs if need is None]
    unknown += [UnknownJudge(j.where, _not_here(j, need[0])) for j, need in needs if need is not None]
    return counted, unknown
