"""The trained LoRA on a generator's transformer(s), shared by the generator's trainers
(``flow-grpo``, ``dpo``) for every family: its settings, adding it (peft through diffusers'
``add_adapter``), the reference policy (the same transformer with the LoRA off), other weights
swapped in for a while (an EMA, nft's old policy), and its share of an accelerate checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from cac_align.config import RecipeError
from cac_align.gen.generator import save_lora

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["LORA_EXPERTS", "LoraSettings", "adapted_denoiser", "adapters_disabled", "add_lora", "add_expert_loras", "build_optimizer", "ddp_kwargs_handlers", "freeze_pipeline", "load_lora_copy",
           "register_lora_checkpoint", "save_expert_loras", "swapped_lora", "trainable", "trainable_state"]

LORA_EXPERTS = ("high", "low", "both")


@dataclass
class LoraSettings:
    """The LoRA on a generator's transformer(s) (peft, through diffusers' ``add_adapter``).

    Attributes:
        rank: LoRA rank (CaC App. C.4: 32).
        alpha: LoRA alpha (scale = alpha / rank).
        target_modules: module names to adapt; null: the generator family's
            (``lora_target_modules``; Wan: the query/key/value/output projections of both self-
            and cross-attention of every block; LTX-2: the video branch, :data:`cac_align.gen.families.ltx2.VIDEO_BRANCH`).
        init: peft ``init_lora_weights`` ("gaussian" as Flow-GRPO, or true for peft's default);
            either way B = 0, so the adapter starts as the identity.
        experts: which transformer of a two-expert model (Wan2.2-A14B) gets the LoRA: "high"
            (the high-noise expert, ``transformer``; default), "low" (``transformer_2``) or
            "both"; a one-transformer model takes "high". Only the sampling steps an adapted
            expert serves are trained (the others' gradients are zero). The default is what the
            trainers that run Wan2.2-A14B do: Flow-Factory's A14B recipes train ``transformer``
            alone (their full and NFT recipes; their GRPO LoRA recipe adapts both but trains only
            SDE steps 1-3 of 10, all high-noise), miles_diffusion loads and trains ``transformer``
            alone on high-noise steps, and verl-omni's trainer calls ``transformer`` only.
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"experts": LORA_EXPERTS}

    rank: int = 32
    alpha: float = 64.0
    target_modules: list[str] | None = None
    init: str = "gaussian"
    experts: str = "high"

    def __post_init__(self) -> None:
        if self.experts not in LORA_EXPERTS:
            raise ValueError(f"lora.experts must be one of {LORA_EXPERTS}, got {self.experts!r}")


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's trainable parameters (the LoRA weights) by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().contiguous() for name, p in trainable(model).items()}


def add_lora(transformer: torch.nn.Module, settings: LoraSettings, seed: int) -> None:
    """Freeze ``transformer`` and add the trained LoRA (peft), its weights in float32.
    ``settings.target_modules`` must be given (a job fills it from the generator's family)."""
    if not settings.target_modules:
        raise ValueError("lora.target_modules is unset: name the modules to adapt (a job takes its generator family's)")
    transformer.requires_grad_(False)
    init: Any = {"true": True, "false": False}.get(str(settings.init).lower(), settings.init)
    torch.manual_seed(seed)  # LoRA A's random init: the same on every process
    transformer.add_adapter(
        LoraConfig(r=settings.rank, lora_alpha=settings.alpha, init_lora_weights=init, target_modules=list(settings.target_modules))
    )
    for param in transformer.parameters():
        if param.requires_grad:  # train the adapter in float32 even when the base is bf16
            param.data = param.data.float()


def add_expert_loras(denoiser: Any, settings: LoraSettings, seed: int) -> list[int]:
    """Add the trained LoRA to the experts ``settings.experts`` names
    (:class:`~cac_align.gen.experts.WanDenoiser`); every other parameter frozen. Returns the
    adapted experts' indices. Expert ``i``'s LoRA A is drawn with seed ``seed + i`` (a Wan-2.1
    run's LoRA is drawn as it always was)."""
    wanted = {"high": [0], "low": [1], "both": [0, 1]}[settings.experts]
    if max(wanted) >= len(denoiser.experts):
        raise RecipeError(f"lora.experts={settings.experts!r}: this generator has one transformer (only 'high' adapts it)")
    for index, expert in enumerate(denoiser.experts):
        if index in wanted:
            add_lora(expert, settings, seed + index)
        else:
            expert.requires_grad_(False)
    return wanted


def freeze_pipeline(pipe: Any) -> None:
    """Every model of ``pipe`` frozen (its ``requires_grad`` off), whatever its family holds."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)


def adapted_denoiser(pipe: Any, family: Any, settings: LoraSettings, seed: int, gradient_checkpointing: bool = False) -> Any:
    """A trainer's model: the family's denoiser of ``pipe`` (:meth:`GeneratorFamily.denoiser
    <cac_align.gen.family.GeneratorFamily.denoiser>`: for Wan the
    :class:`~cac_align.gen.experts.WanDenoiser`) with the trained LoRA on ``settings.experts``
    (:func:`add_expert_loras`); everything else of the pipeline frozen. What ``flow-grpo`` and
    ``dpo`` hand to accelerate."""
    freeze_pipeline(pipe)  # text encoder(s), VAE(s), connectors, vocoder: frozen; the LoRA alone trains
    denoiser = family.denoiser(pipe)  # the expert serving each timestep, as the pipeline picks it
    if settings.target_modules is None:  # the family's (Wan: every attention projection; LTX-2: the video branch)
        settings = dataclasses.replace(settings, target_modules=list(family.lora_target_modules))
    add_expert_loras(denoiser, settings, seed)
    if gradient_checkpointing:
        for expert in denoiser.experts:
            expert.enable_gradient_checkpointing()
    return denoiser


def ddp_kwargs_handlers(generator_name: str, settings: LoraSettings) -> list | None:
    """accelerate's ``kwargs_handlers`` for a trainer of ``generator_name``: with a LoRA on both
    experts of a two-expert model a backward runs through one expert, the other's parameters
    unused in it, which DDP must be told (``find_unused_parameters``); None otherwise."""
    from accelerate.utils import DistributedDataParallelKwargs

    from cac_align.gen.family import family_of

    if settings.experts == "both" and family_of(generator_name).experts == 2:
        return [DistributedDataParallelKwargs(find_unused_parameters=True)]
    return None


def save_expert_loras(denoiser: Any, folder: Any, states: list | None = None) -> None:
    """Each adapted expert's LoRA in ``folder`` as diffusers' LoRA files: the high-noise expert's
    as ``pytorch_lora_weights.safetensors``, the low-noise one's as
    ``pytorch_lora_weights_transformer_2.safetensors`` (diffusers loads it with
    ``load_lora_weights(folder, weight_name=..., load_into_transformer_2=True)``;
    :func:`cac_align.gen.generator.load_lora` loads both). ``states``: each expert's LoRA weights
    whole (a sharded denoiser's: :func:`cac_align.gen.parallel.expert_states`); None: read
    from the experts."""
    from cac_align.gen.generator import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2

    for index in denoiser.trained_experts():
        save_lora(denoiser.experts[index], folder, weight_name=LORA_WEIGHT_NAME if index == 0 else LORA_WEIGHT_NAME_2,
                  pipeline_class=denoiser.family.pipeline_class, state_dict=None if states is None else states[index])


def export_lora(denoiser: Any, target: Path, *, sharded: bool, main: bool, weights: dict | None = None) -> None:
    """The adapted experts' LoRA as diffusers' files in ``target`` (:func:`save_expert_loras`), replacing what was there:
    a trainer's ``lora/``, or a copy of it at an evaluation. ``weights``: swapped in first (flow-grpo's EMA; None: the
    LoRA as it is). Call on every process: a sharded denoiser's processes each hand over their shards (a collective),
    and the ``main`` process writes."""
    import shutil

    from cac_align.gen.parallel.gather import expert_states

    with swapped_lora(denoiser, weights):
        states = expert_states(denoiser) if sharded else None
        if main:
            shutil.rmtree(target, ignore_errors=True)
            save_expert_loras(denoiser, target, states)


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The reference policy: the same transformer with its LoRA turned off."""
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


@contextlib.contextmanager
def swapped_lora(model: torch.nn.Module, weights: dict | None):
    """``weights`` (name -> tensor of each trainable weight: flow-grpo's EMA for evaluation and export,
    nft's old policy for sampling) swapped into ``model``'s trainable (LoRA) weights inside, the training
    weights back after; None: nothing swapped."""
    if weights is None:
        yield
        return

    params = trainable(model)
    backup = {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(backup[name])


def register_lora_checkpoint(acc: Accelerator, model: torch.nn.Module, ema: dict | None) -> None:
    """A LoRA trainer's share of a checkpoint, which is accelerate's state as for stage 3 (one
    format for every trainer: ``save_state`` / ``load_state`` plus our ``state.json``).

    ``model.safetensors`` holds the trainable (LoRA) weights, not the frozen 1.3B transformer;
    ``lora/`` beside it is the same LoRA as a diffusers folder (``generator.lora``); with EMA,
    ``ema.safetensors``. Loading checks the LoRA against this run's settings."""

    def save(models: list, weights: list, folder: str) -> None:
        weights[0] = trainable_state(model)  # written (by the main process) as model.safetensors
        if acc.is_main_process:
            save_expert_loras(model, Path(folder) / "lora")
            if ema is not None:
                save_file({k: v.cpu().contiguous() for k, v in ema.items()}, str(Path(folder) / "ema.safetensors"))

    def load(models: list, folder: str) -> None:
        models.pop(0)  # its file holds the LoRA alone: loaded here, not by accelerate's strict load
        path = Path(folder) / "model.safetensors"
        if not path.is_file():
            raise RecipeError(f"{folder}: no model.safetensors; a checkpoint of an earlier cac_align (trainable.safetensors) cannot be resumed")
        saved, params = _named_as(load_file(str(path)), trainable(model)), trainable(model)
        if set(saved) != set(params):
            raise RecipeError(f"{folder}: its LoRA weights do not match this run's LoRA settings")
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value.to(params[name].dtype))
            if ema is not None:
                saved_ema = _named_as(load_file(str(Path(folder) / "ema.safetensors")), ema)
                for name in ema:
                    ema[name].copy_(saved_ema[name])

    acc.register_save_state_pre_hook(save)
    acc.register_load_state_pre_hook(load)


def _named_as(saved: dict[str, torch.Tensor], names: Any) -> dict[str, torch.Tensor]:
    """A checkpoint's LoRA tensors under this run's names: a Wan-2.1 checkpoint written before the
    experts were wrapped (``blocks.0...``) resumes a run whose names say ``transformer.blocks.0...``."""
    if set(saved) <= set(names):
        return saved
    prefixed = {f"transformer.{k}": v for k, v in saved.items()}
    return prefixed if set(prefixed) <= set(names) else saved


# ---------------------------------------------------------------------------------------
# A sharded trainer's checkpoint (parallel.shard=fsdp2): the same files, gathered whole
# ---------------------------------------------------------------------------------------
OPTIMIZER_FILE = "optimizer.safetensors"


def save_sharded_lora_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, ema: dict | None, is_main: bool) -> None:
    """A sharded run's checkpoint files, call on every process (each gathers its shards):
    ``model.safetensors`` (the LoRA, whole, named as one process names it), ``lora/``,
    ``ema.safetensors`` and ``optimizer.safetensors`` (the optimizer's state whole, by parameter name
    (AdamW's moments; none for plain SGD), with its param groups in the header): the files one process writes, so the checkpoint does not
    depend on how many processes wrote it (accelerate's ``save_state`` would keep the main
    process's shard of the optimizer only)."""
    import json

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from cac_align.gen.parallel.gather import expert_states, full_tensors, full_trainable

    folder = Path(folder)
    lora = full_trainable(model)
    experts = expert_states(model)
    ema_full = full_tensors(ema) if ema is not None else None
    optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return
    save_file(lora, str(folder / "model.safetensors"))
    save_expert_loras(model, folder / "lora", experts)
    if ema_full is not None:
        save_file(ema_full, str(folder / "ema.safetensors"))
    tensors, scalars = {}, {}
    for name, state in optim["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"{name}::{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}::{key}"] = float(value)
    save_file(tensors, str(folder / OPTIMIZER_FILE), metadata={"param_groups": json.dumps(optim["param_groups"]), "scalars": json.dumps(scalars)})


def load_sharded_lora_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, ema: dict | None) -> None:
    """Load :func:`save_sharded_lora_checkpoint`'s files into a sharded model, its optimizer and
    EMA: every process reads them (the run folder is on storage every node reads) and keeps its
    shards of its own copy, so no LoRA byte is sent between processes (nor between nodes)."""
    import json

    from safetensors import safe_open
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor, distribute_tensor

    folder = Path(folder)
    path = folder / "model.safetensors"
    if not (path.is_file() and (folder / OPTIMIZER_FILE).is_file()):
        raise RecipeError(f"{folder}: not a sharded run's checkpoint (no model.safetensors and {OPTIMIZER_FILE})")
    params = trainable(model)
    saved = _named_as(load_file(str(path)), params)
    if set(saved) != set(params):
        raise RecipeError(f"{folder}: its LoRA weights do not match this run's LoRA settings")

    def into(target: torch.Tensor, value: torch.Tensor) -> None:
        value = value.to(target.dtype)
        if isinstance(target, DTensor):
            value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
        target.copy_(value)

    with torch.no_grad():
        for name, value in saved.items():
            into(params[name], value)
        if ema is not None:
            saved_ema = _named_as(load_file(str(folder / "ema.safetensors")), ema)
            for name in ema:
                into(ema[name], saved_ema[name])
    with safe_open(str(folder / OPTIMIZER_FILE), "pt") as handle:
        metadata = handle.metadata()
        state: dict[str, dict[str, Any]] = {}
        for key in handle.keys():
            name, field_name = key.rsplit("::", 1)
            state.setdefault(name, {})[field_name] = handle.get_tensor(key)
    for key, value in json.loads(metadata["scalars"]).items():
        name, field_name = key.rsplit("::", 1)
        state.setdefault(name, {})[field_name] = torch.tensor(value)
    full = {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    if not state:  # a stateless optimizer's (plain SGD, optimizer=sgd): torch's loader refuses an empty state; its groups' settings are all
        for group, saved_group in zip(optimizer.param_groups, full["param_groups"], strict=True):
            group.update({key: value for key, value in saved_group.items() if key != "params"})
        return
    set_optimizer_state_dict(model, optimizer, optim_state_dict=full, options=StateDictOptions(full_state_dict=True))


def load_lora_copy(targets: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Read a copy of the LoRA kept beside a checkpoint (nft's old policy, an adaptive reference) into
    ``targets`` (name -> tensor, this process's shards where sharded), in place; refused in one line when
    the file is missing or holds other weights (``what`` names the copy in the message)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not path.is_file():
        raise RecipeError(f"{path.parent}: no {path.name} ({what}); this checkpoint was not written by a run with it and cannot be resumed by one")
    saved = load_file(str(path))
    if set(saved) != set(targets):
        raise RecipeError(f"{path.parent}: its {what}'s weights do not match this run's LoRA settings")
    with torch.no_grad():
        for name, target in targets.items():
            value = saved[name].to(target.dtype)
            if isinstance(target, DTensor):  # sharded: keep this process's shard
                value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements)
            target.copy_(value)


def build_optimizer(config: Any, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The LoRA weights' optimizer, as a trainer's ``config.optimizer`` names it (flow-grpo's, nft's): AdamW
    (``learning_rate``, ``adam_beta1``, ``adam_beta2``, ``adam_eps``, ``weight_decay``) or plain SGD (no momentum)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
                             weight_decay=config.weight_decay)
