"""``clap``: its score is the cosine of transformers' own CLAP audio and text embeddings, computed by
hand here (issue #89, "Authors' numbers"), on a tiny random ClapModel saved and loaded by path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cac_align.rewards.registry import build_reward, reward_config
from cac_align.video import Video

PROMPTS = ["a dog barks twice", "rain on a tin roof"]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A tiny random ClapModel (HTSAT audio tower, RoBERTa text tower) and its processor, saved."""
    from audio_rewards import save_tiny_clap

    return save_tiny_clap(tmp_path_factory.mktemp("clap"), truncation="rand_trunc")


def _tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 3.1 * freq * t)
    return np.repeat(wave.astype(np.float32)[None], channels, axis=0)


def _by_hand(path, prompt: str, wave48k: np.ndarray) -> float:
    """transformers' own get_audio_features / get_text_features, then cos = a.t / (|a| |t|)."""
    from transformers import ClapModel, ClapProcessor

    model, processor = ClapModel.from_pretrained(path).eval(), ClapProcessor.from_pretrained(path)
    audio_in = processor.feature_extractor([wave48k], sampling_rate=48000, return_tensors="pt")
    text_in = processor.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        a = model.get_audio_features(input_features=audio_in["input_features"], is_longer=audio_in["is_longer"]).pooler_output[0].double()
        t = model.get_text_features(input_ids=text_in["input_ids"], attention_mask=text_in["attention_mask"]).pooler_output[0].double()
    return float(a @ t / (a.norm() * t.norm()))


def test_clap_scores_the_cosine_of_transformers_own_embeddings(clap_dir):
    from scipy.signal import resample_poly

    reward = build_reward({"name": "clap", "model": str(clap_dir), "device": "cpu"})
    assert (reward.modality, reward.reads_prompt, reward.modalities) == ("audio", True, {"clap": "audio"})
    frames = np.zeros((8, 16, 16, 3), np.uint8)  # 1 s at 8 fps
    stereo48 = _tone(440.0, 1.0, 48000, channels=2)
    stereo48[1] *= 0.5  # two different channels: CLAP hears their mean
    mono16 = _tone(220.0, 1.0, 16000)
    out = reward([frames, frames], PROMPTS, [{"fps": 8, "audio": stereo48, "sample_rate": 48000}, {"fps": 8, "audio": mono16, "sample_rate": 16000}])
    assert out.valid.tolist() == [True, True]
    expected = [
        _by_hand(clap_dir, PROMPTS[0], stereo48.mean(axis=0)),
        _by_hand(clap_dir, PROMPTS[1], resample_poly(mono16[0].astype(np.float64), 3, 1).astype(np.float32)),  # 16 kHz -> 48 kHz
    ]
    np.testing.assert_allclose(out.scores, expected, atol=1e-5)
    assert abs(expected[0] - expected[1]) > 1e-3  # the two samples are told apart
    assert out.details[1]["sample_rate"] == 16000 and out.details[1]["heard_at"] == 48000
    # the prompt matters: the same sound under the other prompt scores the other text's cosine
    swapped = reward([frames], [PROMPTS[1]], [{"fps": 8, "audio": stereo48, "sample_rate": 48000}])
    assert swapped.scores[0] == pytest.approx(_by_hand(clap_dir, PROMPTS[1], stereo48.mean(axis=0)), abs=1e-5)
    assert swapped.scores[0] != pytest.approx(out.scores[0], abs=1e-4)


def test_clap_without_sound_or_prompt_is_invalid_never_zero(clap_dir):
    reward = build_reward({"name": "clap", "model": str(clap_dir), "device": "cpu"})
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    out = reward([frames, Video(frames, 8.0, audio=_tone(440.0, 1.0, 48000), sample_rate=48000)], [PROMPTS[0], None], {"fps": 8})
    assert out.valid.tolist() == [False, False] and np.isnan(out.scores).all()
    assert [d["error_kind"] for d in out.details] == ["audio", "prompt"]


def test_a_clap_section_is_checked_before_anything_loads():
    name, config = reward_config({"name": "clap", "model": "laion/larger_clap_general", "batch_size": 4})
    assert name == "clap" and config.batch_size == 4 and config.device == "auto"
    with pytest.raises(ValueError, match="batch_sise"):
        reward_config({"name": "clap", "batch_sise": 4})


def test_a_clap_folder_with_only_a_pickled_bin_is_refused(clap_dir, tmp_path):
    """Safetensors only: the same model as ``pytorch_model.bin`` (a pickle) is never loaded."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "bin_only"
    shutil.copytree(clap_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors") as caught:
        build_reward({"name": "clap", "model": str(folder), "device": "cpu"})
    assert "\n" not in str(caught.value)


def test_an_empty_local_clap_folder_says_what_it_lacks_not_a_download_of_its_path(tmp_path):
    """A folder is no repository (issue #100, item 8): the line says what the folder must hold, and names no
    `hf download <the folder's path>`."""
    folder = tmp_path / "fake_clap"
    folder.mkdir()
    with pytest.raises(OSError) as caught:
        build_reward({"name": "clap", "model": str(folder), "device": "cpu"})
    message = str(caught.value)
    assert "\n" not in message and f"hf download {folder}" not in message and "config.json and model.safetensors" in message


@pytest.fixture(scope="module")
def fused_clap_dir(tmp_path_factory):
    """A tiny random FUSED ClapModel and its fusion extractor (audio_rewards.save_tiny_clap)."""
    from audio_rewards import save_tiny_clap

    return save_tiny_clap(tmp_path_factory.mktemp("clap_fused"), fused=True)


def test_is_longer_is_the_extractors_own_rule_on_the_real_length():
    from transformers import ClapFeatureExtractor

    from cac_align.rewards.clap import clap_is_longer

    fusion = ClapFeatureExtractor(feature_size=64, sampling_rate=16000, hop_length=320, max_length_s=1, fft_window_size=512, frequency_max=8000, truncation="fusion")
    trunc = ClapFeatureExtractor(feature_size=64, sampling_rate=16000, hop_length=320, max_length_s=1, fft_window_size=512, frequency_max=8000, truncation="rand_trunc")
    # 1 s = 16000 samples = 50 hops: a clip's mel has 51 frames. 16319 samples still give 1 + 16319 // 320 = 51 frames, which
    # fusion takes whole (not long); 16320 give 52: long. rand_trunc: any sample past 16000 is long.
    assert [clap_is_longer(n, fusion) for n in (12000, 16000, 16001, 16319, 16320, 40000)] == [False, False, False, False, True, True]
    assert [clap_is_longer(n, trunc) for n in (16000, 16001, 40000)] == [False, True, True]


def test_a_fused_clap_scores_the_same_under_any_global_seed_and_in_any_batch(fused_clap_dir):
    """transformers' extractor draws from np.random: with fusion, when no track of a batch is long it
    marks a random one as long (whose local chunks the model then fuses), and a long track's chunks are
    cropped at random. The reward draws nothing: a score depends on its own track only."""
    reward = build_reward({"name": "clap", "model": str(fused_clap_dir), "device": "cpu"})
    frames = np.zeros((4, 16, 16, 3), np.uint8)  # 0.5 s at 8 fps
    tracks = [_tone(440.0, 0.6, 16000), _tone(300.0, 0.9, 16000), _tone(520.0, 1.8, 16000)]  # two short, one long (> 1 s)
    metadata = [{"fps": 8, "audio": t, "sample_rate": 16000} for t in tracks]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    runs = []
    for seed in (0, 1, 7):
        np.random.seed(seed)
        runs.append(reward([frames] * 3, prompts, metadata).scores)
    assert np.isfinite(runs[0]).all()
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    for k in range(3):  # alone: the short ones are not marked long, the long one's head is heard as in the batch
        np.random.seed(10 + k)
        alone = reward([frames], [prompts[k]], [metadata[k]]).scores[0]
        assert alone == pytest.approx(runs[0][k], abs=1e-6), k
    shorts = reward([frames] * 2, prompts[:2], metadata[:2]).scores  # a batch with no long track
    np.testing.assert_allclose(shorts, runs[0][:2], atol=1e-6)
