"""What a CaC stage-1 model sees on single frames, per anomaly type (the cac-demo diagnostic).

    python benchmarks/judge/cac_demo_frame_types.py outputs/cac_demo/stage1/final
    python benchmarks/judge/cac_demo_frame_types.py outputs/cac_demo/stage1/final --frames 48

For each type stage 1 trains on (``data.frame_types`` of ``recipes/cac/demo_stage1.yaml``), held-out
frames (seed 4321, no training stream uses it) of videos with that type planted and of clean
videos, asked with the stage-1 frame prompt; the model writes its answer and the status it wrote
is its verdict; the reward is read as CaC reads it (``held_out_metrics`` of stages 1-2). Tells
whether a type is missed because the vision features do not see it (low AUROC here) or because
a later stage does not use them (high here, low on whole videos).
"""

from __future__ import annotations

import argparse

import torch

from cac_align.eval.held_out import held_out_metrics
from cac_align.cac.train.settings import TrainCaCConfig
from cac_align.cac.train.stream import StageStream, SynthStream, load_stream_synth
from cac_align.config import load_config
from cac_align.vlm.hf import load_vlm

RECIPE = "recipes/cac/demo_stage1.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a stage-1 (or any frame-prompt) model folder")
    parser.add_argument("--frames", type=int, default=24, help="videos per type (half planted, half clean); two frames each")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(TrainCaCConfig, RECIPE, [f"model={args.model}", "out_dir=unused"], job="train-cac")
    model, processor = load_vlm(args.model, dtype="float32")
    print(f"{'type':22s} frames  accuracy  recall(anomalous)  recall(normal)  AUROC  valid")
    for kind in config.data.frame_types:
        synth = load_stream_synth(config.stream, seed=4321, n=args.frames, types=[kind], normal_fraction=0.5)
        held = StageStream(1, SynthStream(synth), config.data, processor, 7)
        chats = [held.chat(i) for i in range(len(held))]  # frames only: stage 1 asks no clips
        m = held_out_metrics(model, processor, chats, batch_size=16, max_new_tokens=config.train.detection_max_new_tokens)
        print(
            f"{kind:22s} {len(chats):6d}  {m['detection_accuracy']:8.3f}  {m['detection_recall_abnormal']:17.3f}  "
            f"{m['detection_recall_normal']:14.3f}  {m['detection_auroc']:5.3f}  {m['detection_valid_fraction']:5.3f}"
        )


if __name__ == "__main__":
    main()
