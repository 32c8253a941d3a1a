"""The CLI's jobs, one module each: a config dataclass beside ``run(config)`` (../shared/DESIGN.md's
``jobs/`` wing; the jobs that predate it still live beside their libraries)."""
