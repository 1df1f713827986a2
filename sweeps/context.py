"""Context lengths (and sampler steps) on trained emulators: ``python sweeps/context.py``.

The paper's Table 7: does a longer context help? Emulators are trained for every context
length ``c`` in ``[1, window − 1]`` (the context mask is sampled during training), so
this sweep retrains nothing: it finds the emulators already in the store for the dataset
(those a compression sweep trained, or ``--emulators ID ...``) and runs one Tune trial
per (emulator, context length, sampler steps), each an evaluation with that single
context. The study report (``study_context``: rows method × ÷ × context × steps) goes on
the sweep's MLflow parent run and into the store, and its table is printed.

Examples::

    python sweeps/compression.py --profile smoke      # trains the emulators first
    python sweeps/context.py --profile smoke --contexts 1 2 3 --steps 4 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import ray
import ray.tune
from mlflow.tracking import MlflowClient

from lolaray.evaluation.evaluate import EvaluationConfig, evaluate
from lolaray.evaluation.findings_table import log_findings
from lolaray.evaluation.scoring_options import add_scoring_arguments, scoring_from_args
from lolaray.platform.artifacts import Artifact, ArtifactStore
from lolaray.platform.data import open_dataset
from lolaray.platform.dataset_spec_options import add_dataset_spec_arguments, spec_from_args
from lolaray.platform.dataset_specs import DatasetSpecError
from lolaray.platform.session import start_ray
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.sweeps.chain import PROFILES, Profile
from lolaray.sweeps.plan import add_plan_arguments, print_plan
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

__all__ = ["find_emulators", "main", "parse_args", "run_context_sweep"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="context.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="evaluation sizes")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1, 2, 3], help="context lengths")
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        help="sampler steps of diffusion (default: the profile's)",
    )
    parser.add_argument(
        "--emulators", nargs="+", default=None, help="emulator artifact ids (default: all for the dataset)"
    )
    add_common_arguments(parser)
    add_scoring_arguments(parser)
    add_dataset_spec_arguments(parser, windows=False)
    add_plan_arguments(parser)
    return parser.parse_args(argv)


def find_emulators(store, dataset, ids: list[str] | None = None) -> list[tuple[object, object | None]]:
    """The complete emulators in ``store`` trained on ``dataset``, with their autoencoders:
    ``[(emulator, autoencoder or None), ...]`` sorted by (kind, compression).

    :raises SweepInputError: an id in ``ids`` is not a complete emulator of this dataset.
    """
    fingerprint = dataset.fingerprint()
    found = []
    for eid in sorted(ids if ids is not None else store.complete_ids("emulator")):
        emulator = store.get("emulator", eid)
        if emulator is None:
            raise SweepInputError(f"no complete emulator {eid!r} in the store {store.root}")
        autoencoder = None
        if emulator.manifest.get("space", "latent") == "latent":
            autoencoder = store.get("autoencoder", emulator.manifest["autoencoder"])
            origin = autoencoder.manifest.get("dataset_fingerprint") if autoencoder else None
        else:
            origin = emulator.manifest.get("dataset_fingerprint")
        if origin != fingerprint:
            if ids is not None:
                raise SweepInputError(f"emulator {eid} was not trained on {dataset.name} at {dataset.root}")
            continue
        found.append((emulator, autoencoder))
    found.sort(
        key=lambda pair: (pair[0].manifest.get("kind", ""), float(pair[0].manifest.get("compression", 1)))
    )
    return found


@dataclass(frozen=True)
class _TrialContext:
    profile: Profile
    dataset: object
    store_root: str
    mlflow_uri: str
    experiment: str
    parent_run_id: str
    seed: int
    #: :func:`~lolaray.evaluation.scoring_options.scoring_from_args` keywords of ``evaluate``.
    scoring: dict = field(default_factory=dict)


def _evaluation_trial(config: dict, context: _TrialContext) -> None:
    """A Tune trial: one evaluation of one emulator at one context length and step count."""
    store = ArtifactStore(context.store_root)
    point = config["point"]
    emulator = store.get("emulator", point["emulator"])
    autoencoder = store.get("autoencoder", point["autoencoder"]) if point["autoencoder"] else None
    print(
        f"[lolaray] evaluating {point['label']} at context {point['context']}, {point['steps']} steps",
        flush=True,
    )
    before = store.complete_ids("evaluation")
    profile = context.profile
    artifact = evaluate(
        emulator,
        autoencoder,
        context.dataset,
        StageContext(
            store=store,
            tracking_uri=context.mlflow_uri,
            experiment=context.experiment,
            parent_run_id=context.parent_run_id,
            scaling=ScalingSpec(actors=profile.actors),
        ),
        EvaluationConfig(
            contexts=(point["context"],),
            members=profile.members,
            trajectories=profile.trajectories,
            steps=point["steps"],
            seed=context.seed,
        ).with_scoring(context.scoring),
    )
    reused = artifact.id in before
    if reused:
        tag_reuse(
            MlflowClient(context.mlflow_uri),
            context.parent_run_id,
            f"{point['label']}/c{point['context']}/s{point['steps']}",
            {"evaluation": artifact},
        )
    ray.tune.report(
        {
            "reused": int(reused),
            "artifact": json.dumps(
                {
                    "stage": artifact.stage,
                    "id": artifact.id,
                    "uri": artifact.uri,
                    "manifest": artifact.manifest,
                }
            ),
        }
    )


def run_context_sweep(
    profile: Profile,
    dataset,
    emulators: list[tuple[object, object | None]],
    *,
    contexts: list[int],
    steps: list[int],
    store,
    mlflow_uri: str,
    experiment: str = "lolaray",
    seed: int = 0,
    max_concurrent: int | None = None,
    profile_name: str = "custom",
    verbose: int = 1,
    scoring: dict | None = None,
):
    """Evaluate every emulator at every context length (diffusion: and step count) as Tune
    trials, then publish the study report. Returns ``(study artifact, tables, reused count)``.

    :param scoring: rollout start states, trajectory selection seed and VRMSE convention of
        the evaluations (:func:`~lolaray.evaluation.scoring_options.scoring_from_args`).

    :raises RuntimeError: a trial failed (the parent run is marked ``FAILED``).
    """
    points = []
    for emulator, autoencoder in emulators:
        kind = emulator.manifest.get("kind")
        label = f"{'pixel ' if autoencoder is None else ''}{kind} x{float(emulator.manifest.get('compression', 1)):g}"
        for c in contexts:
            for s in steps if kind == "diffusion" else steps[:1]:
                points.append(
                    {
                        "label": label,
                        "emulator": emulator.id,
                        "autoencoder": autoencoder.id if autoencoder else None,
                        "context": int(c),
                        "steps": int(s),
                    }
                )
    scoring = profile.scoring(scoring)  # the same scored set as the compression sweep's
    max_concurrent = max_concurrent or default_concurrency(ray.cluster_resources(), 1)
    params = {
        "profile": profile_name,
        "dataset": dataset.name,
        "emulators": [e.id for e, _ in emulators],
        "contexts": list(contexts),
        "steps": list(steps),
        "seed": seed,
        **(scoring or {}),
    }
    with sweep_run(
        experiment,
        uri=mlflow_uri,
        run_name=f"sweep-context-{profile_name}",
        params=params,
        tags={"stage": "sweep", "sweep": "context", "profile": profile_name},
    ) as parent:
        context = _TrialContext(
            profile, dataset, store.root, mlflow_uri, experiment, parent.run_id, seed, dict(scoring or {})
        )
        trials = run_trials(
            ray.tune.with_parameters(_evaluation_trial, context=context),
            {"point": ray.tune.grid_search(points)},
            name=f"context-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=f"{store.root}/_tune",
            max_concurrent=max_concurrent,
            verbose=verbose,
        )
        errors = {
            t.config["point"]["label"]: t.error for t in trials if t.error or "artifact" not in t.metrics
        }
        if errors:
            parent.client.set_tag(parent.run_id, "failed_trials", json.dumps(errors)[:5000])
            raise RuntimeError(f"{len(errors)} evaluation trial(s) failed: {errors}")
        evaluations = [Artifact(**json.loads(t.metrics["artifact"])) for t in trials]
        study, report = publish_study(
            store,
            evaluations,
            client=parent.client,
            run_id=parent.run_id,
            title=f"Context sweep ({profile_name}): {dataset.name}",
            description=f"contexts {list(contexts)}, sampler steps {list(steps)}, {len(emulators)} emulators",
            by_steps=True,
        )
        log_findings(parent.client, parent.run_id, report.findings)
    return study, report.tables, sum(int(t.metrics["reused"]) for t in trials), parent.run_id


def main(argv=None) -> int:
    """The command line; returns the exit status (0 done, 1 a trial failed, 2 bad input)."""
    args = parse_args(argv)
    start = time.perf_counter()
    profile = PROFILES[args.profile]
    steps = args.steps or [profile.sampler_steps]
    try:
        if any(c < 1 for c in args.contexts) or any(s < 1 for s in steps):
            raise SweepInputError(f"contexts and steps must be >= 1, got {args.contexts} and {steps}")
        try:
            scoring = scoring_from_args(args)
        except ValueError as error:
            raise SweepInputError(str(error)) from error
        if args.plan:  # the evaluations' FLOPs and device-hours for the profile's emulators; runs nothing
            return print_plan(
                args,
                profile,
                profile.latent_channels,
                profile_name=args.profile,
                contexts=args.contexts,
                steps=steps,
            )
        store, uri, dataset_name = check_inputs(args, default_dataset=profile.dataset)
    except SweepInputError as error:
        print(f"context.py: error: {error}", file=sys.stderr)
        return 2

    try:
        start_ray(args.address)
    except ConnectionError as error:
        print(f"context.py: error: {error}", file=sys.stderr)
        return 2
    info = open_dataset(dataset_name, data_root=args.data_root)
    try:
        try:
            spec = spec_from_args(args, info)
        except DatasetSpecError as error:
            raise SweepInputError(str(error)) from error
        scoring = {**scoring, **spec.scoring()}
        emulators = find_emulators(store, info, args.emulators)
        if not emulators:
            raise SweepInputError(
                f"no trained emulator for {info.name} in {store.root}: run sweeps/compression.py first"
            )
        window = min(int(e.manifest["window"]) for e, _ in emulators)
        if max(args.contexts) > window - 1:
            raise SweepInputError(f"contexts {args.contexts} exceed window - 1 = {window - 1}")
    except SweepInputError as error:
        print(f"context.py: error: {error}", file=sys.stderr)
        return 2
    print(f"[lolaray] {len(emulators)} emulators: " + ", ".join(e.id for e, _ in emulators))
    try:
        study, tables, reused, run_id = run_context_sweep(
            profile,
            info,
            emulators,
            contexts=args.contexts,
            steps=steps,
            store=store,
            mlflow_uri=uri,
            experiment=args.experiment,
            seed=args.seed,
            max_concurrent=args.max_concurrent_trials,
            profile_name=args.profile,
            scoring=scoring,
        )
    except RuntimeError as error:
        print(f"context.py: {error}", file=sys.stderr)
        return 1
    print()
    print("Table 7 analogue — VRMSE by context length:")
    print(tables["context"].to_text())
    print()
    print(store.read_text(study, "study_findings.txt"))
    print(f"[lolaray] {reused} evaluation(s) reused; study report: {study.uri}/study.html")
    print(f"[lolaray] {mlflow_hint(uri, args.experiment, run_id)}")
    print(f"[lolaray] sweep done in {elapsed(start)}")
    return 0


if __name__ == "__main__":
    # Run the installed module's main, so Tune ships trial functions by reference to
    # lolaray.sweeps.context rather than pickling this script's __main__ by value.
    from lolaray.sweeps.context import main as _main

    sys.exit(_main())
