"""What reward scoring runs through the model per video, before and now:

1. two-turn CaC, with the status probabilities read from each turn's own generation (now) vs
   re-encoded afterwards (before), on the shipped cac-demo;
2. UnifiedReward's ``probs`` scoring, with the five v1 score positions read through one KV cache
   (now) vs one forward pass over the whole request per position (before), on the tiny random
   Qwen2.5-VL (its architecture; the numbers are meaningless, the counts and times are not) at
   Wan's shape: 81 frames at 16 fps, 480x832 frames downscaled to ``--ur-pixels``.

    python benchmarks/judge/status_encoding.py                  # cac-demo, 32 held-out videos, batch 16
    python benchmarks/judge/status_encoding.py --model outputs/cac_demo/stage3/final --videos 64
    python benchmarks/judge/status_encoding.py --mode gpu-ur7b  # UnifiedReward-7B's architecture (Qwen2.5-VL-7B),
                                                          # random weights, bf16 on a CUDA GPU: part 2 only
    python benchmarks/judge/status_encoding.py --mode cpu-check # the gpu-ur7b code path on a tiny architecture

The GPU mode has not given figures yet (its first run stopped at a missing package, see
benchmarks/README.md); ``cpu-check`` runs its
code with the tiny Qwen2.5-VL sizes, so only the sizes differ. It also reports peak GPU memory.

Machine-independent figures, counted with hooks on the model: videos through the vision tower,
visual tokens out of it (patches / merge^2) and tokens through the language model (prefill and
decoding), per scored video; plus the wall-clock ratio, both paths in the same run after one
warm-up call each. "before" is the same backend with the generic ``generate_scored`` of
``BackendBase`` (``generate``, then ``choice_probs`` re-encodes the request), as CaC did before. The rewards of both paths are
compared (they differ only where a generated status token is not the one its text re-tokenizes
to, and by float noise).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


class Counter:
    """Forward hooks on the vision tower and the language model."""

    def __init__(self, model):
        self.videos = self.visual_tokens = self.llm_tokens = 0
        merge = model.config.vision_config.spatial_merge_size
        inner = model.model

        def visual(module, args, kwargs, output):
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            self.videos += int(grid.shape[0])
            self.visual_tokens += int(grid.prod(-1).sum()) // (merge * merge)

        def language(module, args, kwargs, output):
            embeds = kwargs.get("inputs_embeds")
            self.llm_tokens += int(embeds.shape[0] * embeds.shape[1])

        self.handles = [
            inner.visual.register_forward_hook(visual, with_kwargs=True),
            inner.language_model.register_forward_hook(language, with_kwargs=True),
        ]

    def reset(self):
        self.videos = self.visual_tokens = self.llm_tokens = 0

    def remove(self):
        for handle in self.handles:
            handle.remove()


def main() -> None:
    from cac_align.cac.infer import CaCOptions
    from cac_align.config import load_config
    from cac_align.data.synthetic import SynthConfig, video_kinds, make_spec, render
    from cac_align.models import model_settings
    from cac_align.rewards.cac import CaCReward
    from cac_align.video import Video
    from cac_align.vlm.backend import BackendBase
    from cac_align.vlm.hf import HFBackend

    class Reencoding(HFBackend):
        generate_scored = BackendBase.generate_scored  # the path before: generate, then choice_probs re-encodes the request

    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["cpu", "gpu-ur7b", "cpu-check"], default="cpu",
                        help="cpu: both parts on the CPU; gpu-ur7b / cpu-check: UnifiedReward part only, full-size / check sizes")
    parser.add_argument("--model", default="cac-demo")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ur-videos", type=int, default=8)
    parser.add_argument("--ur-pixels", type=int, default=64 * 28 * 28, help="pixel cap per frame for UnifiedReward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode != "cpu":
        unified_reward_probs(args)
        return

    synth = load_config(SynthConfig, "recipes/synth/default.yaml", ["out_dir=unused", f"n={args.videos}", "seed=5002"], job="synth")
    kinds = video_kinds(synth)
    videos = [Video(render(make_spec(synth, i, kinds[i]))[0], synth.fps) for i in range(args.videos)]
    settings = model_settings(args.model) or {"prompt_style": "compact", "max_pixels": 24576, "size_multiple": 64}
    options = CaCOptions(max_frames_turn2=8, max_new_tokens=320).for_model(settings)
    now = HFBackend.from_pretrained(args.model, max_batch_size=args.batch, dtype="float32", device="cpu")
    before = Reencoding(now.model, now.processor, max_batch_size=args.batch)
    counter = Counter(now.model)
    figures, rewards = {}, {}
    for label, backend in (("before", before), ("now", now)):
        reward = CaCReward(backend, options, batch_size=args.batch)
        reward(videos[: args.batch])  # warm-up
        counter.reset()
        start = time.perf_counter()
        out = reward(videos)
        seconds = time.perf_counter() - start
        turns = sum(1 + (d.get("turn2") is not None) for d in out.details)
        figures[label] = {
            "seconds": seconds,
            "videos_encoded": counter.videos / args.videos,
            "visual_tokens": counter.visual_tokens / args.videos,
            "llm_tokens": counter.llm_tokens / args.videos,
            "turns": turns / args.videos,
        }
        rewards[label] = out.scores
        f = figures[label]
        print(
            f"{label:>6}: {f['turns']:.2f} turns/video; per video {f['videos_encoded']:.2f} video encodings, "
            f"{f['visual_tokens']:.0f} visual tokens, {f['llm_tokens']:.0f} LLM tokens; {seconds:.1f} s "
            f"({int(out.valid.sum())} valid)"
        )
    b, n = figures["before"], figures["now"]
    print(
        f"now / before: video encodings {n['videos_encoded'] / b['videos_encoded']:.2f}x, visual tokens "
        f"{n['visual_tokens'] / b['visual_tokens']:.2f}x, LLM tokens {n['llm_tokens'] / b['llm_tokens']:.2f}x, "
        f"wall clock {n['seconds'] / b['seconds']:.2f}x"
    )
    both = np.isfinite(rewards["before"]) & np.isfinite(rewards["now"])
    print(f"rewards: max |now - before| = {np.max(np.abs(rewards['now'][both] - rewards['before'][both])):.2e} over {both.sum()} videos")
    counter.remove()
    unified_reward_probs(args)


# Qwen2.5-VL-7B (UnifiedReward-qwen-7b's backbone), its published config values
QWEN2_5_VL_7B = dict(
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
    text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
              head_dim=128, vocab_size=152064, max_position_embeddings=128000,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
)
# the same classes at test sizes (for --mode cpu-check)
QWEN2_5_VL_CHECK = dict(
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, vocab_size=2048, max_position_embeddings=32768,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
)


def _qwen2_5_vl(sizes: dict, device: str, dtype: "torch.dtype"):
    """A random Qwen2.5-VL of ``sizes`` with the real Qwen2-VL processors (transformers' default
    pixel bounds) and the tiny tokenizer (token ids are all that matters to the compute)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from cac_align.vlm.tiny import TINY_CHAT_TEMPLATE, _token_ids, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    text = dict(sizes["text"], eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = Qwen2_5_VLConfig(vision_config=dict(sizes["vision"]), text_config=text, tie_word_embeddings=False, **_token_ids(tokenizer))
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.eos_token_id = text["eos_token_id"]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2),
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return model, processor


def unified_reward_probs(args: argparse.Namespace) -> None:
    from cac_align.rewards.unified import UnifiedReward
    from cac_align.video import Video
    from cac_align.vlm.backend import BackendBase
    from cac_align.vlm.hf import HFBackend
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl

    class RoundByRound(HFBackend):
        choice_probs_steps = BackendBase.choice_probs_steps  # the path before: each score position re-encodes the request

    if args.mode == "gpu-ur7b":
        model, processor = _qwen2_5_vl(QWEN2_5_VL_7B, "cuda", torch.bfloat16)
    elif args.mode == "cpu-check":
        model, processor = _qwen2_5_vl(QWEN2_5_VL_CHECK, "cpu", torch.float32)
    else:
        tiny = build_tiny_qwen2_5_vl(seed=0)
        model, processor = tiny.model, tiny.processor
    on_gpu = model.device.type == "cuda"
    rng = np.random.default_rng(0)
    videos = [Video(rng.integers(0, 255, (81, 480, 832, 3), dtype=np.uint8), 16.0) for _ in range(args.ur_videos)]
    prompts = ["a cat jumps over a fence"] * len(videos)
    counter = Counter(model)
    figures, scores = {}, {}
    pixels = None if args.mode == "gpu-ur7b" else args.ur_pixels  # the GPU mode keeps the processor's own bounds
    for label, backend_class in (("before", RoundByRound), ("now", HFBackend)):
        reward = UnifiedReward(backend_class(model, processor, max_batch_size=args.batch), scoring="probs", max_pixels=pixels)
        reward(videos[:2], prompts[:2])  # warm-up
        counter.reset()
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = reward(videos, prompts)
        if on_gpu:
            torch.cuda.synchronize()
            print(f"peak GPU memory ({label}): {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        seconds = time.perf_counter() - start
        n = len(videos)
        figures[label] = (counter.videos / n, counter.visual_tokens / n, counter.llm_tokens / n, seconds)
        scores[label] = out.scores
        print(f"UnifiedReward probs {label:>6}: per video {figures[label][0]:.2f} video encodings, {figures[label][1]:.0f} visual tokens, "
              f"{figures[label][2]:.0f} LLM tokens; {seconds:.2f} s for {n} videos")
    b, n = figures["before"], figures["now"]
    print(f"UnifiedReward probs now / before: video encodings {n[0] / b[0]:.2f}x, visual tokens {n[1] / b[1]:.2f}x, "
          f"LLM tokens {n[2] / b[2]:.2f}x, wall clock {n[3] / b[3]:.2f}x; "
          f"max |score difference| {np.max(np.abs(scores['now'] - scores['before'])):.1e}")


if __name__ == "__main__":
    main()
