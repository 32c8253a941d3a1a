"""``cac-align synth``: render synthetic videos with planted, exactly labelled anomalies and write
their ``annotations.jsonl`` (the renderer and :func:`~cac_align.data.synthetic.generate` are in
:mod:`cac_align.data.synthetic`; rerunning the same command resumes, keeping finished videos)."""

from __future__ import annotations

from pathlib import Path

from cac_align.cac.schema import AnnotationRecord
from cac_align.data.synthetic import SynthConfig, generate

__all__ = ["SynthConfig", "run"]


def run(config: SynthConfig) -> list[AnnotationRecord]:
    records = generate(config)
    abnormal = sum(r.status == "abnormal" for r in records)
    print(f"wrote {len(records)} videos ({abnormal} abnormal) and {Path(config.out_dir) / 'annotations.jsonl'}")
    return records
