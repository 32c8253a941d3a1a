"""`cac-align bon`: Best-of-N sampling, keeping the candidate the reward likes best (CaC §4.2).

    cac-align bon --config recipes/align/bon_tiny.yaml            # offline, tiny random models
    cac-align bon --config recipes/align/bon_wan_ur_cac.yaml prompts=prompts.txt out_dir=runs/bon

"For Best-of-N, we generate five candidate videos for each prompt and select the one with the
highest reward" (CaC §4.2). Per prompt, in order:

1. generate the candidates that are not on disk yet, ``batch_size`` at a time, each with its own
   recorded seed; each mp4 is written atomically as soon as it exists;
2. score all N candidates of the prompt with the reward (decoded from their mp4, so what is
   scored is what evaluation sees);
3. choose: the valid candidate with the highest score; ties go to the lowest candidate index;
   if no candidate is valid, candidate 0 is kept and marked ``chosen_by: "fallback"`` so every
   prompt still has one video (VBench and the expert sheet compare prompt by prompt);
4. append the prompt's N lines to ``candidates.jsonl`` in one write and copy the chosen mp4 to
   ``chosen/``.

A killed run restarted with the same command skips prompts already in ``candidates.jsonl`` and
regenerates no candidate whose mp4 exists. The run folder follows the rules every job follows
(:mod:`cac_align.run.folder`, docs/run_folders.md): a different config or prompt list in the same
``out_dir`` is refused, naming the keys that differ (``overwrite=true`` replaces the old run's
outputs, and nothing else); another job's folder and files of yours where outputs go are
refused. Settings that change no video or score (``batch_size``, ``offload``,
``generator.device``) may change on resume.

Output directory:

- ``cac_align_run.json``: the run's manifest (job, resolved config, fingerprint, outputs);
  ``candidates/p00000_c00.mp4``: every candidate, with
  ``.sha256`` beside it: the hash of its exact uint8 frames before H.264 compression;
- ``candidates.jsonl``: per candidate its prompt, seed, frames hash, the reward's score and
  validity, each component's raw and normalized score, the chosen flag, each judge's evidence
  (``evidence``: ``{judge: {"status", "window_s", "boxes"}}``, :func:`cac_align.regions.evidence_record`),
  and (UnifiedReward) ``prompt_sources``: which question it was asked;
- ``bon.html``: each prompt's candidates side by side with their scores and evidence, the chosen one
  marked (:mod:`cac_align.eval.bon_page`; its pictures in ``bon_page/``), rewritten after each prompt;
- ``chosen/00000_a-cat-jumps.mp4`` (prompt index and a slug of the prompt) and
  ``chosen/prompts.jsonl`` mapping each file to its full prompt;
- ``summary.json`` / ``summary.md``: per reward, the mean score of the chosen videos vs all;
- ``anomaly_rates.json`` (the ``synthetic:`` generator only, whose candidates' ground truth is
  known): the anomaly rate of the chosen videos, of a random choice and of the best possible
  choice (:func:`cac_align.gen.synthetic.bon_anomaly_rates`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import MISSING

from cac_align.gen.synthetic import PREFIX as SYNTHETIC_PREFIX
from cac_align.gen.synthetic import bon_anomaly_rates, load_synthetic_generator
from cac_align.gen.generator import GeneratorConfig, check_decoded_by_vae
from cac_align.run.input_files import PromptImage, read_prompt_rows, read_prompts, slug
from cac_align.run.folder import read_jsonl_log, run_fingerprint, write_text_atomic

if TYPE_CHECKING:  # the Reward protocol, for signatures only
    from cac_align.gen.generator import VideoGenerator
    from cac_align.rewards.base import Reward

__all__ = ["BonConfig", "choose", "read_prompts", "run"]

log = logging.getLogger(__name__)

# Settings that do not change any video or score: a resumed run may change them.
_RUN_ONLY_KEYS = ("out_dir", "batch_size", "offload", "overwrite", "generator.device", "memory_budget_gib")


@dataclass
class BonConfig:
    """Config of `cac-align bon`.

    Attributes:
        out_dir: the run folder (see the module docstring).
        prompts: a text file (one prompt per line; blank lines skipped) or a JSONL file with a
            "prompt" per line and, for an image-to-video model, its "image" (the first frame;
            a path relative to the file) and optionally "last_image".
        n: candidates per prompt (CaC §4.2: 5).
        seed: base seed; candidate ``c`` of prompt ``i`` uses ``seed + i * n + c``.
        batch_size: candidates per pipeline call.
        generator: the text-to-video model and its sampling settings.
        reward: the reward section (``ur_cac`` by default; ``unified_reward`` alone gives the
            UR column of CaC Table 2).
        offload: on a GPU, let generator and reward models take turns: the pipeline's modules
            move to the GPU only while generating (diffusers' model CPU offload) and the reward
            models only while scoring.
        overwrite: replace a previous run with a different config in ``out_dir``.
        memory_budget_gib: the memory per GPU the job's plan is checked against before anything loads
            (null: the GPU's own; docs/memory_plan.md, "Best-of-N and repair").
    """

    out_dir: str = MISSING
    prompts: str = MISSING
    n: int = 5
    seed: int = 0
    batch_size: int = 5
    generator: GeneratorConfig = field(default_factory=GeneratorConfig.unset)
    reward: Any = field(default_factory=lambda: {"name": "ur_cac"})
    offload: bool = False
    overwrite: bool = False
    memory_budget_gib: float | None = None

    def __post_init__(self) -> None:
        from cac_align.rewards.registry import reward_config

        if self.n < 1:
            raise ValueError(f"n must be >= 1 (candidates per prompt), got {self.n}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_decoded_by_vae(self.generator, "bon")  # the pipeline decodes bon's candidates: a preview would be ignored
        reward_config(self.reward, "reward")


# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------
def choose(scores: np.ndarray, valid: np.ndarray) -> tuple[int, str]:
    """Index of the candidate to keep and why: ("argmax" | "fallback").

    The valid candidate with the highest score; a tie goes to the lowest index (the first
    candidate drawn). With no valid candidate, candidate 0 is kept as a "fallback".
    """
    scores = np.asarray(scores, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(scores)
    if not valid.any():
        return 0, "fallback"
    masked = np.where(valid, scores, -np.inf)
    return int(np.argmax(masked)), "argmax"  # np.argmax returns the first maximum


def candidate_seed(base: int, prompt_index: int, candidate: int, n: int) -> int:
    return base + prompt_index * n + candidate


def frames_sha256(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
BON_OUTPUTS = ("candidates", "chosen", "candidates.jsonl", "summary.json", "summary.md", "anomaly_rates.json", "bon.html", "bon_page")


def _check_images(config: BonConfig, images: list[PromptImage | None]) -> None:
    """Before any model loads: the prompts' images fit the generator (an image for a text-only
    model, text alone for an image-to-video model: one line each; the synthetic stand-in renders
    from text alone)."""
    from cac_align.config import RecipeError
    from cac_align.gen.family import check_prompt_images

    if config.generator.is_synthetic:
        if any(image is not None for image in images):
            raise RecipeError(f"{config.prompts}: the prompts give images, and the synthetic generator ({config.generator.name}) renders from "
                              "text alone; name an image-to-video model in generator.name or drop the images")
        return
    check_prompt_images(config.generator.family, images, config.prompts)


def _run_folder(config: BonConfig, prompts: list[str], images: list[PromptImage | None] | None = None) -> Any:
    """The run folder (:class:`~cac_align.run.folder.RunFolder`): refuses another job's folder, a run
    of another config (unless ``overwrite``) and files of the user's where outputs go."""
    from omegaconf import OmegaConf

    from cac_align.run.folder import RunFolder

    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    return RunFolder(
        config.out_dir, "bon", BON_OUTPUTS, run_fingerprint(config, prompts, _RUN_ONLY_KEYS, images), resolved, overwrite=config.overwrite
    )


def _copy_images(folder: Path, stem: str, image: PromptImage | None) -> dict[str, Path]:
    """The prompt's source image (and last frame) copied into ``folder`` as ``<stem>_image.<ext>``
    (``<stem>_last_image.<ext>``), once; ``{"image": path, ...}`` (empty without an image)."""
    if image is None:
        return {}
    sources = {"image": image.image, "last_image": image.last_image}
    return {key: _copy_once(Path(source), folder / f"{stem}_{key}{Path(source).suffix.lower()}") for key, source in sources.items() if source}


def _copy_once(source: Path, target: Path) -> Path:
    """``source`` copied to ``target`` atomically, unless it is there already; ``target``."""
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return target


def _finished_prompts(path: Path, n: int) -> dict[int, list[dict]]:
    """Rows of candidates.jsonl by prompt index, for prompts whose group of ``n`` rows is whole.

    A prompt's rows are appended in one write, so a kill or a full disk can leave a torn last
    line or only part of the last group. Both are dropped, with a warning, and the file is
    rewritten without them: that prompt is redone (its finished candidate videos are kept).
    """
    done: dict[int, list[dict]] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = read_jsonl_log(path)
    groups: dict[int, list[tuple[str, dict]]] = {}
    for line, row in parsed:
        groups.setdefault(int(row["prompt_index"]), []).append((line, row))
    good: list[str] = []
    for index, group in groups.items():
        if len(group) != n or sum(bool(row.get("chosen")) for _, row in group) != 1:
            log.warning("%s: prompt %d has %d of its %d rows (a killed run); it is redone", path, index, len(group), n)
            continue
        good.extend(line for line, _ in group)
        done[index] = [row for _, row in group]
    if len(good) != len(lines):
        write_text_atomic(path, "".join(g + "\n" for g in good))
    return done


def _page(out: Path) -> Path | None:
    """``bon.html`` written again (:mod:`cac_align.eval.bon_page`); a page that cannot be written is a warning, never the
    run's end (the page shows the run; ``write_bon_page(out)`` writes it again)."""
    from cac_align.eval.bon_page import write_bon_page

    try:
        return write_bon_page(out)
    except Exception as exc:  # the page shows the run; it never stops it
        log.warning("bon.html was not written (cac_align.eval.bon_page.write_bon_page(%r) writes it again): %s: %s", str(out), type(exc).__name__, exc)
        return None


def run(config: BonConfig, reward: Reward | None = None, generator: VideoGenerator | None = None) -> dict:
    """Run Best-of-N; returns the summary. ``reward`` / ``generator`` override the config's."""
    from tqdm.auto import tqdm

    from cac_align.gen.generator import build_video_generator
    from cac_align.plan.sampling import check_bon
    from cac_align.rewards.base import BackendFailure, ErrorKind, all_failed_in_backend
    from cac_align.rewards.registry import build_reward
    from cac_align.video import Video, load_video, read_soundtrack, save_video, save_wav
    from cac_align.vlm.openai import ServerDown

    # 1. setup: prompts (and the images they animate, checked against the model), run folder
    #    (resume or refuse), models
    prompt_rows = read_prompt_rows(config.prompts)
    prompts, images = [row.prompt for row in prompt_rows], [row.image for row in prompt_rows]
    _check_images(config, images)
    out = Path(config.out_dir)
    run_folder = _run_folder(config, prompts, images)
    manifest = out / "candidates.jsonl"
    done = _finished_prompts(manifest, config.n) if run_folder.resuming else {}
    todo = [i for i in range(len(prompts)) if i not in done]
    if generator is None and todo:
        check_bon(config)  # the memory plan, refused with the fix before any model loads (cac_align.plan.sampling)
        generator = build_video_generator(config.generator)
    if reward is None and todo:
        reward = build_reward(config.reward, "reward")
    log.info("%d prompts, %d already done, N = %d", len(prompts), len(done), config.n)  # after the models: a refused input is the only line
    # recorded only now that the models loaded: a failed start leaves no record to refuse a rerun
    run_folder.start()
    (out / "candidates").mkdir(exist_ok=True)
    (out / "chosen").mkdir(exist_ok=True)
    _sweep_temporaries(out)
    on_gpu = generator is not None and generator.on_gpu()
    if config.offload and on_gpu:
        generator.offload()  # modules visit the GPU only while they run
        reward.to("cpu")
    elif config.offload and todo:
        log.warning("offload=true has no effect without a CUDA device")

    bar = tqdm(total=len(todo) * config.n, desc="best-of-n candidates", unit="video")
    unscored: list[tuple[int, str]] = []
    for i in todo:
        prompt, image = prompts[i], images[i]
        seeds = [candidate_seed(config.seed, i, c, config.n) for c in range(config.n)]
        paths = [out / "candidates" / f"p{i:05d}_c{c:02d}.mp4" for c in range(config.n)]
        sources = _copy_images(out / "candidates", f"p{i:05d}", image)  # the candidates sit beside the image they animate
        # 2. generate what is missing, a batch at a time: the hash of its exact frames (before
        #    H.264 compression) first, then the mp4, each landing atomically; a candidate is
        #    there only with both (a kill between them regenerates it, from its recorded seed)
        missing = [c for c in range(config.n) if not (paths[c].exists() and paths[c].with_suffix(".sha256").exists())]
        bar.update(config.n - len(missing))
        for start in range(0, len(missing), config.batch_size):
            batch = missing[start : start + config.batch_size]
            # a text prompt calls generate as ever (a VideoGenerator of the user's need not take images)
            animate = {} if image is None else {"images": [image] * len(batch)}
            generated = generator.generate(config.generator, [prompt] * len(batch), [seeds[c] for c in batch], **animate)
            for k, (c, video) in enumerate(zip(batch, generated.frames)):
                write_text_atomic(paths[c].with_suffix(".sha256"), frames_sha256(video) + "\n")
                audio = None if generated.audio is None else generated.audio[k]  # an LTX-2 candidate's soundtrack
                if audio is not None:  # lossless beside the mp4, and in it (AAC)
                    save_wav(audio, generated.sample_rate, paths[c].with_suffix(".wav"))
                save_video(Video(video, config.generator.fps), paths[c], audio=audio, sample_rate=generated.sample_rate)
            bar.update(len(batch))
        hashes = {c: _read_hash(paths[c].with_suffix(".sha256")) for c in range(config.n)}
        # 3. score the group from the files; a candidate's soundtrack from the WAV beside it (lossless;
        #    the mp4's AAC is what a reward reads of a file without one)
        videos = [load_video(p) for p in paths]
        sounds = [dict(zip(("audio", "sample_rate"), read_soundtrack(p.with_suffix(".wav")))) if p.with_suffix(".wav").exists() else {} for p in paths]
        if config.offload and on_gpu:
            reward.to(generator.execution_device())
        try:
            output = reward(videos, [prompt] * config.n, [{"group": i, **sound} for sound in sounds])
            down = [d for d in output.details if d.get("error_kind") == ErrorKind.DOWN]
            if down:  # the judge went down while it scored this group: no choice of the best
                raise ServerDown(str(down[0].get("error", "the reward server is down")).removeprefix("backend failed: "))
        except ServerDown as exc:  # the breaker opened: this prompt and the rest stay for a rerun
            unscored += [(k, str(exc)) for k in todo[todo.index(i) :]]
            tqdm.write(f"prompt {i}: stopped: {exc}")
            break
        if config.offload and on_gpu:
            reward.to("cpu")
        # 4. a group the backend could not score at all (a dead server) is not a choice: it is
        # left unrecorded, so a rerun scores it again; the job ends with an error saying so
        if all_failed_in_backend(output.details):
            unscored.append((i, str(output.details[0].get("error"))))
            tqdm.write(f"prompt {i}: not scored, the reward backend failed on every candidate: {output.details[0].get('error')}")
            continue
        # 5. choose, record the group in one write, copy the chosen video
        best, rule = choose(output.scores, output.valid)
        rows = _group_rows(i, prompt, seeds, paths, out, sources, hashes, output, best, rule)
        with manifest.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
        done[i] = rows
        _copy_chosen(out, i, prompt, paths[best], sources)
        _page(out)  # the candidates side by side, this prompt's too (earlier prompts' pictures are reused)
        score = "none valid" if rule == "fallback" else f"{output.scores[best]:.4f}"
        log.info("prompt %d: best candidate %d (%s) of %d: %s", i, best, output.name, config.n, score)
        tqdm.write(f"prompt {i}: chose candidate {best} ({rule}), {output.name} = {score}")
    bar.close()
    # 6. chosen/ for every prompt (also after a resume), the summary, the anomaly rates
    summary = _write_results(config, out, prompts, done)
    page = _page(out)
    print(f"bon: done; the chosen video of each prompt in {out / 'chosen'} (chosen/prompts.jsonl names them), the means of the "
          f"chosen against all in {out / 'summary.md'}, every candidate's scores in {out / 'candidates.jsonl'}"
          + (f", the candidates side by side in {page}" if page is not None else ""))
    if unscored:
        raise BackendFailure(
            f"{len(unscored)} of {len(prompts)} prompts were not scored because the reward backend failed on every "
            f"candidate (prompt {unscored[0][0]}: {unscored[0][1]}); their candidates, where generated, are kept: fix the backend and "
            "rerun the same command to score them"
        )
    return summary


def _group_rows(i: int, prompt: str, seeds: list[int], paths: list[Path], out: Path, sources: dict[str, Path], hashes: dict[int, str | None],
                output: Any, best: int, rule: str) -> list[dict]:
    """The ``candidates.jsonl`` rows of prompt ``i``'s scored group (one per candidate)."""
    from cac_align.regions import evidence_record

    rows = []
    for c in range(len(seeds)):
        details = output.details[c]
        rows.append(
            {
                "prompt_index": i,
                "prompt": prompt,
                "candidate": c,
                "seed": seeds[c],
                "video": str(paths[c].relative_to(out)),
                **{key: str(path.relative_to(out)) for key, path in sources.items()},
                "frames_sha256": hashes.get(c),
                "reward": output.name,
                "score": float(output.scores[c]) if output.valid[c] else None,
                "valid": bool(output.valid[c]),
                "error": details.get("error"),
                "components": {
                    name: {"raw": part.get("raw"), "normalized": part.get("normalized"), "valid": part.get("valid"),
                           "judges": output.info.get("modalities", {}).get(name), "error": part.get("error")}
                    for name, part in details.get("components", {}).items()
                },
                "chosen": c == best,
                "chosen_by": rule if c == best else None,
                "evidence": evidence_record(details, output.name),  # where each judge located a defect, for bon.html
                **({"prompt_sources": output.info["prompt_sources"]} if "prompt_sources" in output.info else {}),
            }
        )
    return rows


# What a killed run leaves half-written: save_video's temporary ".p00000_c00.<random>.mp4" (and
# ".wav", a soundtrack on its way in), the hash file's "p00000_c00.sha256.tmp", save_wav's
# ".p00000_c00.wav.tmp" and a chosen copy's "<name>.tmp.mp4" / "<name>.tmp.wav".
_TEMPORARIES = (
    ("candidates", re.compile(r"\.p\d{5}_c\d{2}\..+\.(mp4|wav)")),
    ("candidates", re.compile(r"p\d{5}_c\d{2}\.sha256\.tmp")),
    ("candidates", re.compile(r"\.p\d{5}_c\d{2}\.wav\.tmp")),
    ("chosen", re.compile(r"\d{5}_.*\.tmp\.(mp4|wav)")),
    ("candidates", re.compile(r"p\d{5}_(last_)?image\..+\.tmp")),  # a source image's copy
    ("chosen", re.compile(r"\d{5}_.*_(last_)?image\..+\.tmp")),
)


def _sweep_temporaries(out: Path) -> None:
    """Delete the temporary files of killed runs (only names this job writes)."""
    for folder, pattern in _TEMPORARIES:
        for path in (out / folder).iterdir():
            if pattern.fullmatch(path.name) and path.is_file():
                log.info("removing %s, left by a killed run", path)
                path.unlink()


def _read_hash(path: Path) -> str | None:
    """The frames hash written beside a candidate (None if the run died before writing it)."""
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def _chosen_name(i: int, prompt: str) -> str:
    return f"{i:05d}_{slug(prompt)}.mp4"


def _copy_chosen(out: Path, i: int, prompt: str, source: Path, images: dict[str, Path] | None = None) -> None:
    """The chosen candidate's mp4 (and its soundtrack's WAV, if it has one) in ``chosen/``, with
    the image it animates beside it (``<name>_image.<ext>``)."""
    target = out / "chosen" / _chosen_name(i, prompt)
    for key, image in (images or {}).items():
        _copy_once(image, out / "chosen" / f"{target.stem}_{key}{image.suffix}")
    if source.with_suffix(".wav").exists() and not target.with_suffix(".wav").exists():
        tmp = target.with_suffix(".tmp.wav")
        shutil.copyfile(source.with_suffix(".wav"), tmp)
        tmp.replace(target.with_suffix(".wav"))
    if target.exists():
        return
    tmp = target.with_suffix(".tmp.mp4")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def _chosen_images(out: Path, i: int, prompt: str, row: dict) -> dict[str, str]:
    """The chosen video's copies of its source images, by key, relative to ``chosen/``."""
    stem = Path(_chosen_name(i, prompt)).stem
    return {key: f"{stem}_{key}{Path(row[key]).suffix}" for key in ("image", "last_image") if row.get(key)}


def _write_chosen_index(out: Path, prompts: list[str], done: dict[int, list[dict]]) -> None:
    lines = []
    for i in sorted(done):
        chosen = next(r for r in done[i] if r["chosen"])
        lines.append(
            json.dumps(
                {"video": _chosen_name(i, prompts[i]), **_chosen_images(out, i, prompts[i], chosen), "prompt": prompts[i], "prompt_index": i,
                 "candidate": chosen["candidate"], "seed": chosen["seed"], "score": chosen["score"], "chosen_by": chosen["chosen_by"]},
                ensure_ascii=False,
            )
        )
    write_text_atomic(out / "chosen" / "prompts.jsonl", "".join(line + "\n" for line in lines))


def _write_results(config: BonConfig, out: Path, prompts: list[str], done: dict[int, list[dict]]) -> dict:
    """The chosen videos and their index, ``summary.json`` / ``.md`` and, for synthetic
    candidates (whose ground truth is known), ``anomaly_rates.json``; returns the summary."""
    for i, rows in done.items():
        chosen = next(r for r in rows if r["chosen"])
        _copy_chosen(out, i, prompts[i], out / chosen["video"], {key: out / chosen[key] for key in ("image", "last_image") if chosen.get(key)})
    _write_chosen_index(out, prompts, done)
    summary = _summarize(done)
    _write_summary(out, summary, _animated(out, prompts, done))
    if config.generator.name.startswith(SYNTHETIC_PREFIX):
        truth = load_synthetic_generator(config.generator.name, config.generator.anomaly_probability)
        write_text_atomic(out / "anomaly_rates.json", json.dumps(bon_anomaly_rates(out, truth), indent=1) + "\n")
    return summary


def _summarize(done: dict[int, list[dict]]) -> dict:
    """Mean score of the chosen videos vs all candidates, for the reward and each component."""
    rows = [row for group in done.values() for row in group]
    if not rows:
        return {"prompts": 0}
    names = {rows[0]["reward"]: lambda r: r["score"]}
    judges = {name: part.get("judges") for name, part in rows[0]["components"].items()}  # video, audio or both
    for name in rows[0]["components"]:
        names[name] = lambda r, name=name: r["components"][name]["raw"]

    def mean(values: list) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    per_reward = {
        name: {"chosen_mean": mean([get(r) for r in rows if r["chosen"]]), "all_mean": mean([get(r) for r in rows]),
               **({"judges": judges[name]} if judges.get(name) else {})}
        for name, get in names.items()
    }
    return {
        "prompts": len(done),
        "candidates": len(rows),
        "invalid_candidates": sum(not r["valid"] for r in rows),
        "fallback_prompts": sum(r["chosen_by"] == "fallback" for r in rows),
        "rewards": per_reward,
        **({"prompt_sources": rows[-1]["prompt_sources"]} if "prompt_sources" in rows[-1] else {}),
    }


def _animated(out: Path, prompts: list[str], done: dict[int, list[dict]]) -> list[str]:
    """summary.md's rows for image-to-video: each prompt's source image beside its chosen video
    (paths relative to the run folder); [] when no prompt gave an image."""
    lines = []
    for i in sorted(done):
        chosen = next(r for r in done[i] if r["chosen"])
        images = _chosen_images(out, i, prompts[i], chosen)
        if not images:
            continue
        shown = " ".join(f"![{key}](chosen/{name})" for key, name in images.items())
        score = "-" if chosen["score"] is None else f"{chosen['score']:.4f}"
        lines.append(f"| {i} | {shown} | [{_chosen_name(i, prompts[i])}](chosen/{_chosen_name(i, prompts[i])}) | {score} | {prompts[i]} |")
    if not lines:
        return []
    return ["", "## The animated images and the chosen videos", "", "| prompt | image | chosen video | score | text |", "| --- | --- | --- | --- | --- |",
            *lines]


def _write_summary(out: Path, summary: dict, animated: list[str] | None = None) -> None:
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Best-of-N summary",
        "",
        f"{summary.get('prompts', 0)} prompts, {summary.get('candidates', 0)} candidates "
        f"({summary.get('invalid_candidates', 0)} invalid; {summary.get('fallback_prompts', 0)} prompts with no valid candidate).",
        "",
        "| reward | judges | mean of chosen | mean of all candidates |",
        "| --- | --- | --- | --- |",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for name, row in summary.get("rewards", {}).items():
        lines.append(f"| {name} | {row.get('judges', '-')} | {fmt(row['chosen_mean'])} | {fmt(row['all_mean'])} |")
    write_text_atomic(out / "summary.md", "\n".join(lines + list(animated or [])) + "\n")

