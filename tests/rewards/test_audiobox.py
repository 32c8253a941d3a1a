"""``audiobox`` in the default suite: its windows by hand, its section's checks, and the one line a
machine without Meta's package gets. Its numbers against the package's own predictor are the
conformance test's (tests/conformance/test_audiobox_package.py, in .venv-audiobox)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cac_align.rewards.audiobox import windows_of
from cac_align.rewards.registry import build_reward, reward_config


def test_windows_are_10_s_every_10_s_the_last_padded_and_weighted_by_its_sound():
    # 25 s and 4 s of 16 kHz: windows [0, 10), [10, 20), [20, 25) + 5 s padding; then [0, 4) + 6 s
    a = np.ones(25 * 16000, np.float32)
    b = np.full(4 * 16000, 0.5, np.float32)
    wav, mask, weight, owner = windows_of([a, b])
    assert wav.shape == (4, 1, 160000) and mask.shape == (4, 1, 160000) and mask.dtype == bool
    assert weight.tolist() == [1.0, 1.0, 0.5, 0.4] and owner.tolist() == [0, 0, 0, 1]
    assert mask[2, 0].sum() == 80000 and wav[2, 0, 79999] == 1.0 and wav[2, 0, 80000] == 0.0
    assert wav[3, 0, :64000].tolist() == [0.5] * 64000 and not mask[3, 0, 64000:].any()


def test_an_audiobox_section_chooses_its_axes():
    name, config = reward_config({"name": "audiobox", "axes": ["PQ", "CE"]})
    assert name == "audiobox" and config.axis_weights == {"PQ": 0.5, "CE": 0.5}  # their mean
    assert reward_config({"name": "audiobox"})[1].axis_weights == {"CE": 0.25, "CU": 0.25, "PC": 0.25, "PQ": 0.25}
    omni = {"name": "audiobox", "axes": ["CE", "CU", "PQ", "PC"], "weights": [0.025, 0.025, 0.025, -0.025]}  # OmniNFT's
    assert reward_config(omni)[1].axis_weights == {"CE": 0.025, "CU": 0.025, "PQ": 0.025, "PC": -0.025}
    with pytest.raises(ValueError, match="axes: choose among CE, CU, PC, PQ"):
        reward_config({"name": "audiobox", "axes": ["PQ", "QQ"]})
    with pytest.raises(ValueError, match="weights: one per axis"):
        reward_config({"name": "audiobox", "axes": ["PQ", "CE"], "weights": [1.0]})
    for bad in (0, -3):  # a section that could never score a batch is refused as it is read, in one line
        with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {bad}") as caught:
            reward_config({"name": "audiobox", "batch_size": bad})
        assert "\n" not in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("audiobox_aesthetics") is not None, reason="the package is installed here")
def test_without_the_package_the_error_is_one_line_naming_the_install(tmp_path, capsys):
    """Said before the weights (issue #100, item 4): a hub id whose weights are not here, and a folder that holds
    model.safetensors, both get the line naming the package; through the command line, one line and exit 2."""
    from cac_align.cli import main
    from cac_align.config import RecipeError

    (tmp_path / "model.safetensors").write_bytes(b"")
    for model in (str(tmp_path), "facebook/audiobox-aesthetics"):
        with pytest.raises(RecipeError, match="pip install audiobox-aesthetics") as caught:
            build_reward({"name": "audiobox", "model": model})
        assert "\n" not in str(caught.value)
    videos = tmp_path / "v.mp4"
    from cac_align.video import Video, save_video
    from conftest import smooth_video

    save_video(Video(smooth_video(8, 32, 32, seed=0), 8.0), videos, lossless=True)
    code = main(["score", "--config", "score/audiobox", f"videos={videos}", f"reward.model={tmp_path}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install audiobox-aesthetics" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_audiobox_folder_with_only_a_pickled_bin_is_refused_in_one_line(tmp_path):
    """Safetensors only: huggingface_hub's mixin, which AesMultiOutput loads through, would read a
    ``pytorch_model.bin`` where no ``model.safetensors`` is; the folder is refused first (whether or
    not the package is installed)."""
    import torch

    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors there; weights load from safetensors only") as caught:
        build_reward({"name": "audiobox", "model": str(tmp_path)})
    assert "\n" not in str(caught.value) and "reward.model=" in str(caught.value)
