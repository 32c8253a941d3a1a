"""``sync`` (DeSync): its score equals its definition on hand-made logits, its windows say where the
sound slips, and Synchformer is read from a checkout (a stand-in of ours with its interface:
tests/fixtures/synchformer_checkout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cac_align.config import RecipeError
from cac_align.rewards.registry import build_reward, reward_config
from cac_align.rewards.sync import OFFSETS_S, SyncReward, desync_score, frames_at_25fps, log_mel, sync_windows
from cac_align.video import Video

CHECKOUT = Path(__file__).parents[1] / "fixtures" / "synchformer_checkout"
MODULE = "av_bench.synchformer.synchformer"


def _logits(*classes: int) -> np.ndarray:
    rows = np.full((len(classes), 21), -1.0)
    for row, k in zip(rows, classes):
        row[k] = 3.0
    return rows


def test_desync_is_one_over_one_plus_the_mean_absolute_offset_of_hand_made_logits():
    assert OFFSETS_S[0] == -2.0 and OFFSETS_S[10] == 0.0 and OFFSETS_S[20] == 2.0
    assert OFFSETS_S[13] == pytest.approx(0.6)
    # classes 10 and 13: offsets 0.0 and 0.6 s -> 1 / (1 + 0.3) = 0.769230...
    score, offsets = desync_score(_logits(10, 13))
    assert offsets == [0.0, 0.6] and score == pytest.approx(1 / 1.3)
    # classes 0 and 20: -2 and +2 s -> 1 / (1 + 2) = 1/3, the floor
    assert desync_score(_logits(0, 20))[0] == pytest.approx(1 / 3)
    assert desync_score(_logits(10, 10)) == (1.0, [0.0, 0.0])
    # classes 7 and 12: -0.6 and +0.4 s: |.| mean 0.5 -> 2/3 (a signed mean would give 1/1.1)
    assert desync_score(_logits(7, 12))[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"\(windows, 21\)"):
        desync_score(np.zeros((2, 20)))


def test_the_windows_are_segments_0_to_13_and_10_to_23_of_0_32_s_steps():
    # segment k covers [0.32 k, 0.32 k + 0.64): 0..13 -> [0, 4.8), 10..23 -> [3.2, 8.0)
    assert sync_windows() == [(0.0, 4.8), (3.2, 8.0)]


def _video(seconds: float, fps: float = 24.0) -> Video:
    frames = np.random.default_rng(0).integers(0, 255, (int(seconds * fps), 36, 48, 3), dtype=np.uint8)
    t = np.arange(int(seconds * 16000)) / 16000
    return Video(frames, fps, audio=(0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sample_rate=16000)


def test_the_verdict_names_the_window_where_the_sound_slips():
    reward = SyncReward(torch.nn.Linear(1, 1))
    # a 6 s video: window 1 in sync, window 2 off by 0.6 s -> the sound slips in [3.2, 6.0) s
    verdict = reward._verdict(_video(6.0), _logits(10, 13))
    assert verdict["score"] == pytest.approx(1 / 1.3)
    assert verdict["windows"] == [{"window_s": [0.0, 4.8], "offset_s": 0.0, "padding_only": False},
                                  {"window_s": [3.2, 8.0], "offset_s": 0.6, "padding_only": False}]
    assert (verdict["status"], verdict["window_s"], verdict["boxes"]) == ("abnormal", [3.2, 6.0], [])
    assert reward._verdict(_video(6.0), _logits(10, 10))["window_s"] is None
    # a 2 s video: the second window holds only padding, so it is not where anything slips
    short = reward._verdict(_video(2.0), _logits(10, 5))
    assert short["windows"][1]["padding_only"] and short["status"] == "normal" and short["score"] == pytest.approx(1 / 1.5)


def test_25_fps_takes_the_frame_on_screen_at_each_slots_centre():
    # 10 fps source: slot k's centre (k + 0.5) / 25 s shows source frame ceil((k + 0.5) * 10 / 25) - 1
    video = Video(np.zeros((10, 8, 8, 3), np.uint8), 10.0)
    assert frames_at_25fps(video).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9]


def test_the_log_mel_of_a_tone_peaks_in_its_band():
    # 1 kHz at 16 kHz: on the HTK scale, 1 kHz is 1000 mel of 2840 at Nyquist, so band ~ 128 * 1000 / 2840 - 1 = 44
    t = np.arange(10240) / 16000
    mel = log_mel(torch.from_numpy((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))[None])
    assert mel.shape == (1, 128, 66)
    assert abs(int(mel[0, :, 30].argmax()) - 44) <= 1
    assert float(mel[0, 0, 65]) == pytest.approx((0 - (-4.2677393)) / (2 * 4.5689974))  # the appended column


def _checkpoint(tmp_path: Path, offset_class: int) -> str:
    """The stand-in's weights with a head that always answers ``offset_class``."""
    from safetensors.torch import save_file

    from cac_align.rewards.sync import _import_synchformer

    module = _import_synchformer(CHECKOUT.resolve(), MODULE)  # as the reward imports it (transformers 4's names lent)
    torch.manual_seed(0)
    state = module.Synchformer().state_dict()
    state["head.weight"] = torch.zeros_like(state["head.weight"])
    state["head.bias"] = torch.from_numpy(_logits(offset_class)[0]).float()
    path = tmp_path / f"sync_{offset_class}.safetensors"
    save_file(state, str(path))
    return str(path)


def test_sync_reads_synchformer_from_a_checkout_and_scores_files_sound(tmp_path):
    section = {"name": "sync", "source_root": str(CHECKOUT), "module": MODULE, "device": "cpu"}
    off = build_reward({**section, "checkpoint": _checkpoint(tmp_path, 14)})  # +0.8 s in both windows
    assert (off.modality, off.reads_prompt, off.modalities) == ("both", False, {"sync": "both"})
    video = _video(5.0)
    out = off([video, Video(video.frames, 24.0)], None)
    assert out.valid.tolist() == [True, False] and out.details[1]["error_kind"] == "audio"
    assert out.scores[0] == pytest.approx(1 / 1.8)
    assert out.details[0]["offsets_s"] == [0.8, 0.8] and out.details[0]["window_s"] == [0.0, 5.0]
    in_sync = build_reward({**section, "checkpoint": _checkpoint(tmp_path, 10)})
    assert in_sync([video], None).scores[0] == 1.0
    # a file: its frames decoded at 25 fps (only those), its AAC track heard
    from cac_align.video import save_video

    path = save_video(video, tmp_path / "v.mp4", audio=video.audio, sample_rate=video.sample_rate)
    heard = off([str(path)], None)
    assert heard.valid.tolist() == [True] and heard.details[0]["offsets_s"] == [0.8, 0.8]


def test_a_sync_section_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        reward_config({"name": "sync", "checkpoint": "synchformer.pt"})
    with pytest.raises(RecipeError, match="source_root is not set"):
        build_reward({"name": "sync", "checkpoint": "x.safetensors"})
    with pytest.raises(RecipeError, match="no flow_grpo/audio_video_align/synchformer/synchformer.py there"):
        build_reward({"name": "sync", "source_root": str(CHECKOUT), "checkpoint": "x.safetensors"})
    with pytest.raises(RecipeError, match="checkpoint='missing.safetensors': no such file"):
        build_reward({"name": "sync", "source_root": str(CHECKOUT), "module": MODULE, "checkpoint": "missing.safetensors"})


def test_transformers_4_names_are_lent_to_the_checkouts_import_only():
    """A real Synchformer's AST tower imports ``transformers.pytorch_utils.find_pruneable_heads_and_indices``
    and calls ``PreTrainedModel.get_head_mask``, both gone from transformers 5; the stand-in does the
    same. The name is there while the checkout imports, gone after; ``get_head_mask`` is given to the
    checkout's classes only."""
    import transformers
    from transformers import PreTrainedModel, pytorch_utils

    from cac_align.rewards.sync import _head_mask, _import_synchformer, _pruneable_heads

    assert not hasattr(pytorch_utils, "find_pruneable_heads_and_indices")  # transformers 5: what the lending is for
    module = _import_synchformer(CHECKOUT.resolve(), MODULE)
    assert not hasattr(pytorch_utils, "find_pruneable_heads_and_indices")  # taken back
    assert module.find_pruneable_heads_and_indices is _pruneable_heads
    assert module.AudioTower.get_head_mask is _head_mask and not hasattr(PreTrainedModel, "get_head_mask")
    assert not hasattr(transformers.ASTPreTrainedModel, "get_head_mask")
    # by hand: 4 heads of 2, head 1 pruned before (3 left); pruning 1 and 3: head 3 is at row 2 now (columns 4, 5); 0, 1, 2, 3 stay
    heads, index = _pruneable_heads([1, 3], 3, 2, {1})
    assert heads == {3} and index.tolist() == [0, 1, 2, 3] and index.dtype == torch.long
    heads, index = _pruneable_heads({0}, 3, 2, set())
    assert heads == {0} and index.tolist() == [2, 3, 4, 5]
    tower = module.Synchformer().audio.to(torch.float16)
    assert _head_mask(tower, None, 3) == [None, None, None]
    per_head = _head_mask(tower, torch.tensor([1.0, 0.0]), 3)  # (heads,): the same for each of 3 layers
    assert per_head.shape == (3, 1, 2, 1, 1) and per_head.dtype == torch.float16 and per_head[2, 0, :, 0, 0].tolist() == [1.0, 0.0]
    per_layer = _head_mask(tower, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 2)
    assert per_layer.shape == (2, 1, 2, 1, 1) and per_layer[1, 0, :, 0, 0].tolist() == [0.0, 1.0]
    assert _head_mask(tower, torch.ones(2), 2, is_attention_chunked=True).shape == (2, 1, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="a head mask is"):
        _head_mask(tower, torch.ones(1, 2, 3), 2)
