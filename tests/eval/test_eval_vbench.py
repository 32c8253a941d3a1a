"""`cac-align eval vbench`: vbench's own metric code on random-weight backbones (the plumbing, not
the values of random networks), the missing-weights message, resume and safe loading.

The real weights (RAFT-things, DINO ViT-B/16 with its repository, MUSIQ-SPAQ) cannot be fetched
here, so a fake vbench cache is built with random networks at the paths vbench uses: vbench's
vendored RAFT, pyiqa's MUSIQ (full size) and, for DINO, a stand-in ``hubconf.py`` that builds a
two-block ViT-B/16 with timm (DINO's interface: ``dino_vitb16(pretrained=...)`` returning a
network whose output is the CLS feature).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, smooth_video

from cac_align.config import RecipeError
from cac_align.eval import vbench as vb
from cac_align.jobs import eval_vbench as vb_job
from cac_align.loading import WeightsNotFoundError
from cac_align.video import Video, save_video


def _need_vbench() -> None:
    """vbench is installed by README's second install line; missing in CI is a failure."""
    try:
        vb.import_vbench()
    except RecipeError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install vbench (README; docs/install.md): {exc}")
        pytest.skip(f"needs vbench (README; docs/install.md): pip install --no-deps -r requirements-vbench.txt && pytest tests/eval/test_eval_vbench.py ({exc})")


_HUBCONF = '''"""Test stand-in for facebookresearch/dino's hubconf.py: a random two-block ViT-B/16."""
dependencies = ["torch", "timm"]


def dino_vitb16(pretrained=True, **kwargs):
    import timm

    if pretrained:
        raise RuntimeError("this stand-in never downloads; call it with pretrained=False")
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=2, dynamic_img_size=True)
'''


@pytest.fixture(scope="module")
def random_cache(tmp_path_factory) -> Path:
    """A vbench cache with random weights at vbench's paths (the real RAFT checkpoint carries
    DataParallel's ``module.`` prefix; so does this one)."""
    _need_vbench()
    import timm
    from easydict import EasyDict
    from pyiqa.archs.musiq_arch import MUSIQ
    from vbench.third_party.RAFT.core.raft import RAFT

    cache = tmp_path_factory.mktemp("vbench_cache")
    files = {item.key: cache / item.path for items in vb.WEIGHTS.values() for item in items}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    raft = RAFT(EasyDict({"small": False, "mixed_precision": False, "alternate_corr": False}))
    torch.save({f"module.{k}": v for k, v in raft.state_dict().items()}, files["raft"])
    files["dino_repo"].write_text(_HUBCONF)
    dino = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=2, dynamic_img_size=True)
    torch.save(dino.state_dict(), files["dino"])
    torch.save(MUSIQ(pretrained=False).state_dict(), files["musiq"])
    return cache


@pytest.fixture(scope="module")
def systems(tmp_path_factory) -> dict[str, Path]:
    """Two systems: ``base`` with two clean videos; ``aligned`` with two clean videos (one of
    10 frames) and a corrupt mp4."""
    root = tmp_path_factory.mktemp("vbench_videos")
    layout = {"base": [(6, 0), (6, 1)], "aligned": [(6, 2), (10, 3)]}
    folders = {}
    for name, videos in layout.items():
        folder = root / name
        for index, (frames, seed) in enumerate(videos):
            save_video(Video(smooth_video(frames, 64, 64, seed=seed), fps=8.0), folder / f"v{index}.mp4")
        folders[name] = folder
    (folders["aligned"] / "v9_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return folders


def _config(out: Path, cache: Path, systems: dict[str, Path], **kw) -> vb_job.VBenchConfig:
    return vb_job.VBenchConfig(systems={k: str(v) for k, v in systems.items()}, out_dir=str(out), cache_dir=str(cache), device="cpu", **kw)


def test_aggregate_by_hand():
    rows = [{"score": 0.5, "pairs": 2}, {"score": 1.0, "pairs": 4}, {"score": None, "error": "x"}]
    # vbench's subject consistency: every frame pair counts once, so (0.5*2 + 1*4) / 6
    assert vb.aggregate("subject_consistency", rows) == pytest.approx(5 / 6)
    assert vb.aggregate("dynamic_degree", [{"score": 1.0}, {"score": 0.0}, {"score": 1.0}, {"score": None}]) == pytest.approx(2 / 3)
    assert vb.aggregate("imaging_quality", [{"score": 0.25}, {"score": 0.75}]) == pytest.approx(0.5)
    assert vb.aggregate("imaging_quality", [{"score": None}]) is None


def test_missing_weights_message_lists_files_place_and_fetch(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "cache"
    empty.mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"")  # the systems' videos are checked first (there), then the weights (not read here)
    config = vb_job.VBenchConfig(systems={"base": str(tmp_path)}, out_dir=str(tmp_path / "out"), cache_dir=str(empty))
    with pytest.raises(WeightsNotFoundError) as info:
        vb_job.run(config)
    message = str(info.value)
    for items in vb.WEIGHTS.values():
        for item in items:
            assert str(empty / item.path) in message  # which file, where vbench expects it
    assert "git clone https://github.com/facebookresearch/dino" in message  # how to get it
    assert "wget -P $CACHE/raft_model https://dl.dropboxusercontent.com" in message
    assert "musiq_spaq_ckpt-358bb6af.pth" in message and f"  CACHE={empty}\n" in message
    assert not (tmp_path / "out").exists()  # stopped before doing anything

    # only the requested dimension's files; the cache from $VBENCH_CACHE_DIR when cache_dir is unset
    (empty / "raft_model/models").mkdir(parents=True)
    (empty / "raft_model/models/raft-things.pth").write_bytes(b"x")
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(empty))
    assert vb.missing_weights(["dynamic_degree"]) == []
    with pytest.raises(WeightsNotFoundError) as info:
        vb.check_weights(["dynamic_degree", "imaging_quality"])
    assert "$VBENCH_CACHE_DIR" in str(info.value) and "raft_model" not in str(info.value) and "pyiqa_model" in str(info.value)

    # the CLI prints it and exits 2
    from cac_align.cli import main

    code = main(["eval", "vbench", "--config", "recipes/eval/vbench.yaml", f"out_dir={tmp_path / 'cli'}", f"cache_dir={empty}",
                 f"systems:={{base: {tmp_path}}}"])
    assert code == 2
    assert "dino_vitbase16_pretrain.pth" in capsys.readouterr().err


def test_a_vbench_json_of_the_users_is_refused_and_kept(tmp_path, random_cache, systems):
    out = tmp_path / "vb"
    out.mkdir()
    (out / "vbench.json").write_text('{"mine": true}')
    for overwrite in (False, True):  # overwrite replaces a run's outputs, never a file of the user's
        with pytest.raises(RecipeError, match="already has vbench.json, not written by a recorded eval-vbench run"):
            vb_job.run(_config(out, random_cache, systems, overwrite=overwrite))
    assert (out / "vbench.json").read_text() == '{"mine": true}' and not (out / "per_video").exists()


@pytest.mark.slow  # vbench's three metrics on random backbones, run once (36 s alone, 2026-11-29): `pytest -m slow`, which .ci/run runs
def test_plumbing_on_random_backbones_through_the_before_after_example(tmp_path, random_cache, systems, monkeypatch):
    """examples/vbench_before_after.py (docs/examples.md), two folders in: the job on random weights, every video scored
    by vbench's functions through the real loading paths; the means are what vbench's own whole-list calls give; the
    example's report is vbench.json's means with "after"'s delta; a killed run resumes; other settings are refused.
    One test: the example runs the same job on the same videos, and vbench's metrics were run twice for it (20 s alone)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_vbench_before_after", REPO_ROOT / "examples/vbench_before_after.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    table2 = tmp_path / "table2"
    example.main(["--before", str(systems["base"]), "--after", str(systems["aligned"]), "--out", str(table2), "--cache-dir", str(random_cache),
                  "--device", "cpu"])
    # the example's job is the job a recipe runs: these settings on its folder are its own (the resume below redoes nothing else)
    renamed = {"before": systems["base"], "after": systems["aligned"]}
    out = table2 / "vbench"
    on_disk = json.loads((out / "vbench.json").read_text())
    assert list(on_disk["systems"]) == ["before", "after"]

    base = on_disk["systems"]["before"]["dimensions"]
    aligned = on_disk["systems"]["after"]["dimensions"]
    for dim in vb.DIMENSIONS:
        assert (base[dim]["n"], base[dim]["failed"]) == (2, 0)
        assert (aligned[dim]["n"], aligned[dim]["failed"]) == (2, 1)
        bad = aligned[dim]["per_video"][-1]
        assert bad["video"].endswith("v9_corrupt.mp4") and bad["score"] is None and bad["error"]
        for row in base[dim]["per_video"] + aligned[dim]["per_video"][:2]:
            assert row["error"] is None and np.isfinite(row["score"])
    # per-video shapes of the three metrics (not their values)
    assert {r["score"] for r in base["dynamic_degree"]["per_video"]} <= {0.0, 1.0}
    assert all(0.0 <= r["score"] <= 1.0 for r in base["subject_consistency"]["per_video"])
    assert [r["pairs"] for r in aligned["subject_consistency"]["per_video"][:2]] == [5, 9]

    # our per-video calls + aggregate == vbench's own call on the whole list
    from vbench.dynamic_degree import dynamic_degree
    from vbench.imaging_quality import technical_quality
    from vbench.subject_consistency import subject_consistency

    files = vb.check_weights(vb.DIMENSIONS, str(random_cache))
    paths = [r["video"] for r in aligned["dynamic_degree"]["per_video"][:2]]
    with torch.no_grad():
        reference = {
            "dynamic_degree": dynamic_degree(vb.load_backbone("dynamic_degree", files["dynamic_degree"], "cpu"), paths)[0],
            "subject_consistency": subject_consistency(vb.load_backbone("subject_consistency", files["subject_consistency"], "cpu"), paths, "cpu", False)[0],
            "imaging_quality": technical_quality(vb.load_backbone("imaging_quality", files["imaging_quality"], "cpu"), paths, "cpu")[0],
        }
    for dim, value in reference.items():
        assert aligned[dim]["mean"] == pytest.approx(float(value), rel=1e-6, abs=1e-9), dim

    # outputs a reader uses
    with (out / "per_video.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and "v9_corrupt.mp4" in table[-1]["video"] and "dynamic_degree:" in table[-1]["errors"]
    assert "| after |" in (out / "vbench.md").read_text() and "1 failed" in (out / "vbench.md").read_text()
    # the example's report: each row is vbench.json's means, and "after"'s delta is after - before
    report = json.loads((table2 / "report/report.json").read_text())
    assert report["systems"] == ["before", "after"] and (table2 / "report/report.html").is_file()
    for row in report["rows"]:
        before, after = (on_disk["systems"][s]["dimensions"][row["key"]]["mean"] for s in ("before", "after"))
        assert row["values"] == {"before": before, "after": after} and row["deltas"]["after"] == pytest.approx(after - before)
    markdown = (table2 / "report/report.md").read_text()
    assert "Before and after alignment" in markdown and "| Imaging quality ↑ |" in markdown

    # resume: a killed run left one scored line and half of another; only the rest is scored
    per_video = out / "per_video" / "before" / "imaging_quality.jsonl"
    first, second = per_video.read_text().splitlines()
    per_video.write_text(first + "\n" + second[: len(second) // 2])
    calls: list[tuple[str, str]] = []
    real = vb.score_video

    def spy(dimension, backbone, path, *args, **kwargs):
        calls.append((dimension, Path(path).name))
        return real(dimension, backbone, path, *args, **kwargs)

    monkeypatch.setattr(vb_job, "score_video", spy)
    again = vb_job.run(_config(out, random_cache, renamed))
    # the corrupt video is retried (its failure may have been transient), nothing else is redone
    assert sorted(calls) == sorted([("imaging_quality", "v1.mp4")] + [(d, "v9_corrupt.mp4") for d in vb.DIMENSIONS])
    assert again["systems"]["before"]["dimensions"]["imaging_quality"]["mean"] == pytest.approx(base["imaging_quality"]["mean"], rel=1e-6)
    assert json.loads((out / "vbench.json").read_text()) == json.loads(json.dumps(again))  # what the job returns is what it wrote

    # other settings on the same out_dir are refused, key by key
    with pytest.raises(RecipeError, match="imaging_quality_preprocessing_mode"):
        vb_job.run(_config(out, random_cache, renamed, imaging_quality_preprocessing_mode="None"))


def test_checkpoints_load_tensors_only(tmp_path):
    """A checkpoint holding a pickled object is refused, not executed."""
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(WeightsNotFoundError, match="tensors-only"):
        vb._state_dict(path)
    path = tmp_path / "plain.pth"
    torch.save({"module.a": torch.ones(2), "b": torch.zeros(1)}, path)
    assert sorted(vb._state_dict(path)) == ["a", "b"]
    # RAFT goes through vbench's own loader; the file is checked before it gets there
    _need_vbench()
    with pytest.raises(WeightsNotFoundError, match="tensors-only"):
        vb.load_backbone("dynamic_degree", {"raft": tmp_path / "evil.pth"}, "cpu")


class _Payload:
    pass


def test_missing_vbench_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vbench.dynamic_degree", None)  # import fails as if absent
    with pytest.raises(RecipeError, match="--no-deps -r requirements-vbench.txt"):
        vb.import_vbench()


def test_config_errors():
    with pytest.raises(ValueError, match="systems is empty"):
        vb_job.VBenchConfig(out_dir="x")
    with pytest.raises(ValueError, match="choose from"):
        vb_job.VBenchConfig(systems={"a": "x"}, out_dir="x", dimensions=["motion_smoothness"])
    with pytest.raises(ValueError, match="names a folder"):
        vb_job.VBenchConfig(systems={"../a": "x"}, out_dir="x")
    with pytest.raises(ValueError, match="preprocessing_mode"):
        vb_job.VBenchConfig(systems={"a": "x"}, out_dir="x", imaging_quality_preprocessing_mode="long")
