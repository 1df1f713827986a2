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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lolaray.platform.artifacts import Artifact, ArtifactStore, artifact_id
from lolaray.platform.tracking import StageRun, stage_run, tracking_uri

__all__ = ["StageContext", "StageOutput", "add_stage_arguments", "run_stage"]

DEFAULT_STORE = "lolaray-store"


def add_stage_arguments(parser: argparse.ArgumentParser, *, dataset_default: str | None) -> None:
    """The options every stage's command line and every sweep takes: the dataset, where
    Ray runs, where the artifacts and the MLflow record go, and the seed.

    :param dataset_default: ``--dataset``'s default (``None``: the sweep's profile decides).
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


@dataclass(frozen=True)
class StageContext:
    """Where a stage's artifact and its record go.

    :param store: the artifact store (a local folder or ``s3://…``).
    :param tracking_uri: the MLflow tracking URI (resolved: see
        :func:`~lolaray.platform.tracking.tracking_uri`).
    :param experiment: the MLflow experiment of the stage's run.
    :param parent_run_id: the study's run, under which the stage's run nests.
    """

    store: ArtifactStore
    tracking_uri: str
    experiment: str = "lolaray"
    parent_run_id: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StageContext:
        """The context of a command line built with :func:`add_stage_arguments`."""
        return cls.resolve(args.store, args.mlflow_uri, experiment=args.experiment)

    @classmethod
    def resolve(
        cls,
        store: ArtifactStore | str,
        mlflow_uri: str | None = None,
        *,
        experiment: str = "lolaray",
        parent_run_id: str | None = None,
    ) -> StageContext:
        """A context from a stage's keyword arguments (a store path or URI, an MLflow URI or
        ``None`` for the default)."""
        return cls(
            store=store if isinstance(store, ArtifactStore) else ArtifactStore(store),
            tracking_uri=tracking_uri(mlflow_uri),
            experiment=experiment,
            parent_run_id=parent_run_id,
        )


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
