"""Run-folder file helpers shared by the jobs: JSONL logs that survive a kill, atomic rewrites.

A job appends one JSON object per line to its logs (``metrics.jsonl``, ``candidates.jsonl``,
...). A kill or a full disk can leave the last line half-written; :func:`read_jsonl_log` drops
such a line with a warning, so a resume goes on instead of stopping at a ``JSONDecodeError``.
Files a job rewrites as a whole go through :func:`write_text_atomic`: a reader sees the old or
the new content, never a mix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["read_jsonl_log", "write_text_atomic"]

log = logging.getLogger(__name__)


def read_jsonl_log(path: str | Path) -> list[tuple[str, dict]]:
    """The ``(line, row)`` pairs of a JSONL log, in order; blank lines are skipped and a line
    that is not JSON (torn by a kill) is dropped with a warning. A missing file gives []."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError:
            log.warning("%s: dropping a torn line left by a killed run: %.60r", path, line)
    return rows


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` (written beside it, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
