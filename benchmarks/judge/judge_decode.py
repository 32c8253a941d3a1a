"""The judge on the static KV cache, stock vs ours: s/video, ms per token per turn, peak memory.

    python benchmarks/judge/judge_decode.py --mode gpu-8b --attention ours     # Qwen3-VL-8B's architecture, batch 32, 512 tokens/turn
    python benchmarks/judge/judge_decode.py --mode gpu-8b --attention stock    # the same, as before #71 (gpu_quick.sh runs both)
    python benchmarks/judge/judge_decode.py --mode tiny --attention ours       # tiny random Qwen3-VL on the CPU: the path, seconds

``CaCScorer`` on ``HFBackend(cache="static")`` with ``score_throughput.py``'s ``FixedAnswers`` (each
turn generates exactly ``--tokens`` tokens with the real model, then a scripted valid answer
drives both turns), one batch of ``--batch`` videos of 5 s at 480x832 (gpu-8b; the paper's
frames: 21 in turn 1, a 1 s clip at 8 fps in turn 2), scored ``--passes`` times. The first pass
includes compiling the decode step for each shape (inductor with CUDA graphs, transformers'
default; a warm ``TORCHINDUCTOR_CACHE_DIR`` shortens it), the second is the steady state.

``--attention ours`` is the backend as it is: the grouped decode attention
(``cac_align.vlm.grouped_decode``) and each turn on a cache of its own length. ``--attention
stock`` is the backend as it was before #71, rebuilt here: transformers' own sdpa on the text
decoder (its compiled step copies K/V per query head) and transformers' own static cache sizing
(``cache_implementation="static"``: the longest cache seen is kept, so turn 1 of the second pass
runs on turn 2's length). Per turn it prints the seconds of the call (prefill, decode and the
status read) and that over the generated tokens (ms per token, prefill included, as the issue's
figures); per pass s/video and peak GPU memory. Each figure is printed as it is measured, and
one ``RESULT {json}`` line closes each pass (gpu_quick.sh collects them).
"""

from __future__ import annotations

import argparse
import json
import time

from score_throughput import FixedAnswers, _full_size_qwen3_vl_8b, _videos, say

from cac_align.cac.infer import CaCOptions, CaCScorer
from cac_align.vlm.grouped_decode import text_attention, use_stock_attention
from cac_align.vlm.hf import StaticShapes


class StockShapes(StaticShapes):
    """The static cache as transformers sizes it (the backend before #71): ``generate`` asks for
    ``cache_implementation="static"`` and transformers keeps the longest length seen."""

    def generate_kwargs(self, model, prompt_len, max_new_tokens):
        kwargs = {"cache_implementation": "static", "max_cache_len": self.cache_length(prompt_len, max_new_tokens)}
        if self.compile_config is not None:
            kwargs["compile_config"] = self.compile_config
        return kwargs


class TimedTurns(FixedAnswers):
    """FixedAnswers that records each ``generate_scored`` call: turn, rows, prompt tokens,
    generated tokens, seconds (synchronised on CUDA)."""

    calls: list

    def generate_scored(self, requests, choices, prefix_of, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        completions, probs = super().generate_scored(requests, choices, prefix_of, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        new = max(len(c.token_ids) for c in completions)
        turn = 1 if len(requests[0]) == 1 else 2
        self.calls.append({"turn": turn, "videos": len(requests), "prompt_tokens": self._prompt_tokens, "new_tokens": new, "seconds": seconds})
        say(f"  turn {turn}: {len(requests)} videos, {self._prompt_tokens} prompt tokens, {new} new tokens: {seconds:.2f} s "
            f"({1000 * seconds / max(new, 1):.1f} ms per token, prefill included)")
        return completions, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["tiny", "gpu-8b"], default="tiny")
    parser.add_argument("--attention", choices=["ours", "stock"], default="ours")
    parser.add_argument("--batch", type=int, default=None, help="videos in the one batch (tiny: 4, gpu-8b: 32)")
    parser.add_argument("--tokens", type=int, default=None, help="generated tokens per turn (tiny: 8, gpu-8b: 512)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="video length (the paper's 5 s; shorter in a quick check)")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    on_gpu = args.mode == "gpu-8b"
    start = time.perf_counter()
    compile_config = None
    if on_gpu:
        model, processor = _full_size_qwen3_vl_8b()
        batch, tokens = args.batch or 32, args.tokens or 512
        videos = _videos(batch, 480, 832, seconds=args.seconds)
    else:
        from cac_align.vlm.tiny import build_tiny_qwen3_vl

        tiny = build_tiny_qwen3_vl()
        model, processor = tiny.model, tiny.processor
        batch, tokens = args.batch or 4, args.tokens or 8
        videos = _videos(batch, 64, 96, seconds=args.seconds)
        # no compile on the CPU (transformers compiles the decode step on CUDA only): this mode checks the script's
        # path and its figures; that our decode step and stock's trace is tests/vlm/test_grouped_decode.py's subject
    backend = TimedTurns(model, processor, max_batch_size=batch, generate_kwargs={"min_new_tokens": tokens}, cache="static", compile_config=compile_config)
    if args.attention == "stock":
        use_stock_attention(model)
        backend.static = StockShapes(batch, None, backend.static.length_multiple, compile_config)
    say(f"judge_decode: mode={args.mode} attention={args.attention} (text decoder: {text_attention(model)}, vision: "
        f"{model.config.vision_config._attn_implementation}) batch={batch} tokens/turn={tokens} device={model.device} "
        f"{torch.cuda.get_device_name() if on_gpu else 'cpu'}: model built in {time.perf_counter() - start:.1f} s")
    scorer = CaCScorer(backend, CaCOptions(max_new_tokens=tokens))
    for n in range(1, args.passes + 1):
        backend.calls = []
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        results = scorer.score(videos)
        seconds = time.perf_counter() - start
        assert all(r.valid and r.turn2 is not None for r in results), [r.error for r in results]
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
        turns = {c["turn"]: c for c in backend.calls}
        result = {"attention": args.attention, "mode": args.mode, "pass": n, "batch": batch, "tokens": tokens,
                  "s_per_video": seconds / batch, "seconds": seconds, "peak_gib": peak,
                  "ms_per_token": {f"turn{t}": 1000 * c["seconds"] / max(c["new_tokens"], 1) for t, c in turns.items()},
                  "prompt_tokens": {f"turn{t}": c["prompt_tokens"] for t, c in turns.items()}}
        say(f"pass {n} ({'compile included' if n == 1 else 'steady'}): {seconds / batch:.3f} s/video ({seconds:.1f} s for {batch}), "
            f"turn 1 {result['ms_per_token'].get('turn1', float('nan')):.1f} ms/token, turn 2 {result['ms_per_token'].get('turn2', float('nan')):.1f} ms/token, "
            f"peak {peak:.1f} GiB")
        say("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
