"""Train emulators with Ray Train: latent diffusion, latent neural solver, pixel-space solver.

The three stages share everything but the objective and the data source:

- ``train_diffusion(config, autoencoder=..., train_cache=..., valid_cache=...)``: the
  denoiser of method.md §5 on windows streamed from the latent cache (Ray Data);
- ``train_solver(...)``: the neural solver of §6 on the same stream;
- ``train_pixel_solver(config, dataset)``: the solver on standardized pixels read from The
  Well's files with on-the-fly augmentation (the baseline).

Each runs :func:`~lolaray.trainers.loop.run_training` (the same loop core as the
autoencoder) in a ``TorchTrainer``; the artifact holds ``emulator.pt`` (what is needed to
rebuild the network, nothing about training) and the manifest names the MLflow model.
Command line::

    python -m lolaray.trainers.emulator_trainer --kind diffusion --autoencoder <dir> --dataset euler_quadrants:smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from lolaray.platform.artifacts import Artifact, open_artifact
from lolaray.platform.data import (
    DatasetInfo,
    WellWindows,
    open_dataset,
    standardizer_for,
    theta_standardizer_for,
)
from lolaray.platform.dataset_specs import resolve_spec
from lolaray.platform.latent_cache import LatentCache, draw_windows, trajectory_dataset
from lolaray.platform.preprocessing import Standardizer, ThetaStandardizer
from lolaray.platform.session import start_ray
from lolaray.platform.stages import ScalingSpec, StageContext, add_stage_arguments
from lolaray.trainers.diffusion import (
    ElucidatedDenoiser,
    context_pmf,
    denoiser_loss,
    known_channel_mask,
    sample_context_mask,
)
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.encoding import cache_latents
from lolaray.trainers.loop import LoopConfig, endless_batches
from lolaray.trainers.runtime import current_runtime
from lolaray.trainers.snapshots import save_emulator
from lolaray.trainers.solver import solver_loss
from lolaray.trainers.training_stage import MlflowModel, train_stage
from lolaray.trainers.transformer import EMULATOR_PRESETS

__all__ = [
    "Objective",
    "draw_masks",
    "train_diffusion",
    "train_pixel_solver",
    "train_solver",
]

STAGE = "emulator"


class Objective(nn.Module):
    """The training loss as a module, so that DDP wraps (and synchronises) the whole of it.

    ``forward(x, theta, mask)`` with windows ``x`` ``(B, C, T, *spatial)`` returns the
    denoising loss (diffusion) or the masked regression loss (solver).
    """

    def __init__(self, emulator: nn.Module):
        super().__init__()
        self.emulator = emulator

    def forward(self, x: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.emulator, ElucidatedDenoiser):
            return denoiser_loss(self.emulator, x, theta, mask)
        return solver_loss(self.emulator, x, theta, mask)


def draw_masks(batch: int, config: EmulatorConfig) -> torch.Tensor:
    """Training context masks ``(B, T)``; ``max_context`` truncates the paper's distribution."""

    if config.max_context is None or config.mask_distribution != "paper":
        return sample_context_mask(batch, config.window, distribution=config.mask_distribution)[0]
    pmf = context_pmf(config.window, distribution="paper")[: config.max_context]
    c = 1 + torch.multinomial(pmf / pmf.sum(), batch, replacement=True)
    return torch.arange(config.window) < c[:, None]


def _sorted_rows(shard, group: int = 16) -> Iterator[dict]:
    """One pass over this worker's trajectories, in trajectory-id order, ``group`` rows at a time.

    Ray Data hands rows over in the order its read tasks finish; sorting them makes the
    windows and batches of a seeded run reproducible. The shard's compressed latents are
    held for one pass (the cache is materialized in the object store anyway).
    """
    rows = []
    for batch in shard.iter_batches(batch_size=256, batch_format="numpy"):
        rows += [
            (str(tid), blob, n, th)
            for tid, blob, n, th in zip(
                batch["trajectory_id"], batch["latent"], batch["length"], batch["theta"]
            )
        ]
    rows.sort(key=lambda row: row[0])
    for start in range(0, len(rows), group):
        tids, blobs, lengths, thetas = zip(*rows[start : start + group])
        yield {
            "trajectory_id": list(tids),
            "latent": list(blobs),
            "length": list(lengths),
            "theta": list(thetas),
        }


class EmulatorTask:
    """Windows (latent: from the cache's Ray Data stream; pixel: from the files) and the objective."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.config = EmulatorConfig.from_dict(cfg["config"])
        self.state_shape, self.theta_dim = tuple(cfg["state_shape"]), cfg["theta_dim"]
        # The states' last channels are known ones (constant fields, time-varying scalars).
        self.known_channels = cfg.get("known_channels", 0)
        self.theta_standardizer = ThetaStandardizer.from_dict(cfg["theta_standardizer"])
        self.runtime = current_runtime()
        self.rank, self.world = self.runtime.rank, self.runtime.world

    def build_model(self) -> nn.Module:
        return Objective(
            build_emulator(self.config, self.state_shape, self.theta_dim, self.theta_standardizer)
        )

    def train_batches(self, epoch: int) -> Iterator[dict]:
        if self.config.space == "latent":
            shard = self.runtime.dataset("train")
            config, size = self.config, self.config.batch_size
            for pass_index in itertools.count():  # every pass re-draws random windows
                key = (config.loop.seed, self.rank, epoch, pass_index)
                z, theta = [], []
                for rows in _sorted_rows(shard):
                    windows = draw_windows(
                        rows,
                        length=config.window,
                        stride=config.stride,
                        per_trajectory=config.windows_per_trajectory,
                        shape=self.state_shape,
                        dtype=self.cfg["latent_dtype"],
                        rng_key=key,
                    )
                    z += list(windows["z"])
                    theta += list(windows["theta"])
                    while len(z) >= size:  # as iter_batches(drop_last=True): no ragged batch
                        yield {
                            "x": torch.from_numpy(np.stack(z[:size])).float(),
                            "theta": torch.from_numpy(np.stack(theta[:size])).float(),
                        }
                        z, theta = z[size:], theta[size:]
        else:
            yield from self._pixel_batches(epoch)

    def _pixel_batches(self, epoch: int) -> Iterator[dict]:
        windows = WellWindows(
            open_dataset(self.cfg["dataset_root"]),
            "train",
            length=self.config.window,
            stride=self.config.stride,
            standardizer=Standardizer.from_dict(self.cfg["standardizer"]),
            augment=self.config.augment,
        )
        return endless_batches(
            windows,
            batch_size=self.config.batch_size,
            epoch=epoch,
            seed=self.config.loop.seed,
            rank=self.rank,
            world=self.world,
        )

    def valid_batches(self) -> Iterator[dict]:
        """The first ``valid_windows`` windows (every trajectory, in order), split across ranks.

        Masks and noise draw from a fixed generator so the validation loss is comparable
        across epochs."""
        items = []
        if self.config.space == "latent":
            cache = LatentCache(self.cfg["valid_cache"], self.cfg["valid_manifest"], verify=False)
            for w in cache.windows(self.config.window, self.config.stride):
                items.append((w["z"], w["theta"]))
                if len(items) >= self.config.valid_windows:
                    break
        else:
            info = open_dataset(self.cfg["dataset_root"])
            windows = WellWindows(
                info,
                "valid",
                length=self.config.window,
                stride=self.config.stride,
                standardizer=Standardizer.from_dict(self.cfg["standardizer"]),
            )
            picks = torch.linspace(0, len(windows) - 1, min(self.config.valid_windows, len(windows))).long()
            items = [(_pixel_state(windows[int(i)]), windows[int(i)]["theta"]) for i in picks]
        items = items[self.rank :: self.world]
        state = torch.get_rng_state()
        torch.manual_seed(1234)
        try:
            for i in range(0, len(items), self.config.batch_size):
                chunk = items[i : i + self.config.batch_size]
                yield {"x": torch.stack([c[0] for c in chunk]), "theta": torch.stack([c[1] for c in chunk])}
        finally:
            torch.set_rng_state(state)

    def loss(self, model, batch, device) -> tuple[torch.Tensor, int]:
        x, theta = batch["x"].to(device), batch["theta"].to(device)
        if "known" in batch:  # pixel windows: the known channels join the states
            x = torch.cat([x, batch["known"].to(device, x.dtype)], dim=1)
        mask = known_channel_mask(draw_masks(x.shape[0], self.config).to(device), x, self.known_channels)
        return model(x, theta, mask), x.shape[0]


def _pixel_state(item: dict) -> torch.Tensor:
    """A window of :class:`WellWindows` as the pixel emulator's states: ``x`` and, on data
    with known channels, those as its last channels."""
    return item["x"] if "known" not in item else torch.cat([item["x"], item["known"]])


def _train(
    config: EmulatorConfig,
    *,
    upstream: list[str],
    identity: dict,
    state_shape: tuple[int, ...],
    theta_dim: int,
    theta_standardizer: ThetaStandardizer,
    worker_config: dict,
    datasets: Callable[[], dict] | None,
    manifest: dict,
    context: StageContext | None,
    log_model: bool,
    known_channels: int = 0,
) -> Artifact:
    """What the three emulator stages share, on :func:`~lolaray.trainers.training_stage.train_stage`.
    The last ``known_channels`` channels of ``state_shape`` are known ones (given, never predicted)."""

    def network(weights: dict) -> nn.Module:
        objective = Objective(build_emulator(config, state_shape, theta_dim, theta_standardizer))
        objective.load_state_dict(weights)
        return objective.emulator.eval()

    def mlflow_model(emulator: nn.Module) -> MlflowModel:
        example = torch.zeros(1, state_shape[0], config.window, *state_shape[1:])
        return MlflowModel(config.kind, example, example)

    label = f"{config.kind}-{config.space}" + (
        f"-x{manifest['compression']:g}" if "compression" in manifest else ""
    )
    return train_stage(
        context or StageContext.default(),
        STAGE,
        config=config,
        identity=identity,
        upstream=upstream,
        task=EmulatorTask,
        worker_config={
            **worker_config,
            "state_shape": list(state_shape),
            "theta_dim": theta_dim,
            "theta_standardizer": theta_standardizer.to_dict(),
            "known_channels": known_channels,
        },
        datasets=datasets,
        network=network,
        snapshot=lambda folder, emulator: save_emulator(
            folder, emulator, config, state_shape, theta_dim, theta_standardizer
        ),
        mlflow_model=mlflow_model if log_model else None,
        manifest={
            **manifest,
            "kind": config.kind,
            "space": config.space,
            "state_shape": list(state_shape),
            "theta_dim": theta_dim,
            "theta_standardizer": theta_standardizer.to_dict(),
            "window": config.window,
            "stride": config.stride,
            **({"known_channels": known_channels} if known_channels else {}),
        },
        run_name=label,
        tags={
            "emulator": config.kind,
            "space": config.space,
            "compression": f"{manifest.get('compression', 1):g}",
        },
        params={**identity, "state_shape": list(state_shape)},
    )


def _theta_standardizer(config: EmulatorConfig, info: DatasetInfo) -> ThetaStandardizer:
    """θ's standardization from the train split: the config's log parameters, else the
    dataset spec's (the paper's, or those spanning a decade)."""
    names = config.log_parameters
    if names is None:
        names = resolve_spec(info).log_parameters
    return theta_standardizer_for(info, names)


def _latent_stage(
    kind: str,
    config: EmulatorConfig,
    *,
    autoencoder: Artifact,
    train_cache: Artifact,
    valid_cache: Artifact,
    context: StageContext | None = None,
    log_model: bool = True,
) -> Artifact:
    """Train (or reuse) a latent emulator of ``kind`` on windows streamed from ``train_cache``.

    :param autoencoder: the autoencoder whose latent space the caches live in.
    :param train_cache, valid_cache: latent caches of the train and valid splits.
    :param context: store, MLflow record and scaling (default: :meth:`StageContext.default`).
    :param log_model: also log the network as an MLflow model.
    """
    config = dataclasses.replace(config, kind=kind, space="latent")
    state_shape = tuple(train_cache.manifest["latent_shape"])
    config.validate(state_shape, train_cache.manifest["min_length"])
    if valid_cache.manifest["latent_shape"] != train_cache.manifest["latent_shape"]:
        raise ValueError("the train and valid caches come from different latent spaces")
    cache = LatentCache(train_cache.uri, train_cache.manifest)
    first = next(cache.trajectories())
    info = open_dataset(autoencoder.manifest["dataset_root"])

    # Trajectories go to the workers, which cut the windows themselves with a seeded draw
    # (draw_windows): a Ray Data map would draw unseeded and in arrival order, and training
    # would not be reproducible for a seed.
    def datasets() -> dict:  # only when the stage trains: reading the cache is a Ray Data job
        return {
            "train": trajectory_dataset(cache).select_columns(["latent", "length", "theta", "trajectory_id"])
        }

    return _train(
        config,
        upstream=[autoencoder.id, train_cache.id, valid_cache.id],
        identity={},
        state_shape=state_shape,
        theta_dim=int(first["theta"].numel()),
        theta_standardizer=_theta_standardizer(config, info),
        worker_config={
            "valid_cache": str(valid_cache.uri),
            "valid_manifest": valid_cache.manifest,
            "latent_dtype": cache.dtype,
        },
        datasets=datasets,
        known_channels=train_cache.manifest.get("known_channels", 0),
        manifest={
            "autoencoder": autoencoder.id,
            "compression": autoencoder.manifest["compression"],
            "dataset": train_cache.manifest["dataset"],
        },
        context=context,
        log_model=log_model,
    )


def train_diffusion(config: EmulatorConfig, **kwargs) -> Artifact:
    """Train (or reuse) a latent diffusion emulator; keywords as :func:`_latent_stage`."""
    return _latent_stage("diffusion", config, **kwargs)


def train_solver(config: EmulatorConfig, **kwargs) -> Artifact:
    """Train (or reuse) a latent neural solver; keywords as :func:`_latent_stage`."""
    return _latent_stage("solver", config, **kwargs)


def train_pixel_solver(
    config: EmulatorConfig,
    dataset: DatasetInfo | str,
    context: StageContext | None = None,
    *,
    log_model: bool = True,
) -> Artifact:
    """Train (or reuse) the pixel-space neural solver on standardized, augmented windows of
    the files; ``context`` and ``log_model`` as in :func:`_latent_stage`."""
    info = dataset if isinstance(dataset, DatasetInfo) else open_dataset(dataset)
    config = dataclasses.replace(config, kind="solver", space="pixel")
    # The known channels (constant fields, time-varying scalars) join each state, last.
    state_shape = info.conditioned_state_shape
    config.validate(state_shape, info.n_steps)
    standardizer = standardizer_for(info)
    return _train(
        config,
        upstream=[],
        identity={"dataset": info.fingerprint()},
        state_shape=state_shape,
        known_channels=info.n_known,
        theta_dim=info.theta_dim,
        theta_standardizer=_theta_standardizer(config, info),
        worker_config={"dataset_root": info.root, "standardizer": standardizer.to_dict()},
        datasets=None,
        manifest={
            "compression": 1,
            "dataset": info.name,
            "dataset_root": info.root,
            "dataset_fingerprint": info.fingerprint(),
        },
        context=context,
        log_model=log_model,
    )


def main(argv=None) -> Artifact:
    parser = argparse.ArgumentParser(
        description="Train an emulator (latent diffusion / solver, pixel solver)."
    )
    add_stage_arguments(parser, dataset_default="euler_quadrants:demo", scaling="workers")
    parser.add_argument("--kind", choices=("diffusion", "solver", "pixel-solver"), default="diffusion")
    parser.add_argument("--autoencoder", help="autoencoder artifact folder (latent emulators)")
    parser.add_argument("--preset", default="demo", choices=sorted(EMULATOR_PRESETS))
    parser.add_argument("--patch-size", type=int, default=None, help="pixel emulators: patch size")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args(argv)

    config = EmulatorConfig(
        preset=args.preset,
        architecture={"patch_size": args.patch_size} if args.patch_size else {},
        batch_size=args.batch_size,
        loop=LoopConfig(
            optimizer="adamw",
            lr=args.lr,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            precision=args.precision,
            seed=args.seed,
        ),
    )
    start_ray(args.address)
    info = open_dataset(args.dataset, data_root=args.data_root)
    context = StageContext.from_args(args)
    if args.kind == "pixel-solver":
        artifact = train_pixel_solver(config, info, context)
    else:
        if not args.autoencoder:
            parser.error("--autoencoder is required for latent emulators")
        autoencoder = open_artifact(args.autoencoder)
        caches = {
            # The caches run on one actor: the stage's scaling is its training workers.
            s: cache_latents(autoencoder, info, s, context.replace(scaling=ScalingSpec()), seed=args.seed)
            for s in ("train", "valid")
        }
        stage = train_diffusion if args.kind == "diffusion" else train_solver
        artifact = stage(
            config,
            autoencoder=autoencoder,
            train_cache=caches["train"],
            valid_cache=caches["valid"],
            context=context,
        )
    print(f"[lolaray] {args.kind} emulator {artifact.id} at {artifact.uri}")
    return artifact


if __name__ == "__main__":
    main()
