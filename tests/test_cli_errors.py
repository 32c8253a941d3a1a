"""Bad settings and inputs end a job with one line naming the problem and exit status 2, never a
traceback: an out_dir that is a file, a device this machine lacks, a malformed server URL, a
missing LoRA, an oversized synth frame, an empty manifest, a prompt that is not text; a mapping
written as people type it; the source of a bad value (the recipe or the command line)."""

from __future__ import annotations

import json

import pytest

from cac_align.cli import main
from conftest import REPO_ROOT


def _one_line_error(capsys, code, *expected):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # a job's own progress lines may come before it
    assert last.startswith("cac-align ") and ": error: " in last, err
    for text in expected:
        assert text in last, err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    "job, recipe",
    [
        ("score", "recipes/score/cac_tiny.yaml"),
        ("bon", "recipes/align/bon_tiny.yaml"),
        ("flow-grpo", "recipes/align/flow_grpo_tiny.yaml"),
        ("synth", "recipes/cac/synth_tiny.yaml"),
        ("make-tiny", "recipes/tiny/make_tiny.yaml"),
    ],
)
def test_an_out_dir_that_is_a_file(job, recipe, a_file, capsys):
    _one_line_error(capsys, main([job, "--config", str(REPO_ROOT / recipe), "--out", str(a_file)]), "is a file, not a folder")


def test_eval_bench_into_a_file(tmp_path, a_file, capsys):
    from cac_align.cac.schema import AnnotationRecord, write_annotations

    annotations = write_annotations([AnnotationRecord("v0.mp4", "p", "normal", 4.0, [], 8)], tmp_path / "a.jsonl")
    (tmp_path / "p.jsonl").write_text(json.dumps({"video": "v0.mp4", "status": "normal"}) + "\n")
    code = main(["eval", "bench", f"annotations={annotations}", f"predictions={{s: {tmp_path / 'p.jsonl'}}}", f"out_dir={a_file}"])
    _one_line_error(capsys, code, "is a file, not a folder")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("reward.model.device=cpu:banana", "reward.model.device='cpu:banana' is not a device"),
        ("reward.model.device=cuda:7", "reward.model.device='cuda:7': this machine has"),
        ("reward.model.base_url=not-a-url", "model.base_url='not-a-url' is not a server URL"),
        ("reward.model.dtype=float8", "model.dtype='float8': unknown dtype"),
    ],
)
def test_bad_model_settings(override, expected, tmp_path, capsys):
    code = main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_demo.yaml"), "--out", str(tmp_path / "o"), override])
    _one_line_error(capsys, code, expected)


def test_a_missing_lora_and_an_oversized_synth_frame(tmp_path, capsys):
    code = main(["bon", "--config", str(REPO_ROOT / "recipes/align/bon_tiny.yaml"), "--out", str(tmp_path / "b"), "generator.lora=/nonexistent"])
    _one_line_error(capsys, code, "generator.lora='/nonexistent': no pytorch_lora_weights.safetensors there")
    code = main(["synth", "--config", str(REPO_ROOT / "recipes/cac/synth_tiny.yaml"), "--out", str(tmp_path / "s"), "height=100000"])
    _one_line_error(capsys, code, "height and width must be at most 4096")


def test_an_empty_manifest_and_a_prompt_that_is_not_text(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    code = main(["score", "--config", str(REPO_ROOT / "recipes/score/unified_reward_tiny.yaml"), "--out", str(tmp_path / "o"), f"videos={tmp_path / 'empty.jsonl'}", "synth_videos=0"])
    _one_line_error(capsys, code, "the manifest holds no videos")
    (tmp_path / "v.jsonl").write_text(json.dumps({"video": "clip.mp4", "prompt": ["a", "list"]}) + "\n")
    code = main(["score", "--config", str(REPO_ROOT / "recipes/score/unified_reward_tiny.yaml"), "--out", str(tmp_path / "o"), f"videos={tmp_path / 'v.jsonl'}", "synth_videos=0"])
    _one_line_error(capsys, code, "'prompt' must be a string")


def test_a_reward_called_with_a_prompt_that_is_not_text():
    from cac_align.rewards import build_reward

    reward = build_reward({"name": "brightness"})
    with pytest.raises(ValueError, match="prompt 1 must be a string"):
        reward([[[[[0.5]]]], [[[[0.5]]]]], ["a cat", 42])


def test_a_recipe_run_from_elsewhere_says_where_relative_paths_were_looked_for(tmp_path, monkeypatch, capsys):
    # a shipped recipe runs from any folder now (tests/test_recipes_by_name.py); a copy whose own
    # relative path is missing from the current folder says where it was looked for
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text((REPO_ROOT / "recipes/score/cac_demo.yaml").read_text().replace("synth: recipes/synth/default.yaml", "synth: scenes/default.yaml"))
    code = main(["score", "--config", str(recipe), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, code, "synth='scenes/default.yaml'", f"resolved from the current folder, {tmp_path}",
                    "a path under recipes/ from the shipped recipes")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["eval", "bench", "annotations=a.jsonl", "predictions={cac:outputs/score_demo/results.jsonl}"],
         "cac-align eval-bench: error: command line: 'predictions={cac:outputs/score_demo/results.jsonl}' reads "
         "'cac:outputs/score_demo/results.jsonl' as a name with no value; put a space after the colon (and quote it): "
         "'predictions={cac: outputs/score_demo/results.jsonl}'"),
        (["train-cac", "--config", "cac/stage1_tiny", "data.splits={stage1:1.0,stage2:0.0,stage3:0.0,eval:0.0}"],
         "cac-align train-cac: error: cac/stage1_tiny (command-line override): 'data.splits={stage1:1.0,stage2:0.0,stage3:0.0,eval:0.0}' "
         "reads 'stage1:1.0' as a name with no value; put a space after the colon (and quote it): "
         "'data.splits={stage1: 1.0, stage2: 0.0, stage3: 0.0, eval: 0.0}'"),
        # one value where a mapping goes: the example the empty case gives, with the user's value
        (["eval", "bench", "annotations=a.jsonl", "predictions=results.jsonl"],
         "cac-align eval-bench: error: command line: key 'predictions' takes a mapping of names to values, not "
         "'results.jsonl': write 'predictions={cac: results.jsonl}' (quoted, a space after the colon)"),
        (["eval", "bench", "annotations=a.jsonl"],
         "cac-align eval-bench: error: command line: predictions is empty: give at least one system, e.g. "
         "'predictions={cac: runs/score/results.jsonl}'"),
        # a typo inside the reward section, typed on the command line, as a top-level one is labelled
        (["score", "--config", "score/cac_demo", "reward.modle.name=x"],
         "cac-align score: error: score/cac_demo (command-line override): reward: unknown key 'modle'; did you mean 'model'? "
         "(known keys here: model, options, source_fps)"),
    ],
)
def test_a_bad_value_is_blamed_on_where_it_was_written_with_the_fix(argv, expected, capsys):
    code = main(argv)
    assert code == 2 and capsys.readouterr().err == expected + "\n"  # one line, exactly


def test_the_same_typo_in_a_recipe_is_the_recipes(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text((REPO_ROOT / "recipes/score/cac_demo.yaml").read_text().replace("  model:", "  modle:", 1))
    assert "modle:" in recipe.read_text()
    code = main(["score", "--config", str(recipe), f"out_dir={tmp_path / 'o'}"])
    assert code == 2 and capsys.readouterr().err == (
        f"cac-align score: error: {recipe}: reward: unknown key 'modle'; did you mean 'model'? (known keys here: model, options, source_fps)\n"
    )


def test_a_missing_file_without_a_recipe_says_nothing_of_recipes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["eval", "bench", "annotations=a.jsonl", "predictions={cac: r.jsonl}", f"out_dir={tmp_path / 'o'}"])
    assert code == 2 and capsys.readouterr().err == (
        f"cac-align eval-bench: error: annotations file a.jsonl does not exist (a relative path is resolved from the "
        f"current folder, {tmp_path}: run from the folder that holds it, or give an absolute path)\n"
    )


@pytest.mark.parametrize(
    "job, recipe",
    [("bon", "recipes/align/bon_tiny.yaml"), ("flow-grpo", "recipes/align/flow_grpo_tiny.yaml"), ("nft", "recipes/align/nft_tiny.yaml")],
)
def test_a_prompts_file_that_is_not_utf8_is_named_with_its_line_and_byte(job, recipe, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a cat on a sofa\na café at night\n".encode("latin-1"))  # é is byte 0xe9 in Latin-1, the 6th of its line
    code = main([job, "--config", str(REPO_ROOT / recipe), "--out", str(tmp_path / "o"), f"prompts={prompts}"])
    _one_line_error(capsys, code, f"{prompts}: line 2 is not UTF-8 (byte 0xe9 at byte 6 of the line); save the file as UTF-8")


@pytest.mark.parametrize(
    "job, recipe",
    [("bon", "recipes/align/bon_tiny.yaml"), ("flow-grpo", "recipes/align/flow_grpo_tiny.yaml"), ("nft", "recipes/align/nft_tiny.yaml")],
)
def test_a_job_that_generates_refuses_scores_by_name_prompts(job, recipe, tmp_path, capsys):
    """Issue #105: bon generated from "zeta<TAB>a zeta prompt", the name and the tab sent to the generator as text."""
    prompts = tmp_path / "bt.txt"
    prompts.write_text("zeta\ta zeta prompt\nalpha\tan alpha prompt\n")
    code = main([job, "--config", str(REPO_ROOT / recipe), "--out", str(tmp_path / "o"), f"prompts={prompts}"])
    _one_line_error(capsys, code, f"{prompts}: line 1 has a tab ('zeta'<TAB>'a zeta prompt'): that is score's by-name format",
                    "this job generates from prompts, one a line")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_refusal_is_one_line_in_torchruns_error_file_and_a_crash_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """Issue #105: under torchrun a one-line refusal was written to the error file with our traceback, which torchrun's
    summary prints as the failure's "traceback". In process: the file torchrun gives a worker (TORCHELASTIC_ERROR_FILE)."""
    import json

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    code = main(["flow-grpo", "--config", str(REPO_ROOT / "recipes/align/flow_grpo_tiny.yaml"), f"out_dir={a_file}"])
    line = f"cac-align flow-grpo: error: out_dir='{a_file}' is a file, not a folder; choose another out_dir"
    assert code == 2 and capsys.readouterr().err.strip() == line
    written = json.loads(error_file.read_text())["message"]
    assert written["message"] == line and written["extraInfo"]["py_callstack"] == line  # what the summary prints
    assert int(written["extraInfo"]["timestamp"]) > 0  # torchrun reads it to order the failures


@pytest.mark.slow  # a torchrun launch (~7 s)
def test_torchruns_summary_names_the_root_cause_in_the_jobs_one_line(tmp_path):
    """A job that ends with an exit status under torchrun writes its reason where torchrun reads a
    failure's root cause: the summary names it (it showed a blank "Root Cause" before), in the one line the job
    printed (it showed our traceback before, issue #105), and so does the agent's own error file."""
    import json
    import os
    import subprocess
    import sys

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    agent_file = tmp_path / "agent_error.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "cac_align.cli", "flow-grpo",
                           "--config", str(REPO_ROOT / "recipes/align/flow_grpo_tiny.yaml"), f"out_dir={a_file}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "TORCHELASTIC_ERROR_FILE": str(agent_file)})
    assert done.returncode != 0
    summary = done.stderr[done.stderr.index("Root Cause (first observed failure)"):]
    line = f"cac-align flow-grpo: error: out_dir='{a_file}' is a file, not a folder; choose another out_dir"
    assert "error_file: <N/A>" not in summary and f"traceback : {line}\n" in summary, summary
    # no frame of ours anywhere (torchrun's agent still prints its own traceback of ChildFailedError, torch's frames only)
    assert not [row for row in done.stderr.splitlines() if row.strip().startswith("File ") and "cac_align" in row], done.stderr[-3000:]
    assert json.loads(agent_file.read_text())["message"]["extraInfo"]["py_callstack"] == line


# One bad value for each registered reward (issue #105, item 5): the error a reward raises as it is built
# (its builder's or constructor's ValueError) reaches the user as one line, whichever reward raises it, as
# the errors found when the recipe loads do. A reward added to the registry needs its row here.
_TINY_QWEN3 = {"name": "tiny-random:qwen3_vl", "dtype": "float32", "device": "cpu"}
_TINY_QWEN25 = {"name": "tiny-random:qwen2_5_vl", "dtype": "float32", "device": "cpu"}
_NO_SUCH_TINY = "the random VLMs here are"
BAD_REWARDS = {
    "audiobox": ({"name": "audiobox", "weights": [1.0]}, "weights: one per axis"),
    "brightness": ({"name": "brightness", "source_fps": "fast"}, "reward: wrong type for key 'source_fps'"),
    "cac": ({"name": "cac", "model": {**_TINY_QWEN3, "name": "tiny-random:qwen9"}}, _NO_SUCH_TINY),
    "clap": ({"name": "clap", "model": "/no/such/clap"}, "reward.model='/no/such/clap': no such directory"),
    "colour": ({"name": "colour", "channel": "purple"}, "channel must be one of ('red', 'green', 'blue')"),
    # built: two components of one name (the combined reward's constructor)
    "combined": ({"name": "combined", "components": [{"name": "brightness"}, {"name": "brightness"}]},
                 "reward: component names must differ, got ['brightness', 'brightness']"),
    "cosmos_reason": ({"name": "cosmos_reason", "model": {**_TINY_QWEN3, "name": "tiny-random:qwen9"}}, _NO_SUCH_TINY),
    "loudness": ({"name": "loudness", "source_fps": "fast"}, "reward: wrong type for key 'source_fps'"),
    "skyra": ({"name": "skyra", "model": {**_TINY_QWEN25, "name": "tiny-random:qwen9"}}, _NO_SUCH_TINY),
    "spot_brightness": ({"name": "spot_brightness", "box": [0, 0, 500]}, "box must be [x0, y0, x1, y1]"),
    "sync": ({"name": "sync", "source_root": "/no/such/checkout", "checkpoint": "/no/such/synchformer.safetensors"},
             "reward.source_root='/no/such/checkout': no "),
    "toy_sync": ({"name": "toy_sync", "window_s": [2, 1]}, "window_s is [start, end) with 0 <= start < end"),
    "unified_reward": ({"name": "unified_reward", "model": {**_TINY_QWEN25, "name": "tiny-random:qwen9"}}, _NO_SUCH_TINY),
    "unified_reward_flex": ({"name": "unified_reward_flex", "model": {**_TINY_QWEN3, "name": "tiny-random:qwen9"}}, _NO_SUCH_TINY),
    "unified_reward_think": ({"name": "unified_reward_think", "model": {**_TINY_QWEN3, "name": "tiny-random:qwen9"}}, _NO_SUCH_TINY),
    "ur_cac": ({"name": "ur_cac", "unified_reward": {"model": _TINY_QWEN25}, "cac": {"model": {**_TINY_QWEN3, "name": "tiny-random:qwen9"}}},
               "reward.cac.model.name='tiny-random:qwen9'"),
    "video_reward": ({"name": "video_reward", "model": {"name": "/no/such/video_reward", "device": "cpu"}}, "no such directory"),
    "videoscore2": ({"name": "videoscore2", "model": {**_TINY_QWEN25, "name": "tiny-random:qwen9"}}, _NO_SUCH_TINY),
    # built: a size other than the model's crop, and a context that is not a whole number of tubelets (its constructor)
    "wm_surprise": ({"name": "wm_surprise", "model": "tiny-random:vjepa2", "device": "cpu", "window": 4, "context": 2, "size": 64},
                    "reward: size=64: V-JEPA 2 reads frames of its crop_size (32) only"),
    "wm_surprise context": ({"name": "wm_surprise", "model": "tiny-random:vjepa2", "device": "cpu", "window": 4, "context": 3},
                            "reward: window (4) and context (3) must be multiples of the model's tubelet_size (2)"),
}


def test_every_registered_reward_has_a_bad_value_below():
    from cac_align.rewards.registry import reward_names

    assert sorted({section["name"] for section, _ in BAD_REWARDS.values()}) == reward_names()


@pytest.mark.parametrize("case", sorted(BAD_REWARDS))
def test_a_rewards_bad_value_is_one_line_whichever_reward_raises_it(case, tmp_path, capsys):
    import yaml

    section, expected = BAD_REWARDS[case]
    recipe = tmp_path / "score.yaml"
    recipe.write_text(yaml.safe_dump({"job": "score", "out_dir": str(tmp_path / "out"), "synth_videos": 1, "reward": section}))
    _one_line_error(capsys, main(["score", "--config", str(recipe)]), expected)
