"""``python -m cac_align.integrations.ms_swift``: the dataset and the plugin path for ms-swift.

    python -m cac_align.integrations.ms_swift prepare RECIPE OUT.jsonl [key=value ...]
    python -m cac_align.integrations.ms_swift plugin

``prepare`` reads a stage-3 ``train-cac`` recipe (the same one our own trainer runs), takes the
``stage3`` split of its annotations with its ``data`` settings and ``grpo.reward_weights``, and
writes one ms-swift row per video (:func:`~cac_align.integrations.ms_swift.cac_rows.swift_rows`).
``plugin`` prints the path to give ``swift rlhf --external_plugins``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

USAGE = __doc__.split("\n\n")[1]


def prepare(recipe: str, out: str, overrides: list[str]) -> int:
    from cac_align.cac.schema import load_annotations
    from cac_align.cac.train.data import split_records
    from cac_align.cac.train.settings import TrainCaCConfig
    from cac_align.config import RecipeError, load_config, read_recipe_file
    from cac_align.integrations.ms_swift.cac_rows import swift_row

    # the recipe's own job first (a library module reads the train-cac config, not the job index)
    job = read_recipe_file(Path(recipe)).get("job")
    if job != "train-cac":
        raise RecipeError(f"{recipe}: needs a stage-3 train-cac recipe with annotations (got job {job!r})")
    config = load_config(TrainCaCConfig, recipe, overrides, job="train-cac")
    if config.stage != 3 or not config.annotations:
        raise RecipeError(f"{recipe}: needs a stage-3 train-cac recipe with annotations (got job 'train-cac', stage {config.stage})")
    records = load_annotations(config.annotations).records
    chosen = [records[i] for i in split_records(records, config.data.splits, config.data.seed)["stage3"]]
    if not chosen:
        raise RecipeError(f"{config.annotations}: the stage3 split is empty; give data.splits.stage3 a share of the videos")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record in tqdm(chosen, desc="ms-swift rows", unit="video"):
            handle.write(json.dumps(swift_row(record, config.data, config.grpo.reward_weights)) + "\n")
    partial.replace(path)  # a killed run leaves no half-written dataset under the real name
    print(f"wrote {len(chosen)} rows (the stage3 split of {config.annotations}) to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["plugin"] and len(args) == 1:
        print(Path(__file__).with_name("cac_plugin.py"))
        return 0
    if args[:1] == ["prepare"] and len(args) >= 3:
        return prepare(args[1], args[2], args[3:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
