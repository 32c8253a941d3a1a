"""`cac-align nft`: the tiny recipe on each family's layout (the LoRA trains, the base stays), the
old policy, exact resume, settings it refuses."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from cac_align.cli import main
from cac_align.config import load_config
from cac_align.gen.generator import build_generator
from cac_align.jobs.nft import NftConfig, run
from conftest import REPO_ROOT, tiny_recipes_by_family

RECIPES = REPO_ROOT / "recipes/align"


def _load(out, *overrides, recipe="nft_tiny.yaml"):
    return load_config(NftConfig, RECIPES / recipe, [f"out_dir={out}", "log_with=none", *overrides], job="nft")


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _transformers(pipe):
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


# Every family's tiny nft recipes (found by the family of each recipe's generator, from the one list of
# families): Wan-2.1's in the default suite (6.7 s on 2 cores at load average 3, 2026-11-27), the other
# layouts one step each in the slow suite (.ci/run runs it)
NFT_RECIPES = [recipe for recipes in tiny_recipes_by_family("nft_tiny").values() for recipe in recipes]


@pytest.mark.parametrize("recipe", [r if r == "nft_tiny.yaml" else pytest.param(r, marks=pytest.mark.slow) for r in NFT_RECIPES])
def test_the_tiny_recipe_trains_the_lora_from_an_empty_folder(tmp_path, recipe, capsys):
    # the smallest step that trains: one prompt, two videos, two sampling steps, one of them trained
    config = _load(tmp_path / "run", "steps=1", "eval_prompts=null", "checkpoint_every=0", "ema_decay=null", "prompts_per_step=1", "group_size=2",
                   "sample_batch_size=2", "train_batch_size=2", "generator.num_inference_steps=2", "timestep_fraction=0.5", recipe=recipe)
    pipe = build_generator(config.generator)
    before = {f"{i}.{n}": p.detach().clone() for i, m in enumerate(_transformers(pipe)) for n, p in m.named_parameters()}

    run(config, pipe=pipe)

    after = {f"{i}.{n}": p for i, m in enumerate(_transformers(pipe)) for n, p in m.named_parameters()}
    lora_b = [n for n in after if "lora_B" in n]
    assert lora_b and all(not torch.equal(after[n].detach(), torch.zeros_like(after[n])) for n in lora_b)  # B starts at 0: every one moved
    for name, value in before.items():  # the base (peft renames it base_layer.*) is frozen and unchanged
        moved = after.get(name, after.get(name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")))
        assert moved is not None and torch.equal(moved.detach(), value) and not moved.requires_grad, name
    (row,) = _metrics(tmp_path / "run")
    for key in ("train/policy_loss", "train/unweighted_policy_loss", "train/kl_div_loss", "train/r_mean", "train/grad_norm"):
        assert math.isfinite(row[key]), key
    assert row["train/grad_norm"] > 0 and row["train/old_decay"] == pytest.approx(0.001)  # decay_type 1 after one update
    assert row["train/old_deviate"] == 0.0  # the first step's old policy is the policy itself
    assert (tmp_path / "run/lora/pytorch_lora_weights.safetensors").is_file()
    # the end of the run, in nft's name: the reward as metrics.jsonl has it, and the picture
    said = capsys.readouterr().out
    assert f"nft: reward {row['reward/mean']:.4f} (step 1) -> {row['reward/mean']:.4f} (step 1)" in said and "flow-grpo" not in said
    assert (tmp_path / "run/reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # three runs of the tiny recipe (6 steps in all; not measured quiet): `pytest -m slow`, which .ci/run runs
def test_resume_continues_exactly(tmp_path, caplog):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # the uninterrupted run through the command line, as a user runs it
    assert main(["nft", "--config", str(RECIPES / "nft_tiny.yaml"), f"out_dir={whole}", "log_with=none", "eval_prompts=null", "checkpoint_every=1"]) == 0
    run(_load(cut, "eval_prompts=null", "checkpoint_every=1", "steps=2"))
    with caplog.at_level(logging.INFO, logger="cac_align.jobs.flow_grpo"):
        run(_load(cut, "eval_prompts=null", "checkpoint_every=1", "steps=3", "resume=true"))
    assert "nft: resuming from " in caplog.text and "flow-grpo" not in caplog.text  # the job's own name in its lines
    assert _metrics(cut)[2] == {**_metrics(whole)[2], **{k: v for k, v in _metrics(cut)[2].items() if k.startswith("time/")}}
    for name in ("model.safetensors", "old_policy.safetensors", "ema.safetensors"):
        a, b = load_file(str(whole / "checkpoints/step_000003" / name)), load_file(str(cut / "checkpoints/step_000003" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the old policy is not the policy: it trails it by the decay (decay_type 1: 0.001 per update)
    model, old = load_file(str(whole / "checkpoints/step_000003/model.safetensors")), load_file(str(whole / "checkpoints/step_000003/old_policy.safetensors"))
    assert any(not torch.equal(model[k], old[k]) for k in model)


def test_flow_grpo_settings_are_refused(tmp_path):
    for override, word in (("noise_level=0.7", "noise_level"), ("clip_range=0.2", "clip_range"), ("nft_beta=0", "nft_beta"),
                           ("adv_mode=positive", "adv_mode"), ("decay_type=5", "decay_type")):
        with pytest.raises(Exception, match=word):
            _load(tmp_path, override)


@pytest.mark.slow  # one step of the 64 x 64 miniature: `pytest -m slow`, which .ci/run runs
def test_localized_nft_weights_the_x0_errors_by_the_evidence(tmp_path):
    # flow-grpo's localized miniature (spot_brightness reports a box and a window) under nft: the maps
    # reach the loss in the latents' shape (a mismatch raises in adaptive_x0_error)
    overrides = [f"out_dir={tmp_path / 'run'}", "steps=1", "noise_level=0", "clip_range=0.0001", "nft_beta=0.1", "timestep_fraction=0.5",
                 "log_with=none", "checkpoint_every=0", "ema_decay=null"]
    run(load_config(NftConfig, RECIPES / "flow_grpo_tiny_localized.yaml", overrides))
    (row,) = _metrics(tmp_path / "run")
    assert row["localize/localized_fraction"] > 0 and row["localize/evidence_missing"] == 0
    assert math.isfinite(row["train/policy_loss"]) and row["train/grad_norm"] > 0
