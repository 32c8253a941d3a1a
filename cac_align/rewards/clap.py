"""``clap``: how well a video's soundtrack matches its prompt, by CLAP (text-audio alignment).

CLAP (Wu, Chen, Zhang et al., "Large-scale Contrastive Language-Audio Pretraining with Feature Fusion
and Keyword-to-Caption Augmentation", ICASSP 2023; LAION's checkpoints, e.g.
``laion/larger_clap_general``) embeds a sound and a text into one space: each encoder's pooled output
goes through its projection and is L2-normalized, and the similarity the model was trained on is
their dot product, the cosine of the two projected embeddings. That cosine is the score here, as the
LAION authors define the audio-text similarity (their ``laion_clap`` package's
``get_audio_embedding_from_data`` / ``get_text_embedding``, L2-normalized, then a dot product), as
the "CLAP score" of text-to-audio evaluations computes it, and as verl-omni's native ``clap`` reward
(``verl_omni/utils/reward_score/clap.py``, commit 3a07a3d) and OmniNFT score generated sound.

The model runs through transformers' own ``ClapModel`` and ``ClapProcessor`` (``from_pretrained`` of
a hub id or a local folder). CLAP's feature extractor takes 48 kHz and does not resample: a track at
another rate is resampled here (:func:`cac_align.rewards.audio.resample_audio`, polyphase) and mixed
to mono before the processor sees it. A track longer than the extractor's ``max_length_s`` (10 s for
LAION's) is heard as its first ``max_length_s`` (its head, cut here, not the extractor's random crop
or random fused chunks), and ``is_longer`` is said from each track's real length
(:func:`clap_is_longer`), never the extractor's random pick: a score depends neither on the global
RNG nor on the other tracks of its batch.

Score range [-1, 1]; modality ``audio``; reads the prompt. A sample without a usable soundtrack is
invalid (``error_kind`` ``audio``: :mod:`cac_align.rewards.audio`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cac_align.rewards.audio import AudioReward, mono, resample_audio
from cac_align.video import Video

__all__ = ["CLAP_RATE", "ClapConfig", "ClapReward", "build", "clap_is_longer"]

CLAP_RATE = 48_000  # the rate ClapFeatureExtractor's mel filters are built for (LAION's checkpoints)


@dataclass
class ClapConfig:
    """Config of the ``clap`` reward.

    Attributes:
        model: a hub id or a local folder holding a ``ClapModel`` and its ``ClapProcessor``
            (``laion/larger_clap_general``: verl-omni's default for its clap reward).
        device: "auto" (the GPU if there is one), "cpu", "cuda", "cuda:N".
        dtype: the model's dtype (float32, bfloat16, float16).
        batch_size: videos per forward.
        tolerance_s: how much shorter than the video a soundtrack may be (None: one video frame + 0.05 s).
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    model: str = "laion/larger_clap_general"
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8
    tolerance_s: float | None = None
    source_fps: float = 16.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tolerance_s is not None and self.tolerance_s < 0:
            raise ValueError(f"tolerance_s must be >= 0 (or null: one frame), got {self.tolerance_s}")


def clap_is_longer(samples: int, extractor: Any) -> bool:
    """Whether ClapFeatureExtractor (transformers 5.24, ``_get_input_mel``) calls a track of ``samples``
    long: longer than ``nb_max_samples`` (``max_length_s x sampling_rate``); with ``truncation="fusion"``
    not when its mel has as many frames as a whole clip (``1 + samples // hop_length == 1 +
    nb_max_samples // hop_length``: the extractor then uses it whole). Without the extractor's random
    pick of a track when none is long: the model's fusion of local chunks (``enable_fusion``) applies to
    a long track only."""
    limit, hop = int(extractor.nb_max_samples), int(extractor.hop_length)
    if samples <= limit:
        return False
    return extractor.truncation != "fusion" or samples // hop != limit // hop


class ClapReward(AudioReward):
    """The cosine of CLAP's projected audio and text embeddings of each soundtrack and its prompt."""

    name = "clap"
    score_range = (-1.0, 1.0)
    modality = "audio"
    reads_prompt = True
    needs_prompt = True
    sample_rates = None  # it resamples to 48 kHz

    def __init__(self, model: Any, processor: Any, batch_size: int = 8, tolerance_s: float | None = None, source_fps: float = 16.0):
        self.model, self.processor = model.eval(), processor
        self.batch_size, self.tolerance_s, self.source_fps = batch_size, tolerance_s, source_fps
        self.rate = int(getattr(processor.feature_extractor, "sampling_rate", CLAP_RATE))

    def to(self, device: Any) -> "ClapReward":
        self.model.to(device)
        return self

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        import torch

        extractor = self.processor.feature_extractor
        waves = [resample_audio(mono(video.audio), video.sample_rate, self.rate) for video, _ in requests]
        # Deterministic, and each sample's score its own whatever the batch: the extractor crops a long
        # track at random (rand_trunc) or fuses random chunks of it (fusion), and with fusion, when no
        # track of the batch is long, marks a random one as long. Each track is cut to its head here,
        # so the extractor draws nothing, and is_longer is said from the tracks' real lengths.
        limit = int(extractor.nb_max_samples)
        audio = extractor([wave[:limit] for wave in waves], sampling_rate=self.rate, return_tensors="pt")
        audio["is_longer"] = torch.tensor([[clap_is_longer(wave.shape[0], extractor)] for wave in waves])
        # CLAP's text tower pools its first token (RoBERTa's <s>): prompts are padded on the right
        inputs = {
            **self.processor.tokenizer([prompt for _, prompt in requests], return_tensors="pt", padding=True, truncation=True, padding_side="right"),
            **audio,
        }
        device, dtype = next(self.model.parameters()).device, next(self.model.parameters()).dtype
        inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model(**inputs)
        # CLAP's similarity: the dot product of the L2-normalized projections (ClapModel normalizes its
        # audio_embeds / text_embeds; normalized again here so the score is a cosine whatever it returns)
        audio = torch.nn.functional.normalize(out.audio_embeds.float(), dim=-1)
        text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        cosines = (audio * text).sum(dim=-1).cpu().tolist()
        answers = []
        for (video, _), cosine in zip(requests, cosines):
            if not np.isfinite(cosine):
                answers.append({"error": f"CLAP gave a non-finite similarity ({cosine})", "error_kind": "score"})
                continue
            answers.append({"score": float(cosine), "clap_cosine": float(cosine), "sample_rate": int(video.sample_rate), "heard_at": self.rate})
        return answers


def build(config: ClapConfig, key: str = "reward") -> ClapReward:
    """Load the CLAP model and processor named by ``config.model`` (transformers' ``from_pretrained``,
    safetensors only: a checkpoint with only ``pytorch_model.bin`` is refused)."""
    from transformers import ClapModel, ClapProcessor

    from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error

    source = check_weights_source(config.model, f"{key}.model")
    try:
        model = ClapModel.from_pretrained(source, dtype=resolve_dtype(config.dtype), use_safetensors=True)  # safetensors only: never a pickle
        processor = ClapProcessor.from_pretrained(source)
    except OSError as exc:
        raise weights_error(config.model, f"{key}.model", exc) from None
    model.to(resolve_device(config.device, f"{key}.device"))
    return ClapReward(model, processor, config.batch_size, config.tolerance_s, config.source_fps)


def judges(config: ClapConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: clap`` section loads, for the memory plan: CLAP, an encoder counted from
    its safetensors header(s) in ``dtype`` (:func:`cac_align.rewards.judges.encoder_judge`)."""
    from cac_align.rewards.judges import encoder_judge

    return [encoder_judge(f"{where}.model", config.model, config.dtype, config.device, config.batch_size)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "clap",
    "cac_align.rewards.clap:ClapConfig",
    "cac_align.rewards.clap:build",
    "CLAP (LAION): cosine of the projected audio and text embeddings of a soundtrack and its prompt, in [-1, 1]; hears",
    judges="cac_align.rewards.clap:judges",
)
