"""The in-process backend on the tiny Qwen3-VL: teacher-forced choice probabilities, batching, timestamps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cac_align.video import Video
from cac_align.vlm.backend import Backend, user, videos_of
from cac_align.vlm.hf import HFBackend
from conftest import smooth_video


@pytest.fixture(scope="module")
def backend(tiny_qwen3_vl):
    return HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=4)


def _requests(n: int) -> list:
    return [
        [user(Video(smooth_video(4 + 2 * (i % 2), 64, 64, seed=i), 4.0), f"Video {i}: normal or abnormal?")]
        for i in range(n)
    ]


def test_hf_backend_satisfies_the_protocol(backend):
    assert isinstance(backend, Backend)


def test_choice_probs_is_the_product_of_teacher_forced_token_probs(backend, tiny_qwen3_vl):
    requests = _requests(2)
    prefixes = ['{"status": "', '{"cot": "look", "status": "']
    choices = ["normal", "abnormal"]
    probs = backend.choice_probs(requests, prefixes, choices)
    assert probs.shape == (2, 2)
    tok = tiny_qwen3_vl.processor.tokenizer
    for i, (request, prefix) in enumerate(zip(requests, prefixes)):
        for c, choice in enumerate(choices):
            # By hand, one unpadded sequence at a time: P = prod_k softmax(logits[t_k - 1])[token_k].
            inputs = backend._encode([request], [prefix])
            ids = tok(choice, add_special_tokens=False)["input_ids"]
            n_prompt = inputs["input_ids"].shape[1]
            extended = {
                k: torch.cat([v, torch.tensor([ids]) if k == "input_ids" else torch.full((1, len(ids)), 1 if k == "attention_mask" else 0)], 1)
                if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == n_prompt
                else v
                for k, v in inputs.items()
            }
            with torch.no_grad():
                logits = tiny_qwen3_vl.model(**extended).logits[0]
            expected = 1.0
            for k, token in enumerate(ids):
                expected *= torch.softmax(logits[n_prompt + k - 1].double(), -1)[token].item()
            assert probs[i, c] == pytest.approx(expected, rel=1e-4)


def test_choices_sharing_a_first_token_are_told_apart(backend, tiny_qwen3_vl):
    tok = tiny_qwen3_vl.processor.tokenizer
    # "normal" is one token; "normally" is that token plus two more; "abnormality" extends "abnormal".
    ids = {w: tok(w, add_special_tokens=False)["input_ids"] for w in ["normal", "normally", "abnormal", "abnormality"]}
    assert ids["normally"][0] == ids["normal"][0] and len(ids["normally"]) > 1
    assert ids["abnormality"][0] == ids["abnormal"][0] and len(ids["abnormality"]) > 1
    probs = backend.choice_probs(_requests(1), ['{"status": "'], ["normal", "normally", "abnormal", "abnormality"])[0]
    assert np.all(probs > 0) and np.all(probs < 1)
    # A longer candidate multiplies more probabilities (< 1) onto the shared first token's.
    assert probs[1] < probs[0] and probs[3] < probs[2]
    assert probs[1] != pytest.approx(probs[0], rel=1e-3)


def test_batched_equals_one_by_one(backend, tiny_qwen3_vl):
    requests = _requests(5)  # mixed frame counts -> real left padding; 5 > max_batch_size splits chunks
    prefixes = ['{"status": "'] * 5
    batched = backend.choice_probs(requests, prefixes, ["normal", "abnormal"])
    single = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=1)
    one_by_one = single.choice_probs(requests, prefixes, ["normal", "abnormal"])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4)
    gen_batched = backend.generate(requests, max_new_tokens=6)
    gen_single = single.generate(requests, max_new_tokens=6)
    assert [c.token_ids for c in gen_batched] == [c.token_ids for c in gen_single]
    assert all(0 < len(c.token_ids) <= 6 for c in gen_batched)


def test_prompt_states_source_timestamps_of_a_cropped_clip(backend):
    clip = Video(smooth_video(32, 64, 64), 16.0).crop(1.0, 2.0).resample(8)  # frames at 1.0, 1.125, ...
    inputs = backend._encode([[user(clip, "Where is the defect?")]], [""])
    text = backend.tokenizer.decode(inputs["input_ids"][0])
    # Pairs of frames are stamped with their mean time: (1.0 + 1.125) / 2 -> "1.1"; last (1.75 + 1.875) / 2 -> "1.8".
    assert "<1.1 seconds>" in text and "<1.8 seconds>" in text and "<0.1 seconds>" not in text
    assert videos_of([user(clip, "x")]) == [clip]


def test_choice_probs_input_errors(backend):
    with pytest.raises(ValueError, match="prefixes"):
        backend.choice_probs(_requests(2), ['{"status": "'], ["normal"])
    with pytest.raises(ValueError, match="choices is empty"):
        backend.choice_probs(_requests(1), [""], [])
