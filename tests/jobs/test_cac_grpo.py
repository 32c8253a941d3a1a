"""CaC stage 3 (two-turn GRPO): the loss by hand, token-exact two-turn rollouts, the on-policy
first step, the tiny recipe training and resuming, and two processes under accelerate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cac_align.cac.train.collate import IGNORE_INDEX, encode_chat
from cac_align.config import RecipeError
from cac_align.jobs import load_recipe
import forked_launch
from conftest import REPO_ROOT, free_port

# The tiny Qwen3-VL's second deepstack merger gets no gradient (see tests/jobs/test_cac_sft.py).
NO_GRADIENT = "visual.deepstack_merger_list.1."


def _recipe(cac_data, out, *extra):
    _, config = load_recipe(
        REPO_ROOT / "recipes/cac/stage3_grpo_tiny.yaml",
        [f"annotations={cac_data}", f"out_dir={out}", "model=tiny-random:qwen3_vl", *extra],
    )
    return config


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------------------------------
# The loss, by hand
# ---------------------------------------------------------------------------------------
def test_grpo_loss_hand_worked():
    """Two rollouts of two tokens. Rollout A (A = +1): ratios 1.5 and 0.5, so the clipped
    surrogate is min(1.5, 1.2) = 1.2 and min(0.5, 0.5) = 0.5 -> loss -(1.2 + 0.5) / 2 = -0.85.
    Rollout B (A = -1), only its first token generated: ratio 0.5 -> min(-0.5, -0.8) = -0.8 ->
    loss 0.8. KL: π_ref / π_θ = 2 on every token -> k3 = 2 - ln 2 - 1 = 0.306853, β = 0.1."""
    from cac_align.cac.train.losses import grpo_loss

    logp = torch.log(torch.tensor([[0.3, 0.1], [0.1, 0.3]]))
    old = torch.log(torch.tensor([[0.2, 0.2], [0.2, 0.2]]))
    ref = logp + math.log(2.0)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -1.0])
    per_rollout, stats = grpo_loss(logp, old, None, adv, mask, clip_epsilon=0.2, beta=0.1)
    torch.testing.assert_close(per_rollout, torch.tensor([-0.85, 0.8]))
    # A's first token (ratio 1.5 > 1.2 with A > 0) and B's (0.5 < 0.8 with A < 0) are clipped
    assert stats["clipped"] == 2 and stats["tokens"] == 3 and stats["kl"] == 0.0
    assert stats["ratio"] == pytest.approx(1.5 + 0.5 + 0.5)
    kl = 2 - math.log(2) - 1
    per_rollout, stats = grpo_loss(logp, old, ref, adv, mask, clip_epsilon=0.2, beta=0.1)
    torch.testing.assert_close(per_rollout, torch.tensor([-0.85 + 0.1 * kl, 0.8 + 0.1 * kl]))
    assert stats["kl"] == pytest.approx(3 * kl, rel=1e-5)
    # the surrogate's gradient is A·ρ·∇log π on unclipped tokens and 0 on clipped ones
    logp = logp.clone().requires_grad_(True)
    per_rollout, _ = grpo_loss(logp, old, None, adv, mask, clip_epsilon=0.2, beta=0.0)
    per_rollout.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 2], [0.0, 0.0]]))


def test_group_settings_are_checked(cac_data, tmp_path):
    with pytest.raises(RecipeError, match="multiple of grpo.group_size"):
        _recipe(cac_data, tmp_path, "train.gradient_accumulation_steps=3")
    with pytest.raises(RecipeError, match="grpo.sampler"):
        _recipe(cac_data, tmp_path, "grpo.sampler=vllm")
    with pytest.raises(RecipeError, match="group_siz"):
        _recipe(cac_data, tmp_path, "grpo.group_siz=4")


# ---------------------------------------------------------------------------------------
# Rollouts are token-exact two-turn conversations
# ---------------------------------------------------------------------------------------
def _stage3_videos(cac_data, config, count=None):
    from cac_align.cac.schema import load_annotations
    from cac_align.cac.train.data import split_records
    from cac_align.video import load_video

    records = load_annotations(cac_data).records
    pool = split_records(records, config.data.splits, config.data.seed)["stage3"]
    pool = sorted(pool, key=lambda i: records[i].status)  # abnormal first
    return [(i, records[i], load_video(str(records[i].video))) for i in pool[:count]]


class _SimulatedThenSampled:
    """Turn 1 from the noise-free simulated policy (the ground truth, so turn 2 always runs),
    turn 2 sampled by the tiny model: the model's own tokens after a two-turn context."""

    def __init__(self, simulated, sampler):
        self.simulated, self.sampler = simulated, sampler

    def generate(self, requests, seed):
        return (self.simulated if requests[0].turn == 1 else self.sampler).generate(requests, seed)


def test_rollout_sequences_are_the_sampled_tokens_in_the_rendered_conversation(cac_data, tmp_path, tiny_qwen3_vl):
    from cac_align.cac.infer import sample_capped
    from cac_align.cac.prompts import turn1_prompt, turn2_prompt
    from cac_align.cac.train.collate import collate
    from cac_align.cac.train.losses import token_logprobs
    from cac_align.cac.train.rollouts import HFSampler, SimulatedPolicy, collect_rollouts, placeholder_token_ids
    from cac_align.vlm.backend import assistant, user

    model, processor = tiny_qwen3_vl.model, tiny_qwen3_vl.processor
    config = _recipe(cac_data, tmp_path, "grpo.group_size=2")
    videos = _stage3_videos(cac_data, config, count=2)
    assert [r.status for _, r, _ in videos] == ["abnormal", "abnormal"]
    simulated = SimulatedPolicy(processor.tokenizer, noise=0.0)

    # 1. both turns simulated (text that tokenizes back to itself): the sequence is exactly the
    # processor's encoding of the rendered two-turn chat, with labels on the two answers
    rollouts = collect_rollouts(videos, simulated, processor, config, seed=3)
    assert len(rollouts) == 4 and [r.group for r in rollouts] == [0, 0, 1, 1]
    for rollout in rollouts:
        _, record, video = videos[rollout.group]
        assert rollout.turn2_ids is not None and rollout.reward.status == 0 and rollout.reward.format == 0
        scan = sample_capped(video, config.data.scan_fps, config.data.max_frames_turn1)
        clip = sample_capped(video.crop(*rollout.window_s), config.data.clip_fps, config.data.max_frames_turn2)
        chat = [
            user(scan, turn1_prompt(video.duration_s, scan.fps, scan.num_frames, record.prompt)),
            assistant(rollout.turn1_text),
            user(clip, turn2_prompt(rollout.window_s, clip.fps, clip.num_frames)),
            assistant(rollout.turn2_text),
        ]
        expected = encode_chat(processor, chat)
        assert torch.equal(rollout.sequence.input_ids, expected.input_ids)
        assert torch.equal(rollout.sequence.labels, expected.labels)
        assert torch.equal(rollout.sequence.vision["pixel_values_videos"], expected.vision["pixel_values_videos"])
        trained = rollout.sequence.labels != IGNORE_INDEX
        assert rollout.sequence.input_ids[trained].tolist() == rollout.turn1_ids + rollout.turn2_ids

    # 2. turn 2 sampled by the model after the two-turn context: the loss pass reads the very
    # ids it sampled, and its log-probs recomputed on the whole sequence match the sampler's
    sampler = HFSampler(model, processor, temperature=1.0, batch_size=4)
    config = _recipe(cac_data, tmp_path, "grpo.group_size=2", "grpo.max_new_tokens_turn2=12")
    rollouts = collect_rollouts(videos, _SimulatedThenSampled(simulated, sampler), processor, config, seed=4)
    again = collect_rollouts(videos, _SimulatedThenSampled(simulated, sampler), processor, config, seed=4)
    assert [r.turn2_ids for r in again] == [r.turn2_ids for r in rollouts]  # deterministic in the seed
    assert len({tuple(r.turn2_ids) for r in rollouts}) > 1  # sampled, not greedy
    batch = collate([r.sequence for r in rollouts], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, mask = token_logprobs(model, batch, 1.0, placeholder_token_ids(processor))
    for row, rollout in enumerate(rollouts):
        trained = rollout.sequence.labels != IGNORE_INDEX
        assert rollout.sequence.input_ids[trained].tolist() == rollout.turn1_ids + rollout.turn2_ids
        assert 1 <= len(rollout.turn2_ids) <= 12 and rollout.turn1_logprobs is None
        recomputed = logp[row][mask[row]][len(rollout.turn1_ids) :].numpy()
        np.testing.assert_allclose(recomputed, rollout.turn2_logprobs, atol=1e-4)


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------
def test_first_step_is_on_policy_and_at_the_reference(cac_data, tmp_path):
    """The model samples its own rollouts (sampler=hf): at the first step the ratio is exactly
    1, nothing is clipped, the KL to the reference (the same weights) is exactly 0, and the
    recomputed log-probs are the ones it sampled with. A random tiny model writes no valid JSON,
    so every rollout scores the same, every group has zero variance, and nothing moves."""
    from cac_align.jobs.train_cac import run

    out = tmp_path / "hf"
    metrics = run(_recipe(cac_data, out, "grpo.sampler=hf", "grpo.max_new_tokens_turn1=16", "train.max_steps=1"))
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_fraction"] == 0.0 and metrics["kl"] == 0.0
    assert metrics["sampler_logprob_max_abs_diff"] < 1e-4
    assert metrics["response_length/turn1"] == 16 and metrics["truncated_fraction"] == 1.0
    assert metrics["reward/total"] == -3.0 and metrics["zero_std_fraction"] == 1.0 and metrics["grad_norm"] == 0.0
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 8 and all(r["advantage"] == 0.0 and r["turn1_tokens"] == 16 for r in rollouts)


@pytest.fixture(scope="module")
def straight(cac_data, tmp_path_factory):
    from cac_align.jobs.train_cac import run

    out = tmp_path_factory.mktemp("grpo") / "straight"
    metrics = run(_recipe(cac_data, out))
    return out, metrics


@pytest.mark.slow  # ~9 s with its fixture of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_tiny_recipe_trains(straight):
    from cac_align.vlm.tiny import build_tiny_qwen3_vl

    out, metrics = straight
    logs = _metrics(out)
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    for entry in logs:
        assert all(math.isfinite(v) for v in entry.values()), entry
        for key in ("reward/format", "reward/status", "reward/type_iou", "reward/temporal_iou", "reward/spatial_iou",
                    "turn2_fraction", "window_s", "kl", "clip_fraction", "response_length/turn1", "response_length/turn2"):
            assert key in entry, key
    # the first step is at the reference; the policy then drifts from it
    assert logs[0]["kl"] == 0.0 and logs[0]["ratio_mean"] == 1.0 and logs[-1]["kl"] > 0
    assert 0 < logs[0]["turn2_fraction"] < 1 and logs[0]["reward/total_std"] > 0
    # every rollout is logged with its rewards and advantage; advantages are zero-mean per group
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 4 * 8
    for step in range(1, 5):
        for group in (0, 1):
            advantages = [r["advantage"] for r in rollouts if r["step"] == step and r["group"] == group]
            assert len(advantages) == 4 and abs(sum(advantages)) < 1e-4
    # full-parameter training: every parameter moved except the one that gets no gradient
    base = build_tiny_qwen3_vl(seed=0).model.state_dict()
    final = _weights(out / "final")
    assert set(final) == set(base)
    unchanged = sorted(name for name, tensor in final.items() if torch.equal(tensor, base[name]))
    assert unchanged and all(NO_GRADIENT in name for name in unchanged), unchanged
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    assert json.loads((out / "checkpoints/step_000004/state.json").read_text()) == {"step": 4}
    assert any((out / "tensorboard" / "train_cac_stage3").glob("events.out.tfevents*"))  # accelerate's tracker, as flow-grpo
    assert json.loads((out / "data.json").read_text())["stage"] == 3


@pytest.mark.slow  # ~10 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_resume_continues_exactly(straight, cac_data, tmp_path, caplog):
    """2 steps, a run killed while writing checkpoint 3, then resume to 4: the same weights and
    log as 4 steps straight."""
    import logging

    from cac_align.jobs.train_cac import run

    out = tmp_path / "resumed"
    run(_recipe(cac_data, out, "train.max_steps=2"))
    (out / "checkpoints/.tmp_step_000003").mkdir()  # killed while saving: never renamed, so it is ignored
    (out / "checkpoints/step_000003").mkdir()  # and a folder without state.json is ignored too
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "reward/total": 1.0}\n{"step": 4, "rew')  # lines of the killed run
    from torch.utils.tensorboard import SummaryWriter

    killed = SummaryWriter(str(out / "tensorboard/train_cac_stage3"))  # and its TensorBoard steps 3 and 4
    for step in (3, 4):
        killed.add_scalar("reward/total", 1.0, step)
    killed.close()
    with pytest.raises(RecipeError, match=r"differs in: grpo.beta"):
        run(_recipe(cac_data, out, "resume=true", "grpo.beta=0.5"))
    with caplog.at_level(logging.INFO, logger="cac_align"):
        run(_recipe(cac_data, out, "resume=true"))
    assert f"resuming from {out / 'checkpoints/step_000002'} (step 2)" in caplog.text
    expected, got = _weights(straight[0] / "final"), _weights(out / "final")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)
    logs, straight_logs = _metrics(out), _metrics(straight[0])
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    for a, b in zip(logs, straight_logs):
        assert a["reward/total"] == pytest.approx(b["reward/total"]) and a["kl"] == pytest.approx(b["kl"], abs=1e-7)
    # TensorBoard too holds each step once, the resumed run's (the killed run's 3 and 4 purged), as metrics.jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard/train_cac_stage3"))
    events.Reload()
    shown = [(e.step, e.value) for e in events.Scalars("reward/total")]
    assert [step for step, _ in shown] == [1, 2, 3, 4]
    assert [value for _, value in shown] == pytest.approx([e["reward/total"] for e in logs], rel=1e-6)


@pytest.mark.slow  # ~6 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_gradient_accumulation_matches_one_big_batch(cac_data, tmp_path):
    """One step of 8 rollouts (2 videos x G 4): four micro-batches of 2 accumulate into the same
    gradient as one batch of 8 (each rollout weighs 1/8 either way, whatever its micro-batch)."""
    from cac_align.jobs.train_cac import run

    for name, batch in (("big", 8), ("small", 2)):
        run(_recipe(cac_data, tmp_path / name, "train.max_steps=1", "grpo.videos_per_step=2", f"train.per_device_batch_size={batch}"))
    big, small = (_metrics(tmp_path / name)[0] for name in ("big", "small"))
    assert big["reward/total"] == small["reward/total"] and big["grad_norm"] > 0
    # the gradient norm is scale-sensitive (Adam's step is not): the accumulated gradient is the same
    assert small["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-4)
    assert small["loss"] == pytest.approx(big["loss"], rel=1e-4, abs=1e-6)
    # (the weights after one Adam step cannot show it: Adam's first update is about lr * sign(g))


def test_videos_per_step_is_a_global_intent(cac_data, tmp_path):
    from cac_align.jobs.train_cac import run

    out = tmp_path / "intent"
    # 3 videos x G 4 = 12 rollouts in micro-batches of 2, whatever gradient_accumulation_steps says
    run(_recipe(cac_data, out, "train.max_steps=1", "grpo.videos_per_step=3", "train.gradient_accumulation_steps=1"))
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 12 and len({r["record"] for r in rollouts}) == 3
    with pytest.raises(RecipeError, match="videos_per_step must be >= 1"):
        _recipe(cac_data, out, "grpo.videos_per_step=0")


@pytest.mark.slow  # two processes: `pytest -m slow` (.ci/run runs it after the default suite)
def test_two_processes_agree(cac_data, tmp_path):
    """`accelerate launch` with two CPU processes (gloo): each process rolls out its own two
    videos (four different ones in the step), gradients are averaged, and the two replicas hold
    the same parameters afterwards. (`accelerate launch --cpu --num_processes 2` starts a single
    process in this accelerate version; `--multi_gpu` starts two, which run on the CPU here.)"""
    import os
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "cac_align.cli", "train-cac", "--config", str(REPO_ROOT / "recipes/cac/stage3_grpo_tiny.yaml"),
               f"annotations={cac_data}", f"out_dir={out}", "model=tiny-random:qwen3_vl", "train.max_steps=1",
               "grpo.videos_per_step=4"]  # the global intent: the code gives each of the 2 processes 2 videos
    done = forked_launch.accelerate_launch(command, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (entry,) = _metrics(out)
    assert entry["process_param_spread"] == 0.0 and entry["grad_norm"] > 0
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 16 and len({r["record"] for r in rollouts}) == 4
    assert (out / "final/model.safetensors").exists()


def test_status_only_records_train_in_stage3_with_their_terms_masked(cac_data, tmp_path):
    """Stage 3 on records whose anomalies have a type but no window (a status-only source): the
    simulated policy answers for them too, and their rollouts' temporal and spatial terms are
    masked (0 weight), the type and status terms kept."""
    from cac_align.cac.schema import Anomaly, load_annotations, write_annotations
    from cac_align.jobs.train_cac import run

    records = load_annotations(cac_data).records
    for record in records:
        if record.status == "abnormal":
            record.anomalies = [Anomaly(type=a.type, frames=None, boxes={}, reason=a.reason, saliency=a.saliency) for a in record.anomalies]
    path = write_annotations(records, tmp_path / "status_only.jsonl")
    out = tmp_path / "run"
    # (and train.save_steps=0: no checkpoint at all, as in stages 1-2, where it once divided by zero)
    metrics = run(_recipe(path, out, "train.max_steps=1", "train.save_steps=0"))
    assert math.isfinite(metrics["reward/total"])
    assert not (out / "checkpoints").exists() and (out / "final/model.safetensors").is_file()
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    by_status = {}
    for rollout in rollouts:
        by_status.setdefault(records[rollout["record"]].status, []).append(rollout["reward"])
    assert by_status.get("abnormal"), "no abnormal video in the step"
    for reward in by_status["abnormal"]:
        assert (reward["mask"], reward["mask_temporal"], reward["mask_spatial"]) == (1.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------
# Stage 3 with LoRA (finetune: lora): adapters over frozen stage-2 weights, which are the reference
# ---------------------------------------------------------------------------------------
def test_finetune_defaults_and_refusals(cac_data, tmp_path):
    assert _recipe(cac_data, tmp_path / "a").finetune == "full"  # stage 3's own: the paper's full training
    _, stage1 = load_recipe(REPO_ROOT / "recipes/cac/stage1_tiny.yaml", [f"annotations={cac_data}"])
    assert stage1.finetune == "lora"
    with pytest.raises(RecipeError, match="finetune: lora applies to stages 1 and 3"):
        load_recipe(REPO_ROOT / "recipes/cac/stage2_tiny.yaml", [f"annotations={cac_data}", "finetune=lora"])
    with pytest.raises(RecipeError, match="freeze_vision applies to full fine-tuning"):
        _recipe(cac_data, tmp_path / "b", "finetune=lora", "freeze_vision=true")


@pytest.mark.slow  # ~18 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_lora_stage3_trains_adapters_against_the_frozen_weights(cac_data, tmp_path):
    """Only the adapters train; the KL term's reference is the weights under them (adapters
    off): 0 at the first step, above 0 once the adapters moved, with no second model loaded.
    final/ is the adapters merged into the stage-2 weights, adapter/ the adapters alone; a
    resumed run repeats the straight one."""
    from safetensors.torch import load_file

    from cac_align.jobs.train_cac import run
    from cac_align.vlm.tiny import build_tiny_qwen3_vl

    lora = ["finetune=lora", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0"]
    out = tmp_path / "lora"
    run(_recipe(cac_data, out, *lora))
    logs = _metrics(out)
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    assert logs[0]["kl"] == 0.0 and logs[-1]["kl"] > 0 and logs[0]["grad_norm"] > 0
    adapter = load_file(str(out / "adapter/adapter_model.safetensors"))
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and [k for k, v in lora_b.items() if v.abs().max() == 0] == [k for k in lora_b if NO_GRADIENT in k]
    base = build_tiny_qwen3_vl(seed=0).model.state_dict()
    final = _weights(out / "final")
    covered = {k.split("base_model.model.", 1)[1].replace(".lora_B.weight", ".weight") for k in lora_b if NO_GRADIENT not in k}
    assert covered and set(final) == set(base)
    for name, tensor in final.items():
        assert torch.equal(tensor, base[name]) == (name not in covered), name
    # resumed from its step-2 checkpoint, the LoRA run repeats the straight one
    resumed = tmp_path / "resumed"
    run(_recipe(cac_data, resumed, *lora, "train.max_steps=2"))
    run(_recipe(cac_data, resumed, *lora, "resume=true"))
    again = load_file(str(resumed / "adapter/adapter_model.safetensors"))
    for name, tensor in adapter.items():
        torch.testing.assert_close(again[name], tensor, atol=1e-6, rtol=0, msg=name)
