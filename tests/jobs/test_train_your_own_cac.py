"""docs/train_your_own_cac.md, command for command: its offline block runs from an empty folder
(each hop reads what the previous one wrote; nothing of the checkout but the package is needed:
tests/wheel_check.sh runs the same block with the wheel installed) and every full-size command
loads its config (``--print-config``)."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from cac_align.cac.infer import MODEL_SETTINGS
from cac_align.cli import main
from cac_align.models import model_settings
from conftest import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "train_your_own_cac.md"


def _commands(marker: str) -> list[list[str]]:
    """The commands of the bash block after ``<!-- marker -->``: continuation lines joined,
    comments and blank lines left out."""
    text = PAGE.read_text()
    block = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", text, re.S)
    assert block, f"no bash block after <!-- {marker} --> in {PAGE}"
    joined = re.sub(r"\\\n\s*", " ", block.group(1))
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _cli_args(command: list[str]) -> list[str]:
    if command[0] == "cac-align":
        return command[1:]
    assert command[:2] == ["accelerate", "launch"], command
    if "--config_file" in command:
        assert (REPO_ROOT / command[command.index("--config_file") + 1]).is_file(), command
    return command[command.index("cac_align.cli") + 1 :]


def test_full_size_commands_load(capsys):
    commands = _commands("full-size")
    assert [c[0] for c in commands if c[0] not in ("cac-align", "accelerate")] == ["vllm"]  # the teacher's server
    jobs = []
    for command in commands:
        if command[0] == "vllm":
            continue
        args = _cli_args(command)
        assert main([*args, "--print-config"]) == 0, " ".join(command)
        jobs.append(args[0])
    assert jobs == ["convert", "synth-cot", "train-cac", "train-cac", "train-cac", "score", "eval", "flow-grpo"]
    printed = capsys.readouterr().out
    assert "finetune: lora" in printed  # stage 3's override took


@pytest.mark.slow  # ~15 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_offline_road_runs(tmp_path, monkeypatch, capsys):
    from cac_align.cac.schema import load_annotations

    monkeypatch.chdir(tmp_path)  # an empty folder: the recipes and their rows come from the package
    commands = _commands("offline-check")
    assert {c[0] for c in commands} == {"cac-align"}  # nothing that only a checkout has
    for command in commands:
        assert main(_cli_args(command)) == 0, " ".join(command)

    out = tmp_path / "outputs/public_tiny"
    converted = load_annotations(out / "converted/annotations.jsonl", check_videos=True).records
    assert len(converted) == 9 and {r.source for r in converted} >= {"ViF-CoT-4K", "VideoPhy-2"}
    cot = load_annotations(out / "cot/annotations.jsonl").records
    assert len(cot) == 9 and all(r.cot for r in cot)
    # status-only records: no boxes for stage 1, no window for stage 2 (counted, not dropped silently)
    stage1 = json.loads((out / "stage1/data.json").read_text())["stats"]["train"]
    stage2 = json.loads((out / "stage2/data.json").read_text())["stats"]["train"]
    # stage 1: v_label_a's sign (a Character anomaly labelled without a box); stage 2: the two
    # VideoPhy-2 records and v_label_b (status-only)
    assert stage1["anomalies_without_boxes"] == 1 and stage2["anomalies_without_window"] == 3
    for stage in ("stage1", "stage2", "stage3"):
        assert (out / stage / "final/model.safetensors").is_file(), stage
        # how to ask it travels with it: the data section's settings (stage 3: and its token budget)
        settings = model_settings(str(out / stage / "final"))
        assert set(settings) == set(MODEL_SETTINGS) - ({"max_new_tokens"} if stage != "stage3" else set()), stage
    assert model_settings(str(out / "my_cac")) == model_settings(str(out / "stage3/final"))  # export carries them
    assert (out / "stage3/adapter/adapter_model.safetensors").is_file()
    scored = [json.loads(line) for line in (out / "score/results.jsonl").read_text().splitlines()]
    assert len(scored) == 9 and json.loads((out / "score/cac_align_run.json").read_text())["job"] == "score"
    coverage = json.loads((out / "bench/bench.json").read_text())["systems"]["cac"]["coverage"]
    assert (coverage["annotated"], coverage["invalid"] + coverage["scored"], coverage["missing"]) == (9, 9, 0)
    # the exported folder (float16 weights) is what flow-grpo scored its videos with, beside UnifiedReward
    exported, trained = (out / "my_cac/model.safetensors").stat().st_size, (out / "stage3/final/model.safetensors").stat().st_size
    assert exported < 0.55 * trained
    assert "outputs/public_tiny/my_cac" in (out / "flow_grpo/cac_align_run.json").read_text()
    rewards = [row for row in map(json.loads, (out / "flow_grpo/metrics.jsonl").read_text().splitlines()) if row["step"] > 0]  # not step 0's evaluation
    assert 0.0 < rewards[0]["reward/cac_raw_mean"] < 1.0 and 0.0 < rewards[0]["reward/ur_cac_mean"] < 1.0
    # checkpoint_every=0 as the reader takes it: no checkpoint; the LoRA, and the line saying where
    assert not (out / "flow_grpo/checkpoints").exists() and (out / "flow_grpo/lora").is_dir()
    lora = "outputs/public_tiny/flow_grpo/lora"
    assert capsys.readouterr().out.splitlines()[-1] == f"flow-grpo: done; LoRA in {lora} (generator.lora={lora} samples with it)"


@pytest.mark.parametrize("name", ["convert.yaml", "convert_tiny.yaml"])
def test_convert_recipes_load(name):
    assert main(["check-recipe", str(REPO_ROOT / "recipes/data" / name)]) == 0


def test_convert_tiny_from_an_empty_folder_says_to_make_the_videos_first(tmp_path, monkeypatch, capsys):
    """The offline road's second step run first: the error names the step that writes the folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "--config", "data/convert_tiny"]) != 0
    err = capsys.readouterr().err
    assert "video_root='outputs/public_tiny/videos': no such folder; it is written by " in err
    assert "`cac-align make-tiny --config tiny/convert_tiny_videos`: run that first" in err
