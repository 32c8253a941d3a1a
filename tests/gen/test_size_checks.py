"""A size or frame count a family's models cannot take is refused before sampling, in one line naming
what works (issue #92, item 14): LTX-2.5's diffusion decoder, whose neighbourhood-attention kernels
need each stage's grid at least as large (read from the decoder's own config)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO_ROOT

from cac_align.config import RecipeError
from cac_align.gen.families.ltx25_decoder import check_decoder_size, decoder_grids
from cac_align.gen.families.ltx2_tiny import _ltx25_diffusion_decoder

FULL = json.loads((REPO_ROOT / "cac_align/plan/full_size/Lightricks--LTX-2.5-Diffusers/diffusion_decoder/config.json").read_text())


@pytest.fixture(scope="module")
def tiny_decoder_config():
    return _ltx25_diffusion_decoder().config  # tiny-random:ltx2.5's decoder


def test_the_decoder_grids_by_hand(tiny_decoder_config):
    # The release at 512 x 768 x 121: latents 16 frames x 16 x 24 (32x in space, 8x in time), plus (3 // 2) * 2 = 2
    # trailing copies: stage 1 (18, 16, 24); its stride (1, 2, 2) -> (18, 32, 48); stride (2, 1, 1) -> 2 x 18 - 1 = 35
    # frames; (2, 2, 2) -> (69, 64, 96); (2, 2, 2) -> 137 frames, less 2 x 8 cropped = 121, 128 x 192 (pixels in 4 x 4 patches)
    assert decoder_grids(FULL, 121, 512, 768) == [(1, (18, 16, 24), (3, 7, 7)), (2, (18, 32, 48), (3, 7, 7)), (3, (35, 32, 48), (3, 5, 5)),
                                                   (4, (69, 64, 96), (3, 5, 5)), (5, (121, 128, 192), (11, 11, 11))]
    # the tiny decoder at 64 x 64 x 9: latents (2 + 2, 2, 2); strides (1,1,1), (2,1,1) -> 7 frames; stage 3's (3, 1, 3)
    # window is wider than 2 latent columns: the diffusers ValueError the issue met, "(T, H, W) = (7, 2, 2)"
    assert decoder_grids(tiny_decoder_config, 9, 64, 64)[2] == (3, (7, 2, 2), (3, 1, 3))


def test_a_size_the_decoder_cannot_take_is_one_line_naming_the_smallest_that_works(tiny_decoder_config):
    with pytest.raises(RecipeError) as raised:
        check_decoder_size(tiny_decoder_config, 9, 64, 64)
    message = str(raised.value)
    assert "\n" not in message
    assert "cannot take 64 x 64 x 9 frames: its stage 3 attends over (T, H, W) = (7, 2, 2) positions with a (3, 1, 3) window" in message
    assert "set generator.height=64 generator.width=96 generator.num_frames=9" in message
    check_decoder_size(tiny_decoder_config, 9, 64, 96)  # the size it names runs (the tiny LTX-2.5 recipes' own)
    # the release: 7 latents a side for stage 1's 7 x 7 window; 17 frames for stage 5's 11 (9 frames give 9)
    with pytest.raises(RecipeError, match=r"height >= 224, width >= 224 and num_frames >= 17"):
        check_decoder_size(FULL, 9, 64, 64)
    check_decoder_size(FULL, 17, 224, 224)
    check_decoder_size(FULL, 121, 512, 768)


@pytest.mark.parametrize("job, recipe", [("bon", "bon_tiny_ltx2"), ("flow-grpo", "flow_grpo_tiny_ltx2")])
def test_the_jobs_refuse_it_before_sampling(job, recipe, tmp_path, capsys):
    """The issue's case: the tiny LTX-2 recipe (64 x 64) with the tiny LTX-2.5 ends in one line, exit 2,
    before a video is sampled (nothing written), where it ended in diffusers' ValueError and a traceback."""
    from cac_align.cli import main

    out = tmp_path / "run"
    code = main([job, "--config", str(REPO_ROOT / f"recipes/align/{recipe}.yaml"), "generator.name=tiny-random:ltx2.5", f"out_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "LTX-2.5's diffusion decoder cannot take 64 x 64 x 9 frames" in err and "Traceback" not in err
    assert not list(out.rglob("*.mp4"))
