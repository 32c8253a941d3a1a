"""VBench before and after alignment: two folders of videos in, CaC's Table 2 report out.

    python examples/vbench_before_after.py --before runs/base/videos --after runs/aligned/videos --out runs/table2

Scores both folders with vbench's own metric code (dynamic degree, subject consistency, imaging
quality: CaC Table 2; ``cac-align eval vbench``) and writes the report of ``cac-align report``: one
row per dimension, "after" beside "before" with its delta, the better value in bold, a chart per
row. vbench's weights (RAFT, DINO ViT-B/16, MUSIQ) must already be in ``--cache-dir`` (or
``$VBENCH_CACHE_DIR``); when they are not, the error lists each file, where it goes and where to get
it (nothing is downloaded). A video that cannot be decoded is counted as failed, not scored 0.
Install vbench as README and docs/install.md say (``pip install --no-deps -r requirements-vbench.txt``).

Writes ``OUT/vbench/`` (vbench.json, per-video scores: resumable) and ``OUT/report/`` (report.md,
report.html, report.json, charts/). Add ``expert.json`` of ``cac-align eval expert`` to the report
with ``cac-align report`` for the anomaly-rate row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cac_align.jobs.eval_vbench import VBenchConfig
from cac_align.jobs.eval_vbench import run as run_vbench
from cac_align.jobs.report import ReportConfig
from cac_align.jobs.report import run as run_report


def before_after(before: str, after: str, out: str, cache_dir: str | None = None, device: str = "auto") -> dict:
    """Score both folders and write the report; returns the report's numbers (report.json)."""
    out_path = Path(out)
    vbench = run_vbench(VBenchConfig(systems={"before": before, "after": after}, out_dir=str(out_path / "vbench"), cache_dir=cache_dir, device=device))
    for name, system in vbench["systems"].items():
        for dimension, result in system["dimensions"].items():
            mean = "-" if result["mean"] is None else f"{result['mean']:.4f}"
            print(f"{name:6s} {dimension:20s} {mean} ({result['n']} videos, {result['failed']} failed)")
    return run_report(ReportConfig(systems=["before", "after"], vbench=str(out_path / "vbench/vbench.json"), out_dir=str(out_path / "report"),
                                   title="Before and after alignment (CaC Table 2)"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the base model's videos: a folder of .mp4 (or a manifest)")
    parser.add_argument("--after", required=True, help="the aligned model's videos, the same prompts")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", help="vbench's weights (default: $VBENCH_CACHE_DIR)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    return before_after(args.before, args.after, args.out, args.cache_dir, args.device)


if __name__ == "__main__":
    main()
