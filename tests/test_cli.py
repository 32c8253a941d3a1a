"""The `cac-align` entry point: help, recipe checks, errors without tracebacks, make-tiny end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cac_align.cli import main
from conftest import REPO_ROOT, ignore_sigint, stop_process_tree


def test_installed_console_script_lists_jobs():
    exe = shutil.which("cac-align")
    assert exe, "cac-align is not on PATH: install the package as README says"
    # Python's import log (-X importtime) on stderr: the top help imports no job module (a job's
    # settings are read from its config class only when that job's help is shown)
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    out = done.stdout
    assert "make-tiny" in out and "synth" in out and "check-recipe" in out
    imported = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "cac_align.cli" in imported and not [m for m in imported if m.startswith("cac_align.jobs.")]
    from cac_align.gen.family import families

    assert all(family.title in out for family in families()) and "MiniMax-H3" in out  # the families, from the one list
    joined = " ".join(out.split())  # argparse wraps the job lines: what they say of the sound (issue #100, item 7)
    assert "on any reward, its sound too (audio=trained" in joined and "on a video reward" not in joined
    assert "Best-of-N video generation on every family" in joined and "(Wan-2.1, Wan2.2, LTX-2 with its sound)" not in joined


def test_check_recipe_reports_good_and_bad(tmp_path, capsys, monkeypatch):
    from cac_align.plan import configs as plan_configs

    # validation only: the big recipes' plans from the shipped configs take minutes (tests/plan/test_full_size_configs.py)
    monkeypatch.setattr(plan_configs, "FULL_SIZE_CONFIGS", tmp_path / "nothing shipped")
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: make-tiny\nout_dir: x\nsead: 3\n")
    code = main(["check-recipe", str(REPO_ROOT / "recipes"), str(bad)])
    captured = capsys.readouterr()
    assert code == 1
    # one verdict line a recipe, every one on stdout (issue #105, item 4): the plans are indented under theirs
    recipes = [p for p in (REPO_ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.relative_to(REPO_ROOT / "recipes").parts[:-1]]
    recipes += list((REPO_ROOT / "recipes" / "cac").glob("stage3_swift*.sh"))  # stage 3's ms-swift launchers, planned from their arguments
    *verdicts, summary = [line for line in captured.out.splitlines() if not line.startswith(" ")]
    assert len(verdicts) == len(recipes) + 1 and all(line.split()[0] in ("ok", "FAIL", "UNKNOWN") for line in verdicts)
    assert [line for line in verdicts if line.startswith("FAIL")] == [line for line in verdicts if line.startswith(
        f"FAIL    {bad}: unknown key 'sead'; did you mean 'seed'")] and captured.err == ""
    counted = {word: sum(line.split()[0] == word for line in verdicts) for word in ("ok", "FAIL", "UNKNOWN")}
    assert counted["FAIL"] == 1 and summary == (f"{len(recipes) + 1} recipes: {counted['ok']} ok, 1 failed"
                                                + (f", {counted['UNKNOWN']} not planned whole" if counted["UNKNOWN"] else "") + " (exit 1)")
    # every job is planned (issue #116): each valid recipe's verdict is a plan, or what it could not count
    assert not [line for line in verdicts if "no memory plan" in line or ": valid" in line]
    assert all(": planned: " in line or line.startswith("UNKNOWN") for line in verdicts if not line.startswith("FAIL"))


def test_check_recipe_exits_0_when_it_fits_1_when_refused_and_3_when_a_model_was_not_counted(hub_cache, capsys):
    """A plan says "fits" only for what it counted (issue #100, item 2): a recipe whose in-process judges' files are not
    here (LTX-2's sound recipe: CLAP, AudioBox, Synchformer) exits 3 with an "unknown" verdict naming what to fetch;
    one whose models were all counted and fit, 0; refused, 1. No warning of the models built for counting leaks."""
    import warnings

    recipe = str(REPO_ROOT / "recipes/align/flow_grpo_ltx2_sound.yaml")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["check-recipe", "--gpu-gb", "80", recipe]) == 3
    captured = capsys.readouterr()
    assert [str(w.message) for w in seen] == []
    (device,) = [line for line in captured.out.splitlines() if line.strip().startswith("device")]
    assert device.split()[-5:] == ["74.51", "unknown", "(3", "not", "counted)"] and "fits" not in device
    verdict, *plan, summary = captured.out.splitlines()
    assert verdict.startswith(f"UNKNOWN {recipe} (job: flow-grpo): 3 models not counted (reward.components[") and captured.err == ""
    assert "hf download laion/larger_clap_general" in " ".join(plan) and summary == "1 recipe: 0 ok, 0 failed, 1 not planned whole (exit 3)"
    assert main(["check-recipe", "--gpu-gb", "80", str(REPO_ROOT / "recipes/align/nft_wan_ur_cac.yaml")]) == 0
    out = capsys.readouterr().out
    assert "  fits" in out and out.startswith(f"ok      {REPO_ROOT / 'recipes/align/nft_wan_ur_cac.yaml'} (job: nft): planned: ")
    assert main(["check-recipe", "--gpu-gib", "1", str(REPO_ROOT / "recipes/align/nft_wan_ur_cac.yaml")]) == 1
    assert capsys.readouterr().out.startswith(f"FAIL    {REPO_ROOT / 'recipes/align/nft_wan_ur_cac.yaml'} (job: nft): refused: memory plan")


def test_check_recipe_gives_each_recipe_one_verdict_on_stdout(capsys):
    """One verdict line a recipe, on stdout beside the rest (issue #105, item 4): 16 processes (2 nodes of 8) do not
    split a tiny recipe's 8 samples, and that FAIL is its only verdict (it printed `ok` first, and the FAIL on
    stderr, where `2>/dev/null` hid it)."""
    recipe = REPO_ROOT / "recipes/align/flow_grpo_tiny.yaml"
    assert main(["check-recipe", "--nodes", "2", str(recipe)]) == 1
    captured = capsys.readouterr()
    verdict, summary = captured.out.splitlines()
    assert verdict.startswith(f"FAIL    {recipe} (job: flow-grpo): 16 processes: prompts_per_step * group_size (samples per step) = 8")
    assert summary == "1 recipe: 0 ok, 1 failed (exit 1)" and captured.err == ""


def test_check_recipe_fits_its_plan_to_the_terminal(capsys, monkeypatch):
    """The plan under a verdict fits the terminal's width (issue #105, item 4: rows were as wide as their longest
    label, 513 characters seen): a long row wraps its label under itself, its numbers staying in their column; the
    width is $COLUMNS or the terminal's, else 100 (output piped; a trainer's log fits its plan alike). The verdict
    stays one line."""
    from cac_align.plan.rows import FALLBACK_COLUMNS, output_width

    monkeypatch.setenv("COLUMNS", "100")
    recipe = REPO_ROOT / "recipes/align/flow_grpo_tiny_fsdp2.yaml"
    reward = "reward={name: combined, components: [{name: brightness}, {name: clap, model: /no/such/folder/of/clap/weights}]}"
    assert main(["check-recipe", "--nodes", "2", "--gpus-per-node", "2", str(recipe), reward]) == 3  # the clap judge: not counted
    verdict, *plan, summary = capsys.readouterr().out.splitlines()
    assert verdict.startswith(f"UNKNOWN {recipe} (job: flow-grpo): 1 model not counted (reward.components[1].model)")
    assert len(plan) > 30 and max(len(line) for line in plan) <= 100 and summary.endswith("(exit 3)")
    (row,) = [k for k, line in enumerate(plan) if "judge reward.components[1].model: not counted" in line]
    assert plan[row].split()[-3:] == ["0.00", "unknown", "resident"] and plan[row + 1].startswith(" " * 9 + "(/no/such/folder/of/clap/weights")
    assert "no safetensors weights there" in " ".join(line.strip() for line in plan[row + 1: row + 4])
    monkeypatch.delenv("COLUMNS")

    def no_terminal(*args):
        raise OSError("not a terminal")

    monkeypatch.setattr(os, "get_terminal_size", no_terminal)
    assert output_width() == FALLBACK_COLUMNS == 100
    monkeypatch.setenv("COLUMNS", "132")
    assert output_width() == 132


def test_check_recipe_takes_a_recipe_by_name_from_any_folder_with_overrides(tmp_path, capsys, monkeypatch):
    """As --config takes it (issue #100, item 3): a shipped recipe's name from an empty folder, and key=value overrides
    merged over it before it is planned (a tiny generator planned too)."""
    monkeypatch.chdir(tmp_path)
    assert main(["check-recipe", "align/flow_grpo_tiny_ltx2_sound"]) == 0
    plain = capsys.readouterr().out
    assert main(["check-recipe", "align/flow_grpo_tiny_ltx2_sound", "generator.num_frames=17"]) == 0
    longer = capsys.readouterr().out
    assert "memory plan per GPU for LTX-2" in plain and "4 videos of 9 x 64 x 64" in plain
    assert "4 videos of 17 x 64 x 64" in longer  # the override reached the plan
    assert main(["check-recipe", "recipes/align/flow_grpo_tiny_ltx2_sound.yaml", "generator.num_frame=17"]) == 1
    assert "did you mean 'generator.num_frames'" in capsys.readouterr().out
    assert main(["check-recipe", "align/flow_grpo_tiny_ltx2_sund"]) == 1
    assert "did you mean align/flow_grpo_tiny_ltx2_sound" in capsys.readouterr().err


def test_job_log_lines_reach_stderr_once():
    # what the trainers log (resuming from, checkpoint written, a skipped video) shows under the
    # CLI; other libraries' INFO stays quiet; a second main() in the process adds no second copy
    code = (
        "import logging\n"
        "from cac_align.cli import _show_job_logs\n"
        "_show_job_logs(); _show_job_logs()\n"
        "logging.getLogger('cac_align.jobs.flow_grpo').info('flow-grpo: resuming from x (step 2)')\n"
        "logging.getLogger('transformers').info('not shown')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr == "flow-grpo: resuming from x (step 2)\n"


def test_user_error_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cac_align.cli", "make-tiny", "out_dir=" + str(tmp_path), "modles=[wan]"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown key 'modles'; did you mean 'models'" in result.stderr


@pytest.mark.slow  # ~5 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    import signal
    import time

    out = tmp_path / "synth"
    # started as `cmd &` in a script starts it: SIGINT ignored, so Python installs no handler of its
    # own; cac-align sets one, and Ctrl-C stops it all the same
    job = subprocess.Popen(
        [sys.executable, "-m", "cac_align.cli", "synth", f"out_dir={out}", "n=5000", "height=64", "width=96"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        # the job is running, past its imports and its first finished video (a hidden ".name.*.mp4"
        # is one being written); wherever the signal lands, the job stops (tests/test_video.py)
        while not any(out.glob("videos/[!.]*.mp4")):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.1)
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=60)
    finally:
        stop_process_tree(job)
    assert job.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    # the progress bar's last state may precede the line on the same terminal line
    assert err.rstrip().splitlines()[-1].endswith("cac-align synth: interrupted; rerun the same command to resume: finished videos are kept")


def test_ctrl_c_says_how_a_resumable_job_continues(tmp_path, monkeypatch, capsys):
    from cac_align.jobs import JobSpec
    from cac_align.run.folder import RunFolder

    def interrupted(self):
        def run(config):
            raise KeyboardInterrupt

        return run

    monkeypatch.setattr(JobSpec, "runner", interrupted)
    # its run is recorded in out_dir (a run that got going, or an earlier one): resume says how
    RunFolder(tmp_path, "train-cac", ["checkpoints"], {}).start()
    assert main(["train-cac", "--config", str(REPO_ROOT / "recipes/cac/stage1_tiny.yaml"), f"out_dir={tmp_path}"]) == 130
    assert capsys.readouterr().err == (
        "cac-align train-cac: interrupted; rerun the same command with resume=true to continue from its last saved checkpoint\n"
    )


def test_ctrl_c_before_a_run_started_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    """repair stopped while its models load has recorded nothing: no "finished videos are kept"."""
    import cac_align.rewards.registry

    def loading(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cac_align.rewards.registry, "build_reward", loading)
    out = tmp_path / "repair"
    assert main(["repair", "--config", str(REPO_ROOT / "recipes/align/repair_tiny.yaml"), f"out_dir={out}"]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"cac-align repair: interrupted before its run started (nothing recorded in {out}); rerun the same command to start it", err
    assert not (out / "cac_align_run.json").exists()


def test_print_config_shows_resolved_values(capsys):
    recipe = REPO_ROOT / "recipes/tiny/make_tiny.yaml"
    assert main(["make-tiny", "--config", str(recipe), "--print-config", "seed=7", "models=[wan]"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "- wan" in out


def test_print_config_shows_the_reward_sections_defaults(capsys):
    """The reward section is typed: --print-config lists every setting with its default, not
    only the keys the recipe wrote."""
    import yaml

    recipe = REPO_ROOT / "recipes/score/cac_demo.yaml"
    assert "fallback" not in recipe.read_text() and "source_fps" not in recipe.read_text()
    assert main(["score", "--config", str(recipe), "--print-config", "reward.options.scan_fps=2"]) == 0
    reward = yaml.safe_load(capsys.readouterr().out)["reward"]
    assert reward["name"] == "cac" and reward["model"]["name"] == "cac-demo"  # the recipe's values
    assert reward["options"]["scan_fps"] == 2.0  # an override
    assert reward["options"]["fallback"] == "whole_video" and reward["source_fps"] == 16.0  # defaults it did not write
    assert reward["model"]["backend"] == "hf" and reward["model"]["trust_remote_code"] is False


def test_make_tiny_writes_loadable_models_and_resumes(tmp_path, capsys):
    recipe = REPO_ROOT / "recipes/tiny/make_tiny.yaml"
    assert main(["make-tiny", "-c", str(recipe), f"out_dir={tmp_path}", "models=[qwen3_vl,wan,ltx2]"]) == 0
    assert (tmp_path / "qwen3_vl/model.safetensors").exists()
    assert (tmp_path / "wan/model_index.json").exists()
    assert not (tmp_path / "qwen2_5_vl").exists()
    from cac_align.gen.family import family_of

    assert family_of(str(tmp_path / "ltx2")).name == "ltx2" and family_of(str(tmp_path / "wan")).name == "wan2.1"  # what their files say

    from cac_align.vlm.hf import load_vlm

    model, _ = load_vlm(str(tmp_path / "qwen3_vl"), dtype="float32", device="cpu")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"

    # A second run keeps finished models instead of rebuilding them.
    stamp = (tmp_path / "qwen3_vl/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["make-tiny", "-c", str(recipe), f"out_dir={tmp_path}", "models=[qwen3_vl]"]) == 0
    assert "kept existing" in capsys.readouterr().out
    assert (tmp_path / "qwen3_vl/model.safetensors").stat().st_mtime_ns == stamp


def test_make_tiny_renders_the_videos_the_tiny_convert_rows_name(tmp_path, capsys):
    # the first step of docs/train_your_own_cac.md's offline road (run whole there, from an empty folder)
    assert main(["make-tiny", "--config", "tiny/convert_tiny_videos", f"out_dir={tmp_path}"]) == 0
    from cac_align.data.convert.tiny import CONVERT_TINY_VIDEOS

    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos"]  # no model
    assert sorted(p.stem for p in (tmp_path / "videos").glob("*.mp4")) == sorted(CONVERT_TINY_VIDEOS)
    assert (tmp_path / "videos/frames/v_fake_pixels/000.jpg").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == f"convert_videos: wrote 12 videos in {tmp_path / 'videos'} (the ones recipes/data/convert_tiny.yaml's rows name)"
    assert main(["make-tiny", "--config", "tiny/convert_tiny_videos", f"out_dir={tmp_path}", "convert_videos=false"]) == 2
    assert "list at least one tiny model (or set convert_videos: true)" in capsys.readouterr().err


def test_make_tiny_needs_out_dir(capsys):
    assert main(["make-tiny"]) == 2
    assert "required key 'out_dir'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["make-tiny", "--help"]])
def test_help_exits_zero(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


def _settings(out: str) -> dict[str, tuple[str, str]]:
    """``{key: (default, the rest)}`` of the settings a job's help lists (two spaces or more between columns)."""
    import re

    rows = out.split("settings: default, [the values it takes], what it does")[1].splitlines()[1:]
    found = [re.match(r"^  (\S+)  +((?:(?! {2}).)+?)(?: {2,}(.*))?$", row) for row in rows if row.startswith("  ")]
    return {m.group(1): (m.group(2), m.group(3) or "") for m in found if m}


def test_a_jobs_help_lists_its_settings_with_their_defaults_values_and_what_they_do(capsys):
    """``cac-align <job> --help`` ends with every setting of the job's config class: its default (FlowGrpoConfig /
    BonConfig), nested sections as dotted keys, the values it takes where they are few, and one line of what it does
    from the class's docstring (issue #100, item 7; the top help imports no job for them:
    test_installed_console_script_lists_jobs)."""
    for argv in (["flow-grpo", "--help"], ["bon", "-h"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        settings = _settings(capsys.readouterr().out)
        defaults = {key: default for key, (default, _) in settings.items()}
        if argv[0] == "flow-grpo":  # the paper's defaults in FlowGrpoConfig (CaC §4.2: group 16, noise 0.3, LoRA rank 32)
            assert {k: defaults[k] for k in ("group_size", "noise_level", "steps", "lora.rank", "out_dir", "eval_prompts", "reward",
                                             "advantage.localize.enabled", "learning_rate")} == {
                "group_size": "16", "noise_level": "0.3", "steps": "120", "lora.rank": "32", "out_dir": "??? (required)",
                "eval_prompts": "null", "reward": "{name: ur_cac}", "advantage.localize.enabled": "false", "learning_rate": "0.0001"}
            # 89, issue #89's four: audio, audio_rewards_blind_ok, advantage.routing, watch.components; #92's optimizer,
            # parallel.share_encoders and parallel.share_dir; #98 parallel.replicate; #104's twelve: loss, dppo_delta,
            # advantage.aggregate and the nine of regularize; regularize.hold (#104, s16); regularize.project (#104, s19);
            # eval_at_start (#115); generator.decode (#117)
            assert len(settings) == 113 and "generator.name" in settings and "parallel.shard" in settings
            assert defaults["generator.decode"] == "vae" and settings["generator.decode"][1].startswith("[vae | latent_preview] ")
            assert {k: defaults[k] for k in ("loss", "dppo_delta", "advantage.aggregate", "regularize.gate", "regularize.reference")} == {
                "loss": "ppo_clip", "dppo_delta": "null", "advantage.aggregate": "sum_then_normalize", "regularize.gate": "none",
                "regularize.reference": "base"}
            assert settings["loss"][1].startswith("[ppo_clip | dppo_kl | dppo_tv] ") and settings["regularize.gate"][1].startswith("[none | uncertain] ")
            assert defaults["regularize.hold"] == "kl" and settings["regularize.hold"][1].startswith("[kl | worst_case] ")
            assert defaults["regularize.project"] == "false" and "conflict" in settings["regularize.project"][1]
            assert defaults["parallel.share_encoders"] == "null" and defaults["parallel.share_dir"] == "null"
            assert defaults["optimizer"] == "adamw"
            assert {k: defaults[k] for k in ("audio", "audio_rewards_blind_ok", "advantage.routing", "watch.components")} == {
                "audio": "frozen", "audio_rewards_blind_ok": "false", "advantage.routing": "summed", "watch.components": "true"}
            # what the new user met: audio and routing without their other values or a word of what they do
            assert settings["audio"][1].startswith("[frozen | trained] ") and "sound" in settings["audio"][1]
            assert settings["advantage.routing"][1].startswith("[summed | routed] ") and "advantage" in settings["advantage.routing"][1]
            assert settings["parallel.shard"][1].startswith("[none | fsdp2] ") and settings["watch.stop"][1].startswith("[true | false] ")
        else:
            assert defaults["n"] == "5" and defaults["prompts"] == "??? (required)" and defaults["generator.name"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def test_every_setting_of_every_job_says_what_it_does():
    """Each job's config documents each of its settings ("Attributes:" of its class and its sections' classes), so
    every line of every job's help says what the setting does."""
    from cac_align.cli import settings_help
    from cac_align.jobs import JOBS

    for spec in JOBS.values():
        rows = _settings("settings: default, [the values it takes], what it does\n" + settings_help(spec.config_class()).split("\n", 1)[1])
        silent = [key for key, (_, what) in rows.items() if not what.replace("[true | false]", "").strip()]
        assert rows and not silent, f"{spec.name}: {silent}"


def test_print_config_shows_the_defaults_without_a_recipe(capsys):
    """``--print-config`` with nothing given: the defaults, ``???`` where a run needs a value, and
    on stderr what it needs (it refused before, on the missing out_dir)."""
    assert main(["flow-grpo", "--print-config"]) == 0
    captured = capsys.readouterr()
    assert "out_dir: ???" in captured.out and "prompts: ???" in captured.out and "steps: " in captured.out
    assert "cac-align flow-grpo: not runnable as it stands: " in captured.err and "out_dir" in captured.err
    assert main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_demo.yaml"), "--print-config"]) == 0
    captured = capsys.readouterr()
    assert "out_dir: outputs/score_demo" in captured.out and not captured.err  # a runnable recipe: resolved, nothing said


def test_third_party_noise_is_hidden_unless_verbose(caplog, recwarn):
    """The named third-party messages (cli.QUIET_LOGS, QUIET_WARNINGS) are hidden by a job, and
    shown with --verbose; any other message of the same logger is left alone."""
    import logging
    import warnings

    guider = logging.getLogger("diffusers.guiders.guider_utils")
    for verbose, shown in (([], False), (["-v"], True)):
        assert main(["flow-grpo", "--print-config", *verbose]) == 0
        caplog.clear()
        recwarn.clear()
        with caplog.at_level(logging.WARNING):
            guider.warning("Guiders are currently an experimental feature under active development.")
            guider.warning("another message of that logger")
        warnings.warn("`torch.nn.utils.weight_norm` is deprecated in favor of ...", FutureWarning, stacklevel=1)
        assert ("Guiders are currently" in caplog.text) == shown and "another message of that logger" in caplog.text
        assert any("weight_norm" in str(w.message) for w in recwarn) == shown
    assert main(["flow-grpo", "--print-config"]) == 0  # quiet again for the tests that follow
