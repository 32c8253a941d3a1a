"""`cac-align dpo`: Diffusion-DPO of a generator's LoRA (Wan-2.1, Wan2.2, LTX-2) on the judge's own pairs (LocalDPO's loss).

    cac-align repair --config recipes/align/repair_tiny_wan.yaml && cac-align dpo --config recipes/align/dpo_tiny.yaml
    accelerate launch --num_processes 8 -m cac_align.cli dpo --config recipes/align/dpo_wan_localdpo.yaml \\
        'pairs=[runs/repair]' out_dir=runs/dpo

A finished ``cac-align repair`` run holds exactly what localized preference training needs: a
generated video with a judged defect (the loser), the same video with only the judged window and
boxes regenerated and judged better (the winner), and the mask between them. Trained offline from
those pairs (and, globally, from Best-of-N's best and worst candidates), with LocalDPO's loss
(:mod:`cac_align.rl.dpo`; defaults are LocalDPO's Wan-2.1 run):

1. **pairs**: read from the run folders in ``pairs`` (:func:`cac_align.jobs.dpo_pairs.read_pairs`);
   rows that give none are counted by reason and listed in ``pairs.json``;
2. **latents**: each pair's videos are encoded once by the model's own VAE (Wan2.2-TI2V-5B's: 48
   channels, 16x; LTX-2's: 128 channels, 32x and 8x in time), its prompt by the model's text
   encoder (UMT5; LTX-2: Gemma-3 and its connectors), and a repair pair's mask pooled onto that
   latent grid, into ``latents/pair_NNNNN.safetensors`` (split over the processes; a resumed run
   reuses them). A Best-of-N pair of an image-to-video model keeps the image both candidates
   animate: it is encoded as the model's pipeline conditions on it (fitted to the pair's frames),
   and the latent frames it fixes (the TI2V-5B's and LTX-2's first) are the image's in the cache,
   not the pair's, so neither member is noised or scored on them (docs/dpo.md, "Image-to-video");
3. **train**: each step takes ``pairs_per_step`` pairs (seeded epochs over the pairs, every pair
   once per epoch), split evenly over the processes and into micro-batches of ``batch_size``. Each
   pair's winner and loser are noised with one noise and one noise level (seeded by the run's seed,
   the step and the pair's place in it: the same on 1 or N processes; with a LoRA on one expert of
   the A14B, drawn among the levels that expert serves); the policy (the LoRA on) and the reference
   (the same experts with the LoRA off) predict both velocities, each pair through the expert that
   serves its level (:class:`~cac_align.gen.experts.WanDenoiser`; LTX-2's transformer also gets an
   audio stream: the pair's own noise at its level on silence, the same for winner and loser,
   policy and reference, docs/dpo.md "LTX-2"); LocalDPO's loss on the video velocities;
   the micro-batches' gradients accumulate into one AdamW update (linear warmup, then constant),
   clipped;
4. **log and checkpoint**: ``metrics.jsonl`` (and TensorBoard / W&B) every step, a checkpoint
   every ``checkpoint_every`` steps and at the last (``checkpoint_every: 0``: none); the final LoRA
   in ``lora/``.

Output directory: ``cac_align_run.json`` (the manifest; docs/run_folders.md), ``pairs.json`` (the
pairs and the skipped rows), ``latents/``, ``metrics.jsonl``, ``checkpoints/step_NNNNNN/`` (as
flow-grpo's: the LoRA, the optimizer, every process's RNG state, ``lora/``; sharded: written whole, no RNG state),
``lora/`` (for ``generator.lora`` of ``bon``, ``flow-grpo``'s evaluation, or diffusers'
``load_lora_weights``), ``tensorboard/``. A killed run continues with ``resume=true``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object
from omegaconf import MISSING, OmegaConf
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from cac_align.config import RecipeError
from cac_align.rl.dpo import DpoLossSettings, dpo_loss, noised_pair, sample_sigmas, squared_error
from cac_align.gen.family import check_prompt_images, check_trainable, fixed_frames
from cac_align.gen.generator import (LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2, Conditioning, GeneratorConfig, check_decoded_by_vae, chunk_count,
                                     encode_conditioning, video_conditioning, video_velocity)
from cac_align.gen.model_card import LoraCard, write_model_card
from cac_align.gen.lora import (LoraSettings, adapted_denoiser, adapters_disabled, ddp_kwargs_handlers, freeze_pipeline, load_sharded_lora_checkpoint,
                               register_lora_checkpoint, export_lora, save_sharded_lora_checkpoint, trainable)
from cac_align.plan.check import check_memory
from cac_align.gen.parallel import (Layout, ParallelSettings, apply_parallelism, check_context_parallel, check_parallel_resume, clip_grad_norm_,
                                   connect_processes, gradient_sync, layout_for, layout_state, load_generator, named_timeout,
                                   prepare_for_training, release_trainer, scaled_backward, to_host)
from cac_align.jobs.dpo_pairs import PairError, PairSet, latent_mask, read_pairs
from cac_align.run.checkpoints import checkpoints, read_checkpoint_state, save_checkpoint
from cac_align.run.dist import derive_seed, next_setting, per_process, step_indices
from cac_align.run.folder import RunFolder, config_fingerprint, keep_log_steps, write_text_atomic
from cac_align.run.input_files import existing
from cac_align.run.metrics import LOG_WITH, end_trackers, log_metrics, merge_sums, start_trackers, trackers_for

__all__ = ["DpoConfig", "run"]

log = logging.getLogger(__name__)

DPO_OUTPUTS = ("pairs.json", "latents", "checkpoints", "lora", "tensorboard", "wandb", "metrics.jsonl")
# Settings that may change when a run is resumed (they change no update).
RUN_ONLY_KEYS = ("out_dir", "steps", "resume", "overwrite", "checkpoint_every", "keep_checkpoints", "log_with", "generator.device",
                 "memory_budget_gib", "parallel.timeout_s", "parallel.share_encoders", "parallel.share_dir")


def _localdpo_lora() -> LoraSettings:
    return LoraSettings(rank=64, alpha=128.0, init="true")  # LocalDPO train_wanx21.py 237-242: r 64, alpha 128, peft's init


@dataclass
class DpoConfig:
    """Config of `cac-align dpo` (defaults: LocalDPO's Wan-2.1 run, ``train_wanx_base.sh``).

    Attributes:
        out_dir: the run folder (module docstring).
        pairs: finished ``repair`` (localized pairs) and ``bon`` (global pairs) run folders.
        generator: the base Wan model the LoRA is trained on (its name, dtypes, device, text length;
            the pairs' videos set the frames and size).
        lora: the trained LoRA (LocalDPO: rank 64, alpha 128, q/k/v/out of both attentions).
        memory_budget_gib: the memory per device the plan is checked against (null: the GPU's own;
            on a CPU the plan is printed, and checked only against this).
        parallel: how the processes share the generator (:mod:`cac_align.gen.parallel`): FSDP2
            sharding (``shard: fsdp2``) and context parallel (``context_parallel: 2``); the default
            is data parallel with a whole generator on every process.
        loss: LocalDPO's loss settings (:class:`cac_align.rl.dpo.DpoLossSettings`).
        steps: AdamW updates.
        pairs_per_step: pairs per update over all processes (a global intent: split over the
            processes, then into micro-batches whose gradients accumulate).
        batch_size: pairs per micro-batch per process (LocalDPO: 2 at 49 frames).
        learning_rate, adam_beta1, adam_beta2, adam_eps, weight_decay: AdamW on the LoRA
            (LocalDPO: 5e-6, 0.9, 0.95, 1e-8, 1e-3).
        warmup_steps: linear warmup of the learning rate, then constant (LocalDPO: 10).
        max_grad_norm: gradient clipping (0 turns it off).
        mixed_precision: "no", "bf16" or "fp16" (accelerate autocast).
        gradient_checkpointing: recompute activations in the backward pass.
        seed: LoRA init, pair order, every pair's noise.
        checkpoint_every: checkpoint every this many steps and at the last step, which a finished
            run resumes or extends from (0: no checkpoint at all; ``lora/`` is still written, but
            a killed run starts again from step 0 and a finished one cannot be extended).
        keep_checkpoints: how many recent checkpoints to keep.
        log_with: "tensorboard", "wandb", "both" or "none" (``metrics.jsonl`` always).
        resume: continue from the latest checkpoint in ``out_dir``.
        overwrite: replace another run in ``out_dir`` (its outputs only).
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"mixed_precision": ("no", "bf16", "fp16"), "log_with": tuple(LOG_WITH)}

    out_dir: str = MISSING
    pairs: list[str] = MISSING
    generator: GeneratorConfig = field(default_factory=GeneratorConfig.unset)
    lora: LoraSettings = field(default_factory=_localdpo_lora)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    memory_budget_gib: float | None = None
    loss: DpoLossSettings = field(default_factory=DpoLossSettings)
    steps: int = 1000
    pairs_per_step: int = 8
    batch_size: int = 2
    learning_rate: float = 5e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 1e-3
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_with: str = "tensorboard"
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "pairs_per_step", "batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: no checkpoint), got {self.checkpoint_every}")
        if isinstance(self.pairs, str):
            self.pairs = [self.pairs]
        if self.pairs != MISSING and not self.pairs:
            raise ValueError("pairs: name at least one finished `cac-align repair` or `cac-align bon` run folder")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.max_grad_norm < 0:
            raise ValueError("learning_rate must be > 0, warmup_steps and max_grad_norm >= 0")
        if str(self.mixed_precision).lower() == "false":  # YAML reads an unquoted `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.generator.lora is not None:
            raise ValueError("generator.lora is for generation; dpo trains a new LoRA on the base model")
        check_decoded_by_vae(self.generator, "dpo")  # dpo trains on videos and decodes nothing
        check_trainable(self.generator)  # weights no trainer can adapt (Cosmos 3's FP8): refused before they load
        if self.lora.target_modules is None:  # the family's: Wan's attention projections, LTX-2's video branch
            self.lora.target_modules = list(self.generator.family.lora_target_modules)
        if self.lora.rank < 1 or not self.lora.target_modules:
            raise ValueError("lora.rank must be >= 1 and lora.target_modules non-empty")
        if self.parallel.shard == "fsdp2" and self.mixed_precision == "fp16":
            raise ValueError("parallel.shard=fsdp2 trains in mixed_precision 'bf16' or 'no' (fp16's loss scaling is not wired to the shards)")
        trackers_for(self.log_with)


# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------
@dataclass
class StepPlan:
    """Per-process numbers derived from the config (the one place they are derived)."""

    num_processes: int
    rank: int
    local_pairs: int
    micro_batches: int

    @property
    def local_range(self) -> range:
        return range(self.rank * self.local_pairs, (self.rank + 1) * self.local_pairs)


def plan_step(config: DpoConfig, num_processes: int, rank: int) -> StepPlan:
    """This process's share of a step; raises :class:`RecipeError` when ``pairs_per_step`` does not
    split into equal micro-batches (the gradient is then a mean over the step's pairs, whatever
    the number of processes)."""
    def splits(pairs: int) -> bool:
        return pairs % num_processes == 0 and (pairs // num_processes) % config.batch_size == 0

    suggestion = next_setting(config.pairs_per_step, splits)
    local = per_process(config.pairs_per_step, num_processes, "pairs_per_step", f"set pairs_per_step={suggestion}",
                        context_parallel=config.parallel.context_parallel, fits=lambda share: share % config.batch_size == 0)
    if local % config.batch_size:
        raise RecipeError(f"pairs_per_step={config.pairs_per_step} gives {local} pairs per process, not a multiple of batch_size="
                          f"{config.batch_size}; change one of them")
    return StepPlan(num_processes, rank, local, local // config.batch_size)


def memory_inputs(config: DpoConfig, video: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """What the memory plan (:func:`cac_align.plan.check.plan_generator`) needs of a dpo recipe
    beyond its generator, LoRA and layout: a micro-batch's rows (``batch_size`` pairs, a winner and
    a loser each), its pairs' video ``(frames, height, width)`` (None: the generator's size, which
    the pairs' bon or repair recipe made them at) and the latent cache's encode of one video at a
    time; no reward."""
    return dict(batch_per_process=config.batch_size * 2, gradient_checkpointing=config.gradient_checkpointing, video=video, encode_batch=1)


def pair_noise(
    seed: int, step: int, position: int, shape: tuple[int, ...], settings: DpoLossSettings, sigma_range: tuple[float, float] = (0.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise ``shape`` and noise level of the pair at ``position`` of ``step``: seeded by
    (seed, step, position), so the same on 1 or N processes and on resume. The level is drawn in
    ``sigma_range``, the levels the adapted experts serve (:meth:`WanDenoiser.sigma_range`)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, step, position, 11))
    noise = torch.randn(shape, generator=generator)
    return noise, sample_sigmas(1, generator, settings, sigma_range)[0]


def side_noise(seed: int, step: int, position: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The noise of the pair at ``position`` of ``step`` for the latents that go with its video
    into the transformer (LTX-2's audio; module docstring), seeded apart from its video noise."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, step, position, 13)))


def pair_chunk(seed: int, step: int, position: int, chunks: int) -> int:
    """The chunk the pair at ``position`` of ``step`` trains, of an autoregressive family's ``chunks`` (Helios): drawn
    uniformly, seeded by (seed, step, position) apart from its noise, as its noise level is drawn (one term of the
    loss a pair and step, its expectation every chunk's)."""
    return int(torch.randint(chunks, (1,), generator=torch.Generator().manual_seed(derive_seed(seed, step, position, 17))))


def chunk_rows(family: Any, batch: dict[str, torch.Tensor], cond: Conditioning, picks: Sequence[int], chunks: int) -> tuple[dict[str, torch.Tensor], Conditioning, Conditioning]:
    """A micro-batch of pairs cut to each pair's chunk ``picks[r]`` (:func:`pair_chunk`): its ``winner``, ``loser`` and
    ``mask`` ``(B, C, f, H', W')`` / ``(B, f, H', W')``, and the winners' and losers' conditioning, each with the
    history of its own clean earlier chunks (teacher forcing, :func:`~cac_align.gen.generator.video_conditioning`)."""
    frames = batch["winner"].shape[2] // chunks
    part = {key: torch.stack([value[r, ..., c * frames:(c + 1) * frames, :, :] for r, c in enumerate(picks)]) for key, value in batch.items()}
    member = {name: Conditioning.cat([video_conditioning(family, cond[[r]], batch[name][r:r + 1], c, chunks) for r, c in enumerate(picks)])
              for name in ("winner", "loser")}
    return part, member["winner"], member["loser"]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The learning rate's factor at update ``step`` (0-based): linear warmup, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


# ---------------------------------------------------------------------------------------
# Run folder and the latent cache
# ---------------------------------------------------------------------------------------
def _run_folder(config: DpoConfig, pairs: PairSet, processes: int | None = None) -> RunFolder:
    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    fingerprint = config_fingerprint(config, RUN_ONLY_KEYS)
    fingerprint["pairs_sha256"] = pairs.sha256  # the same folders holding other pairs are another run
    folder = RunFolder(config.out_dir, "dpo", DPO_OUTPUTS, fingerprint, resolved, overwrite=config.overwrite, processes=processes)
    if folder.resuming and not config.resume:
        raise RecipeError(f"out_dir={config.out_dir!r} already holds this DPO run; pass resume=true to continue it, overwrite=true to "
                          "replace it, or choose another out_dir")
    if config.resume and not folder.resuming:
        log.warning("resume=true but %s holds no run yet: starting from step 0", config.out_dir)
    return folder


def _cache_path(out: Path, index: int) -> Path:
    return out / "latents" / f"pair_{index:05d}.safetensors"


# A cache file's tensors besides the prompt's conditioning (whose names are the family's: Wan's ``embeds``)
PAIR_TENSORS = ("winner", "loser", "mask")


def encode_pair(pipe: Any, family: Any, pair: Any, generator: GeneratorConfig, encode: Callable[[Any, np.ndarray], torch.Tensor]) -> dict[str, torch.Tensor]:
    """One pair's cached tensors: ``winner`` and ``loser`` latents ``(C, T, H, W)`` float32, ``mask``
    ``(T, H, W)`` float32 (all 0 for a pair without one), and the prompt's conditioning, one row
    (the family's tensors: Wan's ``embeds`` ``(L, D)``)."""
    from cac_align.video import load_video

    try:  # a video the model's VAE cannot take (Helios: a frame count its chunks do not make), named with its pair
        winner = encode(pipe, np.asarray(load_video(pair.winner).frames))
        loser = encode(pipe, np.asarray(load_video(pair.loser).frames))
    except ValueError as exc:
        raise PairError(f"{pair.where}: {exc}") from exc
    if winner.shape != loser.shape:
        raise PairError(f"{pair.where}: winner and loser encode to latents of shapes {tuple(winner.shape)} and {tuple(loser.shape)}")
    temporal, spatial, _ = family.latent_grid(pipe)
    mask = latent_mask(pair, temporal, spatial, getattr(family, "chunk_frames", None))  # Helios: the VAE restarts every chunk
    if mask is not None and tuple(mask.shape) != tuple(winner.shape[1:]):
        raise PairError(f"{pair.where}: its mask on the latent grid is {tuple(mask.shape)}, its latents {tuple(winner.shape[1:])}")
    # the pair's own frames and size: the image a pair animates is fitted to them as the pipeline fits it, and a prompt
    # whose tokens name them (Cosmos 3's duration and resolution sentences) is encoded for them
    fitted = dataclasses.replace(generator, height=pair.height, width=pair.width, num_frames=pair.frames)
    guidance = family.guidance(fitted, guided=False, fps=pair.fps)
    cond, _ = encode_conditioning(pipe, family, [pair.prompt], [pair.image], fitted, guidance)
    fixed = fixed_frames(cond)  # the frames an image fixes are the image's, not the policy's: neither member trains on them
    winner, loser = winner[:, fixed:], loser[:, fixed:]
    mask = None if mask is None else mask[fixed:]
    tensors = {"winner": winner.float().contiguous(), "loser": loser.float().contiguous(),
               "mask": torch.zeros(winner.shape[1:]) if mask is None else torch.as_tensor(mask).float()}
    row = cond.row(0)
    if set(row) & set(tensors):
        raise ValueError(f"a family's conditioning names {sorted(set(row) & set(tensors))}, which a pair's cache file uses")
    return {**tensors, **row}


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
class _Trainer:
    """State of one run: setup() builds everything, train() is the loop, cleanup() ends it."""

    def __init__(self, config: DpoConfig, pipe: Any = None, encode: Callable[[Any, np.ndarray], torch.Tensor] | None = None):
        self.config, self.pipe = config, pipe
        self.family = config.generator.family  # what the model is, from its own files (cac_align.gen.family)
        self.encode = encode or self.family.encode_video

    # -- setup -----------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        self.out = Path(config.out_dir)
        # 1. the pairs, checked before anything loads; first that each run is there (every dpo recipe names
        #    an outputs/ folder that `repair` or `bon` writes, so running dpo first is a likely first mistake)
        for source in config.pairs:
            existing(source, "pairs", "file or folder", "a `cac-align repair` or `cac-align bon` run writes it: run one of them first")
        # what the model's VAE encodes: k * frame_multiple + frame_remainder frames (1 unless the family says: cac_align.gen.family)
        self.pairs = read_pairs(config.pairs, self.family.spatial_multiple, self.family.frame_multiple, getattr(self.family, "frame_remainder", 1))
        if not self.pairs.pairs:
            raise RecipeError(f"pairs: no pair in {config.pairs}: {self.pairs.summary()}")
        shapes = sorted({(p.frames, p.height, p.width, round(p.fps, 3)) for p in self.pairs.pairs})
        if len(shapes) > 1:
            raise RecipeError(f"pairs: videos of several shapes {shapes} (frames, height, width, fps); train on one shape per run")
        # image-to-video pairs keep their image: they train an image-to-video model, text-only pairs a text one
        check_prompt_images(self.family, [p.image for p in self.pairs.pairs], f"pairs {list(config.pairs)}")
        if config.parallel.context_parallel > 1 and any(p.image for p in self.pairs.pairs):
            raise RecipeError(f"parallel.context_parallel={config.parallel.context_parallel}: image-to-video runs are not split over a "
                              "context-parallel group (LTX-2's plan does not split the image frame's own timesteps, and no job run with "
                              "images is proven equal to one process under it); shard with parallel.shard=fsdp2 and context_parallel=1")
        # connected with parallel.timeout_s, keyed by torchrun's restart round (gen/parallel/connect.py)
        connected = connect_processes(config.parallel, cpu=config.generator.device == "cpu")
        self.accelerator = Accelerator(
            cpu=config.generator.device == "cpu",
            mixed_precision=config.mixed_precision,
            log_with=list(trackers_for(config.log_with)) or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "tensorboard")),
            kwargs_handlers=[*(ddp_kwargs_handlers(config.generator.name, config.lora) or []), *connected],
        )
        acc = self.accelerator
        # the processes' layout: data parallel x context parallel (cac_align.gen.parallel)
        self.layout: Layout = layout_for(acc, config.parallel)
        self.plan = plan_step(config, self.layout.dp, self.layout.dp_rank)
        if self.pipe is None:  # the memory plan, from the model's configs, before anything loads (cac_align/plan/)
            frames, height, width, _ = shapes[0]
            video = dataclasses.replace(config.generator, num_frames=frames, height=height, width=width)
            check_context_parallel(self.family, video, config.parallel)
            check_memory(config.generator, config.lora, config.parallel, acc.num_processes, budget_gib=config.memory_budget_gib,
                         device=acc.device, main_process=acc.is_main_process, **memory_inputs(config, (frames, height, width)))
        run_folder = _run_folder(config, self.pairs, acc.num_processes)  # the processes: named if the layout changes
        found = checkpoints(self.out) if run_folder.resuming else []
        if self.pipe is None:  # sharded: loaded on the CPU (the transformers' weights by the first process only); the encoders come to the device for the latent cache only
            self.pipe = load_generator(self.layout, config.generator, acc.device)
        pipe = self.pipe
        freeze_pipeline(pipe)
        acc.wait_for_everyone()
        if acc.is_main_process:
            run_folder.start()  # with overwrite: the old run's outputs go now, and only those
            (self.out / "latents").mkdir(exist_ok=True)
            write_text_atomic(self.out / "pairs.json", json.dumps({
                "pairs": [{"index": i, "prompt": p.prompt, "winner": p.winner, "loser": p.loser, "source": p.source, "row": p.where,
                           "scores": list(p.scores), "masked": p.evidence is not None,
                           **({"image": p.image.image, "last_image": p.image.last_image} if p.image else {})}
                          for i, p in enumerate(self.pairs.pairs)],
                "skipped": self.pairs.skipped}, indent=1) + "\n")
            log.info("dpo: %s", self.pairs.summary())
        acc.wait_for_everyone()

        # 2. the latent cache: each process encodes its share of what is missing
        todo = [i for i in range(len(self.pairs.pairs)) if not _cache_path(self.out, i).is_file()]
        if self.layout.sharded and todo and acc.device.type != "cpu":
            for name, module in pipe.components.items():
                if isinstance(module, torch.nn.Module) and not name.startswith("transformer"):
                    module.to(acc.device)
        for i in tqdm(todo[acc.process_index :: acc.num_processes], desc="dpo: encode pairs", unit="pair", disable=not acc.is_main_process):
            tensors = encode_pair(pipe, self.family, self.pairs.pairs[i], config.generator, self.encode)
            target = _cache_path(self.out, i)
            tmp = target.with_suffix(".tmp")
            save_file(tensors, str(tmp))
            tmp.replace(target)  # a cache file exists only once whole
        acc.wait_for_everyone()
        if acc.device.type != "cpu":  # training reads the cache only: the text encoder (UMT5-XXL), the VAE, ... leave the GPU
            for name, module in pipe.components.items():
                if isinstance(module, torch.nn.Module) and not name.startswith("transformer"):
                    to_host(self.layout, module)  # a shared encoder back to the node's copy (gen/shared_weights.py)

        # 3. the LoRA (a two-expert model's: on lora.experts, each pair noised to a level an adapted
        #    expert serves), the optimizer, resume
        denoiser = adapted_denoiser(pipe, self.family, config.lora, config.seed, config.gradient_checkpointing)
        apply_parallelism(self.layout, denoiser, self.family)  # context parallel, FSDP2 per block (each process's shards to its device)
        if acc.is_main_process and config.parallel.active:
            log.info("dpo: %s", self.layout.describe())
        self.num_train_timesteps = float(pipe.scheduler.config.num_train_timesteps)
        self.video_chunks = chunk_count(self.family, config.generator)  # Helios's chunks (1 for every other family)
        self.sigma_range = denoiser.sigma_range()
        # every pair plays at one rate (read_pairs: one shape a run): the positions of a model that reads it (LTX-2)
        first = self.pairs.pairs[0]
        self.guidance = self.family.guidance(config.generator, guided=False, fps=first.fps)
        self.side_shape = self.family.side_shape(pipe, first.frames, first.fps) if self.family.audio else None
        self.base_dtype = next(p for p in denoiser.transformer.parameters() if not p.requires_grad).dtype
        optimizer = torch.optim.AdamW(list(trainable(denoiser).values()), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_eps, weight_decay=config.weight_decay)
        # the learning rate is set from the step itself (warmup_factor), not by a scheduler: one that
        # accelerate prepares steps once per process per update, and a function of the step resumes exactly
        self.model, self.optimizer = prepare_for_training(self.layout, acc, denoiser, optimizer)
        self.unwrapped = acc.unwrap_model(self.model)
        if not self.layout.sharded:  # a sharded run writes its checkpoint whole itself (checkpoint())
            register_lora_checkpoint(acc, self.unwrapped, None)
        self.start_step = 0
        if found:
            state = read_checkpoint_state(found[-1])
            check_parallel_resume(state, self.layout, found[-1])  # the same processes and layout, or a message
            if self.layout.sharded:
                load_sharded_lora_checkpoint(found[-1], self.unwrapped, self.optimizer, None)
            else:
                acc.load_state(str(found[-1]))  # the LoRA, optimizer and every process's RNG state
            self.start_step = int(state["step"])
            log.info("dpo: resuming from %s (step %d)", found[-1], self.start_step)
        elif config.resume and run_folder.resuming:
            log.warning("resume=true but %s has no checkpoint yet: starting from step 0", self.out)
        if acc.is_main_process:
            keep_log_steps(self.out / "metrics.jsonl", self.start_step)  # later steps are redone
        start_trackers(acc, config.log_with, "dpo", self.out.name, self.out, OmegaConf.to_container(OmegaConf.structured(config), resolve=True),
                       resume_step=self.start_step)
        acc.wait_for_everyone()

    # -- the loop ----------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, acc = self.config, self.accelerator
        last: dict[str, Any] = {}
        progress = tqdm(total=config.steps, initial=self.start_step, desc="dpo", disable=not acc.is_main_process)
        for step in range(self.start_step, config.steps):
            last = self.train_step(step)
            done = step + 1
            log_metrics(acc, self.out, done, last, trackers=config.log_with != "none")
            if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps):
                self.checkpoint(done)  # checkpoint_every=0: none, not even the last (docs/dpo.md)
            progress.update(1)
            progress.set_postfix(loss=f"{last['train/loss']:.4f}", acc=f"{last['train/implicit_acc']:.2f}")
        progress.close()
        return last

    def _load(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], Conditioning]:
        """The cached pairs' latents and mask (stacked) and their prompts' conditioning."""
        parts = [load_file(str(_cache_path(self.out, i))) for i in indices]
        tensors = {key: torch.stack([p[key] for p in parts]) for key in PAIR_TENSORS}
        return tensors, Conditioning.stack([{k: v for k, v in p.items() if k not in PAIR_TENSORS} for p in parts])

    def train_step(self, step: int) -> dict[str, float]:
        """One AdamW update over this process's share of the step's pairs (module docstring, step 3)."""
        config, acc, plan = self.config, self.accelerator, self.plan
        device = acc.device
        chosen = step_indices(len(self.pairs.pairs), config.pairs_per_step, step, (config.seed, 5))
        positions = list(plan.local_range)
        sums: dict[str, tuple[float, float]] = {}
        self.model.train()
        for k in range(plan.micro_batches):
            # 1. the micro-batch's pairs and their shared noise and levels
            where = positions[k * config.batch_size : (k + 1) * config.batch_size]
            batch, cond = self._load([chosen[p] for p in where])
            cond_w = cond_l = cond
            if self.video_chunks > 1:  # an autoregressive family (Helios): each pair trains one chunk, with its members' own histories
                batch, cond_w, cond_l = chunk_rows(self.family, batch, cond, [pair_chunk(config.seed, step, p, self.video_chunks) for p in where],
                                                   self.video_chunks)
            drawn = [pair_noise(config.seed, step, p, tuple(batch["winner"].shape[1:]), config.loss, self.sigma_range) for p in where]
            noise = torch.stack([n for n, _ in drawn]).to(device)
            sigmas = torch.stack([s for _, s in drawn]).to(device)
            x_t, target = noised_pair(batch["winner"].to(device), batch["loser"].to(device), noise, sigmas)
            side = None
            if self.side_shape is not None:  # LTX-2's audio: its noise at the pair's level on silence (zero), winner and loser alike
                side = torch.stack([side_noise(config.seed, step, p, self.side_shape) for p in where]).to(device) * sigmas.view(-1, 1, 1)
                side = torch.cat([side, side])
            timesteps = torch.cat([sigmas, sigmas]) * self.num_train_timesteps  # the model's timestep is sigma x 1000
            embeds = Conditioning.cat([cond_w, cond_l]).to(device)
            mask = batch["mask"].to(device)
            # 2. policy and reference velocities; 3. the loss; gradients reduced once, on the last micro-batch (sharded:
            #    every call runs every expert, gen/parallel/gradients.py)
            with gradient_sync(self.layout, acc, self.model, k, [range(len(self.unwrapped.experts))] * plan.micro_batches):
                with acc.autocast():
                    prediction = video_velocity(self.model, x_t, timesteps, embeds, None, self.guidance, self.base_dtype, side)
                with torch.no_grad(), adapters_disabled(self.unwrapped), acc.autocast():
                    reference = video_velocity(self.unwrapped, x_t, timesteps, embeds, None, self.guidance, self.base_dtype, side)
                model_w, model_l = squared_error(prediction, target)
                ref_w, ref_l = squared_error(reference, target)
                loss, parts = dpo_loss(model_w, model_l, ref_w, ref_l, config.loss, mask if mask.any() else None)
                scaled_backward(self.layout, acc, loss / plan.micro_batches)  # x context_parallel (gen/parallel/gradients.py)
            n, masked = float(len(where)), float(parts["masked_pairs"])
            for key, value in parts.items():
                if key == "masked_pairs":
                    continue
                weight = masked if key in ("mask_dpo", "mask_sft", "implicit_acc_mask", "margin_mask") else n
                if weight > 0:
                    total, count = sums.get(key, (0.0, 0.0))
                    sums[key] = (total + float(value) * weight, count + weight)
            total, count = sums.get("masked_fraction", (0.0, 0.0))
            sums["masked_fraction"] = (total + masked, count + n)
        # 4. one update, at this step's learning rate
        grad_norm = clip_grad_norm_(self.layout, acc, self.model, config.max_grad_norm) if config.max_grad_norm > 0 else math.nan
        lr = config.learning_rate * warmup_factor(step, config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        merged = merge_sums(gather_object([sums]))
        metrics = {f"train/{key}": value for key, value in merged.items()}
        metrics["train/grad_norm"] = grad_norm
        metrics["train/lr"] = lr
        return metrics

    def checkpoint(self, done: int) -> None:
        acc = self.accelerator
        if self.layout.sharded:  # the files whole, as one process writes them (gen/lora.py)
            def write(tmp: Path) -> None:
                save_sharded_lora_checkpoint(tmp, self.unwrapped, self.optimizer, None, acc.is_main_process)
        else:
            def write(tmp: Path) -> None:
                acc.save_state(str(tmp))
        folder = save_checkpoint(acc, self.out, done, write, layout_state(self.layout), self.config.keep_checkpoints)
        if acc.is_main_process:
            write_model_card(folder / "lora", self._card(done, "A checkpoint's LoRA (`resume=true` continues the run from it)."))
        log.info("dpo: checkpoint %s", folder)

    # -- cleanup -----------------------------------------------------------------------
    def cleanup(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        target = self.out / "lora"
        export_lora(self.unwrapped, target, sharded=self.layout.sharded, main=acc.is_main_process)  # every process hands over its shards
        if acc.is_main_process:
            write_model_card(target, self._card(max(self.start_step, self.config.steps), "The run's last LoRA."))  # its README.md
            # the result line, as train-cac prints its model's folder
            print(f"dpo: done; LoRA in {target} (generator.lora={target} samples with it)")
        end_trackers(acc)

    def _card(self, step: int, note: str) -> LoraCard:
        """The model card of a LoRA folder of this run (gen/model_card.py): no held-out evaluation in dpo."""
        config, family = self.config, self.family
        settings = {"lora.rank": config.lora.rank, "lora.alpha": config.lora.alpha, "learning_rate": config.learning_rate,
                    "loss.beta": config.loss.beta, "pairs": ", ".join(config.pairs), "seed": config.seed}
        names = [LORA_WEIGHT_NAME if index == 0 else LORA_WEIGHT_NAME_2 for index in self.unwrapped.trained_experts()]
        return LoraCard(base_model=config.generator.name, pipeline_class=family.pipeline_class, family=family.title, job="dpo", reward=None,
                        step=step, steps=config.steps, weight_names=names, settings=settings, note=note,
                        image_to_video=family.image_input != "none")


def run(config: DpoConfig, pipe: Any = None, encode: Callable[[Any, np.ndarray], torch.Tensor] | None = None) -> dict[str, Any]:
    """Train (module docstring).

    Args:
        config: the run's config.
        pipe: replaces the pipeline the config names (tests, notebooks).
        encode: ``encode(pipe, frames uint8 (F, H, W, 3)) -> (C, T, H, W)`` latents in place of
            the VAE's (the family's ``encode_video``); the miniature benchmark uses the
            latent preview's inverse.

    Returns:
        The last step's logged numbers.
    """
    trainer = _Trainer(config, pipe=pipe, encode=encode)
    try:
        with named_timeout(config.parallel):  # a stuck collective: one line naming parallel.timeout_s
            trainer.setup()
            last = trainer.train()
            trainer.cleanup()
    finally:
        release_trainer(trainer)  # its group closed and its objects collected while the interpreter is whole
    return last
