"""Detection metrics of a model during training: generate on held-out chats, compare verdicts."""

from __future__ import annotations

import re
from typing import Any

from cac_align.cac.judgment import parse_judgment
from cac_align.cac.prompts import STATUS_KEY_PATTERN
from cac_align.eval.metrics import auroc
from cac_align.vlm.hf import HFBackend

__all__ = ["held_out_metrics"]


def held_out_metrics(model: Any, processor: Any, chats: list, batch_size: int = 8, max_new_tokens: int = 384) -> dict[str, float]:
    """Detection as the model itself answers held-out chats (no gold reasoning shown).

    The model generates each answer greedily from the prompt alone; the status it wrote is its
    prediction (an answer with no readable status counts as wrong), and the reward is read as
    CaC reads it: P(normal) / (P(normal) + P(abnormal)) at the position where the generated
    status value starts (CaC Eq. 7). Global videos are parsed as turn 1, clips and frames as
    turn 2.

    Returns:
        ``detection_accuracy``, ``detection_valid_fraction`` (answers that parse and follow the
        schema), ``detection_recall_normal`` / ``_abnormal`` (NaN for an absent class) and
        ``detection_auroc`` of the reward (normal = positive; NaN if a class is missing).
    """
    was_training = model.training
    model.eval()
    try:
        backend = HFBackend(model, processor, max_batch_size=batch_size)
        texts = [c.text for c in backend.generate([chat.prompt_messages for chat in chats], max_new_tokens=max_new_tokens)]
        judgments = [parse_judgment(text, 1 if chat.kind == "global" else 2) for text, chat in zip(texts, chats)]
        readable = [i for i, text in enumerate(texts) if judgments[i].status is not None and re.search(STATUS_KEY_PATTERN, text)]
        prefixes = [texts[i][: re.search(STATUS_KEY_PATTERN, texts[i]).end()] for i in readable]  # type: ignore[union-attr]
        probs = backend.choice_probs([chats[i].prompt_messages for i in readable], prefixes, ["normal", "abnormal"]) if readable else []
    finally:
        model.train(was_training)
    labels = [chat.label for chat in chats]
    predicted = [j.status for j in judgments]
    out = {
        "detection_accuracy": sum(p == y for p, y in zip(predicted, labels)) / max(1, len(labels)),
        "detection_valid_fraction": sum(j.valid for j in judgments) / max(1, len(judgments)),
    }
    for cls in ("normal", "abnormal"):
        idx = [i for i, y in enumerate(labels) if y == cls]
        out[f"detection_recall_{cls}"] = sum(predicted[i] == cls for i in idx) / len(idx) if idx else float("nan")
    rewards = [float(p[0] / (p[0] + p[1])) if p[0] + p[1] > 0 else 0.5 for p in probs]
    out["detection_auroc"] = auroc(rewards, [labels[i] == "normal" for i in readable]) if readable else float("nan")
    return out
