"""Stage 3's rollout generation (the ``hf`` sampler) on the dynamic vs the static KV cache.

    python benchmarks/judge/rollout_throughput.py                        # tiny random Qwen3-VL on the CPU (checks the path)
    python benchmarks/judge/rollout_throughput.py --mode gpu-8b          # Qwen3-VL-8B's architecture, random weights, CUDA

One rollout step of CaC stage 3 is mostly generation: every video's G rollouts answer turn 1
(the whole video at 4 fps), and those that flag a window answer turn 2 (a 1 s clip at 8 fps)
with turn 1 in context (:mod:`cac_align.cac.train.rollouts`). This times exactly that
generation through :class:`~cac_align.cac.train.rollouts.HFSampler` at temperature 1 with the
paper's budget (1,024 new tokens per turn; 5 s videos at 480x832 in gpu-8b mode), for
``--batch`` rollouts per ``generate`` call (``grpo.generation_batch_size``), in both cache
modes (``grpo.cache``). Each mode runs the step twice: the first includes compiling (static
mode), the second is the steady state. Random weights rarely write the end-of-turn token, so
nearly every rollout uses its whole budget; the prompts of turn 2 hold a fixed turn-1 answer.
The update that follows generation (one forward and backward pass over the rollouts) is not
timed here. Figures are printed as they are measured.
"""

from __future__ import annotations

import argparse
import json
import time

from score_throughput import _full_size_qwen3_vl_8b, _videos, say

from cac_align.cac.infer import sample_capped
from cac_align.cac.prompts import turn1_prompt, turn2_prompt
from cac_align.cac.train.collate import answer_part, concat_parts, encode_context
from cac_align.cac.train.rollouts import HFSampler, TurnRequest, _contexts
from cac_align.vlm.backend import assistant, user
from cac_align.vlm.hf import StaticShapes

TURN1 = json.dumps({"cot": "scan", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "time": [2.0, 3.0]}]})


def _requests(processor, videos, tokens: int) -> tuple[list[TurnRequest], list[TurnRequest]]:
    """Turn-1 and turn-2 requests of one rollout step, as collect_rollouts builds them."""
    firsts, seconds = [], []
    answer = processor.tokenizer(TURN1, add_special_tokens=False)["input_ids"]
    for video in videos:
        scan = sample_capped(video, 4.0, 32)
        first = user(scan, turn1_prompt(video.duration_s, scan.fps, scan.num_frames, "a person waves"))
        clip = sample_capped(video.crop(2.0, 3.0), 8.0, 16)
        second = user(clip, turn2_prompt((2.0, 3.0), clip.fps, clip.num_frames))
        contexts = _contexts(processor, [first, assistant(""), second, assistant("")])
        context1, context2 = encode_context(processor, *contexts[0]), encode_context(processor, *contexts[1])
        firsts.append(TurnRequest(context1, None, scan, 1, tokens))
        seconds.append(TurnRequest(concat_parts([context1, answer_part(answer), context2]), None, clip, 2, tokens))
    return firsts, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["tiny", "gpu-8b"], default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="rollouts per generate call (tiny: 4, gpu-8b: 16)")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per turn (tiny: 32, gpu-8b: 1024)")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    start = time.perf_counter()
    if args.mode == "tiny":
        from transformers.generation.configuration_utils import CompileConfig

        from cac_align.vlm.tiny import build_tiny_qwen3_vl

        tiny = build_tiny_qwen3_vl()
        model, processor = tiny.model, tiny.processor
        videos, tokens, batch = _videos(args.batch or 4, 64, 96), args.tokens or 32, args.batch or 4
        compile_config = CompileConfig(backend="eager", mode=None)  # trace on the CPU, run eagerly
        compile_config._compile_all_devices = True
    else:
        model, processor = _full_size_qwen3_vl_8b()
        videos, tokens, batch = _videos(args.batch or 16, 480, 832), args.tokens or 1024, args.batch or 16
        compile_config = None  # transformers' default: inductor with CUDA graphs
    on_gpu = model.device.type == "cuda"
    say(f"mode={args.mode} rollouts per call={batch} tokens/turn={tokens} device={model.device}: model built in {time.perf_counter() - start:.1f} s")
    turn1, turn2 = _requests(processor, videos, tokens)
    say(f"prompt tokens: turn 1 {turn1[0].prompt.input_ids.numel()}, turn 2 {turn2[0].prompt.input_ids.numel()}")
    results = {}
    for mode in ("dynamic", "static"):
        static = StaticShapes(batch, None, 256, compile_config) if mode == "static" else None
        sampler = HFSampler(model, processor, temperature=1.0, batch_size=batch, static=static)
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        passes = []
        for k in range(2):
            begin = time.perf_counter()
            first = sampler.generate(turn1, seed=k)
            middle = time.perf_counter()
            sampler.generate(turn2, seed=100 + k)
            end = time.perf_counter()
            new = sum(len(s.token_ids) for s in first) / len(first)
            passes.append(end - begin)
            say(f"{mode:7s} pass {k + 1}: turn 1 {middle - begin:7.2f} s, turn 2 {end - middle:7.2f} s, "
                f"{(end - begin) / batch:6.3f} s per rollout ({new:.0f} tokens in turn 1 on average)"
                + (" (compile included)" if mode == "static" and k == 0 else ""))
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
        say(f"{mode:7s} peak memory {peak:.1f} GiB")
        results[mode] = passes
    say(f"dynamic time / static time (above 1: static is faster): second pass {results['dynamic'][1] / results['static'][1]:.2f}x, "
        f"first pass {results['dynamic'][0] / results['static'][0]:.2f}x")


if __name__ == "__main__":
    main()
