"""A reward of ours that hears, for tests that need one without a model (named by dotted path as
``audio_rewards:loudness`` from a sections file, or built directly)."""

from __future__ import annotations

import numpy as np

from cac_align.rewards.audio import AudioReward

__all__ = ["Loudness", "loudness", "save_tiny_clap"]


class Loudness(AudioReward):
    """The RMS of the soundtrack (all channels), in [0, 1]; keeps what it heard."""

    name = "loudness"
    score_range = (0.0, 1.0)
    needs_prompt = False
    reads_prompt = False

    def __init__(self, source_fps: float = 16.0):
        self.source_fps = source_fps
        self.heard: list = []

    def score_batch(self, requests):
        self.heard += [(video.audio.copy(), video.sample_rate) for video, _ in requests]
        return [{"score": rms(video.audio)} for video, _ in requests]


def rms(track) -> float:
    return float(np.sqrt(np.mean(np.asarray(track, dtype=np.float64) ** 2)))


def loudness(source_fps: float = 16.0) -> Loudness:
    return Loudness(source_fps)


def save_tiny_clap(folder, *, fused: bool = False, **extractor: object):
    """A tiny random ClapModel (HTSAT audio tower, RoBERTa text tower) and its processor saved to
    ``folder`` (safetensors): 48 kHz as LAION's extractor, 16 mel bins (the tiny tower's), 2 s before
    it would cut; ``extractor``: further ClapFeatureExtractor arguments (``truncation``).

    ``fused``: a FUSED one instead (``enable_fusion=True``: a long track's local chunks fused into its
    global mel) with a ``truncation="fusion"`` extractor: 16 kHz, 1 s clips, 64 mel bins (the fusion's
    shrunk mel is 64 wide), hop 320: 51 frames a clip."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    from cac_align.vlm.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(vocab_size=300)
    torch.manual_seed(0)
    fusion = {"enable_fusion": True} if fused else {}
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id, projection_dim=16),
        audio_config=dict(spec_size=64, num_mel_bins=64 if fused else 16, window_size=4, patch_size=4, patch_stride=(4, 4), hidden_size=32,
                          patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[1, 2], projection_dim=16, **fusion),
        projection_dim=16, **fusion,
    )
    ClapModel(config).save_pretrained(folder)
    if fused:
        features = ClapFeatureExtractor(feature_size=64, sampling_rate=16000, hop_length=320, max_length_s=1, fft_window_size=512,
                                        frequency_max=8000, truncation="fusion", **extractor)
    else:
        features = ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=2, fft_window_size=256, **extractor)
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    return folder

