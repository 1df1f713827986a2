"""Snapshots of trained networks: the files of an artifact that rebuild its network.

A snapshot holds what is needed to rebuild the network and nothing about training (the
resumable training state is in the run's checkpoints, :mod:`~lolaray.trainers.checkpoints`):

- autoencoder artifacts: ``autoencoder.pt`` (``{"kwargs", "state_dict"}``: the
  :class:`~lolaray.trainers.autoencoder.AutoEncoder` constructor keywords and weights) and
  ``standardizer.json`` (the standardization the network was trained with);
- emulator artifacts: ``emulator.pt`` (``{"config", "state_shape", "theta_dim",
  "theta_standardizer", "state_dict"}``, rebuilt by
  :func:`~lolaray.trainers.emulators.build_emulator`).

Snapshots are written into a stage's staging folder (:meth:`ArtifactStore.build
<lolaray.platform.artifacts.ArtifactStore.build>`) and read back from wherever the store
keeps the artifact — a local folder or any ``pyarrow.fs`` URI (``s3://…``) — so that
evaluation, the latent cache and the benchmarks load networks without importing the
training stages, on any node.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from lolaray.platform.artifacts import Artifact, filesystem_for
from lolaray.platform.preprocessing import Standardizer, ThetaStandardizer
from lolaray.trainers.autoencoder import AutoEncoder
from lolaray.trainers.emulators import EmulatorConfig, build_emulator

__all__ = [
    "AUTOENCODER_FILE",
    "EMULATOR_FILE",
    "STANDARDIZER_FILE",
    "load_autoencoder",
    "load_emulator",
    "read_artifact_file",
    "save_autoencoder",
    "save_emulator",
]

AUTOENCODER_FILE = "autoencoder.pt"
STANDARDIZER_FILE = "standardizer.json"
EMULATOR_FILE = "emulator.pt"


def read_artifact_file(artifact: Artifact | str | os.PathLike, name: str) -> bytes:
    """The bytes of file ``name`` of an artifact, given as an :class:`Artifact` or its URI
    (a local folder or a ``pyarrow.fs`` URI such as ``s3://bucket/store/autoencoder/<id>``)."""
    uri = str(artifact.uri if isinstance(artifact, Artifact) else artifact)
    fs, folder = filesystem_for(uri)
    path = f"{folder.rstrip('/')}/{name}"
    try:
        with fs.open_input_stream(path) as f:
            return f.readall()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"artifact {uri} has no file {name!r}") from error


def _torch_load(artifact: Artifact | str | os.PathLike, name: str) -> dict:
    return torch.load(io.BytesIO(read_artifact_file(artifact, name)), map_location="cpu", weights_only=False)


def save_autoencoder(folder: Path, model: AutoEncoder, kwargs: dict, standardizer: Standardizer) -> None:
    """Writes an autoencoder's snapshot into a (local staging) folder.

    :param kwargs: the keywords that rebuild ``model`` (``AutoEncoder(**kwargs)``).
    """
    torch.save({"kwargs": kwargs, "state_dict": model.state_dict()}, Path(folder) / AUTOENCODER_FILE)
    (Path(folder) / STANDARDIZER_FILE).write_text(json.dumps(standardizer.to_dict(), indent=2))


def load_autoencoder(artifact: Artifact | str | os.PathLike) -> tuple[AutoEncoder, Standardizer]:
    """The trained network (eval mode, CPU) and the standardization it was trained with."""
    snapshot = _torch_load(artifact, AUTOENCODER_FILE)
    model = AutoEncoder(**snapshot["kwargs"])
    model.load_state_dict(snapshot["state_dict"])
    standardizer = Standardizer.from_dict(json.loads(read_artifact_file(artifact, STANDARDIZER_FILE)))
    return model.eval(), standardizer


def save_emulator(
    folder: Path,
    emulator: nn.Module,
    config: EmulatorConfig,
    state_shape: tuple[int, ...],
    theta_dim: int,
    theta_standardizer: ThetaStandardizer | None = None,
) -> None:
    """Writes an emulator's snapshot into a (local staging) folder.

    :param state_shape: ``(C, *spatial)`` of one state in the emulator's space.
    :param theta_dim: number of entries of the θ it is conditioned on.
    :param theta_standardizer: how its label embedding standardizes θ (also in its weights).
    """
    snapshot = {
        "config": config.to_dict(),
        "state_shape": list(state_shape),
        "theta_dim": int(theta_dim),
        "theta_standardizer": None if theta_standardizer is None else theta_standardizer.to_dict(),
        "state_dict": emulator.state_dict(),
    }
    torch.save(snapshot, Path(folder) / EMULATOR_FILE)


#: Buffers of the label embedding that snapshots written before θ was standardized lack.
_LABEL_BUFFERS = ("label_embedding.theta_log", "label_embedding.theta_mean", "label_embedding.theta_std")


def load_emulator(artifact: Artifact | str | os.PathLike) -> tuple[nn.Module, EmulatorConfig]:
    """The trained denoiser or solver (eval mode, CPU) and its config."""
    snapshot = _torch_load(artifact, EMULATOR_FILE)
    config = EmulatorConfig.from_dict(snapshot["config"])
    theta = snapshot.get("theta_standardizer")
    emulator = build_emulator(
        config,
        tuple(snapshot["state_shape"]),
        snapshot["theta_dim"],
        None if theta is None else ThetaStandardizer.from_dict(theta),
    )
    # An older snapshot conditioned on raw θ has no standardization buffers: the identity
    # they are built with is what it was trained with.
    missing, unexpected = emulator.load_state_dict(snapshot["state_dict"], strict=False)
    if unexpected or any(not key.endswith(_LABEL_BUFFERS) for key in missing):
        raise RuntimeError(
            f"emulator snapshot of {artifact}: missing keys {missing}, unexpected keys {unexpected}"
        )
    return emulator.eval(), config
