"""Where the cac-demo loses an anomaly type on the way from frames to videos (diagnostics).

    python benchmarks/judge/cac_demo_video_probe.py framepool OUT/stage1/final OUT/bench_default/annotations.jsonl
    python benchmarks/judge/cac_demo_video_probe.py probe OUT/stage1/final --videos 300
    python benchmarks/judge/cac_demo_video_probe.py turn1 OUT/stage2/final OUT/bench_default/annotations.jsonl
    python benchmarks/judge/cac_demo_video_probe.py lmprobe OUT/stage2/final --videos 300

``framepool``: the stage-1 (frame) model asked about every frame of each held-out video at 4 fps
(the frame prompt, the status read after the checklist reasoning, as CaC reads it); a video's
score is its lowest frame reward. Per-type AUROC against the clean videos: what a video model
could reach if it used the frame model's view of every frame.

``probe``: a logistic regression on the vision tower's output tokens (max and mean over the
tokens of a video, together and each alone), trained on 60% of freshly rendered videos of one type and clean ones (seed
4242, which no training stream uses), AUROC on the other 40%. A type that the max separates and
the mean does not is a local signal in a few tokens: a reader must attend to those tokens to see it. Twice: the tower reads the 4 fps
frames in its usual pairs (Qwen3-VL patches two consecutive frames together), and each frame
duplicated into a pair of its own (a still, as stage 1 shows frames). High here but low on the
whole chain means the tower sees the type and the language model does not use it.

``turn1``: a video model (stage 2 or later) asked the turn-1 question about each held-out video
(4 fps scan, ``--max-frames`` cap); its reward is the status probability read after the checklist
reasoning (teacher-forced, so no answer has to be readable). Per-type AUROC: what the language
model reads from the video tokens, before turn 2 and the verdict's threshold.

``lmprobe``: the same turn-1 request through a video model, teacher-forced up to the status value,
and a logistic regression (as ``probe``) on its language model's hidden states, layer by layer:
the state where the status is read, and the max+mean over the video tokens' positions. Where the
type is separable on the video tokens but not at the status position, the model carries what
it needs and does not move it to where it answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cac_align.cac.infer import sample_capped
from cac_align.cac.prompts import frame_prompt, turn1_prompt
from cac_align.cac.schema import load_annotations
from cac_align.cac.train.settings import TrainCaCConfig
from cac_align.cac.train.stream import SynthStream, load_stream_synth
from cac_align.cac.train.targets import answer_json, checklist_cot
from cac_align.config import load_config
from cac_align.eval.bench import per_type_auroc
from cac_align.eval.metrics import auroc
from cac_align.video import Video, load_video
from cac_align.vlm.backend import user
from cac_align.vlm.hf import HFBackend, load_vlm, processor_inputs, render_chat

RECIPE = "recipes/cac/demo_stage1.yaml"  # the demo's caps: 128x192 frames on a 64-pixel grid
SCAN_FPS, MAX_FRAMES, MAX_PIXELS, MULTIPLE = 4.0, 64, 24576, 64


def _scan(video: Video, max_frames: int = MAX_FRAMES) -> Video:
    return sample_capped(video, SCAN_FPS, max_frames, MAX_PIXELS, MULTIPLE)


def _stills(scan: Video) -> Video:
    """Each frame twice, so every pair the tower patches is one still frame."""
    stamps = np.repeat(scan.timestamps, 2) + np.tile([0.0, 0.5 / scan.fps], scan.num_frames)
    return Video(np.repeat(scan.frames, 2, axis=0), 2 * scan.fps, stamps)


def _print_aurocs(records: list, scores: list[float], what: str) -> None:
    """Per-type AUROC of the clean videos against each type's (``eval bench``'s definition), then all."""
    for kind, value in sorted(per_type_auroc(records, scores).items()):
        if not np.isnan(value):
            print(f"{kind:22s} {what} {value:.3f}")
    print(f"{'all':22s} {what} {auroc(scores, [r.status == 'normal' for r in records]):.3f}")


def framepool(model: str, annotations: Path) -> None:
    backend = HFBackend.from_pretrained(model, max_batch_size=20, dtype="float32")
    prefix = answer_json(checklist_cot("frame"), "STATUS", []).split("STATUS")[0]  # up to the status value
    records = load_annotations(annotations).records
    scores = []
    for record in records:
        scan = _scan(load_video(record.video))
        requests = [[user(frame, frame_prompt(record.prompt, style="compact"))] for frame in scan.frames]
        probs = backend.choice_probs(requests, [prefix] * len(requests), ["normal", "abnormal"])
        scores.append(float(np.min(probs[:, 0] / (probs[:, 0] + probs[:, 1]))))
    _print_aurocs(records, scores, "video AUROC (lowest frame reward)")


def turn1(model: str, annotations: Path, max_frames: int) -> None:
    backend = HFBackend.from_pretrained(model, max_batch_size=8, dtype="float32")
    prefix = answer_json(checklist_cot("video"), "STATUS", []).split("STATUS")[0]
    records = load_annotations(annotations).records
    requests = []
    for record in records:
        video = load_video(record.video)
        scan = _scan(video, max_frames)
        requests.append([user(scan, turn1_prompt(video.duration_s, scan.fps, scan.num_frames, record.prompt, style="compact"))])
    probs = backend.choice_probs(requests, [prefix] * len(requests), ["normal", "abnormal"])
    _print_aurocs(records, [float(row[0] / (row[0] + row[1])) for row in probs], "turn-1 reward AUROC")


def _tower_features(model, processor, video: Video):
    request = [user(video, "x")]
    encoded = processor_inputs(processor, [render_chat(processor, request)], [request])
    with torch.no_grad():
        out = model.model.get_video_features(encoded["pixel_values_videos"], encoded["video_grid_thw"])
    tokens = out.pooler_output if hasattr(out, "pooler_output") else out[0]
    tokens = torch.cat(list(tokens)) if isinstance(tokens, (list, tuple)) else tokens
    return torch.cat([tokens.max(0).values, tokens.mean(0)])  # the first half is the max, the second the mean


def _probe_auroc(x, y, n_train: int) -> float:
    """L2-regularized logistic regression (Adam, 500 steps) on standardized features."""
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x[:n_train] @ w + b, y[:n_train]) + 1e-2 * w.square().sum()
        loss.backward()
        optimizer.step()
    logits = (x[n_train:] @ w + b).detach()
    return auroc((-logits).tolist(), (y[n_train:] == 0).tolist())  # higher = more normal, as a reward


def _probe_sets(model_path: str, videos: int, types: list[str]):
    """The model and processor, then per type: (type, stream of ``videos`` freshly rendered
    videos of that type, half planted, seed 4242, which no training stream uses)."""
    config = load_config(TrainCaCConfig, RECIPE, [f"model={model_path}", "out_dir=unused"], job="train-cac")
    model, processor = load_vlm(model_path, dtype="float32")
    torch.manual_seed(0)
    streams = ((kind, SynthStream(load_stream_synth(config.stream, seed=4242, n=videos, types=[kind], normal_fraction=0.5))) for kind in types)
    return model, processor, streams


def probe(model_path: str, videos: int, types: list[str]) -> None:
    model, processor, streams = _probe_sets(model_path, videos, types)
    for kind, stream in streams:
        pairs, stills, labels = [], [], []
        for i in range(len(stream)):
            scan = _scan(stream.video(i))
            pairs.append(_tower_features(model, processor, scan))
            stills.append(_tower_features(model, processor, _stills(scan)))
            labels.append(float(stream.record(i).status == "abnormal"))
        y, n_train = torch.tensor(labels), int(0.6 * len(labels))
        for name, x in (("pairs", pairs), ("stills", stills)):
            x = torch.stack(x)
            half = x.shape[1] // 2
            figures = {pool: _probe_auroc(features, y, n_train) for pool, features in (("max+mean", x), ("max", x[:, :half]), ("mean", x[:, half:]))}
            print(f"{kind:22s} {name:6s} probe AUROC on held-out videos ({len(y) - n_train} of {len(y)}): "
                  + ", ".join(f"{pool} {value:.3f}" for pool, value in figures.items()), flush=True)


def _lm_features(model, processor, video: Video, prompt: str, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The language model's hidden states on a turn-1 request, teacher-forced up to the status
    value: per layer (embeddings first), the state at the last position (where the status is
    read) and the max+mean over the video tokens' positions."""
    request = [user(video, prompt)]
    encoded = processor_inputs(processor, [render_chat(processor, request) + prefix], [request])
    with torch.no_grad():
        states = model(**encoded, output_hidden_states=True).hidden_states
    video_positions = encoded["input_ids"][0] == model.config.video_token_id
    last = torch.stack([h[0, -1] for h in states])
    pooled = torch.stack([torch.cat([h[0, video_positions].max(0).values, h[0, video_positions].mean(0)]) for h in states])
    return last, pooled


def lmprobe(model_path: str, videos: int, types: list[str]) -> None:
    model, processor, streams = _probe_sets(model_path, videos, types)
    prefix = answer_json(checklist_cot("video"), "STATUS", []).split("STATUS")[0]
    for kind, stream in streams:
        lasts, pooled, labels = [], [], []
        for i in range(len(stream)):
            video, record = stream.video(i), stream.record(i)
            scan = _scan(video)
            prompt = turn1_prompt(video.duration_s, scan.fps, scan.num_frames, record.prompt, style="compact")
            last, pool = _lm_features(model, processor, scan, prompt, prefix)
            lasts.append(last)
            pooled.append(pool)
            labels.append(float(record.status == "abnormal"))
        y, n_train = torch.tensor(labels), int(0.6 * len(labels))
        lasts, pooled = torch.stack(lasts), torch.stack(pooled)
        for layer in range(lasts.shape[1]):
            print(f"{kind:22s} layer {layer}: probe AUROC at the status position {_probe_auroc(lasts[:, layer], y, n_train):.3f}, "
                  f"on the video tokens (max+mean) {_probe_auroc(pooled[:, layer], y, n_train):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("framepool", help="frame model, lowest frame reward per held-out video")
    a.add_argument("model")
    a.add_argument("annotations", type=Path)
    b = sub.add_parser("probe", help="linear probe on the vision tower's video tokens")
    b.add_argument("model")
    b.add_argument("--videos", type=int, default=300, help="rendered videos per type (half planted)")
    b.add_argument("--types", nargs="+", default=["Physical Violations", "Object Distortion", "Human Distortion"])
    d = sub.add_parser("lmprobe", help="linear probes on a video model's language-model states, layer by layer")
    d.add_argument("model")
    d.add_argument("--videos", type=int, default=300, help="rendered videos per type (half planted)")
    d.add_argument("--types", nargs="+", default=["Physical Violations", "Human Distortion"])
    c = sub.add_parser("turn1", help="a video model's turn-1 status reward per held-out video")
    c.add_argument("model")
    c.add_argument("annotations", type=Path)
    c.add_argument("--max-frames", type=int, default=MAX_FRAMES, help="turn-1 frame cap (the demo's: 64, i.e. 4 fps for 5 s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.command == "framepool":
        framepool(args.model, args.annotations)
    elif args.command == "turn1":
        turn1(args.model, args.annotations, args.max_frames)
    elif args.command == "lmprobe":
        lmprobe(args.model, args.videos, args.types)
    else:
        probe(args.model, args.videos, args.types)


if __name__ == "__main__":
    main()
