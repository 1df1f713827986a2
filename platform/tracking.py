"""MLflow tracking: where runs go, experiments with absolute artifact roots, nested runs.

- Tracking URI: the user's ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` — the
  store ``mlflow ui`` opens by default from the same folder (DESIGN.md, "MLflow").
- Experiments are created with an absolute ``artifact_location``: Ray Train and Tune
  workers change their working directory, and a relative default (``./mlruns``) would
  scatter artifacts into trial folders (ray.md §4).
- Nesting is the tag ``mlflow.parentRunId``; child runs are created by the process that
  owns the parent and logged to by id from Ray workers.
- A local SQLite store is created (or migrated) under an exclusive lock on
  ``mlflow.db.lock``: two processes opening a fresh database at once would otherwise both
  run MLflow's schema migration, and the second fails (``duplicate column name``).
- Logged models carry their requirements (:func:`model_requirements`): left to infer them,
  MLflow loads every model in a fresh Python process (5-10 s a model, ~10 models a study).
- Experiments are *model-training* experiments: MLflow 3 opens an experiment without the
  tag ``mlflow.experimentKind`` on its GenAI overview (traces, prompts); with
  ``custom_model_development`` the UI lands on the runs table with their metrics.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "StageRun",
    "create_run",
    "ensure_experiment",
    "flatten_params",
    "model_requirements",
    "open_client",
    "stage_run",
    "tracking_uri",
]


#: The experiment tag MLflow 3's UI reads to choose an experiment's landing page, and its
#: value for traditional ML ("model training") experiments (the other: ``genai_development``).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file in the cwd."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def open_client(uri: str | None = None):
    """An ``MlflowClient`` on ``uri`` (:func:`tracking_uri`) whose store is ready: a local SQLite
    database is created or migrated by one process at a time (an exclusive ``flock`` on
    ``<database>.lock`` beside it), so studies started together on a fresh folder both work."""

    uri = tracking_uri(uri)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    database = Path(uri[len("sqlite:///") :])
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # the first query creates / migrates the schema
    return client


def _default_artifact_root(uri: str) -> str | None:
    """Local stores keep artifacts beside the database (``mlruns/`` next to ``mlflow.db``)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        return None  # the file store places artifacts itself, with absolute paths
    return None  # a tracking server decides (--default-artifact-root / proxied artifacts)


def ensure_experiment(name: str, *, uri: str | None = None) -> str:
    """The id of experiment ``name``, created if needed as a model-training experiment
    (:data:`EXPERIMENT_KIND`) with an absolute artifact location. An existing experiment
    without a kind (made by an older lolaray or by hand) is marked model-training too; one
    whose kind was chosen is left as it is."""
    uri = tracking_uri(uri)
    client = open_client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    root = _default_artifact_root(uri)
    try:
        return client.create_experiment(
            name,
            artifact_location=f"{root}/{name}" if root else None,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except Exception:  # another process created it between our lookup and create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config → flat ``{"a.b": "value"}`` strings (MLflow params are flat strings ≤ 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:6000]
    return flat


def create_run(
    experiment: str,
    *,
    run_name: str,
    uri: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    params: Mapping | None = None,
) -> str:
    """Create a run (nested under ``parent_run_id`` if given), log ``params``, and return its id.

    A nested run goes to its parent's experiment, whatever ``experiment`` says: the MLflow
    UI nests runs only within one experiment, so a sweep's ``--experiment`` holds its stages.
    The run is left open (status RUNNING) for a Ray worker to log into by id; close it with
    ``MlflowClient.set_terminated``.
    """

    uri = tracking_uri(uri)
    client = MlflowClient(uri)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        experiment_id = ensure_experiment(experiment, uri=uri)
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    if params:
        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), 100):  # the REST API takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


@dataclass(frozen=True)
class StageRun:
    """An open MLflow run of one stage execution: its id, a client and the tracking URI."""

    run_id: str
    client: Any
    uri: str


@contextmanager
def stage_run(experiment: str, *, run_name: str, uri: str | None = None, **kwargs) -> Iterator[StageRun]:
    """Create a stage's run (:func:`create_run` keywords), yield it, and close it:
    ``FINISHED`` when the block completes, ``FAILED`` when it raises (the error propagates)."""

    uri = tracking_uri(uri)
    run = StageRun(create_run(experiment, run_name=run_name, uri=uri, **kwargs), MlflowClient(uri), uri)
    try:
        yield run
    except BaseException:
        run.client.set_terminated(run.run_id, "FAILED")
        raise
    run.client.set_terminated(run.run_id, "FINISHED")


def model_requirements(packages: tuple[str, ...] = ("torch", "numpy", "einops", "lolaray")) -> list[str]:
    """The pip requirements of a logged lolaray network: the installed versions of what its
    pickle imports (a local version label such as ``+cpu`` dropped: PyPI's wheels carry none),
    given to ``log_model`` so that MLflow does not load the model in a fresh process to infer
    them. Packages that are not installed are left out."""
    found = []
    for name in packages:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(f"{name}=={version.split('+')[0]}")
    return found
