"""One training stage for every network: fit, trained network, snapshot, MLflow model, manifest.

An autoencoder, a latent emulator and the pixel solver are each trained by
:func:`train_stage` -- the stage's artifact id from its config's
:meth:`~lolaray.trainers.loop.StageConfig.identity` and its upstream, one fit
(:func:`~lolaray.trainers.launch.fit_stage`) of :func:`task_worker` around the
network's :class:`~lolaray.trainers.loop.TrainingTask`, the trained weights loaded into a
fresh network, its snapshot and MLflow model written, and the training's record
(:class:`TrainingRecord`) in the manifest. A trainer module supplies only what differs:
its task, how to build the network, how to snapshot it, and its manifest fields.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.models import infer_signature
from torch import nn

from lolaray.platform.artifacts import Artifact
from lolaray.platform.stages import StageContext, StageOutput, StageRun, run_stage
from lolaray.platform.tracking import model_requirements
from lolaray.trainers.launch import fit_stage
from lolaray.trainers.loop import StageConfig, TrainingTask, run_training, trained_weights

__all__ = ["MlflowModel", "TrainingRecord", "task_worker", "train_stage"]


@dataclass(frozen=True)
class TrainingRecord:
    """What every trained artifact's manifest says of its training (written and read here).

    :param optimizer_steps: steps taken; ``skipped_steps``: non-finite steps skipped.
    :param resumed_from_step: where the last restart resumed (``None``: it ran through).
    :param resumed_from_steps: every restart's step, oldest first.
    :param train_node_id: the Ray node rank 0 trained on (``None`` without Ray).
    """

    optimizer_steps: int
    skipped_steps: int
    resumed_from_step: int | None = None
    resumed_from_steps: list[int] = field(default_factory=list)
    train_node_id: str | None = None

    @classmethod
    def from_training(cls, summary: Mapping[str, Any], state: Mapping[str, Any]) -> TrainingRecord:
        """From a fit's summary (rank 0's) and its final training state."""
        return cls(
            optimizer_steps=int(state["step"]),
            skipped_steps=int(state["skipped_total"]),
            resumed_from_step=summary.get("resumed_from_step"),
            resumed_from_steps=list(state.get("resumes", [])),
            train_node_id=summary.get("node_id"),
        )

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> TrainingRecord:
        """The record in a trained artifact's manifest."""
        return cls(**{key: manifest[key] for key in cls.__dataclass_fields__ if key in manifest})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def task_worker(task_factory: Callable[[dict], TrainingTask], cfg: dict) -> dict:
    """The worker function of every training stage (a Ray Train worker's, or this
    process's): ``cfg["threads"]`` torch threads on CPU, the task built here (HDF5 handles
    are not pickled), then :func:`~lolaray.trainers.loop.run_training`. Bind the factory
    with :func:`functools.partial` (a module-level class pickles by reference)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(cfg["threads"])
    task = task_factory(cfg)
    return run_training(
        task,
        task.config.loop,
        mlflow_run_id=cfg.get("mlflow_run_id"),
        tracking_uri=cfg.get("tracking_uri"),
        run_storage=cfg.get("run_storage"),
        runtime=task.runtime,
    )


@dataclass(frozen=True)
class MlflowModel:
    """How a trained network is logged as an MLflow PyTorch model (pickled module, so that
    methods such as ``encode``/``decode`` survive): its ``name`` in the run and an example
    input and output for the signature (a signature, not an input example: MLflow would try
    to validate a serving example)."""

    name: str
    example_input: torch.Tensor
    example_output: torch.Tensor


def _log_mlflow_model(network: nn.Module, model: MlflowModel, run_id: str, uri: str) -> str:
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        logged = mlflow.pytorch.log_model(
            network,
            name=model.name,
            signature=infer_signature(model.example_input.numpy(), model.example_output.numpy()),
            serialization_format="pickle",
            pip_requirements=model_requirements(),
        )
    return logged.model_uri


def train_stage(
    context: StageContext,
    stage: str,
    *,
    config: StageConfig,
    identity: Mapping[str, Any],
    task: Callable[[dict], TrainingTask],
    worker_config: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    network: Callable[[dict], nn.Module],
    snapshot: Callable[[Path, nn.Module], None],
    manifest: Mapping[str, Any],
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    upstream: list[str] | tuple[str, ...] = (),
    datasets: Callable[[], dict] | None = None,
    mlflow_model: Callable[[nn.Module], MlflowModel] | None = None,
    before_fit: Callable[[StageRun], None] | None = None,
) -> Artifact:
    """Train (or reuse) the network of ``config`` as an artifact of ``stage``.

    :param identity: what besides the config the id hashes (the dataset's fingerprint).
    :param task: builds the :class:`~lolaray.trainers.loop.TrainingTask` from the worker's
        config (module-level: it is pickled to the workers).
    :param worker_config: what the task reads (the stage adds the config, the MLflow run
        and the run's storage), or a function that builds it when the stage trains.
    :param network: the trained network from the final weights (``trained_weights``),
        in eval mode.
    :param snapshot: writes the network's snapshot into the artifact's folder.
    :param manifest: the stage's own manifest fields (the training record joins them).
    :param datasets: the Ray Data datasets the workers share (``TorchTrainer(datasets=...)``),
        built only when the stage trains (reading a cache is a Ray Data job).
    :param mlflow_model: how to log the network as an MLflow model (``None``: not logged).
    :param before_fit: called with the stage's run before the fit (e.g. to log a metric).
    """

    def build(run: StageRun, aid: str) -> StageOutput:
        if before_fit is not None:
            before_fit(run)
        summary, state = fit_stage(
            functools.partial(task_worker, task),
            {
                **(worker_config() if callable(worker_config) else worker_config),
                "config": config.to_dict(),
                "mlflow_run_id": run.run_id,
                "tracking_uri": run.uri,
            },
            name=aid,
            storage_path=f"{context.store.root}/_train_runs",
            scaling=context.scaling,
            datasets=datasets() if datasets is not None else None,
        )
        trained = network(trained_weights(state))

        def write(folder: Path, out: dict) -> None:
            snapshot(folder, trained)
            (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
            if mlflow_model is not None:
                out["mlflow_model_uri"] = _log_mlflow_model(
                    trained, mlflow_model(trained), run.run_id, run.uri
                )

        record = TrainingRecord.from_training(summary, state)
        return StageOutput(manifest={**manifest, **record.to_dict()}, write=write)

    return run_stage(
        context,
        stage,
        config={"config": config.identity(), **identity},
        upstream=list(upstream),
        run_name=run_name,
        build=build,
        tags=dict(tags),
        params={**config.to_dict(), **params, "workers": context.scaling.workers},
    )
