"""Stage 2's full fine-tuning under FSDP, run for real: `accelerate launch` with
recipes/accelerate/fsdp.yaml (two CPU processes on gloo instead of eight GPUs, fp32 instead of
bf16), compared with one process doing the same optimizer steps.

accelerate 1.15 shards only on GPUs and similar devices (on a CPU it runs an FSDP config as plain
data parallel); tests/fsdp_cpu_launch.py lifts that one gate and leaves the rest to accelerate's
and transformers' own FSDP2 code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cac_align.cac.train.setup import check_sharding
from cac_align.config import RecipeError
from cac_align.jobs import load_recipe
from conftest import REPO_ROOT

STEPS = ["train.eval_steps=0", "train.save_steps=2", "train.logging_steps=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny Qwen3-VL saved to disk, so both runs load it through from_pretrained."""
    from cac_align.vlm.tiny import build_tiny_qwen3_vl

    path = tmp_path_factory.mktemp("fsdp") / "base"
    build_tiny_qwen3_vl(seed=0).save_pretrained(str(path))
    return path


@pytest.mark.slow  # two processes: `pytest -m slow` (.ci/run runs it after the default suite)
def test_fsdp_two_processes_equal_one_process_resume_and_the_checkpoint_scores(base, cac_data, tmp_path):
    from cac_align.jobs.score import ScoreConfig, run as score
    from cac_align.jobs.train_cac import run

    # one process, two micro-batches of 2 per step: the same 4 samples per step as 2 processes x 2
    reference = tmp_path / "one"
    _, config = load_recipe(REPO_ROOT / "recipes/cac/stage2_tiny.yaml", [
        f"annotations={cac_data}", f"out_dir={reference}", f"model={base}", "train.gradient_accumulation_steps=2", "train.max_steps=4", *STEPS])
    run(config)

    # fsdp.yaml as shipped (FSDP2, the wrap classes, full state dict, CPU-RAM-efficient loading),
    # with what a CPU needs instead: 2 processes, no bf16
    accelerate_config = yaml.safe_load((REPO_ROOT / "recipes/accelerate/fsdp.yaml").read_text())
    accelerate_config.update(num_processes=2, mixed_precision="no", use_cpu=True, main_process_port=_free_port())
    (tmp_path / "fsdp_cpu.yaml").write_text(yaml.safe_dump(accelerate_config))
    sharded, record = tmp_path / "fsdp", tmp_path / "record"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CAC_FSDP_RECORD": str(record)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp_cpu.yaml"),
               str(REPO_ROOT / "tests/fsdp_cpu_launch.py"), "train-cac", "--config", str(REPO_ROOT / "recipes/cac/stage2_tiny.yaml"),
               f"annotations={cac_data}", f"out_dir={sharded}", f"model={base}", *STEPS]
    # 2 steps, then the run resumed from its step-2 checkpoint (accelerate's sharded FSDP
    # checkpoint: model, optimizer) up to step 4
    for extra in (["train.max_steps=2"], ["train.max_steps=4", "resume=true"]):
        done = subprocess.run(command + extra, env=env, capture_output=True, text=True, timeout=400, cwd=REPO_ROOT)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "nothing is sharded" not in done.stderr

    # the model really was sharded: DTensor parameters, each process holding part of them, one
    # FSDP unit per vision block and decoder layer (fsdp.yaml's wrap classes), and the ones
    # accelerate adds: the input embedding, the output head, the root
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert accelerate_config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "Qwen3VLTextDecoderLayer,Qwen3VLVisionBlock"
    reference_model = load_file(str(reference / "final/model.safetensors"))
    vision_blocks = {k.split(".")[3] for k in reference_model if k.startswith("model.visual.blocks.")}
    decoder_layers = {k.split(".")[3] for k in reference_model if k.startswith("model.language_model.layers.")}
    for rank in ranks:
        assert rank["distributed_type"] == "DistributedType.FSDP" and rank["param_types"] == ["DTensor"]
        assert rank["local_numel"] < rank["full_numel"]
        assert rank["sharded_modules"] == {
            "FSDPQwen3VLVisionBlock": len(vision_blocks), "FSDPQwen3VLTextDecoderLayer": len(decoder_layers),
            "FSDPEmbedding": 1, "FSDPLinear": 1, "FSDPQwen3VLForConditionalGeneration": 1,
        }
    assert sum(r["local_numel"] for r in ranks) == ranks[0]["full_numel"]

    # same losses, same weights as one process straight through
    one, two = _losses(reference), _losses(sharded)
    assert len(one) == len(two) == 4 and two == pytest.approx(one, rel=1e-5)
    assert (sharded / "checkpoints/checkpoint-2").is_dir() and (sharded / "checkpoints/checkpoint-4").is_dir()
    initial, trained = load_file(str(base / "model.safetensors")), load_file(str(sharded / "final/model.safetensors"))
    assert set(trained) == set(reference_model) == set(initial)
    for name, tensor in trained.items():
        assert torch.allclose(tensor, reference_model[name], atol=1e-5), name
    moved = [name for name in trained if not torch.equal(trained[name], initial[name])]
    assert len(moved) > 0.9 * len(trained)

    # the gathered checkpoint is an ordinary from_pretrained folder that the judge loads and runs
    video = str(cac_data.parent / json.loads(cac_data.read_text().splitlines()[0])["video"])
    rows = score(ScoreConfig(out_dir=str(tmp_path / "score"), videos=video,
                             reward={"name": "cac", "model": {"name": str(sharded / "final"), "dtype": "float32", "device": "cpu"}, "options": {"max_new_tokens": 8}}))
    assert len(rows) == 1 and (tmp_path / "score/results.jsonl").is_file()


def test_an_fsdp_config_that_accelerate_did_not_shard_is_named(caplog):
    message = check_sharding("DistributedType.MULTI_CPU", {"ACCELERATE_USE_FSDP": "true"})
    assert message and "runs MULTI_CPU: nothing is sharded" in message and message in caplog.text
    assert check_sharding("DistributedType.FSDP", {"ACCELERATE_USE_FSDP": "true"}) is None
    assert check_sharding("DistributedType.MULTI_GPU", {}) is None


def test_stage3_refuses_fsdp(cac_data, tmp_path, monkeypatch):
    from cac_align.jobs.train_cac import run

    _, config = load_recipe(REPO_ROOT / "recipes/cac/stage3_grpo_tiny.yaml", [f"annotations={cac_data}", f"out_dir={tmp_path / 's3'}"])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RecipeError, match="stage 3 runs under data parallel"):
        run(config)
