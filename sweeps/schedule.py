r"""The order of a study's chains and the threads of their stages, from the plan's costs.

A compression study is a handful of chains (one per rate, and the pixel baseline), each a
sequence of stages, run as Tune trials side by side. On a machine with a few cores two
choices decide how long it takes:

- **which chain starts first**: a chain admitted late runs alone at the end while the
  other cores idle. The chains start longest first (LPT: the classic rule for putting
  jobs of known length on parallel machines), their length being the FLOPs
  :func:`~lolaray.sweeps.plan.plan_study` counts on the meta device;
- **how many threads each stage takes**: one per chain when more chains than cores run,
  and the free cores when fewer do (the last chain of a study takes both cores of a
  2-core machine instead of one).

:func:`schedule_chains` decides both by simulating the study on its plan: a stage takes
:math:`F / (t \cdot \rho_k) + c` seconds for FLOPs :math:`F`, threads :math:`t`, the rate
:math:`\rho_k` one core gives its kind of work (:data:`RATES_PER_CORE`) and a fixed cost
:math:`c`; the running stages share the cores in
proportion to their threads; a stage's threads are fixed when it starts, at
:math:`\max(1, \lfloor \text{cores} / \text{running chains} \rfloor)`; a chain waits only
while every trial slot is taken. The simulation uses the plan, not the clock, so a
study's thread counts are the same on every run of the same profile on the same machine
(and a resumed study gives what an uninterrupted one would). A chain run alone takes
other thread counts than the same chain in a sweep, and torch's CPU kernels do not sum
in the same order at every thread count: their results then differ in the last bits
(``--worker-threads`` pins the threads where bit-equality matters more than the cores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "FIXED_SECONDS",
    "RATES_PER_CORE",
    "ChainCost",
    "Schedule",
    "ScheduledStage",
    "chain_costs",
    "schedule_chains",
]

#: FLOP/s one core gives each kind of stage (the plan's ``kind``), measured on the demo on a
#: 2-core AVX-512 Xeon: training steps reach 33–38 GFLOP/s at one thread (fp32 GEMM peak 155),
#: less their data; encoding and evaluation reached about 10 (Ray Data, sampling, decoding and
#: the metrics around the network calls). Only their ratios matter to the order and threads.
RATES_PER_CORE = {"train": 30e9, "encode": 10e9, "evaluate": 10e9}
#: Seconds a stage costs beyond its FLOPs (Ray Train's worker group, MLflow, checkpoints).
FIXED_SECONDS = 10.0


@dataclass(frozen=True)
class ChainCost:
    """One chain of a study: its trial label and its stages' work, in the order they run.

    :param label: the trial's label (``"c64"``, ``"pixel"``, ``"c64-r1"``).
    :param stages: ``(stage name, seconds on one core)`` pairs (``"autoencoder"``,
        ``"latents/train"``, ...), fixed costs excluded.
    """

    label: str
    stages: tuple[tuple[str, float], ...]

    @property
    def seconds(self) -> float:
        """The chain's work, in seconds on one core."""
        return sum(seconds for _, seconds in self.stages)


@dataclass(frozen=True)
class ScheduledStage:
    """A stage in the simulated study: when it starts and ends (seconds) and its threads."""

    chain: str
    stage: str
    start: float
    end: float
    threads: int


@dataclass(frozen=True)
class Schedule:
    """The simulated study.

    :param order: the chains in the order their trials start (longest first).
    :param threads: chain label → stage name → torch threads of that stage's workers.
    :param stages: every stage's simulated interval, in the order they started.
    :param seconds: the simulated wall time of the whole study.
    """

    order: tuple[str, ...]
    threads: Mapping[str, Mapping[str, int]]
    stages: tuple[ScheduledStage, ...] = field(default=())
    seconds: float = 0.0


def chain_costs(
    plan_stages: Sequence, labels: Sequence[str], *, rates: Mapping[str, float] = RATES_PER_CORE
) -> list[ChainCost]:
    """The chains ``labels`` of a study's plan (:class:`~lolaray.sweeps.plan.StagePlan` named
    ``"<chain>/<stage>"``), each stage's FLOPs over the rate of its kind (``rates``); a
    replicate ``"c64-r1"`` costs what ``"c64"`` costs. Unknown FLOPs (``None``) count as 0.

    :raises KeyError: a label without chain in the plan, or a stage kind without rate.
    """
    by_chain: dict[str, list[tuple[str, float]]] = {}
    for stage in plan_stages:
        chain, _, name = stage.name.partition("/")
        by_chain.setdefault(chain, []).append((name, float(stage.flops or 0.0) / rates[stage.kind]))
    chains = []
    for label in labels:
        base = label.split("-r")[0]
        if base not in by_chain:
            raise KeyError(f"the plan has no chain {base!r} (has {', '.join(by_chain)})")
        chains.append(ChainCost(label, tuple(by_chain[base])))
    return chains


@dataclass
class _Running:
    chain: ChainCost
    index: int  # the stage running
    remaining: float  # its work left, in seconds on one core
    threads: int
    start: float


def schedule_chains(
    chains: Sequence[ChainCost],
    *,
    cores: int,
    slots: int,
    fixed_seconds: float = FIXED_SECONDS,
) -> Schedule:
    """Order ``chains`` longest first and give each stage its threads, by simulating the study.

    :param chains: the study's chains (:func:`chain_costs`).
    :param cores: the machine's cores (all trials run on it).
    :param slots: trials that may run at once (Tune's ``max_concurrent_trials``).
    :param fixed_seconds: seconds each stage costs beyond its FLOPs.
    :returns: the :class:`Schedule`; ties in length keep the given order.
    :raises ValueError: ``cores`` or ``slots`` below 1, or two chains with one label.
    """
    if cores < 1 or slots < 1:
        raise ValueError(f"cores and slots must be >= 1, got cores={cores}, slots={slots}")
    labels = [c.label for c in chains]
    if len(set(labels)) != len(labels):
        raise ValueError(f"chain labels must be unique, got {labels}")
    order = sorted(chains, key=lambda c: -c.seconds)  # stable: equal lengths keep their order
    waiting = list(order)
    running: list[_Running] = []
    threads: dict[str, dict[str, int]] = {c.label: {} for c in chains}
    timeline: list[ScheduledStage] = []
    now = 0.0

    def start(run: _Running) -> None:
        name, seconds = run.chain.stages[run.index]
        run.threads = max(1, cores // len(running))
        run.remaining = seconds + fixed_seconds * run.threads  # the fixed cost does not parallelise
        run.start = now
        threads[run.chain.label][name] = run.threads

    def admit() -> None:
        new = []
        while waiting and len(running) < slots:
            chain = waiting.pop(0)
            if not chain.stages:
                continue
            run = _Running(chain, 0, 0.0, 1, now)
            running.append(run)
            new.append(run)
        for run in new:  # threads from the number running once every free slot is taken
            start(run)

    admit()
    while running:
        total = sum(r.threads for r in running)
        share = min(1.0, cores / total)  # cores per thread
        step = min(r.remaining / (r.threads * share) for r in running)
        now += step
        finished = []
        for run in running:
            run.remaining -= step * run.threads * share
            if run.remaining <= 1e-9 * max(1.0, step):
                finished.append(run)
        advancing = []
        for run in finished:
            timeline.append(
                ScheduledStage(run.chain.label, run.chain.stages[run.index][0], run.start, now, run.threads)
            )
            run.index += 1
            if run.index == len(run.chain.stages):
                running.remove(run)
            else:
                advancing.append(run)
        admit()
        for run in advancing:
            start(run)
    timeline.sort(key=lambda s: (s.start, labels.index(s.chain)))
    return Schedule(
        order=tuple(c.label for c in order),
        threads={label: dict(stages) for label, stages in threads.items()},
        stages=tuple(timeline),
        seconds=now,
    )
