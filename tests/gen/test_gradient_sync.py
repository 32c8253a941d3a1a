"""One gradient reduction per update (issue #105; cac_align/gen/parallel/gradients.py): which experts reduce at which
backward of an update. The collectives themselves are counted on two processes (tests/jobs/test_parallel.py, the
A14B case, and its control) and on two simulated nodes (tests/jobs/test_nodes.py)."""

from __future__ import annotations

from cac_align.gen.parallel.gradients import reducing_backwards


def test_each_expert_reduces_at_the_last_backward_that_runs_it():
    # flow-grpo on a two-expert model, one micro-batch of 4 trained timesteps: the high-noise expert (0) serves the first two,
    # the low-noise one (1) the last two; 0 reduces at backward 1 (its last), 1 at backward 3
    assert reducing_backwards([{0}, {0}, {1}, {1}]) == [frozenset(), frozenset({0}), frozenset(), frozenset({1})]
    # two micro-batches of the same timesteps: each expert's last backward is in the second micro-batch
    assert reducing_backwards([{0}, {1}, {0}, {1}]) == [frozenset(), frozenset(), frozenset({0}), frozenset({1})]
    # one expert (every family but the A14B): the update's last backward alone reduces
    assert reducing_backwards([{0}] * 3) == [frozenset(), frozenset(), frozenset({0})]
    # sharded dpo: every call runs both experts, so both reduce at the last
    assert reducing_backwards([range(2)] * 2) == [frozenset(), frozenset({0, 1})]
    # an expert no backward runs (its steps not drawn this update) reduces nowhere; an update of one backward reduces there
    assert reducing_backwards([{1}, {1}]) == [frozenset(), frozenset({1})]
    assert reducing_backwards([{0}]) == [frozenset({0})]
    assert reducing_backwards([]) == []
