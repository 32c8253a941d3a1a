"""What is checked about a layout outside the loop: before anything loads, whether the video can be split
at all (:func:`check_context_parallel`); at a resume, whether the checkpoint was written by the same layout
(:func:`layout_state`, :func:`check_parallel_resume`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from cac_align.gen.parallel.dims import Layout, ParallelSettings

__all__ = ["check_context_parallel", "check_parallel_resume", "layout_state"]


def layout_state(layout: Layout) -> dict[str, Any]:
    """What a checkpoint's ``state.json`` records of the layout that wrote it (nothing for plain
    data parallel, whose checkpoints are as before)."""
    if not layout.settings.active:
        return {}
    record = {"processes": layout.world, "data_parallel": layout.dp, "context_parallel": layout.cp, "shard": layout.settings.shard}
    if layout.settings.replicate > 1:  # HSDP (a checkpoint of before it, or of full sharding, records none: replicate 1)
        record["replicate"] = layout.settings.replicate
    return {"parallel": record}


def check_parallel_resume(state: dict[str, Any], layout: Layout, folder: Any) -> None:
    """Refuse to resume checkpoint ``folder`` (its ``state.json`` is ``state``) on another layout
    than the one that wrote it, with what to do instead."""
    from cac_align.config import RecipeError

    written, now = state.get("parallel"), layout_state(layout).get("parallel")
    if written == now:
        return

    def say(record: dict[str, Any] | None) -> str:
        if record is None:
            return "data parallel (parallel.shard=none, context_parallel=1)"
        return (f"{record['processes']} processes, parallel.shard={record['shard']}, "
                f"context_parallel={record['context_parallel']}, replicate={record.get('replicate', 1)}")

    raise RecipeError(f"checkpoint {folder} was written by {say(written)}, and this run is {say(now)}: resume it with the same "
                      f"processes and parallel section, or start a new run in another out_dir (its LoRA is in {folder}/lora)")



def _transformer_config(generator: Any) -> dict[str, Any] | None:
    """The generator's transformer ``config.json`` as a dict, from its own files (a tiny pipeline's,
    a local folder's, the Hugging Face cache's), or None where none can be read offline."""
    import json
    from pathlib import Path

    family = generator.family
    if generator.name in family.tiny_names:
        return dict(family.build_tiny(generator.name, seed=0).transformer.config)
    folder = Path(generator.name)
    if (folder / "transformer" / "config.json").is_file():
        return json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(generator.name, "transformer/config.json")
    except Exception:  # not a hub id
        return None
    if isinstance(cached, str) and Path(cached).is_file():
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def check_context_parallel(family: Any, generator: Any, settings: ParallelSettings) -> None:
    """Refuse, before anything loads, a ``context_parallel`` degree that the video's latent tokens
    or the transformer's heads do not divide (the family's
    :meth:`~cac_align.gen.family.GeneratorFamily.check_context_parallel`), with the setting to
    change. Where the transformer's config cannot be read offline, the check is left to the first
    forward (diffusers asserts the split) and a note is logged."""
    import logging

    if settings.context_parallel <= 1:
        return
    config = _transformer_config(generator)
    if config is None:
        logging.getLogger(__name__).warning("parallel.context_parallel=%d: %s's transformer config is not on this machine; the split is "
                                            "checked at the first forward", settings.context_parallel, generator.name)
        return
    family.check_context_parallel(generator, settings.context_parallel, config)

