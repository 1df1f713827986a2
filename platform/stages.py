"""One stage runner for every stage of the chain: id → reuse → child run → build → publish.

Each stage (autoencoder, latent cache, emulators, evaluation) is a function of its config
and its upstream artifacts whose output is a content-addressed artifact
(:mod:`~lolaray.platform.artifacts`). :func:`run_stage` holds the sequence they share:

1. the artifact id hashes the stage, its config and its upstream ids;
2. a complete artifact with that id is returned as is (a resumed or repeated study);
3. otherwise the stage's MLflow child run opens (:func:`~lolaray.platform.tracking.stage_run`,
   nested under the study's run; ``FAILED`` if anything below raises);
4. the stage's ``build(run, id)`` does the work (train, encode, roll out) and returns a
   :class:`StageOutput`: manifest entries and a ``write(folder, manifest)`` that fills the
   staging folder — a local one on the driver, or one on the store when Ray workers on
   other nodes write into it;
5. the store publishes the folder with its manifest (which records the run id), last;
6. the run closes ``FINISHED`` and the published artifact is returned.

A stage supplies only its config, its upstream ids, its run's name, tags and parameters,
and its build function; where the output goes comes from a :class:`StageContext`, shared
by every stage of a study. Every stage's command line and both sweeps take the same
options for it (:func:`add_stage_arguments`, :meth:`StageContext.from_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from lolaray.platform.artifacts import Artifact, ArtifactStore, artifact_id
from lolaray.platform.tracking import StageRun, stage_run, tracking_uri

__all__ = ["ScalingSpec", "StageContext", "StageOutput", "add_stage_arguments", "run_stage"]

DEFAULT_STORE = "lolaray-store"


def add_stage_arguments(
    parser: argparse.ArgumentParser, *, dataset_default: str | None, scaling: str | None = None
) -> None:
    """The options every stage's command line and every sweep takes: the dataset, where
    Ray runs, where the artifacts and the MLflow record go, and the seed.

    :param dataset_default: ``--dataset``'s default (``None``: the sweep's profile decides).
    :param scaling: also the scaling options of a single stage: ``"workers"`` (a training
        stage: ``--workers``) or ``"actors"`` (a Ray Data stage: ``--actors``,
        ``--actor-gpus``); a sweep takes them from its profile.
    """
    parser.add_argument(
        "--dataset",
        default=dataset_default,
        help="embedded name (euler_quadrants[:preset]), a name of The Well with --data-root, or a folder"
        + (f" (default {dataset_default})" if dataset_default else " (default: the profile's)"),
    )
    parser.add_argument(
        "--data-root", default=None, help="base path (or hf:// URL) of a download of The Well"
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: an embedded local Ray; 'auto' on a cluster)"
    )
    parser.add_argument(
        "--mlflow-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.add_argument(
        "--store", default=DEFAULT_STORE, help="artifact store: a folder or a pyarrow.fs URI (s3://...)"
    )
    parser.add_argument("--experiment", default="lolaray", help="MLflow experiment name")
    parser.add_argument("--seed", type=int, default=0)
    if scaling == "workers":
        parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (0: in this process)")
    elif scaling == "actors":
        parser.add_argument("--actors", type=int, default=1, help="Ray Data actors")
        parser.add_argument(
            "--actor-gpus",
            type=float,
            default=None,
            help="GPUs per actor (default: 1 where the cluster has GPUs)",
        )
    elif scaling is not None:
        raise ValueError(f"scaling must be 'workers', 'actors' or None, got {scaling!r}")


@dataclass(frozen=True)
class ScalingSpec:
    """What a stage asks Ray for: training workers, and the actors of its Ray Data passes.

    None of it enters an artifact's id: the same stage on more workers is the same artifact.

    :param workers: Ray Train workers of a training stage (``0`` runs the loop in this
        process, for unit tests).
    :param use_gpu: one GPU per training worker (``None``: when the cluster has GPUs).
    :param cpus_per_worker: logical CPUs each training worker reserves from Ray; a CPU
        worker runs that many torch threads (a training in this process keeps the caller's).
    :param free_cores: a CPU worker runs more threads than it reserved when fewer trainings
        than cores run (:func:`~lolaray.trainers.hardware.worker_threads`). Off by default:
        torch's CPU kernels do not sum in the same order at every thread count, so a seeded
        stage would then give numbers that depend on how many trials happen to run beside
        it (measured: metrics differing at 1e-4 between a sweep and the same chain alone).
    :param threads: torch threads of each CPU training worker and rollout actor, decided
        by the study's schedule (:func:`~lolaray.sweeps.schedule.schedule_chains`); given,
        it overrides ``cpus_per_worker`` and ``free_cores`` (``None``: they decide).
    :param max_failures: worker-group restarts from the last checkpoint before giving up.
    :param actors: actors of the encoding and rollout passes (Ray Data actor pools).
    :param local_rollouts: an evaluation rolls out in the calling process instead of a pool
        of actors (what a study does on one machine: an actor's start costs 5-10 s per
        evaluation, and it would run on the same cores).
    :param actor_gpus: GPUs per such actor (``None``: 1 where the cluster has GPUs, else 0).
    """

    workers: int = 1
    use_gpu: bool | None = None
    cpus_per_worker: float = 1.0
    free_cores: bool = False
    max_failures: int = 2
    actors: int = 1
    actor_gpus: float | None = None
    threads: int | None = None
    local_rollouts: bool = False

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.actor_gpus is not None and self.actor_gpus < 0:
            raise ValueError(f"actor_gpus must be >= 0, got {self.actor_gpus}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def resolved_use_gpu(self) -> bool:
        """Whether training workers take a GPU: ``use_gpu``, else whether the cluster has one."""
        if self.use_gpu is not None:
            return self.use_gpu
        return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0

    def resolved_actor_gpus(self) -> float:
        """GPUs per Ray Data actor: ``actor_gpus`` when given, else 1 where the cluster (or,
        before Ray starts, this machine: Ray Data will start a local one) has GPUs, else 0."""
        if self.actor_gpus is not None:
            return float(self.actor_gpus)
        if not ray.is_initialized():
            return 1.0 if torch.cuda.is_available() else 0.0
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


@dataclass(frozen=True)
class StageContext:
    """Where a stage runs, where its artifact and its record go: everything a stage needs
    that is not part of what it computes (so none of it enters the artifact's id).

    :param store: the artifact store (a local folder or ``s3://…``).
    :param tracking_uri: the MLflow tracking URI (resolved: see
        :func:`~lolaray.platform.tracking.tracking_uri`).
    :param experiment: the MLflow experiment of the stage's run.
    :param parent_run_id: the study's run, under which the stage's run nests.
    :param scaling: the workers and actors the stage asks Ray for.
    """

    store: ArtifactStore
    tracking_uri: str
    experiment: str = "lolaray"
    parent_run_id: str | None = None
    scaling: ScalingSpec = ScalingSpec()

    def replace(self, **changes) -> StageContext:
        """This context with some fields changed (e.g. ``scaling=``, ``parent_run_id=``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StageContext:
        """The context of a command line built with :func:`add_stage_arguments`."""
        scaling = ScalingSpec(
            workers=getattr(args, "workers", 1),
            actors=getattr(args, "actors", 1),
            actor_gpus=getattr(args, "actor_gpus", None),
        )
        return cls.resolve(
            args.store,
            args.mlflow_uri,
            experiment=args.experiment,
            parent_run_id=getattr(args, "parent_run_id", None),
            scaling=scaling,
        )

    @classmethod
    def resolve(
        cls,
        store: ArtifactStore | str,
        mlflow_uri: str | None = None,
        *,
        experiment: str = "lolaray",
        parent_run_id: str | None = None,
        scaling: ScalingSpec | None = None,
    ) -> StageContext:
        """A context from a store path or URI and an MLflow URI (``None``: the default,
        :func:`~lolaray.platform.tracking.tracking_uri`)."""
        return cls(
            store=store if isinstance(store, ArtifactStore) else ArtifactStore(store),
            tracking_uri=tracking_uri(mlflow_uri),
            experiment=experiment,
            parent_run_id=parent_run_id,
            scaling=scaling or ScalingSpec(),
        )

    @classmethod
    def default(cls) -> StageContext:
        """The context of a stage called without one: the default store and MLflow URI."""
        return cls.resolve(DEFAULT_STORE)


@dataclass
class StageOutput:
    """What a stage's build step hands back to :func:`run_stage`.

    :param manifest: entries of the artifact's manifest (the run id is added).
    :param write: ``write(folder, manifest)`` fills the staging folder (a local
        :class:`~pathlib.Path`, or a URI on the store when ``on_store``) and may add to
        ``manifest`` before it is published.
    :param on_store: stage on the store itself (:meth:`ArtifactStore.build_on_store
        <lolaray.platform.artifacts.ArtifactStore.build_on_store>`), for files Ray workers write.
    """

    manifest: dict
    write: Callable[[Path | str, dict], None]
    on_store: bool = False


def run_stage(
    context: StageContext,
    stage: str,
    *,
    config: Mapping,
    upstream: Sequence[str] = (),
    run_name: str,
    build: Callable[[StageRun, str], StageOutput],
    tags: Mapping[str, str] | None = None,
    params: Mapping | None = None,
) -> Artifact:
    """Returns the artifact of ``stage`` for ``config`` and ``upstream``, building it only
    when the store has no complete one (module docstring, steps 1–6).

    :param config: what defines the output (hashed into the id, with ``upstream``).
    :param build: ``build(run, artifact_id) → StageOutput``, called inside the stage's run.
    :param tags, params: of the stage's MLflow run (``stage`` and ``artifact_id`` are added).
    """
    aid = artifact_id(stage, config, upstream)
    if (existing := context.store.get(stage, aid)) is not None:
        return existing
    with stage_run(
        context.experiment,
        run_name=run_name,
        uri=context.tracking_uri,
        parent_run_id=context.parent_run_id,
        tags={"stage": stage, "artifact_id": aid, **(tags or {})},
        params=dict(params or {}),
    ) as run:
        output = build(run, aid)
        manifest = {**output.manifest, "mlflow_run_id": run.run_id}
        staging = context.store.build_on_store if output.on_store else context.store.build
        with staging(stage, aid, manifest) as folder:
            output.write(folder, manifest)
    return context.store.get(stage, aid)
