"""``generator.decode`` (issue 117): the tiny random Wan's latent preview as a setting of flow-grpo and nft, so a tiny run
whose reward reads the frames can learn from the command line. Taken where the model's own files say it decodes with
the tiny random VAE, refused in one line on every other model before anything loads, and refused by the jobs that
never decode latents themselves."""

from __future__ import annotations

import json

import pytest

from cac_align.cli import main
from cac_align.config import load_config
from cac_align.gen.families.wan import TINY_WAN_VAE, build_tiny_wan_pipeline, latent_preview
from cac_align.gen.generator import GeneratorConfig, video_decode
from conftest import REPO_ROOT

BRIGHTNESS = REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml"
REFUSED = "generator.decode=latent_preview stands in for the tiny random Wan's VAE only"


def _refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_preview_is_refused_in_one_line_on_a_model_that_is_not_the_tiny_wan(tmp_path, capsys):
    # a Wan-2.1 folder as diffusers saves one (its VAE's settings from Wan-AI/Wan2.1-T2V-1.3B-Diffusers' vae/config.json),
    # without weights: the refusal comes from its files, before anything loads
    real = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    (real / "vae").mkdir(parents=True)
    (real / "transformer").mkdir()  # every part its index lists is there (a folder that lacks one is refused for that first)
    (real / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
                                                       "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]}))
    (real / "vae/config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
                                                      "num_res_blocks": 2, "temperal_downsample": [False, True, True]}))
    out = tmp_path / "run"
    err = _refusal(capsys, ["flow-grpo", "--config", str(BRIGHTNESS), f"out_dir={out}", f"generator.name={real}", "generator.decode=latent_preview"])
    assert REFUSED in err and f"{real} (Wan-2.1) is another model" in err and "remove generator.decode" in err
    assert not out.exists()  # refused before the run started
    # a tiny layout whose VAE is not the tiny Wan's (the TI2V-5B's: 48 channels, 16x in space), in nft too
    err = _refusal(capsys, ["nft", "--config", str(REPO_ROOT / "recipes/align/nft_tiny.yaml"), f"out_dir={out}", "generator.name=tiny-random:wan22-ti2v",
                            "generator.decode=latent_preview"])
    assert REFUSED in err and "tiny-random:wan22-ti2v (Wan2.2-TI2V-5B) is another model" in err
    # a job that never decodes latents itself: where the setting would be ignored, it is refused
    err = _refusal(capsys, ["bon", "--config", str(REPO_ROOT / "recipes/align/bon_tiny.yaml"), f"out_dir={out}", "generator.decode=latent_preview"])
    assert "generator.decode=latent_preview is read by flow-grpo and nft, which decode their own samples; bon does not: remove it" in err
    err = _refusal(capsys, ["flow-grpo", "--config", str(BRIGHTNESS), f"out_dir={out}", "generator.decode=preview"])
    assert "generator.decode must be one of vae | latent_preview, got 'preview'" in err


def test_the_preview_is_taken_where_the_models_vae_is_the_tiny_random_one(tmp_path):
    """A folder make-tiny saved from the tiny Wan is told by its vae/config.json, whatever the folder's name; the same
    folder with another VAE's settings is not."""
    folder = tmp_path / "my_model"
    build_tiny_wan_pipeline(seed=0).save_pretrained(str(folder))
    settings = {"height": 32, "width": 32, "num_frames": 9, "num_inference_steps": 2, "dtype": "float32"}
    config = GeneratorConfig(name=str(folder), decode="latent_preview", **settings)
    assert video_decode(config, config.family) is latent_preview
    assert video_decode(GeneratorConfig(name=str(folder), **settings), config.family) == config.family.decode  # the default: the VAE's
    vae = json.loads((folder / "vae/config.json").read_text())
    assert {key: vae[key] for key in TINY_WAN_VAE} == TINY_WAN_VAE  # what the builder made is what the check reads
    (folder / "vae/config.json").write_text(json.dumps({**vae, "base_dim": 96}))
    with pytest.raises(ValueError, match=REFUSED):
        GeneratorConfig(name=str(folder), decode="latent_preview", **settings)


@pytest.mark.slow  # two runs of eight videos (9.6 s of the default suite's 501 s on 2 busy cores, 2026-11-29): its 5 minutes; .ci/run runs it
def test_through_the_preview_the_reward_sees_what_the_tiny_wan_samples_and_through_its_vae_it_does_not(tmp_path):
    """One step of flow-grpo on brightness from the command line, each way: through the tiny random VAE a group's eight
    videos are within ~3e-4 of each other in brightness (its decode all but ignores the latents: no advantage to learn
    from); through the preview they spread ~70x wider (0.0168 against 0.00025 measured), as the latents do."""
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, _Trainer

    spread = {}
    for decode in ("vae", "latent_preview"):
        out = tmp_path / decode
        common = [f"out_dir={out}", f"generator.decode={decode}", "steps=1", "group_size=8", "sample_batch_size=8", "train_batch_size=8",
                  "log_with=none", "checkpoint_every=0", "eval_every=0", "eval_videos=0"]
        assert main(["flow-grpo", "--config", str(BRIGHTNESS), *common]) == 0
        spread[decode] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["reward/std"]
    assert spread["vae"] < 1e-3 and spread["latent_preview"] > 10 * spread["vae"], spread
    trainer = _Trainer(load_config(FlowGrpoConfig, BRIGHTNESS, [f"out_dir={tmp_path / 'x'}", "generator.decode=latent_preview"], job="flow-grpo"))
    assert trainer.decode is latent_preview  # the package's preview, the one benchmarks/rl/reward_hacking.py measured with
