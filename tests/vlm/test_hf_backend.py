"""The in-process backend on the tiny Qwen3-VL: teacher-forced choice probabilities, batching, timestamps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cac_align.video import Video
from cac_align.vlm.backend import Backend, user, videos_of
from cac_align.vlm.hf import HFBackend
from conftest import ForceAnswer, smooth_video


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
            expected = _by_hand(backend, tiny_qwen3_vl.model, tok, request, prefix, choice)
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


def _by_hand(backend, model, tok, request, prefix, choice):
    """P(choice | request, prefix) on one unpadded sequence: prod_k softmax(logits[t_k - 1])[token_k]."""
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
        logits = model(**extended).logits[0]
    return float(np.prod([torch.softmax(logits[n_prompt + k - 1].double(), -1)[t].item() for k, t in enumerate(ids)]))


CHOICES = ["normal", "normally", "abnormality", "abnormal"]  # one-token and multi-token candidates


def test_multi_token_choices_from_one_encoding_equal_teacher_forcing(backend, tiny_qwen3_vl):
    tok = tiny_qwen3_vl.processor.tokenizer
    requests = _requests(3)  # mixed frame counts: left padding inside the batch
    prefixes = ['{"status": "', '{"cot": "look", "status": "', "ab"]
    probs = backend.choice_probs(requests, prefixes, CHOICES)
    for i in range(3):
        for c, choice in enumerate(CHOICES):
            assert probs[i, c] == pytest.approx(_by_hand(backend, tiny_qwen3_vl.model, tok, requests[i], prefixes[i], choice), rel=1e-5)


class _VideoCounter:
    """Counts the videos the vision tower encodes (rows of its grid_thw)."""

    def __init__(self, model):
        self.videos = 0
        self.handle = model.model.visual.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self.videos += int(grid.shape[0])


def test_generate_scored_reads_the_status_from_its_own_generation(tiny_qwen3_vl):
    from transformers import LogitsProcessorList

    tok = tiny_qwen3_vl.processor.tokenizer
    answer = tok('{"status": "normal", "anomalies": []}', add_special_tokens=False)["input_ids"]
    forced = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=4,
                       generate_kwargs={"logits_processor": LogitsProcessorList([ForceAnswer(answer, tok.eos_token_id)])})
    requests = _requests(3)
    counter = _VideoCounter(tiny_qwen3_vl.model)
    try:
        completions, probs = forced.generate_scored(requests, CHOICES, lambda text: text[: text.index('"status": "') + 11], max_new_tokens=len(answer) + 1)
        once = counter.videos
        counter.videos = 0
        forced.generate(requests, max_new_tokens=len(answer) + 1)
        forced.choice_probs(requests, ['{"status": "'] * 3, CHOICES)
        twice = counter.videos
    finally:
        counter.handle.remove()
    assert [c.text for c in completions] == ['{"status": "normal", "anomalies": []}'] * 3
    # each turn's video is encoded once (generation and status together), not once more to score it
    assert once == 3 and twice == 6
    for i in range(3):
        for c, choice in enumerate(CHOICES):
            assert probs[i, c] == pytest.approx(_by_hand(forced, tiny_qwen3_vl.model, tok, requests[i], '{"status": "', choice), rel=1e-5)
    # an answer without the field is NaN (the caller reports it); a prefix ending inside a token
    # is scored by re-encoding, with the same numbers
    _, none = forced.generate_scored(requests[:1], CHOICES, lambda text: None, max_new_tokens=len(answer) + 1)
    assert np.isnan(none).all()
    _, inside = forced.generate_scored(requests[:1], CHOICES, lambda text: text[:6], max_new_tokens=len(answer) + 1)
    np.testing.assert_allclose(inside[0], forced.choice_probs(requests[:1], ['{"stat'], CHOICES)[0], rtol=1e-6)


def test_generate_scored_keeps_only_the_choices_log_probs_and_records_only_in_its_call(tiny_qwen3_vl, monkeypatch):
    """The status is read through one hook on the output layer per model, not generate's
    output_logits (a (batch, vocabulary) float32 copy per generated token); it records only
    inside generate_scored, also after a failed call."""
    backend = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=4)
    again = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=2)
    head = tiny_qwen3_vl.model.get_output_embeddings()
    recorder = tiny_qwen3_vl.model._cac_align_step_recorder
    assert again._recorder is backend._recorder is recorder  # one hook per model, however many backends
    assert sum(hook is recorder for hook in head._forward_hooks.values()) == 1
    seen = {}
    generate = tiny_qwen3_vl.model.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        seen["recording during"] = recorder.choice_ids is not None
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny_qwen3_vl.model, "generate", spy)
    completions, probs = backend.generate_scored(_requests(2), CHOICES, lambda text: "", max_new_tokens=3)
    assert not seen.get("output_logits", False) and not seen.get("output_scores", False)
    assert seen["recording during"] and recorder.choice_ids is None
    # prefix "" is the first generated token's distribution: the prompt alone, re-encoded
    np.testing.assert_allclose(probs, backend.choice_probs(_requests(2), ["", ""], CHOICES), rtol=1e-5)
    recorded = len(recorder.log_probs)
    backend.generate(_requests(1), max_new_tokens=3)  # plain generation: nothing recorded
    assert len(recorder.log_probs) == recorded

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tiny_qwen3_vl.model, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        backend.generate_scored(_requests(1), CHOICES, lambda text: "", max_new_tokens=3)
    assert recorder.choice_ids is None


def test_cac_scoring_encodes_each_turns_video_once(tiny_qwen3_vl):
    from transformers import LogitsProcessorList

    from cac_align.cac.infer import CaCOptions, CaCScorer

    tok = tiny_qwen3_vl.processor.tokenizer
    answer = tok('{"COT": "fine", "status": "normal", "anomalies": []}', add_special_tokens=False)["input_ids"]
    forced = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=4,
                       generate_kwargs={"logits_processor": LogitsProcessorList([ForceAnswer(answer, tok.eos_token_id)])})
    videos = [Video(smooth_video(8, 64, 64, seed=i), 4.0) for i in range(2)]
    counter = _VideoCounter(tiny_qwen3_vl.model)
    try:
        results = CaCScorer(forced, CaCOptions(max_new_tokens=len(answer) + 1)).score(videos)
    finally:
        counter.handle.remove()
    assert counter.videos == 2  # turn 1 only (both normal): one encoding per video, scoring included
    for result in results:
        assert result.valid and result.status == "normal" and result.turn2 is None
        p_normal, p_abnormal = result.turn1.p_normal, result.turn1.p_abnormal
        assert result.reward == pytest.approx(p_normal / (p_normal + p_abnormal))


def test_sample_token_log_probs_reads_the_distribution_each_token_was_drawn_from(tiny_qwen3_vl):
    """The log-probabilities equal log-softmax of generate's own processed scores (same seed), one
    row per generated token; top-k leaves the removed tokens at probability 0."""
    model, processor = tiny_qwen3_vl.model, tiny_qwen3_vl.processor
    backend = HFBackend(model, processor)
    request = [user(Video(smooth_video(4, 32, 64), 4.0), "Describe.")]
    ids = [5, 6, 7]
    saved = model.generation_config.top_k
    model.generation_config.top_k = 2
    try:
        completions, log_probs = backend.sample_token_log_probs([request], ids, max_new_tokens=6, temperature=0.7, seed=3)
        torch.manual_seed(3)
        inputs = backend._encode([request], [""])
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=True, temperature=0.7, output_scores=True, return_dict_in_generate=True)
    finally:
        model.generation_config.top_k = saved
    generated = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    assert completions[0].token_ids == generated[: len(completions[0].token_ids)]
    want = np.stack([torch.log_softmax(s[0].float(), -1)[ids].double().numpy() for s in out.scores])[: len(generated)]
    assert log_probs[0].shape == (len(completions[0].token_ids), 3)
    np.testing.assert_allclose(log_probs[0], want[: len(log_probs[0])], rtol=0, atol=1e-12)
    assert (np.isinf(log_probs[0]).sum(axis=1) >= 1).all()  # top-2 keeps at most two of any three tokens
    with pytest.raises(ValueError, match="temperature must be > 0"):
        backend.sample_token_log_probs([request], ids, temperature=0.0)


def test_chat_template_kwargs_reach_the_template(tiny_qwen3_vl):
    """A template setting (``enable_thinking``) renders differently in-process when the model
    section sets it, and the prompt the model reads changes with it."""
    import copy

    processor = copy.copy(tiny_qwen3_vl.processor)
    processor.chat_template = (
        "{%- for m in messages -%}<|im_start|>{{ m['role'] }}{%- for p in m['content'] -%}"
        "{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}<|im_end|>{%- endfor -%}"
        "<|im_start|>assistant{%- if enable_thinking is defined and not enable_thinking -%}<think></think>{%- endif -%}"
    )
    request = [{"role": "user", "content": [{"type": "text", "text": "Which is better?"}]}]
    plain = HFBackend(tiny_qwen3_vl.model, processor)
    no_thinking = HFBackend(tiny_qwen3_vl.model, processor, chat_template_kwargs={"enable_thinking": False})
    texts = [processor.tokenizer.decode(b._encode([request], [""])["input_ids"][0]) for b in (plain, no_thinking)]
    assert texts == ["<|im_start|>userWhich is better?<|im_end|><|im_start|>assistant",
                     "<|im_start|>userWhich is better?<|im_end|><|im_start|>assistant<think></think>"]


def test_no_deprecation_from_our_calls_with_the_installed_transformers(backend, tiny_qwen3_vl):
    """transformers 5.24 renamed the KV cache (``past_key_values`` -> ``cache``) and logs a
    deprecation, once per process, for the old name in a call or read from an output. Every path
    of ours that continues a cache (multi-token choices, generate_scored) must use the new name
    where it exists."""
    import logging
    import warnings

    logging.Logger.warning_once.cache_clear()  # transformers logs each deprecation once per process
    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    from transformers import LogitsProcessorList

    tok = tiny_qwen3_vl.processor.tokenizer
    answer = tok('{"status": "normal"}', add_special_tokens=False)["input_ids"]
    forced = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=4,
                       generate_kwargs={"logits_processor": LogitsProcessorList([ForceAnswer(answer, tok.eos_token_id)])})
    handler = Keep(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            requests = _requests(2)
            backend.choice_probs(requests, ['{"status": "', "ab"], CHOICES)  # a multi-token choice continues the cache
            _, probs = forced.generate_scored(requests, CHOICES, lambda text: text[: text.index('"status": "') + 11], max_new_tokens=len(answer) + 1)
            assert np.isfinite(probs).all()  # read from the generation's own cache
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    deprecations = [m for m in said if "deprecat" in m.lower()] + [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []
