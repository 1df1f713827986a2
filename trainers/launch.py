"""Launching a training stage: one ``TorchTrainer`` fit with resume, retries and MLflow.

Every training stage (autoencoder, diffusion, neural solver) runs the same way:

1. the driver creates the stage's MLflow run (nested under the sweep's run, if any);
2. a ``TorchTrainer`` named after the stage's artifact id fits ``worker_fn`` on
   ``workers`` Ray Train workers, or, with ``workers=0``, this process runs it with no Ray
   Train at all (:class:`~lolaray.trainers.runtime.InProcessRuntime`: the unit tests, and
   a study's trainings on one machine, where a worker group's start costs 11-17 s). A
   stable name means a rerun of an interrupted stage resumes from its last checkpoint, and
   ``FailureConfig`` restarts a failed worker group from it;
3. the driver reads rank 0's summary and the final checkpoint's full training state, from
   the run's folder whichever way it ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from lolaray.platform.session import TRAIN_DRIVER_RESOURCE
from lolaray.platform.stages import ScalingSpec
from lolaray.trainers.checkpoints import newest_checkpoint, run_folder, run_uri
from lolaray.trainers.hardware import compile_enabled, process_group_settings, worker_threads
from lolaray.trainers.loop import NonFiniteTrainingError
from lolaray.trainers.runtime import InProcessRuntime, in_process

__all__ = ["fit_stage"]


def _running_trainings() -> int:
    """Trainings running at once on this Ray: the Tune trial drivers holding the
    ``train_driver`` resource (each runs one stage at a time), at least 1 (this one)."""
    if not ray.is_initialized():
        return 1
    total = ray.cluster_resources().get(TRAIN_DRIVER_RESOURCE, 0)
    free = ray.available_resources().get(TRAIN_DRIVER_RESOURCE, 0)
    return max(1, round(total - free))


def fit_stage(
    worker_fn,
    worker_config: dict[str, Any],
    *,
    name: str,
    storage_path: str,
    scaling: ScalingSpec,
    datasets: dict | None = None,
) -> tuple[dict, dict]:
    """Fit ``worker_fn(worker_config)`` as the training run called ``name``: a ``TorchTrainer``
    of ``scaling.workers`` workers, or this process when ``scaling.workers == 0``.

    ``datasets`` (Ray Data) are split across the workers (the runtime's ``dataset(name)``).

    :returns: ``(summary, state)``: rank 0's return value and the final full training state.
    :raises NonFiniteTrainingError: training stopped on too many non-finite steps.
    :raises ray.train.TrainingFailedError: workers kept failing after ``max_failures`` restarts.
    """
    # In this process it keeps the caller's threads (restored afterwards) unless the study's
    # schedule sets them; a worker takes its reserved CPUs, or the free cores when asked.
    if scaling.threads is not None:  # the study's schedule (sweeps/schedule.py)
        threads = scaling.threads
    elif scaling.workers == 0:
        threads = torch.get_num_threads()
    elif scaling.free_cores:  # a worker training alone takes every core; trials side by side share
        threads = worker_threads(
            scaling.cpus_per_worker,
            cores=os.cpu_count() or 1,
            concurrent_workers=_running_trainings() * scaling.workers,
        )
    else:
        threads = max(1, int(scaling.cpus_per_worker))
    run = run_uri(storage_path, name)
    worker_config = {**worker_config, "threads": threads, "run_storage": run}
    if "://" not in storage_path:
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    ray_checkpoint = None
    if scaling.workers == 0:
        summary = _fit_in_process(worker_fn, worker_config, datasets=datasets)
    else:
        summary, ray_checkpoint = _fit_with_ray_train(
            worker_fn, worker_config, name=name, storage_path=storage_path, scaling=scaling, datasets=datasets
        )
    if summary.get("status") == "nonfinite":
        raise NonFiniteTrainingError(summary["message"])
    # The newest marked checkpoint, or Ray's where rank 0 died before marking it.
    final = newest_checkpoint(*run_folder(run), ray_checkpoint=ray_checkpoint)
    if final is None:
        raise RuntimeError(f"training run {name} produced no checkpoint (storage: {storage_path})")
    return summary, final.read_state()


def _fit_in_process(worker_fn, worker_config: dict, *, datasets: dict | None) -> dict:
    """``worker_fn(worker_config)`` in this process, as rank 0 of 1; the caller's torch
    threads are restored afterwards (the worker function sets ``threads``)."""
    caller_threads = torch.get_num_threads()
    try:
        with in_process(InProcessRuntime(datasets)):
            return worker_fn(worker_config) or {}
    finally:
        torch.set_num_threads(caller_threads)


def _fit_with_ray_train(
    worker_fn,
    worker_config: dict,
    *,
    name: str,
    storage_path: str,
    scaling: ScalingSpec,
    datasets: dict | None,
) -> tuple[dict, Any]:
    """``worker_fn(worker_config)`` on ``scaling.workers`` Ray Train workers: rank 0's summary
    and the newest checkpoint Ray registered."""
    # Rows reach the workers in a fixed order, so that a seeded stage is reproducible.
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    use_gpu = scaling.resolved_use_gpu()
    group = process_group_settings(use_gpu=use_gpu, compiled=use_gpu and compile_enabled("cuda"))
    trainer = TorchTrainer(
        worker_fn,
        train_loop_config=worker_config,
        torch_config=TorchConfig(timeout_s=group.timeout_s),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ingest),
        scaling_config=ScalingConfig(
            num_workers=scaling.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": group.env_vars} if group.env_vars else None,
        ),
    )
    result = trainer.fit()
    return result.return_value or {}, result.checkpoint
