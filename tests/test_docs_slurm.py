"""docs/flow_grpo.md, "Beyond one node": the SLURM script a user copies for the two-node recipe activates the environment
cac_align is installed in, and the section names the judges to start first, as the recipe reaches them (issue #105: the
script activated nothing, and the judges were named only by a link)."""

from __future__ import annotations

import re

from cac_align.config import read_recipe_file
from conftest import REPO_ROOT

ACTIVATE = re.compile(r"^\s*(source \S+/bin/activate|\. \S+/bin/activate|conda activate \S+|module load \S+)")


def _section(page: str, heading: str) -> str:
    start = page.index(f"\n## {heading}\n")
    end = page.find("\n## ", start + 1)
    return page[start:end if end > 0 else None]


def test_the_slurm_script_activates_an_environment_and_its_judges_are_started_first():
    section = _section((REPO_ROOT / "docs/flow_grpo.md").read_text(encoding="utf-8"), "Beyond one node")
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    (script,) = [block for block in blocks if "#SBATCH" in block]
    lines = script.splitlines()
    launch = next(k for k, line in enumerate(lines) if line.startswith("srun "))
    assert any(ACTIVATE.match(line) for line in lines[:launch]), script  # before srun: its tasks inherit it
    command = " ".join(line.rstrip("\\").strip() for line in lines[launch:])
    recipe = re.search(r"--config (recipes/\S+\.yaml)", command).group(1)
    # the recipe's served judges (backend openai): each one's serve command comes before the script, on the port the job reaches
    served = {key: part["model"] for key, part in read_recipe_file(REPO_ROOT / recipe)["reward"].items()
              if isinstance(part, dict) and isinstance(part.get("model"), dict) and part["model"].get("backend") == "openai"}
    assert set(served) == {"cac", "unified_reward"}, served
    before = section[: section.index(script)]
    for key in served:
        serve = re.search(rf"cac-align serve --config (recipes/serve/{key}\.yaml)[^\n]*host=0\.0\.0\.0", before)
        assert serve, f"no `cac-align serve` of {key} before the SLURM script"
        port = read_recipe_file(REPO_ROOT / serve.group(1))["port"]
        assert f"reward.{key}.model.base_url=http://judge-node:{port}/v1" in command, (key, port, command)
