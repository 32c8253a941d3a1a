"""Throughput of two-turn CaC scoring: batched vs one-by-one, at a fixed token budget per turn.

    python benchmarks/judge/score_throughput.py                       # tiny random Qwen3-VL on the CPU
    python benchmarks/judge/score_throughput.py --mode gpu-8b         # full-size Qwen3-VL-8B architecture, random weights
    python benchmarks/judge/score_throughput.py --profile             # where the time goes, batched and one by one
    python benchmarks/judge/score_throughput.py --mode gpu-8b --videos 4 --single-videos 1 --log-calls
    python benchmarks/judge/score_throughput.py --caches --batch-sizes 4,8     # dynamic vs static KV cache (tiny, CPU)
    python benchmarks/judge/score_throughput.py --mode gpu-8b --caches --batch-sizes 16,32   # the same at the paper's budget

Random weights say nothing useful, so each turn runs the real model for exactly ``--tokens``
new tokens (``min_new_tokens``), and then the backend's text is replaced by a fixed, valid CaC
answer. Turn 1 always flags a window and turn 2 always boxes it, so every video goes through
both turns and both status-probability passes. The compute is that of real two-turn scoring;
only the words are scripted. The paper's budget for ``gpu-8b`` is 21 frames in turn 1 (5 s at
4 fps), a 1 s clip at 8 fps in turn 2, and 1,024 generated tokens per turn; the paper reports
33.2 s per video on an A800.

Every figure is printed as soon as it is measured (flushed), so a run stopped by a time limit
still reports what it finished; ``--log-calls`` also prints each model call (turn, batch size,
prompt tokens, seconds, milliseconds per generated token), which tells prefill from decoding.

``--caches`` compares the backend's two KV-cache modes (``model.cache``) side by side: for each
batch size, one batch of that many videos is scored twice per mode. The first pass includes
what the mode does once (compiling the decode step for each shape, in static mode), the second
is the steady state; peak GPU memory is per mode and batch size. In tiny mode (CPU) the static
mode's decode step is traced by torch.compile with the ``eager`` backend (inductor on a CPU
would mostly time the C++ compiler), so it checks the path, not the speed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cac_align.cac.infer import CaCOptions, CaCScorer
from cac_align.video import Video
from cac_align.vlm.backend import Completion
from cac_align.vlm.hf import HFBackend

TURN1 = json.dumps({"cot": "scan", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "time": [2.0, 3.0]}]})
TURN2 = json.dumps({"cot": "look", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "bbox": {"frame 0": [100, 100, 300, 300]}}]})


def say(*parts) -> None:
    print(*parts, flush=True)


class FixedAnswers(HFBackend):
    """Runs the real model for the full token budget, then returns a scripted valid answer.

    CaC reads the status probabilities with each turn's generation (``generate_scored``): here
    they are read at the first generated token (the scripted text's status position does not
    exist in the random tokens), which costs the same as reading them anywhere else. With
    ``log_calls`` each call prints its turn, batch size, prompt length and seconds."""

    log_calls = False

    def _encode(self, requests, prefixes, static=None):
        inputs = super()._encode(requests, prefixes, static)
        self._prompt_tokens = int(inputs["input_ids"].shape[1])
        return inputs

    def generate(self, requests, **kwargs):
        completions = super().generate(requests, **kwargs)
        return [Completion(TURN1 if len(r) == 1 else TURN2, c.token_ids) for r, c in zip(requests, completions)]

    def generate_scored(self, requests, choices, prefix_of, **kwargs):
        start = time.perf_counter()
        completions, probs = super().generate_scored(requests, choices, lambda text: "", **kwargs)
        if self.log_calls:
            seconds = time.perf_counter() - start
            new = max(len(c.token_ids) for c in completions)
            say(f"  turn {1 if len(requests[0]) == 1 else 2}: {len(requests)} video(s), {self._prompt_tokens} prompt tokens, "
                f"{new} new tokens: {seconds:.2f} s ({1000 * seconds / max(new, 1):.1f} ms per generated token, prefill included)")
        return [Completion(TURN1 if len(r) == 1 else TURN2, c.token_ids) for r, c in zip(requests, completions)], probs


def _videos(count: int, height: int, width: int, seconds: float = 5.0, fps: float = 16.0) -> list[Video]:
    rng = np.random.default_rng(0)
    n = int(seconds * fps)
    return [Video(rng.integers(0, 255, (n, height, width, 3), dtype=np.uint8), fps) for _ in range(count)]


def _full_size_qwen3_vl_8b():
    """Qwen3-VL-8B's architecture (published config values) with random weights, on the GPU."""
    import torch
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    from cac_align.vlm.tiny import TINY_CHAT_TEMPLATE, _token_ids, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen3VLConfig(
        vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[8, 16, 24],
                           num_position_embeddings=2304),
        text_config=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id),
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2),
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, cap_pixels_per_frame=True),
        tokenizer=tokenizer, chat_template=TINY_CHAT_TEMPLATE,
    )
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def _time(scorer: CaCScorer, videos: list[Video], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        results = scorer.score(videos)
        best = min(best, time.perf_counter() - start)
        assert all(r.valid and r.turn2 is not None for r in results), [r.error for r in results]
    return best


# The parts of a scoring pass, by the function that does them (cumulative seconds).
_PARTS = {
    "prefill (prompt + video through the model)": "_prefill",
    "whole generate (prefill + decode loop)": "generate",
    "processor (template text, tokens, frames)": "processor_inputs",
    "attention kernels (inside the above)": "scaled_dot_product_attention",
}


def _profile(scorers: dict, videos: list[Video]) -> None:
    import cProfile
    import pstats

    for name, scorer in scorers.items():
        profile = cProfile.Profile()
        profile.enable()
        start = time.perf_counter()
        for _ in range(2):
            scorer.score(videos)
        total = time.perf_counter() - start
        profile.disable()
        stats = pstats.Stats(profile).stats
        print(f"{name}: {total:.3f} s for {2 * len(videos)} videos")
        for label, function in _PARTS.items():
            seconds = max((v[3] for k, v in stats.items() if k[2] == function or (k[0] == "~" and k[2].endswith(f".{function}>"))), default=0.0)
            print(f"  {label:45s} {seconds:6.3f} s ({seconds / total:4.0%})")


def _compare_caches(model, processor, videos: list[Video], options: CaCOptions, fixed: dict, batch_sizes: list[int], on_gpu: bool) -> None:
    """Both KV-cache modes at each batch size: first pass (compile included), second pass, peak memory."""
    import torch

    compile_config = None
    if not on_gpu:  # trace the decode step on the CPU, run it eagerly (see the module docstring)
        from transformers.generation.configuration_utils import CompileConfig

        compile_config = CompileConfig(backend="eager", mode=None)
        compile_config._compile_all_devices = True
    rows = []
    for batch in batch_sizes:
        chunk = (videos * -(-batch // len(videos)))[:batch]
        for mode in ("dynamic", "static"):
            extra = {"cache": mode, "compile_config": compile_config} if mode == "static" else {"cache": "dynamic"}
            scorer = CaCScorer(FixedAnswers(model, processor, max_batch_size=batch, generate_kwargs=fixed, **extra), options)
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            first = _time(scorer, chunk, 1)
            second = _time(scorer, chunk, 1)
            peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
            rows.append((batch, mode, first / batch, second / batch, peak))
            say(f"batch {batch:3d} {mode:7s}: first pass {first / batch:7.3f} s/video (compile included), "
                f"second {second / batch:7.3f} s/video, peak {peak:5.1f} GiB")
    for batch in batch_sizes:
        (d,), (st,) = [r for r in rows if r[0] == batch and r[1] == "dynamic"], [r for r in rows if r[0] == batch and r[1] == "static"]
        say(f"batch {batch}: dynamic time / static time (above 1: static is faster): second pass {d[3] / st[3]:.2f}x, first pass {d[2] / st[2]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["tiny", "gpu-8b"], default="tiny")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=None, help="generated tokens per turn (tiny: 32, gpu-8b: 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-videos", type=int, default=None, help="time only this many videos one by one (default: all)")
    parser.add_argument("--log-calls", action="store_true", help="print every model call's turn, batch, prompt tokens and seconds")
    parser.add_argument("--profile", action="store_true", help="cProfile two passes over the videos, batched then one by one")
    parser.add_argument("--caches", action="store_true", help="compare the dynamic and static KV cache (model.cache) side by side")
    parser.add_argument("--batch-sizes", default="16,32", help="with --caches: comma-separated batch sizes (default 16,32)")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    FixedAnswers.log_calls = args.log_calls
    start = time.perf_counter()
    if args.mode == "tiny":
        from cac_align.vlm.tiny import build_tiny_qwen3_vl

        tiny = build_tiny_qwen3_vl()
        model, processor = tiny.model, tiny.processor
        videos, tokens = _videos(args.videos, 64, 96), args.tokens or 32
    else:
        model, processor = _full_size_qwen3_vl_8b()
        videos, tokens = _videos(args.videos, 480, 832), args.tokens or 1024
    say(f"mode={args.mode} videos={len(videos)} tokens/turn={tokens} device={model.device}: model built in {time.perf_counter() - start:.1f} s")
    options = CaCOptions(max_new_tokens=tokens)
    fixed = {"min_new_tokens": tokens}
    if args.caches:
        _compare_caches(model, processor, videos, options, fixed, [int(b) for b in args.batch_sizes.split(",")], args.mode == "gpu-8b")
        return
    # the dynamic cache, as these figures have always been taken (the default, "auto", would compile on a GPU)
    batched = CaCScorer(FixedAnswers(model, processor, max_batch_size=args.videos, generate_kwargs=fixed, cache="dynamic"), options)
    single = CaCScorer(FixedAnswers(model, processor, max_batch_size=1, generate_kwargs=fixed, cache="dynamic"), options)
    say(f"warm-up (2 videos batched): {_time(batched, videos[:2], 1):.2f} s")
    if args.profile:
        _profile({"batched": batched, "one-by-one": single}, videos)
        return
    t_batched = _time(batched, videos, args.repeats)
    say(f"batched:    {len(videos) / t_batched:.3f} videos/s ({t_batched / len(videos):.3f} s/video)")
    singles = videos[: args.single_videos] if args.single_videos else videos
    t_single = 0.0
    for k, video in enumerate(singles, 1):
        t_single += _time(single, [video], args.repeats)
        say(f"one-by-one: {k} video(s) so far, {t_single / k:.3f} s/video")
    t_single *= len(videos) / len(singles)  # per-video mean over the videos timed, for the whole set
    say(f"one-by-one: {len(videos) / t_single:.3f} videos/s ({t_single / len(videos):.3f} s/video, mean of {len(singles)} timed)")
    say(f"speed-up batched / one-by-one: {t_single / t_batched:.2f}x")


if __name__ == "__main__":
    main()
