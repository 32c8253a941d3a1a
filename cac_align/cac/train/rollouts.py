"""CaC stage 3's rollouts: the policy (or a stand-in) answers both turns of the protocol.

Each video gets G complete two-turn rollouts: turn 1 sees the whole video at ``data.scan_fps``
(4 fps) with the turn-1 prompt; a rollout whose turn 1 says abnormal with a usable window crops
*its own* window, resamples it at ``data.clip_fps`` (8 fps) and asks turn 2 with its turn 1 in
context. A rollout with no usable window ends after turn 1. Prompts, sampling caps and window
rules are inference's (:mod:`cac_align.cac.infer`); rewards are Eq. 2-6
(:func:`~cac_align.cac.train.rewards.cac_reward`). The trainer is
:mod:`cac_align.jobs.train_cac_grpo`.

**Token-exact conversations.** The conversation is kept as token ids, never re-tokenized from
decoded text: turn 2 is generated from ``[turn-1 context] + [turn-1 generated ids] + [turn-2
context]``, and the loss pass reads those same ids, so the log-probs are of the tokens that
were sampled (decode-then-encode can produce different ids). The contexts are the chat
template's own text (cut with :func:`~cac_align.cac.train.collate.segment_chat`), so the
sequence is what inference renders for the same conversation.

**Samplers** (``grpo.sampler``; "generator" in this project means the video generator):

- ``hf`` (:class:`HFSampler`, the paper's setting): the policy itself samples, through
  transformers' ``generate`` with a fresh sampling config (temperature only: no top-k / top-p
  from the checkpoint, so the sampling distribution is softmax(logits / T), the one the loss
  uses). It also records the log-probs it sampled with.
- ``simulated`` (:class:`SimulatedPolicy`): an offline stand-in for a trained stage-2 model, for
  smoke tests and tiny recipes. A random tiny model never writes valid JSON, so all its rollouts
  would score the same and nothing would train; the simulated policy writes the ground-truth
  answer with random damage (jittered windows and boxes, swapped types, flipped statuses,
  broken JSON; amount set by ``grpo.simulated_noise``). Its tokens are scored by the model like
  any rollout, but they are off-policy: use it to check a setup, not to train a judge.

Any object with ``generate(requests, seed) -> list[Sampled]`` plugs in (``run(config,
sampler=...)``); a vLLM server is the natural one at scale.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from transformers import GenerationConfig

from cac_align.cac.infer import sample_capped, turn2_window
from cac_align.cac.judgment import parse_judgment
from cac_align.cac.prompts import turn1_prompt, turn2_prompt
from cac_align.cac.schema import ANOMALY_TYPES, AnnotationRecord
from cac_align.cac.train.collate import IGNORE_INDEX, EncodedChat, answer_part, collate, concat_parts, encode_context, segment_chat
from cac_align.cac.train.rewards import RewardBreakdown, cac_reward
from cac_align.cac.train.settings import TrainCaCConfig
from cac_align.cac.train.targets import clip_boxes, frames_shown
from cac_align.run.dist import derive_seed
from cac_align.video import Video, VideoError
from cac_align.vlm.backend import assistant, user
from cac_align.vlm.grouped_decode import use_grouped_decode
from cac_align.vlm.hf import PAD_REQUEST, StaticShapes, render_chat

__all__ = [
    "HFSampler",
    "RolloutSampler",
    "Sampled",
    "Rollout",
    "SimulatedPolicy",
    "TurnRequest",
    "collect_rollouts",
    "placeholder_token_ids",
]


# ---------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------
@dataclass
class TurnRequest:
    """One turn to generate.

    Attributes:
        prompt: the token ids (and vision tensors) the policy conditions on.
        record: the video's annotation (only the simulated policy reads it).
        shown: the video this turn shows (the 4 fps scan or the 8 fps clip).
        turn: 1 or 2.
        max_new_tokens: generation budget.
    """

    prompt: EncodedChat
    record: AnnotationRecord
    shown: Video
    turn: int
    max_new_tokens: int


@dataclass
class Sampled:
    """A generated answer as token ids (ending with end-of-turn unless cut by the budget), and
    the log-prob of each under the sampling distribution when the sampler knows it."""

    token_ids: list[int]
    logprobs: list[float] | None = None


class RolloutSampler(Protocol):
    """What writes the rollouts' turns (``grpo.sampler``): the policy itself, a stand-in, or a server."""

    def generate(self, requests: Sequence[TurnRequest], seed: int) -> list[Sampled]:
        """One answer per request, in order; deterministic in ``seed``."""
        ...


def placeholder_token_ids(processor: Any) -> list[int]:
    """Ids of the image / video placeholder tokens. A rollout must never contain them (the model
    would look for vision features that do not exist), so generation suppresses them and the
    loss's softmax leaves them out too: both use the same distribution."""
    tokenizer = processor.tokenizer
    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    ids = [tokenizer.convert_tokens_to_ids(name) for name in names]
    return sorted({i for i in ids if i is not None and i != tokenizer.unk_token_id})


class HFSampler:
    """The policy samples its own rollouts through transformers' ``generate``.

    Args:
        model: the policy (unwrapped from DDP); generation runs in eval mode without gradients.
        processor: its processor (pad and end-of-turn ids).
        temperature: sampling temperature; no top-k / top-p (the loss's distribution).
        batch_size: requests per ``generate`` call (left-padded).
        autocast: context manager for mixed precision (the trainer's).
        static: shape buckets for generation on a static, compiled KV cache
            (:class:`~cac_align.vlm.hf.StaticShapes`; ``grpo.cache: static``, or ``auto``: static
            on CUDA from the first call that fills a batch), or None for transformers' dynamic
            cache. A batch padded up to its bucket gets empty filler rows, dropped from the
            results; the draws are then others than an unpadded batch's. Each generation gets a
            cache of its own length (turn 1 never runs on turn 2's).

    The policy's text decoder gets the grouped decode attention
    (:mod:`cac_align.vlm.grouped_decode`): one-token steps read each cached K/V once; training's
    forward passes (many tokens) run transformers' sdpa as before.
    """

    def __init__(self, model: Any, processor: Any, temperature: float, batch_size: int = 8, autocast: Any = nullcontext, static: StaticShapes | None = None):
        self.model = model
        self.processor = processor
        self.temperature = temperature
        self.batch_size = batch_size
        self.autocast = autocast
        self.static = static
        use_grouped_decode(model)
        self.eos_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = processor.tokenizer.pad_token_id
        self.suppressed = placeholder_token_ids(processor)
        self._filler: EncodedChat | None = None

    def _batch(self, chunk: Sequence[TurnRequest], static: StaticShapes | None) -> dict[str, Any]:
        """The chunk's prompts, left-padded; on a static cache padded up to its shape bucket."""
        encoded = [r.prompt for r in chunk]
        multiple = None
        if static is not None:
            if self._filler is None:  # an empty user turn: the filler row of a bucket
                self._filler = encode_context(self.processor, render_chat(self.processor, PAD_REQUEST), [])
            encoded += [self._filler] * (static.rows(len(chunk)) - len(chunk))
            multiple = static.length_multiple
        batch = collate(encoded, self.pad_id, padding_side="left", pad_to_multiple_of=multiple)
        batch.pop("labels")
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def generate(self, requests: Sequence[TurnRequest], seed: int) -> list[Sampled]:
        out: list[Sampled] = []
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(seed)
        static = self.static if self.static is not None and self.static.engaged(len(requests), self.model.device) else None
        try:
            with torch.no_grad(), self.autocast():
                for start in range(0, len(requests), self.batch_size):
                    chunk = requests[start : start + self.batch_size]
                    budget = max(r.max_new_tokens for r in chunk)
                    batch = self._batch(chunk, static)
                    prompt_len = batch["input_ids"].shape[1]
                    config = GenerationConfig(
                        do_sample=True,
                        temperature=self.temperature,
                        top_k=0,
                        top_p=1.0,
                        repetition_penalty=1.0,
                        suppress_tokens=self.suppressed,
                        max_new_tokens=budget,
                        eos_token_id=self.eos_id,
                        pad_token_id=self.pad_id,
                        use_cache=True,
                        output_scores=True,
                        return_dict_in_generate=True,
                    )
                    if static is None:
                        result = self.model.generate(**batch, generation_config=config)
                    else:  # a static cache of this generation's own length
                        with static.first_of_shape(batch["input_ids"], static.cache_length(prompt_len, budget)):
                            result = self.model.generate(**batch, generation_config=config, **static.generate_kwargs(self.model, prompt_len, budget))
                    new = result.sequences[:, prompt_len:]
                    # scores are the processed logits the sampler drew from (here logits / T)
                    logprobs = torch.stack(
                        [
                            score.float().gather(-1, new[:, s : s + 1]).squeeze(-1) - torch.logsumexp(score.float(), dim=-1)
                            for s, score in enumerate(result.scores)
                        ],
                        dim=1,
                    ).cpu()
                    for row, request in enumerate(chunk):
                        ids = new[row].tolist()[: request.max_new_tokens]
                        if self.eos_id in ids:
                            ids = ids[: ids.index(self.eos_id) + 1]
                        out.append(Sampled(ids, logprobs[row, : len(ids)].tolist()))
        finally:
            self.model.train(was_training)
        return out


class SimulatedPolicy:
    """Offline stand-in for a trained stage-2 model (see the module doc): the ground truth with
    random damage, written in the prompts' JSON schema (the paper's) and tokenized as the policy's answer.

    With ``noise`` n, turn 1 breaks its JSON with probability 0.25·n, flips the status with
    0.3·n, jitters each window end by N(0, (0.25·n·duration)²) seconds and swaps each type with
    0.3·n; turn 2 breaks with 0.15·n, rejects (says normal) with 0.3·n and jitters each box
    coordinate by N(0, (150·n)²) on the 0–1000 scale.
    """

    def __init__(self, tokenizer: Any, noise: float = 0.5):
        self.tokenizer = tokenizer
        self.noise = noise
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(self, requests: Sequence[TurnRequest], seed: int) -> list[Sampled]:
        rng = np.random.default_rng(seed)
        out = []
        for request in requests:
            text = self._turn1(request, rng) if request.turn == 1 else self._turn2(request, rng)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]
            out.append(Sampled(ids[: request.max_new_tokens]))  # the budget cuts it like a real policy
        return out

    def _other_type(self, name: str, rng: np.random.Generator) -> str:
        return str(rng.choice([t for t in ANOMALY_TYPES if t != name]))

    def _turn1(self, request: TurnRequest, rng: np.random.Generator) -> str:
        n, record, video = self.noise, request.record, request.shown
        if rng.random() < 0.25 * n:
            return '{"COT": "The video shows a scene.", "status": '  # cut off mid-answer
        abnormal = (record.status == "abnormal") != (rng.random() < 0.3 * n)
        anomalies = []
        if abnormal:
            for anomaly in record.anomalies or [None]:
                if anomaly is None:  # a false alarm on a normal video
                    start = float(rng.uniform(video.start_s, max(video.start_s, video.end_s - 0.5)))
                    window, kind, region = (start, start + 0.5), self._other_type("", rng), "background"
                elif not anomaly.has_window:  # a status-only label: the type, somewhere in the video
                    window = (video.start_s, video.end_s)
                    kind = anomaly.type if rng.random() >= 0.3 * n else self._other_type(anomaly.type, rng)
                    region = anomaly.region
                else:
                    window = anomaly.window_s(record.annotation_fps)
                    window = tuple(np.asarray(window) + rng.normal(0.0, 0.25 * n * video.duration_s, 2))
                    kind = anomaly.type if rng.random() >= 0.3 * n else self._other_type(anomaly.type, rng)
                    region = anomaly.region
                start = float(np.clip(min(window), video.start_s, video.end_s - 0.1))
                end = float(np.clip(max(window), start + 0.1, video.end_s))
                first, last = frames_shown(video.timestamps, (start, end))
                anomalies.append(
                    {"Attributed Time Region": f"{first}-{last}", "Attributed Label": kind, "Reason for Anomaly": "it looks wrong", "Problem Region": region}
                )
        status = "abnormal" if abnormal else "normal"
        return json.dumps({"COT": f"I scanned every frame; the video looks {status}.", "status": status, "anomalies": anomalies})

    def _turn2(self, request: TurnRequest, rng: np.random.Generator) -> str:
        n, record, clip = self.noise, request.record, request.shown
        if rng.random() < 0.15 * n:
            return '{"COT": "Looking closer at the window", "status": "abn'
        if (record.status == "abnormal") == (rng.random() < 0.3 * n):
            return json.dumps({"COT": "On a closer look nothing is wrong.", "status": "normal", "anomalies": []})
        anomalies = []
        for anomaly in record.anomalies:
            boxes = {}
            for frame, frame_boxes in clip_boxes(anomaly, record.annotation_fps, clip.timestamps).items():
                box = np.asarray(frame_boxes[0], dtype=float) + rng.normal(0.0, 150.0 * n, 4)
                x0, x1 = sorted(np.clip(box[[0, 2]], 0, 1000))
                y0, y1 = sorted(np.clip(box[[1, 3]], 0, 1000))
                if x1 - x0 >= 1 and y1 - y0 >= 1:
                    boxes[frame] = [round(float(v)) for v in (x0, y0, x1, y1)]
            if boxes:
                anomalies.append(
                    {
                        "Attributed Time Region": f"{min(boxes)}-{max(boxes)}",
                        "Attributed Label": anomaly.type,
                        "Reason for Anomaly": "it looks wrong",
                        "Problem Region": anomaly.region,
                        "BBOX": {f"Frame {k}": box for k, box in sorted(boxes.items())},
                    }
                )
        if not anomalies:  # confirmed, but the window missed the defect: a guessed box
            anomalies.append(
                {"Attributed Label": self._other_type("", rng), "Reason for Anomaly": "?", "Problem Region": "?", "BBOX": {"Frame 0": [100, 100, 400, 400]}}
            )
        return json.dumps({"COT": "Looking closer, the defect is there.", "status": "abnormal", "anomalies": anomalies})


# ---------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One two-turn rollout: what was generated, how it scored, and its token sequence.

    ``sequence`` is the full conversation as ids with labels on the generated tokens only.
    """

    record: int
    group: int
    turn1_ids: list[int]
    turn1_text: str
    turn2_ids: list[int] | None
    turn2_text: str | None
    window_s: tuple[float, float] | None
    reward: RewardBreakdown
    sequence: EncodedChat
    turn1_valid_json: bool = False
    truncated: bool = False
    turn1_logprobs: list[float] | None = None
    turn2_logprobs: list[float] | None = None
    advantage: float = 0.0

    def summary(self) -> dict:
        """JSON-able record of the rollout (``rollouts.jsonl``)."""
        return {
            "record": self.record,
            "group": self.group,
            "turn1": self.turn1_text,
            "turn2": self.turn2_text,
            "window_s": list(self.window_s) if self.window_s else None,
            "reward": self.reward.to_dict(),
            "advantage": self.advantage,
            "turn1_tokens": len(self.turn1_ids),
            "turn2_tokens": len(self.turn2_ids) if self.turn2_ids is not None else None,
            "truncated": self.truncated,
        }


def _contexts(processor: Any, messages: list[dict]) -> list[tuple[str, list[dict]]]:
    """The template text before each assistant answer of ``messages`` (answers are placeholders
    here; a context never contains an earlier answer's text)."""
    return [(text, holder) for text, is_answer, holder in segment_chat(processor, messages) if not is_answer]


def collect_rollouts(
    videos: Sequence[tuple[int, AnnotationRecord, Video]],
    sampler: RolloutSampler,
    processor: Any,
    config: TrainCaCConfig,
    seed: int,
) -> list[Rollout]:
    """G two-turn rollouts per ``(record index, record, decoded video)``, scored (Eq. 2–6).

    Rollouts of the i-th video have ``group = i``. Deterministic in ``seed`` (given a
    deterministic sampler).
    """
    data, grpo = config.data, config.grpo
    tokenizer = processor.tokenizer
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    # turn 1: one context per video, G samples of it
    scans, firsts, requests = [], [], []
    for _, record, video in videos:
        scan = sample_capped(video, data.scan_fps, data.max_frames_turn1, data.max_pixels, data.size_multiple)
        first = user(scan, turn1_prompt(video.duration_s, scan.fps, scan.num_frames, record.prompt, style=data.prompt_style))
        context = encode_context(processor, *_contexts(processor, [first, assistant("")])[0])
        scans.append(scan)
        firsts.append(first)
        requests += [TurnRequest(context, record, scan, 1, grpo.max_new_tokens_turn1)] * grpo.group_size
    turn1 = sampler.generate(requests, derive_seed(seed, 1))

    # turn 2 for each rollout whose turn 1 says abnormal with a usable window: its own clip
    pending = []  # (rollout index, turn-2 prompt: turn-1 context + answer + turn-2 context)
    states = []
    for k, (request, generated) in enumerate(zip(requests, turn1)):
        v = k // grpo.group_size
        _, record, video = videos[v]
        scan = scans[v]
        text = tokenizer.decode(generated.token_ids, skip_special_tokens=True)
        judgment = parse_judgment(text, 1, fps=scan.fps, num_frames=scan.num_frames)
        parts = [request.prompt, answer_part(generated.token_ids)]
        state = {"text": text, "judgment": judgment, "parts": parts, "clip": None, "window": None}
        states.append(state)
        window = turn2_window(judgment, video, data.clip_fps) if judgment.status == "abnormal" else None
        if window is None:
            continue
        try:
            clip = sample_capped(video.crop(*window), data.clip_fps, data.max_frames_turn2, data.max_pixels, data.size_multiple)
        except VideoError:
            continue  # a window that cannot be cut ends the rollout after turn 1
        second = user(clip, turn2_prompt(window, clip.fps, clip.num_frames, style=data.prompt_style))
        context2 = encode_context(processor, *_contexts(processor, [firsts[v], assistant(""), second, assistant("")])[1])
        closing = []
        if not generated.token_ids or generated.token_ids[-1] != eos_id:  # cut by the budget: close the turn (not trained)
            closing = [EncodedChat(torch.tensor([eos_id]), torch.tensor([IGNORE_INDEX]), {})]
        state.update(clip=clip, window=(float(window[0]), float(window[1])))
        pending.append((k, concat_parts(parts + closing + [context2])))
    turn2 = sampler.generate([TurnRequest(p, videos[k // grpo.group_size][1], states[k]["clip"], 2, grpo.max_new_tokens_turn2) for k, p in pending], derive_seed(seed, 2))
    second_turns = {k: (prompt, generated) for (k, prompt), generated in zip(pending, turn2)}

    rollouts = []
    for k, state in enumerate(states):
        v = k // grpo.group_size
        index, record, _ = videos[v]
        scan, first_gen = scans[v], turn1[k]
        turn2_ids = turn2_text = judgment2 = None
        turn2_logprobs = None
        truncated = not first_gen.token_ids or first_gen.token_ids[-1] != eos_id
        if k in second_turns:
            prompt, generated = second_turns[k]
            clip = state["clip"]
            turn2_ids = generated.token_ids
            turn2_text = tokenizer.decode(turn2_ids, skip_special_tokens=True)
            judgment2 = parse_judgment(turn2_text, 2, fps=clip.fps, num_frames=clip.num_frames)
            sequence = concat_parts([prompt, answer_part(turn2_ids)])
            turn2_logprobs = generated.logprobs
            truncated = truncated or not turn2_ids or turn2_ids[-1] != eos_id
        else:
            sequence = concat_parts(state["parts"])
        reward = cac_reward(
            state["judgment"],
            judgment2,
            record,
            grpo.reward_weights,
            scan_fps=scan.fps,
            scan_frames=scan.num_frames,
            clip_times=state["clip"].timestamps if k in second_turns else None,
        )
        rollouts.append(
            Rollout(
                record=index,
                group=v,
                turn1_ids=first_gen.token_ids,
                turn1_text=state["text"],
                turn2_ids=turn2_ids,
                turn2_text=turn2_text,
                window_s=state["window"] if k in second_turns else None,
                reward=reward,
                sequence=sequence,
                turn1_valid_json=state["judgment"].valid,
                truncated=truncated,
                turn1_logprobs=first_gen.logprobs,
                turn2_logprobs=turn2_logprobs,
            )
        )
    return rollouts
