"""Every job is planned (issue #116): each CLI job has a memory plan (a generator trainer's, score's judges', or its
own), and ``cac-align check-recipe`` over every shipped recipe, from the configs shipped with cac-align, prints for
each a plan or "unknown" naming what it cannot count, never "no memory plan for this job".

    pytest tests/plan/test_every_job_planned.py -m slow     # every shipped recipe, planned from the shipped configs, and the
                                                            # big ones at 80 GB on their header's layout (~1 minute)
"""

from __future__ import annotations

import pytest

from conftest import REPO_ROOT

from cac_align.config import resolve
from cac_align.jobs import JOBS


def test_every_job_has_a_plan():
    unplanned = [name for name, spec in JOBS.items() if spec.memory_inputs is None and spec.plan is None and name != "score"]
    assert unplanned == []
    for name, spec in JOBS.items():
        if spec.plan is not None:
            assert callable(resolve(spec.plan)), name


def test_the_jobs_on_the_cpu_say_why_they_hold_nothing(capsys):
    from cac_align.cli import main

    recipes = [REPO_ROOT / "recipes" / r for r in ("data/convert_tiny.yaml", "synth/tiny_wan.yaml", "tiny/make_tiny.yaml", "eval/bench_tiny.yaml",
                                                   "eval/report.yaml", "eval/expert_export.yaml")]
    assert main(["check-recipe", *map(str, recipes)]) == 0
    verdicts = capsys.readouterr().out.splitlines()[:-1]
    assert [line.split(": planned: holds nothing on a GPU (")[1].split(":")[0] for line in verdicts] == [
        "it converts labelled rows into annotations on the CPU", "it renders synthetic videos with numpy on the CPU",
        "it builds tiny random models on the CPU and saves them)", "it computes metrics from results files",
        "it tabulates and charts finished runs", "it writes a labelling sheet or reads the experts' labels"]


def test_vbench_says_what_it_cannot_count(capsys, tmp_path):
    """eval vbench: its backbones' weights from the vbench cache (a file there counted by its size, one missing named
    with the command that fetches it), one dimension at a time, and their forwards not counted: UNKNOWN, exit 3."""
    from cac_align.cli import main
    from cac_align.jobs import load_recipe
    from cac_align.plan.services import vbench_plan

    (tmp_path / "raft_model" / "models").mkdir(parents=True)
    (tmp_path / "raft_model" / "models" / "raft-things.pth").write_bytes(b"\0" * 1000)
    _, config = load_recipe(REPO_ROOT / "recipes/eval/vbench.yaml", [f"cache_dir={tmp_path}"])
    plan = vbench_plan(config)
    raft, forward, dino = plan.rows[:3]
    assert (raft.label, raft.bytes, raft.source, raft.phase) == ("dynamic_degree: raft weights (raft-things.pth, its file's size)", 1000, "counted",
                                                                 "dynamic_degree")
    assert forward.source == "unknown" and "forward" in forward.label and dino.source == "unknown" and "wget -P" in dino.label
    assert plan.phases == ("dynamic_degree", "subject_consistency", "imaging_quality") and plan.peak_bytes == 1000 + 2**30
    assert main(["check-recipe", str(REPO_ROOT / "recipes/eval/vbench.yaml"), f"cache_dir={tmp_path}"]) == 3
    assert capsys.readouterr().out.startswith(f"UNKNOWN {REPO_ROOT / 'recipes/eval/vbench.yaml'} (job: eval-vbench): not counted: ")


def test_serve_plans_what_vllm_must_hold_and_refuses_with_the_fix(capsys, hub_cache):
    """serve: the judge's weights and one max_model_len sequence's KV cache inside vLLM's share of the GPU
    (--gpu-memory-utilization 0.9). UnifiedReward-qwen-7b (8,292,166,656 parameters in bf16) and its recipe's 16,384
    tokens of cache (2 x 28 layers x 4 heads x 128 x 2 bytes = 57,344 bytes a token) fit 0.9 of a 24 GB GPU; on a 16 GB
    one the fix is tensor parallelism over 2 GPUs."""
    from test_sampling_plan import UR_7B

    from cac_align.cli import main
    from cac_align.jobs import load_recipe
    from cac_align.plan.counts import GIB
    from cac_align.plan.services import serve_plan

    _, config = load_recipe(REPO_ROOT / "recipes/serve/unified_reward.yaml")
    plan = serve_plan(config)
    kv = 2 * 28 * 4 * 128 * 2 * config.max_model_len
    assert [r.bytes for r in plan.rows] == [2 * UR_7B, kv, GIB] and plan.share == 0.9
    assert plan.refusal(int(24e9)) is None  # 15.4 + 0.9 + 1 GiB in 0.9 of 22.4
    half = -(-2 * UR_7B // 2) + -(-kv // 2) + 2 * GIB  # each GPU of two: half the weights and the cache, its own context
    assert plan.refusal(int(16e9)).endswith(f'extra_args=["--tensor-parallel-size", "2"] (each replica on 2 GPUs: its devices) ({half / GIB:.1f} GiB per GPU)')
    assert main(["check-recipe", "--gpu-gb", "16", str(REPO_ROOT / "recipes/serve/unified_reward.yaml")]) == 1
    assert "but the device has 14.9 GiB, of which it takes 0.9: 13.4 GiB;" in capsys.readouterr().out


@pytest.mark.slow
def test_check_recipe_plans_every_shipped_recipe_or_says_what_it_cannot_count(hub_cache, capsys):
    """Every shipped recipe planned from the shipped configs (none says "no memory plan"), and the big recipes' plans,
    row by row in bytes, equal the ones recorded in tests/fixtures/big_recipe_plans.json (written by ``python
    benchmarks/record_behaviour.py plans FILE`` with an empty Hugging Face cache: a change that moves a figure must
    re-record it, and say why). One test, so the models counted for one are counted once for both (plan/configs.py
    keeps them a process)."""
    import json
    import sys

    from cac_align.cli import main

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from record_behaviour import big_recipe_plans
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    recorded = json.loads((REPO_ROOT / "tests" / "fixtures" / "big_recipe_plans.json").read_text())
    planned = big_recipe_plans()
    assert sorted(planned) == sorted(recorded)
    for name, plan in planned.items():
        assert plan == recorded[name], name
    code = main(["check-recipe", str(REPO_ROOT / "recipes")])
    out = capsys.readouterr().out
    verdicts = [line for line in out.splitlines() if not line.startswith(" ")][:-1]
    recipes = [p for p in (REPO_ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.relative_to(REPO_ROOT / "recipes").parts[:-1]]
    recipes += list((REPO_ROOT / "recipes" / "cac").glob("stage3_swift*.sh"))  # stage 3's ms-swift launchers, planned from their arguments
    assert len(verdicts) == len(recipes) and code == 3  # valid, none refused (no GPU given), some not whole
    assert "no memory plan" not in out
    for line in verdicts:
        assert line.startswith(("ok ", "UNKNOWN ")), line
        assert (": planned: " in line) if line.startswith("ok") else ("not counted" in line or "memory plan: not made" in line), line

    # every big recipe (a released generator trained) on an 80 GB GPU, on the layout its first line launches (issue #92,
    # item 3), in the same process: its configs are counted already
    from test_full_size_configs import UNSHIPPED_JUDGES, big_recipes

    from cac_align.cli import header_processes

    BIG = big_recipes()

    main(["check-recipe", "--gpu-gb", "80", *map(str, BIG)])
    blocks: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines()[:-1]:  # the last line: the summary
        if not line.startswith(" "):
            current = line.split()[1]
        blocks[current] = blocks.get(current, "") + line + "\n"
    assert sorted(blocks) == sorted(map(str, BIG))
    for recipe in BIG:
        out, n = blocks[str(recipe)], header_processes(recipe)
        assert n is not None, f"{recipe.name}: its first line launches nothing"
        flat = " ".join(out.split())  # the plan's lines wrap at the terminal's width (a long model name moves the break)
        assert "planned from the configs of" in flat and "shipped with cac-align" in flat, recipe.name
        assert "memory plan per GPU for" in out and f"({n} process{'es' if n > 1 else ''}, " in out, recipe.name
        assert "does NOT fit" not in out, recipe.name
        uncounted = [judge for judge in UNSHIPPED_JUDGES if judge in recipe.read_text(encoding="utf-8")]
        if uncounted:  # a judge whose files are not here: the plan cannot say "fits", and says what is missing
            assert out.startswith("UNKNOWN ") and "unknown (" in out and " fits" not in out.replace("fits what", ""), recipe.name
            assert all(judge in out for judge in uncounted), recipe.name
        else:
            assert out.startswith("ok ") and "fits" in out, recipe.name
