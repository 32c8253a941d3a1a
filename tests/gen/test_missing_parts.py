"""A pipeline folder that lacks a part is refused in one line naming the part (issue #117, item 2): the
family knows its parts from the folder's ``model_index.json`` (and the ones it loads beside them), so
``<folder>/sound_tokenizer/ is missing; model_index.json lists it``, where diffusers' own message sent the
user to the folder's top ("no file named config.json"), which a pipeline never has. Every generator and
repair family, each on its tiny folder as diffusers saves it with one part taken out; and a distilled
Cosmos 3 is refused naming what its files say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cac_align.cli import main
from cac_align.gen.family import UnknownGeneratorError, families, family_of, regenerator_of
from cac_align.loading import WeightsNotFoundError

# family -> the part taken out of its tiny folder (default: its transformer): one each family has that others lack, where it has one
REMOVED = {
    "wan2.2-a14b": "transformer_2", "wan2.2-i2v-a14b": "transformer_2", "wan2.2-vace-a14b": "transformer_2",  # the second expert
    "wan2.1-i2v": "image_encoder", "hunyuanvideo1.5-i2v": "image_encoder",
    "ltx2": "connectors", "ltx2.3": "vocoder", "ltx2-condition": "audio_vae", "ltx2.3-condition": "connectors",
    "ltx2.5": "diffusion_decoder",  # not in model_index.json: LTX-2.5 loads it beside the parts it lists
    "ltx2.5-condition": "duration_head",
    "hunyuanvideo1.5-t2v": "text_encoder_2", "minimax-h3": "audio_vae",  # a modular pipeline: modular_model_index.json lists it
    "kandinsky6": "vocoder", "kandinsky6-distill": "audio_vae",
    "cosmos3": "sound_tokenizer",  # the case
}
# a repair family without a tiny layout of its own is read from the folder of the generator it repairs with
FOLDER_OF = {"ltx2.5-condition": ("generator", "tiny-random:ltx2.5")}
CASES = [(kind, family.name) for kind in ("generator", "regenerator") for family in families(kind)]
_RESOLVE = {"generator": (family_of, "generator.name"), "regenerator": (regenerator_of, "regenerator.name")}


def _without(whole: Path, part: str, folder: Path) -> Path:
    """``whole`` without ``part``: every other entry linked into ``folder`` (no weight copied)."""
    folder.mkdir()
    for entry in whole.iterdir():
        if entry.name != part:
            (folder / entry.name).symlink_to(entry)
    return folder


def test_every_family_has_a_case():
    names = {name for _, name in CASES}
    assert len(CASES) >= 20 and not set(REMOVED) - names and not set(FOLDER_OF) - names  # no row for a family that is gone
    lacking = [name for kind, name in CASES if name not in FOLDER_OF and not next(f for f in families(kind) if f.name == name).tiny_names]
    assert not lacking, f"families with no tiny folder to take a part out of (add a FOLDER_OF row): {lacking}"


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{kind}:{name}" for kind, name in CASES])
def test_a_folder_without_a_part_names_it(kind, name, saved_tiny_pipeline, tmp_path):
    family = next(f for f in families(kind) if f.name == name)
    whole = saved_tiny_pipeline(*FOLDER_OF.get(name, (kind, family.tiny_names[0] if family.tiny_names else None)))
    resolve, key = _RESOLVE[kind]
    assert resolve(str(whole), key).name == name  # control: the whole folder is its family, every part there
    part = REMOVED.get(name, "transformer")
    assert (whole / part).is_dir()
    broken = _without(whole, part, tmp_path / "broken")
    with pytest.raises(WeightsNotFoundError) as refused:
        resolve(str(broken), key)
    index = "modular_model_index.json" if (whole / "modular_model_index.json").is_file() else "model_index.json"
    why = f"{family.title} loads it beside the parts {index} lists" if part in getattr(family, "extra_components", ()) else f"{index} lists it"
    assert str(refused.value).startswith(f"{key}='{broken}': {broken / part}/ is missing; {why}. Fill the folder"), refused.value
    assert "\n" not in str(refused.value)


def test_a_part_the_family_never_loads_is_not_asked_for(saved_tiny_pipeline, tmp_path):
    """MiniMax-H3's reference-to-video transformer (``unloaded_components``): listed by a release's index, never loaded."""
    whole = saved_tiny_pipeline("generator", "tiny-random:minimax-h3")
    folder = _without(whole, "modular_model_index.json", tmp_path / "h3")
    index = json.loads((whole / "modular_model_index.json").read_text())
    index["transformer_ref"] = ["diffusers", "MiniMaxH3Transformer3DModel"]  # listed, and no folder of it
    (folder / "modular_model_index.json").write_text(json.dumps(index))
    assert family_of(str(folder)).name == "minimax-h3"
    (folder / "vae").unlink()  # control: a part it loads, taken out of the same folder, is refused
    with pytest.raises(WeightsNotFoundError, match=r"/vae/ is missing; modular_model_index.json lists it"):
        family_of(str(folder))


@pytest.mark.parametrize("recipe, family, part", [("align/bon_tiny_helios", "helios", "transformer"), ("align/bon_tiny_cosmos3", "cosmos3", "sound_tokenizer")])
def test_the_job_says_it_in_one_line_before_anything_loads(recipe, family, part, saved_tiny_pipeline, tmp_path, capsys):
    """The issue's two folders, through the command line: one line naming the part, exit 2, nothing written."""
    whole = saved_tiny_pipeline("generator", f"tiny-random:{family}")
    broken = _without(whole, part, tmp_path / "broken")
    code = main(["bon", "-c", recipe, f"generator.name={broken}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"generator.name='{broken}': {broken / part}/ is missing; model_index.json lists it." in err
    assert "config.json" not in err and not (tmp_path / "out").exists()


def test_a_distilled_cosmos3_is_refused_naming_what_its_files_say(saved_tiny_pipeline, tmp_path):
    """A distilled Cosmos 3 saved by diffusers' own modular pipeline says ``_class_name: Cosmos3OmniModularPipeline``
    with ``is_distilled: true`` (diffusers maps it to its Cosmos3DistilledModularPipeline when it loads it): the refusal
    names that, not a class the file does not name."""
    from diffusers import AutoencoderKLWan, Cosmos3OmniTransformer
    from diffusers.modular_pipelines import Cosmos3DistilledBlocks
    from transformers import AutoTokenizer

    whole = saved_tiny_pipeline("generator", "tiny-random:cosmos3")
    pipe = Cosmos3DistilledBlocks().init_pipeline()
    pipe.update_components(transformer=Cosmos3OmniTransformer.from_pretrained(str(whole / "transformer")),
                           vae=AutoencoderKLWan.from_pretrained(str(whole / "vae")),
                           text_tokenizer=AutoTokenizer.from_pretrained(str(whole / "text_tokenizer")))
    folder = tmp_path / "cosmos3-4step"
    pipe.save_pretrained(str(folder))
    index = json.loads((folder / "modular_model_index.json").read_text())
    assert (index["_class_name"], index["is_distilled"]) == ("Cosmos3OmniModularPipeline", True)  # what diffusers writes
    with pytest.raises(UnknownGeneratorError) as refused:
        family_of(str(folder))
    message = str(refused.value)
    assert message.startswith(f"generator.name='{folder}' is a Cosmos3OmniModularPipeline with is_distilled: true: a distilled Cosmos 3, "
                              "which no job runs"), message
    assert "is a Cosmos3DistilledModularPipeline" not in message
