"""The network table of a training step (cac_align/plan/network.py): full sharding against hybrid sharding (HSDP),
inside a node and across nodes, worked by hand on a toy model (issue #98)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cac_align.gen.families.minimax_h3 import MINIMAX_H3
from cac_align.gen.families.wan import WAN21
from cac_align.plan.counts import ComponentCount, GeneratorCounts
from cac_align.plan.counts import GIB
from cac_align.plan.network import NETWORK_GBPS, NVLINK_GBPS, StepTraffic, duration, network_plan, step_traffic, transfer_seconds


def _toy() -> GeneratorCounts:
    """One transformer of 1000 parameters (bf16: 2000 bytes) whose LoRA adds 10 parameters a unit of rank."""
    transformer = ComponentCount("transformer", "T", 1000, (500, 500), lora_width=10)
    return GeneratorCounts(source="toy", family="Toy", transformers=(transformer,), encoders=(), others=(), hidden_size=8, num_heads=2,
                           num_layers=2, patch_t=1, spatial_multiple=8, frame_multiple=4)


def test_the_table_by_hand_on_two_nodes_of_two():
    # B = 1000 x 2 (bf16) + 10 x 2 (rank) x 4 (fp32) = 2080 bytes a gather; G = 20 x 4 = 80 bytes of LoRA gradients.
    # N = 4 GPUs, L = 2 a node, R = 2 replicas. A gather brings each GPU the 3 shards it lacks: 1 from its node, 2 from the other.
    plan = network_plan(_toy(), StepTraffic(sampling_gathers=3, training_gathers=4, reductions=1), nodes=2, per_node=2, lora_rank=2)
    assert (plan.weights, plan.gradients) == (2080, 80)
    sampling, training, gradients = plan.rows
    # full sharding: inside (L - 1) / N x 3 x 2080 = 1560, across (N - L) / N x 6240 = 3120; HSDP: inside (L - 1) / L x 6240 = 3120, across 0
    assert sampling[1:] == (1560, 3120, 3120, 0)
    assert training[1:] == (2080, 4160, 4160, 0)  # 4 x 2080 = 8320: a quarter, a half; HSDP a half inside, nothing across
    # reduce-scatter of 80 bytes: full 20 inside, 40 across; HSDP: 40 inside, then the all-reduce of its 40 over 2 replicas:
    # 2 (R - 1) / R x 40 = 40 across
    assert gradients[1:] == (20, 40, 40, 40)
    assert (plan.total(2), plan.total(4)) == (3120 + 4160 + 40, 40)
    assert plan.choice(full_fits=True, hybrid_fits=True).startswith("HSDP (parallel.replicate=2)")
    assert plan.choice(full_fits=True, hybrid_fits=False).startswith("full sharding (parallel.replicate=1): HSDP does not fit")
    one = network_plan(_toy(), StepTraffic(3, 4, 1), nodes=1, per_node=4, lora_rank=2)
    assert one.total(2) == 0 and one.choice(True, True).startswith("one node")  # one node: nothing crosses
    with pytest.raises(ValueError, match="nodes and GPUs per node must be >= 1"):
        network_plan(_toy(), StepTraffic(3, 4, 1), nodes=0, per_node=8, lora_rank=2)


def test_a_steps_collectives_counted_from_the_recipe():
    config = SimpleNamespace(prompts_per_step=2, group_size=4, sample_batch_size=2, train_batch_size=1, timestep_fraction=0.5, beta=0.01,
                             updates_per_step=2, generator=SimpleNamespace(num_inference_steps=10, family=WAN21),
                             parallel=SimpleNamespace(context_parallel=1, reshard_after_forward=True))
    # 8 samples over 4 GPUs: 2 each, sampled 2 at a time with 10 forwards; trained one at a time on round(10 x 0.5) = 5 timesteps,
    # each a forward, the backward's re-gather and the reference forward (beta > 0): 2 x 5 x 3 = 30; NFT adds the old policy's: 40
    assert step_traffic(config, 4, "flow-grpo") == StepTraffic(10, 30, 2)
    assert step_traffic(config, 4, "nft") == StepTraffic(10, 40, 2)
    config.beta, config.parallel.reshard_after_forward = 0.0, False
    assert step_traffic(config, 4, "flow-grpo") == StepTraffic(10, 10, 2)  # the forward alone
    # MiniMax-H3's sampler runs one step fewer than its grid's points (tests/gen/test_minimax_h3.py counts it on the tiny model)
    config.generator = SimpleNamespace(num_inference_steps=10, family=MINIMAX_H3)
    assert step_traffic(config, 4, "flow-grpo") == StepTraffic(9, 2 * 4, 2)  # 9 forwards; round(9 x 0.5) = 4 timesteps trained


def test_the_network_in_seconds_at_a_stated_rate():
    """Bytes read as time (issue #105, item 4): 50 GB at 400 Gbit/s (50 GB/s) take 1 s, at 3600 (450 GB/s) 1/9 s;
    MiniMax-H3's 14,262.16 GiB across nodes per GPU and step under full sharding (check-recipe --nodes 2) is
    14,262.16 x 2^30 x 8 / 400e9 = 306.3 s: 5.1 minutes a step."""
    assert transfer_seconds(50e9, 400) == pytest.approx(1.0) and transfer_seconds(50e9, 3600) == pytest.approx(1 / 9)
    assert (NVLINK_GBPS, NETWORK_GBPS) == (3600, 400) and duration(transfer_seconds(14262.16 * GIB, NETWORK_GBPS)) == "5.1 min"
    assert [duration(s) for s in (0.04, 29.78, 306.28, 3 * 3600)] == ["0.04 s", "29.8 s", "5.1 min", "3.0 h"]
    # the toy table: totals 1560 + 2080 + 20 = 3660 inside and 3120 + 4160 + 40 = 7320 across (full sharding), 7320 and 40 (HSDP);
    # at 1e-6 Gbit/s (1000 bits a second) inside and 2e-6 across: 3660 x 8 / 1000 = 29.28 s, 7320 x 8 / 2000 = 29.28,
    # 7320 x 8 / 1000 = 58.56, 40 x 8 / 2000 = 0.16
    plan = network_plan(_toy(), StepTraffic(3, 4, 1), nodes=2, per_node=2, lora_rank=2)
    table = plan.table(inside_gbps=1e-6, across_gbps=2e-6).splitlines()
    (seconds,) = [line for line in table if line.strip().startswith("seconds")]
    assert seconds.split()[-4:] == ["29.28", "29.28", "58.56", "0.16"]
    assert table[-1].startswith("timed at 1e-06 Gbit/s a GPU inside a node (--nvlink-gbps; default 3600") and "(--network-gbps; default 400" in table[-1]
    assert "0.0 GiB (29.3 s) across nodes per GPU and step under full sharding against 0.00 (0.16 s) under HSDP" in plan.choice(True, True, 2e-6)
    assert plan.choice(None, None).startswith("HSDP (parallel.replicate=2) where it fits a GPU")  # no GPU named: not said to fit
