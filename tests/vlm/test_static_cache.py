"""Generation on a static KV cache: the same answers and probabilities as the dynamic cache, and
one compiled decode graph per shape bucket, never one per call.

The decode step is compiled through transformers' own path (``generate`` on a static cache with a
``CompileConfig``) by a dynamo backend that counts the graphs it is given and runs them eagerly,
so the test sees every compilation without waiting for inductor on a CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.video import Video
from cac_align.vlm.backend import user
from cac_align.vlm.hf import HFBackend, StaticShapes, bucket_size
from conftest import ForceAnswer, KeepingCompiler, compile_config, smooth_video


@pytest.fixture(scope="module")
def qwen3():
    """A tiny Qwen3-VL of this module's own: compiled state attaches to the model."""
    from cac_align.vlm.tiny import build_tiny_qwen3_vl

    return build_tiny_qwen3_vl(seed=0)


def _requests(n, offset=0):
    return [
        [user(Video(smooth_video(4 + 2 * ((i + offset) % 2), 64, 64, seed=i + offset), 4.0), f"Video {i + offset}: normal?")]
        for i in range(n)
    ]


def test_buckets():
    assert [bucket_size(n, (1, 4, 8)) for n in (1, 2, 4, 5, 8)] == [1, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="exceed the largest batch bucket 8"):
        bucket_size(9, (1, 4, 8))
    shapes = StaticShapes(max_batch_size=6, batch_buckets=(1, 4, 8, 16), length_multiple=64)
    assert shapes.buckets == (1, 4, 6)  # capped at the batch size, which is always a bucket
    # a cache for the padded prompt and the budget, rounded up: 130 + 20 -> 192
    assert shapes.cache_length(130, 20) == 192 and shapes.cache_length(10, 20) == 64
    import torch._dynamo

    # each shape compiles on purpose: dynamo's default of 8 graphs per forward would turn the step eager past it
    assert torch._dynamo.config.recompile_limit >= 64
    with pytest.raises(ValueError, match="cache must be one of"):
        HFBackend(None, None, cache="paged")


def test_auto_switches_to_static_on_cuda_at_the_first_full_batch():
    import torch

    shapes = StaticShapes(max_batch_size=8, auto=True)
    assert shapes.buckets == (8,)  # one compiled batch size: a short batch is padded to it
    assert StaticShapes(max_batch_size=8, batch_buckets=(4,), auto=True).buckets == (4, 8)  # unless buckets are given
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only the device's type is read
    assert not shapes.engaged(8, cpu) and not shapes.engaged(100, cpu)  # never on a CPU
    assert not shapes.engaged(7, cuda)  # a one-off call of a few videos: no compile
    assert shapes.engaged(8, cuda)  # a full batch: static from now on
    assert shapes.engaged(1, cuda)  # ... also for a short call (padded to 8)
    static = StaticShapes(max_batch_size=8)
    assert static.engaged(1, cpu) and static.buckets == (1, 4, 8)  # "static" is static everywhere
    single = StaticShapes(max_batch_size=1, auto=True)
    assert not single.engaged(1, cuda) and single.engaged(2, cuda)  # one video alone never compiles


@pytest.mark.slow  # ~11 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_static_generation_equals_dynamic_and_compiles_once_per_bucket(qwen3, monkeypatch):
    counter = KeepingCompiler()
    dynamic = HFBackend(qwen3.model, qwen3.processor, max_batch_size=8)
    static = HFBackend(qwen3.model, qwen3.processor, max_batch_size=8, cache="static", batch_buckets=(1, 4, 8),
                       length_multiple=64, compile_config=compile_config(counter))
    shapes = []
    generate = qwen3.model.generate

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return generate(*args, **kwargs)

    monkeypatch.setattr(qwen3.model, "generate", spy)
    requests = _requests(3)  # mixed frame counts: left padding inside the batch
    expected = [c.token_ids for c in dynamic.generate(requests, max_new_tokens=10)]
    got = [c.token_ids for c in static.generate(requests, max_new_tokens=10)]
    assert got == expected and all(len(ids) == 10 for ids in got)  # greedy: token for token
    # 3 rows went in as a bucket of 4, prompts left-padded to a multiple of 64
    assert shapes[-1][0] == 4 and shapes[-1][1] % 64 == 0 and shapes[-1][1] > shapes[0][1]
    compiled = len(counter.graphs)
    assert compiled >= 1
    # another batch of the same bucket (2 rows -> 4, other prompts): no new graph
    assert [c.token_ids for c in static.generate(_requests(2, offset=5), max_new_tokens=10)] == [
        c.token_ids for c in dynamic.generate(_requests(2, offset=5), max_new_tokens=10)
    ]
    assert len(counter.graphs) == compiled
    # a new bucket (1 row) compiles once; the next single row reuses it
    static.generate(_requests(1, offset=7), max_new_tokens=10)
    after_new_bucket = len(counter.graphs)
    assert after_new_bucket > compiled
    static.generate(_requests(1, offset=9), max_new_tokens=10)
    assert len(counter.graphs) == after_new_bucket


@pytest.mark.slow  # ~13 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_cac_two_turn_rewards_equal_in_both_modes(qwen3):
    """CaC's status probabilities read from the generation itself (first token from the decode
    step, longer candidates from the cache): the same numbers on a static, compiled cache."""
    from transformers import LogitsProcessorList

    from cac_align.cac.infer import CaCOptions, CaCScorer

    tok = qwen3.processor.tokenizer
    text = json.dumps({"cot": "look", "status": "abnormal", "anomalies": [
        {"type": "Human Distortion", "time": [0.5, 1.5], "bbox": {"frame 0": [10, 20, 30, 40]}}]})
    answer = tok(text, add_special_tokens=False)["input_ids"]
    options = CaCOptions(max_new_tokens=len(answer) + 1)
    videos = [Video(smooth_video(8, 64, 64, seed=i), 4.0) for i in range(3)]
    counter = KeepingCompiler()
    results = {}
    for mode in ("dynamic", "static"):
        force = LogitsProcessorList([ForceAnswer(answer, tok.eos_token_id)])
        extra = {"cache": "static", "batch_buckets": (1, 4), "length_multiple": 64, "compile_config": compile_config(counter)} if mode == "static" else {}
        backend = HFBackend(qwen3.model, qwen3.processor, max_batch_size=4, generate_kwargs={"logits_processor": force}, **extra)
        results[mode] = CaCScorer(backend, options).score(videos)
    assert len(counter.graphs) >= 1  # the static run did compile its decode step
    for d, s in zip(results["dynamic"], results["static"]):
        assert d.valid and s.valid and d.status == s.status == "abnormal" and s.turn2 is not None
        assert s.reward == pytest.approx(d.reward, abs=1e-5)
        a, b = d.turn2, s.turn2  # the final turn's status probabilities give the reward (CaC Eq. 7)
        assert a.p_normal is not None and 0 < a.p_normal < 1
        assert b.p_normal == pytest.approx(a.p_normal, rel=1e-5) and b.p_abnormal == pytest.approx(a.p_abnormal, rel=1e-5)
        assert s.turn1.text == d.turn1.text and s.window_s == d.window_s


@pytest.mark.slow  # ~14 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_unified_reward_equal_in_both_modes(tiny_qwen2_5_vl):
    from transformers import LogitsProcessorList

    from cac_align.rewards.unified import UnifiedReward
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl

    tiny = build_tiny_qwen2_5_vl(seed=0)  # its own model: compiled state attaches to it
    tok = tiny.processor.tokenizer
    answer = tok("visual quality: 3\n temporal consistency: 4\n dynamic degree: 2\n text-to-video alignment: 3\n factual consistency: 1",
                 add_special_tokens=False)["input_ids"]
    videos = [Video(smooth_video(12, 64, 64, seed=i), 16.0) for i in range(3)]
    counter = KeepingCompiler()
    static_kwargs = {"cache": "static", "batch_buckets": (4,), "length_multiple": 64, "compile_config": compile_config(counter)}
    outs = {}
    for mode, extra in (("dynamic", {}), ("static", static_kwargs)):
        forced = HFBackend(tiny.model, tiny.processor, max_batch_size=4,
                           generate_kwargs={"logits_processor": LogitsProcessorList([ForceAnswer(answer, tok.eos_token_id)])}, **extra)
        free = HFBackend(tiny.model, tiny.processor, max_batch_size=4, **extra)
        outs[mode] = (
            UnifiedReward(forced, num_frames=4, max_new_tokens=len(answer) + 1)(videos, ["a", "b", "c"]),
            UnifiedReward(free, num_frames=4, max_new_tokens=12)(videos, ["a", "b", "c"]),  # the random model's own words
            UnifiedReward(free, num_frames=4, scoring="probs")(videos, ["a", "b", "c"]),
        )
    assert len(counter.graphs) >= 1
    (forced_d, free_d, probs_d), (forced_s, free_s, probs_s) = outs["dynamic"], outs["static"]
    assert forced_d.valid.all() and forced_d.scores == pytest.approx([2.6] * 3)  # (3 + 4 + 2 + 3 + 1) / 5
    np.testing.assert_allclose(forced_s.scores, forced_d.scores, atol=1e-5)
    assert [d["text"] for d in free_s.details] == [d["text"] for d in free_d.details]
    np.testing.assert_allclose(probs_s.scores, probs_d.scores, rtol=1e-5)


@pytest.mark.slow  # ~11 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_stage3_rollout_batch_equal_in_both_modes(qwen3):
    from cac_align.cac.train.collate import encode_context
    from cac_align.cac.train.rollouts import HFSampler, TurnRequest
    from cac_align.vlm.hf import render_chat

    processor = qwen3.processor
    requests = []
    for i in range(4):  # a whole bucket: no filler rows, so both modes draw the same random numbers
        video = Video(smooth_video(4 + 2 * (i % 2), 64, 64, seed=20 + i), 4.0)
        chat = [user(video, f"Is video {i} normal?")]
        requests.append(TurnRequest(encode_context(processor, render_chat(processor, chat), chat), None, video, 1, 9))
    counter = KeepingCompiler()
    dynamic = HFSampler(qwen3.model, processor, temperature=1.0, batch_size=4).generate(requests, seed=11)
    static = HFSampler(qwen3.model, processor, temperature=1.0, batch_size=4,
                       static=StaticShapes(4, (4,), 64, compile_config(counter))).generate(requests, seed=11)
    assert len(counter.graphs) >= 1
    assert [s.token_ids for s in static] == [d.token_ids for d in dynamic]
    assert len({tuple(d.token_ids) for d in dynamic}) > 1  # sampled, not greedy
    for s, d in zip(static, dynamic):
        np.testing.assert_allclose(s.logprobs, d.logprobs, atol=1e-5)
    # three requests: padded up to the bucket with a filler row, which no result shows
    padded = HFSampler(qwen3.model, processor, temperature=1.0, batch_size=4,
                       static=StaticShapes(4, (4,), 64, compile_config(counter))).generate(requests[:3], seed=11)
    assert len(padded) == 3 and all(1 <= len(s.token_ids) <= 9 for s in padded)


@pytest.mark.slow  # ~10 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_multi_token_choices_are_scored_from_the_static_cache(qwen3):
    """Longer candidates continue from the generation's own cache: its rows and used length,
    copied out of the static cache, give the dynamic path's numbers."""
    from transformers import LogitsProcessorList

    tok = qwen3.processor.tokenizer
    choices = ["normal", "normally", "abnormality", "abnormal"]
    assert max(len(tok(c, add_special_tokens=False)["input_ids"]) for c in choices) > 1
    answer = tok('{"status": "normal", "anomalies": []}', add_special_tokens=False)["input_ids"]
    prefix_of = lambda text: text[: text.index('"status": "') + 11]  # noqa: E731
    counter = KeepingCompiler()
    probs = {}
    for mode, extra in (("dynamic", {}), ("static", {"cache": "static", "batch_buckets": (4,), "length_multiple": 64,
                                                      "compile_config": compile_config(counter)})):
        backend = HFBackend(qwen3.model, qwen3.processor, max_batch_size=4,
                            generate_kwargs={"logits_processor": LogitsProcessorList([ForceAnswer(answer, tok.eos_token_id)])}, **extra)
        completions, probs[mode] = backend.generate_scored(_requests(3), choices, prefix_of, max_new_tokens=len(answer) + 1)
        assert [c.text for c in completions] == ['{"status": "normal", "anomalies": []}'] * 3
    assert len(counter.graphs) >= 1 and np.isfinite(probs["static"]).all()
    np.testing.assert_allclose(probs["static"], probs["dynamic"], rtol=1e-5)


def test_recipes_choose_the_mode_and_a_resume_may_change_it():
    from cac_align.run.folder import drop_serving_keys
    from cac_align.vlm.config import ModelConfig, build_backend

    backend = build_backend(ModelConfig(name="tiny-random:qwen3_vl", cache="static", batch_buckets=[2, 4], length_multiple=32, max_batch_size=4))
    assert backend.cache == "static" and backend.static.buckets == (2, 4) and backend.static.length_multiple == 32
    assert build_backend(ModelConfig(name="tiny-random:qwen3_vl", cache="dynamic")).static is None
    auto = build_backend(ModelConfig(name="tiny-random:qwen3_vl", max_batch_size=2))  # "auto" by default
    assert auto.cache == "auto" and auto.static.auto and auto.static.buckets == (2,)
    auto.generate(_requests(3), max_new_tokens=2)  # a full batch, but on the CPU: dynamic
    assert not auto.static.on
    with pytest.raises(ValueError, match="model.cache must be 'auto', 'dynamic' or 'static'"):
        ModelConfig(name="x", cache="paged")
    # the mode changes how, not what: not part of a run's fingerprint
    section = {"reward": {"model": {"name": "m", "cache": "static", "batch_buckets": [4], "length_multiple": 64}}}
    assert drop_serving_keys(section) == {"reward": {"model": {"name": "m"}}}
    assert drop_serving_keys({"reward": {"model": {"name": "m", "cache": "auto"}}}) == {"reward": {"model": {"name": "m"}}}
