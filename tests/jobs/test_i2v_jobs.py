"""Image-to-video in the generator jobs, offline on the tiny pipelines: prompt files whose lines give
an image (read and checked before any model loads), Best-of-N writing each candidate beside its
source image, Flow-GRPO training on the generated frames only, DPO pairs that keep their image.
The samplers' equality with diffusers' image-to-video pipelines is in tests/gen/test_wan_i2v.py and
tests/gen/test_ltx2_i2v.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cac_align.config import RecipeError, load_config
from cac_align.run.input_files import read_prompt_rows, read_prompts
import forked_launch
from conftest import REPO_ROOT, free_port

RECIPES = REPO_ROOT / "recipes/align"


def _brightness():
    """A model-free reward (cac_align.rewards.toy): these tests are about the images, not the judge."""
    from cac_align.rewards.registry import build_reward

    return build_reward({"name": "brightness"}, "reward")


def _image(path, color=(200, 40, 40), size=(48, 40)):
    Image.new("RGB", size, color).save(path)
    return path


# ---------------------------------------------------------------------------------------
# Prompt files with images
# ---------------------------------------------------------------------------------------
def test_a_prompt_line_gives_an_image_relative_to_its_file(tmp_path):
    (tmp_path / "sub").mkdir()
    first, last = _image(tmp_path / "sub/a.png"), _image(tmp_path / "b.png", (0, 0, 200))
    file = tmp_path / "p.jsonl"
    file.write_text(json.dumps({"prompt": " a ball ", "image": "sub/a.png"}) + "\n\n"
                    + json.dumps({"prompt": "a cup", "image": str(last), "last_image": "sub/a.png"}) + "\n")
    rows = read_prompt_rows(file)
    assert [r.prompt for r in rows] == ["a ball", "a cup"]
    assert rows[0].image.image == str(first.resolve()) and rows[0].image.last_image is None
    assert rows[1].image.image == str(last.resolve()) and rows[1].image.last_image == str(first.resolve())
    # the content hash: another image under the same name is another run
    before = rows[0].image.sha256
    _image(tmp_path / "sub/a.png", (10, 10, 10))
    assert read_prompt_rows(file)[0].image.sha256 != before
    # a text file stays text, and a text-only job refuses a line with an image
    text = tmp_path / "p.txt"
    text.write_text("a ball\n")
    assert read_prompt_rows(text)[0].image is None
    with pytest.raises(RecipeError, match="prompt 1 gives an image"):
        read_prompts(file)


@pytest.mark.parametrize("line, message", [
    ({"prompt": "a", "image": "absent.png"}, r"line 1: image 'absent.png': no such file"),
    ({"prompt": "a", "image": "notes.png"}, r"line 1: image 'notes.png' cannot be read as an image"),
    ({"prompt": "a", "last_image": "a.png"}, r"line 1: a 'last_image' needs an 'image'"),
    ({"prompt": "a", "image": 3}, r"line 1: 'image' must be a path"),
    ({"prompt": "a", "imgae": "a.png"}, r"line 1: unknown key 'imgae': did you mean 'image'\?"),
    ({"prompt": "a", "image": "a.png", "last_img": "a.png"}, r"line 1: unknown key 'last_img': did you mean 'last_image'\?"),
    ({"prompt": "a", "image_path": "a.png"}, r"line 1: unknown key 'image_path'"),
])
def test_a_bad_image_line_is_a_one_line_error_naming_it(tmp_path, line, message):
    _image(tmp_path / "a.png")
    (tmp_path / "notes.png").write_text("not an image")
    file = tmp_path / "p.jsonl"
    file.write_text(json.dumps(line) + "\n")
    with pytest.raises(RecipeError, match=message) as caught:
        read_prompt_rows(file)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------
# Best-of-N
# ---------------------------------------------------------------------------------------
def _bon(out, *overrides):
    from cac_align.jobs.best_of_n import BonConfig

    return load_config(BonConfig, RECIPES / "bon_tiny_i2v.yaml", [f"out_dir={out}", *overrides], job="bon")


def test_best_of_n_animates_each_prompts_image_and_writes_it_beside_the_candidates(tmp_path):
    from cac_align.gen.generator import PipelineGenerator, build_generator, generate_videos
    from cac_align.jobs.best_of_n import frames_sha256, run

    out = tmp_path / "run"
    config = _bon(out, "n=2")
    pipe = build_generator(config.generator)
    run(config, reward=_brightness(), generator=PipelineGenerator(pipe))
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["image"]) for r in rows] == [(0, "candidates/p00000_image.png")] * 2 + [(1, "candidates/p00001_image.png")] * 2
    # the copies are the source images, byte for byte
    assert (out / "candidates/p00000_image.png").read_bytes() == (RECIPES / "image_red_ball.png").read_bytes()
    assert (out / "candidates/p00001_image.png").read_bytes() == (RECIPES / "image_blue_cup.png").read_bytes()
    # each candidate is the image-to-video pipeline's own video for its image and seed ...
    images = [row.image for row in read_prompt_rows(config.prompts)]
    again = generate_videos(pipe, config.generator, [rows[0]["prompt"]] * 2, [rows[0]["seed"], rows[1]["seed"]], [images[0]] * 2).frames
    assert [frames_sha256(v) for v in again] == [rows[0]["frames_sha256"], rows[1]["frames_sha256"]]
    # ... and not the text-to-video one (the image conditions it)
    text_only = generate_videos(pipe, config.generator, [rows[0]["prompt"]], [rows[0]["seed"]]).frames
    assert frames_sha256(text_only[0]) != rows[0]["frames_sha256"]
    # the chosen videos sit beside their images, which the index and the summary name
    index = [json.loads(line) for line in (out / "chosen/prompts.jsonl").read_text().splitlines()]
    for entry in index:
        assert (out / "chosen" / entry["video"]).is_file() and (out / "chosen" / entry["image"]).is_file()
        assert f"![image](chosen/{entry['image']}) | [{entry['video']}](chosen/{entry['video']})" in (out / "summary.md").read_text()
    # the images are part of what the run is: another image under the same name is another run
    from cac_align.jobs.best_of_n import _RUN_ONLY_KEYS
    from cac_align.run.folder import run_fingerprint

    prompts = tmp_path / "p.jsonl"
    shutil.copy(RECIPES / "prompts_tiny_i2v.jsonl", prompts)
    for name in ("image_red_ball.png", "image_blue_cup.png"):
        shutil.copy(RECIPES / name, tmp_path / name)
    before = run_fingerprint(config, ["x"], _RUN_ONLY_KEYS, [r.image for r in read_prompt_rows(prompts)])
    _image(tmp_path / "image_red_ball.png", (0, 0, 0), (64, 64))
    after = run_fingerprint(config, ["x"], _RUN_ONLY_KEYS, [r.image for r in read_prompt_rows(prompts)])
    assert before["images_sha256"] != after["images_sha256"] and {k: v for k, v in before.items() if k != "images_sha256"} == {
        k: v for k, v in after.items() if k != "images_sha256"}
    assert "images_sha256" not in run_fingerprint(config, ["x"], _RUN_ONLY_KEYS, [None])  # text-only runs keep their fingerprint


def test_an_image_for_a_text_only_model_is_refused_before_anything_loads(tmp_path):
    from cac_align.jobs.best_of_n import BonConfig, run

    config = load_config(BonConfig, RECIPES / "bon_tiny.yaml", [f"out_dir={tmp_path / 'run'}", f"prompts={RECIPES / 'prompts_tiny_i2v.jsonl'}"],
                         job="bon")
    with pytest.raises(RecipeError, match=r"prompt 1 gives an image, and Wan-2.1 \(generator.name\) is a text-to-video model") as caught:
        run(config)
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()  # refused before the run folder or a model


def test_the_synthetic_generator_refuses_images(tmp_path):
    from cac_align.jobs.best_of_n import BonConfig, run

    config = load_config(BonConfig, RECIPES / "bon_demo.yaml", [f"out_dir={tmp_path / 'run'}", f"prompts={RECIPES / 'prompts_tiny_i2v.jsonl'}"],
                         job="bon")
    with pytest.raises(RecipeError, match="renders from text alone"):
        run(config)


# ---------------------------------------------------------------------------------------
# Flow-GRPO
# ---------------------------------------------------------------------------------------
def _flow(out, *overrides, recipe="flow_grpo_tiny_i2v.yaml"):
    from cac_align.jobs.flow_grpo import FlowGrpoConfig

    return load_config(FlowGrpoConfig, RECIPES / recipe, [f"out_dir={out}", "log_with=none", "eval_every=0", "eval_at_start=false", *overrides],
                       job="flow-grpo")


def test_flow_grpo_on_an_image_trains_the_lora_on_the_generated_frames(tmp_path):
    from cac_align.gen.families.wan import build_tiny_wan22_ti2v_pipeline
    from cac_align.jobs.flow_grpo import run

    pipe = build_tiny_wan22_ti2v_pipeline(seed=0)
    base = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    out = tmp_path / "run"
    run(_flow(out, "steps=2", "checkpoint_every=0", "eval_every=2", "eval_videos=2"), reward=_brightness(), pipe=pipe)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["train/grad_norm"] > 0 for r in rows)
    assert rows[0]["train/ratio_mean"] == 1.0  # one update a step: the first inner step is on-policy, exactly
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert lora and any(int(torch.count_nonzero(p)) for p in lora.values())
    frozen = {n.replace(".base_layer", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" not in n}
    assert set(frozen) == set(base) and all(torch.equal(frozen[n], base[n]) for n in base)
    assert sorted(p.name for p in (out / "eval/step_000002").glob("*.mp4")) == ["00000_a-red-ball-rolling-in-the-park.mp4",
                                                                                 "00001_a-person-holding-a-blue-cup.mp4"]


def test_localized_credit_on_an_image_run_covers_the_generated_latents(tmp_path):
    """The judge's window and box map onto the latent grid, then the image's frame is dropped: the
    maps and the per-position log-densities (generated frames only) line up, and the step trains."""
    from cac_align.jobs.flow_grpo import run
    from cac_align.rewards.registry import build_reward

    reward = build_reward({"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.1, 0.3]}, "reward")
    out = tmp_path / "run"
    run(_flow(out, "steps=1", "checkpoint_every=0", "advantage.localize.enabled=true", "advantage.localize.apply_to=all"), reward=reward)
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["localize/localized_fraction"] > 0 and row["train/grad_norm"] > 0


def test_flow_grpo_refuses_text_alone_for_an_image_model_and_context_parallel_with_images(tmp_path):
    from cac_align.jobs.flow_grpo import run

    with pytest.raises(RecipeError, match="context-parallel"):
        run(_flow(tmp_path / "a", "parallel.context_parallel=2"))
    with pytest.raises(RecipeError, match="prompt 1 gives an image, and Wan-2.1"):
        run(_flow(tmp_path / "b", "generator.name=tiny-random:wan", "generator.height=32", "generator.width=32"))


# ---------------------------------------------------------------------------------------
# DPO from an image-to-video Best-of-N run
# ---------------------------------------------------------------------------------------
def test_dpo_pairs_keep_their_image_and_train_on_the_generated_frames(tmp_path):
    from safetensors.torch import load_file

    from cac_align.jobs.dpo_pairs import PairError, read_pairs
    from cac_align.jobs.best_of_n import run as bon
    from cac_align.jobs.dpo import DpoConfig, run

    bon(_bon(tmp_path / "bon", "n=3"), reward=_brightness())
    pairs = read_pairs([str(tmp_path / "bon")], 32, 4).pairs
    assert len(pairs) == 2 and [p.image.image for p in pairs] == [str(tmp_path / f"bon/candidates/p0000{i}_image.png") for i in (0, 1)]
    out = tmp_path / "dpo"
    config = load_config(DpoConfig, RECIPES / "dpo_tiny_i2v.yaml", [f"out_dir={out}", f"pairs=[{tmp_path / 'bon'}]", "log_with=none",
                                                                   "steps=2", "checkpoint_every=0"], job="dpo")
    run(config)
    listed = json.loads((out / "pairs.json").read_text())["pairs"]
    assert [p["image"] for p in listed] == [p.image.image for p in pairs]
    cached = load_file(str(out / "latents/pair_00000.safetensors"))
    # 9 frames are 3 latent frames on the TI2V's VAE: the first is the image's (in the conditioning),
    # the pair's winner and loser keep the 2 generated ones, and so does the mask
    assert cached["fixed"].shape == (48, 1, 4, 4) and cached["winner"].shape == cached["loser"].shape == (48, 2, 4, 4)
    assert cached["mask"].shape == (2, 4, 4)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["train/loss"]) and r["train/grad_norm"] > 0 for r in rows)
    # a pair whose two candidates animate different images is no pair
    manifest = tmp_path / "bon/candidates.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    first = [r for r in lines if r["prompt_index"] == 0]
    worst = min(first, key=lambda r: r["score"])
    for row in first:
        if row is not worst:
            row["image"] = "candidates/p00001_image.png"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(PairError, match="animate different images"):
        read_pairs([str(tmp_path / "bon")], 32, 4)


# ---------------------------------------------------------------------------------------
# Every image-to-video family through the three jobs
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, suffix, extra, file", [
    ("tiny-random:wan21-i2v", "", [], "prompts_tiny_i2v.jsonl"),  # channels + CLIP tokens
    # ~4 s each on 2 cores (2026-11-26) after the first: the slow suite (.ci/run runs it)
    # channels, two experts, a first and a last frame
    pytest.param("tiny-random:wan22-i2v-a14b", "_wan22_a14b", ["lora.experts=both"], "prompts_tiny_flf2v.jsonl", marks=pytest.mark.slow),
    pytest.param("tiny-random:ltx2", "_ltx2", [], "prompts_tiny_i2v.jsonl", marks=pytest.mark.slow),  # a fixed first frame, audio beside
])
def test_each_image_to_video_family_runs_best_of_n_dpo_and_flow_grpo(tmp_path, name, suffix, extra, file):
    """Each family's tiny layout (its own tiny recipes, animating the shipped images): bon writes
    candidates beside their images, dpo trains on their best and worst, flow-grpo trains a step."""
    from cac_align.gen.family import family_of
    from cac_align.jobs.best_of_n import BonConfig
    from cac_align.jobs.best_of_n import run as bon
    from cac_align.jobs.dpo import DpoConfig
    from cac_align.jobs.dpo import run as dpo
    from cac_align.jobs.flow_grpo import run as flow

    prompts = f"prompts={RECIPES / file}"
    config = load_config(BonConfig, RECIPES / f"bon_tiny{suffix}.yaml", [f"out_dir={tmp_path / 'bon'}", f"generator.name={name}", prompts,
                                                                        "n=2"], job="bon")
    bon(config, reward=_brightness())
    rows = [json.loads(line) for line in (tmp_path / "bon/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all((tmp_path / "bon" / r["image"]).is_file() for r in rows)
    last = [r["last_image"] for r in rows if r.get("last_image")]
    assert last == (["candidates/p00000_last_image.png"] * 2 if "flf2v" in file else [])
    assert all((tmp_path / "bon" / path).read_bytes() == (RECIPES / "image_red_ball_later.png").read_bytes() for path in last)
    dpo(load_config(DpoConfig, RECIPES / f"dpo_tiny{suffix}.yaml", [f"out_dir={tmp_path / 'dpo'}", f"pairs=[{tmp_path / 'bon'}]",
                                                                   f"generator.name={name}", "steps=1", "pairs_per_step=2", "batch_size=2",
                                                                   "log_with=none", "checkpoint_every=0", *extra], job="dpo"))
    (row,) = [json.loads(line) for line in (tmp_path / "dpo/metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(row["train/loss"]) and row["train/grad_norm"] > 0
    # sampled and recomputed in batches of one shape: CPU kernels are not batch-size invariant in the
    # last bit (wan21-i2v's time embedding differs by 7e-9 between batches of 4 and 2), so only then is
    # the first inner step's ratio exactly 1 (a row given another row's image or prompt would be far off)
    flow(_flow(tmp_path / "flow", "steps=1", "checkpoint_every=0", f"generator.name={name}", prompts, f"eval_prompts={RECIPES / file}",
               "sample_batch_size=2", "train_batch_size=2", *extra, recipe=f"flow_grpo_tiny{suffix}.yaml"), reward=_brightness())
    (row,) = [json.loads(line) for line in (tmp_path / "flow/metrics.jsonl").read_text().splitlines()]
    assert row["train/ratio_mean"] == 1.0 and row["train/grad_norm"] > 0
    assert family_of(name).image_input == ("optional" if name == "tiny-random:ltx2" else "required")


# ---------------------------------------------------------------------------------------
# Exact resume and two processes, as for text-to-video (slow: `pytest -m slow`, which .ci/run runs)
# ---------------------------------------------------------------------------------------
def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~30 s on 2 cores (2026-11-26)
def test_image_to_video_flow_grpo_resumes_exactly(tmp_path):
    """2 steps, then resume=true to 3 == a straight 3-step run: the LoRA file and every logged
    training number."""
    from cac_align.jobs.flow_grpo import run

    run(_flow(tmp_path / "straight", "steps=3", "checkpoint_every=2"), reward=_brightness())
    run(_flow(tmp_path / "resumed", "steps=2", "checkpoint_every=2"), reward=_brightness())
    run(_flow(tmp_path / "resumed", "steps=3", "checkpoint_every=2", "resume=true"), reward=_brightness())
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    keys = [k for k in straight[-1] if k.startswith(("train/", "reward/"))]
    assert [r["step"] for r in resumed] == [1, 2, 3] and keys
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    name = "pytorch_lora_weights.safetensors"
    assert (tmp_path / "straight/lora" / name).read_bytes() == (tmp_path / "resumed/lora" / name).read_bytes()


@pytest.mark.slow  # two processes, ~60 s on 2 cores (2026-11-26)
def test_image_to_video_on_two_processes_trains_as_one(tmp_path):
    """One step of flow_grpo_tiny_i2v.yaml on two gloo processes (`accelerate launch`) gives the
    LoRA one process trains, and its logged numbers."""
    import os
    import sys

    from safetensors.torch import load_file

    from cac_align.gen.families.wan import build_tiny_wan22_ti2v_pipeline
    from cac_align.jobs.flow_grpo import run

    pipe = build_tiny_wan22_ti2v_pipeline(seed=0)
    run(_flow(tmp_path / "one", "steps=1", "checkpoint_every=0"), pipe=pipe)
    one = {f"transformer.{n}": p.detach() for n, p in pipe.transformer.named_parameters() if p.requires_grad}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(REPO_ROOT / "tests/generator_two_process.py"), str(RECIPES / "flow_grpo_tiny_i2v.yaml"), str(tmp_path / "two")]
    done = forked_launch.accelerate_launch(command, env=env, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"two/rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1) == set(one) and all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    assert any(torch.count_nonzero(v) for n, v in rank0.items() if "lora_B" in n)
    for name, value in one.items():  # as the text-to-video test: 1% of an Adam step
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5)
    (row_two,), (row_one,) = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    for key in ("reward/mean", "train/kl"):
        assert row_two[key] == pytest.approx(row_one[key], rel=1e-4, abs=1e-9), key
    assert row_two["train/grad_norm"] == pytest.approx(row_one["train/grad_norm"], rel=1e-3)
