"""Chats -> model inputs with loss masks on the assistant's tokens only (SFT and GRPO share it).

A chat is rendered with the processor's own chat template and cut into segments at each
assistant answer: ``[context, answer, context, answer, ...]``. Context segments (system, user
text, images, videos) go through the processor, which expands each image/video placeholder
into its vision tokens and timestamps; answer segments (the answer text plus the template's
end-of-turn marker) go through the tokenizer. Their ids are concatenated, and the labels are
the ids on answer segments and -100 elsewhere. A test checks that the concatenation equals
the processor's encoding of the whole conversation, i.e. training sees the very tokens that
inference (:class:`~cac_align.vlm.hf.HFBackend`) feeds the model.

:func:`collate` right-pads a batch and concatenates the vision tensors in order, so samples with
different frame counts, images and videos share a batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = [
    "EncodedChat",
    "IGNORE_INDEX",
    "answer_part",
    "collate",
    "concat_parts",
    "encode_chat",
    "encode_context",
    "segment_chat",
    "status_token_mask",
    "window_attention_target",
]

IGNORE_INDEX = -100
_STATUS_VALUE = re.compile(r'"status"\s*:\s*"([^"]*)"', re.IGNORECASE)
_VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@dataclass
class EncodedChat:
    """One chat as 1-d ``input_ids`` / ``labels``, other 1-d per-token tensors the processor
    returns (Qwen3-VL's ``mm_token_type_ids``, 0 on text), its vision tensors, and ``status``:
    a 1-d bool tensor marking the answer tokens that spell a ``"status"`` value (None: none).

    ``window_query`` / ``window``: where an abnormal answer's verdict should look
    (:func:`window_attention_target`; -1 / None when the chat has no such answer)."""

    input_ids: Any
    labels: Any
    vision: dict[str, Any]
    token_extras: dict[str, Any] = field(default_factory=dict)
    status: Any = None
    window_query: int = -1
    window: Any = None


def segment_chat(processor: Any, messages: Sequence[dict]) -> list[tuple[str, bool, list[dict]]]:
    """Cut the rendered chat into ``(text, is_answer, messages_whose_media_it_holds)`` segments.

    The answer segment of assistant message ``i`` is what the template adds after the
    generation prompt of ``messages[:i]``, trailing whitespace excluded.
    """
    from cac_align.vlm.hf import render_chat

    segments: list[tuple[str, bool, list[dict]]] = []
    position, first_context = 0, 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(processor, messages[:i], add_generation_prompt=True)
        through = render_chat(processor, messages[: i + 1], add_generation_prompt=False)
        if not through.startswith(before) or not before.startswith(_prefix(segments)):
            raise ValueError(
                "the chat template does not render earlier turns as a prefix of later ones, so assistant "
                f"tokens cannot be located (message {i})"
            )
        answer = through[len(before) :].rstrip()
        segments.append((before[position:], False, list(messages[first_context:i])))
        segments.append((answer, True, []))
        position, first_context = len(before) + len(answer), i + 1
    full = render_chat(processor, messages, add_generation_prompt=False)
    if not full.startswith(_prefix(segments)):
        raise ValueError("the chat template renders the whole chat differently from its turns")
    if full[position:]:
        segments.append((full[position:], False, list(messages[first_context:])))
    return segments


def _prefix(segments: list[tuple[str, bool, list[dict]]]) -> str:
    return "".join(text for text, _, _ in segments)


def encode_context(processor: Any, text: str, holder: Sequence[dict]) -> EncodedChat:
    """A context segment (rendered template text whose media are in the ``holder`` messages)
    through the processor: ids with their vision tensors and per-token extras, labels all -100."""
    import torch

    from cac_align.vlm.hf import processor_inputs

    encoded = processor_inputs(processor, [text], [list(holder)], padding=False)
    ids = encoded["input_ids"][0].long()
    extras = {
        key: value[0]
        for key, value in encoded.items()
        if key not in ("input_ids", "attention_mask") and torch.is_tensor(value) and value.shape == encoded["input_ids"].shape
    }
    vision = {key: encoded[key] for key in _VISION_KEYS if key in encoded}
    return EncodedChat(ids, torch.full_like(ids, IGNORE_INDEX), vision, extras)


def answer_part(token_ids: Sequence[int] | Any) -> EncodedChat:
    """An assistant segment from its token ids, labelled with those ids (the loss is on them)."""
    import torch

    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    return EncodedChat(ids, ids.clone(), {})


def concat_parts(parts: Sequence[EncodedChat]) -> EncodedChat:
    """Join segments in order: ids and labels concatenated, vision tensors concatenated per key
    (in placeholder order), and a per-token extra is 0 on segments that lack it (answer text has
    no media tokens)."""
    import torch

    vision: dict[str, list[Any]] = {}
    for part in parts:
        for key, value in part.vision.items():
            vision.setdefault(key, []).append(value)
    token_extras = {
        key: torch.cat([p.token_extras.get(key, torch.zeros_like(p.input_ids)) for p in parts])
        for key in sorted({k for p in parts for k in p.token_extras})
    }
    status = None
    if any(p.status is not None for p in parts):
        status = torch.cat([p.status if p.status is not None else torch.zeros_like(p.input_ids, dtype=torch.bool) for p in parts])
    return EncodedChat(
        torch.cat([p.input_ids for p in parts]),
        torch.cat([p.labels for p in parts]),
        {k: torch.cat(v) for k, v in vision.items()},
        token_extras,
        status,
    )


def status_token_mask(tokenizer: Any, text: str) -> tuple[list[int], list[bool] | None]:
    """The answer's token ids, and which of them spell the value of a ``"status"`` key
    (``"abnormal"`` -> the tokens of ``abnormal``; the quotes and the key are not marked).

    A token is marked when its character span overlaps the value (the fast tokenizer's offsets),
    so a token that merges a quote with the value's first letters counts too. A tokenizer that
    cannot give offsets (a slow one) gives marks None."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None
    values = [m.span(1) for m in _STATUS_VALUE.finditer(text)]
    marks = [any(start < end_v and end > start_v for start_v, end_v in values) for start, end in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), marks


def window_attention_target(processor: Any, parts: Sequence[EncodedChat], answers: dict[int, str]) -> tuple[int, Any]:
    """Where the verdict of the chat's first video answer should look: ``(query, window)``.

    The first context segment that holds a video (turn 1's scan; a clip's when the chat starts
    with one) and the answer right after it. When that answer is abnormal and names frames
    (``"Attributed Time Region"`` on that video's frame grid), ``window`` (1-d bool over the
    whole chat's tokens) marks the video tokens of the temporal patches that hold those frames
    (the processor packs ``temporal_patch_size`` frames into one group of
    ``grid_h x grid_w / merge_size^2`` tokens), and ``query`` is the position whose next-token
    prediction is the status value's first token: the position the verdict is read from.
    Anything else (a normal answer, no frames, no video, no status marks, a processor without
    a video token id) gives ``(-1, None)``. ``answers`` maps part index -> answer text.
    Used by stage 2's ``train.attention_loss_weight`` (:func:`~cac_align.jobs.train_cac.window_attention_loss`)."""
    import torch

    from cac_align.cac.judgment import parse_judgment

    none: tuple[int, Any] = (-1, None)
    video_id = getattr(processor, "video_token_id", None)
    video_processor = getattr(processor, "video_processor", None)
    merge = getattr(video_processor, "merge_size", None)
    temporal = getattr(video_processor, "temporal_patch_size", None)
    if video_id is None or not merge or not temporal:
        return none
    offset = 0
    for index, part in enumerate(parts):
        if "video_grid_thw" in part.vision:
            break
        offset += part.input_ids.numel()
    else:
        return none
    if index + 1 not in answers or parts[index + 1].status is None or not parts[index + 1].status.any():
        return none
    judgment = parse_judgment(answers[index + 1], 1)
    if judgment.status != "abnormal":
        return none
    groups_n, height, width = (int(v) for v in part.vision["video_grid_thw"][0])
    per_group = height * width // (merge * merge)
    positions = (part.input_ids == video_id).nonzero().flatten()[: groups_n * per_group]
    groups = sorted(
        {f // temporal for a in judgment.anomalies if a.frames for f in range(a.frames[0], a.frames[1] + 1)} & set(range(groups_n))
    )
    if not groups or len(positions) < groups_n * per_group:
        return none
    window = torch.zeros(sum(p.input_ids.numel() for p in parts), dtype=torch.bool)
    for group in groups:
        window[offset + positions[group * per_group : (group + 1) * per_group]] = True
    answer_start = offset + part.input_ids.numel()
    query = answer_start + int(parts[index + 1].status.nonzero()[0]) - 1
    return query, window


def encode_chat(processor: Any, messages: Sequence[dict]) -> EncodedChat:
    """Token ids, assistant-only labels, vision tensors, status-token marks and the attention
    window of one chat (see the module doc and :func:`window_attention_target`)."""
    import torch

    parts, answers = [], {}
    for text, is_answer, holder in segment_chat(processor, messages):
        if is_answer:
            ids, marks = status_token_mask(processor.tokenizer, text)
            part = answer_part(ids)
            part.status = torch.tensor(marks, dtype=torch.bool) if marks is not None else None
            answers[len(parts)] = text
            parts.append(part)
        else:
            parts.append(encode_context(processor, text, holder))
    encoded = concat_parts(parts)
    encoded.window_query, encoded.window = window_attention_target(processor, parts, answers)
    return encoded


def collate(
    encoded: Sequence[EncodedChat],
    pad_token_id: int,
    padding_side: str = "right",
    status_mask: bool = False,
    attention_window: bool = False,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Pad a batch (right for training, left for generation); vision tensors concatenated in
    sample order (the model consumes them in the order their placeholders appear).

    ``status_mask=True`` adds ``status_mask`` (batch x length, bool): the status tokens that
    :func:`~cac_align.jobs.train_cac.weighted_token_loss` weights. ``attention_window=True`` adds
    ``window_query`` (batch, long; -1 = row not supervised) and ``window_tokens`` (batch x
    length, bool), the padded :func:`window_attention_target` of each row, for
    :func:`~cac_align.jobs.train_cac.window_attention_loss`. Neither is a model input: the trainer
    takes them out before the forward pass. ``pad_to_multiple_of`` pads the length up to a
    multiple of that many tokens (a static KV cache's length bucket)."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(e.input_ids.numel() for e in encoded)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(encoded)

    def span(e: EncodedChat) -> slice:
        n = e.input_ids.numel()
        return slice(0, n) if padding_side == "right" else slice(length - n, length)

    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    for row, e in enumerate(encoded):
        input_ids[row, span(e)] = e.input_ids
        labels[row, span(e)] = e.labels
        attention[row, span(e)] = 1
    out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    for key in sorted({k for e in encoded for k in e.token_extras}):
        dtype = next(e.token_extras[key].dtype for e in encoded if key in e.token_extras)
        extra = torch.zeros((batch, length), dtype=dtype)
        for row, e in enumerate(encoded):
            if key in e.token_extras:
                extra[row, span(e)] = e.token_extras[key]
        out[key] = extra
    if status_mask:
        if any(e.status is None for e in encoded):
            raise ValueError("status tokens are not marked in this batch: train.status_loss_weight needs a fast tokenizer (character offsets)")
        marks = torch.zeros((batch, length), dtype=torch.bool)
        for row, e in enumerate(encoded):
            marks[row, span(e)] = e.status
        out["status_mask"] = marks
    if attention_window:
        query = torch.full((batch,), -1, dtype=torch.long)
        window = torch.zeros((batch, length), dtype=torch.bool)
        for row, e in enumerate(encoded):
            if e.window is not None and e.window_query >= 0:
                start = span(e).start
                query[row] = start + e.window_query
                window[row, span(e)] = e.window
        out["window_query"], out["window_tokens"] = query, window
    for key in _VISION_KEYS:
        parts = [e.vision[key] for e in encoded if key in e.vision]
        if parts:
            out[key] = torch.cat(parts)
    return out
