"""``wm_surprise``: how badly a world model predicts a video (V-JEPA 2's surprise, as WMReward scores it).

WMReward (Yuan et al., "Inference-time Physics Alignment of Video Generative Models with Latent World
Models", CVPR 2026; github.com/facebookresearch/WMReward, CC BY-NC 4.0) judges physics by the surprise
of V-JEPA 2 (Assran et al., 2025), a self-supervised video encoder with a predictor trained to predict
the features of masked parts of a clip from the rest. A video whose later frames its own earlier frames
do not predict breaks the physics the model learned. This module computes what their
``compute_wmreward.py`` and ``utils.compute_vjepa_loss_sliding_window`` compute (read at commits
97d1adc and 54c3d1f), in our own code, through transformers' ``VJEPA2Model`` (no torch.hub):

1. at most 49 frames, spread evenly over the whole video (``linspace(0, N - 1, count)`` rounded
   down), each resized (bilinear, antialiased, the aspect ratio squashed, nothing cropped) to the
   model's ``crop_size`` square (256; 384 for the ``-384`` checkpoints), scaled to [0, 1] and
   normalized by ImageNet's mean and std;
2. windows of 16 frames every ``stride`` frames; a last partial window is dropped (49 frames at stride 2:
   17 windows, frame 48 unused);
3. in each window the first 8 frames are the context: the encoder sees only their tokens (V-JEPA 2's
   tubelets of 2 frames x 16 x 16 pixels, ordered time first, so the context is the first tokens), and
   the predictor predicts the tokens of the other 8 at their positions;
4. the target is the encoder on the whole window (their "target encoder" is a copy of the encoder),
   layer-normed over features without affine (``F.layer_norm``), at the target tokens; the prediction is
   layer-normed the same way;
5. a window's surprise is ``1 - cosine(prediction, target)`` per token, averaged over its tokens
   (in [0, 2]; with both sides layer-normed this is ``mean |z - h|^2 / (2 D)`` up to the norm's eps);
6. the video's surprise is the mean over windows (``aggregate: max`` takes the worst); the score is their
   "similarity", ``1 - surprise``, in [-1, 1], higher is better.

Two choices of ours, each a setting: ``stride`` is 2 (the function's default and their README's; their
MAGI-1 script passes 8, a coarser and 4x cheaper curve), and a window is scored in a batch with others
(theirs one at a time; the same sums in another order).

**When** the physics breaks: the per-window surprises are a curve over time. A window whose surprise
stands out of its video's own curve makes the verdict ``status: abnormal`` with ``window_s``: the seconds
of the predicted frames of the standing-out windows, first to last (no boxes: whole frames), which
localized credit, repair and localized DPO read as they read CaC's (:mod:`cac_align.regions`). Standing
out (:func:`standing_out`) is rising above the median by more than both ``k x 1.4826 x MAD`` (``k`` is
``outlier_k``, 3 by default) and a floor: ``min_rise`` of the median (1%) or :data:`MIN_RISE`, the larger.
The floor is there for a curve whose windows are nearly all alike: its MAD is 0, and without a floor any
window above the median by a rounding error would stand out (a static video with one pixel changed by
1/255 in one frame rose 8e-6 over a median of 0.99) and localized credit and repair would act on noise.
It is relative to the median, the curve's own scale, because V-JEPA 2's checkpoints and videos put the
surprise at different levels, and a fraction means the same on each; 1% is ten thousand times the rise
of that one pixel and, for a defect that doubles the surprise of the tokens it covers, a defect over 1% of
the predicted tokens. The absolute part only matters for a median near 0 (a video the model predicts almost
perfectly), where any fraction of it vanishes. Fewer than 3 windows cannot make a curve: ``status: normal``.

Score range [-1, 1]; modality ``video``; does not read the prompt. A video shorter than one window is
invalid (``error_kind: video``), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.video import Video

__all__ = ["MIN_RISE", "TINY_NAME", "WMSurpriseConfig", "WMSurpriseReward", "build", "build_tiny_vjepa2", "frame_indices", "standing_out",
           "window_starts", "window_surprises"]

TINY_NAME = "tiny-random:vjepa2"
MAX_FRAMES = 49  # WMReward's compute_wmreward.py
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution times this is its standard deviation
MIN_WINDOWS = 3
# The least rise above the median, in surprise (1 - cosine, in [0, 2]), for a window to stand out whatever
# the median: it decides only for a median under 0.01 (a video predicted almost perfectly, where 1% of the
# median is less), and is a hundred times the rounding of a mean of cosines in float32 (about 1e-6).
MIN_RISE = 1e-4


def frame_indices(num_frames: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """The frames read: ``min(max_frames, num_frames)`` evenly spread from the first to the last,
    ``linspace`` rounded down. 81 frames -> 0, 1, 3, 5, ..., 78, 80 (49 of them)."""
    count = min(max_frames, num_frames)
    return np.linspace(0, num_frames - 1, count).astype(np.int64)


def window_starts(frames: int, window: int, stride: int) -> list[int]:
    """The first frame of each whole window of ``window`` frames every ``stride`` (``unfold``'s
    windows): 49 frames, 16 every 2 -> 0, 2, ..., 32 (17 windows)."""
    return list(range(0, frames - window + 1, stride)) if frames >= window else []


def standing_out(surprises: Sequence[float], k: float = 3.0, min_rise: float = 0.01) -> list[int]:
    """The windows whose surprise stands out of the video's own curve: above the median by more than
    ``k x 1.4826 x MAD`` (the median absolute deviation from the median, scaled to a normal's sigma) and
    by more than the floor ``max(min_rise x median, MIN_RISE)`` (module docstring, "When": with most
    windows alike the MAD is 0, and a window a rounding error above the median does not stand out). None
    of fewer than 3 windows.

    >>> standing_out([0.10, 0.11, 0.10, 0.12, 0.60, 0.11])
    [4]
    >>> standing_out([1.0701] * 15 + [1.0701012] * 2)  # MAD 0, a rise of 1.2e-6: under the floor of 0.0107
    []
    """
    values = np.asarray(surprises, dtype=np.float64)
    if len(values) < MIN_WINDOWS:
        return []
    median = float(np.median(values))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    floor = max(min_rise * abs(median), MIN_RISE)
    return [int(i) for i in np.flatnonzero(values > median + max(k * spread, floor))]


def window_surprises(model: Any, clip: Any, starts: Sequence[int], window: int, context: int, batch: int = 4) -> list[float]:
    """Each window's surprise (steps 3-5 of the module docstring).

    Args:
        model: a transformers ``VJEPA2Model``.
        clip: ``(T, 3, S, S)`` float, normalized (:meth:`WMSurpriseReward.prepare`), on the model's device.
        starts: each window's first frame.
        window, context: frames per window, of which the first ``context`` are seen.
        batch: windows per forward.
    """
    import torch
    import torch.nn.functional as F

    config = model.config
    tubelet, grid = int(config.tubelet_size), clip.shape[-1] // int(config.patch_size)
    seen, total = (context // tubelet) * grid * grid, (window // tubelet) * grid * grid
    out: list[float] = []
    with torch.inference_mode():
        for first in range(0, len(starts), batch):
            pieces = torch.stack([clip[s : s + window] for s in starts[first : first + batch]])  # (B, window, 3, S, S)
            rows = pieces.shape[0]
            target = model.encoder(pixel_values_videos=pieces).last_hidden_state  # the target encoder: the whole window
            target = F.layer_norm(target, (target.shape[-1],))[:, seen:total]
            known = model.encoder(pixel_values_videos=pieces[:, :context]).last_hidden_state  # only the context's tokens
            context_mask = [torch.arange(seen, device=clip.device).unsqueeze(0).repeat(rows, 1)]
            target_mask = [torch.arange(seen, total, device=clip.device).unsqueeze(0).repeat(rows, 1)]
            guess = model.predictor(encoder_hidden_states=known, context_mask=context_mask, target_mask=target_mask).last_hidden_state
            guess = F.layer_norm(guess, (guess.shape[-1],))
            loss = 1.0 - F.cosine_similarity(guess.float(), target.float(), dim=-1).mean(dim=1)
            out.extend(float(v) for v in loss.cpu())
    return out


@dataclass
class WMSurpriseConfig:
    """Config of the ``wm_surprise`` reward.

    Attributes:
        model: a hub id or a local folder holding a transformers ``VJEPA2Model`` with its predictor
            (``facebook/vjepa2-vitg-fpc64-256``: WMReward's default, ViT-g at 256; ``...-384`` at 384;
            ``facebook/vjepa2-vith-fpc64-256``, ``...-vitl-...`` smaller), or ``tiny-random:vjepa2``.
        device: "auto" (the GPU if there is one), "cpu", "cuda", "cuda:N".
        dtype: the model's dtype (float32, bfloat16, float16); the loss is taken in float32.
        size: the square side frames are resized to: null (default) or the model's ``crop_size`` (256, or 384
            for the ``-384`` checkpoints, as WMReward picks it); another value is refused (transformers lays out
            V-JEPA 2's rotary positions for its crop, and another size would be read at wrong positions).
        max_frames: frames read from a video, evenly spread (WMReward: 49).
        window: frames per window (16).
        context: the first frames of a window the predictor sees (8).
        stride: frames between windows' starts (2: the function's and README's default; 8: their MAGI-1 script).
        aggregate: the video's surprise from its windows', "mean" (WMReward's default) or "max".
        outlier_k: robust deviations above the median for a window to stand out (:func:`standing_out`).
        min_rise: the least rise above the median, as a fraction of it, for a window to stand out (0.01: 1%;
            never less than :data:`MIN_RISE` in surprise): a floor for a curve of windows nearly all alike,
            whose MAD is 0 (module docstring, "When").
        window_batch: windows per forward.
        batch_size: videos per call to the model (each scored whole).
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    model: str = "facebook/vjepa2-vitg-fpc64-256"
    device: str = "auto"
    dtype: str = "float32"
    size: int | None = None
    max_frames: int = MAX_FRAMES
    window: int = 16
    context: int = 8
    stride: int = 2
    aggregate: str = "mean"
    outlier_k: float = 3.0
    min_rise: float = 0.01
    window_batch: int = 4
    batch_size: int = 1
    source_fps: float = 16.0

    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"aggregate": ("mean", "max")}

    def __post_init__(self) -> None:
        from cac_align.loading import check_dtype

        check_dtype(self.dtype)
        for key in ("max_frames", "window", "context", "stride", "window_batch", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.context < self.window:
            raise ValueError(f"context ({self.context}) must be fewer frames than window ({self.window}): the rest is predicted")
        if self.window > self.max_frames:
            raise ValueError(f"window ({self.window}) must fit in max_frames ({self.max_frames})")
        if self.aggregate not in self.CHOICES["aggregate"]:
            raise ValueError(f"aggregate must be one of {list(self.CHOICES['aggregate'])}, got {self.aggregate!r}")
        if self.outlier_k < 0:
            raise ValueError(f"outlier_k must be >= 0, got {self.outlier_k}")
        if not self.min_rise >= 0:
            raise ValueError(f"min_rise must be >= 0 (a fraction of the median surprise: 0.01 is 1%), got {self.min_rise}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1 (or null: the model's crop_size), got {self.size}")


class WMSurpriseReward(BatchReward):
    """``1 - surprise``: V-JEPA 2's mean surprise over a video's windows, with the windows that stand out
    as evidence."""

    name = "wm_surprise"
    score_range = (-1.0, 1.0)
    modality = "video"
    reads_prompt = False
    needs_prompt = False

    def __init__(self, model: Any, config: WMSurpriseConfig):
        self.model, self.config = model.eval(), config
        self.batch_size, self.source_fps = config.batch_size, config.source_fps
        self.size = int(model.config.crop_size)
        if config.size is not None and config.size != self.size:  # transformers lays out its rotary positions on crop_size
            raise ValueError(f"size={config.size}: V-JEPA 2 reads frames of its crop_size ({self.size}) only (its rotary positions are laid out "
                             "for that grid); leave size null")
        tubelet, patch = int(model.config.tubelet_size), int(model.config.patch_size)
        if config.window % tubelet or config.context % tubelet or self.size % patch:
            raise ValueError(f"window ({config.window}) and context ({config.context}) must be multiples of the model's tubelet_size ({tubelet}), "
                             f"and size ({self.size}) of its patch_size ({patch})")

    def to(self, device: Any) -> WMSurpriseReward:
        self.model.to(device)
        return self

    def input_problem(self, video: Video) -> tuple[str, str] | None:
        read = min(self.config.max_frames, video.num_frames)
        if read < self.config.window:
            return (f"wm_surprise needs at least {self.config.window} frames (one window), got {video.num_frames}", ErrorKind.VIDEO)
        return None

    def prepare(self, video: Video) -> tuple[Any, np.ndarray]:
        """Step 1: ``(T, 3, S, S)`` float32 frames normalized by ImageNet's statistics, and the source
        index of each."""
        import torch
        import torch.nn.functional as F

        picked = frame_indices(video.num_frames, self.config.max_frames)
        frames = torch.from_numpy(np.ascontiguousarray(np.asarray(video.frames[picked]))).permute(0, 3, 1, 2).float()
        frames = F.interpolate(frames, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True) / 255.0
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (frames - mean) / std, picked

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        first = next(self.model.parameters())
        answers = []
        for video, _ in requests:
            clip, picked = self.prepare(video)
            starts = window_starts(len(picked), self.config.window, self.config.stride)
            curve = window_surprises(self.model, clip.to(first.device, first.dtype), starts, self.config.window, self.config.context,
                                     self.config.window_batch)
            answers.append(self.verdict(video, picked, starts, curve))
        return answers

    def verdict(self, video: Video, picked: np.ndarray, starts: Sequence[int], curve: Sequence[float]) -> dict:
        """A video's detail from its windows' surprises: the score, each window's seconds (the
        predicted frames') and surprise, and the evidence of the windows that stand out."""
        if not curve or not np.isfinite(curve).all():
            return {"error": f"V-JEPA 2 gave no finite surprise ({list(curve)})", "error_kind": ErrorKind.SCORE}
        config, fps = self.config, video.fps
        spans = [[round(float(picked[s + config.context]) / fps, 6), round(float(picked[s + config.window - 1] + 1) / fps, 6)] for s in starts]
        surprise = float(np.mean(curve) if config.aggregate == "mean" else np.max(curve))
        windows = [{"window_s": span, "surprise": round(float(c), 8)} for span, c in zip(spans, curve)]
        out = standing_out(curve, config.outlier_k, config.min_rise)
        detail = {"score": 1.0 - surprise, "surprise": surprise, "windows": windows, "status": "normal", "window_s": None, "boxes": []}
        if out:
            detail.update(status="abnormal", window_s=[spans[out[0]][0], spans[out[-1]][1]], peak=int(np.argmax(curve)),
                          reason=f"the world model's surprise stands out in {spans[out[0]][0]:g}-{spans[out[-1]][1]:g} s "
                                 f"(peak {max(curve):.4f}, median {float(np.median(curve)):.4f})")
        return detail


def build_tiny_vjepa2(seed: int = 0) -> Any:
    """A tiny random ``VJEPA2Model`` (32 x 32 crops of 8 x 8 patches, tubelets of 2 frames, 2 encoder and
    1 predictor layers of width 32 / 16): real transformers code at toy size, for tests and demos. Its layer
    norms get a random scale and shift, so that the encoder's output is not already normalized (the
    target's own ``layer_norm`` then matters, as it does for trained weights)."""
    import torch
    from transformers import VJEPA2Config, VJEPA2Model

    config = VJEPA2Config(
        patch_size=8, crop_size=32, frames_per_clip=16, tubelet_size=2, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
        mlp_ratio=2.0, pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1, pred_mlp_ratio=2.0,
        pred_num_mask_tokens=10, num_pooler_layers=1, initializer_range=0.2,  # weights large enough that the context matters
    )
    torch.manual_seed(seed)
    model = VJEPA2Model(config).float()
    with torch.no_grad():  # layer norms of random scale and shift, as a trained model's are (at init each is the identity)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
    return model.eval()


def build(config: WMSurpriseConfig, key: str = "reward") -> WMSurpriseReward:
    """Load V-JEPA 2 named by ``config.model`` (transformers' ``from_pretrained``, safetensors only), or
    build the tiny random one, and freeze it."""
    from cac_align.loading import (
        check_weights_source,
        resolve_device,
        resolve_dtype,
        weights_error,
    )

    if config.model == TINY_NAME:
        model = build_tiny_vjepa2().to(resolve_dtype(config.dtype))
    else:
        from transformers import VJEPA2Model

        source = check_weights_source(config.model, f"{key}.model")
        try:
            model = VJEPA2Model.from_pretrained(source, dtype=resolve_dtype(config.dtype), use_safetensors=True)  # never a pickle
        except OSError as exc:
            raise weights_error(config.model, f"{key}.model", exc) from None
    model.requires_grad_(False)
    model.to(resolve_device(config.device, f"{key}.device"))
    return WMSurpriseReward(model, config)


def judges(config: WMSurpriseConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: wm_surprise`` section loads, for the memory plan: V-JEPA 2, an encoder
    (encoder and predictor, no KV cache) counted from its safetensors header(s) in ``dtype``; the tiny one
    as built."""
    from cac_align.rewards.judges import encoder_judge

    judge = encoder_judge(f"{where}.model", config.model, config.dtype, config.device, config.window_batch)
    if config.model == TINY_NAME:
        import dataclasses

        judge = dataclasses.replace(judge, tiny=build_tiny_vjepa2)
    return [judge]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "wm_surprise",
    "cac_align.rewards.wm_surprise:WMSurpriseConfig",
    "cac_align.rewards.wm_surprise:build",
    "V-JEPA 2's surprise (WMReward): 1 - mean over 16-frame windows of how badly its predictor predicts the last 8 from the first 8, "
    "in [-1, 1]; the windows that stand out are its evidence (window_s)",
    judges="cac_align.rewards.wm_surprise:judges",
)
