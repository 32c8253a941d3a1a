"""A generator is what its own files say (cac_align.gen.family): a pipeline saved by diffusers'
own classes is found as its family wherever its files are (a local folder, a listed hub id, a hub
id nobody listed in the Hugging Face cache offline, or one whose model_index.json is downloaded)
and takes that family's settings; a pipeline no family runs is a one-line error."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cac_align.config import load_config
from cac_align.gen.family import UnknownGeneratorError, families, family_of, regenerator_of
from cac_align.gen.generator import GeneratorConfig
from cac_align.gen.families.wan import build_tiny_wan22_a14b_pipeline, build_tiny_wan22_ti2v_pipeline, build_tiny_wan_pipeline
from cac_align.loading import WeightsNotFoundError
from cac_align.video import load_video
from conftest import REPO_ROOT

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The three Wan layouts, each built from diffusers' own classes and written by its
    ``save_pretrained`` (what a fine-tune pushed to the Hub holds)."""
    root = tmp_path_factory.mktemp("saved")
    for name, build in (("wan21", build_tiny_wan_pipeline), ("ti2v", build_tiny_wan22_ti2v_pipeline), ("a14b", build_tiny_wan22_a14b_pipeline)):
        build(seed=0).save_pretrained(str(root / name))
    return root


def cache_repo(cache: Path, repo_id: str, folder: Path) -> Path:
    """``folder`` as the hub cache holds a downloaded ``repo_id`` (huggingface_hub's layout:
    ``models--owner--name/snapshots/<commit>/`` and ``refs/main``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo


def test_a_local_folder_is_the_family_its_model_index_names(saved):
    assert family_of(str(saved / "wan21")).name == "wan2.1"
    assert family_of(str(saved / "ti2v")).name == "wan2.2-ti2v"  # expand_timesteps
    assert family_of(str(saved / "a14b")).name == "wan2.2-a14b"  # transformer_2, boundary_ratio
    ti2v = GeneratorConfig(name=str(saved / "ti2v"))
    assert (ti2v.height, ti2v.width, ti2v.num_frames, ti2v.fps, ti2v.flow_shift) == (704, 1280, 121, 24.0, 5.0)
    a14b = GeneratorConfig(name=str(saved / "a14b"))
    assert (a14b.num_inference_steps, a14b.guidance_scale, a14b.guidance_scale_2, a14b.flow_shift) == (40, 4.0, 3.0, 12.0)


def test_an_unlisted_hub_id_in_the_cache_is_read_from_its_files_offline(saved, hub_cache):
    # as a fine-tune pushed to the Hub and downloaded earlier: nobody lists these names
    cache_repo(hub_cache, "someone/wan22-ti2v-finetune", saved / "ti2v")
    cache_repo(hub_cache, "someone/a14b-mirror", saved / "a14b")
    ti2v = GeneratorConfig(name="someone/wan22-ti2v-finetune")
    assert ti2v.family.name == "wan2.2-ti2v" and (ti2v.height, ti2v.width, ti2v.fps, ti2v.flow_shift) == (704, 1280, 24.0, 5.0)
    a14b = GeneratorConfig(name="someone/a14b-mirror", guidance_scale_2=2.0)  # its second expert's scale, not refused
    assert a14b.family.name == "wan2.2-a14b" and (a14b.flow_shift, a14b.guidance_scale, a14b.guidance_scale_2) == (12.0, 4.0, 2.0)
    # ... and a listed name's files decide too when they are there
    cache_repo(hub_cache, "Wan-AI/Wan2.2-TI2V-5B-Diffusers", saved / "a14b")  # (a wrong copy, to show who decides)
    assert family_of("Wan-AI/Wan2.2-TI2V-5B-Diffusers").name == "wan2.2-a14b"


def test_a_listed_hub_id_without_files_is_known_by_name_and_an_unlisted_one_is_an_error(hub_cache):
    assert family_of("Wan-AI/Wan2.2-T2V-A14B-Diffusers").name == "wan2.2-a14b"  # offline, not cached: the list
    assert family_of("Wan-AI/Wan2.1-T2V-1.3B-Diffusers").name == "wan2.1"
    with pytest.raises(WeightsNotFoundError, match=r"generator.name='someone/not-cached': cannot tell which model it is.*hf download"):
        GeneratorConfig(name="someone/not-cached")


def test_a_pipeline_no_family_runs_is_a_one_line_error(saved, tmp_path):
    flux = tmp_path / "flux"
    flux.mkdir()
    index = json.loads((saved / "wan21" / "model_index.json").read_text())
    (flux / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(UnknownGeneratorError) as error:
        GeneratorConfig(name=str(flux))
    message = str(error.value)
    wan = ", ".join(f.title for f in families() if f.pipeline_class == "WanPipeline")  # the one list's, in its order
    assert wan.startswith("Wan-2.1, Wan2.2-TI2V-5B, Wan2.2-A14B")
    assert "\n" not in message and "FluxPipeline" in message and f"WanPipeline ({wan})" in message
    (tmp_path / "weights").mkdir()  # a folder that is not a pipeline at all
    with pytest.raises(UnknownGeneratorError, match="has no model_index.json: it is not a diffusers pipeline"):
        family_of(str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError, match="no such directory"):
        family_of(str(tmp_path / "missing"))
    # a VACE is repair's regenerator, not a generator: named as what it is
    vace = tmp_path / "vace"
    for part in ("scheduler", "text_encoder", "tokenizer", "transformer", "transformer_2", "vae"):  # what its index lists (a part
        (vace / part).mkdir(parents=True)                                                             # missing: test_missing_parts.py)
    (vace / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanVACEPipeline"}))
    with pytest.raises(UnknownGeneratorError, match="is a WanVACEPipeline, which no generator job runs"):
        family_of(str(vace))
    assert regenerator_of(str(vace)).name == "wan2.1-vace"
    (vace / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanVACEPipeline", "transformer_2": ["diffusers", "WanVACETransformer3DModel"]}))
    assert regenerator_of(str(vace)).experts == 2


class _HubFiles(http.server.BaseHTTPRequestHandler):
    """The Hugging Face hub's file protocol, as far as huggingface_hub's download of one file
    uses it (``HEAD``/``GET {endpoint}/{repo}/resolve/{revision}/{file}``, answered with the
    file's commit, ETag and size), over the folders in ``repos``; every request is recorded."""

    repos: dict[str, Path] = {}
    requests: list[str] = []

    def _file(self) -> Path | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        folder = self.repos.get("/".join(parts[:2]))
        path = folder / "/".join(parts[4:]) if folder else None
        return path if path and path.is_file() else None

    def _answer(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        path = self._file()
        if path is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow  # a fresh process (the hub's address is read at import): about 20 s
def test_an_unlisted_hub_id_not_cached_downloads_its_model_index_alone(saved, tmp_path):
    # a process whose hub is a local server speaking the hub's file protocol (HF_ENDPOINT)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubFiles)
    _HubFiles.repos = {"someone/ti2v-online": saved / "ti2v"}
    _HubFiles.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_DISABLE_TELEMETRY="1")
    script = "from cac_align.gen.generator import GeneratorConfig as G; c = G(name='someone/ti2v-online'); print(c.family.name, c.fps)"
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["wan2.2-ti2v", "24.0"]
    fetched = {r.split()[1].split("/resolve/main/")[-1] for r in _HubFiles.requests}
    # the file that says what it is and the three that give its shift and VAE ratios (cac_align.gen.family), not the weights
    assert fetched == {"model_index.json", "scheduler/scheduler_config.json", "vae/config.json", "transformer/config.json"}


BON_RECIPE = """
job: bon
out_dir: run
prompts: {prompts}
n: 2
batch_size: 2
generator: {{name: someone/wan22-ti2v-finetune, dtype: float32, vae_dtype: float32, device: cpu, height: 64, width: 64, num_frames: 9,
            num_inference_steps: 2}}
reward: {{name: spot_brightness, box: [0, 0, 1000, 1000]}}
"""


@pytest.mark.slow  # the CLI in a fresh process: about 25 s
def test_best_of_n_on_an_unlisted_hub_id_writes_the_models_own_fps(saved, tmp_path):
    # as a user runs it: the CLI, an offline machine, the model in the Hugging Face cache under a
    # name nobody listed; the TI2V-5B's videos are written at its 24 fps, not Wan-2.1's 16
    cache_repo(tmp_path / "hub", "someone/wan22-ti2v-finetune", saved / "ti2v")
    recipe = tmp_path / "bon.yaml"
    recipe.write_text(BON_RECIPE.format(prompts=REPO_ROOT / "recipes/align/prompts_tiny.txt"))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cac_align.cli", "bon", "--config", str(recipe)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run/candidates.jsonl").read_text().splitlines()]
    video = load_video(str(tmp_path / "run" / rows[0]["video"]))
    assert video.fps == 24.0 and video.frames.shape == (9, 64, 64, 3)


def test_flow_grpo_on_an_unlisted_a14b_trains_both_experts_at_its_shift(saved, hub_cache, tmp_path):
    from cac_align.gen.generator import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

    cache_repo(hub_cache, "someone/a14b-mirror", saved / "a14b")
    recipe = REPO_ROOT / "recipes/align/flow_grpo_tiny_wan22_a14b.yaml"
    config = load_config(FlowGrpoConfig, recipe, [f"out_dir={tmp_path / 'run'}", "generator.name=someone/a14b-mirror", "lora.experts=both",
                                                  "steps=1", "eval_every=0", "checkpoint_every=0", "log_with=none"],
                         job="flow-grpo")
    assert config.generator.flow_shift == 12.0  # the A14B's (its checkpoint's scheduler says 3.0)
    run(config)
    assert (tmp_path / "run/lora" / LORA_WEIGHT_NAME).is_file() and (tmp_path / "run/lora" / LORA_WEIGHT_NAME_2).is_file()
