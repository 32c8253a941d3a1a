"""A second ms-swift plugin, for tests/conformance/test_ms_swift_grpo.py only: it watches ms-swift's
GRPO trainer and scripts some answers, so that a random tiny model reaches turn 2.

- **Scripted answers.** A random model never writes a readable verdict, so no rollout of it would
  reach turn 2. The probe wraps ms-swift's TransformersEngine.infer: after the model has
  sampled, every other turn-1 answer of a call (its own answer is kept for the rest) and every
  turn-2 answer is replaced by the ground truth, written by our stage 3's own stand-in
  (``SimulatedPolicy`` with no noise) and tokenized. Our own stage 3 does the same on tiny
  models (``grpo.sampler: simulated``). Everything after the answer is ms-swift's: the
  scheduler's turns, the encoding, the rewards, the loss, the update.
- **What the trainer trained on.** It wraps ``encode_sample`` (the encoding the loss reads) and
  ``score_completions`` (the rewards) in ms-swift's GRPO trainer module and appends each to
  ``$CAC_SWIFT_PROBE`` (JSON lines): ids, labels, videos, rollout infos, rewards.
"""

from __future__ import annotations

import json
import os

import numpy as np
from swift.infer_engine.transformers_engine import TransformersEngine
from swift.rlhf_trainers import grpo_trainer

from cac_align.cac.schema import AnnotationRecord
from cac_align.cac.train.rollouts import SimulatedPolicy, TurnRequest
from cac_align.integrations.ms_swift.cac_rows import load_spec

OUT = os.environ["CAC_SWIFT_PROBE"]


def _write(kind: str, data: dict) -> None:
    with open(OUT, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"kind": kind, **data}) + "\n")


def _scripted(engine: TransformersEngine, request, choice) -> None:
    cac = json.loads(request.data_dict["cac"])
    record = AnnotationRecord.from_dict(cac["record"])
    turn = sum(1 for m in request.messages if m["role"] == "user")
    shown = load_spec(request.videos[turn - 1])
    policy = SimulatedPolicy(engine.tokenizer, noise=0.0)
    ask = TurnRequest(None, record, shown, turn, 10_000)
    text = policy._turn1(ask, np.random.default_rng(0)) if turn == 1 else policy._turn2(ask, np.random.default_rng(0))
    choice.token_ids = policy.generate([ask], seed=0)[0].token_ids
    choice.message.content = text
    choice.finish_reason = "stop"
    choice.logprobs = None
    _write("scripted", {"turn": turn, "text": text})


_infer = TransformersEngine.infer


def infer(self, infer_requests, *args, **kwargs):
    responses = _infer(self, infer_requests, *args, **kwargs)
    for k, (request, response) in enumerate(zip(infer_requests, responses)):
        if getattr(request, "data_dict", None) and "cac" in request.data_dict:
            turn = sum(1 for m in request.messages if m["role"] == "user")
            if turn == 2 or k % 2 == 0:
                _scripted(self, request, response.choices[0])
    return responses


TransformersEngine.infer = infer

_encode_sample = grpo_trainer.encode_sample


def encode_sample(sample, template, **kwargs):
    encoded = _encode_sample(sample, template, **kwargs)
    if not kwargs.get("encode_prompt_only"):
        grid = encoded.get("video_grid_thw")
        pixels = encoded.get("pixel_values_videos")
        _write("encoded", {
            "input_ids": list(map(int, encoded["input_ids"])),
            "labels": list(map(int, encoded["labels"])),
            "videos": list(sample.videos),
            "rollout_infos": {k: v for k, v in (sample.rollout_infos or {}).items() if k != "videos"},
            "response_token_ids": sample.response_token_ids,
            "video_grid_thw": grid.tolist() if grid is not None else None,
            "pixel_sum": float(pixels.double().sum()) if pixels is not None else None,
            "request_id": sample.request_id,
        })
    return encoded


grpo_trainer.encode_sample = encode_sample

_score = grpo_trainer.score_completions


def score_completions(samples, *args, **kwargs):
    rewards = _score(samples, *args, **kwargs)
    for sample, row in zip(samples, rewards.tolist()):
        _write("reward", {"request_id": sample.request_id, "rewards": row, "rollout_infos": {k: v for k, v in (sample.rollout_infos or {}).items() if k != "videos"}})
    return rewards


grpo_trainer.score_completions = score_completions
