"""The Skyra recipes (`*_skyra*.yaml`): localized Flow-GRPO, repair and DPO pairs with Skyra's
evidence, for users with public weights today (no CaC checkpoint is published).

Each tiny recipe runs here on tiny Skyra (Skyra's architecture, a random Qwen2.5-VL). A random
model writes no ``<answer>`` tag, so the tests make it write one Fake verdict with one tagged
artifact (conftest's ForceAnswer): the probabilities stay the model's own, and the window and box
are known, so where the evidence lands can be checked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from cac_align.cli import main
from cac_align.jobs.dpo_pairs import latent_mask, read_pairs
from conftest import REPO_ROOT, ForceAnswer

ALIGN = REPO_ROOT / "recipes/align"
# one artifact: the top-left quarter of the frame (fractions, as Skyra may write them) from 0.25 s on
ANSWER = ("<think>The hand <type>Abnormal Human Body Structure</type> in <t>[0.25, 0.5]</t> at "
          "<bbox>[0.0, 0.0, 0.5, 0.5]</bbox> melts.</think><answer>Fake</answer>")


@pytest.fixture
def skyra_writes_an_artifact(monkeypatch):
    """Every Skyra built from a recipe writes ANSWER (its P(Real) is still its own logits')."""
    from cac_align.rewards import skyra

    original = skyra.build

    def forced(*args, **kwargs):
        reward = original(*args, **kwargs)
        tokenizer = reward.backend.processor.tokenizer
        reward.backend.generate_kwargs = {"logits_processor": [ForceAnswer(tokenizer.encode(ANSWER), tokenizer.eos_token_id)]}
        return reward

    monkeypatch.setattr(skyra, "build", forced)


def test_the_real_recipes_name_skyra_and_localize_with_it(hub_cache):
    from cac_align.config import read_recipe_file

    flow = read_recipe_file(ALIGN / "flow_grpo_wan_ur_skyra_localized.yaml")
    assert flow["advantage"]["localize"]["enabled"] and flow["advantage"]["localize"]["source"] == "skyra"
    assert [c["name"] for c in flow["reward"]["components"]] == ["unified_reward", "skyra"]
    assert flow["reward"]["components"][1]["model"]["name"] == "JoeLeelyf/Skyra-SFT"
    repair = read_recipe_file(ALIGN / "repair_wan_vace_skyra.yaml")
    assert repair["reward"]["name"] == "skyra" and repair["reward"]["model"]["name"] == "JoeLeelyf/Skyra-SFT"
    assert read_recipe_file(ALIGN / "dpo_wan_localdpo_skyra.yaml")["pairs"] == ["runs/repair_skyra"]
    for name in ("flow_grpo_wan_ur_skyra_localized", "repair_wan_vace_skyra", "dpo_wan_localdpo_skyra"):
        assert main(["check-recipe", str(ALIGN / f"{name}.yaml")]) == 0  # valid, and planned from the configs shipped with cac-align


@pytest.mark.slow  # ~6 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_localized_flow_grpo_trains_on_skyras_window_and_box(skyra_writes_an_artifact, tmp_path):
    out = tmp_path / "flow"
    assert main(["flow-grpo", "--config", str(ALIGN / "flow_grpo_tiny_skyra.yaml"), "--out", str(out), "steps=2", "checkpoint_every=0", "ema_decay=null"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["reward/valid_fraction"] == 1.0 for r in rows)
    assert all(0.0 < r["reward/mean"] < 1.0 for r in rows)  # P(Real) / (P(Real) + P(Fake)), the model's own
    # every video is Fake with its artifact: each blamed video's advantage sits on the region, and
    # every one of them had its evidence
    assert all(r["localize/evidence_missing"] == 0 and r["localize/map_inside_mass"] == 1.0 for r in rows)
    assert all(r["localize/localized_fraction"] > 0 for r in rows)
    lora = load_file(str(out / "lora/pytorch_lora_weights.safetensors"))
    assert any(float(w.abs().sum()) > 0 for n, w in lora.items() if ".lora.up." in n)  # trained


def test_a_random_skyra_unforced_stops_the_run_with_its_reason(tmp_path, capsys):
    assert main(["flow-grpo", "--config", str(ALIGN / "flow_grpo_tiny_skyra.yaml"), "--out", str(tmp_path / "flow"), "steps=1"]) == 1
    assert "no valid reward for any sample (no <answer>...</answer> in Skyra's answer)" in capsys.readouterr().err


@pytest.mark.slow  # ~18 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_repair_regenerates_skyras_region_and_dpo_trains_on_the_pairs(skyra_writes_an_artifact, tmp_path):
    repaired = tmp_path / "repair"
    assert main(["repair", "--config", str(ALIGN / "repair_tiny_skyra.yaml"), "--out", str(repaired)]) == 0
    rows = [json.loads(line) for line in (repaired / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["before"]["status"] == "abnormal" for r in rows)
    found = read_pairs([str(repaired)])
    assert len(found.pairs) == sum(r["accepted"] for r in rows) >= 1
    # By hand: Skyra's window [0.25, 0.5) s, widened by the recipe's 0.125 s of context to
    # [0.125, 0.625), on 17 frames at 8 fps is frames 1-4 (frame 5 sits at 0.625 s, outside); its
    # box (the top-left quarter of 64 x 96) is x 0-48, y 0-32. Wan's VAE: latent frame 1 holds
    # frames 1-4; 8 x 8 pixels a latent: rows 0-3, columns 0-5 of 8 x 12.
    first = next(r for r in rows if r["accepted"])  # the first pair's row
    assert first["mask"]["frames"] == [1, 2, 3, 4] and first["mask"]["window_s"] == [0.25, 0.5]
    expected = np.zeros((5, 8, 12), dtype=np.float32)
    expected[1, 0:4, 0:6] = 1.0
    assert np.array_equal(latent_mask(found.pairs[0]), expected)
    out = tmp_path / "dpo"
    n = len(found.pairs)
    assert main(["dpo", "--config", str(ALIGN / "dpo_tiny_skyra.yaml"), "--out", str(out), f"pairs=[{repaired}]",
                 f"pairs_per_step={min(n, 4)}", "batch_size=1", "steps=2", "checkpoint_every=0", "log_with=none"]) == 0
    pairs = json.loads((out / "pairs.json").read_text())["pairs"]
    assert len(pairs) == n and all(p["masked"] and p["source"] == "repair" for p in pairs)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2] and metrics[0]["train/masked_fraction"] == 1.0
