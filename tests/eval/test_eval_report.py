"""`cac-align report` on fixture numbers: the table's contents and the charts."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cac_align.jobs.report import ReportConfig, build_table, run


def _fixtures(tmp_path):
    vbench = {"systems": {
        "base": {"dimensions": {"dynamic_degree": {"mean": 0.60}, "subject_consistency": {"mean": 0.950}, "imaging_quality": {"mean": 0.650}}},
        "bon_ur": {"dimensions": {"dynamic_degree": {"mean": 0.55}, "subject_consistency": {"mean": 0.955}, "imaging_quality": {"mean": 0.670}}},
        "bon_ur_cac": {"dimensions": {"dynamic_degree": {"mean": 0.60}, "subject_consistency": {"mean": 0.960}, "imaging_quality": {"mean": 0.660}}},
    }}
    expert = {"systems": {
        "base": {"rate": 0.29, "wilson_low": 0.21, "wilson_high": 0.38, "n": 100},
        "bon_ur": {"rate": 0.24, "wilson_low": 0.17, "wilson_high": 0.33, "n": 100},
        "bon_ur_cac": {"rate": 0.17, "wilson_low": 0.11, "wilson_high": 0.26, "n": 100},
    }}
    (tmp_path / "vbench.json").write_text(json.dumps(vbench))
    (tmp_path / "expert.json").write_text(json.dumps(expert))
    return str(tmp_path / "vbench.json"), str(tmp_path / "expert.json")


def test_report_table_bold_best_arrows_and_deltas(tmp_path):
    vbench, expert = _fixtures(tmp_path)
    config = ReportConfig(systems=["base", "bon_ur", "bon_ur_cac"], vbench=vbench, expert=expert, out_dir=str(tmp_path / "out"))
    table = run(config)
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["dynamic_degree"]["best"] == ["base", "bon_ur_cac"]  # a tie: both bold
    assert rows["expert_anomaly_rate"]["best"] == ["bon_ur_cac"]  # lower is better
    assert rows["imaging_quality"]["deltas"] == {"base": None, "bon_ur": pytest.approx(0.02), "bon_ur_cac": pytest.approx(0.01)}
    md = (tmp_path / "out/report.md").read_text().splitlines()
    assert "| metric | base | bon_ur | bon_ur_cac |" in md
    assert "| Dynamic degree ↑ | **0.6000** | 0.5500 (-0.0500) | **0.6000** (+0.0000) |" in md
    assert "| Expert anomaly rate ↓ | 0.2900 [0.210, 0.380] | 0.2400 [0.170, 0.330] (-0.0500) | **0.1700** [0.110, 0.260] (-0.1200) |" in md
    assert "| Subject consistency ↑ | 0.9500 | 0.9550 (+0.0050) | **0.9600** (+0.0100) |" in md
    for key in rows:
        with Image.open(tmp_path / "out/charts" / f"{key}.png") as image:
            assert image.format == "PNG" and image.size[0] > 100
    page = (tmp_path / "out/report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<b>0.1700</b>" in page
    assert json.loads((tmp_path / "out/report.json").read_text())["systems"] == ["base", "bon_ur", "bon_ur_cac"]


def test_missing_values_and_inputs(tmp_path):
    vbench, expert = _fixtures(tmp_path)
    table = build_table(ReportConfig(systems=["base", "flow_grpo"], expert=expert, out_dir=str(tmp_path)))
    (row,) = table["rows"]  # no vbench file: only the expert row
    assert row["values"] == {"base": 0.29, "flow_grpo": None} and row["best"] == ["base"]
    with pytest.raises(ValueError, match="at least one input"):
        ReportConfig()
    from cac_align.config import RecipeError

    with pytest.raises(RecipeError, match="does not exist"):
        build_table(ReportConfig(vbench=str(tmp_path / "nope.json")))
    (tmp_path / "broken.json").write_text('{"systems": {"base": ')  # a torn file
    with pytest.raises(RecipeError, match="vbench=.*broken.json is not readable JSON"):
        build_table(ReportConfig(vbench=str(tmp_path / "broken.json")))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(RecipeError, match="has no 'systems' mapping"):
        build_table(ReportConfig(expert=str(tmp_path / "list.json")))


def test_cli_report(tmp_path):
    from cac_align.cli import main

    vbench, expert = _fixtures(tmp_path)
    assert main(["report", f"vbench={vbench}", f"expert={expert}", f"out_dir={tmp_path / 'r'}"]) == 0
    assert "| metric | base | bon_ur | bon_ur_cac |" in (tmp_path / "r/report.md").read_text()  # systems in file order


def test_the_report_shows_each_training_runs_reward_picture(tmp_path):
    """`runs: {system: run folder}`: the reward.png a training run wrote at its end (drawn here by the
    function flow-grpo and nft end with, from a metrics.jsonl) is shown byte for byte; a folder
    without one is said; a folder that does not exist is one line, before anything is written."""
    import base64

    from cac_align.cli import main
    from cac_align.config import RecipeError
    from cac_align.run.summary import reward_plot

    vbench, expert = _fixtures(tmp_path)
    trained, unfinished = tmp_path / "flow_grpo_run", tmp_path / "nft_run"
    for folder in (trained, unfinished):
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": 0.1 * s}) + "\n" for s in (1, 2, 3)))
    picture, _ = reward_plot(trained, "flow-grpo")
    drawn = picture.read_bytes()
    with pytest.raises(RecipeError, match=r"^runs.gone=.*: no such run folder[^\n]*$"):
        run(ReportConfig(vbench=vbench, runs={"gone": str(tmp_path / "gone")}, out_dir=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()
    out = tmp_path / "out"
    assert main(["report", f"vbench={vbench}", f"expert={expert}", f"out_dir={out}",
                 f"runs={{bon_ur_cac: {trained}, bon_ur: {unfinished}}}"]) == 0
    assert (out / "charts/reward_bon-ur-cac.png").read_bytes() == drawn  # the run's own picture, unchanged
    assert not (out / "charts/reward_bon-ur.png").exists()
    md = (out / "report.md").read_text().splitlines()
    assert "## Reward per training step" in md and "![bon_ur_cac: reward per step](charts/reward_bon-ur-cac.png)" in md
    assert f"- **bon_ur**: {unfinished} has no reward.png (a flow-grpo or nft run writes it when it ends)" in md
    page = (out / "report.html").read_text()
    assert base64.b64encode(drawn).decode("ascii") in page and page.count("data:image/png;base64,") == 5  # 4 rows' charts + the run's
    assert json.loads((out / "report.json").read_text())["training"] == {
        "bon_ur_cac": {"run": str(trained), "picture": "charts/reward_bon-ur-cac.png", "page": None, "held_out": None},
        "bon_ur": {"run": str(unfinished), "picture": None, "page": None, "held_out": None}}
    # the runs alone make a report too: their pictures, no empty table
    assert run(ReportConfig(runs={"flow_grpo": str(trained)}, out_dir=str(tmp_path / "alone")))["training"]["flow_grpo"]["picture"]
    alone = (tmp_path / "alone/report.md").read_text()
    assert "| metric |" not in alone and "![flow_grpo: reward per step](charts/reward_flow-grpo.png)" in alone
    assert "<table>" not in (tmp_path / "alone/report.html").read_text()


def test_the_report_links_each_runs_page_and_sets_step_0_against_the_last(tmp_path):
    """Issue #115: `runs` links each run's run.html (relative to the report's folder, so both can move
    together) and shows its held-out means at step 0 against its last evaluation, from metrics.jsonl
    (tests/run_pages.py's run: eval/reward_mean 0.4 -> (0.6 + 0.5 + 0.4) / 3 = 0.5, eval/cac/mean 0.6 ->
    (0.55 + 0.69 + 0.40) / 3 = 0.5467)."""
    from cac_align.eval.run_page import write_run_page
    from run_pages import build_run_folder

    trained = build_run_folder(tmp_path / "runs/grpo")
    write_run_page(trained)
    bare = tmp_path / "runs/old"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.2}) + "\n")
    out = tmp_path / "reports/r1"
    table = run(ReportConfig(runs={"grpo": str(trained), "old": str(bare)}, out_dir=str(out)))
    assert table["training"]["grpo"]["page"] == "../../runs/grpo/run.html" and (out / "../../runs/grpo/run.html").resolve().is_file()
    assert table["training"]["grpo"]["held_out"] == {"first_step": 0, "last_step": 4, "means": {
        "reward": [pytest.approx(0.4), pytest.approx(0.5)], "cac": [pytest.approx(0.6), pytest.approx((0.55 + 0.69 + 0.40) / 3)]}}
    assert table["training"]["old"] == {"run": str(bare), "picture": None, "page": None, "held_out": None}
    md = (out / "report.md").read_text().splitlines()
    assert "[run page](../../runs/grpo/run.html): its held-out videos across training" in md
    assert md[md.index("| held-out mean | step 0 | step 4 | change |") + 2 :][:2] == [
        "| trained reward | 0.4000 | 0.5000 | +0.1000 |", "| cac | 0.6000 | 0.5467 | -0.0533 |"]
    assert f"{bare} has no run.html (a flow-grpo or nft run writes it after each evaluation)" in md
    page = (out / "report.html").read_text()
    assert '<a href="../../runs/grpo/run.html">run page</a>' in page and "<tr><th>cac</th><td>0.6000</td><td>0.5467</td><td>-0.0533</td></tr>" in page
