"""Decode attention that reads each key and value once: grouped-query heads packed per KV head.

Why (transformers 5.24, read in its code): a model with grouped KV heads (Qwen3-VL-8B: 32 query
heads, 8 KV heads) that generates on a static, compiled KV cache gets, at every decode step, a
4-D boolean mask over the whole preallocated cache (``masking_utils.create_causal_mask`` keeps
the mask when the cache is compileable and the query is one token). With a mask,
``integrations/sdpa_attention.py`` does not ask SDPA for ``enable_gqa`` (``use_gqa_in_sdpa``
wants no mask on CUDA), and its one-token shortcut (``pack_gqa``) is skipped while torch.compile
traces, so the compiled step takes ``repeat_kv``: every layer copies its whole K and V cache from
the KV heads to the query heads' count, every token, and SDPA then reads the copy. On one H200 the
judge's compiled decode step ran at about 9x the memory floor (docs/rewards.md, "Speed").

What this does instead, for a one-token query with G query heads per KV head: the G query
heads of a group become SDPA's query-length dimension against that group's own K and V,
``(B, Hkv*G, 1, D) -> (B, Hkv, G, D)`` against ``(B, Hkv, L, D)``, with the mask ``(B, 1, 1, L)``
broadcast over the group and no causal flag (the G rows are heads of one position, not G
positions). It is the shape trick of transformers' own ``pack_gqa`` (which transformers skips
while compiling), written here for the compiled step too. Everything else (prefill, a model without grouped heads, dropout, a
position bias, a soft cap, attention weights asked for) goes to transformers' own
``sdpa_attention_forward`` unchanged, so the numbers are the stock path's except for the float
rounding of one attention reduction.

It is registered under :data:`GROUPED_DECODE` in transformers' ``AttentionInterface`` (and its
mask in ``AttentionMaskInterface``: the same masks as sdpa) and set on a model's text decoder
only (:func:`use_grouped_decode`); the vision tower keeps its own attention.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GROUPED_DECODE", "grouped_decode_attention", "register", "text_attention", "use_grouped_decode", "use_stock_attention"]

GROUPED_DECODE = "cac_align_grouped_decode"
_STOCK = "sdpa"  # the implementation this one extends, and the one it is installed over
_FEATURES = ("position_bias", "softcap", "s_aux")  # sdpa extras that need the stock path


def grouped_decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """An ``AttentionInterface`` function: sdpa with one-token queries grouped per KV head.

    Args:
        module: the attention layer (read by the stock path only).
        query: (B, Hq, Lq, D); the grouped path takes Lq == 1 and Hq a multiple > 1 of Hkv.
        key, value: (B, Hkv, L, D), the cache as the layer returns it (not copied).
        attention_mask: None, or (B or 1, 1 or Hq, Lq, L) boolean (True: attend) or additive float.
        dropout, scaling, is_causal, kwargs: as transformers' ``sdpa_attention_forward``.

    Returns:
        (output (B, Lq, Hq, D) contiguous, None): the layout ``sdpa_attention_forward`` returns.
    """
    import torch

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    grouped = (
        q_len == 1
        and kv_heads < heads
        and heads % kv_heads == 0
        and not dropout
        and not kwargs.get("output_attentions", False)
        and all(kwargs.get(name) is None for name in _FEATURES)
        and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[2] == 1 and attention_mask.shape[1] in (1, heads)))
    )
    if not grouped:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    groups = heads // kv_heads
    # head h attends with KV head h // groups (repeat_kv's order): consecutive heads form a group
    packed = query.reshape(batch, kv_heads, groups, dim)
    mask = attention_mask
    if mask is not None and mask.shape[1] == heads:  # a per-head mask: its heads grouped the same way
        mask = mask.reshape(mask.shape[0], kv_heads, groups, mask.shape[-1])
    # is_causal stays False: the group's rows are heads of one token, all seeing the same keys
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, dropout_p=0.0, scale=scaling, is_causal=False)
    return out.reshape(out.shape[0], 1, heads, dim).contiguous(), None  # (B, Hkv, G, D) -> (B, 1, Hq, D)


def register() -> str:
    """Register :data:`GROUPED_DECODE` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_DECODE, grouped_decode_attention)
    AttentionMaskInterface.register(GROUPED_DECODE, sdpa_mask)  # it reads the masks sdpa reads
    return GROUPED_DECODE


def _text_config(model: Any) -> Any:
    config = model.config
    return getattr(config, "text_config", None) or config.get_text_config(decoder=True)


def _sub_config_key(model: Any) -> str | None:
    """The key of the text decoder's config among ``model.config.sub_configs`` (None: the model
    is a text model itself)."""
    config = model.config
    text = _text_config(model)
    for key in getattr(config, "sub_configs", {}) or {}:
        if getattr(config, key, None) is text:
            return key
    return None


def text_attention(model: Any) -> str:
    """The attention implementation of ``model``'s text decoder."""
    return _text_config(model)._attn_implementation


def _set_text_attention(model: Any, name: str) -> None:
    key = _sub_config_key(model)
    model.set_attn_implementation({key: name} if key is not None else name)


def use_grouped_decode(model: Any) -> bool:
    """Give ``model``'s text decoder the grouped decode attention, where it runs transformers'
    sdpa and has grouped KV heads; the vision tower is left as it is. Another implementation a
    recipe chose (eager, flash attention) is kept. Returns whether the text decoder uses it now.

    Tied to the model object: every backend and sampler on ``model`` generates with it. The
    setting is not written by ``save_pretrained`` (transformers keeps the implementation out of
    ``config.json``), so a saved checkpoint loads anywhere.
    """
    model = getattr(model, "get_base_model", lambda: model)()  # a peft wrapper: the model inside
    current = text_attention(model)
    if current == GROUPED_DECODE:
        return True
    text = _text_config(model)
    heads, kv_heads = getattr(text, "num_attention_heads", None), getattr(text, "num_key_value_heads", None)
    if current != _STOCK or not heads or not kv_heads or heads == kv_heads:
        return False
    register()
    _set_text_attention(model, GROUPED_DECODE)
    return True


def use_stock_attention(model: Any) -> None:
    """Put transformers' own sdpa back on ``model``'s text decoder (benchmarks and tests compare
    the two on one model)."""
    model = getattr(model, "get_base_model", lambda: model)()
    if text_attention(model) == GROUPED_DECODE:
        _set_text_attention(model, _STOCK)
