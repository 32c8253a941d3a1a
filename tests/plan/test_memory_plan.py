"""The memory plan (cac_align.plan): parameters counted on the meta device from a saved
pipeline's configs equal the real model's, with no weight file read; FSDP2's per-GPU share, the
LoRA count, the token count and the activation arithmetic worked out by hand; the refusal names the
computed fix; a plan that fits does not raise."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from cac_align.config import RecipeError
from cac_align.gen import family as family_module
from cac_align.gen.generator import GeneratorConfig
from cac_align.gen.lora import LoraSettings, add_lora
from cac_align.plan.check import check_memory
from cac_align.plan.counts import GIB, ComponentCount, GeneratorCounts, count_generator, count_module
from cac_align.plan.refusal import refusal
from cac_align.plan.rows import activation_bytes, guided_rows, memory_plan, video_tokens
from cac_align.gen.parallel import ParallelSettings

TINY = ("tiny-random:wan", "tiny-random:wan22-a14b", "tiny-random:wan21-i2v", "tiny-random:wan22-i2v-a14b", "tiny-random:ltx2")


def _saved_without_weights(name: str, folder: Path):
    """The tiny pipeline ``name``, and a copy of it written by ``save_pretrained`` into ``folder`` whose
    weight files are then deleted: only its JSON configs remain."""
    pipe = family_module.family_of(name).build_tiny(name, seed=0)
    pipe.save_pretrained(str(folder))
    for weights in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.bin")):
        weights.unlink()
    return pipe


def _real_counts(pipe) -> dict[str, int]:
    return {n: sum(p.numel() for p in m.parameters()) for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


@pytest.mark.parametrize("name", TINY)
def test_meta_counts_from_configs_equal_the_real_model(name, tmp_path):
    folder = tmp_path / "saved"
    pipe = _saved_without_weights(name, folder)
    config = GeneratorConfig(name=str(folder), dtype="float32", vae_dtype="float32")
    counts = count_generator(config, LoraSettings(rank=4, experts="both" if config.family.experts == 2 else "high"))
    counted = {c.name: c.parameters for c in counts.transformers + counts.encoders + counts.others}
    assert counted == _real_counts(pipe)  # every model component, with no weight file on disk
    family = config.family
    assert [t.name for t in counts.transformers] == ["transformer", "transformer_2"][: family.experts]
    assert [e.name for e in counts.encoders] == list(family.encoder_components)
    assert counts.context_parallel  # every family splits a video now (LTX-2: its video, its audio kept whole)
    # each transformer's blocks as the family names them, and the count of the tiny pipeline built in-process agrees
    for t in counts.transformers:
        blocks = [m for m in getattr(pipe, t.name).modules() if type(m).__name__ in family.block_classes]
        assert len(blocks) == 2 and t.blocks == tuple(sum(p.numel() for p in b.parameters()) for b in blocks)
    tiny = count_generator(GeneratorConfig(name=name, dtype="float32", vae_dtype="float32"), LoraSettings(rank=4, experts="both" if family.experts == 2 else "high"))
    assert {c.name: c for c in tiny.transformers + tiny.encoders + tiny.others} == {
        c.name: c for c in counts.transformers + counts.encoders + counts.others}


def test_wan_block_count_by_hand():
    # The tiny Wan block (dim 24 = 2 heads x 12, ffn 32, cross_attn_norm, qk_norm across heads):
    #   attn1: to_q, to_k, to_v, to_out.0 are Linear(24, 24) with bias: 4 x (576 + 24) = 2400, and
    #          norm_q, norm_k RMSNorm(24) weights: 48 -> 2448; attn2: the same, 2448;
    #   norm2 (affine LayerNorm, cross_attn_norm): 48; norm1, norm3: no parameters;
    #   ffn: Linear(24, 32) 800 + Linear(32, 24) 792 = 1592; scale_shift_table 1 x 6 x 24 = 144;
    #   2448 + 2448 + 48 + 1592 + 144 = 6680.
    transformer = family_module.family_of("tiny-random:wan").build_tiny("tiny-random:wan").transformer
    counted = count_module("transformer", transformer, ("WanTransformerBlock",))
    assert counted.blocks == (6680, 6680)
    with pytest.raises(ValueError, match="block_classes"):
        count_module("transformer", transformer, ("NoSuchBlock",))


def test_lora_count_by_hand_and_against_peft():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k = torch.nn.Linear(24, 24), torch.nn.Linear(24, 16)
            self.to_out = torch.nn.ModuleList([torch.nn.Linear(24, 12), torch.nn.Dropout(0.0)])
            self.ff = torch.nn.Linear(24, 48)  # not a target

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()

    # rank 4 on to_q (24 + 24), to_k (24 + 16), to_out.0 (24 + 12): 4 x (48 + 40 + 36) = 4 x 124 = 496
    counted = count_module("toy", Toy(), lora_targets=["to_q", "to_k", "to_out.0"])
    assert counted.lora_width == 124
    # the tiny Wan transformer: 2 blocks x 2 attentions x 4 projections Linear(24, 24): 16 x 48 = 768 per rank
    transformer = family_module.family_of("tiny-random:wan").build_tiny("tiny-random:wan").transformer
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    assert count_module("transformer", transformer, lora_targets=targets).lora_width == 768
    add_lora(transformer, LoraSettings(rank=4, target_modules=targets), seed=0)  # peft's own adapter
    assert sum(p.numel() for p in transformer.parameters() if p.requires_grad) == 4 * 768


def test_video_tokens_and_activations_by_hand():
    assert video_tokens(81, 480, 832, 16, 4) == 21 * 30 * 52 == 32760  # Wan-2.1 / the A14B at 480p
    assert video_tokens(121, 704, 1280, 32, 4) == 31 * 22 * 40 == 27280  # the TI2V-5B
    assert video_tokens(121, 512, 768, 32, 8) == 16 * 16 * 24 == 6144  # LTX-2
    # 2 rows x 10 tokens x width 4 x 2 bytes = 160 bytes a hidden-sized tensor; 3 layers
    assert activation_bytes(10, 4, 3, 2, gradient_checkpointing=False) == 160 * 3 * 24
    assert activation_bytes(10, 4, 3, 2, gradient_checkpointing=True) == 160 * (3 + 24)
    assert activation_bytes(10, 4, 3, 2, gradient_checkpointing=True, context_parallel=2) == 80 * (3 + 24)
    assert activation_bytes(10, 4, 3, 2, gradient_checkpointing=True, dtype="float32") == 320 * (3 + 24)
    # no batch axis (Cosmos 3): each of the 2 rows keeps its 3 block inputs (80 bytes each), one row's block recomputed: 80 x (6 + 24)
    assert activation_bytes(10, 4, 3, 2, gradient_checkpointing=True, one_row_a_forward=True) == 80 * (2 * 3 + 24)
    assert activation_bytes(10, 4, 3, 2, gradient_checkpointing=False, one_row_a_forward=True) == 160 * 3 * 24  # all kept either way


def test_guided_rows_of_each_family():
    from cac_align.gen.family import family_of

    wan = GeneratorConfig(name="tiny-random:wan22-a14b")  # CFG 4.0 / 3.0: the negative prompt's row too
    assert guided_rows(family_of(wan.name).guidance(wan)) == 2
    assert guided_rows(family_of(wan.name).guidance(wan, guided=False)) == 1
    ltx = GeneratorConfig(name="tiny-random:ltx2", stg_blocks=[1])  # the release's guidance: CFG, STG, modality: 4 (docs/flow_grpo.md)
    assert guided_rows(family_of(ltx.name).guidance(ltx)) == 4
    ltx_cfg = GeneratorConfig(name="tiny-random:ltx2", stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0)
    assert guided_rows(family_of(ltx.name).guidance(ltx_cfg)) == 2  # flow_grpo_ltx2_ur_cac.yaml's training guidance


@pytest.fixture(scope="module")
def wan_counts():
    return count_generator(GeneratorConfig(name="tiny-random:wan", dtype="float32", vae_dtype="float32"), LoraSettings(rank=4))


@pytest.mark.parametrize("processes, resident_elements", [(2, 14164), (3, 9443), (4, 7082)])
def test_sharded_base_is_a_share_plus_one_block(wan_counts, processes, resident_elements):
    # The tiny Wan transformer holds 28,328 parameters, its largest block 6,680 (test_wan_block_count_by_hand).
    #   N = 2: ceil(28328 / 2) = 14164 resident + 6680 gathered = 20844 parameters while a block runs
    #   N = 3: ceil(28328 / 3) = ceil(9442.7) = 9443 resident (FSDP2 pads the last share) + 6680
    #   N = 4: ceil(28328 / 4) = 7082 resident + 6680 gathered = 13762
    # in float32, 4 bytes each.
    assert wan_counts.transformers[0].parameters == 28328
    plan = memory_plan(wan_counts, settings=ParallelSettings(shard="fsdp2"), num_processes=processes, tokens=100, batch_per_process=1,
                       gradient_checkpointing=True, lora_rank=4, dtype="float32", vae_dtype="float32")
    rows = {r.label.split(":")[0]: r for r in plan.rows}
    assert rows["transformer"].bytes == resident_elements * 4
    assert rows["gathered while it runs"].bytes == 6680 * 4 and rows["gathered while it runs"].phase == "train"
    # the LoRA is sharded with its blocks: 768 x rank 4 = 3072 parameters, 1/N each, fp32
    lora = next(r for r in plan.rows if r.label.startswith("LoRA weights"))
    assert lora.bytes == 3072 // processes * 4
    assert next(r for r in plan.rows if r.label.startswith("AdamW")).bytes == 2 * lora.bytes
    # plain SGD (optimizer: sgd, #92) keeps no state: the same plan less the two moments
    sgd = memory_plan(wan_counts, settings=ParallelSettings(shard="fsdp2"), num_processes=processes, tokens=100, batch_per_process=1,
                      gradient_checkpointing=True, lora_rank=4, dtype="float32", vae_dtype="float32", optimizer="sgd")
    assert not any(r.label.startswith("AdamW") for r in sgd.rows) and plan.peak_bytes - sgd.peak_bytes == 2 * lora.bytes
    # the text encoder leaves the device when sharded: it counts only while encoding
    assert next(r for r in plan.rows if r.label.startswith("text_encoder")).phase == "encode"
    unsharded = memory_plan(wan_counts, settings=ParallelSettings(), num_processes=processes, tokens=100, batch_per_process=1,
                            gradient_checkpointing=True, lora_rank=4, dtype="float32", vae_dtype="float32")
    assert next(r for r in unsharded.rows if r.label.startswith("transformer")).bytes == 28328 * 4
    assert not any(r.label.startswith("gathered") for r in unsharded.rows)
    assert next(r for r in unsharded.rows if r.label.startswith("text_encoder")).phase == "resident"


def _toy_counts(**overrides) -> GeneratorCounts:
    """A made-up bf16 generator in round numbers of GiB: a transformer of 30 Gi parameters (60 GiB) in
    10 blocks of 3 Gi (6 GiB each), a text encoder of 5 Gi (10 GiB), no VAE, no LoRA; width 4096,
    32 heads, 10 layers."""
    gi = GIB
    fields = dict(source="toy", family="Toy", transformers=(ComponentCount("transformer", "T", 30 * gi, (3 * gi,) * 10),),
                  encoders=(ComponentCount("text_encoder", "E", 5 * gi),), others=(), hidden_size=4096, num_heads=32, num_layers=10, patch_t=1,
                  spatial_multiple=16, frame_multiple=4)
    fields.update(overrides)
    return GeneratorCounts(**fields)


def _toy_plan(counts, settings, processes, gc, tokens=1024, batch=1):
    return memory_plan(counts, settings=settings, num_processes=processes, tokens=tokens, batch_per_process=batch, gradient_checkpointing=gc,
                       lora_rank=32, dtype="bfloat16")


def test_refusal_names_the_fewest_gpus_that_fit():
    # One process, unsharded: 60 GiB transformer + 10 GiB encoder + activations of
    # 1 x 1024 tokens x 4096 x 2 bytes x (10 + 24) = 272 MiB: 70.3 GiB > 21 GiB.
    # Sharded over N: 60/N resident, then max(train: 6 GiB block + 0.27, encode: 10 GiB) = 10 GiB:
    #   60/N + 10 <= 21  <=>  N >= 5.45: 6 GPUs (12 + 10 = 22 GiB on 5 does not fit).
    counts, budget = _toy_counts(), 21 * GIB
    plan = _toy_plan(counts, ParallelSettings(), 1, True)
    assert plan.peak_bytes == 70 * GIB + 1024 * 4096 * 2 * 34
    message = refusal(plan, budget)
    assert "parallel.shard=fsdp2" in message and "at least 6 GPUs" in message and "\n" not in message
    assert not _toy_plan(counts, ParallelSettings(shard="fsdp2"), 5, True).fits(budget)
    assert _toy_plan(counts, ParallelSettings(shard="fsdp2"), 6, True).peak_bytes == 20 * GIB
    # control: the fix is what fits, so one more GiB of device moves it to 5 GPUs (12 + 10 <= 22)
    assert "at least 5 GPUs" in refusal(plan, 22 * GIB)


def test_refusal_prefers_a_change_of_settings_on_the_same_gpus():
    # Activations of 1 x 32768 tokens x 4096 x 2 bytes = 256 MiB a width x 34 = 8.5 GiB.
    # One process, unsharded, encoder resident: 60 + 10 + 8.5 = 78.5 GiB. With the encoder off the GPU
    # between encodes: 60 + max(train 8.5, encode 10) = 70.0 GiB, within 72.
    counts = _toy_counts()
    one = _toy_plan(counts, ParallelSettings(), 1, True, tokens=32768)
    assert one.peak_bytes == int(78.5 * GIB)
    assert refusal(one, 72 * GIB).endswith("; set parallel.encoder_on_device=false: the text encoder leaves the GPU between encodes (70.0 GiB per GPU)")
    # Eight processes, unsharded, within 50 GiB: sharding over the eight is enough: 60/8 + max(6 + 8.5, 10) = 22.0 GiB
    eight = _toy_plan(counts, ParallelSettings(), 8, True, tokens=32768)
    assert refusal(eight, 50 * GIB).endswith("; set parallel.shard=fsdp2 (22.0 GiB per GPU on these 8 GPUs)")


def test_refusal_names_checkpointing_for_activations():
    # Sharded on 8: 7.5 GiB resident. Activations of 2 x 32768 tokens x 4096 x 2 bytes = 512 MiB a width:
    #   all kept: 10 layers x 24 = 240 widths = 120 GiB; checkpointed: 10 + 24 = 34 widths = 17 GiB.
    #   peak checkpointed: 7.5 + max(6 + 17, 10) = 30.5 GiB <= 40 GiB.
    plan = _toy_plan(_toy_counts(), ParallelSettings(shard="fsdp2"), 8, False, tokens=32768, batch=2)
    message = refusal(plan, 40 * GIB)
    assert "gradient_checkpointing=true (30.5 GiB per GPU)" in message
    assert "GPUs" not in message.split(";")[1]


def test_refusal_names_context_parallel_when_sharding_cannot_help():
    # Checkpointed activations of 8 x 32768 tokens x 4096 x 2 bytes = 2 GiB a width x 34 = 68 GiB, plus
    # the 6 GiB block: 74 GiB however many GPUs shard the 60 GiB, > 71 GiB. With context_parallel=2 each
    # process holds 16384 tokens: 34 GiB; peak 60/N + 6 + 34 <= 71 <=> N >= 1.94: 2 GPUs (a multiple of 2).
    counts = _toy_counts()
    plan = _toy_plan(counts, ParallelSettings(shard="fsdp2"), 8, True, tokens=32768, batch=8)
    message = refusal(plan, 71 * GIB)
    assert "parallel.context_parallel=2" in message and "at least 2 GPUs" in message
    # 5 heads: 2, 3, 4 do not divide them, so the degree is 5 (32765 tokens, divisible by 5): 6553 tokens a
    # process, 0.4 GiB a width x 34 = 13.6 GiB; 60/5 + 6 + 13.6 = 31.6 GiB on 5 processes
    five = _toy_plan(_toy_counts(num_heads=5), ParallelSettings(shard="fsdp2"), 8, True, tokens=32765, batch=8)
    assert "parallel.context_parallel=5 and parallel.shard=fsdp2 on at least 5 GPUs" in refusal(five, 71 * GIB)
    # a family that cannot split a video (LTX-2 today) is not offered context parallel
    unsplit = _toy_plan(_toy_counts(context_parallel=False), ParallelSettings(shard="fsdp2"), 8, True, tokens=32768, batch=8)
    assert "set parallel.context_parallel" not in refusal(unsplit, 71 * GIB) and "cannot split a video" in refusal(unsplit, 71 * GIB)


def test_refusal_when_nothing_fits_says_the_floor():
    plan = _toy_plan(_toy_counts(), ParallelSettings(shard="fsdp2"), 8, True)
    message = refusal(plan, 5 * GIB)  # the 10 GiB encoder alone is more than the device
    assert "no sharding, checkpointing or context parallel fits it" in message


def test_check_memory_refuses_on_a_cpu_budget_and_passes_one_that_fits(caplog):
    generator = GeneratorConfig(name="tiny-random:wan", dtype="float32", vae_dtype="float32")
    lora, settings = LoraSettings(rank=4), ParallelSettings()
    with caplog.at_level(logging.INFO, logger="cac_align.plan"):
        plan = check_memory(generator, lora, settings, 1, 2, True, budget_gib=1.0)
    assert plan is not None and plan.fits(GIB)
    assert "activations" in caplog.text and "arithmetic" in caplog.text and "counted" in caplog.text
    # The tiny Wan at its 480 x 832 x 81 default: 32760 tokens x width 24 x 4 bytes x 2 rows x (2 + 24) widths =
    # 0.152 GiB of activations; its weights are kilobytes. On a 0.1 GiB budget nothing but context parallel helps:
    # with 2 (its 2 heads, 32760 tokens even): 0.076 GiB, on 2 processes.
    with pytest.raises(RecipeError, match=r"parallel\.context_parallel=2 and parallel\.shard=fsdp2 on at least 2 GPUs") as raised:
        check_memory(generator, lora, settings, 1, 2, True, budget_gib=0.1)
    assert "\n" not in str(raised.value)
    # a CPU run without a budget: not enforced, and not shown (it decides nothing) but at debug level
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cac_align.plan"):
        assert check_memory(generator, lora, settings, 1, 2, True, device="cpu") is not None
    assert "memory plan per GPU" not in caplog.text
    with caplog.at_level(logging.DEBUG, logger="cac_align.plan"):
        check_memory(generator, lora, settings, 1, 2, True, device="cpu")
    assert "memory plan per GPU" in caplog.text and "not enforced" in caplog.text


def test_hub_id_from_the_cache_and_not_cached(hub_cache, tmp_path, caplog, monkeypatch):
    # a listed release not in the cache (nor shipped with cac-align: tests/plan/test_full_size_configs.py): its family is
    # known by name, but no config can be read: no plan, no download
    from cac_align.plan import configs as plan_configs

    monkeypatch.setattr(plan_configs, "FULL_SIZE_CONFIGS", tmp_path / "nothing shipped")
    release = GeneratorConfig(name="Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    with caplog.at_level(logging.WARNING, logger="cac_align.plan"):
        assert count_generator(release, LoraSettings()) is None
    assert "not on this machine" in caplog.text
    # a fine-tune in the cache (huggingface_hub's layout), configs only: counted as from a folder
    folder = tmp_path / "a14b"
    pipe = _saved_without_weights("tiny-random:wan22-a14b", folder)
    repo = hub_cache / "models--someone--a14b-finetune"
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    counts = count_generator(GeneratorConfig(name="someone/a14b-finetune", dtype="float32", vae_dtype="float32"), LoraSettings(rank=4))
    assert {c.name: c.parameters for c in counts.transformers + counts.encoders + counts.others} == _real_counts(pipe)
