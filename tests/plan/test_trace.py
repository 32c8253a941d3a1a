"""The meta-device trace's replay (cac_align.plan.trace): a module call repeated with the same inputs is traced
once and replayed, and the peak is the same to the byte as the trace that runs every call; the plans of the
shipped big recipes equal the ones recorded before the replay existed (tests/plan/test_every_job_planned.py, slow, with
check-recipe over every shipped recipe: one planning of them all); a batch's decode is the batch times one video's; a
library loop skipped in a trace traces as the loop.
"""

from __future__ import annotations


import torch


from cac_align.plan.trace import traced_peak_bytes


class _Double(torch.nn.Module):
    """``2 x + 1``: a new tensor for ``2 x``, another for ``+ 1``, then the first freed."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        a = x * 2
        return a + 1


class _Keeper(_Double):
    """The same, but it keeps every output it made (state a replay must not skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.kept.append(x * 3)
        return out


def _three_calls(module: torch.nn.Module):
    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [module(x) for _ in range(3)]

    return run


def test_a_repeated_call_is_run_once_and_adds_what_it_added_the_first_time():
    x = torch.empty(1000, device="meta")  # 4000 bytes, there before: not counted
    # Worked by hand: each call holds 2x (4000) and 2x + 1 (4000) at its peak, then keeps its output (4000).
    # Call 1 peaks at 8000 and leaves 4000; call 2 at 4000 + 8000 = 12000, leaves 8000; call 3 at 16000.
    plain = _Double()
    assert traced_peak_bytes(_three_calls(plain), x) == 16000 and plain.runs == 3
    replayed = _Double()
    assert traced_peak_bytes(_three_calls(replayed), x, replay=[replayed]) == 16000
    assert replayed.runs == 1  # the second and third calls replayed
    # another shape is another call, traced: other(x) peaks at 8000 and keeps 4000; the clone of half (2000) and its
    # call's two halves (2000 + 2000) on top: 10000
    other = _Double()
    assert traced_peak_bytes(lambda x: [other(x), other(x[:500].clone())], x, replay=[other]) == 10000 and other.runs == 2


def test_a_call_that_keeps_memory_is_not_replayed():
    x = torch.empty(1000, device="meta")
    # Each call also keeps 3x (4000) in the module: call 1 peaks at 8000 + ... worked: a (4000), a + 1 (8000),
    # a freed (4000), 3x kept (8000); call 2 from 8000: 16000 at its peak, leaves 16000; call 3 peaks at 24000.
    plain, kept = _Keeper(), _Keeper()
    assert traced_peak_bytes(_three_calls(plain), x) == 24000
    assert traced_peak_bytes(_three_calls(kept), x, replay=[kept]) == 24000
    assert kept.runs == 3  # nothing but its output may stay alive for a call to be replayed


def test_the_tiled_decode_of_a_long_video_replayed_equals_the_decode_that_runs_every_tile():
    """MiniMax-H3's VAE (the tiny one's layout) decodes a long video as clips of spatial tiles: replayed, the same
    peak as decoding every tile on the meta device, with its decoder run far fewer times."""
    from diffusers import AutoencoderKLMiniMaxH3

    vae = AutoencoderKLMiniMaxH3(latent_channels=4, block_out_channels=(8,) * 6, layers_per_block=1, norm_num_groups=4, decoder_num_layers=1,
                                 decoder_num_attention_heads=2, decoder_attention_head_dim=8, decoder_num_register_tokens=1, decoder_ffn_mult=1,
                                 latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4).to("meta")
    vae.enable_tiling(tile_sample_min_height=128, tile_sample_min_width=128, tile_sample_min_overlap_height=32, tile_sample_min_overlap_width=32)
    latents = torch.empty(1, 4, 12, 24, 40, device="meta")  # 12 latent frames (several clips), 384 x 640 pixels: many tiles
    runs = {"count": 0}
    forward = vae.decoder.forward

    def counted(*args, **kwargs):
        runs["count"] += 1
        return forward(*args, **kwargs)

    vae.decoder.forward = counted
    keep = [*vae.parameters(), *vae.buffers()]
    decode = lambda z: vae.decode(z, return_dict=False)[0]  # noqa: E731
    every = traced_peak_bytes(decode, latents, keep=keep)
    every_runs, runs["count"] = runs["count"], 0
    replayed = traced_peak_bytes(decode, latents, keep=keep, replay=[vae])
    assert every_runs >= 12  # clips x tiles
    assert replayed == every and replayed > 1 * 3 * 40 * 384 * 640 * 4 // 8  # at least a part of the decoded video
    assert runs["count"] < every_runs // 2  # the repeated tiles replayed
    assert "forward" not in vars(vae.encoder) and vars(vae.decoder)["forward"] is counted  # the replay's wrappers removed


def test_the_decode_of_a_batch_is_the_batch_times_one_video_s_trace():
    """Every live tensor of a decode is a video's: the tiny Wan VAE's decode of 3 videos, traced as a batch, equals 3 x
    one video's, to the byte (what bon's and repair's decode rows rely on)."""
    from cac_align.gen.generator import GeneratorConfig
    from cac_align.plan.counts import counted_generator
    from cac_align.plan.trace import vae_bytes

    counts = counted_generator(GeneratorConfig(name="tiny-random:wan", dtype="float32", vae_dtype="float32"), None)
    one = vae_bytes(counts, "decode", 1, (17, 64, 96), "float32")
    assert one > 0 and vae_bytes(counts, "decode", 3, (17, 64, 96), "float32") == 3 * one


def test_the_skipped_mask_loop_traces_as_the_loop():
    """HunyuanVideo-1.5's VAE builds its causal mask a row at a time; the trace makes it in one allocation and skips the
    writes (cac_align.plan.trace._loops_skipped_on_meta): the same peak to the byte, on a tiny VAE's decode, and the
    library's function restored after."""
    from cac_align.gen.family import family_of
    from cac_align.plan.trace import _meta_copy, traced_peak_bytes

    pipe = family_of("tiny-random:hunyuanvideo15").build_tiny("tiny-random:hunyuanvideo15", seed=0)
    vae = _meta_copy(pipe.vae, "float32")
    from diffusers.models.autoencoders.autoencoder_kl_hunyuanvideo15 import HunyuanVideo15AttnBlock

    before = HunyuanVideo15AttnBlock.__dict__["prepare_causal_attention_mask"]
    z_channels = int(vae.config.latent_channels)
    latents = torch.empty(1, z_channels, 3, 4, 6, device="meta")
    keep = [*vae.parameters(), *vae.buffers()]
    decode = lambda z: vae.decode(z, return_dict=False)[0]  # noqa: E731
    skipped = traced_peak_bytes(decode, latents, keep=keep)
    looped = traced_peak_bytes(decode, latents, keep=keep, shortcuts=False)
    assert skipped == looped > 0
    assert HunyuanVideo15AttnBlock.__dict__["prepare_causal_attention_mask"] is before
