"""Tiny random Qwen3-VL and Qwen2.5-VL models, built offline for tests, demos and CI.

These are the real transformers classes (``Qwen3VLForConditionalGeneration`` with a
``Qwen3VLProcessor``; ``Qwen2_5_VLForConditionalGeneration`` with a ``Qwen2_5_VLProcessor``,
the UnifiedReward-qwen backbone) at toy size with seeded random weights. Nothing is
downloaded: the tokenizer is a byte-level BPE trained in-process with the ``tokenizers``
library on a small built-in corpus, and the chat template mirrors the video/image markup
of the real Qwen-VL templates (``<|vision_start|><|video_pad|><|vision_end|>``; the processor
expands ``<|video_pad|>`` into per-frame-pair blocks with ``<t seconds>`` stamps).

Random weights produce meaningless text and scores; use these only to exercise code paths.
``save_pretrained`` on the returned model and processor gives a directory that the ordinary
loader (:func:`cac_align.vlm.loading.load_vlm`) reads back, exactly as it reads a hub id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = [
    "SMALL_QWEN3_VL",
    "QWEN_LAYOUT_CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_CHAT_TEMPLATE",
    "TINY_VLM_BUILDERS",
    "TinyVLM",
    "build_tiny_tokenizer",
    "build_tiny_qwen3_vl",
    "build_tiny_qwen2_5_vl",
    "build_small_qwen3_vl",
]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Mirrors the structure of Qwen's chat template: role headers, text parts verbatim, each
# image/video part as vision_start + pad + vision_end; an assistant header for generation.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'video' or 'video' in part -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

# The same markup with the newlines of Qwen's own templates kept ("<|im_start|>user\n...<|im_end|>\n",
# and "<|im_start|>assistant\n" to generate): the layout engines that write Qwen's chat format
# themselves (ms-swift's template) produce. TINY_CHAT_TEMPLATE's whitespace control drops those
# newlines, and models built with it (cac-demo among them) are trained and scored without them.
QWEN_LAYOUT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Words the CaC and UnifiedReward prompts and answers use, so the tiny tokenizer splits them
# into a few tokens each, as a real tokenizer would.
_CORPUS = [
    "You are an expert in detecting anomalies in AI-generated videos.",
    "Object Distortion Human Distortion Motion Anomalies Physical Violations Character Anomalies",
    '{"status": "normal", "anomalies": []}',
    '{"status": "abnormal", "anomalies": [{"type": "Object Distortion", "time": [1.25, 2.5], '
    '"frames": [5, 10], "bbox": {"frame 0": [120, 340, 560, 780]}, "reason": "the cup warps", '
    '"region": "cup"}], "cot": "Step 1: scan the video. Step 2: look closer."}',
    "The video shows a person walking a dog in a park. Frame 3 is at 0.75 seconds.",
    "Alignment score: 4. Physics score: 3. Style score: 5. Final Score: 4.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 0.25 0.5 0.75",
    "normal abnormal status type time frames bbox reason region cot saliency salient non-salient",
    "hand finger face leg arm text sign letter phone car ball wall floor float teleport flicker",
]


def build_tiny_tokenizer(vocab_size: int = 1024, corpus: list[str] | None = None, split_digits: bool = False) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Qwen's special tokens, trained here.

    Byte-level means any text (JSON, digits, unicode) encodes and decodes losslessly.

    Args:
        vocab_size: BPE vocabulary size (special tokens included).
        corpus: texts to learn merges from (default: a small built-in corpus of CaC and
            UnifiedReward words).
        split_digits: every digit its own token, as Qwen's tokenizer does (a box coordinate
            "347" is "3", "4", "7": the first digit is a coarse position a small model learns
            fast, and no number needs its own embedding).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((corpus or _CORPUS) * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=TINY_CHAT_TEMPLATE,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    return tokenizer


@dataclass
class TinyVLM:
    """A tiny model with its processor; ``save_pretrained(path)`` writes both."""

    model: Any
    processor: Any

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)


def _token_ids(tokenizer: Any) -> dict[str, int]:
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _text_config(tokenizer: Any, **extra: Any) -> dict:
    # mrope_section splits head_dim / 2 = 8 rotary pairs over (time, height, width).
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _finish(model: Any, tokenizer: Any) -> Any:
    model.eval()
    gen = model.generation_config
    gen.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = None
    return model


def _mrope_section(head_dim: int) -> list[int]:
    """head_dim / 2 rotary pairs over (time, height, width), as Qwen's configs split them: [2, 3, 3] for 16."""
    half = head_dim // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


# Pixel budgets small enough that an 8-frame 64x96 clip costs a few dozen vision tokens.
_IMAGE_SIZE = {"shortest_edge": 32 * 32, "longest_edge": 128 * 128}
_VIDEO_SIZE = {"shortest_edge": 32 * 32 * 2, "longest_edge": 128 * 128 * 16}


def build_tiny_qwen3_vl(seed: int = 0) -> TinyVLM:
    """Tiny random ``Qwen3VLForConditionalGeneration`` + ``Qwen3VLProcessor`` (CaC's backbone)."""
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = build_tiny_tokenizer()
    config = Qwen3VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            deepstack_visual_indexes=[0, 1],
            num_position_embeddings=144,
        ),
        text_config=_text_config(
            tokenizer,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        ),
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, size=_IMAGE_SIZE),
        video_processor=Qwen3VLVideoProcessor(
            patch_size=16, merge_size=2, size=_VIDEO_SIZE, cap_pixels_per_frame=True, max_video_tokens=64
        ),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return TinyVLM(_finish(model, tokenizer), processor)


def build_tiny_qwen2_5_vl(seed: int = 0, head_dim: int = 16, split_digits: bool = False) -> TinyVLM:
    """Tiny random ``Qwen2_5_VLForConditionalGeneration`` + processor (UnifiedReward-qwen's backbone).

    ``head_dim=64`` (hidden 128, 2 heads) builds the variant a vLLM CPU server accepts (its
    attention refuses head dimension 16; tests/conformance); ``split_digits`` tokenizes every
    digit alone, as Qwen's tokenizers do (:func:`build_tiny_tokenizer`)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tiny_tokenizer(split_digits=split_digits)
    text = {} if head_dim == 16 else {"hidden_size": 2 * head_dim, "intermediate_size": 4 * head_dim, "num_attention_heads": 2,
                                      "num_key_value_heads": 1, "head_dim": head_dim}
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=text.get("hidden_size", 64),  # the text model's width
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        text_config=_text_config(
            tokenizer,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head_dim)},
        )
        | text,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, size=_IMAGE_SIZE),
        video_processor=Qwen2VLVideoProcessor(
            patch_size=14, merge_size=2, size=_VIDEO_SIZE, cap_pixels_per_frame=True, max_video_tokens=64
        ),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return TinyVLM(_finish(model, tokenizer), processor)


# ---------------------------------------------------------------------------------------
# A small Qwen3-VL to train from scratch (the shipped cac-demo model starts here)
# ---------------------------------------------------------------------------------------
# Sizes of the small model: the real Qwen3-VL classes, scaled so that CaC's three stages can
# train it on a 2-core CPU in about an hour (docs/cac_training.md, "The demo model").
SMALL_QWEN3_VL = dict(
    vision=dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=4, patch_size=16, spatial_merge_size=4, deepstack_visual_indexes=[]),
    text=dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    vocab_size=2048,
    tokens_per_frame=6,  # 128x192 frames: (128 / 64) x (192 / 64) merged tokens
)


def build_small_qwen3_vl(seed: int = 0, corpus: Sequence[str] = ()) -> TinyVLM:
    """A ~10M-parameter ``Qwen3VLForConditionalGeneration`` + processor with random weights.

    The architecture is Qwen3-VL's (ViT with 2-D RoPE and deepstack, MRoPE LLM), scaled down:
    see :data:`SMALL_QWEN3_VL`. Frames reach the model at 128x192 (``max_pixels`` 24576 on a
    64-pixel grid: 16-pixel patches merged 4x4), 6 tokens per pair of frames. The tokenizer is a
    digit-splitting byte-level BPE trained here on the tiny models' corpus and ``corpus``, the text
    the model will read and write (CaC's prompts and answers:
    :func:`cac_align.cac.train.setup.build_demo_start`, the starting point of
    ``recipes/cac/demo_*.yaml``, ``tiny-random:qwen3_vl_small``). Untrained, its output is meaningless.
    """
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    sizes = SMALL_QWEN3_VL
    tokenizer = build_tiny_tokenizer(sizes["vocab_size"], [*_CORPUS, *corpus], split_digits=True)
    vision, text = dict(sizes["vision"]), dict(sizes["text"])
    section = _mrope_section(text["head_dim"])
    config = Qwen3VLConfig(
        vision_config=dict(vision, temporal_patch_size=2, out_hidden_size=text["hidden_size"], num_position_embeddings=256),
        text_config=_text_config(
            tokenizer,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section, "mrope_interleaved": True},
        )
        | text,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    factor = vision["patch_size"] * vision["spatial_merge_size"]
    frame_pixels = sizes["tokens_per_frame"] * factor * factor
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=vision["patch_size"], merge_size=vision["spatial_merge_size"], size={"shortest_edge": factor * factor, "longest_edge": frame_pixels}
        ),
        video_processor=Qwen3VLVideoProcessor(
            patch_size=vision["patch_size"],
            merge_size=vision["spatial_merge_size"],
            size={"shortest_edge": factor * factor, "longest_edge": frame_pixels * 128},
            cap_pixels_per_frame=True,
            max_video_tokens=sizes["tokens_per_frame"],
        ),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return TinyVLM(_finish(model, tokenizer), processor)


# name after "tiny-random:" -> builder(seed): the VLMs recipes can name (``vlm.config``, ``make-tiny``); train-cac
# adds ``qwen3_vl_small``, the small model its tokenizer learned on CaC's text (cac_align.cac.train.setup)
TINY_VLM_BUILDERS = {
    "qwen3_vl": build_tiny_qwen3_vl,  # CaC reward model backbone
    "qwen2_5_vl": build_tiny_qwen2_5_vl,  # UnifiedReward-qwen backbone
}
