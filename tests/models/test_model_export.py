"""Model export (half-precision folder + settings + card), built-in names, and model settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cac.infer import CaCOptions
from cac_align.loading import WeightsNotFoundError, check_weights_source
from cac_align.models import builtin_path, model_settings, resolve_model_name
from cac_align.jobs.export import export_model, folder_size
from cac_align.video import Video
from cac_align.vlm.backend import user
from cac_align.vlm.hf import HFBackend, load_vlm


def test_export_halves_the_weights_and_loads_back_through_from_pretrained(tiny_qwen3_vl, tmp_path):
    source = tmp_path / "trained"
    tiny_qwen3_vl.save_pretrained(str(source))
    settings = {"prompt_style": "compact", "max_pixels": 24576, "size_multiple": 64}
    out = export_model(source, tmp_path / "shipped", settings, "# card\n")
    weights = lambda folder: sum(p.stat().st_size for p in folder.glob("*.safetensors"))  # noqa: E731
    assert weights(out) < 0.55 * weights(source)  # float16: half the float32 bytes (+ a header)
    assert folder_size(out) >= weights(out)
    assert json.loads((out / "cac_align.json").read_text()) == settings and (out / "README.md").read_text() == "# card\n"
    assert model_settings(str(out)) == settings and model_settings(str(source)) == {}
    model, processor = load_vlm(str(out), dtype="float32", device="cpu")
    video = Video(np.random.default_rng(0).integers(0, 255, (4, 64, 96, 3), dtype=np.uint8), 4.0)
    request = [[user(video, "is it normal?")]]
    original = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor).choice_probs(request, ['{"status": "'], ["normal", "abnormal"])
    exported = HFBackend(model, processor).choice_probs(request, ['{"status": "'], ["normal", "abnormal"])
    np.testing.assert_allclose(exported, original, rtol=0.05)  # float16 weights, float32 compute
    assert not (tmp_path / "shipped.tmp").exists()


def test_builtin_names_resolve_to_the_package_folder():
    path = builtin_path("cac-demo")
    assert path is not None and path.parent.name == "models" and resolve_model_name("cac-demo") == str(path)
    assert builtin_path("Qwen/Qwen3-VL-8B-Instruct") is None and resolve_model_name("some/hub-id") == "some/hub-id"
    if (path / "config.json").is_file():
        assert check_weights_source("cac-demo") == str(path)


def test_missing_builtin_files_name_the_fix(tmp_path, monkeypatch):
    import cac_align.models as models

    monkeypatch.setattr(models, "_HERE", tmp_path)
    with pytest.raises(WeightsNotFoundError, match="reproduce_cac_demo"):
        check_weights_source("cac-demo", "reward.model.name")


def test_options_left_to_the_model_take_its_settings():
    settings = {"prompt_style": "compact", "max_pixels": 24576, "size_multiple": 64}
    auto = CaCOptions().for_model(settings)
    assert (auto.prompt_style, auto.max_pixels, auto.size_multiple) == ("compact", 24576, 64)
    # what a recipe sets wins
    mine = CaCOptions(prompt_style="full", max_pixels=1000, size_multiple=32).for_model(settings)
    assert (mine.prompt_style, mine.max_pixels, mine.size_multiple) == ("full", 1000, 32)
    # a model without settings: the paper's wording, no cap, Qwen3-VL's 32-px grid
    plain = CaCOptions().for_model({})
    assert (plain.prompt_style, plain.max_pixels, plain.size_multiple) == ("full", None, 32)
    with pytest.raises(ValueError, match="unknown setting"):
        CaCOptions().for_model({"prompt_styel": "compact"})
    with pytest.raises(ValueError, match="prompt_style"):
        CaCOptions(prompt_style="short")


def test_every_setting_a_model_was_trained_with_travels_and_the_recipe_still_wins():
    trained = {"scan_fps": 2.0, "clip_fps": 6.0, "max_frames_turn1": 16, "max_frames_turn2": 8, "max_new_tokens": 320, "dtype": "float32"}
    got = CaCOptions().for_model(trained)
    assert (got.scan_fps, got.clip_fps, got.max_frames_turn1, got.max_frames_turn2, got.max_new_tokens) == (2.0, 6.0, 16, 8, 320)
    mine = CaCOptions(scan_fps=4.0, max_frames_turn2=32).for_model(trained)
    assert (mine.scan_fps, mine.clip_fps, mine.max_frames_turn2) == (4.0, 6.0, 32)  # set: mine; unset: the model's
    # none given anywhere: the paper's 4 and 8 fps (CaC §3.4), the generic caps and budget
    plain = CaCOptions().for_model({})
    assert (plain.scan_fps, plain.clip_fps, plain.max_frames_turn1, plain.max_frames_turn2, plain.max_new_tokens) == (4.0, 8.0, 64, 32, 1024)
    with pytest.raises(ValueError, match="cac_align.json: max_frames_turn1 and max_frames_turn2 must be >= 2"):
        CaCOptions().for_model({"max_frames_turn2": 1})
    # the load setting: model.dtype unset takes the folder's, set wins, none: bfloat16
    from cac_align.vlm.config import ModelConfig, model_dtype

    assert model_dtype(ModelConfig(name="cac-demo")) == "float32"
    assert model_dtype(ModelConfig(name="cac-demo", dtype="bfloat16")) == "bfloat16"
    assert model_dtype(ModelConfig(name="Qwen/Qwen3-VL-8B-Instruct")) == "bfloat16"


def test_export_job_from_the_command_line(tiny_qwen3_vl, tmp_path, capsys):
    """``cac-align export``: the settings given as an override land in cac_align.json, the card
    in README.md; an unknown setting, a missing card or source is refused before anything is written."""
    from cac_align.cli import main

    source = tmp_path / "trained"
    tiny_qwen3_vl.save_pretrained(str(source))
    card = tmp_path / "card.md"
    card.write_text("# my judge\n")
    out = tmp_path / "shipped"
    settings = "settings={prompt_style: compact, max_pixels: 24576, size_multiple: 64}"
    assert main(["export", f"source={source}", f"out_dir={out}", settings, f"card={card}"]) == 0
    assert model_settings(str(out)) == {"prompt_style": "compact", "max_pixels": 24576, "size_multiple": 64}
    assert (out / "README.md").read_text() == "# my judge\n" and (out / "model.safetensors").is_file()
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["export", f"source={source}", f"out_dir={other}", "settings={prompt_stile: compact}"]) == 2
    assert "settings: unknown setting(s) ['prompt_stile']" in capsys.readouterr().err
    assert main(["export", f"source={source}", f"out_dir={other}", f"card={tmp_path / 'no.md'}"]) == 2
    assert "card=" in capsys.readouterr().err
    assert main(["export", f"source={tmp_path / 'nowhere'}", f"out_dir={other}"]) == 2
    assert "source" in capsys.readouterr().err
    assert not other.exists()
    # a source that carries its own cac_align.json (train-cac writes one): carried over, settings on top
    (source / "cac_align.json").write_text(json.dumps({"prompt_style": "compact", "max_frames_turn2": 32, "scan_fps": 4.0}))
    assert main(["export", f"source={source}", f"out_dir={other}", "settings={max_frames_turn2: 8}"]) == 0
    assert model_settings(str(other)) == {"prompt_style": "compact", "max_frames_turn2": 8, "scan_fps": 4.0}
