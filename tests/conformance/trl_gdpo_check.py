"""Runs in .venv-trl (tests/conformance/build_trl_venv.sh): trl 1.16.0's own GRPOTrainer computes the
advantages of fixed reward numbers with ``multi_objective_aggregation="normalize_then_sum"`` (GDPO).

    python tests/conformance/trl_gdpo_check.py CASES_JSON OUT_JSON

Each case of CASES_JSON: ``{"num_generations": G, "columns": {name: [value or null, ...]}, "weights":
[...]}`` with B = len(values) a multiple of G. A tiny random Llama built from a config (no download)
and a word-level tokenizer built in-process stand in for the policy; the reward functions are plain
callables that return the case's numbers (``None`` where a value is null) for the rows they are
given, found by a ``row`` column of the dataset. ``GRPOTrainer._generate_and_score_completions`` (the
method that generates, scores and turns the scores into advantages) runs once on the B rows in
order, so row ``i`` is in group ``i // G`` (trl groups consecutive blocks of G). OUT_JSON: one list of
B advantages per case, as trl returns them (float32).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

WORDS = ["[PAD]", "[EOS]", "[UNK]", "draw", "a", "red", "blue", "cat", "dog", "video", "of", "the"]


def tiny_policy() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]", padding_side="left")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config), tokenizer


def trl_advantages(case: dict, folder: str) -> list[float]:
    columns: dict[str, list] = case["columns"]
    n = len(next(iter(columns.values())))
    g = case["num_generations"]

    def reward_func(name: str):
        def score(prompts, completions, row, **kwargs):
            return [columns[name][i] for i in row]  # None stays None: trl turns it into NaN
        score.__name__ = name
        return score

    model, tokenizer = tiny_policy()
    prompts = ["draw a red cat", "a video of the blue dog", "the cat", "draw the dog"]
    rows = [{"prompt": prompts[(i // g) % len(prompts)], "row": i} for i in range(n)]
    args = GRPOConfig(output_dir=folder, per_device_train_batch_size=n, num_generations=g, max_completion_length=3,
                      multi_objective_aggregation="normalize_then_sum", reward_weights=case["weights"], use_cpu=True, report_to=[],
                      save_strategy="no", logging_strategy="no", seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_func(name) for name in columns], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.model.train()  # "train" mode: num_generations, not num_generations_eval
    with torch.no_grad():
        out = trainer._generate_and_score_completions(rows)
    advantages = out["advantages"]
    assert advantages.dtype == torch.float32 and advantages.shape == (n,), (advantages.dtype, advantages.shape)
    return advantages.tolist()


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as folder:
        results = [trl_advantages(case, folder) for case in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
