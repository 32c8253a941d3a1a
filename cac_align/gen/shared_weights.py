"""One copy per node of a frozen module's weights: the prompt encoders of a trainer's processes.

Why. A sharded trainer keeps its text encoder(s) on the CPU between encodes (``parallel.encoder_on_device``
false, the default under FSDP2), and each process on a node used to hold its own copy there: MiniMax-H3's
62 GiB text encoder on an 8-GPU node was 497 GiB of host memory. The encoders are frozen and equal on
every process, so one copy can serve them all.

How (:func:`cac_align.gen.parallel.load_generator` runs it):

1. the first process on a node loads the encoders as before, then :func:`publish` copies each of their
   tensors (every parameter and buffer, a tensor held under several names once) into one file per
   encoder, mapped with ``torch.from_file(..., shared=True)``, and points the module's tensors at views
   of that file, which frees its own copy tensor by tensor;
2. the other processes build the encoders on the meta device from their configs (no weight read) and
   :func:`attach` points them at views of the same file, mapped privately (copy-on-write: a write by one
   process, which a frozen encoder never makes, would stay its own);
3. once every process has mapped it, the file is deleted: the mappings keep its pages until the last
   process exits, so nothing is left on disk or in ``/dev/shm`` after a run.

The kernel keeps the file's pages once for every process that maps it (in ``/dev/shm``: shared memory;
elsewhere: the page cache). An encoder that visits the GPU to encode (``module.to(device)``) comes back
to the same pages with :meth:`MappedTensors.restore`, where ``module.to("cpu")`` would make each process
a private copy again.

The file is a plain byte layout of our own (each tensor's bytes at an offset aligned to 64 bytes); the
layout itself (names, dtypes, shapes, offsets) travels between processes as a JSON-able dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["MappedTensors", "attach", "module_bytes", "publish"]

ALIGNMENT = 64  # bytes: every tensor's offset in the file (any dtype's element size divides it)


@dataclass
class MappedTensors:
    """The tensors of one module that are views of a shared file, and where each sits in the module.

    Attributes:
        path: the file (deleted once every process has mapped it).
        slots: ``(owner, leaf, is_parameter, view)`` for every name the module holds a tensor under.
        bytes: the file's size.
    """

    path: str
    slots: list[tuple[torch.nn.Module, str, bool, torch.Tensor]] = field(default_factory=list)
    bytes: int = 0

    def restore(self) -> None:
        """Point the module back at the file's pages after it visited another device (``.to(device)``).
        A tensor whose dtype or shape has changed since (the module was converted) is not the file's
        any more: it comes back to the CPU as its own copy instead."""
        replaced: dict[int, torch.nn.Parameter] = {}
        kept = []
        for owner, leaf, is_parameter, view in self.slots:
            current = (owner._parameters if is_parameter else owner._buffers)[leaf]
            if current is None or (current.device == view.device and current.data_ptr() == view.data_ptr()):
                continue
            kept.append(current)
            home = view if (current.dtype == view.dtype and current.shape == view.shape) else current.detach().to("cpu")
            _set(owner, leaf, is_parameter, home, replaced)

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s bytes lie in the mapped file."""
        start = self.slots[0][3].untyped_storage().data_ptr() if self.slots else 0
        return bool(self.slots) and start <= tensor.data_ptr() < start + self.bytes


def _set(owner: torch.nn.Module, leaf: str, is_parameter: bool, tensor: torch.Tensor, replaced: dict[int, torch.nn.Parameter]) -> None:
    """``owner``'s ``leaf`` made ``tensor``: a buffer replaced; a parameter keeps its ``Parameter``
    object (and flags) and takes the data, except across the meta device, where torch allows no such
    swap: a new ``Parameter`` then, the same one wherever the old one was held (``replaced``: old id ->
    new; the caller keeps the old objects alive meanwhile, so their ids stay theirs)."""
    if not is_parameter:
        owner._buffers[leaf] = tensor
        return
    current = owner._parameters[leaf]
    if current.is_meta == tensor.is_meta:
        current.data = tensor
        return
    if id(current) not in replaced:
        replaced[id(current)] = torch.nn.Parameter(tensor, requires_grad=current.requires_grad)
    owner._parameters[leaf] = replaced[id(current)]


def _named_tensors(module: torch.nn.Module) -> tuple[list[tuple[str, bool, torch.Tensor]], dict[str, str]]:
    """Every parameter and buffer of ``module`` (non-persistent buffers too: a rope table a state dict
    leaves out) by dotted name, in order; a tensor held under several names (tied weights, a shared
    submodule) listed once, under its first name, with ``aliases``: each other name -> the first."""
    first_of: dict[int, str] = {}
    found: list[tuple[str, bool, torch.Tensor]] = []
    aliases: dict[str, str] = {}
    names: set[str] = set()
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for is_parameter, store in ((True, owner._parameters), (False, owner._buffers)):
            for leaf, tensor in store.items():
                if tensor is None:
                    continue
                name = f"{prefix}.{leaf}" if prefix else leaf
                if name in names:
                    continue
                names.add(name)
                if id(tensor) in first_of:
                    aliases[name] = first_of[id(tensor)]
                    continue
                first_of[id(tensor)] = name
                found.append((name, is_parameter, tensor))
    return found, aliases


def module_bytes(module: torch.nn.Module) -> int:
    """The bytes :func:`publish` writes for ``module`` (its tensors, each once, aligned)."""
    found, _ = _named_tensors(module)
    return _offsets([t.numel() * t.element_size() for _, _, t in found])[1]


def _offsets(sizes: list[int]) -> tuple[list[int], int]:
    offsets, end = [], 0
    for size in sizes:
        end = -(-end // ALIGNMENT) * ALIGNMENT
        offsets.append(end)
        end += size
    return offsets, max(end, 1)


def _view(storage: torch.Tensor, entry: dict[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"])
    return storage[entry["offset"]: entry["offset"] + entry["nbytes"]].view(dtype).view(entry["shape"])


def _point(module: torch.nn.Module, layout: dict[str, Any], storage: torch.Tensor) -> MappedTensors:
    """Every name of ``layout`` in ``module`` made a view of ``storage`` (parameters keep their
    ``Parameter`` objects and flags: only their data changes)."""
    views = {entry["name"]: (entry["parameter"], _view(storage, entry)) for entry in layout["tensors"]}
    mapped = MappedTensors(layout["path"], bytes=layout["bytes"])
    replaced: dict[int, torch.nn.Parameter] = {}
    kept = [t for _, _, t in _named_tensors(module)[0] if t.is_meta]  # alive until every name is pointed (_set); they hold no memory
    for name in (*views, *layout["aliases"]):
        is_parameter, view = views[layout["aliases"].get(name, name)]
        prefix, _, leaf = name.rpartition(".")
        owner = module.get_submodule(prefix)
        _set(owner, leaf, is_parameter, view, replaced)
        mapped.slots.append((owner, leaf, is_parameter, view))
    del kept
    return mapped


def publish(module: torch.nn.Module, path: str | os.PathLike) -> tuple[dict[str, Any], MappedTensors]:
    """Copy ``module``'s tensors into a new file at ``path`` (mapped shared) and point the module at
    them; its own copies are freed as they are replaced. Returns the layout other processes
    :func:`attach` with (JSON-able) and the module's :class:`MappedTensors`."""
    found, aliases = _named_tensors(module)
    meta = [name for name, _, t in found if t.is_meta]
    if meta:
        raise ValueError(f"{type(module).__name__}: tensors on the meta device cannot be shared ({', '.join(meta[:3])})")
    offsets, total = _offsets([t.numel() * t.element_size() for _, _, t in found])
    layout = {"path": str(path), "bytes": total, "aliases": aliases,
              "tensors": [{"name": name, "parameter": is_parameter, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                           "offset": offset, "nbytes": t.numel() * t.element_size()}
                          for (name, is_parameter, t), offset in zip(found, offsets)]}
    storage = torch.from_file(str(path), shared=True, size=total, dtype=torch.uint8)
    for entry, (_, _, tensor) in zip(layout["tensors"], found):
        view = _view(storage, entry)
        view.copy_(tensor.detach())
        tensor.data = view  # its own copy freed now, one tensor at a time: the peak is the file plus one tensor
    del found
    return layout, _point(module, layout, storage)


def attach(module: torch.nn.Module, layout: dict[str, Any]) -> MappedTensors:
    """Point ``module`` (built on the meta device, or holding its own copy) at the file another process
    published with ``layout``, mapped privately. Raises ``ValueError`` where ``module``'s tensors are
    not the published ones (another structure): the names on one side only, or a shape."""
    found, aliases = _named_tensors(module)
    ours = {name: tuple(t.shape) for name, _, t in found} | {name: None for name in aliases}
    theirs = {e["name"]: tuple(e["shape"]) for e in layout["tensors"]} | {name: None for name in layout["aliases"]}
    if set(ours) != set(theirs):
        only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        raise ValueError(f"{type(module).__name__} is not the published module: tensors only here {only_ours[:3]}, only there {only_theirs[:3]}")
    shapes = [n for n, shape in theirs.items() if shape is not None and ours[n] is not None and ours[n] != shape]
    if shapes:
        raise ValueError(f"{type(module).__name__} is not the published module: {shapes[0]} is {ours[shapes[0]]} here, {theirs[shapes[0]]} there")
    storage = torch.from_file(layout["path"], shared=False, size=layout["bytes"], dtype=torch.uint8)
    return _point(module, layout, storage)
