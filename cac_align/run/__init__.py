"""Run plumbing, written once and used by every job.

- :mod:`cac_align.run.folder`: the run folder (manifest, fingerprint, lock, what may be deleted,
  the resume rule; docs/run_folders.md), log files that survive a kill, atomic writes;
- :mod:`cac_align.run.checkpoints`: complete-or-absent checkpoints of the GRPO trainers;
- :mod:`cac_align.run.metrics`: ``metrics.jsonl`` plus accelerate's trackers;
- :mod:`cac_align.run.dist`: a step's items over processes, seeds, gathers;
- :mod:`cac_align.run.input_files`: what jobs read (videos with their prompts, prompt files).
"""
