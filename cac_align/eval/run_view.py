"""A generator training run's held-out evaluation, and what the run shows of it as it goes (``flow-grpo``, ``nft``).

:class:`HeldOutEvaluation` evaluates: each data-parallel group samples its share of the held-out prompts (the
trainer's ``sample``: the ODE from each prompt's fixed seed, with the LoRA), its leader scores them with the
trained reward and every held-out judge through the reward pool (a failed call is invalid, not a crash), saves
the first ``eval_videos``, and every process gathers the means (``eval/reward_mean``, ``eval/<label>/mean``, ...).

After every evaluation (step 0, the model the run starts from, first) a run folder gets:

- ``eval/step_NNNNNN/samples.jsonl``: one line per held-out prompt, its seed, its saved video (the first
  ``eval_videos`` prompts), the trained reward's and every held-out judge's score, and the evidence a judge
  gave (CaC's window and boxes, wm_surprise's and the sync judge's windows: :func:`cac_align.regions.evidence_record`);
- the saved videos in the trackers (TensorBoard, Weights & Biases: :func:`cac_align.run.metrics.log_eval_videos`);
- ``best.json``: the best evaluated step so far by :mod:`cac_align.run.best`'s rule; the LoRA of a step that
  becomes the best so far is copied to ``eval/step_NNNNNN/lora/``, so the best one is at hand at the end
  whatever came after (``lora_best/``, with its model card);
- ``run.html``: the page (:mod:`cac_align.eval.run_page`), rewritten, so a browser refresh shows the run so far.

:class:`RunView` is what a trainer holds for this; the records are data every process can build, the files
are written by the main process, and the one collective (the LoRA's shards, when sharded) is the trainer's
``export`` callable, called on every process alike because every process knows the same means.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cac_align.gen.model_card import LoraCard, write_model_card
from cac_align.regions import evidence_record
from cac_align.rewards.columns import score_held_out
from cac_align.rl.advantages import nan_mean_std
from cac_align.run.best import BestStep, best_step, write_best
from cac_align.run.folder import read_jsonl_log, write_text_atomic
from cac_align.run.input_files import slug
from cac_align.run.metrics import EvalVideo, log_eval_videos
from cac_align.video import Video, save_video

__all__ = ["SAMPLES_JSONL", "HeldOutEvaluation", "RunView", "eval_folder", "read_samples", "sample_record", "trainer_card"]

log = logging.getLogger(__name__)

SAMPLES_JSONL = "samples.jsonl"


def eval_folder(out: str | Path, step: int) -> Path:
    """Where step ``step``'s evaluation goes: ``eval/step_NNNNNN/``."""
    return Path(out) / "eval" / f"step_{step:06d}"


def sample_record(index: int, prompt: str, seed: int, video: str | None, outputs: Mapping[str, Any], k: int) -> dict[str, Any]:
    """One held-out prompt's line of ``samples.jsonl``.

    Args:
        index: the prompt's index among the held-out prompts; prompt: its text; seed: its fixed noise seed.
        video: the saved mp4's name in the step's folder, or None (past ``eval_videos``).
        outputs: ``"reward"`` (the trained reward) and each held-out judge's label -> its ``RewardOutput`` of
            the batch this sample is ``k``-th in.

    ``scores``: ``"reward"`` and each judge's label (None: invalid, its error under ``errors``); ``evidence``: every
    localized verdict by who gave it (:func:`cac_align.regions.evidence_record`: a held-out judge by its label, the
    trained reward by its name or its localizing components' (``cac`` of ``ur_cac``), ``reward/<name>`` where that
    is also a judge's label).
    """
    scores, evidence, errors, trained = {}, {}, {}, {}
    for label, output in outputs.items():
        valid = bool(output.valid[k]) and math.isfinite(float(output.scores[k]))
        scores[label] = float(output.scores[k]) if valid else None
        details = output.details[k] if k < len(output.details) else {}
        if not valid:
            if details.get("error"):
                errors[label] = str(details["error"])
            continue
        if label == "reward":
            trained = evidence_record(details, output.name)
        else:
            evidence.update(evidence_record(details, label))
    evidence.update({(f"reward/{source}" if source in outputs else source): verdict for source, verdict in trained.items()})
    record = {"index": index, "prompt": prompt, "seed": int(seed), "video": video, "scores": scores, "evidence": evidence}
    if errors:
        record["errors"] = errors
    return record


def trainer_card(config: Any, job: str, reward: str) -> LoraCard:
    """What every model card of a ``flow-grpo`` or ``nft`` run says (each folder's card adds its step, scores and
    samples: :meth:`RunView.write_card`); ``config``: the run's ``FlowGrpoConfig`` (or ``NftConfig``)."""
    from cac_align.gen.generator import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2

    family = config.generator.family
    settings = {"lora.rank": config.lora.rank, "lora.alpha": config.lora.alpha, "learning_rate": config.learning_rate,
                "group_size": config.group_size, "prompts_per_step": config.prompts_per_step, "beta": config.beta,
                "noise_level": config.noise_level, "ema_decay": config.ema_decay, "seed": config.seed}
    names = [LORA_WEIGHT_NAME if index == 0 else LORA_WEIGHT_NAME_2 for index in range(family.experts)]
    return LoraCard(base_model=config.generator.name, pipeline_class=family.pipeline_class, family=family.title, job=job, reward=reward,
                    step=0, steps=config.steps, weight_names=names, settings=settings, image_to_video=family.image_input != "none")


def read_samples(folder: str | Path) -> list[dict[str, Any]]:
    """The lines of an evaluation folder's ``samples.jsonl`` (none when it has none)."""
    path = Path(folder) / SAMPLES_JSONL
    return [row for _, row in read_jsonl_log(path)] if path.is_file() else []


class RunView:
    """A training run's evaluations, recorded and shown (module docstring).

    Args:
        out: the run folder.
        accelerator: the run's (its trackers, which process is the main one).
        judges: the held-out judges' labels (``eval_rewards``).
        margin: ``watch.margin`` (the best step's rule).
        fps: the generator's frame rate (the trackers' GIFs).
        export: ``export(folder)`` writes the current (EMA) LoRA into ``folder``; called on every process (a
            sharded run gathers its shards there), the main process writes.
        card: what every model card of the run says (its step, scores, samples and note are each folder's own).
    """

    CARD_SAMPLES = 4  # held-out videos copied beside a final LoRA's card

    def __init__(self, out: Path, accelerator: Any, judges: Sequence[str], margin: float, fps: float, export: Callable[[Path], None],
                 card: LoraCard) -> None:
        self.out, self.accelerator, self.judges, self.margin, self.fps, self.export = Path(out), accelerator, list(judges), margin, fps, export
        self.card = card
        self.rows: list[dict[str, Any]] = []  # the evaluations so far, as metrics.jsonl holds them
        self.best: BestStep = best_step([], self.judges, margin)

    def resume(self, start_step: int) -> None:
        """The evaluations of a resumed run's first ``start_step`` steps (step 0's too), from metrics.jsonl."""
        path = self.out / "metrics.jsonl"
        if path.exists():
            self.rows = [row for _, row in read_jsonl_log(path) if isinstance(row.get("step"), int) and row["step"] <= start_step
                         and "eval/reward_mean" in row]
        self.best = best_step(self.rows, self.judges, self.margin)

    @property
    def has_step_0(self) -> bool:
        """Whether the run's step 0 was evaluated (a resumed run does not evaluate it again)."""
        return any(row["step"] == 0 for row in self.rows)

    def write_samples(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        """``samples.jsonl`` of step ``step``: every process's records (gathered), by prompt index (main process)."""
        if self.accelerator.is_main_process:
            ordered = sorted(records, key=lambda r: r["index"])
            folder = eval_folder(self.out, step)
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(folder / SAMPLES_JSONL, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in ordered))

    def evaluated(self, step: int, metrics: Mapping[str, Any]) -> None:
        """After step ``step``'s evaluation was logged (call on every process, with the metrics every process
        logged): the best step so far, its LoRA kept when it is this one, the trackers' videos, the page."""
        self.rows = [row for row in self.rows if row["step"] != step] + [{"step": step, **metrics}]
        self.best = best_step(self.rows, self.judges, self.margin)
        if self.best.step == step:  # the best so far: its LoRA kept (a collective when sharded: every process knows the same means)
            self.export(eval_folder(self.out, step) / "lora")
        if not self.accelerator.is_main_process:
            return
        write_best(self.out, self.best)
        videos = [EvalVideo(Path(r["video"]).stem, eval_folder(self.out, step) / r["video"], r["prompt"], r["scores"])
                  for r in read_samples(eval_folder(self.out, step)) if r.get("video")]
        try:
            log_eval_videos(self.accelerator, step, videos, self.fps)
        except Exception as exc:  # a tracker that cannot take a video costs the run nothing: said, and the run goes on
            log.warning("the evaluation videos of step %d did not reach the trackers: %s", step, exc)
        self.write_page()

    def write_page(self) -> None:
        """``run.html`` from the run folder's files (main process). A page that cannot be written costs the run
        nothing: said in a warning, and the run goes on (``write_run_page(out)`` writes it again afterwards)."""
        if self.accelerator.is_main_process:
            from cac_align.eval.run_page import write_run_page

            try:
                write_run_page(self.out)
            except Exception as exc:  # the page shows the run; it never stops it
                log.warning("run.html was not written (cac_align.eval.run_page.write_run_page(%r) writes it again): %s: %s", str(self.out),
                            type(exc).__name__, exc)

    def keep_best(self) -> Path | None:
        """At the end (main process): ``lora_best/`` as a copy of the best step's kept LoRA, or nothing when no
        step qualifies; returns its path."""
        target = self.out / "lora_best"
        if not self.accelerator.is_main_process:
            return None
        shutil.rmtree(target, ignore_errors=True)
        if self.best.step is None:
            return None
        source = eval_folder(self.out, self.best.step) / "lora"
        if not source.is_dir():  # a run resumed from a folder of before the copies: said, not guessed
            log.warning("the best evaluated step %d has no kept LoRA in %s (a run folder of an earlier cac_align): lora_best/ not written",
                        self.best.step, source)
            return None
        shutil.copytree(source, target)
        return target

    def scores_at(self, step: int) -> dict[str, float | None]:
        """The held-out means of the evaluation at ``step`` (``reward`` and each judge); empty when none."""
        for row in self.rows:
            if row["step"] == step:
                values = {"reward": row.get("eval/reward_mean"), **{label: row.get(f"eval/{label}/mean") for label in self.judges}}
                return {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in values.items()}
        return {}

    def last_evaluation(self, up_to: int | None = None) -> int | None:
        """The step of the latest evaluation (at or before ``up_to``)."""
        steps = [row["step"] for row in self.rows if up_to is None or row["step"] <= up_to]
        return max(steps) if steps else None

    def write_card(self, folder: Path, step: int, note: str = "", samples: bool = True) -> Path | None:
        """``folder/README.md``: the model card of the LoRA in ``folder``, trained to ``step`` (main process):
        the held-out means at step 0 (the baseline) and at the latest evaluation at or before ``step``, and
        with ``samples`` a few of that evaluation's videos copied beside it."""
        if not self.accelerator.is_main_process or not Path(folder).is_dir():
            return None
        import dataclasses

        scores: dict[str, dict[str, float | None]] = {}
        at = self.last_evaluation(step)
        if self.best.baseline_step is not None and self.best.baseline_step != at:
            scores[f"step {self.best.baseline_step}"] = self.scores_at(self.best.baseline_step)
        if at is not None:
            scores[f"step {at}"] = self.scores_at(at)
        videos = [eval_folder(self.out, at) / r["video"] for r in read_samples(eval_folder(self.out, at)) if r.get("video")] if samples and at is not None else []
        names = sorted(p.name for p in Path(folder).glob("*.safetensors"))
        card = dataclasses.replace(self.card, step=step, scores=scores, samples=videos[: self.CARD_SAMPLES], note=note,
                                   weight_names=[n for n in self.card.weight_names if n in names] or self.card.weight_names)
        return write_model_card(folder, card)


class HeldOutEvaluation:
    """The held-out evaluation of a generator trainer (module docstring).

    Args:
        out: the run folder; accelerator: the run's; layout: the processes' (``cac_align.gen.parallel.Layout``).
        prompts: the held-out prompts; seeds: each one's fixed noise seed (the same at every evaluation).
        reward: the trained reward; judges: the held-out judges by label (None on a process that holds none);
            parts: the trained reward's components the watch follows (their raw means).
        pool: the trainer's reward thread pool; eval_videos: how many prompts' videos are saved; fps: the videos'.
        view: the run's :class:`RunView` (``samples.jsonl``).
    """

    def __init__(self, out: Path, accelerator: Any, layout: Any, prompts: Sequence[str], seeds: Sequence[int], reward: Any,
                 judges: Mapping[str, Any], parts: Sequence[str], pool: Any, eval_videos: int, fps: float, view: RunView) -> None:
        self.out, self.accelerator, self.layout, self.prompts, self.seeds = Path(out), accelerator, layout, list(prompts), list(seeds)
        self.reward, self.judges, self.parts, self.pool, self.eval_videos, self.fps, self.view = reward, dict(judges), list(parts), pool, eval_videos, fps, view

    def evaluate(self, step: int, sample: Callable[[list[int]], tuple[Any, Any, Any]]) -> dict[str, float]:
        """Evaluate at ``step``; call on every process. ``sample(indices) -> (videos, soundtracks, rate)``: the
        prompts ``indices`` sampled and decoded (``(B, F, H, W, 3)`` uint8 on a leader; Nones elsewhere).

        Returns:
            ``eval/reward_mean``, ``eval/reward_std``, ``eval/valid_fraction``, and per judge ``eval/<label>/mean`` and
            ``eval/<label>/valid_fraction``, per watched part ``eval/components/<part>_raw_mean``: the world's.
        """
        from accelerate.utils import gather_object

        from cac_align.gen.parallel import gather_numbers

        layout, acc, n = self.layout, self.accelerator, len(self.prompts)
        per_process = math.ceil(n / layout.dp)  # per data-parallel group; a context-parallel group samples its prompts together
        mine = [i for i in range(layout.dp_rank * per_process, (layout.dp_rank + 1) * per_process) if i < n]
        scores = np.full(per_process, np.nan)
        held_out = {label: np.full(per_process, np.nan) for label in self.judges}
        parts = {part: np.full(per_process, np.nan) for part in self.parts}
        # sharded, every process makes the same forwards (FSDP2's all-gathers need them all): a process
        # with fewer held-out prompts samples its last slots on the first prompt and drops them
        sampled = mine + [0] * (per_process - len(mine)) if layout.sharded else mine
        videos, audio, rate = sample(sampled) if sampled else (None, None, None)
        records: list[dict[str, Any]] = []
        if mine and layout.leader:  # the group's leader decoded the videos: it scores and saves them
            videos, audio = videos[: len(mine)], None if audio is None else audio[: len(mine)]
            texts = [self.prompts[i] for i in mine]
            sound = None if audio is None else (audio, rate)
            scored, judged, raw, outputs = score_held_out(self.pool, self.reward, self.judges, self.parts, videos, texts, mine, self.fps, sound)
            scores[: len(mine)] = scored
            for label, values in judged.items():
                held_out[label][: len(mine)] = values
            for part, values in raw.items():
                parts[part][: len(mine)] = values
            for k, (i, frames) in enumerate(zip(mine, videos)):
                name = f"{i:05d}_{slug(self.prompts[i])}.mp4" if i < self.eval_videos else None
                if name is not None:
                    save_video(Video(frames, fps=self.fps), eval_folder(self.out, step) / name, audio=None if audio is None else audio[k],
                               sample_rate=rate)
                records.append(sample_record(i, self.prompts[i], self.seeds[i], name, outputs, k))
        self.view.write_samples(step, gather_object(records))  # every process's prompts (a collective), written by the main one
        gathered = gather_numbers(layout, acc, scores)  # padding entries of short shards are NaN: not counted
        mean, std = nan_mean_std(gathered)
        metrics = {"eval/reward_mean": mean, "eval/reward_std": std, "eval/valid_fraction": int(np.isfinite(gathered).sum()) / n}
        for label, judged in held_out.items():
            gathered = gather_numbers(layout, acc, judged)
            metrics[f"eval/{label}/mean"] = nan_mean_std(gathered)[0]
            metrics[f"eval/{label}/valid_fraction"] = int(np.isfinite(gathered).sum()) / n
        for part, values in parts.items():
            metrics[f"eval/components/{part}_raw_mean"] = nan_mean_std(gather_numbers(layout, acc, values))[0]
        return metrics
