"""CaC stage 3: two-turn GRPO (CaC §3.2 "Stage 3", §3.3, Eq. 8–12). Job: ``cac-align train-cac stage=3``.

No public trainer does this (trl's GRPO passes only dataset images to the loss and the other
frameworks run one turn), so this is a small loop on transformers + accelerate. One step:

1. **Rollouts.** Each process takes its share of the step's videos (the ``stage3`` split of
   the annotations). For each video, G complete two-turn rollouts: turn 1 sees the whole video
   at ``data.scan_fps`` (4 fps) with the turn-1 prompt; a rollout whose turn 1 says abnormal
   with a usable window crops *its own* window, resamples it at ``data.clip_fps`` (8 fps) and
   asks turn 2 with its turn 1 in context. A rollout with no usable window ends after turn 1.
   Prompts, sampling caps and window rules are inference's (:mod:`cac_align.cac.infer`).
2. **Rewards** (Eq. 2–6, :func:`~cac_align.cac.train.judge_rewards.cac_reward`) and **advantages**
   (Eq. 8): the total reward normalized within its video's group of G.
3. **Loss** (Eq. 9–12): the token-level clipped surrogate over every generated token of both
   turns, each rollout averaged over its own length, then over rollouts; ratio
   ``π_θ / π_old`` against the rollout policy; plus ``β`` times the k3 estimator of
   KL(π_θ ‖ π_ref), ``ρ − log ρ − 1`` with ``ρ = π_ref / π_θ``, against the frozen stage-2
   model. Log-probs are recomputed on the full two-turn conversation (turn-1 video + turn-1
   answer + turn-2 clip + turn-2 answer) with the loss on the generated tokens only.

**Token-exact conversations.** The conversation is kept as token ids, never re-tokenized from
decoded text: turn 2 is generated from ``[turn-1 context] + [turn-1 generated ids] + [turn-2
context]``, and the loss pass reads those same ids, so the log-probs are of the tokens that
were sampled (decode-then-encode can produce different ids). The contexts are the chat
template's own text (cut with :func:`~cac_align.cac.train.collate.segment_chat`), so the
sequence is what inference renders for the same conversation.

**π_old.** With ``grpo.iterations = 1`` (default) each batch drives one optimizer update, so
π_old is the current policy: ``old = logp.detach()``, the ratio is exactly 1 and its gradient
is ∇log π (the on-policy GRPO case). With ``iterations > 1`` the old log-probs are computed
once before the first update and the clip starts to act. The ``hf`` generator also records
the log-probs it sampled with; ``sampler_logprob_max_abs_diff`` logs their largest difference
from the recomputed ones (a check that the trainer scores exactly what was sampled).

**Generators** (``grpo.generator``):

- ``hf`` (default, the paper's setting): the policy itself samples, through transformers'
  ``generate`` with a fresh sampling config (temperature only: no top-k / top-p from the
  checkpoint, so the sampling distribution is softmax(logits / T), the one the loss uses).
- ``simulated``: an offline stand-in for a trained stage-2 model, for smoke tests and tiny
  recipes. A random tiny model never writes valid JSON, so all its rollouts would score the
  same and nothing would train; the simulated policy writes the ground-truth answer with
  random damage (jittered windows and boxes, swapped types, flipped statuses, broken JSON;
  amount set by ``grpo.simulated_noise``). Its tokens are scored by the model like any
  rollout, but they are off-policy: use it to check a setup, not to train a judge.

Any object with ``generate(requests, seed) -> list[Generated]`` plugs in (``run(config,
generator=...)``); a vLLM server is the natural one at scale.

Outputs in ``out_dir``: ``metrics.jsonl`` and ``tensorboard/train_cac_stage3/`` (accelerate's tracker, as
flow-grpo logs; per step: every reward
component's mean, the fraction of rollouts reaching turn 2, the mean window length, response
lengths, KL, clip fraction, ratio, loss, grad norm; with several processes
``process_param_spread``, the spread of a parameter checksum across them, 0 when the replicas
agree), ``rollouts.jsonl`` (every rollout's texts,
window, rewards and advantage), ``checkpoints/checkpoint-N`` (resume with ``resume=true``),
``data.json`` and ``cac_align_run.json`` (the run manifest, docs/run_folders.md), and ``final/``
(model + processor).

Multi-process: accelerate (``accelerate launch``), DDP; a video's whole group stays on one
process, so advantages are local, and gradients are averaged across processes. Tested on CPU
with two processes; FSDP / ZeRO sharding is not wired in for this stage (generation would
need the full parameters gathered).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from cac_align.cac.train.judge_rewards import RewardBreakdown
from cac_align.cac.train.settings import GENERATORS, GrpoSettings
from cac_align.rl import clipped_surrogate
from cac_align.runlog import keep_log_steps

if TYPE_CHECKING:  # pragma: no cover
    from cac_align.cac.schema import AnnotationRecord
    from cac_align.cac.train.collate import EncodedChat
    from cac_align.cac.train.settings import TrainCaCConfig
    from cac_align.video import Video

__all__ = [
    "GENERATORS",
    "Generated",
    "GrpoSettings",
    "HFGenerator",
    "Rollout",
    "SimulatedPolicy",
    "TurnRequest",
    "collect_rollouts",
    "grpo_loss",
    "placeholder_token_ids",
    "run",
    "token_logprobs",
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

    prompt: "EncodedChat"
    record: "AnnotationRecord"
    shown: "Video"
    turn: int
    max_new_tokens: int


@dataclass
class Generated:
    """A generated answer as token ids (ending with end-of-turn unless cut by the budget), and
    the log-prob of each under the sampling distribution when the generator knows it."""

    token_ids: list[int]
    logprobs: list[float] | None = None


class Generator(Protocol):
    def generate(self, requests: Sequence[TurnRequest], seed: int) -> list[Generated]:
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


class HFGenerator:
    """The policy samples its own rollouts through transformers' ``generate``.

    Args:
        model: the policy (unwrapped from DDP); generation runs in eval mode without gradients.
        processor: its processor (pad and end-of-turn ids).
        temperature: sampling temperature; no top-k / top-p (the loss's distribution).
        batch_size: requests per ``generate`` call (left-padded).
        autocast: context manager for mixed precision (the trainer's).
    """

    def __init__(self, model: Any, processor: Any, temperature: float, batch_size: int = 8, autocast: Any = nullcontext):
        self.model = model
        self.processor = processor
        self.temperature = temperature
        self.batch_size = batch_size
        self.autocast = autocast
        self.eos_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = processor.tokenizer.pad_token_id
        self.suppressed = placeholder_token_ids(processor)

    def generate(self, requests: Sequence[TurnRequest], seed: int) -> list[Generated]:
        import torch
        from transformers import GenerationConfig

        from cac_align.cac.train.collate import collate

        out: list[Generated] = []
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(seed)
        try:
            with torch.no_grad(), self.autocast():
                for start in range(0, len(requests), self.batch_size):
                    chunk = requests[start : start + self.batch_size]
                    budget = max(r.max_new_tokens for r in chunk)
                    batch = collate([r.prompt for r in chunk], self.pad_id, padding_side="left")
                    batch.pop("labels")
                    batch = {k: v.to(self.model.device) for k, v in batch.items()}
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
                    result = self.model.generate(**batch, generation_config=config)
                    new = result.sequences[:, batch["input_ids"].shape[1] :]
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
                        out.append(Generated(ids, logprobs[row, : len(ids)].tolist()))
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

    def generate(self, requests: Sequence[TurnRequest], seed: int) -> list[Generated]:
        rng = np.random.default_rng(seed)
        out = []
        for request in requests:
            text = self._turn1(request, rng) if request.turn == 1 else self._turn2(request, rng)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]
            out.append(Generated(ids[: request.max_new_tokens]))  # the budget cuts it like a real policy
        return out

    def _other_type(self, name: str, rng: np.random.Generator) -> str:
        from cac_align.cac.schema import ANOMALY_TYPES

        return str(rng.choice([t for t in ANOMALY_TYPES if t != name]))

    def _turn1(self, request: TurnRequest, rng: np.random.Generator) -> str:
        from cac_align.cac.train.targets import frames_shown

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
        from cac_align.cac.train.targets import clip_boxes

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
    sequence: "EncodedChat"
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
    from cac_align.cac.train.collate import segment_chat

    return [(text, holder) for text, is_answer, holder in segment_chat(processor, messages) if not is_answer]


def collect_rollouts(
    videos: Sequence[tuple[int, "AnnotationRecord", "Video"]],
    generator: Generator,
    processor: Any,
    config: "TrainCaCConfig",
    seed: int,
) -> list[Rollout]:
    """G two-turn rollouts per ``(record index, record, decoded video)``, scored (Eq. 2–6).

    Rollouts of the i-th video have ``group = i``. Deterministic in ``seed`` (given a
    deterministic generator).
    """
    import torch

    from cac_align.cac.infer import sample_capped, turn2_window
    from cac_align.cac.judgment import parse_judgment
    from cac_align.cac.prompts import turn1_prompt, turn2_prompt
    from cac_align.cac.train.collate import IGNORE_INDEX, EncodedChat, answer_part, concat_parts, encode_context
    from cac_align.cac.train.judge_rewards import cac_reward
    from cac_align.video import VideoError
    from cac_align.vlm.backend import assistant, user

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
    turn1 = generator.generate(requests, _seed(seed, 1))

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
    turn2 = generator.generate([TurnRequest(p, videos[k // grpo.group_size][1], states[k]["clip"], 2, grpo.max_new_tokens_turn2) for k, p in pending], _seed(seed, 2))
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


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------
def token_logprobs(model: Any, batch: dict, temperature: float = 1.0, suppressed: Sequence[int] = ()) -> tuple[Any, Any]:
    """Log-probs of the labelled tokens under softmax(logits / T) over the vocabulary less the
    ``suppressed`` ids (the sampling distribution), and their mask.

    Only the positions from the first labelled token on get logits (``logits_to_keep``), so the
    vision-heavy prompt costs no vocabulary projection. Returns ``(logp, mask)``, both
    (B, T) for the last T positions of the batch, logp 0 where the mask is False.
    """
    import torch

    labels = batch["labels"]
    labelled = labels != -100
    if not labelled.any():
        raise ValueError("the batch has no labelled (generated) tokens")
    first = int(labelled.int().argmax(dim=1)[labelled.any(dim=1)].min())
    first = max(first, 1)
    keep = labels.shape[1] - first + 1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits[:, :-1].float() / temperature
    if suppressed:
        logits[..., list(suppressed)] = float("-inf")
    targets = labels[:, first:]
    mask = targets != -100
    chosen = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logp = (chosen - torch.logsumexp(logits, dim=-1)) * mask
    return logp, mask


def grpo_loss(
    logp: Any,
    old_logp: Any,
    ref_logp: Any | None,
    advantages: Any,
    mask: Any,
    clip_epsilon: float,
    beta: float,
) -> tuple[Any, dict[str, Any]]:
    """Eq. 9–12 for a micro-batch: per-rollout mean over its tokens of
    ``−min(ρA, clip(ρ, 1±ε)A) + β·(π_ref/π_θ − log(π_ref/π_θ) − 1)``.

    Args:
        logp, old_logp, ref_logp: (B, T) token log-probs under π_θ (with grad), π_old, π_ref.
        advantages: (B,) one per rollout.
        mask: (B, T) True on generated tokens.

    Returns:
        ``(per_rollout_loss (B,), stats)`` with token sums for logging: kl, clipped tokens, ratio.
    """
    import torch

    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    per_token = clipped_surrogate(logp - old_logp, adv, clip_epsilon, clip_epsilon)
    if ref_logp is not None and beta > 0:
        log_ref_ratio = ref_logp - logp
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        per_token = per_token + beta * kl
    else:
        kl = torch.zeros_like(logp)
    lengths = mask.sum(dim=1).clamp(min=1)
    per_rollout = (per_token * mask).sum(dim=1) / lengths
    is_clipped = ((ratio < 1 - clip_epsilon) & (adv < 0)) | ((ratio > 1 + clip_epsilon) & (adv > 0))
    stats = {
        "kl": float((kl.detach() * mask).sum()),
        "clipped": float((is_clipped.to(mask.dtype) * mask).sum()),
        "ratio": float((ratio.detach() * mask).sum()),
        "tokens": float(mask.sum()),
    }
    return per_rollout, stats


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
def _videos_for_step(step: int, count: int, per_step: int, seed: int) -> list[int]:
    """Positions into the stage-3 record list for ``step``: an endless stream of seeded
    per-epoch permutations, so a resumed run takes the same videos as an uninterrupted one."""
    orders: dict[int, np.ndarray] = {}
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, count)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, 3, epoch]).permutation(count)
        out.append(int(orders[epoch][offset]))
    return out


def _latest_complete_checkpoint(out: Path) -> Path | None:
    done = [p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "grpo_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1])) if done else None


def _aggregate(parts: list[dict]) -> dict[str, float]:
    """Merge per-process ``{name: (sum, count)}`` into means; names with count 0 are left out."""
    totals: dict[str, list[float]] = {}
    for part in parts:
        for name, (value, count) in part.items():
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += value
            entry[1] += count
    return {name: value / count for name, (value, count) in totals.items() if count > 0}


def _rollout_stats(rollouts: list[Rollout]) -> dict[str, tuple[float, float]]:
    n = float(len(rollouts))
    stats: dict[str, tuple[float, float]] = {}
    for name in ("total", "format", "status", "type_iou", "temporal_iou", "spatial_iou"):
        stats[f"reward/{name}"] = (sum(getattr(r.reward, name) for r in rollouts), n)
    stats["reward/total_sq"] = (sum(r.reward.total**2 for r in rollouts), n)
    reached = [r for r in rollouts if r.turn2_ids is not None]
    stats["turn2_fraction"] = (float(len(reached)), n)
    stats["window_s"] = (sum(r.window_s[1] - r.window_s[0] for r in reached), float(len(reached)))
    stats["response_length/turn1"] = (float(sum(len(r.turn1_ids) for r in rollouts)), n)
    stats["response_length/turn2"] = (float(sum(len(r.turn2_ids) for r in reached)), float(len(reached)))
    stats["turn1_valid_json_fraction"] = (float(sum(r.turn1_valid_json for r in rollouts)), n)
    stats["status_accuracy"] = (float(sum(r.reward.status == 0 for r in rollouts)), n)
    stats["truncated_fraction"] = (float(sum(r.truncated for r in rollouts)), n)
    return stats


def run(config: "TrainCaCConfig", generator: Generator | None = None) -> dict:
    """Train stage 3; returns the last step's metrics (also in ``metrics.jsonl``).

    Args:
        config: a train-cac config with ``stage: 3``.
        generator: overrides ``config.grpo.generator`` (any object with ``generate(requests, seed)``).
    """
    import dataclasses

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, gather_object
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from cac_align.cac.schema import load_annotations
    from cac_align.cac.train.collate import collate
    from cac_align.cac.train.data import split_records
    from cac_align.cac.train.shared import load_model, run_folder
    from cac_align.config import RecipeError
    from cac_align.rl import group_advantages
    from cac_align.video import VideoError, load_video

    t, grpo = config.train, config.grpo
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if t.bf16 else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with="tensorboard",  # the metrics logger flow-grpo uses too (accelerate's trackers)
        project_config=ProjectConfiguration(project_dir=str(config.out_dir), logging_dir=str(Path(config.out_dir) / "tensorboard")),
    )
    processes, rank = accelerator.num_processes, accelerator.process_index
    if grpo.videos_per_step is not None:  # the global intent, split over the processes here
        if grpo.videos_per_step % processes:
            raise RecipeError(
                f"grpo.videos_per_step = {grpo.videos_per_step} must be a multiple of the {processes} processes "
                "(a video's group of rollouts stays on one process)"
            )
        videos_per_process = grpo.videos_per_step // processes
    else:
        per_process = t.per_device_batch_size * t.gradient_accumulation_steps
        if per_process % grpo.group_size:
            raise RecipeError(
                f"train.per_device_batch_size x train.gradient_accumulation_steps = {per_process} rollouts per process "
                f"must be a multiple of grpo.group_size = {grpo.group_size} (a video's group stays on one process)"
            )
        videos_per_process = per_process // grpo.group_size
    videos_per_step = videos_per_process * processes

    # 1. data: the stage-3 split (every process computes the same one), or a stream of videos
    # rendered on the fly (each step new ones)
    if config.stream is not None:
        from cac_align.cac.train.stream import SynthStream, load_stream_synth, stream_steps

        total_steps = stream_steps(t)
        stream = SynthStream(load_stream_synth(config.stream, n=total_steps * videos_per_step))
        pool = list(range(len(stream)))
        describe = {"stage": 3, "stream": dataclasses.asdict(config.stream), "videos": len(pool)}

        def fetch(index: int) -> tuple[Any, Any]:
            return stream.record(index), stream.video(index)
    else:
        records = load_annotations(config.annotations).records
        pool = split_records(records, config.data.splits, config.data.seed)["stage3"]
        if not pool:
            raise RecipeError(f"{config.annotations}: the stage3 split is empty; give data.splits.stage3 a share of the videos")
        total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_epochs * len(pool) / videos_per_step)
        describe = {"stage": 3, "stage3_records": pool, "videos": [str(records[i].video) for i in pool]}

        def fetch(index: int) -> tuple[Any, Any]:
            return records[index], load_video(str(records[index].video))

    # 2. run folder: checked now by the main process (recorded once the models have loaded),
    # then the newest complete checkpoint
    out = Path(config.out_dir)
    folder = run_folder(config) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    checkpoint = _latest_complete_checkpoint(out) if config.resume and out.is_dir() else None

    # 3. models: the policy in float32 (bf16 autocast when train.bf16: master weights stay
    # float32, so 1e-6 updates are not rounded away), the frozen reference in config.dtype
    model, processor = load_model(dataclasses.replace(config, dtype="float32"))
    model.requires_grad_(True)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if grpo.beta > 0:
        reference, _ = load_model(config)
        reference.requires_grad_(False).eval().to(accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    updates = total_steps * grpo.iterations
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=round(t.warmup_ratio * updates), num_training_steps=updates)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    policy = accelerator.unwrap_model(model)
    if generator is None:
        if grpo.generator == "hf":
            generator = HFGenerator(policy, processor, grpo.temperature, grpo.generation_batch_size, accelerator.autocast)
        else:
            generator = SimulatedPolicy(processor.tokenizer, grpo.simulated_noise)

    if folder is not None:  # the models loaded: record the run (a failed start leaves no record)
        folder.start()
        (out / "data.json").write_text(json.dumps(describe, indent=1))
    accelerator.wait_for_everyone()
    start_step = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start_step = json.loads((checkpoint / "grpo_state.json").read_text())["step"]
        if accelerator.is_main_process:
            for name in ("metrics.jsonl", "rollouts.jsonl"):
                keep_log_steps(out / name, start_step)
            print(f"train-cac stage 3: resuming from {checkpoint} (step {start_step})")
    accelerator.wait_for_everyone()

    accelerator.init_trackers("train_cac_stage3")  # writes tensorboard/train_cac_stage3/ (main process)
    pad_id = processor.tokenizer.pad_token_id
    suppressed = placeholder_token_ids(processor)
    metrics: dict[str, float] = {}
    progress = tqdm(total=total_steps, initial=start_step, desc="stage 3 GRPO", disable=not accelerator.is_main_process)
    for step in range(start_step, total_steps):
        began = time.perf_counter()
        # -- rollouts on this process's videos -------------------------------------------
        positions = _videos_for_step(step, len(pool), videos_per_step, config.train.seed)
        mine = positions[rank * videos_per_process : (rank + 1) * videos_per_process]
        videos, failed = [], 0
        for position in mine:
            index = pool[position]
            try:
                videos.append((index, *fetch(index)))
            except VideoError as exc:
                failed += 1
                print(f"train-cac stage 3: skipping video {index}: {exc}")
        rollouts = collect_rollouts(videos, generator, processor, config, _seed(t.seed, step, rank)) if videos else []
        advantages = group_advantages([r.reward.total for r in rollouts], [r.group for r in rollouts], eps=grpo.advantage_eps)
        for rollout, advantage in zip(rollouts, advantages.advantages):
            rollout.advantage = float(advantage)
        generated_at = time.perf_counter()

        # -- loss: micro-batches of per_device_batch_size rollouts ------------------------
        batches = [rollouts[i : i + t.per_device_batch_size] for i in range(0, len(rollouts), t.per_device_batch_size)]
        # kept on the CPU and moved per micro-batch: a step's pixels can be GBs
        encoded = [collate([r.sequence for r in b], pad_id) for b in batches]

        def on_device(batch: dict) -> dict:
            return {k: v.to(accelerator.device) for k, v in batch.items()}

        refs, olds, sampler_diff = [], [], 0.0
        with torch.no_grad(), accelerator.autocast():
            for batch in encoded:
                if reference is not None or grpo.iterations > 1:
                    inputs = on_device(batch)
                if reference is not None:
                    refs.append(token_logprobs(reference, inputs, grpo.temperature, suppressed)[0])
                if grpo.iterations > 1:
                    olds.append(token_logprobs(model, inputs, grpo.temperature, suppressed)[0])
        token_stats = {"kl": 0.0, "clipped": 0.0, "ratio": 0.0, "tokens": 0.0}
        loss_sum, grad_norm = 0.0, 0.0
        model.train()
        for iteration in range(grpo.iterations):
            for i, (b, batch) in enumerate(zip(batches, encoded)):
                sync = accelerator.no_sync(model) if i < len(batches) - 1 else nullcontext()
                with sync, accelerator.autocast():
                    logp, mask = token_logprobs(model, on_device(batch), grpo.temperature, suppressed)
                    old = olds[i] if olds else logp.detach()
                    adv = torch.tensor([r.advantage for r in b], device=logp.device)
                    per_rollout, stats = grpo_loss(logp, old, refs[i] if refs else None, adv, mask, grpo.clip_epsilon, grpo.beta)
                    loss = per_rollout.sum() / len(rollouts)
                    accelerator.backward(loss)
                loss_sum += float(loss.detach())
                if iteration == 0:
                    for key in token_stats:
                        token_stats[key] += stats[key]
                    sampler_diff = max(sampler_diff, _sampler_difference(b, logp.detach(), mask))
            if not batches:  # every video failed: still take part in the gradient all-reduce
                accelerator.backward(sum(p.sum() * 0.0 for p in model.parameters()))
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        # -- metrics (every process's share) ---------------------------------------------
        local = _rollout_stats(rollouts)
        local["kl"] = (token_stats["kl"], token_stats["tokens"])
        local["clip_fraction"] = (token_stats["clipped"], token_stats["tokens"])
        local["ratio_mean"] = (token_stats["ratio"], token_stats["tokens"])
        local["loss"] = (loss_sum / grpo.iterations, 1.0)
        local["zero_std_fraction"] = (advantages.zero_std_fraction * advantages.num_groups, float(advantages.num_groups))
        local["videos_failed"] = (float(failed), 1.0)
        if any(r.turn1_logprobs is not None or r.turn2_logprobs is not None for r in rollouts):
            local["sampler_logprob_max_abs_diff"] = (sampler_diff, 1.0)
        if processes > 1:  # DDP keeps replicas identical; a spread above 0 means they diverged
            with torch.no_grad():
                fingerprint = sum(float(p.double().sum()) for p in model.parameters())
            local["_param_fingerprint"] = (fingerprint, 1.0)
        gathered = gather_object([local])
        summaries = gather_object([r.summary() | {"step": step + 1} for r in rollouts]) if grpo.save_rollouts else []
        if accelerator.is_main_process:
            metrics = _aggregate(gathered)
            metrics["videos_failed"] *= len(gathered)  # a per-process count: the mean times the processes
            if "sampler_logprob_max_abs_diff" in metrics:
                metrics["sampler_logprob_max_abs_diff"] = max(p["sampler_logprob_max_abs_diff"][0] for p in gathered if "sampler_logprob_max_abs_diff" in p)
            if "_param_fingerprint" in metrics:
                prints = [p["_param_fingerprint"][0] for p in gathered]
                metrics.pop("_param_fingerprint")
                metrics["process_param_spread"] = max(prints) - min(prints)
            mean = metrics.get("reward/total", float("nan"))
            if "reward/total_sq" in metrics:
                metrics["reward/total_std"] = math.sqrt(max(0.0, metrics.pop("reward/total_sq") - mean**2))
            metrics.update(
                grad_norm=grad_norm,
                learning_rate=scheduler.get_last_lr()[0],
                time_generation_s=generated_at - began,
                time_train_s=time.perf_counter() - generated_at,
            )
            with (out / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": step + 1, **metrics}) + "\n")
            if summaries:
                with (out / "rollouts.jsonl").open("a") as handle:
                    handle.writelines(json.dumps(s) + "\n" for s in summaries)
            accelerator.log(metrics, step=step + 1)
            progress.set_postfix(reward=f"{mean:.3f}", kl=f"{metrics.get('kl', 0.0):.2e}")
        progress.update(1)

        # -- checkpoint ------------------------------------------------------------------
        if (step + 1) % t.save_steps == 0 or step + 1 == total_steps:
            _save_checkpoint(accelerator, out, step + 1, t.save_total_limit)
    progress.close()

    # 4. final weights, in config.dtype
    if accelerator.is_main_process:
        final = out / "final"
        dtype = getattr(torch, config.dtype)
        state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in accelerator.unwrap_model(model).state_dict().items()}
        accelerator.unwrap_model(model).save_pretrained(str(final), state_dict=state, safe_serialization=True)
        processor.save_pretrained(str(final))
        print(f"train-cac stage 3: done; model in {final}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def _sampler_difference(batch: list[Rollout], logp: Any, mask: Any) -> float:
    """Largest |recomputed − sampled| log-prob over the batch's generated tokens, for the turns
    whose generator reported log-probs (0 when none did)."""
    worst = 0.0
    for row, rollout in enumerate(batch):
        recomputed = logp[row][mask[row]].float().cpu().numpy()
        split = len(rollout.turn1_ids)
        for sampled, part in ((rollout.turn1_logprobs, recomputed[:split]), (rollout.turn2_logprobs, recomputed[split:])):
            if sampled is None:
                continue
            if len(sampled) != len(part):
                raise RuntimeError(f"a rollout turn has {len(sampled)} sampled tokens but {len(part)} labelled ones")
            if len(part):
                worst = max(worst, float(np.abs(part - np.asarray(sampled, dtype=np.float64)).max()))
    return worst


def _save_checkpoint(accelerator: Any, out: Path, step: int, keep: int | None) -> None:
    """Model, optimizer, scheduler and RNG state (accelerate), then ``grpo_state.json`` last:
    a checkpoint without it was interrupted and is ignored on resume."""
    import shutil

    path = out / "checkpoints" / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / "grpo_state.json").write_text(json.dumps({"step": step}))
        if keep:
            done = sorted((p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "grpo_state.json").exists()), key=lambda p: int(p.name.split("-")[-1]))
            for old in done[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
