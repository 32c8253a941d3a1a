"""Every path a job reads, given as one that is not there, stops the job in ONE line on stderr that
names the setting and the path: exit status 2, no traceback, nothing written, before any model loads
(issue #117, item 1; `dpo` with a pairs run not made yet, `train-cac` and `synth-cot` with a missing
annotations file printed tracebacks).

The settings come from each job's config dataclass: every setting whose value may be text (a string,
a list or mapping of strings, a reward section), walked into nested sections (``generator.name``,
``teacher.name``, ``sources[].path``), less those whose values are a fixed set of words (the class's
``CHOICES``). Each must have a row below, as tests/test_cli_errors.py's ``BAD_REWARDS`` has one for
each registered reward: :data:`PATHS` (a path the job reads, with how to run the job with it missing)
or :data:`NOT_PATHS` (why it is no path a job reads). A new setting without a row fails
``test_every_setting_that_may_be_a_path_has_a_row``, naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, NamedTuple

import pytest

from cac_align.cli import main
from cac_align.jobs import JOBS


class Case(NamedTuple):
    """How to run a job with one path missing.

    ``argv``: after the job's name; ``{missing}`` is the path that is not there, ``{annotations}``,
    ``{clip}`` and ``{prompts}`` are files that are (so that the missing one is the only fault).
    ``named``: the text that names the setting in the refusal (default: the setting itself).
    ``refused``: the job takes no value for it at all (a trainer makes its own LoRA): its line names the
    setting, not the path."""

    argv: tuple[str, ...]
    named: str | None = None
    refused: bool = False


_CAC = "{{name: cac, model: {{name: {missing}, device: cpu}}}}"  # a reward section whose judge's folder is missing
_JUDGE = "{{judge: " + _CAC + "}}"

# (job, setting) -> how the job meets the setting's path missing
PATHS: dict[tuple[str, str], Case] = {
    ("convert", "sources[].path"): Case(("-c", "data/convert_tiny", "sources=[{{format: labels, path: {missing}}}]"), "path="),
    ("convert", "sources[].video_root"): Case(("-c", "data/convert_tiny", "sources=[{{format: labels, path: {csv}, video_root: {missing}}}]"),
                                              "video_root="),
    ("convert", "sources[].media_dir"): Case(("-c", "data/convert_tiny", "sources=[{{format: vif_cot, path: {vif}, media_dir: {missing}}}]"),
                                             "media_dir="),
    ("score", "videos"): Case(("-c", "score/cac_tiny", "videos={missing}")),
    ("score", "prompts"): Case(("-c", "score/cac_tiny", "videos={clip}", "prompts={missing}")),
    ("score", "synth"): Case(("-c", "score/cac_tiny", "synth={missing}")),
    ("score", "reward"): Case(("-c", "score/cac_tiny", "reward:=" + _CAC), "reward.model.name="),
    **{(job, setting): case for job in ("flow-grpo", "nft") for setting, case in {
        "prompts": Case(("-c", f"align/{job.replace('-', '_')}_tiny", "prompts={missing}")),
        "eval_prompts": Case(("-c", f"align/{job.replace('-', '_')}_tiny", "eval_prompts={missing}")),
        "generator.name": Case(("-c", f"align/{job.replace('-', '_')}_tiny", "generator.name={missing}")),
        "generator.lora": Case(("-c", f"align/{job.replace('-', '_')}_tiny", "generator.lora={missing}"), "generator.lora", refused=True),  # the trainer makes its LoRA
        "reward": Case(("-c", f"align/{job.replace('-', '_')}_tiny", "reward:=" + _CAC), "reward.model.name="),
        "regularize.judges": Case(("-c", f"align/{job.replace('-', '_')}_tiny", "regularize.gate=uncertain", "regularize.judges=" + _JUDGE),
                                  "regularize.judges.judge.model.name="),
        "eval_rewards": Case(("-c", f"align/{job.replace('-', '_')}_tiny", "eval_rewards=" + _JUDGE), "eval_rewards.judge.model.name="),
    }.items()},
    ("synth-cot", "annotations"): Case(("-c", "cac/synth_cot_tiny", "annotations={missing}")),
    ("synth-cot", "teacher.name"): Case(("-c", "cac/synth_cot_tiny", "annotations={annotations}", "teacher={{name: {missing}}}")),
    ("train-cac", "annotations"): Case(("-c", "cac/stage1_tiny", "annotations={missing}")),
    ("train-cac", "model"): Case(("-c", "cac/stage1_tiny", "annotations={annotations}", "model={missing}")),
    ("train-cac", "stream.synth"): Case(("-c", "cac/demo_stage1", "stream.synth={missing}")),
    ("eval-bench", "annotations"): Case(("-c", "eval/bench_tiny", "annotations={missing}"), "annotations file"),
    ("eval-bench", "predictions"): Case(("-c", "eval/bench_tiny", "annotations={annotations}", "predictions:={{cac: {missing}}}"), "predictions file"),
    ("eval-expert", "systems"): Case(("-c", "eval/expert_export", "systems:={{base: {missing}}}"), "systems.base: "),
    ("eval-expert", "labels"): Case(("-c", "eval/expert_analyze", "labels=[{missing}]")),
    ("eval-vbench", "systems"): Case(("-c", "eval/vbench", "systems:={{base: {missing}}}"), "systems.base: "),
    ("eval-vbench", "cache_dir"): Case(("-c", "eval/vbench", "systems:={{base: {clip}}}", "cache_dir={missing}")),
    ("report", "vbench"): Case(("-c", "eval/report", "vbench={missing}")),
    ("report", "expert"): Case(("-c", "eval/report", "vbench=null", "expert={missing}")),
    ("report", "runs"): Case(("-c", "eval/report", "vbench=null", "expert=null", "runs={{base: {missing}}}"), "runs.base="),
    ("export", "source"): Case(("source={missing}",)),
    ("export", "card"): Case(("source=cac-demo", "card={missing}")),
    ("bon", "prompts"): Case(("-c", "align/bon_tiny", "prompts={missing}")),
    ("bon", "generator.name"): Case(("-c", "align/bon_tiny", "generator.name={missing}")),
    ("bon", "generator.lora"): Case(("-c", "align/bon_tiny", "generator.lora={missing}")),
    ("bon", "reward"): Case(("-c", "align/bon_tiny", "reward:=" + _CAC), "reward.model.name="),
    ("repair", "videos"): Case(("-c", "align/repair_tiny_wan", "videos={missing}")),
    ("repair", "prompts"): Case(("-c", "align/repair_tiny_wan", "videos={clip}", "prompts={missing}")),
    ("repair", "scored"): Case(("-c", "align/repair_tiny_wan", "scored={missing}")),
    ("repair", "synth"): Case(("-c", "align/repair_tiny_wan", "synth={missing}")),
    ("repair", "reward"): Case(("-c", "align/repair_tiny_wan", "reward:=" + _CAC), "reward.model.name="),
    ("repair", "regenerator.name"): Case(("-c", "align/repair_tiny_wan", "regenerator.name={missing}")),
    ("dpo", "pairs"): Case(("-c", "align/dpo_tiny", "pairs=[{missing}]")),
    ("dpo", "generator.name"): Case(("-c", "align/dpo_tiny", "generator.name={missing}")),
    ("dpo", "generator.lora"): Case(("-c", "align/dpo_tiny", "generator.lora={missing}"), "generator.lora", refused=True),  # dpo makes its LoRA
    ("serve", "model"): Case(("-c", "serve/cac_demo", "model={missing}")),
    ("serve", "python"): Case(("-c", "serve/cac_demo", "python={missing}")),
    ("serve", "router_bin"): Case(("-c", "serve/cac_demo", "replicas=2", "router_bin={missing}")),
}

_WRITTEN = "written, not read: the run folder (docs/run_folders.md; a file there is refused by tests/test_cli_errors.py)"
_MODEL = "a model setting (dtype, device, attention, cache, ...), not a file"
_TEXT = "text or names (a prompt, a title, a label, module or reward component names)"
# setting (any job) -> why it is no path a job reads
NOT_PATHS: dict[str, str] = {
    "out_dir": _WRITTEN,
    "parallel.share_dir": "written, not read: the node-local copy of the shared encoders, made by the run",
    "models": "make-tiny's model names (qwen3_vl, wan, ...)",
    "types": _TEXT,
    "data.frame_types": _TEXT,
    "sources[].format": "a word of convert's FORMATS", "sources[].license": _TEXT, "sources[].prompt_from": "a word (convert's PROMPT_FROM)",
    "sources[].box_scale": "a word (convert's BOX_SCALES)",
    "served_model_name": _TEXT, "host": "an address", "dtype": _MODEL, "extra_args": "vLLM's flags", "env": "environment variables",
    "router": "a policy name (checked against POLICIES)", "router_args": "vllm-router's flags", "devices": "CUDA_VISIBLE_DEVICES values",
    **dict.fromkeys([f"{section}.{key}" for section in ("generator", "regenerator") for key in ("dtype", "vae_dtype", "device")], _MODEL),
    "generator.negative_prompt": _TEXT, "regenerator.negative_prompt": _TEXT,
    "lora.target_modules": _TEXT, "lora.init": "peft's init name", "advantage.localize.source": _TEXT,
    "teacher.backend": _MODEL, "teacher.base_url": "a server's URL (checked as one)", "teacher.api_key_env": "an environment variable's name",
    "teacher.dtype": _MODEL, "teacher.device": _MODEL, "teacher.attn_implementation": _MODEL, "teacher.video_input": _MODEL,
    "teacher.cache": _MODEL, "teacher.chat_template_kwargs": _MODEL, "teacher.session_header": "an HTTP header's name",
    "stream.overrides": "synth settings over the stream's recipe (synth reads no file)",
    "attn_implementation": _MODEL, "train.lr_scheduler": "a scheduler's name", "train.log_with": "a tracker's name",
    "match": "a word (path or stem)", "action": "export or analyze", "title": _TEXT, "tie_label": _TEXT,
    "dimensions": "vbench's dimension names", "device": _MODEL, "imaging_quality_preprocessing_mode": "a word (vbench's modes)",
    "settings": "inference settings written into the exported folder", "loss.mask": "a word (local, ...)", "loss.mask_norm": "a word",
}
# report's `systems` are names (the columns), where every other job's are {name: videos}
NOT_PATHS_OF = {("report", "systems"): "the systems' names, the table's columns, in order"}


def _text_type(tp: Any) -> bool:
    """Whether a value of type ``tp`` may be text: a str, Any, or a list / mapping / union holding one
    (a mapping's values; its keys are names)."""
    if tp is str or tp is Any:
        return True
    if typing.get_origin(tp) is dict:
        return _text_type(typing.get_args(tp)[1])
    return any(_text_type(arg) for arg in typing.get_args(tp))


def _section(tp: Any) -> tuple[type | None, str]:
    """The dataclass a setting's type holds (a section, an optional section, a list of them) and the
    key's suffix (``[]`` for a list)."""
    if dataclasses.is_dataclass(tp):
        return tp, ""
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg, "[]" if typing.get_origin(tp) is list else ""
    return None, ""


def settings_that_may_be_paths(config_class: type, prefix: str = "") -> list[str]:
    """Every setting of a job's config whose value may be text, as dotted keys, less its class's ``CHOICES``."""
    hints = typing.get_type_hints(config_class)
    choices = getattr(config_class, "CHOICES", {})
    found = []
    for field in dataclasses.fields(config_class):
        section, suffix = _section(hints[field.name])
        if section is not None:
            found += settings_that_may_be_paths(section, f"{prefix}{field.name}{suffix}.")
        elif field.name not in choices and _text_type(hints[field.name]):
            found.append(prefix + field.name)
    return found


def _every_setting() -> list[tuple[str, str]]:
    return [(job, key) for job, spec in JOBS.items() for key in settings_that_may_be_paths(spec.config_class())]


def test_every_setting_that_may_be_a_path_has_a_row():
    settings = _every_setting()
    assert len(settings) > 100  # the walk reaches the nested sections (a walk that found none would pass below)
    lacking = [f"{job} {key}" for job, key in settings if (job, key) not in PATHS and (job, key) not in NOT_PATHS_OF and key not in NOT_PATHS]
    assert not lacking, f"settings without a row in PATHS (a path the job reads) or NOT_PATHS: {lacking}"
    both = [f"{job} {key}" for job, key in PATHS if key in NOT_PATHS or (job, key) in NOT_PATHS_OF]
    assert not both, f"a path in PATHS and in NOT_PATHS: {both}"
    stale = sorted({f"{job} {key}" for job, key in [*PATHS, *NOT_PATHS_OF] if (job, key) not in settings}
                   | {key for key in NOT_PATHS if key not in {key for _, key in settings}})
    assert not stale, f"rows for settings no job has: {stale}"


@pytest.fixture(scope="module")
def present(tmp_path_factory):
    """Files that are there, for a case's other inputs: an annotations file, a video file (never
    opened: the missing path is refused first), convert's tiny inputs."""
    from cac_align.cac.schema import AnnotationRecord, write_annotations
    from conftest import REPO_ROOT

    folder = tmp_path_factory.mktemp("present")
    (folder / "clip.mp4").write_bytes(b"")
    return {"annotations": str(write_annotations([AnnotationRecord("clip.mp4", "a cat", "normal", 4.0, [], 8)], folder / "annotations.jsonl")),
            "clip": str(folder / "clip.mp4"), "csv": str(REPO_ROOT / "recipes/data/convert_tiny_labels.csv"),
            "vif": str(REPO_ROOT / "recipes/data/convert_tiny_vif_cot.json")}


@pytest.mark.parametrize("job, key", sorted(PATHS), ids=[f"{job}:{key}" for job, key in sorted(PATHS)])
def test_a_missing_path_is_one_line_naming_it(job, key, present, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a recipe's other relative paths are not found here: each case gives what it needs
    case = PATHS[(job, key)]
    missing = str(tmp_path / "not_there")
    argv = [job, *(item.format(missing=missing, **present) for item in case.argv)]
    out_dir = tmp_path / "out"
    if "out_dir" in {f.name for f in dataclasses.fields(JOBS[job].config_class())}:
        argv.append(f"out_dir={out_dir}")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err  # one line, nothing before it
    line = err.strip()
    assert line.startswith(f"cac-align {job}: error: "), line
    assert (case.named or f"{key}=") in line, line
    assert case.refused or missing in line, line
    assert not out_dir.exists()  # refused before anything was written


def test_score_refuses_a_prompts_file_it_would_not_read(tmp_path, capsys):
    """A tiny score recipe renders its demo (synth_videos) with the demo's own prompts: a prompts= beside
    it went unread, scored in silence (a missing one too), where repair refuses it."""
    code = main(["score", "-c", "score/cac_tiny", f"prompts={tmp_path / 'not_there'}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"prompts='{tmp_path / 'not_there'}' goes with 'videos' (the synth_videos demo carries its own prompts): give videos= too" in err
    assert not (tmp_path / "out").exists()
