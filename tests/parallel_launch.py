"""Run by tests/jobs/test_parallel.py under ``torchrun --nproc_per_node N`` (CPU, gloo): one generator
trainer (``flow-grpo``, ``nft`` or ``dpo``) on a tiny recipe with a ``parallel`` section, recording what the
test compares with one process.

    python -m torch.distributed.run --nproc_per_node 2 tests/parallel_launch.py flow-grpo RECIPE OUT key=value ...

Each process writes into OUT:
- ``record<rank>.json``: its layout (dp/cp ranks), the FSDP2 units per expert, the frozen base's
  elements it holds locally and in all (and its bytes), the largest block's, and the trainable
  parameters' types; and what the generator's transformers brought into its host memory while it
  loaded (``load_generator``): ``transformer_bytes_built`` (their parameters with real storage
  when a transformer class was constructed: a tiny pipeline's), ``transformer_bytes_read`` (the tensors
  read from a ``transformer*/`` safetensors file) and ``expert_bytes_before_shard`` (the bytes of the
  experts' parameters with real storage when ``apply_parallelism`` starts, the LoRA's included);
  flow-grpo: the reward sections it built (``rewards_built``);
- ``logprobs<rank>.safetensors`` (flow-grpo): the log-probs of every trajectory it sampled, in order.

``CAC_TEST_REWARD=NAME`` replaces the recipe's reward section with ``{name: NAME}`` (e.g. brightness).

Faults (tests/jobs/test_faults.py):
- ``CAC_TEST_CRASH=p<R>s<S>``: process R raises in the sampling of step S (from 0), after writing
  ``crashed<R>.txt`` (the time it crashed);
- ``CAC_TEST_VIA_CLI=1``: run through ``cac-align``'s own ``main`` (its exit code and error lines), not
  ``run(config)``; nothing is recorded then;
- ``CAC_TEST_OLD_REWARD_KEYS=1``: the control: per-part reward metrics keyed by this process's first
  scored batch, as before the fix (a process whose first batch failed gathers fewer keys).

Two switches make the controls the test expects to FAIL its equality:
- ``CAC_TEST_NO_CP_SCALE=1``: the loss is not multiplied by the context-parallel degree;
- ``CAC_TEST_PERTURB_RANK=R``: process R draws other noise (its samples' seeds + 1).

Gradient reductions (issue #105), sharded: each record says, per expert, how many reduce-scatters and all-reduces
across the replicas (HSDP) FSDP2 made for its units and how many bytes those all-reduces carried (``reductions``), in
how many backwards its units reduced (``reducing_backwards``), how many of its units hold LoRA parameters
(``lora_units``) and how many optimizer updates the run made (``updates``, flow-grpo and nft). ``CAC_TEST_SYNC_LAST_ONLY=1``, the control, reduces every expert at the update's last backward
only (an expert that did not run in it never reduces); ``CAC_TEST_SYNC_EVERY_BACKWARD=1`` reduces every expert at
every backward that runs it, as the trainer did before one reduction per update (benchmarks/run/gradient_reductions.py).

Hybrid sharding (``parallel.replicate``): ``CAC_TEST_NO_REPLICA_REDUCE=1``, the control, skips FSDP2's all-reduce
of the gradients over the replicas. Each record says how many bytes of tensors ``apply_parallelism`` broadcast
inside a node and across nodes (``weight_bytes_sent_inside_nodes`` / ``_across_nodes``; a node is
``LOCAL_WORLD_SIZE`` consecutive ranks).

Faults (flow-grpo), each at the start of step index S on process R:
- ``CAC_TEST_KILL=R:S``: R SIGKILLs itself, in torchrun's first round only
  (``TORCHELASTIC_RESTART_COUNT`` 0), as a preempted or OOM-killed process dies: no exception, no
  cleanup; ``record<rank>.json`` says which round wrote it and which steps that round ran;
- ``CAC_TEST_STALL=R:S:SECONDS``: R sleeps SECONDS (a slow judge, a stuck process) while the
  others wait in a collective;
- ``CAC_TEST_KILL_NODE=MARKER:S``: the second node (torchrun's ``GROUP_RANK`` 1) dies at step S: its first
  process SIGKILLs its node's other workers, its agent and itself, once (it writes MARKER first, the time it
  died; a node started again finds it and runs on). Every record says which agent started its process
  (``agent_pid``) and when (``started_at``, ``time.time()``).

Test-only workaround (not in the product): diffusers 0.42.1's ``ModelMixin._resolve_parallel_config``
computes ``rank % torch.accelerator.device_count()``, which divides by zero on a machine with no
accelerator; here ``torch.accelerator.device_count`` answers 1 on such a machine, so diffusers'
context parallel runs on the CPU with gloo (docs/flow_grpo.md, "Sharding and long videos").
"""

import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

if not torch.accelerator.device_count():
    torch.accelerator.device_count = lambda: 1

from cac_align.config import load_config  # noqa: E402
from cac_align.gen import parallel  # noqa: E402


def _kill_node(agent):
    """SIGKILL a node: the agent's other workers, the agent, then this process. torchrun starts each worker in its own
    session, so killing the agent's process group would leave the workers running; they are found as its children."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
        except OSError:
            continue
        if int(fields[1]) == agent:
            children.append(int(stat.parent.name))
    for pid in [c for c in children if c != os.getpid()] + [agent, os.getpid()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


job, recipe, out, overrides = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
rank = int(os.environ.get("RANK", "0"))
out.mkdir(parents=True, exist_ok=True)
# which node's agent started this process (torchrun starts its workers as its children), and when
record: dict = {"agent_pid": os.getppid(), "started_at": time.time()}

if os.environ.get("CAC_TEST_NO_CP_SCALE"):
    parallel.Layout.loss_scale = property(lambda self: 1.0)


def _replace_everywhere(original, replacement):
    """``replacement`` wherever a module of the package holds ``original`` (the jobs import the functions of
    ``cac_align.gen.parallel`` by name, so replacing the function in its own module alone would reach none of them).
    Call once the job's module is imported."""
    for module in [m for name, m in sys.modules.items() if name.startswith("cac_align") and m is not None]:
        for key, value in list(vars(module).items()):
            if value is original:
                setattr(module, key, replacement)


_apply = parallel.apply_parallelism


def _apply_and_record(layout, denoiser, family, pipe=None, device=None):
    from torch.distributed.tensor import DTensor

    before = _real_bytes(denoiser.parameters())
    sent = {"inside": 0, "across": 0}  # the tensors broadcast while the weights reach every process, by whether the group spans nodes
    broadcast = torch.distributed.broadcast

    def counting(tensor, src, group=None, *args, **kwargs):
        ranks = torch.distributed.get_process_group_ranks(group) if group is not None else list(range(layout.world))
        sent["across" if len({r // layout.per_node for r in ranks}) > 1 else "inside"] += tensor.numel() * tensor.element_size()
        return broadcast(tensor, src, group, *args, **kwargs)

    torch.distributed.broadcast = counting
    try:
        _apply(layout, denoiser, family, pipe, device)
    finally:
        torch.distributed.broadcast = broadcast
    if os.environ.get("CAC_TEST_NO_REPLICA_REDUCE") and layout.fsdp_mesh is not None and layout.fsdp_mesh.ndim == 2:
        _skip_replica_reduction(layout.fsdp_mesh.get_group("replicate"))
    if layout.sharded:
        _count_reductions(layout, denoiser)

    def local(p):
        return (p.to_local() if isinstance(p, DTensor) else p).numel()

    frozen = [p for p in denoiser.parameters() if not p.requires_grad]
    blocks = [m for e in denoiser.experts for m in parallel.family_blocks(e, family)]
    record.update(
        rank=layout.rank, dp_rank=layout.dp_rank, cp_rank=layout.cp_rank, dp=layout.dp, cp=layout.cp,
        units=[len(parallel.fsdp_units(e)) for e in denoiser.experts],
        blocks=[len(parallel.family_blocks(e, family)) for e in denoiser.experts],
        frozen_local=sum(local(p) for p in frozen), frozen_total=sum(p.numel() for p in frozen),
        frozen_bytes=sum(p.numel() * p.element_size() for p in frozen), expert_bytes_before_shard=before,
        largest_block=max(sum(p.numel() for p in b.parameters()) for b in blocks),
        trainable_types=sorted({type(p).__name__ for p in denoiser.parameters() if p.requires_grad}),
        frozen_with_grad=sum(p.grad is not None for p in frozen),
        group_timeouts_s=sorted({_timeout_s(g) for g in _groups(layout)}),
        local_rank=layout.local_rank, per_node=layout.per_node, weight_bytes_sent_inside_nodes=sent["inside"],
        weight_bytes_sent_across_nodes=sent["across"],
    )


def _skip_replica_reduction(group):
    """The control of hybrid sharding: FSDP2's all-reduce of the gradients over the replicas never runs (each
    replica trains on its own samples alone): the test's equality with one process must fail."""
    all_reduce = torch.distributed.all_reduce

    def all_reduce_but_replicas(tensor, op=torch.distributed.ReduceOp.SUM, group_=None, *args, **kwargs):
        target = kwargs.pop("group", group_)
        if target is not None and target == group:
            return None
        return all_reduce(tensor, op, target, *args, **kwargs)

    torch.distributed.all_reduce = all_reduce_but_replicas


def _count_reductions(layout, denoiser):
    """Count, per expert, the reduce-scatters and the all-reduces across the replicas FSDP2 makes in its units' post-backward
    (the collectives are attributed to the unit whose ``post_backward`` runs them), and the bytes those all-reduces carry."""
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    experts = list(denoiser.experts)
    unit_expert = {id(unit): e for e, expert in enumerate(experts) for unit in parallel.fsdp_units(expert)}
    counts = {e: {"reduce_scatter": 0, "all_reduce_replicas": 0, "all_reduce_bytes": 0} for e in range(len(experts))}
    record["reductions"] = counts
    # the backwards (each gradient_sync context of an update) in which each expert's units reduced: a unit a forward
    # calls twice (MiniMax-H3's, Kandinsky 6's, LTX-2's) reduces twice in its backward, but in one backward an update
    backward, reduced_in = [0], {e: set() for e in range(len(experts))}
    record["lora_units"] = [sum(any(p.sharded_param.requires_grad for p in unit._get_fsdp_state()._fsdp_param_group.fsdp_params)
                                for unit in parallel.fsdp_units(expert) if unit._get_fsdp_state()._fsdp_param_group is not None)
                            for expert in experts]
    replicas = layout.fsdp_mesh.get_group("replicate") if layout.fsdp_mesh.ndim == 2 else None
    current = [None]
    post_backward = FSDPParamGroup.post_backward

    def attributed(self, *args, **kwargs):
        current[0] = unit_expert.get(id(self.modules[0]))
        try:
            return post_backward(self, *args, **kwargs)
        finally:
            current[0] = None

    FSDPParamGroup.post_backward = attributed
    for name in ("reduce_scatter_single", "reduce_scatter_tensor"):
        original = getattr(torch.distributed, name, None)
        if original is None:
            continue

        def reduce_scatter(*args, _original=original, **kwargs):
            if current[0] is not None:
                counts[current[0]]["reduce_scatter"] += 1
                reduced_in[current[0]].add(backward[0])
            return _original(*args, **kwargs)

        setattr(torch.distributed, name, reduce_scatter)
    all_reduce = torch.distributed.all_reduce

    def counted_all_reduce(tensor, *args, **kwargs):
        group = kwargs.get("group", args[1] if len(args) > 1 else None)
        if current[0] is not None and replicas is not None and group == replicas:
            counts[current[0]]["all_reduce_replicas"] += 1
            counts[current[0]]["all_reduce_bytes"] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, *args, **kwargs)

    torch.distributed.all_reduce = counted_all_reduce
    from cac_align.gen.parallel import gradients

    sync = gradients.gradient_sync

    def numbered_sync(*args, **kwargs):
        backward[0] += 1
        return sync(*args, **kwargs)

    _replace_everywhere(sync, numbered_sync)
    record["reducing_backwards"] = reduced_in  # written as lists below

    if os.environ.get("CAC_TEST_SYNC_LAST_ONLY"):  # the control: every expert reduces at the update's last backward only
        gradients.reducing_backwards = lambda runs: [frozenset()] * (len(runs) - 1) + [frozenset(e for r in runs for e in r)]
    if os.environ.get("CAC_TEST_SYNC_EVERY_BACKWARD"):  # as before issue #105: a reduction at every backward
        gradients.reducing_backwards = lambda runs: [frozenset(r) for r in runs]


def _groups(layout):
    """Every process group the layout uses: the world, the context-parallel mesh's, the leaders' (none
    on one process without sharding)."""
    if not torch.distributed.is_initialized():
        return []
    groups = [torch.distributed.group.WORLD]
    if layout.cp_mesh is not None:
        groups += [layout.cp_mesh.get_group(name) for name in layout.cp_mesh.mesh_dim_names]
    if layout.leaders is not None and torch.distributed.get_rank(layout.leaders) >= 0:
        groups.append(layout.leaders)
    return groups


def _timeout_s(group) -> float:
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()


# What the transformers bring into this process's host memory while the generator loads: a transformer
# class constructed with real storage (a tiny pipeline's: diffusers' from_pretrained and from_config
# under the meta device construct it empty), and the tensors read from a transformer's safetensors files
# (diffusers reads each file through safetensors.torch.load_file).
import diffusers  # noqa: E402
import safetensors.torch  # noqa: E402

loading = {"on": False, "built": 0, "read": 0}


def _real_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)


def _counting_init(cls):
    init = cls.__init__

    @functools.wraps(init)  # diffusers' from_config reads the signature of __init__
    def counted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if loading["on"] and type(self) is cls:
            loading["built"] += _real_bytes(self.parameters())

    cls.__init__ = counted


# Every video transformer class diffusers has (its names end in "Transformer3DModel": every family's
# transformer, a new family's included, with no list of ours to keep); _load_and_record checks that the
# pipeline it loaded holds no transformer of another class, so nothing loaded goes uncounted.
COUNTED = []
for _name in dir(diffusers):
    if _name.endswith("Transformer3DModel"):
        try:
            COUNTED.append(getattr(diffusers, _name))
        except (ImportError, AttributeError):  # a class whose optional dependency is not installed
            continue
COUNTED.append(diffusers.Cosmos3OmniTransformer)  # a transformer not named *Transformer3DModel
for _cls in COUNTED:
    _counting_init(_cls)
_load_file = safetensors.torch.load_file


def _counting_load_file(filename, *args, **kwargs):
    tensors = _load_file(filename, *args, **kwargs)
    if loading["on"] and Path(filename).parent.name.startswith("transformer"):
        loading["read"] += _real_bytes(tensors.values())
    return tensors


safetensors.torch.load_file = _counting_load_file
_load_generator = parallel.load_generator


def _load_and_record(layout, config, device):
    loading.update(on=True, built=0, read=0)
    try:
        pipe = _load_generator(layout, config, device)
    finally:
        loading["on"] = False
        record.update(transformer_bytes_built=loading["built"], transformer_bytes_read=loading["read"])
    uncounted = sorted({type(m).__name__ for name, m in getattr(pipe, "components", {}).items()
                        if name.startswith("transformer") and isinstance(m, torch.nn.Module) and not isinstance(m, tuple(COUNTED))})
    if uncounted:
        raise RuntimeError(f"parallel_launch counts no construction of {uncounted}: name its class beside COUNTED")
    return pipe


if job == "flow-grpo":
    from cac_align.jobs import flow_grpo
    from cac_align.jobs.flow_grpo import FlowGrpoConfig as Config, run

    perturbed = os.environ.get("CAC_TEST_PERTURB_RANK")
    if perturbed is not None and int(perturbed) == rank:
        seed_of = flow_grpo.sample_seed
        flow_grpo.sample_seed = lambda seed, step, index: seed_of(seed, step, index) + 1
    sampled = []
    sample = flow_grpo.sample_with_log_probs

    def recording(*args, **kwargs):
        trajectory = sample(*args, **kwargs)
        if kwargs.get("noise_level", 0) > 0:
            sampled.append(trajectory.log_probs.detach().cpu())
        return trajectory

    flow_grpo.sample_with_log_probs = recording
    crash = os.environ.get("CAC_TEST_CRASH")  # "p<rank>s<step>": that process's sampling raises in that step (from 0)
    if crash is not None:
        crash_rank, crash_step = (int(x) for x in crash.removeprefix("p").split("s"))
        seed_of_crash = flow_grpo.sample_seed

        def crashing_seed(seed, step, index):
            if rank == crash_rank and step == crash_step:
                import time

                (out / f"crashed{rank}.txt").write_text(str(time.time()))
                raise RuntimeError(f"injected: process {rank} crashed in step {step}")
            return seed_of_crash(seed, step, index)

        flow_grpo.sample_seed = crashing_seed
    if os.environ.get("CAC_TEST_OLD_REWARD_KEYS"):  # the control: per-part keys read from this process's first batch, as before
        def old_reward_columns(reward, outputs):
            import numpy as np

            columns = []
            for output in outputs:
                column = {f"reward/{output.name}": output.scores.astype(np.float64)}
                parts = [d.get("components") for d in output.details]
                if parts and all(isinstance(c, dict) for c in parts):
                    for name in parts[0]:
                        for kind in ("raw", "normalized"):
                            column[f"reward/{name}_{kind}"] = np.array([np.nan if c.get(name, {}).get(kind) is None else c[name][kind] for c in parts])
                columns.append(column)
            return {key: np.concatenate([c[key] for c in columns]) for key in columns[0]}

        flow_grpo.reward_columns = old_reward_columns
    built = record.setdefault("rewards_built", [])  # which reward sections this process built (a context-parallel leader's only)
    build_reward = flow_grpo.build_reward

    def counting(section, where="reward"):
        built.append(where)
        return build_reward(section, where)

    flow_grpo.build_reward = counting

    # the steps this process ran (a restarted one: from its checkpoint on), and the faults the tests inject
    kill, stall = os.environ.get("CAC_TEST_KILL"), os.environ.get("CAC_TEST_STALL")
    first_round = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    record.update(restart_round=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), steps=[])
    step_of = flow_grpo._Trainer.train_step

    def faulty_step(self, step):
        record["steps"].append(step)
        if kill and [int(x) for x in kill.split(":")] == [rank, step] and first_round:
            os.kill(os.getpid(), signal.SIGKILL)
        killed_node = os.environ.get("CAC_TEST_KILL_NODE")  # "<marker file>:<step>": this node's agent and its workers, once
        if killed_node and os.environ.get("LOCAL_RANK") == "0" and int(os.environ.get("GROUP_RANK", "0")) == 1:
            marker, at = killed_node.rsplit(":", 1)
            if step == int(at) and not Path(marker).exists():
                Path(marker).write_text(str(time.time()))
                _kill_node(os.getppid())
        if stall and [int(x) for x in stall.split(":")[:2]] == [rank, step]:
            time.sleep(float(stall.split(":")[2]))
        return step_of(self, step)

    flow_grpo._Trainer.train_step = faulty_step
elif job == "nft":
    from cac_align.jobs.nft import NftConfig as Config, run
else:
    from cac_align.jobs.dpo import DpoConfig as Config, run

if job in ("flow-grpo", "nft"):  # the optimizer updates the run made (the reductions are counted per update)
    from cac_align.jobs import flow_grpo as _flow_grpo

    record["updates"] = 0
    _optimizer_step = _flow_grpo._Trainer._optimizer_step

    def _counted_update(self, *args, **kwargs):
        record["updates"] += 1
        return _optimizer_step(self, *args, **kwargs)

    _flow_grpo._Trainer._optimizer_step = _counted_update

# what every process records of its layout and its load (the job's module is imported: it holds these by name)
_replace_everywhere(_apply, _apply_and_record)
_replace_everywhere(_load_generator, _load_and_record)

if os.environ.get("CAC_TEST_VIA_CLI"):  # the command a user runs: its exit code and what it prints on failure
    from cac_align.cli import main

    sys.exit(main([job, "--config", str(recipe), f"out_dir={out}", "log_with=none", *overrides]))
config = load_config(Config, recipe, [f"out_dir={out}", "log_with=none", *overrides], job=job)
if os.environ.get("CAC_TEST_REWARD"):  # a recipe's reward replaced whole (a toy one: the same scores on 1 or N processes)
    config.reward = {"name": os.environ["CAC_TEST_REWARD"]}
run(config)
if job == "flow-grpo" and sampled:
    save_file({"log_probs": torch.cat(sampled)}, str(out / f"logprobs{rank}.safetensors"))
if "reducing_backwards" in record:  # per expert: how many backwards reduced its units
    record["reducing_backwards"] = {str(e): len(seen) for e, seen in record["reducing_backwards"].items()}
(out / f"record{rank}.json").write_text(json.dumps(record))
