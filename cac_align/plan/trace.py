"""The VAE's decode and encode, traced on the meta device: run op by op with no memory and no time
per element, the live tensors summed (:func:`traced_peak_bytes`); a module call repeated with the same
inputs (a long video's clips and tiles) traced once and replayed (:class:`_Replay`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from cac_align.plan.counts import GeneratorCounts


def traced_peak_bytes(fn: Any, *args: Any, keep: Sequence[Any] = (), replay: Sequence[Any] = (), shortcuts: bool = True) -> int:
    """The most bytes of tensors alive at once while ``fn(*args)`` runs, beyond what existed before
    it (``args`` and the tensors of ``keep``, e.g. a module's parameters): each new storage counted
    from the op that makes it until it is freed. Run on the meta device it takes no memory and no
    time per element, and it is the eager allocator's live total (not the CUDA caching allocator's
    reserve, its fragmentation or cuDNN's workspaces).

    ``replay``: modules whose submodules' calls are traced once per distinct input and then replayed
    (:class:`_Replay`): a VAE decodes a long video as clips of spatial tiles, the same shapes over and
    over (MiniMax-H3's: 7 clips x 28 tiles of a 36-layer decoder), and each repeat adds exactly what
    its first call added. The peak is the same to the byte; only the time differs.

    ``shortcuts``: the loops :func:`_loops_skipped_on_meta` names run as one allocation (the same tensor, its
    element-by-element writes skipped: on the meta device they write nothing and allocate nothing that outlives
    them); False traces them as they are (tests/plan/test_sampling_plan.py compares the two).
    """
    import warnings
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    before = {id(t.untyped_storage()) for t in [*tree_flatten(args)[0], *keep] if isinstance(t, torch.Tensor)}

    class _Live(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.tracked: set[int] = set()

        def _freed(self, key: int, size: int) -> None:
            self.live -= size
            self.tracked.discard(key)

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()  # one Python object per storage, for its life (views share it)
                key = id(storage)
                if key in before or key in self.tracked:
                    continue
                size = storage.nbytes()
                self.tracked.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, key, size)
            return out

    skipped = _loops_skipped_on_meta() if shortcuts else contextlib.nullcontext()
    with torch.no_grad(), warnings.catch_warnings(), skipped, _Live() as mode, _Replay(mode, replay):
        warnings.simplefilter("ignore")  # e.g. torch's "Mismatch dtype" of a mixed-precision norm: nothing runs, nothing to say
        fn(*args)
    return mode.peak


@contextlib.contextmanager
def _loops_skipped_on_meta() -> Iterator[None]:
    """While a trace runs: library functions that fill a tensor in a Python loop, element by element, make the same
    tensor in one allocation on the meta device and skip the loop (its in-place writes allocate nothing). Only the
    time differs: HunyuanVideo-1.5's VAE builds the causal mask of its attention a row at a time
    (``HunyuanVideo15AttnBlock.prepare_causal_attention_mask``, diffusers 0.42.1): 49,290 rows a call for a
    121-frame 480p video, seconds of Python a call. Restored on exit; off the meta device the original runs."""
    import torch

    try:
        from diffusers.models.autoencoders.autoencoder_kl_hunyuanvideo15 import HunyuanVideo15AttnBlock
    except ImportError:  # another diffusers: nothing to skip
        yield
        return
    original = HunyuanVideo15AttnBlock.__dict__.get("prepare_causal_attention_mask")
    if not isinstance(original, staticmethod):
        yield
        return

    def causal_mask(n_frame: int, n_hw: int, dtype: Any, device: Any, batch_size: int | None = None) -> Any:
        if torch.device(device).type != "meta":
            return original.__func__(n_frame, n_hw, dtype, device, batch_size)
        mask = torch.full((n_frame * n_hw, n_frame * n_hw), float("-inf"), dtype=dtype, device=device)  # the loop then writes zeros in place
        return mask.unsqueeze(0).expand(batch_size, -1, -1) if batch_size is not None else mask

    HunyuanVideo15AttnBlock.prepare_causal_attention_mask = staticmethod(causal_mask)
    try:
        yield
    finally:
        HunyuanVideo15AttnBlock.prepare_causal_attention_mask = original


class _Replay:
    """Within a :func:`traced_peak_bytes` trace, each call of a submodule of ``modules`` traced once
    per distinct input and replayed after that: what the first call added (its peak above the live
    total at its start, and the outputs it left) is added again, and fresh outputs of the same
    shapes, strides and storage sizes are returned, without running the module.

    Exact by construction where it replays: a call is remembered only when its inputs are tensors and
    plain values (no list or dict a module could keep state in, as Wan's VAE keeps its causal cache)
    and when, on the call that ran, nothing but its outputs (fresh storages, none of an input's) stayed
    alive; the key is the module and every input's shape, strides, offset, dtype and storage size, and
    which inputs share a storage. The module's own attributes are not in the key: a module whose
    result depends on state it changes between calls of the same shapes would be replayed wrongly (no
    VAE the families run does; the shipped recipes' plans are compared to the byte with and without).
    """

    def __init__(self, mode: Any, modules: Sequence[Any]) -> None:
        self.mode = mode
        self.modules = [m for root in modules for m in root.modules()]
        self.seen: dict[tuple, tuple[int, list[tuple], Any]] = {}
        self.replayed = 0

    def __enter__(self) -> "_Replay":
        self.own = [vars(module).get("forward") for module in self.modules]  # a forward set on the instance (a hook's) comes back after
        for module in self.modules:
            module.forward = self._wrap(module, module.forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, own in zip(self.modules, self.own):
            if own is None:
                del module.forward
            else:
                module.forward = own

    @staticmethod
    def _key(value: Any, storages: dict[int, int]) -> Any:
        import torch

        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            shared = storages.setdefault(id(storage), len(storages))
            return ("tensor", tuple(value.shape), value.stride(), value.storage_offset(), value.dtype, value.device.type,
                    storage.nbytes(), shared)
        if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
            return value
        if isinstance(value, tuple):
            parts = tuple(_Replay._key(v, storages) for v in value)
            return _NOT_REPLAYED if any(p is _NOT_REPLAYED for p in parts) else parts
        return _NOT_REPLAYED

    def _wrap(self, module: Any, forward: Any) -> Any:
        def replayed(*args: Any, **kwargs: Any) -> Any:
            storages: dict[int, int] = {}
            key = (id(module), self._key(args, storages), self._key(tuple(sorted(kwargs.items())), storages))
            if key[1] is _NOT_REPLAYED or key[2] is _NOT_REPLAYED:
                return forward(*args, **kwargs)
            if key in self.seen:
                return self._again(*self.seen[key])
            return self._first(key, forward, args, kwargs, set(storages))
        return replayed

    def _first(self, key: tuple, forward: Any, args: Any, kwargs: Any, inputs: set[int]) -> Any:
        import torch

        mode = self.mode
        start, outer_peak, alive = mode.live, mode.peak, set(mode.tracked)
        mode.peak = start
        out = forward(*args, **kwargs)
        rise = mode.peak - start
        mode.peak = max(outer_peak, mode.peak)
        outputs = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, tuple) else None
        if outputs is None or not all(isinstance(t, torch.Tensor) for t in outputs):
            return out
        storages = [t.untyped_storage() for t in outputs]
        ids = [id(s) for s in storages]
        fresh = len(set(ids)) == len(ids) and all(i in mode.tracked and i not in alive and i not in inputs for i in ids)
        if fresh and mode.live == start + sum(s.nbytes() for s in storages):
            specs = [(tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, s.nbytes()) for t, s in zip(outputs, storages)]
            self.seen[key] = (rise, specs, isinstance(out, torch.Tensor))
        return out

    def _again(self, rise: int, specs: list[tuple], single: bool) -> Any:
        import torch

        mode = self.mode
        mode.peak = max(mode.peak, mode.live + rise)
        outputs = []
        for shape, stride, offset, dtype, device, nbytes in specs:
            storage = torch.empty(nbytes, dtype=torch.uint8, device=device).untyped_storage()  # counted by the trace as it is made
            outputs.append(torch.empty(0, dtype=dtype, device=device).set_(storage, offset, shape, stride))
        self.replayed += 1
        return outputs[0] if single else tuple(outputs)


_NOT_REPLAYED = object()


def _meta_copy(module: Any, dtype: Any) -> Any:
    """``module`` on the meta device in ``dtype`` (a copy when it is not there already)."""
    import copy

    import torch

    resolved = getattr(torch, str(dtype)) if isinstance(dtype, str) else dtype
    first = next(module.parameters())
    if first.device.type != "meta" or first.dtype != resolved:  # a copy: the counted module stays as it is
        module = copy.deepcopy(module).to(device="meta")
    if first.dtype != resolved:  # on the meta device a cast costs nothing; diffusers' warning about it says nothing here
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            module = module.to(dtype=resolved)
        finally:
            diffusers_logging.set_verbosity(level)
    return module


_VAE_TRACES: dict[tuple, int] = {}  # (the VAE's class and config, what, shape, dtype) -> bytes: one trace per process


def _vae_trace(vae: Any, what: str, batch: int, frames: int, height: int, width: int, dtype: str, frame_multiple: int, latent_frames: int,
               clip: int = 0) -> int:
    import json

    key = (type(vae).__name__, json.dumps(dict(getattr(vae, "config", {})), sort_keys=True, default=str), what, batch, frames, height, width,
           dtype, frame_multiple, latent_frames, clip)
    if key not in _VAE_TRACES:
        _VAE_TRACES[key] = _traced_vae(vae, what, batch, frames, height, width, dtype, frame_multiple, latent_frames, clip)
    return _VAE_TRACES[key]


def _traced_vae(vae: Any, what: str, batch: int, frames: int, height: int, width: int, dtype: str, frame_multiple: int, latent_frames: int,
                clip: int = 0) -> int:
    import torch

    meta = _meta_copy(vae, dtype)
    resolved = next(meta.parameters()).dtype
    params = [*meta.parameters(), *meta.buffers()]
    if what == "encode":
        if clip:  # clip by clip, each of (clip - 1) x frame_multiple + 1 frames, the last one padded to it (Helios's encode_video)
            clip_frames = (clip - 1) * frame_multiple + 1
            video = torch.empty(batch, 3, -(-frames // clip_frames) * clip_frames, height, width, device="meta", dtype=resolved)
            return traced_peak_bytes(lambda x: torch.cat([meta.encode(c).latent_dist.mode() for c in x.split(clip_frames, dim=2)], dim=2), video,
                                     keep=params, replay=[meta])
        video = torch.empty(batch, 3, frames, height, width, device="meta", dtype=resolved)
        return traced_peak_bytes(lambda x: meta.encode(x).latent_dist.mode(), video, keep=params, replay=[meta])
    # the latents' shape: one small encode (1 + frame_multiple frames, 64 x 64 pixels) gives the
    # channels and the compression in space; in time, latent_frames (vae_bytes: the family's, or (F - 1) / frame_multiple + 1)
    probe = torch.empty(1, 3, 1 + frame_multiple, 64, 64, device="meta", dtype=resolved)
    with torch.no_grad():
        small = meta.encode(probe).latent_dist.mode()
    scale = 64 // small.shape[-1]
    latents = torch.empty(batch, small.shape[1], latent_frames, height // scale, width // scale, device="meta", dtype=resolved)
    if clip:  # clip by clip, the clips' frames joined in time (Helios's decode: the causal VAE restarts every chunk)
        return traced_peak_bytes(lambda z: torch.cat([meta.decode(c, return_dict=False)[0] for c in z.split(clip, dim=2)], dim=2), latents,
                                 keep=params, replay=[meta])
    return traced_peak_bytes(lambda z: meta.decode(z, return_dict=False)[0], latents, keep=params, replay=[meta])


def vae_bytes(counts: GeneratorCounts, what: str, batch: int, video: tuple[int, int, int], dtype: Any) -> int:
    """The most bytes the VAE's ``what`` ("decode" or "encode") of ``batch`` videos of ``video``
    ``(frames, height, width)`` holds at once, in ``dtype`` (its weights aside): traced on the meta
    device (:func:`traced_peak_bytes`) with the pipeline's own VAE, untiled as the families run it,
    clip by clip where the family runs it so (``counts.vae_clip``). 0 when the pipeline has no ``vae``.
    """
    if counts.vae is None or batch < 1:
        return 0
    frames = int(video[0])
    latent_frames = counts.latent_frames_of(frames) if counts.latent_frames_of else (frames - 1) // counts.frame_multiple + 1
    if counts.vae_one_video:  # the family decodes and encodes video by video
        batch = 1
    return _vae_trace(counts.vae, what, int(batch), frames, *(int(v) for v in video[1:]), str(dtype), counts.frame_multiple, latent_frames,
                      counts.vae_clip)


def audio_decode_bytes(counts: GeneratorCounts, batch: int, num_frames: int, fps: float, dtype: Any) -> int:
    """The most bytes the soundtracks' decode of ``batch`` videos of ``num_frames`` at ``fps`` holds at once, in
    ``dtype``: what the family's ``audio_decode`` runs (Kandinsky 6's audio VAE and vocoder), traced on the meta device
    (:func:`traced_peak_bytes`). 0 where the family traces no sound (``counts.audio_decode`` is None)."""
    if counts.audio_decode is None or batch < 1:
        return 0
    decode, latents, kept = counts.audio_decode(batch, num_frames, fps, dtype)
    return traced_peak_bytes(decode, latents, keep=kept)
