"""`optimizer`: flow-grpo's and nft's LoRA optimizer (AdamW by default, or plain SGD; issue #92)."""

from __future__ import annotations

import json

import pytest
import torch

from cac_align.config import RecipeError, load_config
from cac_align.jobs.flow_grpo import FlowGrpoConfig, _run_folder, build_optimizer
from cac_align.jobs.nft import NftConfig
from cac_align.run.folder import MANIFEST
from conftest import REPO_ROOT

RECIPES = {"flow-grpo": (FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml"),
           "nft": (NftConfig, REPO_ROOT / "recipes/align/nft_tiny.yaml")}


def _config(job, *overrides):
    cls, recipe = RECIPES[job]
    return load_config(cls, recipe, list(overrides), job=job)


@pytest.mark.parametrize("job", ["flow-grpo", "nft"])
def test_sgd_builds_torch_sgd_with_the_rate_and_decay_and_adamw_stays_the_default(job):
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    sgd = build_optimizer(_config(job, "optimizer=sgd", "learning_rate=0.5", "weight_decay=0.1"), [weight])
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["momentum"] == 0 and sgd.param_groups[0]["weight_decay"] == 0.1
    weight.grad = torch.tensor([2.0, 4.0])
    sgd.step()  # w - lr (g + wd w): 1 - 0.5 (2 + 0.1) = -0.05; -2 - 0.5 (4 - 0.2) = -3.9
    assert weight.detach().tolist() == pytest.approx([-0.05, -3.9], abs=1e-6)
    adamw = build_optimizer(_config(job, "adam_beta2=0.95", "adam_eps=1e-6"), [torch.nn.Parameter(torch.zeros(2))])
    assert type(adamw) is torch.optim.AdamW
    assert adamw.param_groups[0]["betas"] == (0.9, 0.95) and adamw.param_groups[0]["eps"] == 1e-6


def test_a_misspelt_optimizer_is_refused_in_one_line():
    with pytest.raises((RecipeError, ValueError)) as raised:
        _config("nft", "optimizer=sdg")
    assert "optimizer must be one of ('adamw', 'sgd'), got 'sdg'" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_default_optimizer_leaves_the_fingerprint_as_before_and_sgd_is_another_run(tmp_path):
    _run_folder(_config("flow-grpo", f"out_dir={tmp_path / 'adamw'}"), ["a prompt"]).start()
    # at its default the key is left out, as before it existed: older run folders still resume
    assert "optimizer" not in json.loads((tmp_path / "adamw" / MANIFEST).read_text())["fingerprint"]
    _run_folder(_config("flow-grpo", f"out_dir={tmp_path / 'sgd'}", "optimizer=sgd"), ["a prompt"]).start()
    assert json.loads((tmp_path / "sgd" / MANIFEST).read_text())["fingerprint"]["optimizer"] == "sgd"
    with pytest.raises(RecipeError, match="differs in: optimizer"):
        _run_folder(_config("flow-grpo", f"out_dir={tmp_path / 'adamw'}", "optimizer=sgd", "resume=true"), ["a prompt"])
