"""Train an autoencoder with Ray Train: the stage ``train_autoencoder(config, dataset) -> Artifact``.

Reads top to bottom: the config (validated on the driver, before any worker starts), the
task each worker runs (single augmented states of the train split, sharded across
workers; the VMSE loss), the stage (artifact id → MLflow run → ``TorchTrainer`` fit →
network snapshot + MLflow model → published artifact), and a command line::

    python -m lolaray.trainers.autoencoder_trainer --dataset euler_quadrants:smoke \\
        --preset smoke --latent-channels 4 --epochs 3 --workers 2

The artifact holds ``autoencoder.pt`` (constructor keywords + weights: everything needed
to rebuild the network, nothing about training), ``standardizer.json`` and
``config.json``; its manifest names the MLflow model, the compression rate and the
latent shape.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from lolaray.platform.artifacts import Artifact
from lolaray.platform.augmentation import augmentation_setting
from lolaray.platform.data import DatasetInfo, WellWindows, open_dataset, standardizer_for
from lolaray.platform.preprocessing import Standardizer
from lolaray.platform.session import start_ray
from lolaray.platform.stages import StageContext, add_stage_arguments
from lolaray.trainers.autoencoder import (
    AUTOENCODER_PRESETS,
    AutoEncoder,
    preset_for_dims,
    spatial_factor,
    vmse_loss,
)
from lolaray.trainers.loop import LoopConfig, StageConfig, endless_batches
from lolaray.trainers.optim import OPTIMIZERS
from lolaray.trainers.runtime import current_runtime
from lolaray.trainers.snapshots import save_autoencoder
from lolaray.trainers.training_stage import MlflowModel, train_stage

__all__ = ["AutoencoderConfig", "latent_geometry", "periodic_axes", "train_autoencoder"]

STAGE = "autoencoder"


@dataclass(frozen=True)
class AutoencoderConfig(StageConfig):
    r"""Everything that defines an autoencoder training (its artifact id hashes all of it).

    :param preset: a key of :data:`~lolaray.trainers.autoencoder.AUTOENCODER_PRESETS`.
    :param latent_channels: ``C_lat``; with the preset's factor ``r`` it sets the compression rate.
    :param architecture: overrides of the preset's keywords (e.g. ``{"identity_init": False}``).
    :param loss_root: the reference code's sqrt-VMSE instead of the paper's VMSE.
    :param loss_eps: the :math:`\epsilon` of the VMSE :math:`\mathrm{MSE}/(\mathrm{Var}+\epsilon)`
        (paper: 1e-2). Each state and field is weighted by :math:`1/(\mathrm{Var}+\epsilon)`: on data
        with near-uniform states (the embedded set's open-boundary trajectories late in time,
        standardized variances down to 3e-4) those weights span ~100x at 1e-2 and a few
        states dominate loss and gradient; a larger value evens them out (issue 15).
    :param batch_size: states per worker per step. ``valid_states``: validation states per epoch.
    :param augment: the augmentations of training states: ``True`` random flips, permutations
        (square grids) and periodic rolls, ``False`` none, or a subset's names (an
        :func:`~lolaray.platform.augmentation.augmentation_setting`; the dataset spec's in a study).
    :param loop: optimizer, schedule, epochs (the paper: PSGD, lr 1e-5, cosine, clip 1).
    """

    preset: str = "demo"
    latent_channels: int = 16
    architecture: dict = field(default_factory=dict)
    loss_root: bool = False
    loss_eps: float = 1e-2
    batch_size: int = 16
    valid_states: int = 64
    augment: bool | tuple[str, ...] = True
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(optimizer="psgd", lr=1e-4))

    def __post_init__(self):
        # One spelling per set of augmentations (a list after a JSON round trip), one artifact id.
        object.__setattr__(self, "augment", augmentation_setting(self.augment))

    def reconstruction_loss(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The training loss of a reconstruction ``x_hat`` of ``x`` ``(B, C, *spatial)``: the
        VMSE (or its root, ``loss_root``) at this config's ``loss_eps``, in fp32."""
        return vmse_loss(x_hat.float(), x, eps=self.loss_eps, root=self.loss_root)

    def model_kwargs(self, info: DatasetInfo) -> dict:
        """The :class:`~lolaray.trainers.autoencoder.AutoEncoder` keywords on ``info``'s states
        (what its snapshot records). On a grid the factor ``r`` does not divide they add
        ``pixel_grid`` and ``grid_padding`` (``circular`` on an axis periodic in every file,
        else ``reflect``: :func:`periodic_axes`); on one it divides they are what they were
        before grids were padded, so such snapshots are unchanged."""
        kwargs = {
            "spatial_dims": info.n_spatial_dims,  # unless the preset is 2-D or 3-D by design
            **AUTOENCODER_PRESETS.get(self.preset, {}),
            **self.architecture,
            "pixel_channels": info.n_fields,
            "latent_channels": self.latent_channels,
            **({"known_channels": info.n_known} if info.n_known else {}),
        }
        levels = kwargs.get("hidden_channels", ())  # none: an unknown preset, refused by validate
        r = spatial_factor(levels) if levels else 1
        if any(size % r for size in info.resolution):
            kwargs.setdefault("pixel_grid", tuple(info.resolution))
            kwargs.setdefault(
                "grid_padding",
                tuple("circular" if periodic else "reflect" for periodic in periodic_axes(info)),
            )
        return kwargs

    def validate(self, info: DatasetInfo) -> None:
        """Clear errors for a bad config, before any worker starts."""
        if self.preset not in AUTOENCODER_PRESETS:
            raise ValueError(
                f"unknown autoencoder preset {self.preset!r}; choose one of {sorted(AUTOENCODER_PRESETS)}"
            )
        if not isinstance(self.latent_channels, int) or self.latent_channels <= 0:
            raise ValueError(f"latent_channels must be a positive integer, got {self.latent_channels!r}")
        if self.loop.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.loop.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        if not self.loss_eps > 0:
            raise ValueError(f"loss_eps must be positive, got {self.loss_eps!r}")
        if self.batch_size < 1 or self.valid_states < 1:
            raise ValueError("batch_size and valid_states must be >= 1")
        # No check that r divides the grid: the network pads one it does not (model_kwargs).
        dims = self.model_kwargs(info)["spatial_dims"]
        if dims != info.n_spatial_dims:
            counterpart = preset_for_dims(self.preset, info.n_spatial_dims)
            hint = f"; use preset {counterpart!r}" if counterpart else ""
            raise ValueError(
                f"preset {self.preset!r} is {dims}-D but {info.name} is {info.n_spatial_dims}-D{hint}"
            )


def periodic_axes(info: DatasetInfo) -> tuple[bool, ...]:
    """Per spatial axis, whether it is periodic in every file of every split
    (:meth:`~lolaray.platform.data.DatasetInfo.boundary_codes`): only then may padding wrap
    around it."""
    per_file = [codes for split in info.splits for codes in info.boundary_codes(split)]
    return tuple(
        bool(per_file) and all(codes[axis] == "PERIODIC" for codes in per_file)
        for axis in range(info.n_spatial_dims)
    )


def latent_geometry(config: AutoencoderConfig, info: DatasetInfo) -> tuple[tuple[int, ...], float]:
    """The latent state's shape ``(C_lat + K, *⌈spatial/r⌉)`` (``K`` known channels, pooled:
    given, not compressed) and the compression rate ``numel(x) / numel(z)`` of the code
    ``z`` ``(C_lat, *⌈spatial/r⌉)``: on a grid ``r`` does not divide (padded before encoding)
    the latent grid rounds up and the rate need not be an integer.

    Read from the network itself, built and run on the meta device (no memory, no FLOPs):
    the shape the stages will see, whatever the architecture does to the grid."""
    with torch.device("meta"):
        network = AutoEncoder(**config.model_kwargs(info))
        known = torch.empty(1, info.n_known, *info.resolution) if info.n_known else None
        latent = tuple(network.encode(torch.empty(1, *info.state_shape), known).shape[1:])
    rate = math.prod(info.state_shape) / (config.latent_channels * math.prod(latent[1:]))
    return latent, rate


class AutoencoderTask:
    """Single states of the train split, augmented, sharded across workers; VMSE loss."""

    def __init__(self, cfg: dict):
        self.config = AutoencoderConfig.from_dict(cfg["config"])
        self.info = open_dataset(cfg["dataset_root"])
        self.standardizer = Standardizer.from_dict(cfg["standardizer"])

        self.runtime = current_runtime()
        self.rank, self.world = self.runtime.rank, self.runtime.world

    def build_model(self) -> AutoEncoder:
        return AutoEncoder(**self.config.model_kwargs(self.info))

    def train_batches(self, epoch: int) -> Iterator[dict]:
        states = WellWindows(
            self.info, "train", length=1, standardizer=self.standardizer, augment=self.config.augment
        )
        return endless_batches(
            states,
            batch_size=self.config.batch_size,
            epoch=epoch,
            seed=self.config.loop.seed,
            rank=self.rank,
            world=self.world,
        )

    def valid_batches(self) -> Iterator[dict]:
        states = WellWindows(self.info, "valid", length=1, standardizer=self.standardizer)
        count = min(self.config.valid_states, len(states))
        picks = torch.linspace(0, len(states) - 1, count).round().long().tolist()[self.rank :: self.world]
        for i in range(0, len(picks), self.config.batch_size):
            items = [states[j] for j in picks[i : i + self.config.batch_size]]
            yield {key: torch.stack([it[key] for it in items]) for key in ("x", "known") if key in items[0]}

    def loss(self, model, batch, device) -> tuple[torch.Tensor, int]:
        x = batch["x"][:, :, 0].to(device)  # (B, C, 1, H, W) -> (B, C, H, W)
        known = batch["known"][:, :, 0].to(device) if "known" in batch else None
        x_hat, _ = model(x, known)  # the known channels are read, never reconstructed
        return self.config.reconstruction_loss(x_hat, x), x.shape[0]


def train_autoencoder(
    config: AutoencoderConfig,
    dataset: DatasetInfo | str,
    context: StageContext | None = None,
    *,
    log_model: bool = True,
) -> Artifact:
    """Train (or reuse) the autoencoder of ``config`` on ``dataset`` and return its artifact.

    The artifact id hashes the config and the dataset's fingerprint; a complete artifact
    with that id is returned as is. Otherwise it is trained
    (:func:`~lolaray.trainers.training_stage.train_stage`: ``context.scaling.workers`` Ray
    Train workers, or this process), an MLflow run records params, per-epoch metrics and the
    model, and the artifact is published with the run id in its manifest.

    :param context: store, MLflow record and scaling (default: :meth:`StageContext.default`).
    :param log_model: also log the network as an MLflow model.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else open_dataset(dataset)
    config.validate(info)
    context = context or StageContext.default()
    latent_shape, rate = latent_geometry(config, info)
    kwargs = config.model_kwargs(info)
    # Fitted (or read) only when the stage trains: a stored artifact is returned without it.
    standardizer = functools.cache(lambda: standardizer_for(info))

    def network(weights: dict) -> AutoEncoder:
        model = AutoEncoder(**kwargs)
        model.load_state_dict(weights)
        return model.eval()

    def mlflow_model(model: AutoEncoder) -> MlflowModel:
        example = torch.zeros(1, *info.state_shape)
        known = torch.zeros(1, info.n_known, *info.resolution) if info.n_known else None
        with torch.no_grad():
            reconstruction, _ = model(example, known)  # forward() returns (reconstruction, latent)
        return MlflowModel("autoencoder", example, reconstruction)

    known = {
        "known_channels": info.n_known,
        "constant_fields": list(info.constant_field_names),
        "varying_scalars": list(info.varying_scalar_names),
    }
    return train_stage(
        context,
        STAGE,
        config=config,
        identity={"dataset": info.fingerprint()},
        task=AutoencoderTask,
        worker_config=lambda: {"dataset_root": info.root, "standardizer": standardizer().to_dict()},
        network=network,
        snapshot=lambda folder, model: save_autoencoder(folder, model, kwargs, standardizer()),
        mlflow_model=mlflow_model if log_model else None,
        before_fit=lambda run: run.client.log_metric(run.run_id, "compression", rate),
        manifest={
            "dataset": info.name,
            "dataset_root": info.root,
            "dataset_fingerprint": info.fingerprint(),
            "compression": rate,
            "latent_shape": list(latent_shape),
            "pixel_shape": list(info.state_shape),
            **(known if info.n_known else {}),
        },
        run_name=f"autoencoder-c{config.latent_channels}-x{rate:g}",
        tags={"compression": f"{rate:g}", "dataset": info.name},
        params={"dataset": info.name, "compression": rate, "latent_shape": latent_shape},
    )


def main(argv: list[str] | None = None) -> Artifact:
    parser = argparse.ArgumentParser(description="Train an autoencoder with Ray Train.")
    add_stage_arguments(parser, dataset_default="euler_quadrants:demo", scaling="workers")
    parser.add_argument("--preset", default="demo", choices=sorted(AUTOENCODER_PRESETS))
    parser.add_argument("--latent-channels", type=int, default=16)
    parser.add_argument("--no-identity-init", action="store_true")
    parser.add_argument("--optimizer", default="psgd", choices=OPTIMIZERS)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args(argv)

    config = AutoencoderConfig(
        preset=args.preset,
        latent_channels=args.latent_channels,
        architecture={"identity_init": False} if args.no_identity_init else {},
        batch_size=args.batch_size,
        loop=LoopConfig(
            optimizer=args.optimizer,
            lr=args.lr,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            precision=args.precision,
            seed=args.seed,
        ),
    )
    info = open_dataset(args.dataset, data_root=args.data_root)
    config.validate(info)
    start_ray(args.address)
    artifact = train_autoencoder(config, info, StageContext.from_args(args))
    print(
        f"[lolaray] autoencoder {artifact.id}: compression x{artifact.manifest['compression']:g}, "
        f"latent {tuple(artifact.manifest['latent_shape'])}, at {artifact.uri}"
    )
    return artifact


if __name__ == "__main__":
    main()
