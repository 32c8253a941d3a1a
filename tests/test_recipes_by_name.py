"""Shipped recipes by name from any folder (`--config score/cac_demo`), their paths under
recipes/ resolved to the shipped files, `cac-align recipes` to list and copy them."""

from __future__ import annotations


import pytest

from cac_align.cli import main
from cac_align.config import SHIPPED_RECIPES, RecipeError, find_recipe, read_recipe_file, shipped_recipes
from conftest import REPO_ROOT


def test_names_paths_and_resolution_rules(tmp_path, monkeypatch):
    shipped = SHIPPED_RECIPES / "score/cac_demo.yaml"
    monkeypatch.chdir(tmp_path)
    assert find_recipe("score/cac_demo") == find_recipe("score/cac_demo.yaml") == find_recipe("recipes/score/cac_demo.yaml") == shipped
    # a file of the user's wins over a shipped recipe of the same name
    (tmp_path / "score").mkdir()
    mine = tmp_path / "score/cac_demo.yaml"
    mine.write_text("job: score\nout_dir: mine\nsynth_videos: 1\nsynth: recipes/synth/default.yaml\nprompts_note: notes/here.txt\n")
    assert find_recipe("score/cac_demo.yaml") == mine.relative_to(tmp_path)
    data = read_recipe_file(mine)
    # under recipes/ and missing here: the shipped file; anything else: as written
    assert data["synth"] == str(SHIPPED_RECIPES / "synth/default.yaml") and data["prompts_note"] == "notes/here.txt" and data["out_dir"] == "mine"
    # ...unless the current folder has it: then it is the user's
    (tmp_path / "recipes/synth").mkdir(parents=True)
    (tmp_path / "recipes/synth/default.yaml").write_text("n: 1\n")
    assert read_recipe_file(mine)["synth"] == "recipes/synth/default.yaml"
    with pytest.raises(RecipeError, match=r"no shipped recipe of that name; did you mean score/cac_demo"):
        find_recipe("score/cac_dem")
    with pytest.raises(RecipeError, match="recipe not found"):
        find_recipe(tmp_path / "nowhere.yaml")  # an absolute path is only ever a path


def test_recipes_lists_and_copies(tmp_path, monkeypatch, capsys):
    names = shipped_recipes()
    assert "score/cac_demo" in names and "align/flow_grpo_tiny" in names and not any(n.startswith("accelerate/") for n in names)
    assert len(names) == len([p for p in (REPO_ROOT / "recipes").rglob("*.yaml") if p.parent.name != "accelerate"])
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    # one line a recipe: its name and its header's first sentence (issue #100, item 7)
    (demo,) = [line for line in listed if line.startswith("score/cac_demo ")]
    assert "Offline demo with the shipped cac-demo model" in demo and len(listed) == len(names) + 1
    assert main(["recipes", "list", "sound"]) == 0  # a filter on the name and the description
    sound = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert "align/flow_grpo_tiny_ltx2_sound" in sound and "score/cac_demo" not in sound and all(n in names for n in sound)
    assert main(["recipes", "list", "no-such-word-anywhere"]) == 2
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "cp", "score/cac_demo", "edit"]) == 0  # "edit" is a new file name here
    assert capsys.readouterr().out.endswith(": edit it, then cac-align score --config edit\n")  # the recipe's own job
    for name, job in (("align/nft_tiny", "nft"), ("align/dpo_tiny_fsdp2", "dpo"), ("cac/synth_tiny", "synth")):  # job: key; a launcher's line; a comment
        assert main(["recipes", "cp", name, f"{job}.yaml"]) == 0
        assert capsys.readouterr().out.endswith(f": edit it, then cac-align {job} --config {job}.yaml\n")
    copy = tmp_path / "edit"
    assert copy.read_bytes() == (SHIPPED_RECIPES / "score/cac_demo.yaml").read_bytes()  # byte for byte, comments kept
    (tmp_path / "into").mkdir()
    assert main(["recipes", "cp", "score/cac_demo", "into"]) == 0 and (tmp_path / "into/cac_demo.yaml").is_file()
    assert main(["recipes", "cp", "score/cac_demo", "into"]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    # a file a recipe reads (the tiny rows of data/convert_tiny) copies out to read, by the name docs give
    assert main(["recipes", "cp", "data/convert_tiny_labels.csv", "into"]) == 0
    assert (tmp_path / "into/convert_tiny_labels.csv").read_bytes() == (SHIPPED_RECIPES / "data/convert_tiny_labels.csv").read_bytes()
    assert capsys.readouterr().out == f"copied {SHIPPED_RECIPES / 'data/convert_tiny_labels.csv'} to into/convert_tiny_labels.csv\n"
    # the copy runs from here as the shipped recipe runs: it loads to the same settings, every one, its synth path still
    # the shipped scenes (the job is a function of them; it ran here on 1 video, ~9 s, and runs end to end as README's
    # main job in the wheel check)
    from cac_align.jobs import load_recipe

    (spec, copied), (_, shipped) = load_recipe("into/cac_demo.yaml"), load_recipe(SHIPPED_RECIPES / "score/cac_demo.yaml")
    assert spec.name == "score" and copied == shipped and copied.synth == str(SHIPPED_RECIPES / "synth/default.yaml")


# What each trainer's or generator's description names: the method it runs (issue #105: `align/nft_minimax_h3_sound  Two
# 8-GPU nodes, all 16 GPUs training...` said where it runs, not what it does)
METHOD_WORDS = {"bon": ("Best-of",), "flow-grpo": ("Flow-GRPO",), "nft": ("DiffusionNFT",), "dpo": ("DPO",), "repair": ("Repair", "repair")}
# a command or a setting in a description: a launch, an override (`generator.name=...`), a flag
NOT_A_DESCRIPTION = r"cac-align |cac_align\.cli|accelerate launch|torchrun|CUDA_VISIBLE_DEVICES|(?<!\w)--[a-z]|\b[a-z_][a-z0-9_.]*=\S"


def test_every_recipes_description_is_a_sentence_of_what_it_does():
    """`cac-align recipes` shows each recipe's header's first sentence after its command (issue #105, item 6): it
    opens like a sentence (a capital or a digit: not "(on GPUs 0-3 ...", "on 8 GPUs: accelerate launch ...", "or,
    reusing ..."), holds no command or setting, and a job that trains or generates names its method."""
    import re

    from cac_align.cli import _recipe_job, recipe_description

    wrong = []
    for name in shipped_recipes():
        path = SHIPPED_RECIPES / f"{name}.yaml"
        text = recipe_description(path)
        job = _recipe_job(path)
        found = re.search(NOT_A_DESCRIPTION, text)
        if not text[:1].isupper() and not text[:1].isdigit():
            wrong.append(f"{name}: opens with {text[:30]!r}")
        if found:
            wrong.append(f"{name}: holds {found.group(0)!r} ({text[:60]!r})")
        if job in METHOD_WORDS and not any(word in text for word in METHOD_WORDS[job]):
            wrong.append(f"{name}: a {job} recipe whose description names no {' / '.join(METHOD_WORDS[job])} ({text[:60]!r})")
    assert not wrong, "\n".join(wrong)
    # the check itself: the headers of before (a launch note first) fail it
    assert re.search(NOT_A_DESCRIPTION, "on 8 GPUs: accelerate launch --num_processes 8 -m cac_align.cli flow-grpo --config ...")
    assert re.search(NOT_A_DESCRIPTION, "LTX-2.3 (the brief's model): generator.name=diffusers/LTX-2.3-Diffusers ...")
    assert not re.search(NOT_A_DESCRIPTION, "Flow-GRPO on LTX-2 with the UR + CaC reward (CaC §4.2 / App. C.4; the paper ran Wan-2.1-1.3B)")
