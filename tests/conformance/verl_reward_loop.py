"""Run cac_align's verl-omni reward function inside verl's own reward loop (PyPI verl 0.9.1).

Runs in the verl venv (tests/conformance/build_verl_venv.sh), not in ours: verl pins
transformers < 5.11. What is verl's own code here: the config's reward manager resolved and built by
``verl.trainer.ppo.reward.load_reward_manager``; ``RewardLoopManager`` starting ``num_workers``
``RewardLoopWorker`` Ray actors, cutting the ``DataProto`` batch into one chunk per worker, running
the manager once per sample concurrently, and assembling ``rm_scores`` and the metrics; the reward
function loaded by ``verl.utils.import_utils.load_extern_object``. The only stand-in is verl-omni's
``MultiVisualRewardManager`` (tests/fixtures/verl_omni_checkout, our words; verl-omni is on no
package registry), which subclasses verl's ``RewardManagerBase`` here.

    .venv-verl/bin/python tests/conformance/verl_reward_loop.py OUT.json [CASE ...]

CASEs (default all): ``order`` (brightness and a constant, weights 2 and 1), ``ur_cac`` (tiny models, two
workers), ``required`` (an unscorable sample with ``required: true``), ``optional`` (the same with
their default ``required: false``), ``group_mean``. Writes what verl returned (or raised) per
case as JSON, for tests/conformance/test_verl_reward_loop.py.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "tests" / "fixtures" / "verl_omni_checkout"


def levels_batch(levels, group, size=16):
    from verl import DataProto

    frames = torch.stack([torch.full((6, 3, size, size), level, dtype=torch.uint8) for level in levels])
    n = len(levels)
    return DataProto.from_dict(
        tensors={"responses": frames},
        non_tensors={
            "data_source": np.array(["t2v"] * n, dtype=object),
            "reward_model": np.array([{"ground_truth": f"prompt {i // group}"} for i in range(n)], dtype=object),
            "extra_info": np.array([{} for _ in range(n)], dtype=object),
        },
    )


def config(tokenizer_dir, entries, num_workers):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "actor_rollout_ref": {
            "model": {"path": str(tokenizer_dir), "tokenizer_path": None},
            "rollout": {"pipeline": {"output_type": "image"}, "val_kwargs": {"pipeline": {"output_type": "image"}}},
        },
        "reward": {
            "num_workers": num_workers,
            "custom_reward_function": {"path": None, "name": "compute_score"},
            "reward_functions": entries,
            "reward_manager": {"source": "importlib", "name": "MultiVisualRewardManager",
                               "module": {"path": "pkg://verl_omni.reward_loop.reward_manager"}},
            "reward_model": {"enable": False, "enable_resource_pool": False, "model_path": None,
                             "rollout": {"full_determinism": False}},
            "sandbox_fusion": {"url": None},
        },
    })


OURS = {"path": "pkg://cac_align.integrations.verl_omni", "name": "compute_score", "fps": 16}  # verl passes no frame rate
PICKY = {"bright": {"name": "user_rewards:make_picky"}}
TINY = {"cac": {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}},
        "unified_reward": {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4}}


def case(name):
    """(entries, levels, group, num_workers) of a case."""
    if name == "order":
        return ({"bright": {**OURS, "weight": 2.0, "required": True, "reward": "bright", "sections": {"bright": {"name": "brightness"}}},
                 "half": {"path": str(CHECKOUT / "user_rewards.py"), "name": "constant_half", "weight": 1.0}},
                [51, 153, 204, 102, 0, 255], 2, 2)  # two workers, three samples each: the order across workers (4 took 2 more actor starts)
    if name == "ur_cac":
        return ({"ur_cac": {**OURS, "required": True, "device": "cpu", "sections": {"ur_cac": {"name": "ur_cac", **TINY}}}},
                [51, 153, 204, 102], 2, 1)  # one worker: the models' scores (each worker loads both models)
    if name in ("required", "optional"):
        return ({"bright": {**OURS, "required": name == "required", "reward": "bright", "sections": PICKY}},
                [51, 0, 204, 102], 2, 1)
    if name == "group_mean":
        return ({"bright": {**OURS, "required": True, "reward": "bright", "sections": PICKY, "invalid": "group_mean"}},
                [51, 0, 102, 204, 153, 255], 3, 2)
    raise SystemExit(f"unknown case {name}")


CASES = ("order", "ur_cac", "required", "optional", "group_mean")


def run_case(name, tokenizer_dir):
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    entries, levels, group, workers = case(name)
    result, manager = {}, None
    try:
        manager = RewardLoopManager(config(tokenizer_dir, entries, workers))
        # 64 px for the VLMs: transformers < 5.11 (verl's pin) refuses frames under 32 px in Qwen-VL processors
        out_data = manager.compute_rm_score(levels_batch(levels, group, size=64 if name == "ur_cac" else 16))
        result["rm_scores"] = out_data.batch["rm_scores"].tolist()
        result["metrics"] = {k: np.asarray(v).tolist() for k, v in out_data.non_tensor_batch.items()}
        result["reward_extra_keys"] = list(out_data.meta_info.get("reward_extra_keys", []))
    except Exception as exc:  # what verl raised: the test reads it
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for worker in getattr(manager, "reward_loop_workers", []):  # named actors: free the names for the next case
            ray.kill(worker)
    return result


def main(out, names):
    global ray
    import ray

    from cac_align.vlm.tiny import build_tiny_tokenizer

    path_entries = [str(CHECKOUT), str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(path_entries + [os.environ.get("PYTHONPATH", "")])
    sys.path[:0] = path_entries
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_tokenizer().save_pretrained(tmp)  # the actor's tokenizer verl's workers load
        ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
        try:
            for name in names:
                results[name] = run_case(name, tmp)
        finally:
            ray.shutdown()
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or CASES)
