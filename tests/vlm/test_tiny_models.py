"""Tiny offline models: real classes, and the save_pretrained -> from_pretrained round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cac_align.gen.families.wan import build_tiny_wan_pipeline, load_wan_pipeline
from cac_align.loading import WeightsNotFoundError
from cac_align.vlm.hf import load_vlm
from conftest import smooth_video


def _video_inputs(vlm, frames: np.ndarray, fps: float):
    from transformers.video_utils import VideoMetadata

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Is this video normal?"}]}]
    text = vlm.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    meta = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=list(range(len(frames))))
    return vlm.processor(
        text=[text], videos=[frames], video_metadata=[meta], return_tensors="pt", videos_kwargs={"do_sample_frames": False}
    )


def test_tiny_tokenizer_round_trips_text_and_knows_special_tokens():
    from cac_align.vlm.tiny import SPECIAL_TOKENS, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    text = '{"status": "abnormal", "bbox": [120, 340, 560, 780]} — ünïcode'
    assert tok.decode(tok(text)["input_ids"]) == text
    for special in SPECIAL_TOKENS:
        assert len(tok(special)["input_ids"]) == 1


def test_qwen3_vl_prompt_has_timestamps_and_video_tokens(tiny_qwen3_vl):
    inputs = _video_inputs(tiny_qwen3_vl, smooth_video(8, 64, 96), fps=4.0)
    text = tiny_qwen3_vl.processor.tokenizer.decode(inputs["input_ids"][0])
    # Qwen3-VL stamps each pair of frames with its mean time: (0 + 0.25) / 2 = 0.125 -> "0.1".
    assert "<0.1 seconds>" in text and "<1.6 seconds>" in text
    assert inputs["video_grid_thw"].tolist() == [[4, 4, 6]]  # 8 frames / temporal patch 2; 64x96 / 16


@pytest.mark.parametrize("name", ["tiny_qwen3_vl", "tiny_qwen2_5_vl"])
def test_vlm_save_then_load_by_path_gives_identical_logits(name, request, tmp_path):
    tiny = request.getfixturevalue(name)
    tiny.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").exists()
    model, processor = load_vlm(str(tmp_path), dtype="float32", device="cpu")
    assert type(model) is type(tiny.model)
    assert not model.training
    inputs = _video_inputs(tiny, smooth_video(4, 64, 64), fps=4.0) if "qwen3" in name else None
    if inputs is None:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Rate it."}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], videos=[smooth_video(4, 56, 56)], return_tensors="pt")
    with torch.no_grad():
        expected = tiny.model(**inputs).logits
        actual = model(**inputs).logits
    assert expected.shape[-1] == len(processor.tokenizer)
    torch.testing.assert_close(actual, expected)


def test_tiny_vlm_generates_tokens(tiny_qwen3_vl):
    inputs = _video_inputs(tiny_qwen3_vl, smooth_video(4, 64, 64), fps=4.0)
    out = tiny_qwen3_vl.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_tiny_builders_are_seeded(tiny_qwen3_vl):
    from cac_align.vlm.tiny import build_tiny_qwen3_vl

    same = build_tiny_qwen3_vl(seed=0).model.state_dict()
    other = build_tiny_qwen3_vl(seed=1).model.state_dict()
    ref = tiny_qwen3_vl.model.state_dict()
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(same[key], ref[key])
    assert not torch.equal(other[key], ref[key])


def test_wan_save_then_load_by_path_generates_the_same_video(tmp_path):
    pipe = build_tiny_wan_pipeline(seed=0)
    kwargs = dict(num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=1.0, output_type="pt")
    prompts = ["a dog in a park", "a red car"]
    expected = pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert expected.shape == (2, 9, 3, 32, 32)  # (B, F, C, H, W) in [0, 1]
    assert 0.0 <= expected.min() and expected.max() <= 1.0
    pipe.save_pretrained(str(tmp_path))
    loaded = load_wan_pipeline(str(tmp_path), dtype="float32", device="cpu")
    assert type(loaded).__name__ == "WanPipeline"
    actual = loaded(prompts, generator=torch.Generator().manual_seed(0), **kwargs).frames
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_a_missing_run_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from cac_align.loading import check_weights_source, looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # "runs/" exists here, so "runs/cac_stage3" is a run folder that is missing: a clear error
    # at once, not minutes of hub retries for a repo "cac_stage3" of an owner "runs"
    with pytest.raises(WeightsNotFoundError, match=r"reward.model.name='runs/cac_stage3': no such directory"):
        check_weights_source("runs/cac_stage3", "reward.model.name")
    assert looks_like_path("runs/x") and looks_like_path("a/b/c") and looks_like_path("my model/x")
    # the hub form stays a hub id when no such local folder exists
    assert not looks_like_path("Qwen/Qwen3-VL-8B-Instruct")


def _hub_at(monkeypatch, endpoint):
    import huggingface_hub.constants

    from cac_align import loading

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "_REACHABLE", {})


def test_hub_ids_without_the_hub_fail_at_once_or_load_from_the_cache(tmp_path, monkeypatch, tiny_qwen3_vl):
    import socket
    import time

    import huggingface_hub.constants

    from cac_align.loading import check_weights_source

    # a hub that answers: the id is passed through to from_pretrained
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        _hub_at(monkeypatch, f"http://127.0.0.1:{port}")
        assert check_weights_source("Qwen/Qwen3-VL-8B-Instruct") == "Qwen/Qwen3-VL-8B-Instruct"
    # no hub (the port is closed now): one clear line within seconds, no retries
    _hub_at(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match=r"reward.model.name='org/tiny-cac' is a hub id, but the hub .* cannot be reached .* not in the local cache"):
        check_weights_source("org/tiny-cac", "reward.model.name")
    assert time.monotonic() - start < 5
    # ... unless the model is in the local hub cache: then that folder is loaded, offline
    snapshot = tmp_path / "hub" / "models--org--tiny-cac" / "snapshots" / "abc123"
    tiny_qwen3_vl.model.save_pretrained(snapshot)
    tiny_qwen3_vl.processor.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert check_weights_source("org/tiny-cac") == str(snapshot)
    model, _ = load_vlm("org/tiny-cac", dtype="float32", device="cpu")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"


def test_missing_weight_paths_say_which_key_to_set(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"cac.model=.*no such directory.*save_pretrained"):
        load_vlm(str(tmp_path / "absent"), key="cac.model")
    with pytest.raises(WeightsNotFoundError, match=r"generator.model=.*no such directory"):
        load_wan_pipeline(str(tmp_path / "absent"), key="generator.model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="could not load weights from model="):
        load_vlm(str(empty))


def test_one_tiny_random_dispatch_for_scoring_and_training():
    """``tiny-random:<kind>`` is read in one place: scoring accepts every kind, training only the
    Qwen3-VL ones; an unknown name is refused naming the key and the accepted names."""
    import dataclasses

    from cac_align.cac.train.settings import TrainCaCConfig
    from cac_align.cac.train.setup import load_model
    from cac_align.config import RecipeError
    from cac_align.vlm.config import build_tiny_vlm

    assert type(build_tiny_vlm("tiny-random:qwen2_5_vl", "reward.model.name").model).__name__.startswith("Qwen2_5_VL")
    with pytest.raises(RecipeError, match=r"reward\.model\.name='tiny-random:qwen9'.*'tiny-random:qwen3_vl'.*'tiny-random:qwen2_5_vl'"):
        build_tiny_vlm("tiny-random:qwen9", "reward.model.name")
    config = TrainCaCConfig(stage=2, annotations="a.jsonl", out_dir="out", model="tiny-random:qwen2_5_vl")
    with pytest.raises(RecipeError, match=r"^model='tiny-random:qwen2_5_vl': .*'tiny-random:qwen3_vl', 'tiny-random:qwen3_vl_small'$"):
        load_model(config)
    # the code-path model trains from the weights scoring builds; the small one from the run's seed
    model, _ = load_model(dataclasses.replace(config, model="tiny-random:qwen3_vl"))
    scored = build_tiny_vlm("tiny-random:qwen3_vl", "model").model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), scored.state_dict().values()))
