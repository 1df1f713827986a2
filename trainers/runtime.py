"""Where a training loop runs: in a Ray Train worker, or in the calling process.

:func:`~lolaray.trainers.loop.run_training` asks its runtime five things -- its rank and
the world size, its device, its share of a Ray Data dataset, the training state to resume
from, and to keep each epoch's checkpoint -- so the loop is one piece of code wherever it
runs:

- :class:`RayTrainRuntime`, inside a ``TorchTrainer`` worker (several workers, several
  nodes, GPUs; ``FailureConfig`` restarts a failed group from the newest checkpoint);
- :class:`InProcessRuntime`, in the calling process with no Ray Train at all: the unit
  tests, the benchmarks, and the trainings of a study on one machine, where a worker
  group's start (11-17 s on 2 cores, measured) would cost more than a smoke stage's work.

Both keep checkpoints the same way, in the run's folder of its storage
(:mod:`lolaray.trainers.checkpoints`): a rerun of an interrupted stage resumes from the
newest complete one whichever runtime wrote it. What the process runtime gives up is the
worker restart: a failure ends the stage, and the study's rerun resumes it.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from lolaray.trainers.checkpoints import (
    STATE_FILE,
    checkpoint_dir_name,
    complete_checkpoints,
    mark_complete,
    newest_checkpoint,
    read_state,
    run_folder,
)

__all__ = [
    "CHECKPOINTS_TO_KEEP",
    "InProcessRuntime",
    "RayTrainRuntime",
    "TrainingRuntime",
    "current_runtime",
    "in_process",
]

CHECKPOINTS_TO_KEEP = 2  # as the TorchTrainer's CheckpointConfig(num_to_keep=2)


class TrainingRuntime(Protocol):
    """What the training loop needs from where it runs."""

    rank: int
    world: int

    @property
    def device(self) -> torch.device:
        """Where the network and its batches go."""

    @property
    def node_id(self) -> str | None:
        """The Ray node this runs on (``None`` without Ray)."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` on :attr:`device`, wrapped for data parallelism when ``world > 1``."""

    def dataset(self, name: str):
        """This rank's share of the Ray Data dataset ``name`` (anything with ``iter_batches``)."""

    def state_to_resume(self, run_storage: str | None) -> dict | None:
        """The training state to continue from, or ``None`` for a fresh start."""

    def keep_checkpoint(
        self,
        state: dict | None,
        metrics: Mapping[str, Any],
        *,
        epoch: int,
        step: int,
        run_storage: str | None,
    ) -> None:
        """Persist the epoch's full training ``state`` (rank 0 passes it; other ranks
        ``None``) and report ``metrics``; returns once the checkpoint is safe."""


def _save_state(state: dict, folder: str) -> None:
    torch.save(state, os.path.join(folder, STATE_FILE))


class RayTrainRuntime:
    """The runtime of a ``TorchTrainer`` worker: rank, world and device from Ray Train."""

    def __init__(self):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()

    @property
    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    @property
    def node_id(self) -> str | None:
        return ray.get_runtime_context().get_node_id()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model) if self.world > 1 else model.to(self.device)

    def dataset(self, name: str):
        return ray.train.get_dataset_shard(name)

    def state_to_resume(self, run_storage: str | None) -> dict | None:
        """The newest complete checkpoint of the run -- Ray's, or a newer one marked complete
        in ``run_storage`` whose registration Ray lost (see :mod:`lolaray.trainers.checkpoints`).
        Rank 0 chooses and broadcasts its choice, so that every rank loads the same state."""
        ray_checkpoint = ray.train.get_checkpoint()
        if run_storage is None:
            if ray_checkpoint is None:
                return None
            with ray_checkpoint.as_directory() as folder:
                return read_state(pafs.LocalFileSystem(), folder)
        choice = [None]
        if self.rank == 0:
            chosen = newest_checkpoint(*run_folder(run_storage), ray_checkpoint=ray_checkpoint)
            choice = [None if chosen is None else chosen.path]
        if self.world > 1:
            dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return None
        filesystem, _ = run_folder(run_storage)
        return read_state(filesystem, choice[0])

    def keep_checkpoint(self, state, metrics, *, epoch, step, run_storage) -> None:
        if state is None:  # other ranks: the report only (Ray waits for every rank's)
            ray.train.report(dict(metrics))
            return
        folder = tempfile.mkdtemp(prefix="lolaray-ckpt-")
        _save_state(state, folder)
        ray.train.report(
            dict(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=checkpoint_dir_name(epoch),
        )
        if run_storage is not None:
            # report() returned: the checkpoint is uploaded. The marker, written last, is
            # what a restart trusts (trainers/checkpoints.py says why Ray's record can be lost).
            persisted = ray.train.get_checkpoint()
            mark_complete(persisted.filesystem, persisted.path, epoch=epoch, step=step)
        shutil.rmtree(folder, ignore_errors=True)


class InProcessRuntime:
    """The runtime of a training in the calling process: rank 0 of 1, no Ray Train.

    :param datasets: the Ray Data datasets by name (what ``TorchTrainer(datasets=...)``
        would shard; here the one rank reads them whole).
    :param device: where to train (default: CPU).

    Checkpoints go to the run's folder in ``run_storage`` (written, then marked complete,
    the oldest beyond :data:`CHECKPOINTS_TO_KEEP` removed); without a ``run_storage`` the
    newest state is kept in memory only (:attr:`last_state`).
    """

    rank = 0
    world = 1

    def __init__(self, datasets: Mapping[str, Any] | None = None, *, device: torch.device | str = "cpu"):
        self._datasets = dict(datasets or {})
        self._device = torch.device(device)
        self.last_state: dict | None = None

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def node_id(self) -> str | None:
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self._device)

    def dataset(self, name: str):
        if name not in self._datasets:
            raise KeyError(
                f"no dataset {name!r} was given to this training (given: {sorted(self._datasets)})"
            )
        return self._datasets[name]

    def state_to_resume(self, run_storage: str | None) -> dict | None:
        if run_storage is None:
            return self.last_state
        checkpoints = complete_checkpoints(*run_folder(run_storage))
        return checkpoints[-1].read_state() if checkpoints else None

    def keep_checkpoint(self, state, metrics, *, epoch, step, run_storage) -> None:
        self.last_state = state
        if run_storage is None:
            return
        filesystem, run_path = run_folder(run_storage)
        folder = f"{run_path}/{checkpoint_dir_name(epoch)}"
        filesystem.create_dir(folder, recursive=True)
        payload = io.BytesIO()
        torch.save(state, payload)
        with filesystem.open_output_stream(f"{folder}/{STATE_FILE}") as out:
            out.write(payload.getbuffer())
        mark_complete(filesystem, folder, epoch=epoch, step=step)
        for old in complete_checkpoints(filesystem, run_path)[:-CHECKPOINTS_TO_KEEP]:
            filesystem.delete_dir(old.path)


_IN_PROCESS: contextvars.ContextVar[InProcessRuntime | None] = contextvars.ContextVar(
    "lolaray_in_process_runtime", default=None
)


@contextlib.contextmanager
def in_process(runtime: InProcessRuntime) -> Iterator[InProcessRuntime]:
    """Within this block, :func:`current_runtime` is ``runtime`` (a training called here
    runs in this process)."""
    token = _IN_PROCESS.set(runtime)
    try:
        yield runtime
    finally:
        _IN_PROCESS.reset(token)


def current_runtime() -> TrainingRuntime:
    """The runtime of the training running here: the one :func:`in_process` set, else this
    Ray Train worker's."""
    runtime = _IN_PROCESS.get()
    return runtime if runtime is not None else RayTrainRuntime()
