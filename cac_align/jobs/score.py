"""`cac-align score`: score videos with any reward; write results.jsonl and an HTML report.

    cac-align score --config recipes/score/cac_tiny.yaml          # offline, tiny random model
    cac-align score --config recipes/score/cac.yaml videos=DIR out_dir=runs/score
    cac-align score --config recipes/score/ur_cac.yaml videos=DIR prompts=prompts.txt

The ``reward:`` section names the reward (``cac``, ``unified_reward``, ``ur_cac``, ``combined``
or a dotted path; see docs/rewards.md) with its arguments beside the name.

Steps: 1. collect videos (a file, a folder, or a JSONL manifest with "video" and "prompt"; a
folder's files that do not end like a video are left out and counted in the summary line, and a
video that is empty or does not decode is a row marked invalid with the reason);
2. build the reward; 3. score in batches (tqdm): each video is decoded once, scored, and (when
the reward includes CaC) its evidence PNG drawn while the frames are in memory; each batch is
appended to results.jsonl.partial, the pictures go to evidence.partial/; 4. once every video is
scored, the pictures, results.jsonl and report.html replace the last run's: a rerun that is
killed leaves the last complete results, report and pictures as they were, consistent. A run
whose reward server went away stops within seconds with one line, writing the rows scored so
far; rerunning the same command then keeps those rows and scores the rest.

The run folder follows the rules of every job (docs/run_folders.md): a rerun of the same config
scores again and replaces its own outputs; another config is refused unless ``overwrite=true``;
files of yours where outputs go (a ``report.html`` of your own) are refused, and anything else in
the folder (your own figure in ``evidence/``) is left alone.

Each line of results.jsonl: ``video``, ``prompt``, ``reward`` (its name), ``score`` (null when
invalid), ``valid``, ``error``, ``status`` (CaC's final status when the reward includes CaC)
and ``details`` (the reward's per-video details: sub-scores, raw text, CaC turns and boxes).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import MISSING

from cac_align.run.input_files import JSON_SUFFIXES, check_prompts_read, collect_inputs, not_videos, say_pairing

if TYPE_CHECKING:  # the Reward protocol, for signatures only
    from cac_align.rewards.base import Reward

__all__ = ["ScoreConfig", "collect_inputs", "run"]


@dataclass
class ScoreConfig:
    """Config of `cac-align score`.

    Attributes:
        out_dir: receives results.jsonl, report.html and evidence/.
        videos: a file, folder or JSONL manifest ({"video", "prompt"}) to score; replaces a recipe's demo
            (``synth_videos``) when given on the command line. A manifest's prompts are the videos'
            (where some lines give one, each must, for a reward that reads the prompt).
        prompts: the videos' generating prompts, paired by name with a folder's videos (each line
            ``name<TAB>prompt``, the file's name or stem, or JSONL ``{"video", "prompt"}``), or a
            plain list in the order of a single video or a manifest without prompts of its own (a
            folder's files have no order to guess; :func:`cac_align.run.input_files.collect_inputs`).
            The pairing is printed before scoring.
        synth_videos: if > 0 (and ``videos`` unset), first render this many synthetic anomaly
            videos into out_dir/synth and score those: the offline demo. ``videos=`` on the
            command line turns it off.
        synth: the ``synth`` recipe those videos are drawn with (e.g. recipes/synth/default.yaml,
            the scenes ``cac-demo`` was trained on); unset: small 64x96, 2 s scenes (fast, for the
            tiny random models).
        synth_seed: seed of those videos (the demo recipes use seeds no training run uses).
        batch_size: videos read and scored per reward call; ``results.jsonl`` grows after each
            (a killed run redoes at most one call). How many the model takes in one forward pass is
            the reward's ``model.max_batch_size``.
        reward: the reward section: ``name`` plus its arguments (validated when the recipe
            loads, without loading any model).
        overwrite: replace a score run of another config in ``out_dir`` (its outputs only).
    """

    # a command line's videos= scores those videos, whatever demo the recipe renders (cac_align.config: COMMAND_LINE_WINS)
    COMMAND_LINE_WINS: ClassVar[dict[str, dict[str, Any]]] = {"videos": {"synth_videos": 0}}

    out_dir: str = MISSING
    videos: str | None = None
    prompts: str | None = None
    synth_videos: int = 0
    synth: str | None = None
    synth_seed: int = 0
    batch_size: int = 8
    reward: Any = field(default_factory=lambda: {"name": "cac"})
    overwrite: bool = False

    def __post_init__(self) -> None:
        from cac_align.config import relative_path_hint
        from cac_align.rewards.registry import reward_config

        if (self.videos is None) == (self.synth_videos <= 0):
            raise ValueError("set exactly one of 'videos' (files to score) or 'synth_videos' (> 0, an offline demo)")
        if self.prompts is not None and self.videos is None:  # the demo's videos carry their own: the file would go unread
            raise ValueError(f"prompts={self.prompts!r} goes with 'videos' (the synth_videos demo carries its own prompts): give videos= too")
        if self.synth is not None and not Path(self.synth).is_file():
            raise ValueError(f"synth={self.synth!r}: no such synth recipe{relative_path_hint(self.synth)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        reward_config(self.reward, "reward")


def run(config: ScoreConfig, reward: Reward | None = None) -> list[dict]:
    """Score, write results.jsonl and the report; ``reward`` overrides ``config.reward``.

    Returns:
        The rows written to results.jsonl, in input order.
    """
    from tqdm.auto import tqdm

    from cac_align.cac.evidence import cac_details, evidence_path, write_evidence_png, write_report
    from cac_align.eval.bench import truth_summary
    from cac_align.rewards.base import BackendFailure, ErrorKind, all_failed_in_backend
    from cac_align.rewards.registry import build_reward
    from cac_align.video import VideoError, load_video
    from cac_align.vlm.config import served_urls
    from cac_align.vlm.openai import ServerDown, server_counters

    out = Path(config.out_dir)
    run_folder = _run_folder(config)
    # 1. inputs (files are checked before anything is written), 2. the reward; the run is
    # recorded once it has loaded (a failed start leaves no record)
    if config.synth_videos == 0:
        assert config.videos is not None
        paths, prompts = collect_inputs(config.videos, config.prompts)
        truths: list[dict | None] = [None] * len(paths)
    skipped = not_videos(config.videos) if config.synth_videos == 0 and config.videos is not None else []
    if reward is None:
        reward = build_reward(config.reward, "reward")
    if config.synth_videos == 0:
        assert config.videos is not None
        manifest = config.videos if config.prompts is None and Path(config.videos).suffix.lower() in JSON_SUFFIXES else None
        check_prompts_read(paths, prompts, reward.name, reward.reads_prompt, manifest=manifest, needs_prompt=reward.needs_prompt)
        say_pairing(paths, prompts)  # how the prompts met the videos (a prompts file's, a manifest's), said before anything is scored
    run_folder.start()
    if config.synth_videos > 0:
        from cac_align.data.synthetic import render_demo_videos

        # out_dir/synth belongs to this job: rendered afresh each run (a few seconds), so a
        # changed synth_videos or seed never meets videos of the last run
        records = render_demo_videos(out / "synth", config.synth_videos, config.synth_seed, config.synth)
        paths = [str(out / "synth" / r.video) for r in records]
        prompts = [r.prompt for r in records]
        truths = [truth_summary(r) for r in records]
    # 3. score in batches: decode once, score, draw evidence, append rows. Everything new goes
    # beside the last run's outputs (results.jsonl.partial, evidence.partial/), which stay whole
    # and consistent until this run is complete (step 4 swaps them in).
    # A rerun of a run that stopped early (its server went away) keeps that run's rows and
    # pictures and scores the rest.
    rows: list[dict] = _stopped_rows(out, paths, prompts) if run_folder.resuming else []
    stopped: ServerDown | None = None
    partial = out / "results.jsonl.partial"
    staged = out / STAGED_EVIDENCE
    shutil.rmtree(staged, ignore_errors=True)  # a killed run's half-drawn pictures
    staged.mkdir(parents=True)
    for index in range(len(rows)):
        if evidence_path(out, index).is_file():
            shutil.copy2(evidence_path(out, index), staged / evidence_path(out, index).name)
    if rows:
        print(f"resuming a stopped run: {len(rows)} of {len(paths)} videos kept from {out / 'results.jsonl'}")
    servers = {url: server_counters(url) for url in served_urls(config.reward)}  # what the run costs a vLLM server
    resumed_rows = len(rows)
    with partial.open("w", encoding="utf-8") as handle, tqdm(total=len(paths), initial=len(rows), desc=f"scoring ({reward.name})", unit="video") as bar:
        handle.writelines(json.dumps(row, default=_jsonable) + "\n" for row in rows)
        for start in range(len(rows), len(paths), config.batch_size):
            batch = paths[start : start + config.batch_size]
            loaded: list[Any] = []
            for path in batch:
                try:
                    # decoded as the reward selects frames; the soundtrack too for a reward that hears
                    loaded.append(load_video(path, lazy=True, audio=reward.modality != "video"))
                except VideoError as exc:
                    loaded.append(exc)  # the reward marks it invalid with this reason
            try:
                output = reward(loaded, prompts[start : start + config.batch_size])
            except ServerDown as exc:  # the breaker opened: stop, keeping what was scored
                stopped = exc
                break
            down = [k for k, d in enumerate(output.details) if d.get("error_kind") == ErrorKind.DOWN]
            if down:  # the judge went down in this batch: stop before its first video the server failed (a rerun scores it)
                first = min(k for k, d in enumerate(output.details) if d.get("error_kind") in (ErrorKind.DOWN, ErrorKind.BACKEND))
                stopped = ServerDown(str(output.details[down[0]].get("error", "the reward server is down")).removeprefix("backend failed: "))
                batch, loaded = batch[:first], loaded[:first]
            for offset, (path, video) in enumerate(zip(batch, loaded)):
                row = _result_row(output, offset, path, prompts[start + offset], truths[start + offset])
                cac = cac_details(row["details"])
                handle.write(json.dumps(row, default=_jsonable) + "\n")
                if cac is not None and cac.get("valid") and not isinstance(video, VideoError):
                    planted = [a["window_s"] for a in (row.get("truth") or {}).get("anomalies", []) if a.get("window_s")]
                    write_evidence_png(cac.get("window_s"), cac.get("boxes", []), video, staged / evidence_path(out, start + offset).name, truth_windows=planted)
                rows.append(row)
            handle.flush()
            bar.update(len(batch))
            if stopped is not None:
                break
    # 4. swap the complete outputs in: pictures, results, then the report that links them
    _swap_in_evidence(staged, out / "evidence")
    partial.replace(out / "results.jsonl")
    report = write_report(rows, out, title=f"{reward.name} scoring report")
    _write_served_cost(out, servers, rows[resumed_rows:])
    valid = sum(row["valid"] for row in rows)
    judged = [row for row in rows if row["valid"] and "truth" in row and row["status"] is not None]  # rewards with a verdict
    agree = f"; verdict = ground truth for {sum(r['status'] == r['truth']['status'] for r in judged)} of {len(judged)}" if judged else ""
    localized = [row["graded"]["localized"] for row in judged if row.get("graded", {}).get("localized") is not None]
    if localized:
        agree += f", localized right for {sum(localized)} of the {len(localized)} anomalous videos called abnormal"
    print(f"scored {len(rows)} videos with {reward.name} ({valid} valid{agree}): {out / 'results.jsonl'}, {report}{_left_out(config.videos, skipped)}")
    if stopped is not None:
        raise BackendFailure(
            f"{stopped}; stopped after {len(rows)} of {len(paths)} videos (kept in results.jsonl): rerun when the server is back"
        )
    if all_failed_in_backend([row["details"] for row in rows]):
        raise BackendFailure(
            f"every one of the {len(rows)} videos failed in the reward backend ({rows[0]['error']}); "
            "nothing was scored: fix the backend (is its server running?) and rerun"
        )
    return rows


def _result_row(output: Any, offset: int, path: str, prompt: str | None, truth: dict | None) -> dict:
    """One line of results.jsonl: the video's score (None where invalid), its verdict and details,
    and for a demo video what was planted and what the verdict got right."""
    from cac_align.cac.evidence import cac_details, turn2_unreadable
    from cac_align.eval.bench import grade_evidence

    details = output.details[offset]
    cac = cac_details(details)
    row = {
        "video": path,
        "prompt": prompt,
        "reward": output.name,
        "score": float(output.scores[offset]) if output.valid[offset] else None,
        "valid": bool(output.valid[offset]),
        "error": details.get("error"),
        "status": cac.get("status") if cac else None,
        "details": details,
    }
    if "prompt_sources" in output.info:  # which question a prompted reward asked
        row["prompt_sources"] = output.info["prompt_sources"]
    if truth is not None:
        row["truth"] = truth
        if cac is not None and row["valid"]:
            row["graded"] = grade_evidence(truth, row["status"], [cac["window_s"]] if cac.get("window_s") else [], cac.get("boxes"))
            if row["graded"]["boxes"] is not None:  # say so where the boxes are missing because turn 2 did not parse
                row["graded"]["boxes_unreadable"] = turn2_unreadable(cac)
    return row


def _left_out(videos: str | None, skipped: list[str]) -> str:
    """The summary's note on the files of a ``videos`` folder that are not videos (``notes.txt``),
    which collecting left out; "" when there are none."""
    if not skipped:
        return ""
    names = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    what = "file in {} that is not a video" if len(skipped) == 1 else "files in {} that are not videos"
    return f"; skipped {len(skipped)} {what.format(videos)} ({names})"


def _stopped_rows(out: Path, paths: list[str], prompts: list[str | None]) -> list[dict]:
    """The rows of the last run of this config when it stopped early: fewer rows than videos, each
    for the video and prompt at its place. [] when that run finished (a rerun scores again)."""
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError:
        return []
    if len(rows) >= len(paths) or any(row.get("video") != paths[i] or row.get("prompt") != prompts[i] for i, row in enumerate(rows)):
        return []
    return rows


# evidence_path(out, i): the only pictures this job writes; anything else in evidence/ is yours
STAGED_EVIDENCE = "evidence.partial"  # a running rerun's pictures, until it completes
def _turn_prompt_tokens(row: dict) -> int | None:
    """The prompt tokens the judge read for a row's turns (CaC: turn 1 + turn 2), None if unknown."""
    from cac_align.cac.evidence import cac_details

    found = cac_details(row.get("details") or {}) or {}
    turns = [found.get(t) for t in ("turn1", "turn2") if isinstance(found.get(t), dict)]
    counts = [t.get("prompt_tokens") for t in turns]
    return sum(counts) if counts and all(isinstance(c, int) for c in counts) else None


def _write_served_cost(out: Path, servers: dict[str, Any], rows: list[dict]) -> None:
    """``served_cost.json`` beside results.jsonl: per server that gave its counters before and
    after, what this run's videos cost it (requests, prompt tokens, of them read from the prefix
    cache, computed), in total and per video, and the turn prompts' own tokens for comparison."""
    from cac_align.run.folder import write_text_atomic
    from cac_align.vlm.openai import served_cost, server_counters

    costs = {}
    for url, before in servers.items():
        after = server_counters(url) if before is not None else None
        if after is not None:
            costs[url] = served_cost(before, after, len(rows))
    if not costs:
        return
    turns = [_turn_prompt_tokens(row) for row in rows]
    known = [t for t in turns if t is not None]
    summary = {"servers": costs, "turn_prompt_tokens": sum(known) if known and len(known) == len(turns) else None,
               "note": "server-wide counters: another client's requests in the same time count too"}
    if summary["turn_prompt_tokens"]:
        summary["computed_over_turn_prompts"] = {url: c["computed_prompt_tokens"] / summary["turn_prompt_tokens"] for url, c in costs.items()}
    write_text_atomic(out / "served_cost.json", json.dumps(summary, indent=1) + "\n")


SCORE_OUTPUTS = ("results.jsonl", "results.jsonl.partial", "served_cost.json", "report.html", "evidence/" + "[0-9]" * 5 + ".png", STAGED_EVIDENCE, "synth")
EVIDENCE_NAME = re.compile(r"\d{5}\.png")


def _swap_in_evidence(staged: Path, evidence: Path) -> None:
    """Replace the job's pictures in ``evidence`` (only the ones it names) by the ``staged`` ones."""
    evidence.mkdir(parents=True, exist_ok=True)
    new = {p.name for p in staged.glob("*.png")}
    for old in evidence.glob("*.png"):
        if EVIDENCE_NAME.fullmatch(old.name) and old.name not in new:  # never link a previous run's picture
            old.unlink()
    for name in sorted(new):
        (staged / name).replace(evidence / name)
    shutil.rmtree(staged, ignore_errors=True)
_RUN_ONLY_KEYS = ("out_dir", "batch_size", "overwrite")


def _run_folder(config: ScoreConfig) -> Any:
    """The run folder (:class:`~cac_align.run.folder.RunFolder`); inputs are checked before it opens."""
    from omegaconf import OmegaConf

    from cac_align.run.folder import RunFolder, config_fingerprint, drop_serving_keys

    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    fingerprint = drop_serving_keys(config_fingerprint(config, _RUN_ONLY_KEYS))
    return RunFolder(config.out_dir, "score", SCORE_OUTPUTS, fingerprint, resolved, overwrite=config.overwrite)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
