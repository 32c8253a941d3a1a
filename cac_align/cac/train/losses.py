"""The training losses of the CaC stages, as pure functions of tensors.

- stages 1-2 (:mod:`cac_align.jobs.train_cac`): :func:`weighted_token_loss` (cross-entropy with
  the status token weighted) and :func:`window_attention_loss` (optional attention to the
  anomalous window);
- stage 3 (:mod:`cac_align.jobs.train_cac_grpo`): :func:`token_logprobs` of generated tokens and
  :func:`grpo_loss` around :func:`cac_align.rl.advantages.clipped_surrogate`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cac_align.cac.train.collate import IGNORE_INDEX
from cac_align.rl.advantages import clipped_surrogate

__all__ = ["grpo_loss", "token_logprobs", "weighted_token_loss", "window_attention_loss"]


def weighted_token_loss(logits: Any, labels: Any, status_mask: Any, status_weight: float, num_items: Any = None) -> Any:
    """Next-token cross-entropy with the status tokens counted ``status_weight`` times:
    ``sum_t w_t * CE_t / N``, where ``w_t`` is ``status_weight`` on a token marked in
    ``status_mask`` and 1 elsewhere, and ``N`` is the number of answer tokens (``num_items``:
    the Trainer's count over the whole accumulated batch, else this batch's). With weight 1 it
    is the causal-LM loss transformers computes (shifted labels, -100 ignored, summed / N)."""
    shifted_labels = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    weights = 1.0 + (status_weight - 1.0) * status_mask[:, 1:].to(ce.dtype)
    n = num_items if num_items is not None else (shifted_labels != IGNORE_INDEX).sum()
    return (ce * weights).sum() / n


def window_attention_loss(attentions: Any, query: Any, window: Any, eps: float = 1e-6) -> tuple[Any, Any]:
    """Stage 2's attention term (``train.attention_loss_weight``): ``-log(m + eps)`` averaged
    over the supervised rows, where ``m`` is the attention mass that the row's query position
    (the one that predicts the status value) puts on its window (the video tokens of the
    frames the target answer attributes the anomaly to), averaged over heads first:
    ``m_b = sum_{k in window_b} mean_h A[b, h, query_b, k]``.

    Args:
        attentions: one layer's attention probabilities, (batch, heads, length, length).
        query: (batch,) long, -1 for a row that is not supervised.
        window: (batch, length) bool.

    Returns:
        (loss, mean mass) over supervised rows, or (None, None) when the batch has none.
    """
    rows = (query >= 0).nonzero().flatten()
    if len(rows) == 0:
        return None, None
    rows = rows.to(attentions.device)
    attended = attentions[rows, :, query.to(attentions.device)[rows], :].float().mean(1)  # (rows, length)
    mass = (attended * window.to(attentions.device)[rows].float()).sum(-1)
    return -torch.log(mass + eps).mean(), mass.detach().mean()


def token_logprobs(model: torch.nn.Module, batch: dict, temperature: float = 1.0, suppressed: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the labelled tokens under softmax(logits / T) over the vocabulary less the
    ``suppressed`` ids (the sampling distribution), and their mask.

    Only the positions from the first labelled token on get logits (``logits_to_keep``), so the
    vision-heavy prompt costs no vocabulary projection. Returns ``(logp, mask)``, both
    (B, T) for the last T positions of the batch, logp 0 where the mask is False.
    """
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
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9–12 for a micro-batch: per-rollout mean over its tokens of
    ``−min(ρA, clip(ρ, 1±ε)A) + β·(π_ref/π_θ − log(π_ref/π_θ) − 1)``.

    Args:
        logp, old_logp, ref_logp: (B, T) token log-probs under π_θ (with grad), π_old, π_ref.
        advantages: (B,) one per rollout.
        mask: (B, T) True on generated tokens.

    Returns:
        ``(per_rollout_loss (B,), stats)`` with token sums for logging: kl, clipped tokens, ratio.
    """
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
