"""`cac-align flow-grpo` with localized credit (advantage.localize): wiring, metrics, resume,
one process = two, and the scalar estimator unchanged when it is off. The map and the estimator
themselves: tests/rl/test_credit.py."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from cac_align.cli import main
from cac_align.config import load_config
from cac_align.gen.families.wan import build_tiny_wan_pipeline
from cac_align.rewards import columns
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
import forked_launch
from conftest import REPO_ROOT, free_port

LOCALIZED = REPO_ROOT / "recipes/align/flow_grpo_tiny_localized.yaml"
BRIGHT = REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml"

# Recorded at commit 97293b9 (before localized credit existed) on this project's CPU machine
# (torch 2.14.1, CPU capability AVX512, one intra-op thread: the thread count changes the order of
# float sums, so the test pins it) with
#   cac-align flow-grpo --config recipes/align/flow_grpo_tiny_brightness.yaml --out OUT steps=2 \
#       log_with=none checkpoint_every=0 ema_decay=null
# run from a checkout of that commit under torch.set_num_threads(1): its two metrics.jsonl lines
# (these keys). With the feature off the loop must reproduce them (within OTHER_CPU, below).
BEFORE = {
    "metrics": [
        {"reward/mean": 0.5837558898704158, "train/loss": 6.05359673500061e-09, "train/policy_loss": 6.05359673500061e-09, "train/kl": 0.0,
         "train/approx_kl": 4.440892098500626e-16, "train/grad_norm": 0.0064770239405334, "train/ratio_mean": 0.9999999962747097},
        {"reward/mean": 0.5836272240377632, "train/loss": 7.543712854385376e-07, "train/policy_loss": -5.587935447692871e-09,
         "train/kl": 1.5188078613448397e-05, "train/approx_kl": 3.774758283725532e-15, "train/grad_norm": 0.007004686165601015,
         "train/ratio_mean": 1.000000011175871},
    ],
}


# Recorded at commit a8eed10 (localized credit as it landed, before confinement and ViPO's
# estimator) on this project's CPU machine (torch 2.14.1, CPU capability AVX2, one intra-op thread)
# with
#   cac-align flow-grpo --config recipes/align/flow_grpo_tiny_localized.yaml --out OUT steps=2 \
#       log_with=none checkpoint_every=0 ema_decay=null
# under torch.set_num_threads(1): with confine 0 and the default estimator the loop must reproduce it.
LOCALIZED_BEFORE = {
    "metrics": [
        {"reward/mean": 0.40006901360804736, "train/loss": -3.5390257835388184e-08, "train/policy_loss": -3.5390257835388184e-08,
         "train/approx_kl": 1.7763568394002505e-15, "train/grad_norm": 0.008349936455488205, "train/ratio_mean": 1.0,
         "localize/localized_fraction": 0.5, "localize/map_inside_mass": 1.0},
        {"reward/mean": 0.3998979157092524, "train/loss": 8.307397365570068e-07, "train/policy_loss": 3.725290298461914e-09,
         "train/kl": 1.6493608427481377e-05, "train/approx_kl": 8.493206138382448e-15, "train/grad_norm": 0.009417855180799961,
         "train/ratio_mean": 1.0, "localize/localized_fraction": 0.375, "localize/map_inside_mass": 1.0},
    ],
}


# The pins hold on any CPU, not bit for bit: two machines whose torch reports the same capability
# string (an Intel and an AMD EPYC, both "AVX512") sum in other orders, so a capability string does
# not identify the kernels (CONVENTIONS.md, "Tests"). The first losses are sums of O(1) terms
# (advantages times ratios at 1) that cancel to ~1e-9, so their float32 rounding is an absolute
# ~1e-8 (seen: 6.05e-9 on the recorded machine, 2.79e-9 on an AVX2 one, -4.66e-9 on an AMD EPYC),
# and the gradient norm of such a sum agrees to ~5e-5 relative (0.0070047 and 0.0070050);
# everything else to 1e-5.
OTHER_CPU = dict(rel=1e-4, abs=1e-7)

# The final LoRA's update, where the sha256 of its bytes can only hold on one machine: the root sum
# of squares and the sum of |w| of its up (B) matrices, which start at 0, so both measure the two
# steps' change. Adam's first steps move each weight by about lr * sign(gradient), so a weight whose
# gradient rounds differently on another CPU changes them little; 1e-2 relative leaves room for that
# and still fails for a step of another size or direction. Recorded at 25c89db on an AMD EPYC
# (AVX512, one thread), where the metrics above reproduce the recorded ones within OTHER_CPU.
LORA_UP = {"brightness": (0.059911010892287134, 2.173700108687626), "localized": (0.05646137361856205, 2.0251179133483674)}


@contextlib.contextmanager
def _recorded_maps():
    """Every :class:`~cac_align.rl.credit.CreditMaps` the trainer builds, in order."""
    seen = []
    original = columns.credit_maps

    def recording(*args, **kwargs):
        maps = original(*args, **kwargs)
        seen.append(maps)
        return maps

    columns.credit_maps = recording
    try:
        yield seen
    finally:
        columns.credit_maps = original


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _lora_up_change(folder):
    """(root sum of squares, sum of |w|) over the LoRA's up matrices (zero at the start)."""
    lora = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    up = [lora[k].double() for k in sorted(lora) if ".lora.up." in k]
    assert up, sorted(lora)[:4]
    return float(sum(w.pow(2).sum() for w in up)) ** 0.5, float(sum(w.abs().sum() for w in up))


def _assert_reproduces(rows, expected_rows, lora_folder, lora_up):
    """The feature-off run against the recorded one: every recorded metric within float rounding
    of another CPU (OTHER_CPU), and the LoRA's update (LORA_UP) to 1e-2."""
    for got, expected in zip(rows, expected_rows, strict=True):
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, **OTHER_CPU), (key, got[key], value)
    assert _lora_up_change(lora_folder) == pytest.approx(lora_up, rel=1e-2)


def test_off_a_run_reproduces_before(tmp_path):
    out = tmp_path / "off"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    try:
        assert main(["flow-grpo", "--config", str(BRIGHT), "--out", str(out), "steps=2", "log_with=none", "checkpoint_every=0", "ema_decay=null"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = _metrics(out)
    assert not any(k.startswith("localize/") for r in rows for k in r)  # off: nothing of the feature runs
    _assert_reproduces(rows, BEFORE["metrics"], out / "lora", LORA_UP["brightness"])


def _run_one_thread(args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)


def test_localized_with_confinement_and_vipo_off_reproduces_before(tmp_path):
    out = tmp_path / "localized"
    _run_one_thread(["flow-grpo", "--config", str(LOCALIZED), "--out", str(out), "steps=2", "log_with=none", "checkpoint_every=0", "ema_decay=null"])
    rows = _metrics(out)
    assert not any(k in r for r in rows for k in ("train/confine_kl", "localize/held_fraction"))  # off: nothing of it runs
    _assert_reproduces(rows, LOCALIZED_BEFORE["metrics"], out / "lora", LORA_UP["localized"])
    # the run folder's fingerprint leaves the new settings out at their defaults (a folder of before
    # them resumes), and names them when they are set
    manifest = json.loads((out / "cac_align_run.json").read_text())
    assert "confine" not in json.dumps(manifest["fingerprint"]["advantage"]) and "estimator" not in json.dumps(manifest["fingerprint"]["advantage"])


@pytest.mark.slow  # ~6 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_confinement_holds_every_located_sample_and_changes_the_update(tmp_path):
    # beta = 0: no recipe KL, so the reference pass runs for confinement alone
    common = ["steps=2", "log_with=none", "checkpoint_every=0", "ema_decay=null", "beta=0"]
    assert main(["flow-grpo", "--config", str(LOCALIZED), "--out", str(tmp_path / "free"), *common]) == 0
    assert main(["flow-grpo", "--config", str(LOCALIZED), "--out", str(tmp_path / "held"), *common, "advantage.localize.confine=5.0"]) == 0
    free, held = _metrics(tmp_path / "free"), _metrics(tmp_path / "held")
    # spot_brightness calls every video abnormal with its box: every sample is held off its region
    assert all(r["localize/held_fraction"] == 1.0 and "train/kl" not in r for r in held)
    # step 1 starts at the reference (LoRA B = 0): the KL and its gradient are 0, the update is the
    # same as without it; step 2's policy has moved, so its KL is > 0 and adds to the same policy loss
    assert held[0]["train/confine_kl"] == 0.0 and held[0]["train/loss"] == free[0]["train/loss"]
    assert held[1]["train/confine_kl"] > 0
    assert held[1]["train/policy_loss"] == free[1]["train/policy_loss"]
    # (the logged loss sums float32 micro-batch losses of O(0.05) policy terms: rounding ~1e-9)
    assert held[1]["train/loss"] == pytest.approx(free[1]["train/loss"] + held[1]["train/confine_kl"], rel=1e-4)
    a = load_file(str(tmp_path / "free/lora/pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "held/lora/pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(a[n], b[n]) for n in a)
    manifest = json.loads((tmp_path / "held/cac_align_run.json").read_text())
    assert manifest["fingerprint"]["advantage"]["localize"]["confine"] == 5.0


def test_vipo_estimator_trains_with_its_maps_and_refuses_an_asymmetric_clip(tmp_path):
    with _recorded_maps() as seen:
        config = load_config(FlowGrpoConfig, LOCALIZED, [f"out_dir={tmp_path / 'vipo'}", "steps=1", "log_with=none", "advantage.localize.estimator=vipo"],
                             job="flow-grpo")
        pipe = build_tiny_wan_pipeline(seed=0)
        run(config, pipe=pipe)
    (maps,) = seen
    localized = maps.maps[maps.localized]
    # ViPO's [0, 1] map of the box and window: 1 on its 32 positions, 0 elsewhere (ours would be 6 and 0)
    assert len(localized) and (localized[:, 1:, :4, :4] == 1).all() and localized.sum() == pytest.approx(32 * len(localized))
    (row,) = _metrics(tmp_path / "vipo")
    assert row["train/grad_norm"] > 0 and 0 <= row["train/clip_fraction"] <= 1
    lora = {n: p for n, p in pipe.transformer.named_parameters() if p.requires_grad}
    assert any(torch.count_nonzero(v) for n, v in lora.items() if "lora_B" in n)
    with pytest.raises(Exception, match="clips symmetrically"):
        load_config(FlowGrpoConfig, LOCALIZED, ["out_dir=x", "advantage.localize.estimator=vipo", "clip_range_high=0.3"], job="flow-grpo")


@pytest.mark.slow  # ~13 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_tiny_localized_recipe_logs_its_metrics_and_resumes_exactly(tmp_path):
    # the README-style command, offline
    assert main(["flow-grpo", "--config", str(LOCALIZED), "--out", str(tmp_path / "straight"), "checkpoint_every=1"]) == 0
    rows = _metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        # spot_brightness calls every video abnormal: the worse half of each group (advantage < 0)
        # is localized, its whole map on the box and window (outside: 0), nothing missing
        assert 0 < r["localize/localized_fraction"] <= 0.5 and r["localize/map_inside_mass"] == pytest.approx(1.0)
        assert r["localize/evidence_missing"] == 0
    # killed after step 2 (its checkpoint), resumed to 3: the same LoRA as the straight run
    assert main(["flow-grpo", "--config", str(LOCALIZED), "--out", str(tmp_path / "resumed"), "checkpoint_every=1", "steps=2"]) == 0
    assert main(["flow-grpo", "--config", str(LOCALIZED), "--out", str(tmp_path / "resumed"), "checkpoint_every=1", "resume=true"]) == 0
    a = load_file(str(tmp_path / "straight/checkpoints/step_000003/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/step_000003/model.safetensors"))
    assert set(a) == set(b) and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-7)
    assert [r["step"] for r in _metrics(tmp_path / "resumed")] == [1, 2, 3]
    # the localized run differs from the scalar one on the same seeds (the maps reach the loss)
    scalar = tmp_path / "scalar"
    assert main(["flow-grpo", "--config", str(LOCALIZED), "--out", str(scalar), "checkpoint_every=1", "advantage.localize.enabled=false"]) == 0
    c = load_file(str(scalar / "checkpoints/step_000003/model.safetensors"))
    assert any(not torch.equal(a[name], c[name]) for name in a)


def test_print_config_shows_every_localize_setting(capsys):
    assert main(["flow-grpo", "--config", str(BRIGHT), "out_dir=x", "--print-config"]) == 0
    shown = capsys.readouterr().out
    block = shown[shown.index("advantage:"):]
    for line in ("enabled: false", "source: auto", "apply_to: negative", "inside: 1.0", "outside: 0.0", "dilate: 50.0", "context_s: 0.0", "edges: hard",
                 "confine: 0.0", "estimator: default", "adv_clamp: 5.0"):
        assert line in block, line
    with pytest.raises(Exception, match="apply_to must be one of"):
        load_config(FlowGrpoConfig, BRIGHT, ["out_dir=x", "advantage.localize.apply_to=positive"], job="flow-grpo")


def test_a_combined_reward_carries_its_components_evidence_to_the_maps(tmp_path):
    """ur_cac-shaped: a combined reward of brightness (no evidence) and spot_brightness (evidence);
    source names the component; every localized map comes from its box and window."""
    config = load_config(FlowGrpoConfig, LOCALIZED, [f"out_dir={tmp_path / 'combined'}", "steps=1", "advantage.localize.source=spot_brightness"],
                         job="flow-grpo")
    config.reward = {"name": "combined", "components": [
        {"name": "brightness", "weight": 1.0}, {"name": "spot_brightness", "weight": 1.0, "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}]}
    with _recorded_maps() as seen:
        run(config, pipe=build_tiny_wan_pipeline(seed=0))
    (maps,) = seen
    assert maps.localized.any() and not maps.missing.any()
    localized = maps.maps[maps.localized]
    # 9 frames of 64 x 64 -> latent (3, 8, 8); the box and window cover latent frames 1-2, rows and
    # columns 0-3: 32 of 192 positions at 192 / 32 = 6
    assert localized.shape[1:] == (3, 8, 8) and (localized[:, 1:, :4, :4] == 6).all() and localized.sum() == pytest.approx(192 * len(localized))


@pytest.mark.slow  # two processes, as every trainer's other two-process tests: `pytest -m slow` (.ci/run runs it)
def test_two_processes_give_the_maps_and_losses_of_one(tmp_path):
    """torchrun-equivalent (`accelerate launch`, two gloo processes, as the scalar path's test):
    one step of the tiny localized recipe gives, concatenated over the ranks, the maps of one
    process, the same logged losses and the same LoRA."""
    with _recorded_maps() as seen:
        config = load_config(FlowGrpoConfig, LOCALIZED, [f"out_dir={tmp_path / 'one'}", "steps=1", "log_with=none"], job="flow-grpo")
        pipe = build_tiny_wan_pipeline(seed=0)
        run(config, pipe=pipe)
    one_maps = torch.cat([torch.as_tensor(m.maps) for m in seen])
    one_lora = {n: p.detach() for n, p in pipe.transformer.named_parameters() if p.requires_grad}

    script = REPO_ROOT / "tests" / "flow_grpo_two_process.py"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CAC_ALIGN_TEST_LOCALIZED": str(tmp_path / "two")}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script), str(tmp_path / "ddp")]
    done = forked_launch.accelerate_launch(command, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the scalar run of the same processes: both ranks hold the same LoRA (the scalar path's proof)
    assert json.loads((tmp_path / "ddp/world.json").read_text()) == json.loads((tmp_path / "two/world.json").read_text()) == {"num_processes": 2}
    rank0, rank1 = (load_file(str(tmp_path / f"ddp/rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1) and rank0 and all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    assert any(torch.count_nonzero(v) for n, v in rank0.items() if "lora_B" in n)  # it did train
    # the localized run: rank 0 has samples 0-3 of the step, rank 1 samples 4-7
    two = tmp_path / "two"
    maps = torch.cat([load_file(str(two / f"maps{r}.safetensors"))["maps"] for r in (0, 1)])
    assert maps.shape == one_maps.shape == (8, 3, 8, 8) and torch.equal(maps, one_maps)
    (row_two,), (row_one,) = _metrics(two), _metrics(tmp_path / "one")
    for key in ("localize/localized_fraction", "localize/map_inside_mass", "localize/evidence_missing", "reward/mean"):
        assert row_two[key] == pytest.approx(row_one[key], abs=1e-9), key
    # a step's first loss is -mean(A * M) at ratio 1: near 0 for a balanced group, a sum of O(1)
    # terms whose rounding differs with the split (rank means, then a gather)
    for key in ("train/loss", "train/policy_loss", "train/kl"):
        assert row_two[key] == pytest.approx(row_one[key], abs=1e-6), key
    assert row_one["train/grad_norm"] > 0 and row_two["train/grad_norm"] == pytest.approx(row_one["train/grad_norm"], rel=1e-4)
    lora = load_file(str(two / "rank0.safetensors"))
    assert any(torch.count_nonzero(v) for n, v in lora.items() if "lora_B" in n)  # it trained
    for name, value in one_lora.items():
        torch.testing.assert_close(lora[name], value, rtol=1e-4, atol=1e-7)
