"""``sync``: whether a video's sound happens when its picture does, by DeSync (Synchformer's offsets).

DeSync is the synchrony metric of MMAudio's evaluation (Cheng et al., "MMAudio: Taming Multimodal
Joint Training for High-Quality Video-to-Audio Synthesis", CVPR 2025; its ``av-benchmark``) built on
Synchformer (Iashin, Xie, Rahtu, Zisserman, "Synchformer: Efficient Synchronization from Sparse
Cues", ICASSP 2024), a classifier of the audio-visual offset into 21 classes evenly spaced over
[-2, 2] s (0.2 s apart). OmniNFT (arXiv 2605.12480) and verl-omni's native ``desync`` reward
(``verl_omni/utils/reward_score/desync.py``, commit dc5e749) turn it into a reward, and this module
computes what they compute, in our own code:

1. the frames at 25 fps (output slot ``k`` shows the source frame on screen at its centre,
   ``(k + 1/2) / 25`` s: ffmpeg's ``fps=25``), at most 8 s (200 frames), each scaled (bicubic,
   antialiased) so its short side is 224, centre-cropped to 224 x 224 and mapped to [-1, 1]; a
   shorter video is padded with -1 frames to 200;
2. the sound mixed to mono at 16 kHz, cut or zero-padded to 8 s (128,000 samples);
3. 24 segments of each, 0.64 s long every 0.32 s (16 frames every 8; 10,240 samples every 5,120);
   each sound segment as a 128-band log-mel spectrogram (16 kHz, n_fft 1024, window 400, hop 160,
   HTK scale; ``log(mel + 1e-6)``, 66 columns, normalized by AST's statistics: mean -4.2677393,
   std 4.5689974, ``(x - mean) / (2 std)``);
4. Synchformer compares segments 0-13 and segments 10-23: two windows, [0, 4.8) s and [3.2, 8) s,
   each with 21 offset logits; each window's offset is the class of its largest logit;
5. ``score = 1 / (1 + mean |offset|)`` over the two windows: 1 when both are in sync, 1/3 when
   both are off by 2 s.

Each window's offset is evidence: ``details["windows"]`` lists ``{"window_s", "offset_s"}`` for
both, and ``window_s`` (with ``status: abnormal`` and whole-frame ``boxes: []``) is the span where the
sound slips (the windows with a nonzero offset, clipped to the video), so a trainer can weight the
latent frames of that span (:mod:`cac_align.regions`).

Synchformer is not on a package registry: its code is read from the user's checkout (as
UnifiedReward's question is read, :mod:`cac_align.rewards.unified`): ``source_root`` (or
``$SYNCHFORMER_REPO``) is a folder holding ``module`` (by default OmniNFT's layout,
``flow_grpo/audio_video_align/synchformer/synchformer.py``, as verl-omni reads it; MMAudio's
``av-benchmark`` is ``av_bench.synchformer.synchformer``), whose class ``Synchformer()`` has
``extract_vfeats``, ``extract_afeats`` and ``compare_v_a``. Its weights are a safetensors state dict
(``checkpoint``); a ``.pt`` is refused with how to convert it.

Two departures, both in the preprocessing around the model: resampling to 16 kHz is scipy's
polyphase filter, not torchaudio's sinc interpolation, and the log-mel is computed here in torch
with torchaudio's ``MelSpectrogram`` defaults (torchaudio is not a dependency).

Score range [1/3, 1]; modality ``both``; does not read the prompt.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cac_align.rewards.audio import AudioReward, mono, resample_audio
from cac_align.video import Video

__all__ = ["OFFSETS_S", "SyncConfig", "SyncReward", "build", "desync_score", "log_mel", "sync_windows"]

VIDEO_FPS = 25.0
AUDIO_RATE = 16_000
SECONDS = 8
FRAMES = int(SECONDS * VIDEO_FPS)  # 200
SAMPLES = SECONDS * AUDIO_RATE  # 128,000
SEGMENT_FRAMES, SEGMENT_STEP = 16, 8  # 0.64 s every 0.32 s
SEGMENT_SAMPLES, SEGMENT_HOP = 10_240, 5_120
SEGMENTS = 24
WINDOW_SEGMENTS = 14
WINDOW_STARTS = (0, SEGMENTS - WINDOW_SEGMENTS)  # segments 0-13 and 10-23
OFFSETS_S = np.linspace(-2.0, 2.0, 21)  # Synchformer's offset classes, 0.2 s apart
MEL_COLUMNS = 66
AST_MEAN, AST_STD = -4.2677393, 4.5689974
SIZE = 224
DEFAULT_MODULE = "flow_grpo.audio_video_align.synchformer.synchformer"
REPO_ENV = "SYNCHFORMER_REPO"
_IMPORT_LOCK = threading.Lock()


def desync_score(logits: Any) -> tuple[float, list[float]]:
    """DeSync's score of one video from its windows' offset logits.

    Args:
        logits: ``(windows, 21)`` float, one row per compared window, in the order of
            :data:`OFFSETS_S` (-2.0, -1.8, ..., 2.0 s).

    Returns:
        ``(1 / (1 + mean |offset|), offsets)``: each window's offset is the class of its largest
        logit. E.g. argmax classes 10 and 13 give offsets 0.0 and 0.6 s, score 1 / 1.3.
    """
    rows = np.asarray(logits, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(OFFSETS_S):
        raise ValueError(f"DeSync logits are (windows, {len(OFFSETS_S)}), got shape {rows.shape}")
    offsets = OFFSETS_S[rows.argmax(axis=1)]
    return float(1.0 / (1.0 + np.abs(offsets).mean())), [round(float(o), 6) for o in offsets]


def sync_windows() -> list[tuple[float, float]]:
    """The seconds each compared window covers: segments ``s .. s + 13`` span ``[0.32 s, 0.32 (s + 13)
    + 0.64)``: [0, 4.8) and [3.2, 8.0)."""
    step, length = SEGMENT_STEP / VIDEO_FPS, SEGMENT_FRAMES / VIDEO_FPS
    return [(round(s * step, 6), round((s + WINDOW_SEGMENTS - 1) * step + length, 6)) for s in WINDOW_STARTS]


def frames_at_25fps(video: Video) -> np.ndarray:
    """Indices of ``video``'s frames at 25 fps, at most 8 s: slot ``k`` shows the source frame on
    screen at the slot's centre, ``(k + 1/2) / 25`` s (the earlier one at a tie), as ffmpeg's fps
    filter does."""
    count = min(FRAMES, int(math.floor(video.num_frames / video.fps * VIDEO_FPS + 1e-9)))
    if count < 1:
        raise ValueError(f"a {video.duration_s:.3f} s video has no frame at 25 fps")
    centres = (np.arange(count) + 0.5) * video.fps / VIDEO_FPS
    return np.clip(np.ceil(centres).astype(np.int64) - 1, 0, video.num_frames - 1)


def prepare_frames(video: Video) -> Any:
    """Synchformer's visual input of one video: ``(200, 3, 224, 224)`` float32 in [-1, 1] (step 1)."""
    import torch
    import torch.nn.functional as F

    picked = np.asarray(video.frames[frames_at_25fps(video)])  # a file's video decodes only these frames
    frames = torch.from_numpy(np.ascontiguousarray(picked)).permute(0, 3, 1, 2).float() / 255.0
    height, width = frames.shape[-2:]
    size = (SIZE, int(width * SIZE / height)) if height <= width else (int(height * SIZE / width), SIZE)
    frames = F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
    frames = (frames[:, :, top : top + SIZE, left : left + SIZE] - 0.5) / 0.5
    return F.pad(frames, (0, 0, 0, 0, 0, 0, 0, FRAMES - frames.shape[0]), value=-1.0)


def prepare_audio(video: Video) -> Any:
    """The sound of one video for Synchformer: ``(128000,)`` float32, mono at 16 kHz (step 2)."""
    import torch

    wave = resample_audio(mono(video.audio), video.sample_rate, AUDIO_RATE)[:SAMPLES]
    return torch.nn.functional.pad(torch.from_numpy(np.ascontiguousarray(wave)), (0, SAMPLES - wave.shape[0]))


def _mel_filters(n_freqs: int, n_mels: int, rate: int) -> Any:
    """Triangular filters ``(n_freqs, n_mels)`` on the HTK mel scale from 0 Hz to Nyquist, unnormalized
    (torchaudio's ``melscale_fbanks`` defaults): filter ``m`` rises from edge ``m`` to ``m + 1`` and falls to
    ``m + 2`` of ``n_mels + 2`` edges evenly spaced in mel."""
    import torch

    def to_mel(hz: Any) -> Any:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    freqs = torch.linspace(0, rate // 2, n_freqs)
    edges_mel = torch.linspace(float(to_mel(torch.tensor(0.0))), float(to_mel(torch.tensor(rate / 2))), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    widths = edges[1:] - edges[:-1]
    rel = edges[None, :] - freqs[:, None]  # (n_freqs, n_mels + 2): edge minus frequency
    rising = -rel[:, :-2] / widths[:-1]
    falling = rel[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def log_mel(segments: Any) -> Any:
    """Synchformer's audio input from sound segments (step 3).

    Args:
        segments: ``(..., 10240)`` float32 at 16 kHz.

    Returns:
        ``(..., 128, 66)``: the power spectrogram (n_fft 1024, periodic Hann window of 400 centred in
        it, hop 160, centred frames with reflect padding: 65 columns) through 128 HTK mel filters,
        ``log(mel + 1e-6)``, a zero column appended, then ``(x - mean) / (2 std)`` by AST's statistics.
    """
    import torch

    flat = segments.reshape(-1, segments.shape[-1])
    spec = torch.stft(flat, n_fft=1024, hop_length=160, win_length=400, window=torch.hann_window(400, device=flat.device),
                      center=True, pad_mode="reflect", return_complex=True).abs().pow(2)
    mel = torch.matmul(spec.transpose(-1, -2), _mel_filters(spec.shape[-2], 128, AUDIO_RATE).to(spec.device)).transpose(-1, -2)
    mel = torch.log(mel + 1e-6)
    mel = torch.nn.functional.pad(mel, (0, max(0, MEL_COLUMNS - mel.shape[-1])))[..., :MEL_COLUMNS]
    mel = (mel - AST_MEAN) / (2 * AST_STD)
    return mel.reshape(*segments.shape[:-1], *mel.shape[-2:])


@dataclass
class SyncConfig:
    """Config of the ``sync`` reward.

    Attributes:
        checkpoint: Synchformer's weights as a safetensors state dict (the one DeSync uses:
            av-benchmark's / OmniNFT's checkpoint, converted once: see docs/audio.md).
        source_root: the checkout that holds Synchformer's code (else ``$SYNCHFORMER_REPO``).
        module: the module of class ``Synchformer`` inside it (OmniNFT's layout by default).
        device: "auto", "cpu", "cuda", "cuda:N".
        batch_size: videos per forward (each holds 24 x 16 frames of 224 x 224).
        tolerance_s: how much shorter than the video a soundtrack may be (None: one video frame + 0.05 s).
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    checkpoint: str = ""
    source_root: str = ""
    module: str = DEFAULT_MODULE
    device: str = "auto"
    batch_size: int = 1
    tolerance_s: float | None = None
    source_fps: float = 16.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.checkpoint and not self.checkpoint.endswith(".safetensors"):
            raise ValueError(
                f"checkpoint={self.checkpoint!r}: weights load from safetensors only; convert once with "
                "python -c \"import torch, safetensors.torch as s; sd = torch.load('IN.pt', weights_only=True); "
                "s.save_file(sd.get('model', sd), 'OUT.safetensors')\""
            )


class SyncReward(AudioReward):
    """DeSync: ``1 / (1 + mean |offset|)`` of Synchformer's offsets over two windows of the video."""

    name = "sync"
    score_range = (1.0 / 3.0, 1.0)
    modality = "both"
    reads_prompt = False
    needs_prompt = False
    sample_rates = None  # it resamples to 16 kHz

    def __init__(self, model: Any, batch_size: int = 1, tolerance_s: float | None = None, source_fps: float = 16.0):
        self.model, self.batch_size, self.tolerance_s, self.source_fps = model.eval(), batch_size, tolerance_s, source_fps

    def to(self, device: Any) -> "SyncReward":
        self.model.to(device)
        return self

    def logits(self, frames: Any, sound: Any) -> Any:
        """Synchformer's offset logits ``(2, B, 21)`` of prepared frames ``(B, 200, 3, 224, 224)`` and
        sound ``(B, 128000)`` (steps 3-4)."""
        import torch

        batch = frames.shape[0]
        device = next(self.model.parameters()).device
        clips = frames.unfold(1, SEGMENT_FRAMES, SEGMENT_STEP).movedim(-1, 2)  # (B, 24, 16, 3, 224, 224)
        pieces = sound.unfold(1, SEGMENT_SAMPLES, SEGMENT_HOP)  # (B, 24, 10240)
        with torch.inference_mode():
            seen = self.model.extract_vfeats(clips.reshape(-1, 1, SEGMENT_FRAMES, *frames.shape[2:]).to(device))
            seen = seen.reshape(batch, SEGMENTS, *seen.shape[2:])
            heard = self.model.extract_afeats(log_mel(pieces.to(device)).unsqueeze(2))
            rows = [self.model.compare_v_a(seen[:, s : s + WINDOW_SEGMENTS], heard[:, s : s + WINDOW_SEGMENTS]) for s in WINDOW_STARTS]
        return torch.stack([r.float().cpu() for r in rows])

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        import torch

        frames = torch.stack([prepare_frames(video) for video, _ in requests])
        sound = torch.stack([prepare_audio(video) for video, _ in requests])
        logits = self.logits(frames, sound)
        return [self._verdict(video, logits[:, b].numpy()) for b, (video, _) in enumerate(requests)]

    def _verdict(self, video: Video, logits: np.ndarray) -> dict:
        if logits.shape != (len(WINDOW_STARTS), len(OFFSETS_S)) or not np.isfinite(logits).all():
            return {"error": f"Synchformer gave logits of shape {logits.shape} or non-finite ones", "error_kind": "score"}
        score, offsets = desync_score(logits)
        end = min(video.duration_s, float(SECONDS))
        windows = [{"window_s": [a, b], "offset_s": o, "padding_only": a >= end} for (a, b), o in zip(sync_windows(), offsets)]
        slipped = [w["window_s"] for w in windows if w["offset_s"] != 0 and not w["padding_only"]]
        span = [min(w[0] for w in slipped), min(end, max(w[1] for w in slipped))] if slipped else None
        return {"score": score, "offsets_s": offsets, "windows": windows, "status": "abnormal" if span else "normal", "window_s": span, "boxes": []}


def _pruneable_heads(heads: Any, n_heads: int, head_size: int, already_pruned: Any) -> tuple[set, Any]:
    """What transformers' ``pytorch_utils.find_pruneable_heads_and_indices`` (removed in 5.x) gave a
    model pruning attention heads: the heads still to prune (``heads`` less ``already_pruned``) and the
    ``torch.long`` indices of the ``n_heads x head_size`` projection columns that stay, ``n_heads``
    being the heads the layer has now. A head (numbered as it first was) sits below the heads pruned
    earlier.

    E.g. a layer of 4 heads of 2 whose head 1 was pruned (3 now), pruning 1 and 3: head 3 sits at row
    2 now, so columns 4 and 5 go: ``({3}, [0, 1, 2, 3])`` (heads 0 and 2) stay.
    """
    import torch

    earlier = set(already_pruned)
    pruning = set(heads) - earlier
    keep = torch.ones(n_heads, head_size, dtype=torch.bool)
    for head in pruning:
        keep[head - sum(1 for gone in earlier if gone < head)] = False
    return pruning, torch.nonzero(keep.reshape(-1)).reshape(-1)


def _head_mask(model: Any, head_mask: Any, num_hidden_layers: int, is_attention_chunked: bool = False) -> Any:
    """What ``PreTrainedModel.get_head_mask`` (removed in transformers 5.x) gave a layer stack: one
    entry per layer, None each when there is no mask; else the mask as ``(layers, batch, heads, seq,
    seq)`` in the model's dtype (a ``(heads,)`` mask the same for every layer, a ``(layers, heads)``
    mask one row a layer), with a trailing axis for chunked attention."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask.reshape(1, 1, -1, 1, 1).expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask.reshape(head_mask.shape[0], 1, head_mask.shape[1], 1, 1)
    if head_mask.dim() != 5:
        raise ValueError(f"a head mask is (heads,), (layers, heads) or 5-D, got {tuple(head_mask.shape)}")
    head_mask = head_mask.to(dtype=model.dtype)
    return head_mask.unsqueeze(-1) if is_attention_chunked else head_mask


def _with_transformers_4_names(root: Path, module: str) -> Any:
    """``module`` imported while ``transformers.pytorch_utils`` has ``find_pruneable_heads_and_indices``
    again (Synchformer's AST tower, ``hf_src/modeling_ast.py``, imports it by name), taken away once
    the import is over; then each ``PreTrainedModel`` class defined in the checkout's modules that
    lacks ``get_head_mask`` (the tower's forward calls it) gets :func:`_head_mask`, on that class only.
    The caller holds ``_IMPORT_LOCK``."""
    from transformers import PreTrainedModel, pytorch_utils

    lent = not hasattr(pytorch_utils, "find_pruneable_heads_and_indices")
    if lent:
        pytorch_utils.find_pruneable_heads_and_indices = _pruneable_heads
    try:
        imported = importlib.import_module(module)
    finally:
        if lent:
            del pytorch_utils.find_pruneable_heads_and_indices
    for loaded in list(sys.modules.values()):
        where = getattr(loaded, "__file__", None)
        if not where or not Path(where).resolve().is_relative_to(root):
            continue
        for value in list(vars(loaded).values()):
            # classes defined there (not transformers' own PreTrainedModel, which such a module imports)
            if (isinstance(value, type) and value.__module__ == loaded.__name__ and issubclass(value, PreTrainedModel)
                    and not hasattr(value, "get_head_mask")):
                value.get_head_mask = _head_mask
    return imported


def _import_synchformer(root: Path, module: str) -> Any:
    """``module`` imported from the checkout at ``root`` (put first on ``sys.path`` while it imports,
    with the names of transformers 4 it needs: :func:`_with_transformers_4_names`); a module of that
    name already imported from elsewhere is refused."""
    with _IMPORT_LOCK:
        loaded = sys.modules.get(module)
        if loaded is not None:
            if not Path(loaded.__file__).resolve().is_relative_to(root):
                raise ImportError(f"{module} is already imported from {loaded.__file__}, not from {root}; one checkout per process")
            return loaded
        sys.path.insert(0, str(root))
        try:
            return _with_transformers_4_names(root, module)
        finally:
            sys.path.remove(str(root))


def build(config: SyncConfig, key: str = "reward") -> SyncReward:
    """Import Synchformer from the user's checkout, load its safetensors weights (strict), freeze it."""
    from safetensors.torch import load_file

    from cac_align.config import RecipeError
    from cac_align.loading import resolve_device

    root_name = config.source_root or os.environ.get(REPO_ENV, "")
    if not root_name:
        raise RecipeError(f"{key}.source_root is not set: point it (or ${REPO_ENV}) at your checkout of github.com/zghhui/OmniNFT "
                          "(or MMAudio's av-benchmark with module: av_bench.synchformer.synchformer), which holds Synchformer's code")
    root = Path(root_name).expanduser().resolve()
    module_file = root / (config.module.replace(".", "/") + ".py")
    if not module_file.is_file():
        raise RecipeError(f"{key}.source_root={root_name!r}: no {module_file.relative_to(root)} there; is it a checkout holding Synchformer "
                          f"(set {key}.module to where its class Synchformer is)?")
    if not config.checkpoint or not Path(config.checkpoint).expanduser().is_file():
        raise RecipeError(f"{key}.checkpoint={config.checkpoint!r}: no such file; set it to Synchformer's weights as .safetensors")
    model = _import_synchformer(root, config.module).Synchformer()
    model.load_state_dict(load_file(str(Path(config.checkpoint).expanduser())), strict=True)
    model.requires_grad_(False)
    model.to(resolve_device(config.device, f"{key}.device"))
    return SyncReward(model, config.batch_size, config.tolerance_s, config.source_fps)


def judges(config: SyncConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: sync`` section loads, for the memory plan: Synchformer, an encoder
    counted from the header of its ``checkpoint`` (safetensors), held in float32 as ``Synchformer()``
    builds it (:func:`cac_align.rewards.judges.encoder_judge`)."""
    from cac_align.rewards.judges import encoder_judge

    return [encoder_judge(f"{where}.checkpoint", config.checkpoint, "float32", config.device, config.batch_size)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "sync",
    "cac_align.rewards.sync:SyncConfig",
    "cac_align.rewards.sync:build",
    "DeSync (Synchformer's offsets, as OmniNFT / verl-omni score it): 1 / (1 + mean |offset|) over two windows; hears and sees",
    judges="cac_align.rewards.sync:judges",
)
