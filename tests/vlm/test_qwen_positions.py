"""Qwen2.5-VL's positions after a vision block as its checkpoints were trained (max + 1), checked
by hand, and installed on the in-process backend's model."""

from __future__ import annotations

import torch

from cac_align.vlm.qwen_positions import install_trained_positions, text_after_vision_at_max_plus_one


def test_text_after_a_video_starts_at_its_largest_position_plus_one():
    # 2 text tokens (0, 1); a video of 4 tokens starting at 2 whose time positions reach 2 + 6 = 8
    # (t offsets 0, 0, 6, 6; h 0, 1, 0, 1; w 0, 0, 0, 0), then 2 text tokens. transformers >= 5.3
    # starts them at 2 + max(h, w) = 2 + 2 = 4; trained: max(8, 3, 2) + 1 = 9.
    t = [0, 1, 2, 2, 8, 8, 4, 5]
    h = [0, 1, 2, 3, 2, 3, 4, 5]
    w = [0, 1, 2, 2, 2, 2, 4, 5]
    positions = torch.tensor([t, h, w]).unsqueeze(1)  # (3, 1, 8)
    kinds = torch.tensor([[0, 0, 2, 2, 2, 2, 0, 0]])
    fixed, deltas = text_after_vision_at_max_plus_one(positions, kinds)
    assert fixed[:, 0, :6].tolist() == positions[:, 0, :6].tolist()  # up to the video: unchanged
    assert fixed[:, 0, 6:].tolist() == [[9, 10], [9, 10], [9, 10]]
    assert deltas.tolist() == [[10 + 1 - 8]]
    # an image (one time step, 2x2 tokens from 1): text at 1 + max(2, 2) = 3 = max(1, 2, 2) + 1 either way
    image = torch.tensor([[0, 1, 1, 1, 1, 3, 4], [0, 1, 1, 2, 2, 3, 4], [0, 1, 2, 1, 2, 3, 4]]).unsqueeze(1)
    same, _ = text_after_vision_at_max_plus_one(image, torch.tensor([[0, 1, 1, 1, 1, 0, 0]]))
    assert same.tolist() == image.tolist()


def test_padding_is_left_alone_and_rows_are_independent():
    positions = torch.tensor([[1, 1, 0, 1, 1, 7, 2], [1, 1, 0, 1, 2, 2, 2], [1, 1, 0, 1, 2, 2, 2]]).unsqueeze(1).repeat(1, 2, 1)
    kinds = torch.tensor([[0, 0, 0, 2, 2, 2, 0]] * 2)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    fixed, deltas = text_after_vision_at_max_plus_one(positions, kinds, mask)
    # row 0: padding (first two) untouched; the video reaches 7: the last text token goes to 8
    assert fixed[:, 0, :2].tolist() == [[1, 1]] * 3 and fixed[:, 0, 6].tolist() == [8, 8, 8]
    assert deltas[0].item() == 8 + 1 - 5 and deltas[1].item() == 8 + 1 - 7


def test_installed_on_qwen2_5_vl_only():
    from cac_align.vlm.hf import HFBackend
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl

    qwen25 = build_tiny_qwen2_5_vl(0)
    HFBackend(qwen25.model, qwen25.processor)
    assert qwen25.model.model._cac_align_trained_positions and install_trained_positions(qwen25.model)
    qwen3 = build_tiny_qwen3_vl(0)
    assert not install_trained_positions(qwen3.model)
