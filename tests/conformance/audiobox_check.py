"""Our ``audiobox`` reward beside AudioBox-Aesthetics' own predictor, in .venv-audiobox (run by
tests/conformance/test_audiobox_package.py, which checks the numbers).

    .venv-audiobox/bin/python tests/conformance/audiobox_check.py OUT_DIR

Their code, unmodified: a random-weight ``AesMultiOutput`` (their class, seeded; its weights are the
hub's in real use) is saved twice, as ``save_pretrained`` writes it (the folder our reward loads) and
as the checkpoint file their ``AesPredictor(checkpoint_pth=...)`` reads offline (``state_dict`` with
``model.`` keys, ``model_cfg``, ``target_transform``: audiobox_aesthetics/infer.py, 0.0.4). Both score
the same waveforms: theirs through ``AesPredictor.forward([{"path": tensor, "sample_rate": sr}])``,
ours through the registry with the waveform as a video's soundtrack. Also: our log-mel of the sync
reward beside torchaudio's ``MelSpectrogram`` with DeSync's settings (torchaudio is here, not in .venv).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
TRANSFORM = {"CE": {"mean": 5.5, "std": 1.5}, "CU": {"mean": 6.0, "std": 1.2}, "PC": {"mean": 4.0, "std": 2.0}, "PQ": {"mean": 7.0, "std": 1.1}}
CFG = {"proj_num_layer": 1, "proj_ln": False, "proj_act_fn": "gelu", "proj_dropout": 0.0, "nth_layer": 13, "use_weighted_layer_sum": True,
       "precision": "32", "normalize_embed": True, "output_dim": 1}


def waveforms() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    t16 = np.arange(int(12.5 * 16000)) / 16000  # two windows, the second 2.5 s of sound
    left = 0.3 * np.sin(2 * np.pi * 220 * t16) + 0.05 * rng.standard_normal(t16.size)
    right = 0.2 * np.sign(np.sin(2 * np.pi * 3 * t16)) * np.sin(2 * np.pi * 660 * t16)
    t48 = np.arange(3 * 48000) / 48000
    return {
        "stereo_16k_12.5s": (np.stack([left, right]).astype(np.float32), 16000),
        "mono_48k_3s": ((0.4 * np.sin(2 * np.pi * 440 * t48) * np.exp(-t48)).astype(np.float32)[None], 48000),
    }


def main() -> None:
    from audiobox_aesthetics.infer import AesPredictor
    from audiobox_aesthetics.model.aes import AesMultiOutput

    from cac_align.rewards.registry import build_reward
    from cac_align.video import Video

    began = time.time()
    torch.manual_seed(0)
    model = AesMultiOutput(**CFG, target_transform=TRANSFORM).eval()
    model.save_pretrained(OUT / "aes")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "model_cfg": CFG, "target_transform": TRANSFORM},
               OUT / "checkpoint.pt")
    theirs = AesPredictor(checkpoint_pth=str(OUT / "checkpoint.pt"))
    axes = {"CE": 0.025, "CU": 0.025, "PQ": 0.025, "PC": -0.025}  # OmniNFT's (CE + CU + PQ - PC) / 40
    ours = build_reward({"name": "audiobox", "model": str(OUT / "aes"), "device": "cpu", "axes": list(axes), "weights": list(axes.values())})
    result: dict = {"built_s": round(time.time() - began, 1)}
    for name, (wave, rate) in waveforms().items():
        their_axes = theirs.forward([{"path": torch.from_numpy(wave), "sample_rate": rate}])[0]
        frames = np.zeros((int(wave.shape[1] / rate * 8), 16, 16, 3), np.uint8)  # 8 fps, as long as the sound
        out = ours([Video(frames, 8.0, audio=wave, sample_rate=rate)], None)
        result[name] = {"theirs": their_axes, "ours": out.details[0].get("axes"), "score": float(out.scores[0]), "valid": bool(out.valid[0]),
                        "theirs_score": sum(w * their_axes[a] for a, w in axes.items())}
    silent = ours([Video(np.zeros((8, 16, 16, 3), np.uint8), 8.0, audio=np.zeros((1, 16000), np.float32), sample_rate=16000)], None)
    result["silent"] = {"valid": bool(silent.valid[0]), "error_kind": silent.details[0].get("error_kind"), "error": silent.details[0].get("error")}
    result["log_mel"] = log_mel_difference()
    result["total_s"] = round(time.time() - began, 1)
    (OUT / "out.json").write_text(json.dumps(result, indent=1))


def log_mel_difference() -> float:
    """Max |ours - torchaudio's| of the sync reward's log-mel (before its column padding and
    normalization) on 24 noisy segments: MelSpectrogram(16 kHz, win 400, hop 160, n_fft 1024, 128 mels)."""
    import torchaudio

    from cac_align.rewards import sync

    segments = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 24, 10240)).astype(np.float32) * 0.3)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, win_length=400, hop_length=160, n_fft=1024, n_mels=128)
    theirs = torch.log(mel(segments) + 1e-6)
    theirs = torch.nn.functional.pad(theirs, (0, 66 - theirs.shape[-1]))
    theirs = (theirs - sync.AST_MEAN) / (2 * sync.AST_STD)
    return float((sync.log_mel(segments) - theirs).abs().max())


if __name__ == "__main__":
    main()
