"""The `cac-align` entry point: help, recipe checks, errors without tracebacks, make-tiny end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cac_align.cli import main
from conftest import REPO_ROOT


def test_installed_console_script_lists_jobs():
    exe = shutil.which("cac-align")
    assert exe, "cac-align is not on PATH: install the package as README says"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "make-tiny" in out and "synth" in out and "check-recipe" in out


def test_check_recipe_reports_good_and_bad(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: make-tiny\nout_dir: x\nsead: 3\n")
    code = main(["check-recipe", str(REPO_ROOT / "recipes"), str(bad)])
    captured = capsys.readouterr()
    assert code == 1
    assert "ok   " in captured.out and "1 failed" in captured.out
    assert "unknown key 'sead'; did you mean 'seed'" in captured.err


def test_user_error_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cac_align.cli", "make-tiny", "out_dir=" + str(tmp_path), "modles=[wan]"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown key 'modles'; did you mean 'models'" in result.stderr


def test_print_config_shows_resolved_values(capsys):
    recipe = REPO_ROOT / "recipes/tiny/make_tiny.yaml"
    assert main(["make-tiny", "--config", str(recipe), "--print-config", "seed=7", "models=[wan]"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "- wan" in out


def test_make_tiny_writes_loadable_models_and_resumes(tmp_path, capsys):
    recipe = REPO_ROOT / "recipes/tiny/make_tiny.yaml"
    assert main(["make-tiny", "-c", str(recipe), f"out_dir={tmp_path}", "models=[qwen3_vl,wan]"]) == 0
    assert (tmp_path / "qwen3_vl/model.safetensors").exists()
    assert (tmp_path / "wan/model_index.json").exists()
    assert not (tmp_path / "qwen2_5_vl").exists()

    from cac_align.vlm.hf import load_vlm

    model, _ = load_vlm(str(tmp_path / "qwen3_vl"), dtype="float32", device="cpu")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"

    # A second run keeps finished models instead of rebuilding them.
    stamp = (tmp_path / "qwen3_vl/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["make-tiny", "-c", str(recipe), f"out_dir={tmp_path}", "models=[qwen3_vl]"]) == 0
    assert "kept existing" in capsys.readouterr().out
    assert (tmp_path / "qwen3_vl/model.safetensors").stat().st_mtime_ns == stamp


def test_make_tiny_needs_out_dir(capsys):
    assert main(["make-tiny"]) == 2
    assert "required key 'out_dir'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["make-tiny", "--help"]])
def test_help_exits_zero(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
