"""In-process transformers models: loading a VLM and its processor by hub id or local path.

``load_vlm`` is the one loader every recipe uses for a vision-language model (the CaC
Qwen3-VL, UnifiedReward's Qwen2.5-VL / Qwen3-VL). Tests exercise it by saving a tiny model
(:mod:`cac_align.vlm.tiny`) to a temporary directory and loading it back, which is the same
``from_pretrained`` code path as a hub id.
"""

from __future__ import annotations

from typing import Any

from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error

__all__ = ["load_vlm"]


def load_vlm(
    name_or_path: str,
    *,
    dtype: str = "bfloat16",
    device: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    key: str = "model",
) -> tuple[Any, Any]:
    """Load an image-text-to-text model and its processor.

    Args:
        name_or_path: hub id (e.g. "Qwen/Qwen3-VL-8B-Instruct") or a local directory.
        dtype: "bfloat16", "float16" or "float32".
        device: "auto" (cuda if available), "cpu", "cuda:0", ...
        attn_implementation: e.g. "sdpa", "flash_attention_2", "eager"; None lets transformers pick.
        trust_remote_code: run code shipped with the checkpoint; off unless a recipe turns it on.
        key: the recipe key holding ``name_or_path``, named in errors.

    Returns:
        (model in eval mode on ``device``, processor)

    Raises:
        WeightsNotFoundError: the path does not exist, or the weights cannot be fetched.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    source = check_weights_source(name_or_path, key)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=resolve_dtype(dtype),
            attn_implementation=attn_implementation,
            use_safetensors=True,  # never unpickle weights
            **kwargs,
        )
    except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
        raise weights_error(name_or_path, key, exc) from exc
    model.to(resolve_device(device)).eval()
    return model, processor
