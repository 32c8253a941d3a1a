"""Shared fixtures: tiny random models (built once per session) and small videos."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_WORKERS = 4  # -n auto: one xdist worker per core, at most this many (each holds torch and tiny models)


def pytest_xdist_auto_num_workers(config) -> int:
    import os

    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def pytest_configure(config) -> None:
    """In an xdist worker: one intra-op thread (two workers on two cores with two threads each
    run the suite twice as slow as one process), for torch here and for the processes tests start.
    Everywhere: the width the CLI fits its tables to (``check-recipe``: ``$COLUMNS``, else the
    terminal's) is 100 columns, its own fallback, whoever runs the suite: an xdist worker has
    ``COLUMNS=80`` set (pytest-xdist's), a terminal its own, and a test reading the plan's rows
    should not depend on either (a test of the fitting sets its own)."""
    import os

    os.environ["COLUMNS"] = "100"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        import torch

        torch.set_num_threads(1)


def tiny_recipes_by_family(prefix: str) -> dict[str, list[str]]:
    """``{family name: [recipe file names]}``: the tiny recipes ``recipes/align/<prefix>*.yaml`` of every
    generator family (:func:`cac_align.gen.family.families`, the one list), each recipe by the family
    of its ``generator.name`` (read from the files, nothing built). A family without such a recipe maps
    to ``[]``, so a test that walks the families sees a new family without a line of its own."""
    from omegaconf import OmegaConf

    from cac_align.gen.family import families, family_of

    found: dict[str, list[str]] = {family.name: [] for family in families()}
    for path in sorted((REPO_ROOT / "recipes/align").glob(f"{prefix}*.yaml")):
        name = OmegaConf.load(path).get("generator", {}).get("name")
        if isinstance(name, str) and name.startswith("tiny-random:"):
            found[family_of(name).name].append(path.name)
    return found


# The components of a ``ur_cac`` section on the tiny random models (CaC without reasoning,
# UnifiedReward probs on 4 frames): what the trainer integrations' tests score with.
TINY_UR_CAC = {
    "cac": {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}},
    "unified_reward": {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4},
}


class ForceAnswer:
    """A logits processor that makes the model write ``answer`` (token ids), then ``eos``. A
    new generate call is told by the length jumping (not growing by one token)."""

    def __init__(self, answer, eos):
        self.answer, self.eos, self.start, self.last = answer, eos, 0, None

    def __call__(self, input_ids, scores):
        import torch

        if self.last is None or input_ids.shape[1] != self.last + 1:  # a new generate call
            self.start = input_ids.shape[1]
        self.last = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        token = self.answer[step] if step < len(self.answer) else self.eos
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


def forget_modules(package: str) -> None:
    """Drop ``package`` and its submodules from ``sys.modules`` (a stand-in checkout of another
    trainer is imported afresh by each test and leaves nothing behind)."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def ignore_sigint() -> None:
    """``preexec_fn`` for a child started as a background job of a non-interactive shell starts
    (``cmd &``, nohup, a CI script): SIGINT ignored. ``cac-align`` must still stop on Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_process_tree(process: Any, grace_s: float = 10.0) -> None:
    """Stop a process a test started and every process below it (a vLLM server forks its engine,
    in a session of its own), pass or fail: SIGTERM, then SIGKILL after ``grace_s``."""
    import psutil

    if process is None:
        return
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    with contextlib.suppress(Exception):
        process.wait(1)


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: a suite started in the
    background by a non-interactive shell (``nohup ... &``) inherits SIGINT ignored, and Python
    then installs no KeyboardInterrupt handler in the child. Restores the default first."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


class KeepingCompiler:
    """A torch.compile backend that keeps every graph dynamo hands it (``graphs``) and runs it as
    traced: how many compiles a run made, and what they hold."""

    def __init__(self):
        self.graphs: list = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward

    def __deepcopy__(self, memo):  # transformers deep-copies its CompileConfig: keep them here
        return self


def compile_config(compiler: KeepingCompiler) -> Any:
    """transformers' ``CompileConfig`` compiling with ``compiler``, on the CPU too."""
    from transformers.generation.configuration_utils import CompileConfig

    config = CompileConfig(backend=compiler, mode=None, fullgraph=False)
    config._compile_all_devices = True  # transformers compiles on CUDA only by default
    return config


def write_trained_lora(transformer: Any, target_modules: list[str], folder: Path, pipeline_class: str) -> None:
    """A LoRA as our trainers leave one, for the tests that load it into diffusers' own pipeline: rank 4 on
    ``target_modules`` with every ``lora_B`` drawn from N(0, 0.1) (as after training: the LoRA changes the output;
    a fresh one's B is 0), saved to ``folder`` by :func:`cac_align.gen.lora.save_lora`."""
    import torch

    from cac_align.gen.lora import LoraSettings, add_lora, save_lora

    add_lora(transformer, LoraSettings(rank=4, alpha=8, target_modules=list(target_modules)), seed=0)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    save_lora(transformer, folder, pipeline_class=pipeline_class)


def smooth_video(num_frames: int = 9, height: int = 32, width: int = 64, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 gradients that move a little each frame; codec-friendly content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 1, size=3)
    frames = []
    for t in range(num_frames):
        r = 0.5 + 0.5 * np.sin((xx + 2 * t) / width * 2 * np.pi + base[0] * 6)
        g = 0.5 + 0.5 * np.cos((yy + t) / height * 2 * np.pi + base[1] * 6)
        b = np.full_like(r, base[2])
        frames.append(np.stack([r, g, b], axis=-1))
    return np.round(np.stack(frames) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_qwen3_vl():
    from cac_align.vlm.tiny import build_tiny_qwen3_vl

    return build_tiny_qwen3_vl(seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl():
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(seed=0)


@pytest.fixture(scope="session")
def saved_tiny_pipeline(tmp_path_factory):
    """``saved(kind, tiny_name) -> folder``: the tiny pipeline ``tiny_name`` of a generator (``kind="generator"``)
    or repair (``"regenerator"``) family, built by its family and written by diffusers' ``save_pretrained`` (with
    the parts its family loads beside them: LTX-2.5's ``diffusion_decoder``), once per session. Read-only: a test
    that changes a folder copies it first."""
    from cac_align.gen.family import families

    root = tmp_path_factory.mktemp("saved_tiny")
    saved: dict[tuple[str, str], Path] = {}

    def save(kind: str, tiny_name: str) -> Path:
        if (kind, tiny_name) not in saved:
            family = next(f for f in families(kind) if tiny_name in f.tiny_names)
            folder = root / kind / tiny_name.split(":", 1)[1]
            pipe = family.build_tiny(tiny_name, seed=0)
            pipe.save_pretrained(str(folder))
            for part in getattr(family, "extra_components", ()):
                getattr(pipe, part).save_pretrained(str(folder / part))
            saved[(kind, tiny_name)] = folder
        return saved[(kind, tiny_name)]

    return save


@pytest.fixture(scope="session")
def cac_data(tmp_path_factory):
    """The tiny CaC training data of recipes/cac/synth_tiny.yaml (24 small videos, half normal)."""
    from cac_align.data.synthetic import generate
    from cac_align.jobs import load_recipe

    out = tmp_path_factory.mktemp("cac_data")
    _, config = load_recipe(REPO_ROOT / "recipes/cac/synth_tiny.yaml", [f"out_dir={out}"])
    generate(config)
    return out / "annotations.jsonl"


@pytest.fixture(autouse=True)
def _release_run_folder_locks():
    """Each test's jobs free their out_dir locks when it ends, as a finished CLI run does."""
    yield
    from cac_align.run.folder import release_locks

    release_locks()


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; the family lookups of this process forgotten."""
    from huggingface_hub import constants

    from cac_align.gen import family as family_module

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    family_module._hub_index_cached.cache_clear()
    yield cache
    family_module._hub_index_cached.cache_clear()


def free_port() -> int:
    """A TCP port free on this machine now (the system picks it), for a test's torchrun / accelerate launch: two
    tests that named the same fixed port collided when xdist ran them at once (EADDRINUSE)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
