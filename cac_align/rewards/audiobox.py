"""``audiobox``: how good a soundtrack sounds, by Meta's AudioBox-Aesthetics.

AudioBox-Aesthetics (Tjandra et al., "Meta Audiobox Aesthetics: Unified Automatic Quality Assessment
for Speech, Music, and Sound", arXiv 2502.05139; github.com/facebookresearch/audiobox-aesthetics,
CC-BY-4.0; weights ``facebook/audiobox-aesthetics``) predicts four axes on a 1-10 scale from a WavLM
encoder: production quality (PQ), production complexity (PC), content enjoyment (CE) and content
usefulness (CU). Its package (PyPI ``audiobox-aesthetics``) runs it, and this reward runs the
package's own model class (``audiobox_aesthetics.model.aes.AesMultiOutput``, ``from_pretrained`` of a
hub id or a local folder, safetensors) the way the package's predictor (``AesPredictor.forward``,
``audiobox_aesthetics/infer.py`` of 0.0.4) does:

1. the track mixed to mono at 16 kHz;
2. cut into 10 s windows every 10 s, the last one zero-padded with a mask over its padding;
3. each window's four predictions mapped back to the 1-10 scale (the model's ``target_transform``:
   ``x * std + mean``);
4. each axis the mean of its windows weighted by the seconds of sound in each.

The score is the weighted sum of the axes the recipe chooses (``axes: [PQ, CE]``, ``weights``: one per
axis, by default their mean: ``1 / len(axes)`` each). OmniNFT's reward, ``(CE + CU + PQ - PC) / 40``
(zghhui/OmniNFT ``flow_grpo/rewards.py``, commit fb9237f, as verl-omni's ``audiobox`` reward cites
it), is ``axes: [CE, CU, PQ, PC]`` with ``weights: [0.025, 0.025, 0.025, -0.025]``. Every axis is in
the details.

The package requires torchaudio, which pins its own torch: install it where it fits (``pip install
audiobox-aesthetics``, or ``--no-deps`` beside ``huggingface_hub``), not into an environment whose
torch it would replace. Resampling here is scipy's polyphase filter, not torchaudio's (a track
at 16 kHz, the model's rate, is not resampled at all): the conformance test
(tests/conformance/test_audiobox_package.py) checks this reward against the package's own predictor.

Modality ``audio``; does not read the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cac_align.rewards.audio import AudioReward, mono, resample_audio
from cac_align.video import Video

__all__ = ["AXES", "AudioboxConfig", "AudioboxReward", "build", "load_audiobox"]

AXES = ("CE", "CU", "PC", "PQ")
RATE = 16_000
WINDOW_S = 10  # the predictor's window and hop
INSTALL = "pip install audiobox-aesthetics"


@dataclass
class AudioboxConfig:
    """Config of the ``audiobox`` reward.

    Attributes:
        model: a hub id or a local folder of ``AesMultiOutput.save_pretrained`` (config.json and
            model.safetensors).
        axes: the axes chosen, of PQ, PC, CE, CU; the score is their weighted sum.
        weights: one per axis of ``axes``; None: their mean (``1 / len(axes)`` each).
        device: "auto", "cpu", "cuda", "cuda:N".
        batch_size: videos per forward (each gives one 10 s window per 10 s of sound).
        tolerance_s: how much shorter than the video a soundtrack may be (None: one video frame + 0.05 s).
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    model: str = "facebook/audiobox-aesthetics"
    axes: list[str] = field(default_factory=lambda: list(AXES))
    weights: list[float] | None = None
    device: str = "auto"
    batch_size: int = 8
    tolerance_s: float | None = None
    source_fps: float = 16.0

    def __post_init__(self) -> None:
        if not self.axes or set(self.axes) - set(AXES) or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"axes: choose among {', '.join(AXES)} (PQ production quality, PC production complexity, "
                             f"CE content enjoyment, CU content usefulness), each once, got {list(self.axes)}")
        if self.weights is not None and len(self.weights) != len(self.axes):
            raise ValueError(f"weights: one per axis of axes {list(self.axes)}, got {list(self.weights)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def axis_weights(self) -> dict[str, float]:
        weights = self.weights if self.weights is not None else [1.0 / len(self.axes)] * len(self.axes)
        return dict(zip(self.axes, (float(w) for w in weights)))


def windows_of(waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """10 s windows every 10 s of 16 kHz mono waves (step 2).

    Returns:
        ``(wav (W, 1, 160000) float32, mask (W, 1, 160000) bool: True on sound, weight (W,): the
        fraction of the window that is sound, owner (W,): which wave each window is of)``.
    """
    length = WINDOW_S * RATE
    wav, mask, weight, owner = [], [], [], []
    for k, wave in enumerate(waves):
        for start in range(0, wave.shape[-1], length):
            piece = wave[start : start + length]
            wav.append(np.pad(piece, (0, length - piece.shape[0])))
            mask.append(np.arange(length) < piece.shape[0])
            weight.append(piece.shape[0] / length)
            owner.append(k)
    return np.stack(wav)[:, None].astype(np.float32), np.stack(mask)[:, None], np.array(weight), np.array(owner)


class AudioboxReward(AudioReward):
    """The weighted sum of the chosen AudioBox-Aesthetics axes (each 1-10) of each soundtrack; ``axes``
    maps each chosen axis to its weight."""

    name = "audiobox"
    modality = "audio"
    reads_prompt = False
    needs_prompt = False
    sample_rates = None  # it resamples to 16 kHz

    def __init__(self, model: Any, axes: dict[str, float], batch_size: int = 8, tolerance_s: float | None = None, source_fps: float = 16.0):
        self.model, self.axes = model.eval(), dict(axes)
        # each axis is on the 1-10 scale the model was trained to: the weighted sum's range follows
        self.score_range = (sum(min(w, 10 * w) for w in self.axes.values()), sum(max(w, 10 * w) for w in self.axes.values()))
        self.batch_size, self.tolerance_s, self.source_fps = batch_size, tolerance_s, source_fps

    def to(self, device: Any) -> "AudioboxReward":
        self.model.to(device)
        return self

    def predict(self, waves: list[np.ndarray]) -> list[dict[str, float]]:
        """Each 16 kHz mono wave's four axes on the 1-10 scale (steps 2-4)."""
        import torch

        wav, mask, weight, owner = windows_of(waves)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            raw = self.model({"wav": torch.from_numpy(wav).to(device), "mask": torch.from_numpy(mask).to(device)})
        out: list[dict[str, float]] = [{} for _ in waves]
        for axis in AXES:
            scale = self.model.target_transform[axis]
            values = raw[axis].float().cpu().numpy().astype(np.float64) * float(scale["std"]) + float(scale["mean"])
            for k in range(len(waves)):
                mine = owner == k
                out[k][axis] = float((values[mine] * weight[mine]).sum() / weight[mine].sum())
        return out

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        waves = [resample_audio(mono(video.audio), video.sample_rate, RATE) for video, _ in requests]
        answers = []
        for axes in self.predict(waves):
            if not all(np.isfinite(v) for v in axes.values()):
                answers.append({"error": f"AudioBox-Aesthetics gave non-finite axes {axes}", "error_kind": "score", "axes": axes})
                continue
            answers.append({"score": sum(w * axes[a] for a, w in self.axes.items()), "axes": axes})
        return answers


def load_audiobox(model: str, key: str = "reward.model") -> Any:
    """``AesMultiOutput.from_pretrained(model)`` from the installed package, safetensors only; one
    line naming the install when it is not there (before the weights are looked for), and one when the
    weights are not safetensors."""
    import importlib.util

    from cac_align.config import RecipeError
    from cac_align.loading import WeightsNotFoundError, check_weights_source, weights_error

    folder = Path(model).expanduser()
    if folder.is_dir() and not (folder / "model.safetensors").is_file():  # a folder of the wrong weights, said first
        raise WeightsNotFoundError(_not_safetensors(model, key))
    if importlib.util.find_spec("audiobox_aesthetics") is None:  # then the package: before a hub id's weights are looked for, or fetched
        raise RecipeError(f"{key}: the audiobox reward runs Meta's package audiobox-aesthetics, which is not installed here: {INSTALL} "
                          "(it requires torchaudio and its torch: give it an environment of its own if yours pins another; docs/audio.md)")
    source = check_weights_source(model, key)
    local = Path(source).is_dir()
    if local and not (Path(source) / "model.safetensors").is_file():
        raise WeightsNotFoundError(_not_safetensors(model, key))
    try:
        from audiobox_aesthetics.model.aes import AesMultiOutput
    except ImportError as exc:  # installed, but its own imports fail (a torchaudio built for another torch)
        raise RecipeError(f"{key}: audiobox-aesthetics is installed but does not import here ({exc}): {INSTALL} into an environment "
                          "whose torch its torchaudio was built for (docs/audio.md)") from None
    try:
        return AesMultiOutput.from_pretrained(source if local else _hub_safetensors_folder(source, model, key))
    except OSError as exc:
        raise weights_error(model, key, exc) from None


def _not_safetensors(model: str, key: str) -> str:
    return (f"{key}={model!r}: no model.safetensors there; weights load from safetensors only (a pytorch_model.bin is refused): "
            "write it with AesMultiOutput.save_pretrained(DIR) of a recent huggingface_hub, or `hf download facebook/audiobox-aesthetics`")


def _hub_safetensors_folder(repo: str, model: str, key: str) -> str:
    """A hub id's ``model.safetensors`` and ``config.json`` fetched (as ``from_pretrained`` would), and
    the snapshot folder holding them. The package's loader (huggingface_hub's
    ``PyTorchModelHubMixin``) falls back to a pickled ``pytorch_model.bin`` where a repository has no
    safetensors file; given the folder, it reads the safetensors file that is there."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError  # the repository has no such file (offline: an OSError, said above)

    from cac_align.loading import WeightsNotFoundError

    try:
        weights = hf_hub_download(repo, "model.safetensors")
    except RemoteEntryNotFoundError:
        raise WeightsNotFoundError(_not_safetensors(model, key)) from None
    hf_hub_download(repo, "config.json")  # into the same snapshot folder
    return str(Path(weights).parent)


def build(config: AudioboxConfig, key: str = "reward") -> AudioboxReward:
    from cac_align.loading import resolve_device

    model = load_audiobox(config.model, f"{key}.model")
    model.requires_grad_(False)
    model.to(resolve_device(config.device, f"{key}.device"))
    return AudioboxReward(model, config.axis_weights, config.batch_size, config.tolerance_s, config.source_fps)


def judges(config: AudioboxConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: audiobox`` section loads, for the memory plan: AesMultiOutput, an encoder
    counted from its ``model.safetensors`` header, held in float32 as the package builds it
    (:func:`cac_align.rewards.judges.encoder_judge`)."""
    from cac_align.rewards.judges import encoder_judge

    return [encoder_judge(f"{where}.model", config.model, "float32", config.device, config.batch_size)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "audiobox",
    "cac_align.rewards.audiobox:AudioboxConfig",
    "cac_align.rewards.audiobox:build",
    "Meta's AudioBox-Aesthetics (PQ, PC, CE, CU on 1-10): the weighted sum of the axes a recipe chooses; hears",
    judges="cac_align.rewards.audiobox:judges",
)
