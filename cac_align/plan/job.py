"""The memory plan of a job that trains no generator (``bon``, ``repair``, ``train-cac``, ``serve``,
``synth-cot``, the evaluations, the jobs that hold nothing on a GPU): its rows per GPU, its peak, and a
refusal that names the first of the job's own fixes that fits, found by planning again with that change
(:class:`JobPlan`). What each job holds is its planner's (:mod:`cac_align.plan.sampling`: ``bon`` and
``repair``; :mod:`cac_align.plan.stages`: ``train-cac``; :mod:`cac_align.plan.services`: the rest); ``cac-align
check-recipe`` prints the plan, and a job that loads models checks it at its start
(:func:`cac_align.plan.check.check_job_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from cac_align.plan.counts import GIB
from cac_align.plan.rows import PlanRow, _Verdicts, plan_table


@dataclass(frozen=True)
class Fix:
    """A change of a job's settings that a refusal may name.

    Attributes:
        says: what the user changes, as they would type it, and why (``offload=true: the pipeline's
            modules visit the GPU one at a time``).
        changes: the planner's arguments that plan the job with that change (:attr:`JobPlan.replan`).
    """

    says: str
    changes: Mapping[str, Any]


@dataclass
class JobPlan(_Verdicts):
    """What each GPU of a job holds (:class:`~cac_align.plan.rows.PlanRow` rows, their peak: the resident rows
    plus the largest phase), what it was planned for, and how to plan it again with a fix.

    Attributes:
        job: the job's CLI name ("bon").
        title: the table's first line (what the rows are of, and the videos or samples planned for).
        rows: the rows of one GPU.
        layout: the settings planned, in a few words (``batch_size=5, offload=false``), said by a refusal.
        processes: processes (GPUs) planned for.
        notes: lines said before the table (where the configs came from).
        host: what a node's host memory holds (:class:`~cac_align.plan.host.HostPlan`), or None.
        replan: the planner with the arguments this plan was made with, taking a :class:`Fix`'s changes.
        fixes: the changes a refusal tries, in order: the first whose plan fits is named.
        floor: what a refusal says when no fix fits (or what says it: worked out only when needed).
        nothing: why the job holds nothing on a GPU (it runs on the CPU), when it does not.
        share: the part of a GPU the job may take (``serve``: vLLM's ``--gpu-memory-utilization``).
    """

    job: str
    title: str
    rows: list[PlanRow]
    layout: str = ""
    processes: int = 1
    notes: list[str] = field(default_factory=list)
    host: Any = None
    replan: Callable[..., "JobPlan"] | None = field(default=None, repr=False, compare=False)
    fixes: Sequence[Fix] = ()
    floor: str | Callable[[], str] = ""
    nothing: str = ""
    share: float = 1.0

    def fits(self, device_bytes: int) -> bool:
        """Whether the counted rows' peak fits the :attr:`share` of ``device_bytes`` the job may take (``serve``:
        vLLM's ``--gpu-memory-utilization``; the others: all of it)."""
        return self.peak_bytes <= self.share * device_bytes

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases its rows hold, in the order they come."""
        return tuple(dict.fromkeys(r.phase for r in self.rows if r.phase != "resident"))

    def table(self, device_bytes: int | None = None, width: int | None = None) -> str:
        """The plan as text in GiB per GPU: its title, each row's source and phase, the peak and, with
        ``device_bytes``, the device and whether it fits (:func:`~cac_align.plan.rows.plan_table`); then
        the host's table, where there is one."""
        text = plan_table(f"{self.title}:", self.rows, self.peak_bytes, device_bytes, self.fits(device_bytes) if device_bytes is not None else True,
                          width, self.phases)
        return text + ("\n" + self.host.table(width) if self.host is not None else "")

    def refusal(self, device_bytes: int) -> str | None:
        """None when the plan fits ``device_bytes``; else one line: what it needs, what the device has, and the
        first :attr:`fixes` whose plan fits (planned again with its changes), or :attr:`floor`."""
        if self.fits(device_bytes):
            return None
        has = f"{device_bytes / GIB:.1f} GiB" + (f", of which it takes {self.share:g}: {self.share * device_bytes / GIB:.1f} GiB" if self.share < 1 else "")
        head = f"memory plan: {self.job} needs {self.peak_bytes / GIB:.1f} GiB per GPU ({self.layout}) but the device has {has}"
        for fix in self.fixes if self.replan is not None else ():
            try:
                candidate = self.replan(**fix.changes)
            except ValueError:  # a change the job's config refuses with the rest (RecipeError is a ValueError): not a fix here
                continue
            if candidate.fits(device_bytes):
                return f"{head}; {fix.says} ({candidate.peak_bytes / GIB:.1f} GiB per GPU)"
        floor = self.floor() if callable(self.floor) else self.floor
        return f"{head}; {floor}" if floor else head

    def not_counted(self) -> str:
        """A few words: what the plan did not count (each such row says why, and what to fetch where a file is
        missing)."""
        missing = [r.label.removeprefix("judge ").split(": not counted")[0] for r in self.unknown_rows]
        return f"not counted: {', '.join(missing)} (the plan's rows say why)"

    @property
    def holds_nothing(self) -> bool:
        """Whether no row holds a byte on a GPU (a job on the CPU, or whose models are all served)."""
        return not any(r.bytes for r in self.rows) and not self.unknown_rows


def nothing_on_a_gpu(job: str, why: str) -> JobPlan:
    """The plan of a job that runs on the CPU: no row, and why (``convert``: it reads labels and writes
    annotations)."""
    return JobPlan(job, f"{job} holds nothing on a GPU", [], layout="the CPU", nothing=why)
