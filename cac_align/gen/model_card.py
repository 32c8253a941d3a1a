"""The model card of a trained LoRA folder (``lora/``, ``lora_best/``, each checkpoint's ``lora/``).

diffusers' training scripts end by writing a ``README.md`` beside the LoRA through ``huggingface_hub``'s
``ModelCard`` (metadata: the base model, ``library_name: diffusers``, tags; then what was trained, sample
outputs and how to load it), which the Hub shows as the model's page. Ours does the same, offline (no
call to the Hub: ``ModelCard.load`` reads the file back), with what a reader of a reward-trained LoRA
needs: the job and the reward it trained on, the steps, the held-out judges at step 0 and at the card's
step, a few of the run's held-out videos, and the lines that load it in diffusers, chosen by what the
family's pipeline class can do (``load_lora_weights``, or its transformer's ``load_lora_adapter``:
docs/using_your_lora.md).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["CARD_SAMPLES", "LoraCard", "loading_code", "write_model_card"]

CARD_SAMPLES = "samples"  # the folder beside the LoRA files that holds the card's sample videos


@dataclass
class LoraCard:
    """What a LoRA folder's card says.

    Attributes:
        base_model: ``generator.name`` of the run (a hub id or a local folder).
        pipeline_class: the family's diffusers pipeline class (``WanPipeline``).
        family: the family's title (``Wan-2.1``).
        job: ``flow-grpo``, ``nft`` or ``dpo``.
        reward: the trained reward's name (``ur_cac``); None for a job without one (``dpo``).
        step: the step these weights are from; steps: the run's ``steps``.
        weight_names: the LoRA files in the folder (the second expert's last, for Wan2.2-A14B).
        scores: ``{"step 0": {...}, "step N": {...}}``: the held-out means (``reward`` and each judge) at the
            evaluations the card compares; empty without an evaluation.
        settings: a few of the run's settings worth a glance (rank, learning rate, group size, ...).
        samples: mp4s of the run's held-out videos at this step (copied into the card's folder).
        note: a sentence under the title (why this folder: "the best evaluated step", ...).
        image_to_video: the pipeline animates an image (the card's task tag).
    """

    base_model: str
    pipeline_class: str
    family: str
    job: str
    reward: str | None
    step: int
    steps: int
    weight_names: Sequence[str]
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    samples: Sequence[Path] = ()
    note: str = ""
    image_to_video: bool = False


def loading_code(card: LoraCard, folder: str) -> str:
    """The Python that loads the LoRA in ``folder`` into the base model with diffusers (docs/using_your_lora.md):
    ``load_lora_weights`` where the pipeline class has it, its transformer's ``load_lora_adapter`` where not;
    the second expert's file (Wan2.2-A14B) into ``transformer_2``."""
    import diffusers

    cls = getattr(diffusers, card.pipeline_class, None)
    lines = ["import torch", "from diffusers import DiffusionPipeline", "",
             f"pipe = DiffusionPipeline.from_pretrained({card.base_model!r}, torch_dtype=torch.bfloat16)"]
    first, *rest = card.weight_names
    if cls is not None and hasattr(cls, "load_lora_weights"):
        lines.append(f"pipe.load_lora_weights({folder!r}, weight_name={first!r})")
        for name in rest:
            lines.append(f"pipe.load_lora_weights({folder!r}, weight_name={name!r}, load_into_transformer_2=True)")
    else:
        lines.append(f"pipe.transformer.load_lora_adapter({folder!r}, weight_name={first!r}, prefix=\"transformer\")")
        for name in rest:
            lines.append(f"pipe.transformer_2.load_lora_adapter({folder!r}, weight_name={name!r}, prefix=\"transformer\")")
    return "\n".join(lines)


def _score_table(scores: dict[str, dict[str, float | None]]) -> list[str]:
    if not scores:
        return ["No held-out evaluation was run (set `eval_prompts`)."]
    columns = list(scores)
    rows = list(dict.fromkeys(label for values in scores.values() for label in values))
    out = ["| held-out mean | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for label in rows:
        cells = [("invalid" if scores[c].get(label) is None else f"{scores[c][label]:.4f}") if label in scores[c] else "" for c in columns]
        out.append(f"| {'trained reward' if label == 'reward' else label} | " + " | ".join(cells) + " |")
    return out


def write_model_card(folder: str | Path, card: LoraCard) -> Path:
    """Write ``folder/README.md`` (and copy ``card.samples`` into ``folder/samples/``); returns its path.

    The metadata names the base model, ``library_name: diffusers`` and tags (``lora``, the task, the job,
    ``cac-align``), so ``huggingface_hub.ModelCard.load`` reads it back and the Hub lists the LoRA under its base."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    samples = []
    if card.samples:
        target = folder / CARD_SAMPLES
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for path in card.samples:
            shutil.copyfile(path, target / Path(path).name)
            samples.append(f"{CARD_SAMPLES}/{Path(path).name}")
    task = "image-to-video" if card.image_to_video else "text-to-video"
    data = ModelCardData(base_model=card.base_model, library_name="diffusers", pipeline_tag=task,
                         tags=["lora", "diffusers", task, card.job, "cac-align", *(["reinforcement-learning"] if card.reward else [])],
                         widget=[{"text": Path(s).stem, "output": {"url": s}} for s in samples] or None)
    trained = f"on the reward `{card.reward}`" if card.reward else "on preference pairs"
    body = [f"# {card.family} LoRA: `cac-align {card.job}` {trained}", ""]
    if card.note:
        body += [card.note, ""]
    body += [f"A LoRA of `{card.base_model}` ({card.family}, diffusers' `{card.pipeline_class}`), trained with cac_align's "
             f"`cac-align {card.job}` {trained}: these weights are from step {card.step} of {card.steps}.", "",
             "## Held-out evaluation", "", *_score_table(card.scores), ""]
    if samples:
        body += ["## Samples", "", "Held-out prompts at this step, deterministic sampling with the run's fixed seeds:", ""]
        body += [f"- [{Path(s).stem}]({s})" for s in samples] + [""]
    if card.settings:
        body += ["## Training settings", "", *[f"- `{key}`: {value}" for key, value in card.settings.items()], ""]
    body += ["## Use it", "", "In diffusers (docs/using_your_lora.md in cac_align: sample with the run's own settings, in its "
             "`cac_align_run.json`):", "", "```python", loading_code(card, str(folder)), "```", "",
             f"In cac_align: `generator.lora={folder}` in a job that samples (`cac-align bon`).", ""]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    path = folder / "README.md"
    ModelCard(text).save(path)
    return path
