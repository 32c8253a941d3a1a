"""`cac-align repair`: regenerate only the window the judge points at, judge again, keep the better.

    cac-align repair --config recipes/align/repair_tiny.yaml                 # offline, seconds
    cac-align repair --config recipes/align/repair_demo.yaml                 # cartoons judged by cac-demo
    cac-align repair --config recipes/align/repair_wan_vace_cac.yaml videos=DIR prompts=prompts.txt out_dir=runs/repair
    cac-align repair --config recipes/align/repair_wan_vace_cac.yaml scored=runs/score/results.jsonl out_dir=runs/repair

Best-of-N pays N whole generations to avoid a defect that CaC has already placed in a second of
one of them. Repair regenerates that second. Per input video, in input order:

1. **the verdict**: read from a finished ``score`` run's ``results.jsonl`` (``scored``: its
   scores, statuses and evidence are reused, not recomputed) or asked of the judge (``reward``)
   now. A video judged normal, an invalid verdict, or "abnormal" without a window or boxes passes
   through with the reason; a video that cannot be decoded, or has no prompt, is an invalid row;
2. **the mask**: the evidence's region (:mod:`cac_align.regions`: the window widened by
   ``context_s``, the boxes dilated by ``dilate``, whole frames where there are no boxes),
   planned by the regenerator: VACE's (:func:`cac_align.gen.families.vace.plan_repair`: ``condition_s`` of
   kept frames on each side as conditioning, ``4k + 1`` frames, sides padded to 16) or LTX-2's
   (:func:`cac_align.gen.families.ltx2_repair.segment_layout`: the window's latents between a kept clip before it
   and a keyframe after it, ``8k + 1`` frames, sides padded to 32);
3. **attempts**: up to ``attempts`` times, each with its own seed, VACE regenerates the masked
   pixels (the original prompt; with ``feedback: reason``, plus the judge's reason, as CollabVR
   feeds its verifier's suggestion back), :func:`~cac_align.gen.families.vace.splice` puts the fill back
   (outside the mask the input's pixels, exactly; edges feathered inside the mask), and the same
   judge scores the result. The first valid result whose score beats the original's by more than
   ``min_gain`` is kept and the loop stops;
4. **the row**: ``results.jsonl`` gets one line per input (below); a kept result is written to
   ``repaired/`` losslessly by default (``lossless: false`` trades exactness for size), so what a
   user opens outside the mask is what they gave.

**Cost against Best-of-N.** Every row counts the denoising work it spent, ``frame_steps`` = the
frames the regenerator takes in at each step (VACE: its segment; LTX-2: its segment and appended
keyframe) times its steps, over its attempts (the plan's ``frame_steps``). ``summary.json`` sets
the total beside what a Best-of-N with the same number of tries would spend (each try a whole video
of the input's length, rounded up to the model's ``4k + 1`` or ``8k + 1``, at the same steps). Judge calls are not counted: repair makes one
per attempt plus the verdict, Best-of-N one per candidate.

**Rows** (``results.jsonl``): ``index``, ``video``, ``prompt``, ``valid``, ``error``,
``reason`` (why it passed through), ``output`` (the repaired video, or the input when nothing was
kept), ``before`` and ``after`` (``score``, ``status``), ``accepted``, ``attempts`` (each:
``seed``, ``score``, ``status``, ``valid``, ``seconds``), ``mask`` (``frames``: the input frame
indices regenerated; ``boxes``: the evidence's boxes; ``segment``: the input frames the regenerator saw), and
``frame_steps``. ``report.html`` shows each video's evidence before and after.

**Run folder and resume** (docs/run_folders.md): a killed run restarted with the same command
keeps every finished row (``parts/rank*.jsonl``, appended a row at a time) and repairs only the
rest. **Processes**: under ``torchrun`` or ``accelerate launch`` process ``r`` of ``P`` takes the
unfinished videos ``r, r + P, ...``; the main process merges every part into ``results.jsonl`` in
input order.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
from omegaconf import MISSING

from cac_align.gen.families.vace import RegeneratorConfig

if TYPE_CHECKING:
    from cac_align.rewards.base import Reward

__all__ = ["RepairConfig", "run"]

log = logging.getLogger(__name__)

REPAIR_OUTPUTS = ("results.jsonl", "parts", "repaired", "evidence", "report.html", "summary.json", "synth")
# Settings a resumed run may change: they change no repaired video and no score.
_RUN_ONLY_KEYS = ("out_dir", "overwrite", "regenerator.device", "memory_budget_gib")
FEEDBACK = ("none", "reason")


@dataclass
class RepairConfig:
    """Config of `cac-align repair` (module docstring).

    Attributes:
        out_dir: the run folder.
        videos: a video file, a folder of videos, or a JSONL manifest of {"video", "prompt"} (as
            ``score`` takes them).
        prompts: their prompts, as ``score`` pairs them (a folder's by name: ``name<TAB>prompt`` lines).
        scored: a finished ``score`` run's results.jsonl instead: its videos, prompts, scores and
            evidence are reused (its ``reward`` must be the judge named here, to judge the repairs).
        synth_videos, synth, synth_seed: an offline demo: render this many synthetic videos (the
            ``synth`` recipe's scenes) into out_dir/synth and repair those (as ``score`` does).
        reward: the judge (a reward section; a localizing one: CaC, Skyra, ...).
        regenerator: the inpainting model (Wan2.1-VACE-1.3B) and its sampling.
        attempts: tries per video, each with its own seed (CollabVR: 3).
        min_gain: a repair is kept when its score exceeds the original's by more than this.
        feedback: "none" (the original prompt) or "reason" (plus the judge's reason).
        context_s: seconds added to each side of the judged window (the mask's margin).
        dilate: added to every side of every box, in 0-1000 units of the frame.
        condition_s: seconds of kept frames on each side of the mask that VACE sees.
        feather: pixels over which the fill blends into the input, inside the mask.
        lossless: write repaired videos as lossless RGB H.264 (False: yuv420p at crf 18).
        seed: base seed; attempt ``a`` of video ``i`` uses ``seed + i * attempts + a``.
        overwrite: replace a repair run of another config in ``out_dir`` (its outputs only).
        memory_budget_gib: the memory per GPU the job's plan is checked against before anything loads
            (null: the GPU's own; docs/memory_plan.md, "Best-of-N and repair").
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"feedback": FEEDBACK}
    # a command line's videos= or scored= repairs those, whatever demo the recipe renders (as score's videos=)
    COMMAND_LINE_WINS: ClassVar[dict[str, dict[str, Any]]] = {"videos": {"synth_videos": 0}, "scored": {"synth_videos": 0}}

    out_dir: str = MISSING
    videos: str | None = None
    prompts: str | None = None
    scored: str | None = None
    synth_videos: int = 0
    synth: str | None = None
    synth_seed: int = 0
    reward: Any = field(default_factory=lambda: {"name": "cac"})
    regenerator: RegeneratorConfig = field(default_factory=RegeneratorConfig.unset)
    attempts: int = 3
    min_gain: float = 0.0
    feedback: str = "none"
    context_s: float = 0.25
    dilate: float = 50.0
    condition_s: float = 0.5
    feather: int = 4
    lossless: bool = True
    seed: int = 0
    overwrite: bool = False
    memory_budget_gib: float | None = None

    def __post_init__(self) -> None:
        from cac_align.rewards.registry import reward_config

        sources = [self.videos is not None, self.scored is not None, self.synth_videos > 0]
        if sum(sources) != 1:
            raise ValueError("set exactly one of 'videos' (files to repair), 'scored' (a score run's results.jsonl) or 'synth_videos' (> 0, a demo)")
        if self.prompts is not None and self.videos is None:
            raise ValueError("'prompts' goes with 'videos' (a scored run and the demo carry their own prompts)")
        if self.synth is not None:  # the demo's scenes render after the models load: their recipe is found now
            from cac_align.config import RecipeError, find_recipe

            try:
                find_recipe(self.synth)
            except RecipeError as exc:
                raise ValueError(f"synth={self.synth!r}: {exc}") from None
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {self.feedback!r}")
        if self.context_s < 0 or self.dilate < 0 or self.condition_s < 0 or self.feather < 0:
            raise ValueError("context_s, dilate, condition_s and feather must be >= 0")
        reward_config(self.reward, "reward")


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
def _inputs(config: RepairConfig) -> list[dict]:
    """One dict per input video: ``video``, ``prompt`` and, from a scored run, its ``verdict``
    (``score``, ``valid``, ``error``, ``status``, ``details``)."""
    from cac_align.config import RecipeError, relative_path_hint
    from cac_align.run.folder import read_jsonl_log
    from cac_align.run.input_files import collect_inputs

    if config.videos is not None:
        paths, prompts = collect_inputs(config.videos, config.prompts)
        return [{"video": p, "prompt": q} for p, q in zip(paths, prompts)]
    path = Path(str(config.scored))
    if not path.is_file():
        raise RecipeError(f"scored={config.scored!r}: no such results.jsonl{relative_path_hint(str(config.scored))}")
    rows = [row for _, row in read_jsonl_log(path)]
    if not rows or any("video" not in r or "valid" not in r for r in rows):
        raise RecipeError(f"scored={config.scored!r}: not a finished `cac-align score` results.jsonl (rows need 'video' and 'valid')")
    _check_same_judge(config, path)
    return [{"video": r["video"], "prompt": r.get("prompt"), "verdict": r} for r in rows]


def _check_same_judge(config: RepairConfig, results: Path) -> None:
    """A scored run's "before" scores compare with the attempts' only if the same judge gave them:
    its folder's manifest (``cac_align_run.json``) records its reward section, and a repair whose
    reward differs in anything that changes a score stops here, before its first video. A
    results.jsonl without a manifest beside it cannot be checked: a warning says so."""
    from cac_align.config import RecipeError
    from cac_align.rewards.registry import describe_reward, reward_differences
    from cac_align.run.folder import MANIFEST, read_manifest

    manifest = read_manifest(results.parent)
    theirs = (manifest or {}).get("config", {}).get("reward") if manifest else None
    if theirs is None:
        log.warning("scored=%s: no %s with a reward section beside it, so its judge cannot be checked; its scores must come from "
                    "this repair's reward (%s) or every 'before' and 'after' compares two judges", results, MANIFEST, describe_reward(config.reward))
        return
    differ = reward_differences(theirs, config.reward)
    if differ:
        raise RecipeError(
            f"scored={str(results)!r} was judged by {describe_reward(theirs)}, this repair judges with {describe_reward(config.reward)} "
            f"(differing: {', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}): its scores would be compared with another judge's. "
            "Set reward to the scored run's section, or score the videos with this repair's reward first"
        )


def _verdict(reward: Reward, video: Any, prompt: str) -> dict:
    """The judge's verdict on one video: ``score``, ``valid``, ``error``, ``status``, ``details``."""
    from cac_align.regions import find_evidence

    output = reward([video], [prompt])
    details = output.details[0]
    found = find_evidence(details)
    return {"score": float(output.scores[0]) if output.valid[0] else None, "valid": bool(output.valid[0]), "error": details.get("error"),
            "status": found.get("status") if found else None, "details": details}


# ---------------------------------------------------------------------------------------
# One video
# ---------------------------------------------------------------------------------------
def _passes_through(verdict: dict) -> tuple[str | None, Any]:
    """``(reason, evidence)``: why a video is not repaired (None when it is), and its evidence."""
    from cac_align.regions import EvidenceError, find_evidence, read_evidence

    if not verdict["valid"]:
        return f"the verdict is invalid: {verdict.get('error')}", None
    if find_evidence(verdict["details"]) is None:
        return "the judge locates nothing (no window or boxes in its details)", None
    if verdict["status"] != "abnormal":
        return f"judged {verdict['status']}", None
    try:
        evidence = read_evidence(verdict["details"])
    except EvidenceError as exc:
        return f"unreadable evidence: {exc}", None
    if evidence is None:
        return "judged abnormal without a window or boxes", None
    return None, evidence


def _shown_frames(evidence: Any, video: Any, count: int = 6) -> list[tuple[float, tuple]]:
    """The frames the report pictures: the judge's boxed frames, or, for a window without boxes,
    up to ``count`` of the window's frames evenly spread (boxes empty)."""
    if evidence.boxes:
        return list(evidence.boxes)
    start, end = evidence.window_s
    inside = [float(t) for t in video.timestamps if start <= t < end]
    picks = np.unique(np.linspace(0, len(inside) - 1, min(count, len(inside))).round().astype(int)) if inside else []
    return [(inside[i], ()) for i in picks]


class _Repairer:
    """What every video of a run shares: the judge, the regenerator, the settings."""

    def __init__(self, config: RepairConfig, reward: Reward, pipe: Any, out: Path):
        self.config, self.reward, self.pipe, self.out = config, reward, pipe, out
        self.regenerator = config.regenerator.family  # what the model is, from its own files (cac_align.gen.family)

    def repair(self, index: int, item: dict) -> dict:
        """The results row of input ``index`` (module docstring, steps 1-4)."""
        from cac_align.cac.evidence import write_evidence_png
        from cac_align.gen.families.vace import splice
        from cac_align.regions import evidence_reason, find_evidence, region_from_evidence, whole_frames
        from cac_align.video import Video, VideoError, load_video, save_video

        config = self.config
        row: dict[str, Any] = {"index": index, "video": item["video"], "prompt": item["prompt"], "valid": True, "error": None, "reason": None,
                               "output": item["video"], "before": None, "after": None, "accepted": False, "attempts": [], "mask": None,
                               "frame_steps": 0}
        try:
            video = load_video(item["video"])
        except VideoError as exc:
            return {**row, "valid": False, "error": str(exc)}
        if not item["prompt"]:
            return {**row, "valid": False, "error": "no prompt for this video (give prompts= or a manifest with 'prompt')"}
        # 1. the verdict (reused from a scored run, or asked now)
        verdict = item.get("verdict") or _verdict(self.reward, video, item["prompt"])
        row["before"] = {"score": verdict["score"], "status": verdict["status"]}
        reason, evidence = _passes_through(verdict)
        if reason is not None:
            return {**row, "reason": reason}
        # 2. the mask, planned for the regenerator (VACE: 4k + 1 frames, sides of 16; LTX-2: 8k + 1, 32);
        #    one that keeps whole frames (LTX-2) regenerates the evidence's whole frames, and the row says so
        regenerated = evidence if self.regenerator.boxes else whole_frames(evidence, video.fps)
        region = region_from_evidence(regenerated, video.num_frames, video.fps, video.height, video.width, dilate=config.dilate,
                                      context_s=config.context_s)
        plan = self.regenerator.plan(region, video.fps, config.condition_s)
        row["mask"] = {"frames": plan.frames, "boxes": [{"time_s": t, "boxes": [list(b) for b in boxes]} for t, boxes in regenerated.boxes],
                       "window_s": list(regenerated.window_s) if regenerated.window_s else None, "segment": [plan.start, plan.stop]}
        judged_reason = evidence_reason(verdict["details"])
        prompt = f"{item['prompt']}. Avoid: {judged_reason}" if config.feedback == "reason" and judged_reason else item["prompt"]
        frames = np.asarray(video.frames)
        evidence_dir = self.out / "evidence"
        evidence_dir.mkdir(exist_ok=True)
        shown = _shown_frames(evidence, video)
        write_evidence_png(evidence.window_s, [{"time_s": t, "boxes": [list(b) for b in boxes]} for t, boxes in shown], video,
                           evidence_dir / f"{index:05d}_before.png")
        # 3. attempts, each with its own seed, until one beats the original
        kept = None
        for attempt in range(config.attempts):
            seed = config.seed + index * config.attempts + attempt
            started = time.perf_counter()
            repaired = splice(frames, self.regenerator.regenerate(self.pipe, frames, plan, prompt, seed, config.regenerator), plan, config.feather)
            candidate = Video(repaired, video.fps, source=f"{item['video']} (repair {attempt + 1})")
            after = _verdict(self.reward, candidate, item["prompt"])
            row["frame_steps"] += plan.frame_steps(config.regenerator.num_inference_steps)
            row["attempts"].append({"seed": seed, "score": after["score"], "status": after["status"], "valid": after["valid"],
                                    "error": after["error"], "seconds": round(time.perf_counter() - started, 3)})
            if after["valid"] and verdict["score"] is not None and after["score"] > verdict["score"] + config.min_gain:
                kept = (candidate, after)
                break
        # 4. the kept result, written losslessly, and its evidence
        if kept is None:
            return {**row, "reason": f"no attempt beat the original's score by more than min_gain={config.min_gain:g}"}
        candidate, after = kept
        target = self.out / "repaired" / f"{index:05d}_{Path(item['video']).stem}.mp4"
        save_video(candidate, target, lossless=config.lossless)
        # the repaired frames at the times the judge boxed before (its new boxes where it still finds one)
        found = find_evidence(after["details"]) or {}
        still = found.get("boxes") if found.get("status") == "abnormal" else None
        write_evidence_png(evidence.window_s, still or [{"time_s": t, "boxes": []} for t, _ in shown], candidate, evidence_dir / f"{index:05d}_after.png")
        return {**row, "output": str(target), "after": {"score": after["score"], "status": after["status"]}, "accepted": True}


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
def _run_folder(config: RepairConfig, inputs: list[dict] | None) -> Any:
    import hashlib

    from omegaconf import OmegaConf

    from cac_align.run.folder import RunFolder, config_fingerprint, drop_serving_keys

    fingerprint = config_fingerprint(config, _RUN_ONLY_KEYS)
    drop_serving_keys(fingerprint.get("reward"))
    if inputs is not None:  # the same file names holding other videos or prompts is another run (a demo's are its config)
        listed = "\n".join(f"{i['video']}\t{i['prompt']}\t{json.dumps(i.get('verdict'), sort_keys=True)}" for i in inputs)
        fingerprint["inputs_sha256"] = hashlib.sha256(listed.encode("utf-8")).hexdigest()
    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    return RunFolder(config.out_dir, "repair", REPAIR_OUTPUTS, fingerprint, resolved, overwrite=config.overwrite)


def _finished(parts: Path) -> dict[int, dict]:
    """The rows of every process's part file, by input index (a torn last line is dropped)."""
    from cac_align.run.folder import read_jsonl_log

    done: dict[int, dict] = {}
    for path in sorted(parts.glob("rank*.jsonl")) if parts.is_dir() else []:
        for _, row in read_jsonl_log(path):
            done[int(row["index"])] = row
    return done


def run(config: RepairConfig, reward: Reward | None = None, pipe: Any = None) -> list[dict]:
    """Repair (module docstring); ``reward`` / ``pipe`` replace the judge and the regenerator the
    config names. Returns the rows of results.jsonl, in input order."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from cac_align.cac.evidence import write_repair_report
    from cac_align.gen.families.vace import build_regenerator
    from cac_align.plan.sampling import check_repair
    from cac_align.rewards.registry import build_reward
    from cac_align.run.folder import write_text_atomic
    from cac_align.run.input_files import say_pairing

    # 1. setup: the inputs (a demo's are rendered once the folder is ours), the run folder
    #    (checked by every process before the main one takes it), what is left, the models
    out = Path(config.out_dir)
    state = PartialState(cpu=config.regenerator.device == "cpu")
    inputs = None if config.synth_videos else _inputs(config)
    run_folder = _run_folder(config, inputs)
    state.wait_for_everyone()
    count = config.synth_videos or len(inputs)
    done = _finished(out / "parts") if run_folder.resuming else {}
    todo = [i for i in range(count) if i not in done]
    mine = todo[state.process_index :: state.num_processes]
    if mine and (reward is None or pipe is None):  # the memory plan, for the largest input, before any model loads
        check_repair(config, _shapes(inputs) if config.memory_budget_gib is not None or state.device.type == "cuda" else (),
                     main_process=state.is_main_process)
    if mine and reward is None:
        reward = build_reward(config.reward, "reward")
    if mine and pipe is None:
        pipe = build_regenerator(config.regenerator)
    state.wait_for_everyone()
    if state.is_main_process:
        run_folder.start()  # with overwrite: the old run's outputs go now, and only those
        (out / "parts").mkdir(exist_ok=True)
        (out / "repaired").mkdir(exist_ok=True)
        if config.synth_videos:
            from cac_align.data.synthetic import render_demo_videos

            render_demo_videos(out / "synth", config.synth_videos, config.synth_seed, config.synth)  # the same videos on a rerun
    state.wait_for_everyone()
    if inputs is None:
        inputs = _demo_inputs(out)
    elif config.videos is not None and state.is_main_process:  # how the prompts met the videos, said as score says it
        say_pairing([row["video"] for row in inputs], [row["prompt"] for row in inputs])
    if done:
        log.info("resuming: %d of %d videos already repaired or passed through", len(done), count)

    # 2. this process's share, a row appended as each video finishes
    repairer = _Repairer(config, reward, pipe, out)
    part = out / "parts" / f"rank{state.process_index}.jsonl"
    with part.open("a", encoding="utf-8") as handle:
        for index in tqdm(mine, desc="repair", unit="video", disable=not state.is_main_process):
            row = repairer.repair(index, inputs[index])
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()

    # 3. the main process merges every part in input order, the summary and the report
    state.wait_for_everyone()
    rows = [_finished(out / "parts")[i] for i in range(len(inputs))]
    if state.is_main_process:
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        summary = _summary(config, rows, inputs)
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        write_repair_report(rows, out, summary)
        print(f"repair: {summary['accepted']} of {summary['repaired']} repaired videos kept ({summary['passed_through']} passed through, "
              f"{summary['invalid']} invalid); {summary['frame_steps']} frame-steps against {summary['best_of_n_frame_steps']} for "
              f"Best-of-N with the same tries: {out / 'results.jsonl'}, {out / 'report.html'}")
    state.wait_for_everyone()
    return rows


def _shapes(inputs: list[dict] | None) -> list[tuple[int, int, int, float]]:
    """``(frames, height, width, fps)`` of each input that its file's header gives (read lazily; none for the
    demo, whose videos are rendered later, or a file that cannot be read: its row says so when it is repaired)."""
    from cac_align.video import VideoError, load_video

    shapes = []
    for item in inputs or ():
        try:
            video = load_video(item["video"], lazy=True)
        except (VideoError, OSError):
            continue
        shapes.append((video.num_frames, video.height, video.width, float(video.fps)))
    return shapes


def _demo_inputs(out: Path) -> list[dict]:
    """The demo's inputs, as the main process rendered them into out_dir/synth."""
    from cac_align.cac.schema import load_annotations

    records = load_annotations(out / "synth" / "annotations.jsonl").records  # video paths resolved against its folder
    return [{"video": str(r.video), "prompt": r.prompt} for r in records]


def _summary(config: RepairConfig, rows: list[dict], inputs: list[dict]) -> dict:
    """Counts, gains and the cost against Best-of-N with the same number of tries."""
    from cac_align.video import load_video

    tried = [r for r in rows if r["attempts"]]
    steps = config.regenerator.num_inference_steps
    multiple = config.regenerator.family.frame_multiple  # the model's frames: k * multiple + 1 (VACE: 4k + 1)
    best_of_n = 0
    for row in tried:
        frames = load_video(row["video"], lazy=True).num_frames
        best_of_n += len(row["attempts"]) * ((frames - 1 + multiple - 1) // multiple * multiple + 1) * steps  # a whole mk + 1 video per try
    gains = [r["after"]["score"] - r["before"]["score"] for r in rows if r["accepted"]]
    spent = sum(r["frame_steps"] for r in rows)
    return {
        "videos": len(rows),
        "invalid": sum(not r["valid"] for r in rows),
        "passed_through": sum(r["valid"] and not r["attempts"] for r in rows),
        "repaired": len(tried),
        "accepted": sum(r["accepted"] for r in rows),
        "attempts": sum(len(r["attempts"]) for r in rows),
        "mean_gain": float(np.mean(gains)) if gains else None,
        "frame_steps": spent,
        "best_of_n_frame_steps": best_of_n,
        "frame_steps_vs_best_of_n": spent / best_of_n if best_of_n else None,
    }
