"""What the study's entry points share: input checks, the sweep's MLflow run, Tune trials.

A sweep (``sweeps/compression.py``, ``sweeps/context.py``) is one MLflow *parent run*
and one Ray Tune experiment:

1. :func:`check_inputs` validates everything a user types — dataset, store, MLflow URI —
   before any work starts, so a typo costs seconds, not a failed trial an hour in;
2. :func:`sweep_run` opens the parent run; every stage execution inside a trial creates
   its own child run under it (``mlflow.parentRunId``);
3. :func:`run_trials` runs one Tune trial per grid point; a trial driver holds the
   custom resource ``train_driver`` (not a CPU) and launches its own ``TorchTrainer`` and
   Ray Data work (ray.md §2);
4. :func:`tag_reuse` links, on the parent run, every artifact a trial reused instead of
   recomputing; :func:`publish_study` puts the study report on the parent run and in the
   store.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune

from lolaray.evaluation.headline import log_headline_metrics
from lolaray.evaluation.study import load_evaluations, write_study_report
from lolaray.platform.artifacts import Artifact, ArtifactStore, artifact_id
from lolaray.platform.data import locate_dataset, read_dataset_info
from lolaray.platform.dataset_spec_options import spec_from_args
from lolaray.platform.session import TRAIN_DRIVER_RESOURCE
from lolaray.platform.stages import add_stage_arguments
from lolaray.platform.tracking import ensure_experiment, open_client, stage_run, tracking_uri

__all__ = [
    "SweepInputError",
    "TrialOutcome",
    "add_common_arguments",
    "check_inputs",
    "check_mlflow",
    "default_concurrency",
    "mlflow_hint",
    "publish_study",
    "run_trials",
    "sweep_run",
    "tag_reuse",
]


class SweepInputError(ValueError):
    """Bad input to a sweep, found before any work started."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every sweep takes: every stage's (dataset, Ray, MLflow, store, seed:
    :func:`~lolaray.platform.stages.add_stage_arguments`) and the trials' concurrency."""
    add_stage_arguments(parser, dataset_default=None)
    parser.add_argument(
        "--max-concurrent-trials",
        type=int,
        default=None,
        help="trials running at once (default: what the cluster's GPUs or CPUs allow)",
    )


def check_mlflow(uri: str, *, timeout: float = 10.0) -> None:
    """Reach the MLflow tracking store at ``uri`` (a server's ``/health``, or open a local store).

    :raises SweepInputError: the store cannot be reached or opened (with the URI in the message).
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise SweepInputError(f"MLflow server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as error:
            raise SweepInputError(f"cannot reach the MLflow server at {uri}: {error}") from error
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise SweepInputError(f"MLflow store {uri}: the folder {folder} does not exist")
    try:
        open_client(uri)
    except Exception as error:
        raise SweepInputError(f"cannot open the MLflow store {uri}: {error}") from error


def check_inputs(args: argparse.Namespace, *, default_dataset: str) -> tuple[ArtifactStore, str, str]:
    """Validate a sweep's inputs before any work: ``(store, tracking URI, dataset)``.

    :raises SweepInputError: unknown dataset, a folder whose trajectories cannot hold the
        window (``--stride``/``--window``/``--horizons``), store without write permission,
        unreachable MLflow.
    """

    dataset = args.dataset or default_dataset
    try:
        kind, location = locate_dataset(dataset, data_root=args.data_root)
        if kind == "root":  # headers only: a window the folder cannot hold fails here, not after Ray
            spec_from_args(args, read_dataset_info(location))
    except (ValueError, FileNotFoundError) as error:  # DatasetSpecError, DatasetFormatError among them
        raise SweepInputError(str(error)) from error
    try:
        store = ArtifactStore(args.store)
        store.check_writable()
    except PermissionError as error:  # names the store and what to fix
        raise SweepInputError(str(error)) from error
    except (OSError, ValueError) as error:
        raise SweepInputError(f"artifact store {args.store}: {error}") from error
    uri = tracking_uri(args.mlflow_uri)
    check_mlflow(uri)
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise SweepInputError(f"--max-concurrent-trials must be >= 1, got {args.max_concurrent_trials}")
    return store, uri, dataset


def default_concurrency(resources: Mapping[str, float], workers_per_stage: int) -> int:
    """Trials at once: one per ``workers_per_stage`` GPUs on a GPU cluster; on CPUs three per
    four logical CPUs, leaving room for the Ray Data read tasks and actors of the trials.

    Trials are mostly waiting on Ray (worker start-up, reports, data jobs), so they overlap
    well even on 2 cores: the smoke sweep took 8.8 min with 1 trial at a time, 6.0 min with 3.
    """
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return max(1, gpus // max(1, workers_per_stage))
    return max(1, int(resources.get("CPU", 1)) * 3 // 4)


@contextmanager
def sweep_run(
    experiment: str, *, uri: str, run_name: str, params: Mapping, tags: Mapping[str, str]
) -> Iterator[Any]:
    """The sweep's parent run (a :class:`~lolaray.platform.tracking.StageRun`): FINISHED
    when the block completes, FAILED when it raises."""
    with stage_run(experiment, run_name=run_name, uri=uri, params=params, tags=dict(tags)) as run:
        yield run


def tag_reuse(client, run_id: str, label: str, reused: Mapping[str, Artifact]) -> None:
    """Link each reused artifact on the parent run: tag ``reused/<label>/<stage>`` =
    ``<artifact id> (run <the MLflow run that made it>)``."""
    for name, artifact in reused.items():
        origin = artifact.manifest.get("mlflow_run_id")
        value = artifact.id + (f" (run {origin})" if origin else "")
        client.set_tag(run_id, f"reused/{label}/{name}", value)


@dataclass(frozen=True)
class TrialOutcome:
    """One Tune trial: its config, its last reported metrics, and its error (if it failed)."""

    config: dict
    metrics: dict
    error: str | None

    def artifacts(self) -> dict[str, Artifact]:
        """The artifacts the trial reported (stage name → :class:`Artifact`)."""
        return {k: Artifact(**v) for k, v in json.loads(self.metrics.get("artifacts", "{}")).items()}


def run_trials(
    trainable: Callable[[dict], None],
    param_space: dict,
    *,
    name: str,
    storage_path: str,
    max_concurrent: int,
    retries: int = 1,
    verbose: int = 1,
) -> list[TrialOutcome]:
    """Run ``trainable`` once per grid point of ``param_space`` as Tune trials.

    Each trial driver holds one ``train_driver`` resource and no CPU: the CPUs and GPUs go
    to the Ray Train workers and Ray Data actors it launches. A failed trial is retried
    ``retries`` times; since every stage is content-addressed, a retry resumes after the
    last finished stage.
    """

    tuner = ray.tune.Tuner(
        ray.tune.with_resources(trainable, {"CPU": 0, TRAIN_DRIVER_RESOURCE: 1}),
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=ray.tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.tune.FailureConfig(max_failures=retries),
            verbose=verbose,
        ),
    )
    grid = tuner.fit()
    outcomes = []
    for result in grid:
        outcomes.append(
            TrialOutcome(
                config=dict(result.config or {}),
                metrics=dict(result.metrics or {}),
                error=None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            )
        )
    return outcomes


def publish_study(
    store: ArtifactStore,
    evaluations: Sequence[Artifact],
    *,
    client,
    run_id: str,
    title: str,
    description: str,
    by_steps: bool = False,
):
    """Write the study report over ``evaluations`` into the store (stage ``study``, id from
    the evaluations' ids) and log its files on the parent run under ``study/``, and the
    headline figures per (method, rate) as the parent run's metrics
    (:func:`~lolaray.evaluation.headline.headline_metrics`).

    :returns: ``(artifact, report)`` (:class:`~lolaray.evaluation.study.StudyReport`).
    """
    # Here, not at the top: the sweeps' input checks import this module before any work,
    # and the study's modules bring plotly, torch and the networks with them.

    ids = sorted(a.id for a in evaluations)
    aid = artifact_id("study", {"by_steps": by_steps}, ids)
    loaded = load_evaluations(store, evaluations)
    log_headline_metrics(client, run_id, loaded)
    with store.build("study", aid, {"evaluations": ids, "mlflow_run_id": run_id}) as folder:
        study = write_study_report(loaded, folder, title=title, description=description, by_steps=by_steps)
        for path in study.files:
            client.log_artifact(run_id, str(path), artifact_path="study")
    return store.get("study", aid), study


def mlflow_hint(uri: str, experiment: str, run_id: str) -> str:
    """Where to look: the command that opens the UI and the sweep's run in it."""
    experiment_id = ensure_experiment(experiment, uri=uri)
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        return f"MLflow: {base}/#/experiments/{experiment_id}/runs/{run_id}"
    return (
        f"MLflow: mlflow ui --backend-store-uri {uri}  then open "
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id} "
        f"(experiment {experiment!r}; the stage runs are nested under this sweep's run)"
    )


def elapsed(start: float) -> str:
    """``"3 min 12 s"``."""
    seconds = time.perf_counter() - start
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.1f} s"
