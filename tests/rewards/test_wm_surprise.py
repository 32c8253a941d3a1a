"""``wm_surprise`` (WMReward's V-JEPA 2 surprise): on a tiny random ``VJEPA2Model`` saved to a folder, each
window's surprise equals the computation by hand from transformers' own modules (and controls that
break the causal context or the target's layer norm differ); the frames, windows and the rule of a
window that stands out, by hand; the evidence a scripted curve gives; the memory plan's row from the
safetensors header alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_video

from cac_align.rewards.registry import build_reward
from cac_align.rewards.wm_surprise import (
    WMSurpriseReward,
    build_tiny_vjepa2,
    frame_indices,
    standing_out,
    window_starts,
)
from cac_align.video import Video

WINDOW, CONTEXT, STRIDE = 4, 2, 1  # the tiny model's tubelets are 2 frames: 1 seen and 1 predicted per window


@pytest.fixture(scope="module")
def vjepa_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vjepa2")
    build_tiny_vjepa2(seed=3).save_pretrained(folder)  # model.safetensors + config.json, loaded by path below
    return folder


def _reward(folder, **settings):
    return build_reward({"name": "wm_surprise", "model": str(folder), "device": "cpu", "window": WINDOW, "context": CONTEXT, "stride": STRIDE,
                         **settings})


def _video(frames=10, seed=0):
    """Noise: each frame unlike the last, so what the context encoder may see (the future or not) matters."""
    return Video(np.random.default_rng(seed).integers(0, 256, (frames, 40, 56, 3), dtype=np.uint8), fps=8.0)


def _by_hand(model, video, *, causal=True, target_norm=True):
    """Every window's surprise from transformers' own modules, one window at a time, as WMReward
    computes it: frames resized by torchvision (bilinear, antialiased) to the crop, ImageNet-normalized;
    the encoder on the context frames only; the predictor; the encoder on the whole window, layer-normed,
    at the target tokens; 1 - cosine per token, averaged."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import normalize, resize

    size, grid = model.config.crop_size, model.config.crop_size // model.config.patch_size
    frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2).float()
    frames = resize(frames, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True) / 255.0
    frames = normalize(frames, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    seen, total = (CONTEXT // 2) * grid * grid, (WINDOW // 2) * grid * grid
    context_mask, target_mask = [torch.arange(seen)[None]], [torch.arange(seen, total)[None]]
    out = []
    with torch.no_grad():
        for start in range(0, len(frames) - WINDOW + 1, STRIDE):
            piece = frames[None, start : start + WINDOW]
            whole = model(pixel_values_videos=piece, context_mask=context_mask, target_mask=target_mask)
            h = whole.predictor_output.target_hidden_state  # the encoder on all the window's tokens, at the target
            h = F.layer_norm(h, (h.shape[-1],)) if target_norm else h
            if causal:
                known = model.encoder(pixel_values_videos=piece[:, :CONTEXT]).last_hidden_state
                z = model.predictor(encoder_hidden_states=known, context_mask=context_mask, target_mask=target_mask).last_hidden_state
            else:  # transformers' default: the context tokens encoded beside the future ones
                z = whole.predictor_output.last_hidden_state
            z = F.layer_norm(z, (z.shape[-1],))
            out.append(float(1 - F.cosine_similarity(z, h, dim=-1).mean()))
            if causal and target_norm:  # about mean (z - h)^2 / 2 (equal up to the norms' eps)
                assert out[-1] == pytest.approx(float(((z - h) ** 2).mean() / 2), rel=1e-2)  # eps 1e-5 against the tiny prediction's small variance
    return out


def test_each_windows_surprise_equals_the_hand_computation_and_controls_differ(vjepa_dir):
    from transformers import VJEPA2Model

    reward = _reward(vjepa_dir)
    model = VJEPA2Model.from_pretrained(vjepa_dir).eval()
    videos = [_video(10, seed=1), _video(10, seed=2)]
    out = reward(videos, None)
    assert out.valid.all()
    for video, detail, score in zip(videos, out.details, out.scores):
        hand = _by_hand(model, video)
        got = [w["surprise"] for w in detail["windows"]]
        assert len(got) == 7 and got == pytest.approx(hand, abs=1e-6)  # 10 frames, windows of 4 every 1
        assert detail["surprise"] == pytest.approx(np.mean(hand), abs=1e-6) and score == pytest.approx(1 - np.mean(hand), abs=1e-6)
        for control in (_by_hand(model, video, causal=False), _by_hand(model, video, target_norm=False)):
            assert np.abs(np.array(control) - hand).max() > 1e-4  # 100x the tolerance above (seen: 2e-2 and 3e-4 at least)
    worst = _reward(vjepa_dir, aggregate="max")(videos[:1], None)
    assert worst.details[0]["surprise"] == pytest.approx(max(w["surprise"] for w in out.details[0]["windows"]), abs=1e-7)


def test_the_frames_read_and_the_windows_by_hand():
    assert frame_indices(81).tolist() == [int(i * 80 / 48) for i in range(49)] and len(frame_indices(81)) == 49
    assert frame_indices(81)[:4].tolist() == [0, 1, 3, 5] and frame_indices(20).tolist() == list(range(20))
    assert window_starts(49, 16, 2) == list(range(0, 33, 2)) and len(window_starts(49, 16, 8)) == 5  # 17 and 5 windows
    assert window_starts(15, 16, 2) == []


def test_a_window_stands_out_above_the_median_by_k_robust_deviations():
    # median 0.11, |deviations| 0.01 0 0.01 0.01 0.49 0 -> MAD 0.01, sigma 0.014826: threshold 0.1545 at k = 3
    assert standing_out([0.10, 0.11, 0.10, 0.12, 0.60, 0.11]) == [4]
    assert standing_out([0.10, 0.11, 0.10, 0.12, 0.15, 0.11]) == []  # 0.15 < 0.1545
    assert standing_out([0.10, 0.11, 0.10, 0.12, 0.15, 0.11], k=2) == [4]  # 0.15 > 0.1397
    assert standing_out([0.2, 0.2, 0.2, 0.5]) == [3]  # MAD 0: 0.3 above the median, over the floor of 1% (0.002)
    assert standing_out([0.1, 0.9]) == []  # too few windows for a curve


def test_no_window_stands_out_under_the_floor():
    """With most windows alike the MAD is 0: a window stands out only above the floor, max(min_rise x median,
    1e-4) (issue #105, item 5: a rise of a rounding error made a static video abnormal)."""
    # median 1.0701, MAD 0: a rise of 1.2e-6 is under 1% of the median (0.010701); 0.011 is over it; 0.005 is not,
    # nor is it at min_rise 0.01 but it is at 0.001 (floor 0.00107)
    assert standing_out([1.0701] * 15 + [1.0701012] * 2) == []
    assert standing_out([1.0701] * 15 + [1.0811]) == [15] and standing_out([1.0701] * 15 + [1.0751]) == []
    assert standing_out([1.0701] * 15 + [1.0751], min_rise=0.001) == [15]
    # a median of 0 (predicted perfectly): 1% of it is 0, the absolute floor 1e-4 decides: 5e-5 under it, 2e-4 over
    assert standing_out([0.0, 0.0, 0.0, 5e-5]) == [] and standing_out([0.0, 0.0, 0.0, 2e-4]) == [3]
    assert standing_out([0.0, 0.0, 0.0, 5e-5], min_rise=0.0) == []  # no floor below 1e-4
    # where the curve spreads, the robust deviations decide as before: 0.6 rises 0.49 > max(3 x 0.014826, 0.0011)
    assert standing_out([0.10, 0.11, 0.10, 0.12, 0.60, 0.11], min_rise=0.05) == [4]


def test_a_near_static_video_stays_normal(vjepa_dir, monkeypatch):
    """A static video but for one pixel changed by 1/255 in one frame: its windows alike but for rises of
    about 1e-5 (MAD 0), none over the floor: normal, no window (it was abnormal, 'peak 0.99, median 0.99').
    Control: the same curve with no floor (min_rise 0 and the absolute floor patched to 0) calls it abnormal."""
    from cac_align.rewards import wm_surprise

    frame = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    frames = np.repeat(frame[None], 16, axis=0)
    frames[9, 5, 7, 0] += 1
    detail = _reward(vjepa_dir)([Video(frames, fps=8.0)], None).details[0]
    curve = np.array([w["surprise"] for w in detail["windows"]])
    assert len(curve) == 13 and 0 < np.abs(curve - np.median(curve)).max() < 1e-3  # the pixel moved the curve, a little
    assert detail["status"] == "normal" and detail["window_s"] is None and "reason" not in detail
    monkeypatch.setattr(wm_surprise, "MIN_RISE", 0.0)  # the same windows, judged with no floor at all
    assert _reward(vjepa_dir, min_rise=0.0)([Video(frames, fps=8.0)], None).details[0]["status"] == "abnormal"


def test_a_scripted_peak_gives_the_window_of_its_predicted_frames(vjepa_dir, monkeypatch):
    """49 of 81 frames at 16 fps, windows of 4 every 1 (46 of them): the peak at window 20 predicts
    frames 22-23 of those read, source frames 36 and 38 (frame_indices): [36/16, 39/16) s."""
    from cac_align.rewards import wm_surprise

    curve = [0.3] * 46
    curve[20] = 0.9
    monkeypatch.setattr(wm_surprise, "window_surprises", lambda *args, **kwargs: list(curve))
    out = _reward(vjepa_dir)([Video(smooth_video(81, 32, 32), fps=16.0)], None)
    detail = out.details[0]
    assert detail["status"] == "abnormal" and detail["window_s"] == [36 / 16, 39 / 16] and detail["boxes"] == []
    assert detail["peak"] == 20 and "2.25-2.4375 s" in detail["reason"]
    assert out.scores[0] == pytest.approx(1 - np.mean(curve))
    from cac_align.regions import read_evidence

    assert read_evidence(detail).window_s == (36 / 16, 39 / 16)  # what localized credit and repair read
    monkeypatch.setattr(wm_surprise, "window_surprises", lambda *args, **kwargs: [0.3] * 46)
    flat = _reward(vjepa_dir)([Video(smooth_video(81, 32, 32), fps=16.0)], None).details[0]
    assert flat["status"] == "normal" and flat["window_s"] is None


def test_a_video_shorter_than_a_window_or_unreadable_is_invalid_never_zero(vjepa_dir, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = _reward(vjepa_dir)([_video(3), str(bad), _video(4)], None)
    assert out.valid.tolist() == [False, False, True] and np.isnan(out.scores[:2]).all()
    assert out.details[0]["error_kind"] == "video" and "at least 4 frames" in out.details[0]["error"]
    assert out.details[1]["error_kind"] == "video"


def test_a_wm_surprise_section_is_checked_before_anything_loads(tmp_path):
    from cac_align.rewards.registry import reward_config

    for settings, message in [({"context": 4}, "must be fewer frames than window"), ({"aggregte": "max"}, "did you mean 'aggregate'"),
                              ({"aggregate": "median"}, "aggregate must be one of"), ({"window": 60}, "max_frames"),
                              ({"min_rise": -0.01}, "min_rise must be >= 0")]:
        with pytest.raises(ValueError, match=message):
            reward_config({"name": "wm_surprise", "window": 4, "context": 2, **settings})
    with pytest.raises(ValueError, match=r"size=48: V-JEPA 2 reads frames of its crop_size \(32\) only"):
        WMSurpriseReward(build_tiny_vjepa2(), reward_config({"name": "wm_surprise", "window": 4, "context": 2, "size": 48})[1])
    with pytest.raises(ValueError, match="multiples of the model's tubelet_size"):
        WMSurpriseReward(build_tiny_vjepa2(), reward_config({"name": "wm_surprise", "window": 5, "context": 2})[1])
    from cac_align.loading import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="no such directory"):
        build_reward({"name": "wm_surprise", "model": str(tmp_path / "nowhere")})


def test_the_memory_plan_counts_v_jepa_2_from_its_safetensors_header(vjepa_dir):
    from cac_align.plan.judges import count_judge
    from cac_align.rewards.judges import VideoShape
    from cac_align.rewards.registry import reward_judges

    shape = VideoShape(81, 480, 832, 16.0)
    (judge,) = reward_judges({"name": "wm_surprise", "model": str(vjepa_dir), "device": "cuda", "dtype": "bfloat16"}, "reward", shape)
    assert judge.encoder and judge.where == "reward.model"
    counted = count_judge(judge)
    params = sum(p.numel() for p in build_tiny_vjepa2().parameters())
    assert counted.weight_bytes == 2 * params and counted.kv_bytes == 0  # every tensor in bf16, no KV cache
    (tiny,) = reward_judges({"name": "wm_surprise", "model": "tiny-random:vjepa2", "device": "cuda"}, "reward", shape)
    assert count_judge(tiny).weight_bytes == 4 * params and count_judge(tiny).kv_bytes == 0  # as built, in float32


def test_the_vit_g_figures_docs_real_weights_states():
    """docs/real_weights.md's V-JEPA 2 ViT-g rows (issue #105, item 5) are the model transformers converted the
    releases to: get_vjepa2_config's vit_giant and vit_giant_384 (huggingface/transformers,
    src/transformers/models/vjepa2/convert_vjepa2_to_hf.py, read at ff4e4c7), built on the meta device:
    1,034,555,264 parameters at either crop (rotary positions), 4 bytes each in float32 (3.85 GiB), 2 in
    bfloat16 (1.93); a window of 16 frames is (16 / 2 tubelet) x (crop / 16 patch)^2 tokens: 2,048 and 4,608."""
    from conftest import REPO_ROOT
    from transformers import VJEPA2Config, VJEPA2Model

    from cac_align.plan.counts import GIB

    docs = (REPO_ROOT / "docs/real_weights.md").read_text(encoding="utf-8")
    for crop in (256, 384):
        config = VJEPA2Config(crop_size=crop, frames_per_clip=64, hidden_size=1408, num_attention_heads=22, num_hidden_layers=40,
                              mlp_ratio=48 / 11, pred_hidden_size=384, pred_num_attention_heads=12, pred_num_hidden_layers=12,
                              pred_num_mask_tokens=10)
        with torch.device("meta"):
            model = VJEPA2Model(config)
        count = sum(p.numel() for p in model.parameters())
        encoder = sum(p.numel() for p in model.encoder.parameters())
        tokens = (16 // config.tubelet_size) * (crop // config.patch_size) ** 2
        assert count == 1_034_555_264 and f"`facebook/vjepa2-vitg-fpc64-{crop}`" in docs and f"{tokens:,} tokens" in docs
    assert f"{count:,} parameters (encoder {encoder:,}, predictor {count - encoder:,})" in docs
    assert f"{count * 4 / GIB:.2f} GiB in float32" in docs and f"{count * 2 / GIB:.2f} GiB in bfloat16" in docs
