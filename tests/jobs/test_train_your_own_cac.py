"""docs/train_your_own_cac.md, command for command: every full-size command loads its config
(``--print-config``). Its offline block runs from an empty folder in tests/wheel_check.sh, with the
wheel installed (each hop reads what the previous one wrote; nothing of the checkout but the package
is needed), which also reads what each hop wrote."""

from __future__ import annotations

import re
import shlex

import pytest

from cac_align.cli import main
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
