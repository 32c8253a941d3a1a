"""Loading the generator once: what each process builds or reads before :func:`~.parallelize.apply_parallelism`,
and the weights that reach every process from its node's first one.

Loading once a node. Sharded over several processes, only the first process of each node (its
``LOCAL_RANK`` 0; on one node, global rank 0) reads the transformers' weights (every expert) into host
memory, as one process does; every other process builds them on the meta device from their configs
(:func:`load_generator`), adds the same LoRA (on the meta device too), applies the same context
parallel and ``fully_shard``, and then receives every weight, the LoRA's included, from its node's
first process, one tensor at a time in the node's group, keeping its shards (:func:`take_node_weights`),
and the buffers a state dict leaves out (the rope tables). No byte of a weight crosses between nodes.
So every process holds what its node's first process loaded, which is what one process loads. The
VAE(s) load on every process as before: each decodes its own samples. The text encoder(s) too, except
where they live on the CPU between encodes with several processes on a node: then the node's first
process loads them and the others map its copy, one copy per node (:mod:`cac_align.gen.shared_weights`,
``parallel.share_encoders``); each still encodes its own prompts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cac_align.gen.parallel.dims import Layout

__all__ = ["encoders_on", "first_process_state", "load_generator", "remove_stale_copies", "take_node_weights", "to_host"]

log = logging.getLogger(__name__)


def load_generator(layout: Layout, config: Any, device: Any) -> Any:
    """The pipeline ``config`` (a :class:`~cac_align.gen.generator.GeneratorConfig`) names, as this
    process needs it before the LoRA and :func:`~.parallelize.apply_parallelism`. Call once, on every process.

    - Not sharded: loaded whole on ``device``, as one process loads it.
    - Sharded: loaded on the CPU (:func:`~.parallelize.apply_parallelism` puts each process's shards on its device). Over
      several processes, only the first reads the transformers' weights; the others build them on
      the meta device from their configs (:func:`~cac_align.gen.generator.build_generator`'s
      ``empty_transformers``: no weight read, no host memory) and take their shards from the first
      in :func:`~.parallelize.apply_parallelism`. The VAE(s) load whole on every process.
    - The text encoder(s): where they live on the CPU between encodes and several processes share
      a node (``share_encoders``), the node's first process loads them and the others build them
      empty and map its copy (:func:`_share_encoders`); else each process loads its own.
    - A tiny pipeline (drawn in-process from torch's random generator, not read): the first
      process builds it whole and shares the random state after each transformer; the others
      build the transformers on the meta device and the rest from those states
      (:mod:`cac_align.gen.tiny`, "In a sharded run"), so the rest is what the first built.
    """
    from cac_align.gen.generator import build_generator

    share = _shares_encoders(layout, config, device)
    empty_encoders = share and layout.local_rank != 0  # the node's other processes map its first one's copy
    if not layout.sharded:
        pipe = build_generator(dataclasses.replace(config, device=str(device)), empty_encoders=empty_encoders)
    elif layout.world == 1:
        return build_generator(dataclasses.replace(config, device="cpu"))
    elif config.is_synthetic or config.name not in config.family.tiny_names:
        pipe = build_generator(dataclasses.replace(config, device="cpu"), empty_transformers=not layout.reads_weights, empty_encoders=empty_encoders)
    else:
        return _load_tiny_sharded(layout, dataclasses.replace(config, device="cpu"))
    if share:
        _share_encoders(layout, pipe, config.family)
    return pipe



def _shares_encoders(layout: Layout, config: Any, device: Any) -> bool:
    """Whether this run's encoders are one copy per node (``share_encoders``): several processes
    on the node, and a pipeline read from files (a tiny one is drawn in each process)."""
    if layout.world < 2 or config.is_synthetic or config.name in config.family.tiny_names:
        return False
    on_gpu = device is not None and torch.device(device).type != "cpu"
    return layout.settings.shares_encoders(layout.per_node, on_gpu=on_gpu)



def _share_encoders(layout: Layout, pipe: Any, family: Any) -> None:
    """The node's first process publishes its encoders' weights to a shared file, the others map it
    (:mod:`cac_align.gen.shared_weights`); every process calls it. A failure on any process fails
    every process in one line, and the file is gone either way."""
    from cac_align.config import RecipeError
    from cac_align.gen.shared_weights import attach

    local_rank = layout.local_rank
    modules = {name: pipe.components[name] for name in family.encoder_components if isinstance(pipe.components.get(name), torch.nn.Module)}
    folder, mine, homes = None, {"node": _node_name(), "local_rank": local_rank}, {}
    if local_rank == 0:
        folder, published, homes = _publish_encoders(modules, layout.settings.share_dir)
        mine.update(published)
    placed = [None] * layout.world
    torch.distributed.all_gather_object(placed, mine)
    first = next((p for p in placed if p["node"] == mine["node"] and p["local_rank"] == 0), None)
    error = None if first is not None else f"no process with LOCAL_RANK 0 runs on this node ({mine['node']})"
    error = error or (first or {}).get("error")
    if error is None and local_rank != 0:
        try:
            homes = {name: attach(modules[name], layout) for name, layout in first["layouts"].items()}
        except (ValueError, RuntimeError, OSError) as exc:
            error = f"mapping the shared copy failed: {exc}"
    layout.encoder_homes = {id(modules[name]): home for name, home in homes.items()}
    outcomes = [None] * layout.world
    torch.distributed.all_gather_object(outcomes, error)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)  # every process has mapped it (or failed): the mappings keep the pages
    failed = next((o for o in outcomes if o), None)
    if failed:
        raise RecipeError(f"parallel.share_encoders: {failed}; set parallel.share_encoders: false to load a copy in each process")
    if local_rank == 0:
        gib = sum(h.bytes for h in layout.encoder_homes.values()) / 2**30
        log.info("the prompt encoders (%s, %.2f GiB) are one copy in host memory for this node's processes (parallel.share_encoders)",
                 ", ".join(modules), gib)



def _load_tiny_sharded(layout: Layout, config: Any) -> Any:
    from cac_align.gen.generator import build_generator
    from cac_align.gen import tiny

    states = None
    if layout.reads_weights:
        with tiny.recording_transformer_draws() as states:
            pipe = build_generator(config)
    shared = [states]
    torch.distributed.broadcast_object_list(shared, src=0)
    if not layout.reads_weights:
        with tiny.transformers_on_meta(shared[0]):
            pipe = build_generator(config)
    return pipe



def to_host(layout: Layout, module: torch.nn.Module) -> None:
    """``module`` back on the CPU: an encoder whose weights are the node's shared copy back to its
    pages (:meth:`~cac_align.gen.shared_weights.MappedTensors.restore`; ``module.to("cpu")`` would
    give this process a private copy), any other by ``module.to("cpu")``."""
    home = layout.encoder_homes.get(id(module))
    if home is not None:
        home.restore()
    else:
        module.to("cpu")

@contextlib.contextmanager
def encoders_on(layout: Layout, pipe: Any, family: Any):
    """The prompt encoders on the device while they encode, and back on the CPU after, when
    ``encoder_on_device`` says they do not stay (sharded on an accelerator); else nothing moves."""
    device = layout.device
    if layout.settings.keeps_encoder or device is None or device.type == "cpu":
        yield
        return
    modules = [pipe.components[name] for name in family.encoder_components if isinstance(pipe.components.get(name), torch.nn.Module)]
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            to_host(layout, module)
        if device.type == "cuda":
            torch.cuda.empty_cache()



def _node_name() -> str:
    import socket

    return socket.gethostname()


def _share_folder(needed: int, chosen: str | None) -> str:
    """Where the shared copy goes: ``chosen`` (``parallel.share_dir``), else ``/dev/shm`` where it has
    room for ``needed`` bytes, else the system's temporary folder; raises ``OSError`` without room."""
    import tempfile

    candidates = [chosen] if chosen else ["/dev/shm", tempfile.gettempdir()]
    room = {}
    for folder in candidates:
        if os.path.isdir(folder):
            room[folder] = shutil.disk_usage(folder).free
            if room[folder] >= needed:
                return folder
    free = ", ".join(f"{f} {b / 2**30:.1f} GiB free" for f, b in room.items()) or f"{', '.join(candidates)}: no such folder"
    raise OSError(f"the encoders' shared copy needs {needed / 2**30:.1f} GiB ({free}); set parallel.share_dir to a node-local folder with room")


def remove_stale_copies(base: str) -> list[str]:
    """Remove the shared copies in ``base`` that a process which has ended left behind (it was killed
    between writing its copy and deleting it, once mapped): a folder ``cac_align-encoders-<pid>-*``
    whose process no longer runs on this node. Returns the folders removed."""
    removed = []
    for entry in os.scandir(base):
        found = re.fullmatch(r"cac_align-encoders-(\d+)-\w+", entry.name)
        if found is None or not entry.is_dir(follow_symlinks=False) or _runs(int(found.group(1))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        log.warning("removed %s: the shared copy of the prompt encoders a process that has ended left behind", entry.path)
        removed.append(entry.path)
    return removed


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _publish_encoders(modules: dict[str, torch.nn.Module], chosen: str | None) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """The node's first process: ``(folder, what the others need, homes)``: each module published to
    a file of its own in a new folder (:func:`~cac_align.gen.shared_weights.publish`); on a failure,
    ``{"error": ...}`` and the folder removed."""
    import tempfile

    from cac_align.gen.shared_weights import module_bytes, publish

    folder = None
    try:
        base = _share_folder(sum(map(module_bytes, modules.values())), chosen)
        remove_stale_copies(base)
        folder = tempfile.mkdtemp(prefix=f"cac_align-encoders-{os.getpid()}-", dir=base)
        layouts, homes = {}, {}
        for name, module in modules.items():
            layouts[name], homes[name] = publish(module, os.path.join(folder, f"{name}.bin"))
        return folder, {"layouts": layouts}, homes
    except (OSError, ValueError, RuntimeError) as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return None, {"error": f"publishing the shared copy failed: {exc}"}, {}




# ---------------------------------------------------------------------------------------
# Loading once: the first process's weights reach the others' shards (module docstring)
# ---------------------------------------------------------------------------------------
def _tensors(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, bool]]:
    """Every parameter and buffer of ``module`` as ``(qualified name, owner, attribute, is_buffer)``,
    in module order (the same on every process that built the same module)."""
    out = []
    for prefix, owner in module.named_modules():
        for kind, tensors in ((False, owner._parameters), (True, owner._buffers)):
            for attr, tensor in tensors.items():
                if tensor is not None:
                    out.append((f"{prefix}.{attr}" if prefix else attr, owner, attr, kind))
    return out


def first_process_state(expert: torch.nn.Module, rank: int, reads: bool) -> dict[str, torch.Tensor]:
    """Before sharding, on every process: the first process says each tensor's name, shape and dtype;
    the others take its dtypes (their empty transformers were built in ``generator.dtype``, where
    ``from_pretrained`` keeps some modules in float32) and are refused on another name or shape.
    Returns the state dict of a process that read the weights (``reads``: each node's first; its
    tensors kept alive through the sharding), {} on the others."""

    entries = _tensors(expert)
    spec: list[Any] = [[(name, tuple(getattr(owner, attr).shape), getattr(owner, attr).dtype) for name, owner, attr, _ in entries] if rank == 0
                       else None]
    torch.distributed.broadcast_object_list(spec, src=0)
    if rank == 0:
        return expert.state_dict()
    first = spec[0]
    _check_built_alike(expert, entries, first, rank)
    if reads:  # another node's first process: it read the same files, and is its node's source
        return expert.state_dict()
    for (_, owner, attr, is_buffer), (_, _, dtype) in zip(entries, first):
        tensor = getattr(owner, attr)
        if tensor.dtype != dtype:
            if is_buffer:
                owner._buffers[attr] = tensor.to(dtype)
            else:
                tensor.data = tensor.data.to(dtype)
    return {}


def _check_built_alike(expert: torch.nn.Module, entries: list, first: list, rank: int) -> None:
    """Refuse, in one line, a process whose transformer has other tensors than the first process's."""
    from cac_align.config import RecipeError

    mine = [(name, tuple(getattr(owner, attr).shape)) for name, owner, attr, _ in entries]
    if mine != [(name, shape) for name, shape, _ in first]:
        differ = next((f"{a} against {b[:2]}" for a, b in zip(mine, first) if a != b[:2]), f"{len(mine)} tensors against {len(first)}")
        raise RecipeError(f"parallel.shard=fsdp2: process {rank} built {type(expert).__name__} unlike process 0 ({differ}); every process "
                          "must load the same generator (generator.name)")


def take_node_weights(expert: torch.nn.Module, state: dict[str, torch.Tensor], layout: Layout) -> None:
    """After ``fully_shard``, on every process: the (empty) shards of the processes that did not read the
    weights materialised on the mesh's device, then every tensor of the expert's state dict sent whole
    from its node's first process to its node's processes only (a broadcast in the node's group: no
    byte crosses between nodes), one at a time, each process keeping its shard (``distribute_tensor``
    of the whole tensor with its own placements, from its own copy); then the buffers a state dict
    leaves out (non-persistent: the rope tables), whole, the same way."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    device = _mesh_device(layout.fsdp_mesh)
    if not layout.reads_weights:
        expert.to_empty(device=device)
    source = layout.node_leader
    for name, target in expert.state_dict().items():
        shape, dtype = tuple(target.shape), target.dtype
        whole = state[name].detach().to(device=device, dtype=dtype) if layout.reads_weights else torch.empty(shape, dtype=dtype, device=device)
        torch.distributed.broadcast(whole, src=source, group=layout.node_group)
        with torch.no_grad():
            if isinstance(target, DTensor):
                target.to_local().copy_(distribute_tensor(whole, target.device_mesh, target.placements, src_data_rank=None).to_local())
            else:
                target.copy_(whole)
        del whole
    for _, owner, attr, is_buffer in _tensors(expert):
        if is_buffer and attr in owner._non_persistent_buffers_set:
            torch.distributed.broadcast(owner._buffers[attr], src=source, group=layout.node_group)


def _mesh_device(mesh: Any) -> torch.device:
    """The device FSDP2 puts a mesh's shards on: the CPU, or this process's current accelerator."""
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.get_device_module(mesh.device_type).current_device())

