"""The checkpoints of a training run in its storage, and the one a restart resumes from.

Why the platform decides this, not Ray Train alone. ``ray.train.report`` on each worker
uploads the checkpoint (synchronously, on rank 0) and then puts a small report into that
worker's in-process result queue. Ray Train's controller drains those queues by polling
every worker once per health-check interval, and registers a checkpoint only once it holds
the report of *every* rank for that round. A worker that dies after its ``report``
returned but before the controller's next poll takes its queued report down with it: the
checkpoint sits complete in storage, yet is never registered, so the restarted group's
``ray.train.get_checkpoint()`` returns the one before it (or ``None``) and an epoch of
training is redone. A lost node shortly after a checkpoint loses exactly that epoch.

So rank 0 marks each checkpoint complete itself, in the run's storage, right after
``report`` returned (the upload is done by then): a small JSON file written *last*, its
presence the only test of completeness. On start, and for the final state the driver
reads, the platform takes the newest marked checkpoint of the run, or Ray's own if that
is newer (rank 0 may die between ``report`` and the marker; Ray registered it all the
same). Folders are ``epoch_00000``, ``epoch_00001``, … under the run's folder
``<storage_path>/<run name>``, on any ``pyarrow.fs`` filesystem (a local folder, S3).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch

__all__ = [
    "COMPLETE_MARKER",
    "STATE_FILE",
    "StoredCheckpoint",
    "checkpoint_dir_name",
    "complete_checkpoints",
    "mark_complete",
    "newest_checkpoint",
    "newest_complete_checkpoint",
    "read_state",
    "run_folder",
    "run_uri",
]

STATE_FILE = "state.pt"
COMPLETE_MARKER = "lolaray-complete.json"
_DIR_PATTERN = re.compile(r"^epoch_(\d+)$")


def checkpoint_dir_name(epoch: int) -> str:
    """The checkpoint folder's name for ``epoch`` (sorts as the epochs do)."""
    return f"epoch_{epoch:05d}"


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint folder in a run's storage.

    :param path: the folder, a path on ``filesystem`` (no URI scheme).
    :param epoch: the epoch it closed; ``step``: optimizer steps taken by then (``None``
        where only Ray's record of the checkpoint says it exists, not a marker).
    """

    filesystem: pafs.FileSystem
    path: str
    epoch: int
    step: int | None

    def read_state(self) -> dict:
        """The full training state in this checkpoint (see :func:`read_state`)."""
        return read_state(self.filesystem, self.path)


def run_uri(storage_path: str, name: str) -> str:
    """The folder (absolute) or URI of the run ``name`` under ``storage_path``, where Ray Train
    persists its checkpoints (``RunConfig(storage_path=..., name=...)``). Resolved here, in the
    driver: a relative folder would mean another place in a worker's working directory."""
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())
    return f"{storage_path.rstrip('/')}/{name}"


def run_folder(run: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of the run at ``run`` (see :func:`run_uri`) and its folder's path on it."""
    return pafs.FileSystem.from_uri(run)


def mark_complete(filesystem: pafs.FileSystem, folder: str, *, epoch: int, step: int) -> None:
    """Write the marker that says ``folder`` holds a complete checkpoint. Call it only once
    every other file of the checkpoint is in place: it is the last one written."""
    with filesystem.open_output_stream(f"{folder}/{COMPLETE_MARKER}") as out:
        out.write(json.dumps({"epoch": epoch, "step": step}).encode())


def complete_checkpoints(filesystem: pafs.FileSystem, run_path: str) -> list[StoredCheckpoint]:
    """The marked checkpoints of the run in ``run_path``, oldest first ([] if there is none)."""
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    found = []
    for entry in entries:
        match = _DIR_PATTERN.match(entry.base_name)
        if entry.type != pafs.FileType.Directory or match is None:
            continue
        try:
            with filesystem.open_input_stream(f"{entry.path}/{COMPLETE_MARKER}") as marker:
                record = json.loads(marker.read())
        except (FileNotFoundError, OSError, ValueError):
            continue  # no marker (or one cut short by a death while writing it): incomplete
        if record.get("epoch") != int(match.group(1)):
            continue
        found.append(StoredCheckpoint(filesystem, entry.path, int(record["epoch"]), int(record["step"])))
    return sorted(found, key=lambda c: c.epoch)


def newest_complete_checkpoint(filesystem: pafs.FileSystem, run_path: str) -> StoredCheckpoint | None:
    """The newest marked checkpoint of the run in ``run_path``, or ``None``."""
    checkpoints = complete_checkpoints(filesystem, run_path)
    return checkpoints[-1] if checkpoints else None


def newest_checkpoint(
    filesystem: pafs.FileSystem, run_path: str, *, ray_checkpoint=None
) -> StoredCheckpoint | None:
    """The checkpoint a restart of the run in ``run_path`` resumes from: the newest marked
    one, or ``ray_checkpoint`` (what ``ray.train.get_checkpoint()`` returned, a
    ``ray.train.Checkpoint`` in the same storage) where that is newer; ``None`` if neither.

    Ray's checkpoint can be newer than every marker only when rank 0 died between
    ``report`` and :func:`mark_complete`: Ray registers a checkpoint only once uploaded.
    """
    newest = newest_complete_checkpoint(filesystem, run_path)
    if ray_checkpoint is None:
        return newest
    match = _DIR_PATTERN.match(ray_checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(
            f"Ray's checkpoint {ray_checkpoint.path} is not an epoch_<n> folder of this platform's"
        )
    epoch = int(match.group(1))
    if newest is not None and newest.epoch >= epoch:
        return newest
    return StoredCheckpoint(ray_checkpoint.filesystem, ray_checkpoint.path, epoch, step=None)


def read_state(filesystem: pafs.FileSystem, folder: str) -> dict:
    """The training state ``torch.save``-d as ``STATE_FILE`` in ``folder`` (tensors on CPU)."""
    with filesystem.open_input_stream(f"{folder}/{STATE_FILE}") as stream:
        payload = stream.read()
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
