"""Experiment (not a package feature yet): stage 2 of the demo with attention supervision.

    python benchmarks/stage2_attention_supervision.py model=OUT/stage1/final out_dir=OUT/stage2_att train.max_steps=600
    python benchmarks/cac_demo_video_probe.py turn1 OUT/stage2_att/final OUT/bench_default/annotations.jsonl

The demo's stage-2 recipe (``recipes/cac/demo_stage2.yaml``, overrides on the command line) with one
extra loss term. For every training sample whose turn-1 answer is abnormal, the last layer's
attention from the position that predicts the status value (mean over heads) is pulled toward
the video tokens of the frame pairs inside that answer's "Attributed Time Region":
``loss += ATT_LAMBDA * -log(attention mass on those tokens)`` (``ATT_LAMBDA``, default 1). Why:
docs/cac_training.md, "What was tried", items 9-10 (the language model carries the float at the
video tokens and does not route it to where it answers).

It patches the package from outside (the model loads with eager attention so that attention
weights come back; ``Trainer.compute_loss`` is replaced in this process), so it is a measurement
tool, not a recipe option. Measured on the shipped chain's stage 1, 600 steps: turn-1 float AUROC
0.813 against 0.677 without the term (docs/cac_training.md, item 10).
"""
import os
import sys

import torch
import transformers

from cac_align.cac.judgment import parse_judgment
from cac_align.cac.train import sft
from cac_align.cac.train.settings import TrainCaCConfig
from cac_align.config import load_config

LAMBDA = float(os.environ.get("ATT_LAMBDA", "1.0"))
STATE = {"calls": 0, "att": 0.0, "mass": 0.0, "n": 0}
orig_load = sft.load_model
orig_collate = sft.collate


def load_eager(config):
    model, processor = orig_load(config)
    model.set_attn_implementation("eager")
    STATE["video"] = model.config.video_token_id
    STATE["tok"] = processor.tokenizer
    STATE["merge2"] = model.config.vision_config.spatial_merge_size ** 2
    return model, processor


def collate_att(batch, pad_id, padding_side="right", status_mask=False):
    out = orig_collate(batch, pad_id, padding_side, status_mask=True)
    ids, labels, marks_all = out["input_ids"], out["labels"], out["status_mask"]
    grid = out.get("video_grid_thw")
    B, L = ids.shape
    query = torch.full((B,), -1, dtype=torch.long)
    target = torch.zeros((B, L), dtype=torch.bool)
    g = 0
    for r in range(B):
        pos = (ids[r] == STATE["video"]).nonzero().flatten()
        first = None  # the row's first video: its grid row
        counted = 0
        while grid is not None and counted < len(pos):
            tokens = int(grid[g].prod()) // STATE["merge2"]
            if first is None:
                first = (grid[g], tokens)
            counted += tokens
            g += 1
        if first is None:
            continue
        marks = marks_all[r].nonzero().flatten()
        if len(marks) == 0:
            continue
        # the first answer (turn 1's, also in clip-context samples) and the first video (the scan)
        judgment = parse_judgment(STATE["tok"].decode(labels[r][labels[r] != -100]), 1)
        if judgment.status != "abnormal":
            continue
        pairs_n, first_tokens = int(first[0][0]), first[1]
        per_pair = first_tokens // pairs_n
        pairs = {f // 2 for a in judgment.anomalies if a.frames for f in range(a.frames[0], a.frames[1] + 1)}
        pairs = {p for p in pairs if p < pairs_n}
        if not pairs:
            continue
        for p in pairs:
            target[r, pos[p * per_pair : (p + 1) * per_pair]] = True
        query[r] = marks[0] - 1
    out["att_query"], out["att_target"] = query, target
    STATE["collates"] = STATE.get("collates", 0) + 1
    if STATE["collates"] <= 3:  # show that the first batches are supervised where they should be
        print(f"[attnsup] batch {STATE['collates']}: {B} rows, supervised rows {int((query >= 0).sum())}, target tokens {target.sum(-1).tolist()}", flush=True)
    return out


def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    query, target = inputs.pop("att_query"), inputs.pop("att_target")
    inputs.pop("status_mask", None)
    outputs = model(**inputs, output_attentions=True)
    loss = outputs.loss
    rows = (query >= 0).nonzero().flatten()
    if len(rows) and model.training:
        att = outputs.attentions[-1][rows, :, query[rows], :].float().mean(1)  # (R, L)
        mass = (att * target[rows].to(att.device)).sum(-1)
        att_loss = -torch.log(mass + 1e-6).mean()
        loss = loss + LAMBDA * att_loss
        STATE["att"] += float(att_loss)
        STATE["mass"] += float(mass.mean())
        STATE["n"] += 1
    STATE["calls"] += 1
    if model.training and STATE["calls"] % 50 == 0 and STATE["n"]:
        print(f"[attnsup] calls {STATE['calls']}: att loss {STATE['att'] / STATE['n']:.3f}, mass on window {STATE['mass'] / STATE['n']:.3f}", flush=True)
        STATE.update(att=0.0, mass=0.0, n=0)
    return (loss, outputs) if return_outputs else loss


sft.load_model = load_eager
sft.collate = collate_att
transformers.Trainer.compute_loss = compute_loss
config = load_config(TrainCaCConfig, "recipes/cac/demo_stage2.yaml", sys.argv[1:], job="train-cac")
sft.run(config)
