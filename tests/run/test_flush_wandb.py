"""flush_wandb: an offline W&B record is complete when a job returns, and a run the user still
has open is left alone. (wandb 0.31 writes the record in its service process after run.finish()
returns; right after finish() the file is often only its 7-byte header.)"""

from __future__ import annotations

import pytest

from cac_align.run.metrics import flush_wandb

wandb = pytest.importorskip("wandb")  # the dev extra installs it


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.teardown()


def _finished_run(folder, name):
    run = wandb.init(project="flush_test", name=name, dir=str(folder), config={"lr": 1e-4})
    run.log({"train/loss_marker": 0.25}, step=1)
    record = run.settings.sync_file
    run.finish()
    return record


def test_the_record_is_complete_after_finish_and_flush(tmp_path, offline):
    for i in range(3):  # each time: the record holds the run's name, config and metric at once
        record = _finished_run(tmp_path / f"r{i}", f"flushed_{i}")
        flush_wandb()
        data = open(record, "rb").read()
        for text in (f"flushed_{i}", "lr", "train/loss_marker"):
            assert text.encode() in data, (i, text, len(data))


def test_an_open_run_is_left_open(tmp_path, offline):
    mine = wandb.init(project="flush_test", name="users_own", dir=str(tmp_path / "mine"))
    flush_wandb()  # the user's run is still active: no teardown
    assert wandb.run is mine
    mine.log({"still/logging": 1.0}, step=1)
    mine.finish()
    flush_wandb()
    data = open(mine.settings.sync_file, "rb").read()
    assert b"still/logging" in data
