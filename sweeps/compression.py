"""The study over compression rates: ``python sweeps/compression.py [--profile demo]``.

One Ray Tune trial per compression rate (latent channel count) runs that rate's stage
chain — autoencoder → latent caches → diffusion and neural solver → ensemble evaluation
at contexts 1..3 — and one more trial trains and evaluates the pixel-space neural solver.
Each training stage launches its own ``TorchTrainer``; trials run side by side as far as
the cluster allows. At the end the study report (the paper's Table 6 analogue, figures)
goes on the sweep's MLflow parent run and into the store, and the table is printed, with
the paper's six findings tested on this run's numbers (also tagged ``finding/<n>`` on the
parent run, with metrics ``finding/<n>_shown``).

Every stage is content-addressed in the store (``--store``): a sweep that was interrupted
and started again runs only the stages that are missing, and a sweep sharing an
autoencoder with an earlier one reuses it (tagged ``reused/...`` on the parent run).

Examples::

    python sweeps/compression.py                           # demo profile, embedded Ray
    python sweeps/compression.py --profile smoke           # minutes, for a first look
    python sweeps/compression.py --compression-rates 80,320  # rates, as the demo's latent channels
    python sweeps/compression.py --autoencoder-preset smoke  # the demo study, autoencoder r = 2
    python sweeps/compression.py --profile paper --plan    # what the paper study costs, in seconds
    python sweeps/compression.py --profile paper --address auto \\
        --dataset euler_multi_quadrants_openBC --data-root s3://bucket/the_well \\
        --store s3://bucket/lolaray-store                  # on a `ray up` cluster
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
import ray.tune
from mlflow.tracking import MlflowClient

from lolaray.evaluation.findings_table import findings_text, log_findings
from lolaray.evaluation.guidance_options import add_guidance_arguments, guidance_from_args
from lolaray.evaluation.scoring_options import add_scoring_arguments, scoring_from_args
from lolaray.platform.artifacts import ArtifactStore
from lolaray.platform.data import open_dataset, theta_standardizer_for
from lolaray.platform.dataset_spec_options import add_dataset_spec_arguments, spec_from_args
from lolaray.platform.dataset_specs import DatasetSpec, DatasetSpecError, resolve_spec
from lolaray.platform.session import start_ray
from lolaray.platform.stages import StageContext
from lolaray.sweeps.chain import PROFILES, Profile, run_latent_chain, run_pixel_chain
from lolaray.sweeps.compression_rates import format_rate, latent_channels_for_rates, parse_rates, study_rates
from lolaray.sweeps.plan import (
    add_plan_arguments,
    format_duration,
    plan_dataset,
    plan_study,
    print_plan,
    sweep_prediction,
)
from lolaray.sweeps.schedule import Schedule, chain_costs, schedule_chains
from lolaray.sweeps.sweep import (
    SweepInputError,
    add_common_arguments,
    check_inputs,
    default_concurrency,
    elapsed,
    mlflow_hint,
    publish_study,
    run_trials,
    sweep_run,
    tag_reuse,
)
from lolaray.trainers.autoencoder import AUTOENCODER_PRESETS
from lolaray.trainers.training_stage import TrainingRecord

__all__ = [
    "SweepFailed",
    "SweepOutcome",
    "latent_channels_from_args",
    "main",
    "parse_args",
    "run_compression_sweep",
    "study_schedule",
]


def _rates_option(text: str) -> tuple[float, ...] | str:
    try:
        return parse_rates(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a whole number >= 1, got {text!r}")
    return value


def _preset_option(name: str) -> str:
    if name not in AUTOENCODER_PRESETS:
        raise argparse.ArgumentTypeError(
            f"unknown autoencoder preset {name!r}; choose one of {', '.join(sorted(AUTOENCODER_PRESETS))}"
        )
    return name


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compression.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="demo", help="size of everything (default demo)"
    )
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument(
        "--latent-channels",
        type=int,
        nargs="*",
        default=None,
        help="latent channel counts, one trial each (default: the profile's)",
    )
    rates.add_argument(
        "--compression-rates",
        type=_rates_option,
        default=None,
        metavar="R,...|spec",
        help="compression rates numel(x)/numel(z), one trial each, as the latent channel counts the "
        "profile's autoencoder gives them on the dataset ('spec': the dataset spec's, the paper's)",
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        metavar="N",
        help="train N replicates of every chain (seeds S, S+1, ...); the study reports their spread",
    )
    parser.add_argument(
        "--autoencoder-preset",
        type=_preset_option,
        default=None,
        metavar="NAME",
        help="the autoencoder's architecture instead of the profile's (its factor r sets the latent "
        f"grid; on 3-D data a 2-D preset's 3-D counterpart): one of {', '.join(sorted(AUTOENCODER_PRESETS))}",
    )
    parser.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        default=None,
        help="context lengths of the evaluations (default: the profile's, 1 2 3)",
    )
    parser.add_argument("--no-pixel", action="store_true", help="skip the pixel-space solver baseline")
    parser.add_argument(
        "--worker-threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="torch threads of every training worker and rollout actor (default: the study's schedule "
        "gives a stage the cores the other chains leave free; pin it for results bit-equal to a "
        "chain run alone or in another sweep)",
    )
    add_guidance_arguments(parser, what="also evaluate each diffusion emulator guided")
    add_scoring_arguments(parser)
    add_dataset_spec_arguments(parser)
    add_common_arguments(parser)
    add_plan_arguments(parser)
    return parser.parse_args(argv)


@dataclass
class SweepOutcome:
    """What a sweep did: per trial label (``c4``, ``pixel``) the stages run and reused,
    the study artifact, the parent run, and errors of failed trials."""

    parent_run_id: str
    ran: dict[str, list[str]] = field(default_factory=dict)
    reused: dict[str, list[str]] = field(default_factory=dict)
    nodes: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    study: object | None = None
    tables: dict = field(default_factory=dict)
    #: The tables with bootstrap intervals and medians over the scored units.
    intervals: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)


@dataclass(frozen=True)
class _TrialContext:
    # Everything a trial driver needs, shipped once through the object store.
    profile: Profile
    dataset: object  # DatasetInfo
    store_root: str
    mlflow_uri: str
    experiment: str
    parent_run_id: str
    seed: int
    fail_at: dict | None
    guidance: dict | None = None
    scoring: dict | None = None
    schedule: Schedule | None = None
    in_process: bool = False


def _label(chain, replicate: int = 0) -> str:
    """``"c64"``, ``"pixel"``; replicates after the first ``"c64-r1"`` (MLflow tag keys allow no "=")."""
    name = "pixel" if chain == "pixel" else f"c{chain}"
    return name if not replicate else f"{name}-r{replicate}"


def _chain_trial(config: dict, context: _TrialContext) -> None:
    """A Tune trial: one chain (a latent channel count, or ``"pixel"``), then one report."""
    chain, replicate = config["trial"]["chain"], int(config["trial"]["replicate"])
    label = _label(chain, replicate)
    stage_context = StageContext(
        store=ArtifactStore(context.store_root),
        tracking_uri=context.mlflow_uri,
        experiment=context.experiment,
        parent_run_id=context.parent_run_id,
    )
    common = {
        "seed": context.seed + replicate,  # replicate i: every stage of the chain seeded S + i
        "progress": lambda text: print(f"[lolaray] {text}", flush=True),
        "fail_at": (context.fail_at or {}).get(label),
        "scoring": context.scoring,
        "threads": context.schedule.threads.get(label) if context.schedule is not None else None,
        "in_process": context.in_process,
    }
    if chain == "pixel":
        result = run_pixel_chain(context.profile, context.dataset, stage_context, **common)
    else:
        result = run_latent_chain(
            context.profile, context.dataset, int(chain), stage_context, guidance=context.guidance, **common
        )
    tag_reuse(
        MlflowClient(context.mlflow_uri),
        context.parent_run_id,
        label,
        {name: result.artifacts[name] for name in result.reused},
    )
    trained = [a for a in result.artifacts.values() if a.stage in ("autoencoder", "emulator")]
    nodes = sorted({node for a in trained if (node := TrainingRecord.of(a.manifest).train_node_id)})
    metrics = {
        "stages_ran": len(result.ran),
        "stages_reused": len(result.reused),
        "ran": json.dumps(result.ran),
        "reused": json.dumps(result.reused),
        "trial_node_id": ray.get_runtime_context().get_node_id(),
        "train_node_ids": json.dumps(nodes),
        "artifacts": json.dumps(
            {
                k: {"stage": a.stage, "id": a.id, "uri": a.uri, "manifest": a.manifest}
                for k, a in result.artifacts.items()
            }
        ),
    }
    for name, artifact in result.artifacts.items():
        if artifact.stage == "evaluation":
            summary = json.loads(stage_context.store.read_text(artifact, "summary.json"))
            for horizon in summary["horizons"]:
                value = summary["metrics"].get(f"absolute/context_all/vrmse/{horizon}")
                if value is not None:
                    metrics[f"{name.split('/')[-1]}/vrmse/{horizon}"] = value
    ray.tune.report(metrics)


def study_schedule(
    profile: Profile,
    dataset,
    latent_channels: list[int],
    *,
    pixel: bool,
    seeds: int,
    slots: int,
    cores: int,
    guidance: dict | None = None,
    worker_threads: int | None = None,
) -> Schedule:
    """The study's trial order and threads per stage (:func:`~lolaray.sweeps.schedule.schedule_chains`)
    from its plan's FLOPs (:func:`~lolaray.sweeps.plan.plan_study`): longest chain first, each
    stage the cores the chains running beside it leave free; ``worker_threads`` pins them all."""
    chains = [*(int(c) for c in latent_channels), *(["pixel"] if pixel else [])]
    labels = [_label(chain, replicate) for chain in chains for replicate in range(seeds)]
    counts = {split: sum(layout.n_trajectories) for split, layout in dataset.splits.items()}
    plan = plan_study(
        profile,
        dataset,
        [int(c) for c in latent_channels],
        trajectories=counts,
        pixel=pixel,
        guidance=guidance,
        gpu=False,
    )
    schedule = schedule_chains(chain_costs(plan.stages, labels), cores=cores, slots=slots)
    if worker_threads is not None:
        pinned = {label: dict.fromkeys(stages, worker_threads) for label, stages in schedule.threads.items()}
        schedule = dataclasses.replace(schedule, threads=pinned)
    return schedule


def _local_cores() -> int | None:
    """This machine's cores when every trial runs on it (one Ray node, no GPU), else ``None``:
    on a cluster each worker keeps the CPUs it reserves."""
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) != 1 or ray.cluster_resources().get("GPU", 0) > 0:
        return None
    return os.cpu_count() or 1


def run_compression_sweep(
    profile: Profile,
    dataset,
    latent_channels: list[int],
    *,
    store,
    mlflow_uri: str,
    experiment: str = "lolaray",
    seed: int = 0,
    pixel: bool = True,
    seeds: int = 1,
    max_concurrent: int | None = None,
    retries: int = 1,
    fail_at: dict[str, str] | None = None,
    profile_name: str = "custom",
    verbose: int = 1,
    guidance: dict | None = None,
    scoring: dict | None = None,
    dataset_spec: DatasetSpec | None = None,
    worker_threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """The compression sweep on a running Ray: Tune trials, then the study report.

    :param profile: sizes of everything (:data:`~lolaray.sweeps.chain.PROFILES`).
    :param dataset: a :class:`~lolaray.platform.data.DatasetInfo`.
    :param latent_channels: one trial per entry.
    :param store: an :class:`~lolaray.platform.artifacts.ArtifactStore`.
    :param pixel: also the pixel-space solver (one more trial).
    :param seeds: replicates of every chain, seeded ``seed``, ``seed + 1``, … (every stage of
        replicate ``i`` seeded ``seed + i``); the study averages them per scored trajectory and
        reports their spread beside the bootstrap intervals.
    :param max_concurrent: trials at once (default from the cluster's resources).
    :param retries: Tune restarts of a failed trial (each resumes after its last finished stage).
    :param fail_at: fault injection, trial label → stage name (``{"c16": "evaluation/solver"}``):
        that trial raises before that stage (to rehearse resuming).
    :param guidance: also evaluate each diffusion emulator guided by observations (MMPS;
        :func:`~lolaray.evaluation.guidance_options.guidance_config` keys).
    :param scoring: the evaluations' start states, trajectory selection seed and VRMSE
        convention (:func:`~lolaray.evaluation.scoring_options.scoring_from_args`), and
        their ``horizons``.
    :param worker_threads: torch threads of every training worker and rollout actor (default:
        the study's schedule, on one machine; :func:`study_schedule`).
    :param progress: where the schedule is reported (one line; default: nowhere).
    :param dataset_spec: the dataset's settings (default: :func:`~lolaray.platform.dataset_specs.resolve_spec`
        of ``dataset``): the profile is fitted to them
        (:meth:`~lolaray.sweeps.chain.Profile.for_dataset`), the evaluations take their start
        states and horizons unless ``scoring`` gives them, and they are logged on the parent run.
    :returns: the :class:`SweepOutcome`; the parent run is ``FAILED`` if a trial failed.
    """
    # Fitted here too, not only by main(): a sweep called from Python trains the same
    # artifacts (same ids) as the command line on the same data.
    dataset_spec = dataset_spec or resolve_spec(dataset)
    profile = profile.for_dataset(dataset_spec)
    scoring = {**dataset_spec.scoring(), **profile.scoring(scoring)}
    max_concurrent = max_concurrent or default_concurrency(ray.cluster_resources(), profile.workers)
    # Longest chain first, by the plan's FLOPs; on one machine each stage also takes the cores
    # the chains beside it leave free (sweeps/schedule.py). On a cluster only the order.
    cores = _local_cores()
    schedule = study_schedule(
        profile,
        dataset,
        list(latent_channels),
        pixel=pixel,
        seeds=seeds,
        slots=max_concurrent,
        cores=cores or max_concurrent,
        guidance=guidance,
        worker_threads=worker_threads,
    )
    if cores is None and worker_threads is None:
        schedule = dataclasses.replace(schedule, threads={})
    # On one machine a chain trains and rolls out in its trial's process: a Ray Train worker
    # group or a rollout actor would run on the same cores, after 5-17 s of start-up per stage.
    in_process = cores is not None
    chains = [*(int(c) for c in latent_channels), *(["pixel"] if pixel else [])]
    trials = {_label(c, r): {"chain": c, "replicate": r} for c in chains for r in range(seeds)}
    trial_grid = [trials[label] for label in schedule.order]
    if progress is not None:
        threads = "pinned" if worker_threads else ("by the schedule" if cores else "as each stage reserves")
        progress(
            f"[lolaray] schedule: {', '.join(schedule.order)} (longest first by the plan's FLOPs), "
            f"{max_concurrent} at once on {cores or 'the cluster'} cores; threads {threads}"
            + ("; training and rollouts in the trial processes" if in_process else "")
            + (f"; simulated {format_duration(schedule.seconds)}" if cores else "")
        )
    params = {
        "profile": profile_name,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint(),
        "latent_channels": list(latent_channels),
        "pixel_baseline": pixel,
        "contexts": list(profile.contexts),
        "seed": seed,
        "seeds": seeds,
        "store": store.root,
        "max_concurrent_trials": max_concurrent,
        "trial_order": list(schedule.order),
        "worker_threads": worker_threads or ("schedule" if cores else "reserved"),
        "training": "in the trial process"
        if in_process and profile.workers == 1
        else f"{profile.workers} Ray Train worker(s)",
        "rollouts": "in the trial process"
        if in_process and profile.actors == 1
        else f"{profile.actors} actor(s)",
        "guidance": guidance,
        **(scoring or {}),
        "dataset_spec": dataset_spec.to_dict(),
    }
    with sweep_run(
        experiment,
        uri=mlflow_uri,
        run_name=f"sweep-compression-{profile_name}",
        params=params,
        tags={"stage": "sweep", "sweep": "compression", "profile": profile_name},
    ) as parent:
        outcome = SweepOutcome(parent_run_id=parent.run_id)
        context = _TrialContext(
            profile=profile,
            dataset=dataset,
            store_root=store.root,
            mlflow_uri=mlflow_uri,
            experiment=experiment,
            parent_run_id=parent.run_id,
            seed=seed,
            fail_at=fail_at,
            guidance=guidance,
            scoring=scoring,
            schedule=schedule,
            in_process=in_process,
        )
        if schedule.threads:
            parent.client.set_tag(parent.run_id, "schedule/threads", json.dumps(schedule.threads)[:5000])
        trials = run_trials(
            ray.tune.with_parameters(_chain_trial, context=context),
            {"trial": ray.tune.grid_search(trial_grid)},
            name=f"compression-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=f"{store.root}/_tune",
            max_concurrent=max_concurrent,
            retries=retries,
            verbose=verbose,
        )
        evaluations = []
        for trial in trials:
            label = _label(trial.config["trial"]["chain"], trial.config["trial"]["replicate"])
            if trial.error is not None or "artifacts" not in trial.metrics:
                outcome.errors[label] = trial.error or "the trial reported nothing"
                continue
            outcome.ran[label] = json.loads(trial.metrics["ran"])
            outcome.reused[label] = json.loads(trial.metrics["reused"])
            parent.client.set_tag(
                parent.run_id,
                f"nodes/{label}",
                json.dumps(
                    {
                        "trial": trial.metrics["trial_node_id"],
                        "train": json.loads(trial.metrics["train_node_ids"]),
                    }
                ),
            )
            outcome.nodes[label] = [
                trial.metrics["trial_node_id"],
                *json.loads(trial.metrics["train_node_ids"]),
            ]
            evaluations += [a for a in trial.artifacts().values() if a.stage == "evaluation"]
        if outcome.errors:
            parent.client.set_tag(parent.run_id, "failed_trials", json.dumps(outcome.errors)[:5000])
            raise SweepFailed(outcome)
        outcome.study, report = publish_study(
            store,
            evaluations,
            client=parent.client,
            run_id=parent.run_id,
            title=f"Compression sweep ({profile_name}): {dataset.name}",
            description=f"latent channels {list(latent_channels)}, seed {seed}"
            + (f" ({seeds} replicates: seeds {seed}..{seed + seeds - 1})" if seeds > 1 else "")
            + ", "
            f"{profile.members} members, {profile.trajectories} test trajectories, contexts {list(profile.contexts)}",
        )
        outcome.tables = report.tables
        outcome.intervals = report.intervals
        outcome.findings = report.findings
        log_findings(parent.client, parent.run_id, report.findings)
    return outcome


class SweepFailed(RuntimeError):
    """Some trials failed; ``outcome`` holds what the others did and the errors."""

    def __init__(self, outcome: SweepOutcome):
        super().__init__(f"{len(outcome.errors)} trial(s) failed: {outcome.errors}")
        self.outcome = outcome


def latent_channels_from_args(
    args: argparse.Namespace, profile: Profile, *, out: Callable[[str], None] = print
) -> tuple[int, ...] | list[int]:
    """The latent channel counts of a sweep's trials: ``--latent-channels``, else those of
    ``--compression-rates`` or the profile's ``compression_rates``
    (:func:`~lolaray.sweeps.compression_rates.latent_channels_for_rates` for the profile's
    autoencoder, fitted to the dataset's spec, on the dataset's geometry: headers only, no
    data generated or read), else the profile's ``latent_channels``.

    :param out: where the derivation is reported (one line).
    :raises SweepInputError: an unknown dataset, or a rate the geometry cannot give (naming
        the nearest rates it can).
    """
    if args.latent_channels is not None:
        return args.latent_channels
    if args.compression_rates is None and profile.compression_rates is None:
        return profile.latent_channels
    try:
        info, _ = plan_dataset(args.dataset or profile.dataset, data_root=args.data_root)
        spec = spec_from_args(args, info)
        rates = study_rates(profile, spec, args.compression_rates)
        fitted = profile.for_dataset(spec)  # the autoencoder the study trains (3-D preset on 3-D data)
        channels = latent_channels_for_rates(rates, fitted.autoencoder, info)
    except (ValueError, FileNotFoundError) as error:  # DatasetSpecError among them
        raise SweepInputError(str(error)) from error
    out(
        f"[lolaray] compression rates {', '.join(map(format_rate, rates))} of {info.name}: "
        f"latent channels {', '.join(map(str, channels))} (autoencoder preset {fitted.autoencoder.preset!r})"
    )
    return channels


def main(argv=None) -> int:
    """The command line; returns the exit status (0 done, 1 a trial failed, 2 bad input)."""
    args = parse_args(argv)
    start = time.perf_counter()
    profile = PROFILES[args.profile]
    if args.autoencoder_preset is not None:
        # Before the latent channels are derived from --compression-rates (they depend on r)
        # and before Profile.for_dataset, which still swaps a 2-D preset for its 3-D counterpart.
        autoencoder = dataclasses.replace(profile.autoencoder, preset=args.autoencoder_preset)
        profile = dataclasses.replace(profile, autoencoder=autoencoder)
    try:
        if args.contexts is not None:
            largest = profile.emulator.window - 1  # a window needs at least one new state
            if not all(1 <= c <= largest for c in args.contexts):
                raise SweepInputError(f"context lengths must lie in [1, {largest}], got {args.contexts}")
            profile = dataclasses.replace(profile, contexts=tuple(sorted(set(args.contexts))))
        latent_channels = latent_channels_from_args(args, profile)
        if not latent_channels:
            raise SweepInputError("the latent channel list is empty: pass --latent-channels C [C ...]")
        if any(c < 1 for c in latent_channels):
            raise SweepInputError(f"latent channel counts must be >= 1, got {latent_channels}")
        if args.plan:  # sizes, FLOPs, resources and device-hours; no Ray, no data, nothing run
            return print_plan(
                args,
                profile,
                latent_channels,
                profile_name=args.profile,
                pixel=not args.no_pixel,
                guidance=guidance_from_args(args),
            )
        guidance_from_args(args)  # the options checked before Ray starts; completed from the spec below
        scoring = scoring_from_args(args)
        store, uri, dataset_name = check_inputs(args, default_dataset=profile.dataset)
    except (SweepInputError, ValueError) as error:
        print(f"compression.py: error: {error}", file=sys.stderr)
        return 2

    try:
        resources = start_ray(args.address)
    except ConnectionError as error:
        print(f"compression.py: error: {error}", file=sys.stderr)
        return 2
    print(
        f"[lolaray] Ray: {int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs; "
        f"profile {args.profile}; store {store.root}; MLflow {uri}"
    )
    info = open_dataset(dataset_name, data_root=args.data_root)
    print(
        f"[lolaray] dataset {info.name} at {info.root}: {' x '.join(map(str, info.resolution))}, "
        f"{sum(sum(s.n_trajectories) for s in info.splits.values())} trajectories"
    )
    try:
        spec = spec_from_args(args, info)
        profile = profile.for_dataset(spec)
        guidance = guidance_from_args(args, spec.guidance)
    except (DatasetSpecError, ValueError) as error:
        print(f"compression.py: error: {error}", file=sys.stderr)
        return 2
    print(f"[lolaray] {spec.describe()}")
    print(f"[lolaray] {theta_standardizer_for(info, spec.log_parameters).describe()}")
    try:  # the spec's scoring (its start states, horizons, field) joins under the options'
        outcome = run_compression_sweep(
            profile,
            info,
            list(latent_channels),
            store=store,
            mlflow_uri=uri,
            experiment=args.experiment,
            seed=args.seed,
            seeds=args.seeds,
            pixel=not args.no_pixel,
            max_concurrent=args.max_concurrent_trials,
            profile_name=args.profile,
            guidance=guidance,
            scoring=scoring,
            dataset_spec=spec,
            worker_threads=args.worker_threads,
            progress=print,
        )
    except SweepFailed as failure:
        for label, error in failure.outcome.errors.items():
            print(f"[lolaray] trial {label} failed: {error}", file=sys.stderr)
        print("[lolaray] run the same command again to resume: finished stages are reused.", file=sys.stderr)
        print(f"[lolaray] {mlflow_hint(uri, args.experiment, failure.outcome.parent_run_id)}")
        return 1
    print()
    print("Table 6 analogue — VRMSE by lead-time horizon (autoencoder: reconstruction; pca: PCA of the")
    print("latent's size; persistence: the initial state repeated):")
    print(outcome.intervals["vrmse_intervals"].to_text())
    print()
    print("Diffusion spread-skill against D(E(x)) (finding 5) and against the truth:")
    print(outcome.intervals["spread_skill_relative_intervals"].to_text())
    print(outcome.intervals["spread_skill_intervals"].to_text())
    print()
    print("The paper's findings, tested on this run:")
    print(findings_text(outcome.findings))
    print()
    for label in outcome.ran:
        print(
            f"[lolaray] {label}: ran {len(outcome.ran[label])} stage(s), reused {len(outcome.reused[label])}"
        )
    print(f"[lolaray] study report: {outcome.study.uri}/study.html")
    print(f"[lolaray] {mlflow_hint(uri, args.experiment, outcome.parent_run_id)}")
    took, seconds = elapsed(start), time.perf_counter() - start
    predicted = sweep_prediction(
        profile,
        info,
        latent_channels,
        pixel=not args.no_pixel,
        guidance=guidance,
        seeds=args.seeds,
        elapsed_s=seconds,
        peak_tflops=args.plan_peak_tflops,
        utilisation=args.plan_utilisation,
    )
    print(f"[lolaray] sweep done in {took} ({predicted})")
    return 0


if __name__ == "__main__":
    # Run the installed module's main, so Tune ships trial functions by reference to
    # lolaray.sweeps.compression rather than pickling this script's __main__ by value.
    from lolaray.sweeps.compression import main as _main

    sys.exit(_main())
