r"""How fast a finished compression study ran, against what its networks and this machine allow.

    python benchmarks/study_speed.py --mlflow-uri sqlite:///lolaray-mlflow.db \
        [--experiment lolaray] [--run-id PARENT] [--profile demo] [--threads 1] [--steps 5] \
        [--clock cpu|wall] [--dataset NAME] [--data-root PATH]

The study is read from MLflow: its sweep *parent run* (default: the newest run of the
experiment tagged ``stage=sweep``) and the stage runs nested under it
(:mod:`lolaray.platform.tracking`). Its plan is rebuilt with
:func:`~lolaray.sweeps.plan.plan_study` from the parent run's parameters (``profile``,
``dataset``, ``latent_channels``, ``pixel_baseline``, ``contexts`` and the logged dataset
spec), the profile fitted to the dataset as :func:`~lolaray.sweeps.compression.run_compression_sweep`
fits it. Then, side by side in one process:

1. the study's **wall time**, parent run start to end (and how much of it came before the
   first stage run and after the last one: Ray, Tune, the study report);
2. the **plan's FLOPs** of the stages that ran, divided by that wall time, against this
   machine's fp32 GEMM peak on all its cores
   (:func:`~lolaray.trainers.hardware.measure_gemm_peak`);
3. each network's **training step alone** (autoencoder per rate, diffusion and solver per
   rate, pixel solver), at ``--threads`` torch threads (1 by default: the study's schedule
   gives most stages one thread), timed as ``benchmarks/mfu.py`` times them (forward,
   backward, clipping, AdamW; median of ``--steps`` after a warm-up: :func:`time_steps`):
   seconds per step, GFLOP/s and the share of the GEMM peak at the same threads. Steps and
   peaks are timed by CPU time / threads by default (``--clock cpu``): on a machine others
   use too, wall time would count their work as the network's; the wall figures are
   printed beside;
4. per **stage run**: its wall time (run start to end), its plan FLOPs and, for a training
   stage, its *fixed cost* :math:`t - F / r`, the wall time beyond its work at the rate
   :math:`r` its network's step reached alone (start-up of the Ray Train worker group,
   data loading, validation, checkpoints, snapshots, waiting for cores). Encoding and
   evaluation stages have no "alone" figure: their achieved rate :math:`F / t` is printed.
   Then the median fixed cost of the training stages, and the whole-study ratio

   .. math:: \frac{t_\text{study}}{\sum_s F_s / (c \cdot r_s)}

   with :math:`c` the cores and :math:`r_s` the alone rate of stage :math:`s`'s network
   (its training step's, for encoding and evaluation too): how much longer the study took
   than its counted work on every core at the networks' own speed (issue 29 aims at 1.1).

Mapping a stage run to its plan stage (:func:`plan_stage_name`): the tag ``stage``
(``autoencoder``, ``latents``, ``emulator``, ``evaluation``) with the tags ``emulator``,
``space``, ``guided`` and ``compression`` (the rate, ``f"{rate:g}"``, turned back into the
latent channel count through the rates the plan's autoencoders give) and the parameter
``split``. The three latent caches of a rate are encoded by one Ray Data job, each with a
run spanning the job (tag ``job_splits``): they are one row, ``c4/latents/train+valid+test``,
with the summed FLOPs. A replicate (``--seeds``) is told apart by its seed (``loop.seed``
or ``seed`` minus the parent's ``seed``), as ``c4-r1/autoencoder``. Runs mapped to the same
stage (a Tune retry after a failure) count for the union of their time spans.

Everything that reads MLflow, measures or prints is at the edges (:func:`main`,
:func:`load_study`, :func:`measure_networks`, :func:`measure_peaks`); the arithmetic and
the mapping are small pure functions, tested on hand-made runs in
``tests/unit/test_study_speed.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from mfu import time_steps  # the training step mfu.py times (benchmarks/ is this script's folder)
from mlflow.tracking import MlflowClient

from lolaray.platform.dataset_specs import resolve_spec
from lolaray.platform.tracking import tracking_uri
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.plan import plan_dataset, plan_study
from lolaray.trainers.autoencoder import AutoEncoder
from lolaray.trainers.autoencoder_trainer import latent_geometry
from lolaray.trainers.emulator_trainer import Objective, draw_masks
from lolaray.trainers.emulators import build_emulator
from lolaray.trainers.hardware import measure_bf16_speedup, measure_gemm_peak, resolve_precision

__all__ = [
    "NetworkSpeed",
    "StageRow",
    "StudyInputs",
    "StudySpeed",
    "channels_by_rate",
    "fixed_costs",
    "format_report",
    "load_study",
    "main",
    "measure_networks",
    "measure_peaks",
    "plan_for_study",
    "plan_stage_name",
    "stage_flops",
    "stage_rows",
    "stage_times",
    "study_inputs",
    "study_ratio",
    "union_seconds",
    "unmapped_runs",
]

_REPLICATE = re.compile(r"^(?P<chain>[^/]+?)-r(?P<replicate>\d+)/")


# --------------------------------------------------------------------------------------------
# The study's inputs and its plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyInputs:
    """What the plan of a study needs, read from its parent run's parameters."""

    profile: str
    dataset: str
    latent_channels: tuple[int, ...]
    pixel: bool
    contexts: tuple[int, ...] | None
    seed: int = 0
    seeds: int = 1
    #: The autoencoder preset its stage runs logged, where ``--autoencoder-preset`` changed
    #: the profile's (the parent run does not log it); ``None``: the profile's.
    autoencoder_preset: str | None = None
    #: The logged dataset spec's stride and window (``resolve_spec`` keywords), so a study
    #: run with ``--window 3`` is planned with it.
    spec_overrides: dict = field(default_factory=dict)
    #: The study's guidance setting (``guidance.*`` parameters; ``None``: unguided).
    guidance: dict | None = None


def _json(text: str | None, default=None):
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return text


def study_inputs(
    params: Mapping[str, str], *, profile: str | None = None, autoencoder_presets: Iterable[str] = ()
) -> StudyInputs:
    """The plan's inputs from a sweep parent run's parameters (MLflow keeps them as strings,
    lists and booleans as JSON); ``profile`` overrides the run's ``profile``.

    :param autoencoder_presets: the ``preset`` parameters of the study's autoencoder runs:
        one preset among them is the study's (``--autoencoder-preset`` is not on the parent).

    :raises ValueError: a parameter the plan cannot do without is missing.
    """
    missing = [key for key in ("dataset", "latent_channels") if key not in params]
    if missing or not (profile or params.get("profile")):
        raise ValueError(f"the parent run lacks the parameters {missing or ['profile']}: is it a sweep's?")
    contexts = _json(params.get("contexts"))
    # Only the stride and the window change the plan's FLOPs. (The augmentations cannot be
    # passed back: a dataset not read, as the plan's, does not know its periodic axes.)
    overrides = {}
    for key in ("stride", "window"):
        if (value := _json(params.get(f"dataset_spec.{key}"))) is not None:
            overrides[key] = int(value)
    return StudyInputs(
        profile=profile or params["profile"],
        dataset=params["dataset"],
        latent_channels=tuple(int(c) for c in _json(params["latent_channels"])),
        pixel=_json(params.get("pixel_baseline"), True) in (True, "true", "True"),
        contexts=tuple(int(c) for c in contexts) if isinstance(contexts, list) else None,
        seed=int(_json(params.get("seed"), 0)),
        seeds=int(_json(params.get("seeds"), 1)),
        autoencoder_preset=presets.pop() if len(presets := set(autoencoder_presets)) == 1 else None,
        spec_overrides=overrides,
        guidance={
            key.removeprefix("guidance."): _json(value)
            for key, value in params.items()
            if key.startswith("guidance.")
        }
        or None,
    )


def plan_for_study(inputs: StudyInputs, *, dataset: str | None = None, data_root: str | None = None):
    """``(plan, fitted profile, dataset info)`` of the study: the profile
    (:data:`~lolaray.sweeps.chain.PROFILES`) with the run's contexts, fitted to the dataset's
    spec as the sweep fits it, and :func:`~lolaray.sweeps.plan.plan_study` on the dataset's
    geometry (no data read: :func:`~lolaray.sweeps.plan.plan_dataset`).

    :param dataset: the dataset as the sweep was given it. Default: the profile's when its
        name is the run's (the run logs ``euler_quadrants``, not the embedded preset
        ``euler_quadrants:smoke`` that sets the trajectory counts), else the run's.
    """

    profile = PROFILES[inputs.profile]
    if dataset is None:
        ours = profile.dataset
        dataset = ours if ours.partition(":")[0] == inputs.dataset else inputs.dataset
    info, trajectories = plan_dataset(dataset, data_root=data_root)
    if inputs.autoencoder_preset and inputs.autoencoder_preset != profile.autoencoder.preset:
        # As main() applies --autoencoder-preset: before the spec fits the profile (a logged
        # 3-D counterpart is kept as it is by Profile.for_dataset on 3-D data).
        autoencoder = dataclasses.replace(profile.autoencoder, preset=inputs.autoencoder_preset)
        profile = dataclasses.replace(profile, autoencoder=autoencoder)
    if inputs.contexts:  # what main() does with --contexts, before the spec fits the profile
        profile = dataclasses.replace(profile, contexts=inputs.contexts)
    profile = profile.for_dataset(resolve_spec(info, **inputs.spec_overrides))
    plan = plan_study(
        profile,
        info,
        list(inputs.latent_channels),
        trajectories=trajectories,
        pixel=inputs.pixel,
        guidance=inputs.guidance,
        gpu=False,
        title=f"profile {inputs.profile} on {dataset}",
    )
    return plan, profile, info


def channels_by_rate(profile, info, latent_channels: Iterable[int]) -> dict[str, int]:
    """The stage runs' tag ``compression`` (``f"{rate:g}"``) → the latent channel count
    whose autoencoder gives that rate (one latent grid for all: distinct counts, distinct rates)."""

    found = {}
    for channels in latent_channels:
        config = dataclasses.replace(profile.autoencoder, latent_channels=int(channels))
        _, rate = latent_geometry(config, info)
        found[f"{rate:g}"] = int(channels)
    return found


# --------------------------------------------------------------------------------------------
# Stage runs → plan stages
# --------------------------------------------------------------------------------------------


def plan_stage_name(
    tags: Mapping[str, str], params: Mapping[str, str], rates: Mapping[str, int], *, base_seed: int = 0
) -> str | None:
    """The plan's name of a stage run (``c64/autoencoder``, ``c64/latents/train+valid+test``,
    ``pixel/evaluation/solver``, ``c64-r1/diffusion`` for replicate 1), or ``None`` for a run
    this study's plan has no stage for (another kind of stage, a rate not in ``rates``).

    :param rates: :func:`channels_by_rate`.
    :param base_seed: the parent run's ``seed``: replicate ``i`` runs with ``base_seed + i``.
    """
    stage = tags.get("stage")
    space = tags.get("space", "latent")
    if stage not in ("autoencoder", "latents", "emulator", "evaluation"):
        return None
    if space == "pixel":
        chain = "pixel"
    elif stage == "autoencoder" and "latent_channels" in params:
        chain = f"c{int(params['latent_channels'])}"
    elif tags.get("compression") in rates:
        chain = f"c{rates[tags['compression']]}"
    else:
        return None
    seed = params.get("loop.seed", params.get("seed"))
    try:
        replicate = int(seed) - base_seed if seed is not None else 0
    except ValueError:
        replicate = 0
    if replicate > 0:
        chain = f"{chain}-r{replicate}"
    if stage == "autoencoder":
        return f"{chain}/autoencoder"
    kind = tags.get("emulator")
    if stage == "emulator":
        return f"{chain}/solver" if space == "pixel" else f"{chain}/{kind}" if kind else None
    if stage == "evaluation":
        if not kind:
            return None
        # The guided evaluation is its own stage of the chain; the plan does not count it.
        return f"{chain}/evaluation/{'guided_' if tags.get('guided') == 'yes' else ''}{kind}"
    # Latent caches: one row per encoding job (its runs all span the job).
    splits = tags.get("job_splits") or params.get("split")
    return f"{chain}/latents/{splits.replace(',', '+')}" if splits else None


def _run_fields(run) -> tuple[dict, dict, float | None, float | None]:
    """Tags, params and start/end in seconds of an MLflow ``Run`` (or a stand-in with
    ``info.start_time``/``info.end_time`` in milliseconds and ``data.tags``/``data.params``)."""
    info, data = run.info, run.data
    start = info.start_time / 1000 if info.start_time is not None else None
    end = info.end_time / 1000 if info.end_time is not None else None
    return dict(data.tags), dict(data.params), start, end


def union_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``(start, end)`` spans: overlapping runs (the latent
    caches of one job) count once, consecutive ones (a retry after a failure) add up."""
    total, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def stage_times(runs: Iterable, rates: Mapping[str, int], *, base_seed: int = 0) -> dict[str, float]:
    """Plan stage name → wall seconds of its runs (:func:`union_seconds` of their spans), in
    the order the stages started. Unmapped and unfinished runs are left out
    (:func:`unmapped_runs` names them)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags, params, start, end = _run_fields(run)
        name = plan_stage_name(tags, params, rates, base_seed=base_seed)
        if name is not None and start is not None and end is not None:
            spans.setdefault(name, []).append((start, end))
    return {name: union_seconds(each) for name, each in spans.items()}


def unmapped_runs(runs: Iterable, rates: Mapping[str, int], *, base_seed: int = 0) -> list[str]:
    """The runs :func:`stage_times` leaves out, in words: no plan stage, or not finished."""
    left = []
    for run in runs:
        tags, params, start, end = _run_fields(run)
        name = plan_stage_name(tags, params, rates, base_seed=base_seed)
        label = f"{run.info.run_name or run.info.run_id} (stage={tags.get('stage')!r})"
        if name is None:
            left.append(f"{label}: no stage of the plan")
        elif start is None or end is None:
            left.append(f"{label}: {name}, not finished ({run.info.status})")
    return left


# --------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------


def _plan_parts(name: str, stages: Mapping) -> list:
    """The plan stages behind a row's name: the replicate suffix dropped, ``a+b`` split."""
    base = _REPLICATE.sub(lambda m: f"{m['chain']}/", name)
    head, _, last = base.rpartition("/")
    parts = [f"{head}/{part}" for part in last.split("+")] if head else [base]
    return [stages[part] for part in parts if part in stages]


def stage_flops(name: str, stages: Mapping) -> float | None:
    """The plan FLOPs of a row (``StagePlan`` by name in ``stages``): the sum of its parts,
    ``None`` when the plan has none of them or any has unknown FLOPs."""
    parts = _plan_parts(name, stages)
    if not parts or any(p.flops is None for p in parts):
        return None
    return float(sum(p.flops for p in parts))


def fixed_costs(
    stage_seconds: Mapping[str, float], flops: Mapping[str, float | None], rates: Mapping[str, float]
) -> dict[str, tuple[float, float]]:
    """Per stage with a rate: ``(work, fixed)`` seconds, ``work = FLOPs / rate`` (the rate
    its network's step reached alone, FLOP/s) and ``fixed = wall − work``. Stages without
    FLOPs or rate are left out."""
    out = {}
    for name, seconds in stage_seconds.items():
        rate, work_flops = rates.get(name), flops.get(name)
        if rate and work_flops is not None:
            work = work_flops / rate
            out[name] = (work, seconds - work)
    return out


def study_ratio(
    wall: float, flops: Mapping[str, float | None], rates: Mapping[str, float], cores: int
) -> tuple[float, float]:
    r"""``(ideal seconds, wall ÷ ideal)``: ideal :math:`= \sum_s F_s / r_s / c`, every
    core busy with the networks' work at their alone rate (stages without FLOPs or rate
    left out; an ideal of 0 gives a ratio of ``inf``)."""
    ideal = sum(f / rates[name] for name, f in flops.items() if f is not None and rates.get(name)) / cores
    return ideal, (wall / ideal if ideal > 0 else float("inf"))


@dataclass(frozen=True)
class NetworkSpeed:
    """A network's training step timed alone: ``seconds`` by the report's clock (its rate's),
    ``wall_seconds`` by the wall clock (the same figure on a machine nobody else uses)."""

    name: str
    batch: int
    flops: float  # one step, as the plan counts it
    seconds: float  # median seconds per step
    precision: str = "fp32"
    wall_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.flops / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class StageRow:
    """A stage run in the report; ``work``/``fixed`` for training stages, else ``None``."""

    name: str
    kind: str
    network: str
    seconds: float
    flops: float | None
    threads: int | None = None
    work: float | None = None
    fixed: float | None = None

    @property
    def rate(self) -> float | None:
        return self.flops / self.seconds if self.flops is not None and self.seconds > 0 else None


def stage_rows(
    stage_seconds: Mapping[str, float],
    stages: Mapping,
    speeds: Mapping[str, NetworkSpeed],
    threads: Mapping[str, Mapping[str, int]] | None = None,
) -> list[StageRow]:
    """One :class:`StageRow` per timed stage (``stages``: ``StagePlan`` by name; ``speeds``:
    by network name; ``threads``: the parent's ``schedule/threads``, label → stage → threads)."""
    flops = {name: stage_flops(name, stages) for name in stage_seconds}
    networks, kinds = {}, {}
    for name in stage_seconds:
        parts = _plan_parts(name, stages)
        networks[name] = parts[0].network if parts else ""
        kinds[name] = parts[0].kind if parts else "?"
    # A stage of W workers runs W steps at once (the plan counts them all).
    train_rates = {
        name: speeds[networks[name]].rate * _plan_parts(name, stages)[0].devices
        for name in stage_seconds
        if kinds[name] == "train" and networks[name] in speeds
    }
    costs = fixed_costs(stage_seconds, flops, train_rates)
    rows = []
    for name, seconds in stage_seconds.items():
        label, _, stage = name.partition("/")
        scheduled = (threads or {}).get(label, {})
        # A joined row (latents/train+valid+test) ran its splits in one job: the first's threads.
        first = stage.split("+")[0]
        work, fixed = costs.get(name, (None, None))
        rows.append(
            StageRow(
                name,
                kinds[name],
                networks[name],
                seconds,
                flops[name],
                threads=scheduled.get(first),
                work=work,
                fixed=fixed,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass
class StudySpeed:
    """Everything :func:`format_report` prints."""

    run_id: str
    title: str
    wall: float
    cores: int
    threads: int
    peak_cores: float  # fp32 GEMM FLOP/s on all cores
    peak_threads: float  # ... at the threads the steps were timed at
    networks: list[NetworkSpeed]
    rows: list[StageRow]
    plan_flops: float  # every stage of the plan with known FLOPs
    not_run: list[str] = field(default_factory=list)  # plan stages with no run (reused)
    unmapped: list[str] = field(default_factory=list)
    first_start: float | None = None  # seconds after the parent's start
    last_end: float | None = None  # seconds before the parent's end
    notes: list[str] = field(default_factory=list)
    clock: str = "cpu"  # of the peaks and the steps alone: "cpu" or "wall"
    load: float | None = None  # this machine's 1-minute load average while measuring


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def format_report(report: StudySpeed) -> str:
    """The four parts of the module docstring as text."""
    ran_flops = sum(r.flops for r in report.rows if r.flops is not None)
    speeds = {n.name: n for n in report.networks}
    by_stage_rate = {r.name: speeds[r.network].rate for r in report.rows if r.network in speeds}
    ideal, ratio = study_ratio(
        report.wall, {r.name: r.flops for r in report.rows}, by_stage_rate, report.cores
    )
    achieved = ran_flops / report.wall if report.wall > 0 else 0.0
    plural = "s" if report.threads != 1 else ""
    by = "by CPU time / threads" if report.clock == "cpu" else "by wall time"
    wall = f"1. Wall time: {report.wall:.1f} s (parent run start to end)"
    if report.first_start is not None and report.last_end is not None:
        wall += (
            f"; the first stage run began {report.first_start:.1f} s in, "
            f"the last ended {report.last_end:.1f} s before the end"
        )
    of_plan = f" (of the plan's {_si(report.plan_flops, 'FLOP')})" if report.not_run else ""
    lines = [
        f"Study {report.run_id}: {report.title}",
        "",
        wall + ".",
        (
            f"2. Plan FLOPs of the stages that ran: {_si(ran_flops, 'FLOP')}{of_plan} / {report.wall:.1f} s"
            f" = {_si(achieved, 'FLOP/s')}, {achieved / report.peak_cores:.1%} of the fp32 GEMM peak on "
            f"{report.cores} cores ({_si(report.peak_cores, 'FLOP/s')}, {by})."
        ),
        (
            f"3. Training steps alone, {report.threads} thread{plural}, {by} (fp32 GEMM peak at "
            f"{report.threads} thread{plural}: {_si(report.peak_threads, 'FLOP/s')}):"
        ),
        (
            f"   {'network':<24} {'batch':>5} {'dtype':<5} {'GFLOP/step':>10} {'s/step':>8} {'GFLOP/s':>8} "
            f"{'of peak':>8} {'wall s/step':>11}"
        ),
    ]
    for n in report.networks:
        lines.append(
            f"   {n.name:<24} {n.batch:>5} {n.precision:<5} {n.flops / 1e9:>10.3f} {n.seconds:>8.4f} "
            f"{n.rate / 1e9:>8.2f} {n.rate / report.peak_threads:>8.1%} "
            f"{'n/a' if n.wall_seconds is None else f'{n.wall_seconds:.4f}':>11}"
        )
    lines += [
        "4. Stage runs (wall: run start to end; work: FLOPs at the network's rate alone; fixed: wall - work;",
        "   encode/evaluate: the rate reached, no alone figure):",
        (
            f"   {'stage':<34} {'kind':<8} {'thr':>3} {'wall s':>8} {'FLOPs':>10} {'work s':>8} "
            f"{'fixed s':>8} {'GFLOP/s':>8}"
        ),
    ]
    for r in report.rows:
        lines.append(
            f"   {r.name:<34} {r.kind:<8} {r.threads if r.threads is not None else '-':>3} {r.seconds:>8.1f} "
            f"{_si(r.flops):>10} {_s(r.work):>8} {_s(r.fixed):>8} "
            f"{'n/a' if r.rate is None else f'{r.rate / 1e9:.2f}':>8}"
        )
    trained = [r for r in report.rows if r.fixed is not None]
    if trained:
        fixed = [r.fixed for r in trained]
        wall, work = sum(r.seconds for r in trained), sum(r.work for r in trained)
        lines.append(
            f"   Median fixed cost of the {len(trained)} training stages: {statistics.median(fixed):.1f} s "
            f"(min {min(fixed):.1f}, max {max(fixed):.1f}; their wall {wall:.1f} s, work {work:.1f} s)."
        )
    lines.append(
        f"   Whole study: wall / (plan FLOPs / (cores x the networks' rate alone)) = {report.wall:.1f} s / "
        f"{ideal:.1f} s = {ratio:.1f}x (issue 29's target: 1.1x)."
    )
    if report.not_run:
        lines.append(f"   Plan stages without a run (reused from the store?): {', '.join(report.not_run)}.")
    if report.unmapped:
        lines.append("   Stage runs not mapped to the plan:")
        lines += [f"     {text}" for text in report.unmapped]
    slower = [n.wall_seconds / n.seconds for n in report.networks if n.wall_seconds and n.seconds > 0]
    if report.clock == "cpu" and slower and statistics.median(slower) > 1.1:
        lines.append(
            f"   Note: the steps took {statistics.median(slower):.2f}x longer by the wall clock than by CPU "
            f"time: the machine was busy"
            + (
                f" (load average {report.load:.1f} on {report.cores} cores)"
                if report.load is not None
                else ""
            )
            + "; the study's wall time may include the same neighbours."
        )
    lines += [f"   Note: {note}" for note in report.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# I/O: MLflow, the measurements, the command line
# --------------------------------------------------------------------------------------------


def load_study(uri: str, experiment: str, run_id: str | None = None):
    """``(parent run, its child runs)``: ``run_id``, else the newest run of ``experiment``
    tagged ``stage=sweep``.

    :raises LookupError: no such experiment or sweep run.
    """

    client = MlflowClient(uri)
    if run_id is not None:
        parent = client.get_run(run_id)
        experiment_ids = [parent.info.experiment_id]
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise LookupError(f"no experiment {experiment!r} at {uri}")
        experiment_ids = [found.experiment_id]
        sweeps = client.search_runs(
            experiment_ids, "tags.stage = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
        )
        if not sweeps:
            raise LookupError(f"no sweep run (tag stage=sweep) in experiment {experiment!r} at {uri}")
        parent = sweeps[0]
    children = client.search_runs(
        experiment_ids, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=5000
    )
    return parent, children


def _is_autoencoder(run) -> bool:
    return run.data.tags.get("stage") == "autoencoder" and "preset" in run.data.params


def measure_peaks(threads: int, cores: int, *, clock: str = "cpu") -> tuple[float, float]:
    """fp32 GEMM FLOP/s at ``threads`` and at ``cores`` threads, by ``clock``: ``"wall"``,
    or ``"cpu"`` (the process's CPU seconds spread on the threads: what the cores deliver
    when they are ours alone, :func:`~lolaray.trainers.hardware.measure_gemm_peak`)."""

    pick = 1 if clock == "cpu" else 0
    alone = measure_gemm_peak(torch.float32, "cpu", threads)[pick]
    every = measure_gemm_peak(torch.float32, "cpu", cores)[pick] if cores != threads else alone
    return alone, every


def measure_networks(
    plan, profile, info, latent_channels, *, pixel: bool, threads: int, steps: int, clock: str = "cpu"
):
    """Each network's training step alone on the CPU at ``threads`` torch threads, at the
    batch per worker its stage trains with, in the precision its loop would choose
    (``"auto"``: fp32 without AMX-BF16), as :class:`NetworkSpeed` by the plan's network name;
    ``clock`` as :func:`measure_peaks`'s."""

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    speeds = {}

    def timed(name, model, loss, batch, precision):
        chosen = resolve_precision(precision, "cpu", measured_speedup=lambda: measure_bf16_speedup(model))
        wall, cpu = time_steps(model, loss, precision=chosen, device=torch.device("cpu"), steps=steps)
        seconds = cpu / threads if clock == "cpu" else wall
        flops = float(plan.networks[name].train.flops)
        speeds[name] = NetworkSpeed(name, batch, flops, seconds, chosen, wall_seconds=wall)

    def emulator(name, config, shape):
        model = Objective(build_emulator(config, shape, info.theta_dim))
        x = torch.randn(config.batch_size, shape[0], config.window, *shape[1:])
        theta = torch.randn(config.batch_size, info.theta_dim)
        mask = draw_masks(config.batch_size, config)
        timed(name, model, lambda m: m(x, theta, mask), config.batch_size, config.loop.precision)

    try:
        for channels in latent_channels:
            ae = dataclasses.replace(profile.autoencoder, latent_channels=int(channels))
            latent, rate = latent_geometry(ae, info)
            model = AutoEncoder(**ae.model_kwargs(info))
            x = torch.randn(ae.batch_size, *info.state_shape)
            known = torch.randn(ae.batch_size, info.n_known, *info.resolution) if info.n_known else None

            def loss(m, x=x, known=known, ae=ae):
                x_hat, _ = m(x, known)
                return ae.reconstruction_loss(x_hat, x)

            timed(f"autoencoder c{channels} (/{rate:g})", model, loss, ae.batch_size, ae.loop.precision)
            for kind in ("diffusion", "solver"):
                config = dataclasses.replace(profile.emulator, kind=kind, space="latent")
                emulator(f"{kind} c{channels}", config, latent)
        if pixel:
            config = dataclasses.replace(profile.pixel_emulator, kind="solver", space="pixel")
            emulator("pixel solver", config, info.conditioned_state_shape)
    finally:
        torch.set_num_threads(previous)
    return speeds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="study_speed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: as the sweeps')")
    parser.add_argument("--experiment", default="lolaray", help="MLflow experiment (default lolaray)")
    parser.add_argument("--run-id", default=None, help="the sweep's parent run (default: the newest)")
    parser.add_argument("--profile", default=None, help="the study's profile (default: the run's)")
    parser.add_argument(
        "--dataset", default=None, help="the dataset as the sweep took it (default: the run's)"
    )
    parser.add_argument("--data-root", default=None, help="as the sweep's --data-root")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the steps alone (default 1)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network, after a warm-up")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="time the steps alone and the GEMM peaks by CPU time / threads (default: what the cores do "
        "when nobody else uses them) or by wall time (the same on a quiet machine)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """The command line; returns the exit status (0, or 2 for a study it cannot read)."""
    args = parse_args(argv)

    uri = tracking_uri(args.mlflow_uri)
    try:
        parent, children = load_study(uri, args.experiment, args.run_id)
        presets = [r.data.params["preset"] for r in children if _is_autoencoder(r)]
        inputs = study_inputs(parent.data.params, profile=args.profile, autoencoder_presets=presets)
        plan, profile, info = plan_for_study(inputs, dataset=args.dataset, data_root=args.data_root)
    except (LookupError, ValueError, KeyError, FileNotFoundError) as error:
        print(f"study_speed.py: error: {error}", file=sys.stderr)
        return 2
    if parent.info.end_time is None:
        print(
            "study_speed.py: error: the sweep run has not ended (still running, or killed)", file=sys.stderr
        )
        return 2
    cores = os.cpu_count() or 1
    rates = channels_by_rate(profile, info, inputs.latent_channels)
    seconds = stage_times(children, rates, base_seed=inputs.seed)
    stages = {stage.name: stage for stage in plan.stages}
    speeds = measure_networks(
        plan,
        profile,
        info,
        inputs.latent_channels,
        pixel=inputs.pixel,
        threads=args.threads,
        steps=args.steps,
        clock=args.clock,
    )
    peak_threads, peak_cores = measure_peaks(args.threads, cores, clock=args.clock)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    threads = _json(parent.data.tags.get("schedule/threads"), {})
    rows = stage_rows(seconds, stages, speeds, threads if isinstance(threads, dict) else {})
    covered = {p.name for row in rows for p in _plan_parts(row.name, stages)}
    spans = [_run_fields(run)[2:] for run in children]
    starts = [s for s, _ in spans if s is not None]
    ends = [e for _, e in spans if e is not None]
    begin, end = parent.info.start_time / 1000, parent.info.end_time / 1000
    notes = []
    if inputs.seeds > 1:
        notes.append(f"{inputs.seeds} replicates: the plan's FLOPs count once per replicate that ran.")
    report = StudySpeed(
        run_id=parent.info.run_id,
        title=(
            f"{parent.info.run_name}, {plan.title}, latent channels "
            f"{list(inputs.latent_channels)}, {'pixel solver, ' if inputs.pixel else ''}contexts "
            f"{list(profile.contexts)}; {cores} cores"
        ),
        wall=end - begin,
        cores=cores,
        threads=args.threads,
        peak_cores=peak_cores,
        peak_threads=peak_threads,
        clock=args.clock,
        load=load,
        networks=list(speeds.values()),
        rows=rows,
        plan_flops=float(sum(s.flops for s in plan.stages if s.flops is not None)),
        not_run=[s.name for s in plan.stages if s.name not in covered],
        unmapped=unmapped_runs(children, rates, base_seed=inputs.seed),
        first_start=min(starts) - begin if starts else None,
        last_end=end - max(ends) if ends else None,
        notes=notes,
    )
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
