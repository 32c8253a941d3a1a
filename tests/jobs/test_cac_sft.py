"""CaC stages 1-2: assistant-only loss masks, batching, and the tiny recipes training for real."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from cac_align.cac.train.collate import IGNORE_INDEX, collate, encode_chat
from cac_align.config import RecipeError
from cac_align.jobs import load_recipe
from cac_align.run.folder import read_manifest
from cac_align.video import Video
from cac_align.vlm.backend import assistant, user
from cac_align.vlm.hf import processor_inputs, render_chat
import forked_launch
from conftest import REPO_ROOT, free_port


def _video(frames: int, fps: float, start: float = 0.0, seed: int = 0) -> Video:
    rng = np.random.default_rng(seed)
    return Video(rng.integers(0, 255, (frames, 64, 96, 3), dtype=np.uint8), fps, start + np.arange(frames) / fps)


def _two_turn_chat():
    image = np.random.default_rng(5).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    return [
        user(_video(8, 4.0), "scan this video"),
        assistant('{"cot": "a", "status": "abnormal", "anomalies": []}'),
        user(_video(5, 8.0, start=1.0, seed=1), image, "look closer"),
        assistant('{"cot": "b", "status": "normal", "anomalies": []}'),
    ]


def test_encoded_chat_is_the_processors_encoding_with_loss_on_answers_only(tiny_qwen3_vl):
    processor = tiny_qwen3_vl.processor
    messages = _two_turn_chat()
    encoded = encode_chat(processor, messages)
    whole = processor_inputs(processor, [render_chat(processor, messages, add_generation_prompt=False)], [messages])
    # the very tokens and pixels inference would feed the model for this conversation
    assert torch.equal(encoded.input_ids, whole["input_ids"][0])
    assert torch.equal(encoded.token_extras["mm_token_type_ids"], whole["mm_token_type_ids"][0])
    for key in ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw"):
        assert torch.equal(encoded.vision[key], whole[key]), key
    # labels: exactly the two answers with their end-of-turn token, nothing from the prompts
    trained = encoded.labels != IGNORE_INDEX
    assert torch.equal(encoded.labels[trained], encoded.input_ids[trained])
    text = processor.tokenizer.decode(encoded.input_ids[trained])
    assert text == '{"cot": "a", "status": "abnormal", "anomalies": []}<|im_end|>{"cot": "b", "status": "normal", "anomalies": []}<|im_end|>'
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert not trained[encoded.input_ids == video_id].any()


def test_batching_variable_frame_counts_matches_samples_alone(tiny_qwen3_vl):
    """A right-padded batch of an 8-frame and a 4-frame video chat (plus an image chat) gives each
    sample the same logits as running it alone."""
    model, processor = tiny_qwen3_vl.model, tiny_qwen3_vl.processor
    image = np.random.default_rng(2).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    chats = [
        [user(_video(8, 4.0), "long"), assistant('{"status": "normal"}')],
        [user(_video(4, 8.0, seed=3), "short one, longer text here"), assistant('{"status": "abnormal", "anomalies": []}')],
        [user(image, "a frame"), assistant('{"status": "normal"}')],
    ]
    encoded = [encode_chat(processor, c) for c in chats]
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    assert batch["video_grid_thw"].shape[0] == 2 and batch["image_grid_thw"].shape[0] == 1
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row, e in enumerate(encoded):
            alone = model(**{k: v for k, v in collate([e], processor.tokenizer.pad_token_id).items() if k != "labels"}).logits
            n = e.input_ids.numel()
            torch.testing.assert_close(together[row, :n], alone[0], atol=1e-4, rtol=1e-4)


def test_status_tokens_are_marked_inside_the_answers(tiny_qwen3_vl):
    processor = tiny_qwen3_vl.processor
    encoded = encode_chat(processor, _two_turn_chat())
    marked = encoded.status.nonzero().flatten()
    # exactly the two status values, in order, and only where the loss is
    assert [processor.tokenizer.decode(encoded.input_ids[i]).strip() for i in marked] == ["abnormal", "normal"]
    assert (encoded.labels[marked] != IGNORE_INDEX).all()
    batch = collate([encoded, encode_chat(processor, _two_turn_chat()[:2])], processor.tokenizer.pad_token_id, status_mask=True)
    assert batch["status_mask"].sum().item() == 3 and batch["status_mask"].dtype == torch.bool
    assert "status_mask" not in collate([encoded], processor.tokenizer.pad_token_id)  # not a model input unless asked
    # a chat whose tokenizer gave no offsets (a slow one) cannot be weighted: a clear error, not a silent plain loss
    unmarked = dataclasses.replace(encoded, status=None)
    with pytest.raises(ValueError, match="needs a fast tokenizer"):
        collate([encoded, unmarked], processor.tokenizer.pad_token_id, status_mask=True)


def test_weighted_token_loss_by_hand(tiny_qwen3_vl):
    from cac_align.cac.train.losses import weighted_token_loss

    # vocab 4, logits [ln 3, 0, 0, 0] everywhere: CE is ln 2 for token 0 (3/6) and ln 6 otherwise
    logits = torch.zeros(1, 4, 4)
    logits[..., 0] = np.log(3.0)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1, 2]])  # positions 1..3 are predicted from 0..2
    mask = torch.tensor([[False, False, True, False]])  # the status is the token at position 2
    ln2, ln6 = np.log(2.0), np.log(6.0)
    assert weighted_token_loss(logits, labels, mask, 1.0).item() == pytest.approx((ln2 + 2 * ln6) / 3, rel=1e-6)
    assert weighted_token_loss(logits, labels, mask, 5.0).item() == pytest.approx((ln2 + 5 * ln6 + ln6) / 3, rel=1e-6)
    # normalized by the accumulated batch's token count when the Trainer gives it
    assert weighted_token_loss(logits, labels, mask, 5.0, num_items=6).item() == pytest.approx((ln2 + 6 * ln6) / 6, rel=1e-6)
    # weight 1 is the causal-LM loss transformers computes on a real batch
    processor, model = tiny_qwen3_vl.processor, tiny_qwen3_vl.model
    batch = collate([encode_chat(processor, _two_turn_chat())], processor.tokenizer.pad_token_id, status_mask=True)
    status = batch.pop("status_mask")
    with torch.no_grad():
        out = model(**batch)
    assert weighted_token_loss(out.logits, batch["labels"], status, 1.0).item() == pytest.approx(out.loss.item(), rel=1e-5)


def _abnormal_chat(frames: int = 8, window: str = "2-3"):
    answer = '{"COT": "c", "status": "abnormal", "anomalies": [{"Attributed Time Region": "%s", "Attributed Label": "Physical Violations"}]}' % window
    return [user(_video(frames, 4.0), "scan this video"), assistant(answer), user(_video(4, 8.0, seed=1), "look closer"), assistant('{"status": "normal"}')]


def test_attention_window_marks_the_named_frames_video_tokens(tiny_qwen3_vl):
    """Frames 2-3 of an 8-frame scan are temporal group 1 of 4 (2 frames per group): the window
    is exactly that group's video tokens, and the query is the position just before the turn-1
    status value."""
    processor = tiny_qwen3_vl.processor
    encoded = encode_chat(processor, _abnormal_chat())
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    groups, height, width = (int(v) for v in encoded.vision["video_grid_thw"][0])
    per_group = height * width // processor.video_processor.merge_size ** 2
    assert groups == 4 and per_group > 0
    scan = (encoded.input_ids == video_id).nonzero().flatten()[: groups * per_group]  # the scan's tokens come first
    assert encoded.window.nonzero().flatten().tolist() == scan[per_group : 2 * per_group].tolist()
    first_status = encoded.status.nonzero().flatten()[0]
    assert encoded.window_query == first_status - 1
    assert processor.tokenizer.decode(encoded.input_ids[encoded.window_query + 1]).strip() in ("abnormal", '"abnormal', "ab")
    # frames 1-4 touch groups 0, 1 and 2; a window past the end keeps the groups that exist
    assert encode_chat(processor, _abnormal_chat(window="1-4")).window.sum() == 3 * per_group
    assert encode_chat(processor, _abnormal_chat(window="6-30")).window.sum() == per_group
    # nothing to supervise: a normal first answer, or an abnormal one without frames
    assert encode_chat(processor, _two_turn_chat()).window is None
    assert encode_chat(processor, _abnormal_chat(window="")).window_query == -1
    # collate shifts the query with the padding and keeps rows without a window at -1
    short = encode_chat(processor, _two_turn_chat()[:2])
    for side in ("right", "left"):
        batch = collate([short, encoded], processor.tokenizer.pad_token_id, side, status_mask=True, attention_window=True)
        pad = batch["input_ids"].shape[1] - encoded.input_ids.numel() if side == "left" else 0
        assert batch["window_query"].tolist() == [-1, encoded.window_query + pad]
        assert batch["window_tokens"][1].nonzero().flatten().tolist() == (encoded.window.nonzero().flatten() + pad).tolist()
        assert not batch["window_tokens"][0].any()
    assert "window_query" not in collate([encoded], processor.tokenizer.pad_token_id)  # not a model input unless asked


def test_window_attention_loss_by_hand():
    from cac_align.cac.train.losses import window_attention_loss

    attentions = torch.zeros(2, 2, 3, 3)
    attentions[0, 0, 2] = torch.tensor([0.5, 0.3, 0.2])
    attentions[0, 1, 2] = torch.tensor([0.1, 0.6, 0.3])
    attentions[1, :, 1] = torch.tensor([0.9, 0.1, 0.0])
    window = torch.tensor([[True, False, True], [True, False, False]])
    # row 0: query 2, window {0, 2}: head mean (0.5 + 0.1) / 2 + (0.2 + 0.3) / 2 = 0.55; row 1 not supervised
    loss, mass = window_attention_loss(attentions, torch.tensor([2, -1]), window, eps=0.0)
    assert loss.item() == pytest.approx(-np.log(0.55), rel=1e-6) and mass.item() == pytest.approx(0.55, rel=1e-6)
    # both rows: mean of -log(0.55) and -log(0.9)
    loss, mass = window_attention_loss(attentions, torch.tensor([2, 1]), window, eps=0.0)
    assert loss.item() == pytest.approx(-(np.log(0.55) + np.log(0.9)) / 2, rel=1e-6) and mass.item() == pytest.approx(0.725, rel=1e-6)
    assert window_attention_loss(attentions, torch.tensor([-1, -1]), window) == (None, None)
    # the gradient raises the window's attention: d loss / d A[0, h, 2, k] = -1 / (2 * 0.55) on the window, 0 elsewhere
    attentions.requires_grad_(True)
    window_attention_loss(attentions, torch.tensor([2, -1]), window, eps=0.0)[0].backward()
    expected = torch.tensor([-1 / 1.1, 0.0, -1 / 1.1])
    for head in range(2):
        torch.testing.assert_close(attentions.grad[0, head, 2], expected)
    assert attentions.grad[1].abs().sum() == 0


# ---------------------------------------------------------------------------------------
# The tiny recipes, end to end
# ---------------------------------------------------------------------------------------
# The tiny Qwen3-VL has 2 LLM layers and injects its second deepstack feature after the *last*
# one, where it only changes the final hidden states of vision tokens; the loss is on answer
# tokens, so that merger gets no gradient at all. (The real 8B model injects at layers 8/16/24
# of 36.) Every other parameter must train.
NO_GRADIENT = "visual.deepstack_merger_list.1."
# ---------------------------------------------------------------------------------------
def _recipe(name, cac_data, out, *extra):
    _, config = load_recipe(REPO_ROOT / f"recipes/cac/{name}.yaml", [f"annotations={cac_data}", f"out_dir={out}", *extra])
    return config


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def _weights(path):
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


@pytest.fixture(scope="module")
def stage1(cac_data, tmp_path_factory):
    from cac_align.jobs.train_cac import run

    out = tmp_path_factory.mktemp("stage1") / "run"
    metrics = run(_recipe("stage1_tiny", cac_data, out))
    return out, metrics


@pytest.mark.slow  # ~19 s with its stage-1 fixture of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_stage1_trains_lora_only_and_lowers_the_loss(stage1):
    from cac_align.vlm.tiny import build_tiny_qwen3_vl

    out, metrics = stage1
    losses = _losses(out)
    assert len(losses) == 6 and all(np.isfinite(losses))
    # each training row carries the mean wall time of its 5 steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert all(0 < row["step_seconds"] < 60 for row in rows)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.1, losses
    assert metrics["eval_loss"] < 6.5 and 0.0 <= metrics["eval_detection_accuracy"] <= 1.0
    # the adapter covers the vision encoder, the merger and the LLM, and every B matrix moved off 0
    adapter = _weights(out / "adapter")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert any(".visual.blocks." in k for k in lora_b) and any(".visual.merger." in k for k in lora_b)
    assert any(".language_model." in k for k in lora_b)
    assert [k for k, v in lora_b.items() if v.abs().max() == 0] == [k for k in lora_b if NO_GRADIENT in k]
    # merged final weights: LoRA-covered linear weights changed, everything else bit-identical
    base = {k: v for k, v in build_tiny_qwen3_vl(seed=0).model.state_dict().items()}
    final = _weights(out / "final")
    covered = {k.split("base_model.model.", 1)[1].replace(".lora_B.weight", ".weight") for k in lora_b if NO_GRADIENT not in k}
    assert covered and set(final) == set(base)
    for name, tensor in final.items():
        if name in covered:
            assert not torch.equal(tensor, base[name]), name
        else:
            assert torch.equal(tensor, base[name]), name
    assert (out / "checkpoints/checkpoint-15").is_dir() and list((out / "tensorboard").glob("events.*"))
    assert json.loads((out / "data.json").read_text())["stats"]["train"]["frame_normal"] > 0


@pytest.mark.slow  # ~17 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_stage2_trains_every_parameter_and_loads_into_score(stage1, cac_data, tmp_path):
    from cac_align.jobs.score import ScoreConfig, run as score
    from cac_align.jobs.train_cac import run

    stage1_out, _ = stage1
    out = tmp_path / "stage2"
    run(_recipe("stage2_tiny", cac_data, out, f"model={stage1_out / 'final'}"))
    losses = _losses(out)
    assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.1, losses
    before, after = _weights(stage1_out / "final"), _weights(out / "final")
    assert set(before) == set(after)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged and unchanged == [k for k in before if NO_GRADIENT in k]
    # the trained checkpoint is an ordinary from_pretrained folder that `cac-align score` loads
    video = load_first_video(cac_data)
    rows = score(ScoreConfig(out_dir=str(tmp_path / "score"), videos=video, reward={"name": "cac", "model": {"name": str(out / "final"), "dtype": "float32", "device": "cpu"}, "options": {"max_new_tokens": 8}}))
    assert len(rows) == 1 and (tmp_path / "score/results.jsonl").exists()


@pytest.mark.slow  # ~4 s (the stage-1 fixture's other users are slow too) of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_freeze_vision_keeps_the_vision_tower(stage1, cac_data, tmp_path):
    from cac_align.jobs.train_cac import run

    stage1_out, _ = stage1
    out = tmp_path / "stage2_frozen"
    run(_recipe("stage2_tiny", cac_data, out, f"model={stage1_out / 'final'}", "freeze_vision=true", "train.max_steps=2"))
    before, after = _weights(stage1_out / "final"), _weights(out / "final")
    vision = [k for k in before if k.startswith("model.visual.")]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    moved = [k for k in before if not k.startswith("model.visual.") and not torch.equal(before[k], after[k])]
    assert any(".language_model." in k for k in moved)
    with pytest.raises(RecipeError, match="freeze_vision applies to full fine-tuning"):
        _recipe("stage1_tiny", cac_data, tmp_path / "x", "freeze_vision=true")


@pytest.mark.slow  # ~4 s (the stage-1 fixture's other users are slow too) of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_status_loss_weight_reaches_the_trainer(stage1, cac_data, tmp_path):
    """Same weights, same first batch: the weighted run's first loss is the plain loss plus
    (w - 1) x the status tokens' cross-entropy, so it is larger; a weight <= 0 is refused."""
    from cac_align.jobs.train_cac import run

    stage1_out, _ = stage1
    common = [f"model={stage1_out / 'final'}", "train.max_steps=1", "train.logging_steps=1", "train.eval_steps=0"]
    run(_recipe("stage2_tiny", cac_data, tmp_path / "plain", *common))
    run(_recipe("stage2_tiny", cac_data, tmp_path / "weighted", *common, "train.status_loss_weight=10"))
    plain, weighted = _losses(tmp_path / "plain")[0], _losses(tmp_path / "weighted")[0]
    assert weighted > plain + 0.05, (plain, weighted)
    with pytest.raises(RecipeError, match="status_loss_weight must be > 0"):
        _recipe("stage2_tiny", cac_data, tmp_path / "x", "train.status_loss_weight=0")


@pytest.mark.slow  # ~9 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_attention_loss_weight_reaches_the_trainer(stage1, cac_data, tmp_path):
    """Same weights, same first batch: the attention run logs the term and its mass, and its
    first loss is the plain loss plus weight x the term; the saved model keeps its default
    attention (eager is for the run only); the option is refused outside stage 2."""
    from cac_align.jobs.train_cac import run

    stage1_out, _ = stage1
    common = [f"model={stage1_out / 'final'}", "train.max_steps=2", "train.logging_steps=1", "train.eval_steps=0", "train.per_device_batch_size=6"]
    run(_recipe("stage2_tiny", cac_data, tmp_path / "plain", *common))
    run(_recipe("stage2_tiny", cac_data, tmp_path / "att", *common, "train.attention_loss_weight=2"))
    lines = [json.loads(line) for line in (tmp_path / "att/metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    first = lines[0]
    assert first["attention_loss"] > 0 and 0 < first["attention_mass"] < 1
    assert first["attention_loss"] == pytest.approx(-np.log(first["attention_mass"]), rel=0.5)  # one batch: log of a mean vs mean of logs
    plain = _losses(tmp_path / "plain")[0]
    assert first["loss"] == pytest.approx(plain + 2 * first["attention_loss"], rel=1e-3)
    before, after = _weights(stage1_out / "final"), _weights(tmp_path / "att/final")
    assert any(not torch.equal(before[k], after[k]) for k in before if ".language_model." in k)
    saved = json.loads((tmp_path / "att/final/config.json").read_text())
    assert "eager" not in json.dumps(saved)
    with pytest.raises(RecipeError, match="attention_loss_weight must be >= 0 and applies to stage 2 only"):
        _recipe("stage1_tiny", cac_data, tmp_path / "x", "train.attention_loss_weight=1")
    with pytest.raises(RecipeError, match="attention_loss_weight must be >= 0"):
        _recipe("stage2_tiny", cac_data, tmp_path / "x", "train.attention_loss_weight=-1")


def load_first_video(annotations):
    return str(annotations.parent / json.loads(annotations.read_text().splitlines()[0])["video"])


@pytest.mark.slow  # ~8 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_resume_continues_exactly(cac_data, tmp_path, caplog):
    import logging

    from cac_align.jobs.train_cac import run

    common = ["train.max_steps=4", "train.save_steps=2", "train.eval_steps=0", "lora.dropout=0.1", "train.logging_steps=1"]
    straight = tmp_path / "straight"
    run(_recipe("stage1_tiny", cac_data, straight, *common))
    resumed = tmp_path / "resumed"
    run(_recipe("stage1_tiny", cac_data, resumed, *common[1:], "train.max_steps=2"))
    shutil.rmtree(resumed / "final")
    with (resumed / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')  # lines of a run killed after the checkpoint
    with caplog.at_level(logging.INFO, logger="cac_align"):
        run(_recipe("stage1_tiny", cac_data, resumed, *common, "resume=true"))
    # it says so, as stage 3, flow-grpo, dpo and repair do
    assert f"train-cac stage 1: resuming from {resumed / 'checkpoints/checkpoint-2'} (step 2)" in caplog.text
    logged = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]  # every line whole
    assert [row["step"] for row in logged if "loss" in row] == [1, 2, 3, 4]  # the killed run's step 3 went
    assert {"step": 3, "loss": 1.0} not in logged
    a, b = _weights(straight / "adapter"), _weights(resumed / "adapter")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-7, rtol=0)
    # resume=true on a finished run: nothing left to train, no second final row (it had
    # train_loss 0.0), no step past the end; the model is as it was
    before = (straight / "metrics.jsonl").read_text()
    again = run(_recipe("stage1_tiny", cac_data, straight, *common, "resume=true"))
    assert (straight / "metrics.jsonl").read_text() == before
    assert again == json.loads(before.splitlines()[-1]) and again["train_loss"] > 0
    for key, tensor in _weights(straight / "adapter").items():
        torch.testing.assert_close(tensor, a[key], atol=0, rtol=0)
    # a longer max_steps on the same run continues it (max_steps may change on resume)
    run(_recipe("stage1_tiny", cac_data, straight, *common[1:], "train.max_steps=5", "resume=true"))
    assert [json.loads(line)["step"] for line in (straight / "metrics.jsonl").read_text().splitlines()][-1] == 5


def test_run_folder_guards(cac_data, tmp_path):
    from cac_align.jobs.train_cac import run

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")  # the user's own files in the run folder
    (out / "my_data").mkdir()
    (out / "my_data" / "x.json").write_text("{}")
    # resume=true with nothing to resume starts from step 0 (a warning), as flow-grpo does
    run(_recipe("stage1_tiny", cac_data, out, "resume=true", "train.max_steps=1", "train.eval_steps=0"))
    assert (out / "final").is_dir()
    with pytest.raises(RecipeError, match="already holds"):
        run(_recipe("stage1_tiny", cac_data, out, "train.max_steps=1", "train.eval_steps=0"))
    with pytest.raises(RecipeError, match=r"different config \(differs in: train.learning_rate\)"):
        run(_recipe("stage1_tiny", cac_data, out, "train.max_steps=1", "train.eval_steps=0", "train.learning_rate=0.1", "resume=true"))
    # overwrite=true replaces the run's own outputs and nothing else
    (out / "checkpoints" / "stale-marker").write_text("")
    run(_recipe("stage1_tiny", cac_data, out, "train.max_steps=1", "train.eval_steps=0", "train.learning_rate=0.1", "overwrite=true"))
    assert (out / "notes.txt").read_text() == "my notes" and (out / "my_data" / "x.json").exists()
    assert not (out / "checkpoints" / "stale-marker").exists() and (out / "final").is_dir()
    assert read_manifest(out)["fingerprint"]["train"]["learning_rate"] == 0.1
    # a folder of another job is refused with that job's name
    with pytest.raises(RecipeError, match="holds a train-cac run; a synth run needs a folder of its own"):
        from cac_align.data.synthetic import SynthConfig, generate

        generate(SynthConfig(out_dir=str(out), n=1))


def test_save_steps_0_writes_no_checkpoint(cac_data, tmp_path):
    # 0 means none, not even at the last step, as flow-grpo's and dpo's checkpoint_every=0
    # (transformers alone would still save the last one); final/ is the run's output
    from cac_align.jobs.train_cac import run

    out = tmp_path / "run"
    run(_recipe("stage1_tiny", cac_data, out, "train.max_steps=1", "train.eval_steps=0", "train.save_steps=0"))
    assert not list((out / "checkpoints").glob("checkpoint-*")) and (out / "final/model.safetensors").is_file()
    with pytest.raises(RecipeError, match=r"train.save_steps and train.eval_steps must be >= 0 \(0: none\), got -1 and 0"):
        load_recipe(REPO_ROOT / "recipes/cac/stage1_tiny.yaml", ["train.save_steps=-1", "train.eval_steps=0"])


def test_unknown_stage_and_typos_are_refused():
    with pytest.raises(RecipeError, match="stage must be 1, 2 or 3"):
        load_recipe(REPO_ROOT / "recipes/cac/stage1_tiny.yaml", ["stage=4"])
    with pytest.raises(RecipeError, match="learning_rat"):
        load_recipe(REPO_ROOT / "recipes/cac/stage1_tiny.yaml", ["train.learning_rat=1"])


@pytest.mark.slow  # two processes: `pytest -m slow` (.ci/run runs it after the default suite)
def test_two_processes_split_the_data(cac_data, tmp_path):
    """`accelerate launch` with two CPU processes (gloo): the 12 stage-1 frames at 2 per process
    take 3 steps per epoch (one process would need 6), and the run completes with one final model."""
    import os
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "cac_align.cli", "train-cac", "--config", str(REPO_ROOT / "recipes/cac/stage1_tiny.yaml"),
               f"annotations={cac_data}", f"out_dir={out}", "train.max_steps=3", "train.eval_steps=3", "train.save_steps=3"]
    done = forked_launch.accelerate_launch(command, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((out / "data.json").read_text())["stats"]["train"]["frame_anomalous"] == 6
    assert [e["epoch"] for e in logs if "train_loss" in e] == [1.0]
    assert any("eval_detection_accuracy" in e for e in logs)
    assert (out / "final/model.safetensors").exists() and (out / "checkpoints/checkpoint-3").is_dir()


def test_accelerate_configs_load_with_accelerates_own_parser():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "zero2.yaml": "DEEPSPEED", "zero3.yaml": "DEEPSPEED"}
    for name, kind in expected.items():
        config = load_config_from_file(str(REPO_ROOT / "recipes/accelerate" / name))
        assert str(config.distributed_type).endswith(kind), name


def test_missing_weights_and_empty_splits_are_clear_errors(cac_data, tmp_path):
    from cac_align.jobs.train_cac import run
    from cac_align.loading import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="model"):
        run(_recipe("stage2_tiny", cac_data, tmp_path / "a", f"model={tmp_path / 'no_such_stage1'}"))
    with pytest.raises(RecipeError, match="stage 1 has no training samples"):
        run(_recipe("stage1_tiny", cac_data, tmp_path / "b", "data.splits={stage1: 0.0, stage2: 1.0}"))
