"""The grouped decode attention (``cac_align.vlm.grouped_decode``): the stock numbers, on the text
decoder only, and no copy of the KV cache in the compiled decode step.

Stock here is transformers' own sdpa (``use_stock_attention``) on the same model. The tiny
Qwen3-VL and Qwen2.5-VL both have 4 query heads over 2 KV heads, so every decode step of theirs
is a real grouped case (asserted below, so a change of the tiny configs cannot hollow these tests).

How the KV-copy test sees a copy: the decode step is compiled through transformers' own path by a
dynamo backend that keeps each graph it is given (its nodes carry the shapes dynamo traced). A copy
of the cache per query head, however it is written (``repeat_kv``'s expand + reshape,
``repeat_interleave``, a ``cat``), is a tensor whose last two dimensions are the cache's (length,
head_dim) and which holds more than the cache's batch x KV heads rows of them. The cache itself,
its in-place update and its slices hold at most that many. The test first finds such tensors in
the stock graph (so the detector is known to work), then finds none in ours.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from cac_align.video import Video
from cac_align.vlm.backend import assistant, user
from cac_align.vlm.grouped_decode import GROUPED_DECODE, grouped_decode_attention, text_attention, use_grouped_decode, use_stock_attention
from cac_align.vlm.hf import HFBackend
from conftest import ForceAnswer, KeepingCompiler, compile_config, smooth_video

FAMILIES = ("qwen3_vl", "qwen2_5_vl")


def build(family, seed=0):
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl

    tiny = {"qwen3_vl": build_tiny_qwen3_vl, "qwen2_5_vl": build_tiny_qwen2_5_vl}[family](seed=seed)
    text = tiny.model.config.text_config
    assert text.num_attention_heads == 4 and text.num_key_value_heads == 2  # grouped: 2 query heads per KV head
    return tiny


def _requests(n, offset=0):
    return [
        [user(Video(smooth_video(4 + 2 * ((i + offset) % 2), 64, 64, seed=i + offset), 4.0), f"Video {i + offset}: normal?")]
        for i in range(n)
    ]


class _Heads(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "per_head"])
def test_one_token_attention_equals_sdpa(mask_kind):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim = 3, 8, 2, 37, 16
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    keep = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    keep[0, ..., :9] = False  # left padding of two rows
    keep[2, ..., :4] = False
    mask = {"none": None, "bool": keep, "float": torch.where(keep, 0.0, -1e9),
            "per_head": keep.expand(batch, heads, 1, length) & (torch.rand(batch, heads, 1, length) > 0.2)}[mask_kind]
    module = _Heads(heads // kv_heads)
    ours, weights = grouped_decode_attention(module, query, key, value, mask, scaling=0.25)
    stock, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    # by hand: every query head against its KV head's keys, copied (repeat_kv), masked softmax
    scores = query @ repeat_kv(key, heads // kv_heads).transpose(-1, -2) * 0.25
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    by_hand = (scores.softmax(-1) @ repeat_kv(value, heads // kv_heads)).transpose(1, 2)
    assert ours.shape == stock.shape == (batch, 1, heads, dim) and ours.is_contiguous() and weights is None
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)


def test_other_calls_are_the_stock_function():
    """Prefill (many query tokens) and ungrouped heads go to transformers' sdpa as they are: the
    same tensors, bit for bit."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    for heads, kv_heads, q_len in ((8, 2, 5), (4, 4, 1)):
        query = torch.randn(2, heads, q_len, 16)
        key, value = torch.randn(2, kv_heads, 12, 16), torch.randn(2, kv_heads, 12, 16)
        module = _Heads(heads // kv_heads)
        for mask in (None, torch.ones(2, 1, q_len, 12, dtype=torch.bool).tril(12 - q_len)):
            assert torch.equal(grouped_decode_attention(module, query, key, value, mask)[0], sdpa_attention_forward(module, query, key, value, mask)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_installed_on_the_text_decoder_only(family):
    tiny = build(family)
    model = tiny.model
    assert text_attention(model) == "sdpa"
    HFBackend(model, tiny.processor)
    assert text_attention(model) == GROUPED_DECODE and model.config.vision_config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "sdpa"  # the top-level (and so the vision tower's) stays
    use_stock_attention(model)
    assert text_attention(model) == "sdpa"
    # an implementation a recipe chose is kept
    model.set_attn_implementation({"text_config": "eager"})
    assert not use_grouped_decode(model) and text_attention(model) == "eager"


def test_stage3_sampler_gets_it(tiny_qwen3_vl):
    from cac_align.cac.train.rollouts import HFSampler

    model = build("qwen3_vl").model
    HFSampler(model, tiny_qwen3_vl.processor, temperature=1.0)
    assert text_attention(model) == GROUPED_DECODE


@pytest.mark.slow  # ~30 s a family on 2 cores (a dozen decode graphs traced); the default suite has the compiled case in the KV-copy test
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_status_probabilities_equal_stock(family):
    """Ours against transformers' sdpa on one model: every generated step's logits, and the
    status probabilities read from the generation (first token from the decode step, longer
    candidates from its cache), on the dynamic and the static (compiled) cache, batched (3 rows
    in a bucket of 4) and one by one."""
    tiny = build(family)
    model, processor = tiny.model, tiny.processor
    tok = processor.tokenizer
    choices = ["normal", "abnormal", "normally"]
    answer = tok('{"status": "normal", "anomalies": []}', add_special_tokens=False)["input_ids"]
    prefix_of = lambda text: text[: text.index('"status": "') + 11]  # noqa: E731
    requests = _requests(3)  # mixed frame counts: left padding inside a batch
    compiler = KeepingCompiler()
    results = {}
    for cache in ("dynamic", "static"):
        for batch in (4, 1):
            # one length bucket holds every prompt here: a compile per batch size and attention, no more
            extra = {"cache": "static", "batch_buckets": (batch,), "length_multiple": 512, "compile_config": compile_config(compiler)} if cache == "static" else {"cache": "dynamic"}
            backend = HFBackend(model, processor, max_batch_size=batch, **extra,
                                generate_kwargs={"logits_processor": LogitsProcessorList([ForceAnswer(answer, tok.eos_token_id)])})
            for attention in ("stock", "ours"):
                (use_stock_attention if attention == "stock" else use_grouped_decode)(model)
                logits = []
                with torch.inference_mode():
                    for chunk in backend._chunks(len(requests)):
                        static = backend._static_for(len(requests))
                        inputs = backend._encode([requests[i] for i in chunk], [""] * len(chunk), static)
                        out = backend._generate(inputs, len(answer) + 1, static, output_logits=True, return_dict_in_generate=True)
                        logits.append(torch.stack(out.logits, 1)[: len(chunk)].float())  # (rows, steps, vocabulary), raw
                completions, probs = backend.generate_scored(requests, choices, prefix_of, max_new_tokens=len(answer) + 1)
                assert all(c.text == '{"status": "normal", "anomalies": []}' for c in completions)
                results[attention, cache, batch] = (torch.cat(logits), probs)
    assert len(compiler.graphs) >= 4  # the static runs compiled their decode steps, stock and ours
    for cache in ("dynamic", "static"):
        for batch in (4, 1):
            (stock_logits, stock_probs), (logits, probs) = results["stock", cache, batch], results["ours", cache, batch]
            assert logits.shape == (3, len(answer) + 1, model.config.text_config.vocab_size)
            torch.testing.assert_close(logits, stock_logits, rtol=1e-4, atol=1e-5)
            assert np.isfinite(probs).all() and (probs > 0).all() and (probs < 1).all()
            np.testing.assert_allclose(probs, stock_probs, rtol=1e-5)
    # and across modes: ours on the static cache one by one = stock on the dynamic cache batched
    torch.testing.assert_close(results["ours", "static", 1][0], results["stock", "dynamic", 4][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results["ours", "static", 1][1], results["stock", "dynamic", 4][1], rtol=1e-4)


def _kv_copies(graph_module, cache_len, head_dim, kv_rows):
    """(node, shape) of every tensor in ``graph_module`` that holds more than ``kv_rows``
    (batch x KV heads) rows of (cache length, head_dim): a K or V copied per query head."""
    found = []
    for node in graph_module.graph.nodes:
        value = node.meta.get("example_value")
        if not isinstance(value, torch.Tensor) or value.dim() < 4:
            continue
        shape = tuple(value.shape)
        assert all(isinstance(d, int) for d in shape), f"{node.name}: symbolic shape {shape}; this test compiles one shape"
        if shape[-2:] == (cache_len, head_dim) and math.prod(shape[:-2]) > kv_rows:
            found.append((node.name, shape))
    return found


def test_no_kv_copy_in_the_compiled_decode_step():
    """Fails if a KV copy comes back into the compiled decode step (see the module docstring).
    The two compiled steps also give the same logits (the slow test above covers every mode).

    ``model.generate`` is called as the backend calls it (a static cache of the call's own length,
    :class:`~cac_align.vlm.hf.StaticShapes`) but without a backend, whose status reader (a hook
    kept out of the graph) splits the step into several graphs: one graph per step is cheaper to
    trace and holds every layer's attention."""
    from cac_align.vlm.hf import StaticShapes

    tiny = build("qwen3_vl")
    model, tok = tiny.model, tiny.processor.tokenizer
    text = model.config.text_config
    compiler = KeepingCompiler()
    static = StaticShapes(2, (2,), 64, compile_config(compiler))
    tok.padding_side = "left"
    inputs = tok(["<|im_start|>user\nIs the video normal?", "<|im_start|>user\nLook again: is anything wrong with the hands?"],
                 return_tensors="pt", padding=True)  # left padding: a real mask
    prompt_len = inputs["input_ids"].shape[1]
    cache_len = static.cache_length(prompt_len, 3)
    copies, logits = {}, {}
    for attention in ("stock", "ours"):
        (use_stock_attention if attention == "stock" else use_grouped_decode)(model)
        before = len(compiler.graphs)
        # one shape per graph (what another test compiled earlier in this process could make dynamo go dynamic)
        with torch.inference_mode(), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
                                 **static.generate_kwargs(model, prompt_len, 3))
        logits[attention] = torch.stack(out.logits, 1).float()
        graphs = compiler.graphs[before:]
        assert graphs, f"{attention}: no decode step was compiled"
        assert sum("scaled_dot_product_attention" in str(n.target) for g in graphs for n in g.graph.nodes) == text.num_hidden_layers  # every layer's attention is in what we inspect
        copies[attention] = [c for g in graphs for c in _kv_copies(g, cache_len, text.head_dim, 2 * text.num_key_value_heads)]
    # stock (transformers 5.24 under compile): repeat_kv's (B, Hkv, G, L, D) view and its (B, Hq, L, D) copy, K and V, every layer
    assert len(copies["stock"]) >= 2 * text.num_hidden_layers, copies["stock"]
    assert (2, text.num_attention_heads, cache_len, text.head_dim) in [shape for _, shape in copies["stock"]]
    assert copies["ours"] == [], copies["ours"]  # ours reads the cache as it is
    torch.testing.assert_close(logits["ours"], logits["stock"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_each_turn_gets_a_cache_of_its_own_length(caplog, compiled):
    """A short generation after a long one runs on its own (short) cache, not the long one's
    (transformers' ``_prepare_static_cache`` keeps the longest), each shape is logged once, and
    (compiled, slow: ~20 s of tracing) the third pass onwards compiles nothing."""
    import logging

    tiny = build("qwen3_vl")
    model, processor = tiny.model, tiny.processor
    compiler = KeepingCompiler()
    backend = HFBackend(model, processor, max_batch_size=2, cache="static", batch_buckets=(2,), length_multiple=64,
                        compile_config=compile_config(compiler) if compiled else None)  # None: eager on a CPU
    lengths = []
    generate = model.generate

    def spy(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        lengths.append(cache.layers[0].max_cache_len)
        return generate(*args, **kwargs)

    model.generate = spy
    short = [[user(f"Turn 1 of video {i}: normal?")] for i in range(2)]
    long = [[*r, assistant("word " * 60), user("Turn 2: look again.")] for r in short]  # turn 2 holds turn 1
    with caplog.at_level(logging.INFO, logger="cac_align.vlm.hf"):
        backend.generate(short, max_new_tokens=4)  # turn 1
        backend.generate(long, max_new_tokens=4)  # turn 2: a longer prompt
        backend.generate(short, max_new_tokens=4)  # turn 1 of the next batch
        compiled_graphs = len(compiler.graphs)
        backend.generate(long, max_new_tokens=4)
        backend.generate(short, max_new_tokens=4)
    assert lengths[0] < lengths[1] and lengths == [lengths[0], lengths[1]] * 2 + [lengths[0]]  # no ratchet
    assert all(n % 64 == 0 for n in lengths)
    logged = [r.getMessage() for r in caplog.records if "first generation of batch" in r.getMessage()]
    assert len(logged) == 2 and f"cache {lengths[0]} tokens" in logged[0] and f"cache {lengths[1]} tokens" in logged[1]  # once per shape
    if compiled:
        assert compiled_graphs >= 1 and len(compiler.graphs) == compiled_graphs  # the third pass onwards compiles nothing
    else:
        assert not compiler.graphs
