"""Encode a dataset into a latent cache: the stage ``cache_latents(autoencoder, dataset, split)``.

The stage wires a trained autoencoder into the Ray Data pipeline of
:mod:`lolaray.platform.latent_cache` (which must not import trainers): the
:class:`AutoencoderEncoder` actor holds the network, one per actor, on a GPU when the
cluster has them. :func:`cache_latents_splits` builds the caches of several splits (a
study's train, valid and test) in one Ray Data job, each still its own artifact. Command line::

    python -m lolaray.trainers.encoding --autoencoder lolaray-store/autoencoder/<id> \\
        --dataset euler_quadrants:smoke --split train --repeat 4
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from lolaray.platform.artifacts import Artifact, artifact_id, open_artifact
from lolaray.platform.augmentation import augmentation_setting
from lolaray.platform.data import DatasetInfo, open_dataset
from lolaray.platform.latent_cache import LatentCache, build_latent_cache, build_latent_caches, encode_latents
from lolaray.platform.session import start_ray
from lolaray.platform.stages import ScalingSpec, StageContext, StageOutput, add_stage_arguments, run_stage
from lolaray.platform.tracking import StageRun, stage_run
from lolaray.trainers.snapshots import load_autoencoder

__all__ = ["AutoencoderEncoder", "cache_latents", "cache_latents_splits", "open_cache"]

STAGE = "latents"


class AutoencoderEncoder:
    """Ray Data actor: encodes whole standardized trajectories with a trained autoencoder.

    :param autoencoder_dir: the autoencoder artifact's folder.
    :param dtype: stored dtype of the latents (``float32``, ``float16``, ``bfloat16``).
    :param chunk: states encoded per forward pass.
    :param fail_after_calls: test hook — raise on this call (simulates a crash mid-write).
    """

    def __init__(
        self, autoencoder_dir: str, dtype: str, chunk: int = 16, fail_after_calls: int | None = None
    ):
        self.model, _ = load_autoencoder(autoencoder_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.dtype, self.chunk, self.fail_after, self.calls = dtype, chunk, fail_after_calls, 0

    def __call__(self, batch: dict):
        """``batch["x"]`` ``(B, L, C, *spatial)`` (and ``batch["known"]`` ``(B, L, K, *spatial)``
        on data with known channels) → a pyarrow table in the cache's shard schema; the
        latent states carry the known channels, pooled, as their last ``K`` channels."""
        self.calls += 1
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError(f"injected encoder failure on call {self.calls}")
        latents, lengths = [], []
        knowns = batch.get("known", [None] * len(batch["x"]))
        with torch.inference_mode():
            for x, known in zip(batch["x"], knowns):  # (L, C, *spatial), standardized
                states = torch.from_numpy(np.array(x, dtype=np.float32)).to(self.device)  # writable copy
                if known is not None:  # (L, K, *spatial): each state's known channels
                    known = torch.from_numpy(np.array(known, dtype=np.float32)).to(self.device)
                z = torch.cat(
                    [
                        self.model.encode(
                            states[i : i + self.chunk], None if known is None else known[i : i + self.chunk]
                        )
                        for i in range(0, len(states), self.chunk)
                    ]
                )
                latents.append(encode_latents(z, self.dtype))
                lengths.append(z.shape[0])
        return pa.table(
            {
                "trajectory_id": pa.array(batch["trajectory_id"].tolist(), pa.string()),
                "file": pa.array(batch["file"].tolist(), pa.string()),
                "trajectory": pa.array(batch["trajectory"].tolist(), pa.int64()),
                "copy": pa.array(batch["copy"].tolist(), pa.int64()),
                "theta": pa.array(batch["theta"].tolist(), pa.list_(pa.float32())),
                "length": pa.array(lengths, pa.int64()),
                "latent": pa.array(latents, pa.binary()),
            }
        )


@dataclass(frozen=True)
class _CacheSpec:
    """One split's cache as a stage: the config its id hashes, its manifest and its MLflow run.

    Both :func:`cache_latents` and :func:`cache_latents_splits` describe a split's cache with
    it, so the two give it the same id (either reuses a cache the other built) and the same
    record."""

    autoencoder: Artifact
    info: DatasetInfo
    split: str
    repeat: int
    augment: bool | tuple[str, ...]
    dtype: str
    seed: int
    scaling: ScalingSpec

    @classmethod
    def of(
        cls,
        autoencoder: Artifact,
        info: DatasetInfo,
        split: str,
        context: StageContext,
        *,
        repeat: int | None,
        augment: bool | Sequence[str],
        dtype: str,
        seed: int,
    ) -> _CacheSpec:
        """The spec of :func:`cache_latents`'s arguments (its defaults and checks)."""
        repeat = repeat or (4 if split == "train" else 1)
        if split != "train" and repeat != 1:
            raise ValueError(f"only the train split is augmented; got repeat={repeat} for {split!r}")
        augment = augmentation_setting(augment) if repeat > 1 else True
        return cls(autoencoder, info, split, repeat, augment, dtype, seed, context.scaling)

    @property
    def config(self) -> dict:
        config = {
            "split": self.split,
            "repeat": self.repeat,
            "dtype": self.dtype,
            "seed": self.seed,
            "dataset": self.info.fingerprint(),
        }
        if self.augment is not True:  # a subset only: caches with every augmentation keep their earlier ids
            config["augment"] = self.augment
        return config

    @property
    def id(self) -> str:
        return artifact_id(STAGE, self.config, [self.autoencoder.id])

    @property
    def rate(self) -> float:
        return self.autoencoder.manifest.get("compression")

    @property
    def run_name(self) -> str:
        return f"latents-{self.split}-x{self.rate:g}"

    @property
    def tags(self) -> dict[str, str]:
        return {"autoencoder": self.autoencoder.id, "compression": f"{self.rate:g}"}

    @property
    def params(self) -> dict:
        return {
            **self.config,
            "actors": self.scaling.actors,
            **({} if self.scaling.actor_gpus is None else {"actor_gpus": self.scaling.actor_gpus}),
        }

    def manifest(self) -> dict:
        """The manifest entries known before encoding (the shards' are added by the write)."""
        manifest = {
            "autoencoder": self.autoencoder.id,
            "dataset": self.info.name,
            "dataset_fingerprint": self.info.fingerprint(),
            "split": self.split,
            "repeat": self.repeat,
            "compression": self.rate,
            "latent_shape": list(self.autoencoder.manifest["latent_shape"]),
            "latent_dtype": self.dtype,
        }
        if self.autoencoder.manifest.get("known_channels"):  # the latent states' last channels: known ones
            manifest["known_channels"] = self.autoencoder.manifest["known_channels"]
        return manifest


def cache_latents(
    autoencoder: Artifact,
    dataset: DatasetInfo | str,
    split: str,
    context: StageContext | None = None,
    *,
    repeat: int | None = None,
    augment: bool | Sequence[str] = True,
    dtype: str = "float32",
    seed: int = 0,
    encoder_kwargs: dict | None = None,
) -> Artifact:
    """The latent cache of ``split`` in ``autoencoder``'s latent space (built if absent).

    :param context: store, MLflow record and scaling (default: :meth:`StageContext.default`);
        ``context.scaling.actors`` encoder actors of ``context.scaling.actor_gpus`` GPUs each.
    :param repeat: copies per trajectory: copy 0 unaugmented, the others randomly augmented.
        Default: 4 for ``train`` (the paper's), 1 for ``valid``/``test`` (never augmented).
    :param augment: which augmentations the copies draw from (the dataset spec's,
        :func:`~lolaray.platform.augmentation.augmentation_setting`; ``True``: all valid ones).
    :param encoder_kwargs: extra keywords of :class:`AutoencoderEncoder` (tests' hooks).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else open_dataset(dataset)
    context = context or StageContext.default()
    spec = _CacheSpec.of(
        autoencoder, info, split, context, repeat=repeat, augment=augment, dtype=dtype, seed=seed
    )
    repeat, augment, scaling = spec.repeat, spec.augment, context.scaling

    def build(run: StageRun, aid: str) -> StageOutput:
        gpus = scaling.resolved_actor_gpus()
        if scaling.actor_gpus is None:
            run.client.log_param(run.run_id, "actor_gpus", gpus)
        _, standardizer = load_autoencoder(autoencoder)

        def write(folder: str, manifest: dict) -> None:
            began = time.perf_counter()
            manifest.update(
                build_latent_cache(
                    folder,
                    dataset_root=info.root,
                    split=split,
                    standardizer=standardizer.to_dict(),
                    encoder_cls=AutoencoderEncoder,
                    encoder_kwargs={"autoencoder_dir": str(autoencoder.uri), **(encoder_kwargs or {})},
                    repeat=repeat,
                    augment=augment,
                    dtype=dtype,
                    seed=seed,
                    actors=scaling.actors,
                    actor_gpus=gpus,
                )
            )
            seconds = time.perf_counter() - began
            run.client.log_metric(run.run_id, "cache/rows", manifest["rows"])
            run.client.log_metric(run.run_id, "cache/seconds", seconds)
            run.client.log_metric(run.run_id, "cache/states_per_s", manifest["states"] / max(seconds, 1e-9))

        # Staged on the store: the encoder actors write shards from whichever node they run on.
        return StageOutput(manifest=spec.manifest(), write=write, on_store=True)

    return run_stage(
        context,
        STAGE,
        config=spec.config,
        upstream=[autoencoder.id],
        run_name=spec.run_name,
        build=build,
        tags=spec.tags,
        params=spec.params,
    )


def cache_latents_splits(
    autoencoder: Artifact,
    dataset: DatasetInfo | str,
    splits: Sequence[str] = ("train", "valid", "test"),
    context: StageContext | None = None,
    *,
    repeat: Mapping[str, int] | None = None,
    augment: bool | Sequence[str] = True,
    dtype: str = "float32",
    seed: int = 0,
    encoder_kwargs: dict | None = None,
) -> dict[str, Artifact]:
    """The latent caches of ``splits`` (built if absent): those missing from the store in
    one Ray Data job with one encoder actor pool.

    Each split's cache is the artifact :func:`cache_latents` returns for it: the same id, so
    a stored cache is reused whichever built it, and the same rows. One job instead of one
    per split because the pool's start (every actor loading the autoencoder) and the job's
    scheduling are most of a small split's time. As :func:`~lolaray.platform.stages.run_stage`
    does for one, each missing split has its own MLflow run (``FAILED`` if anything raises)
    and staging folder, published with its manifest last once the job is done: a crash
    publishes no cache.

    :param repeat: copies per trajectory of a split; a split not named takes
        :func:`cache_latents`'s default (4 for ``train``, 1 for ``valid``/``test``).
    :param context, augment, dtype, seed, encoder_kwargs: as in :func:`cache_latents`. Each
        run's ``cache/seconds`` and ``cache/states_per_s`` are the shared job's (its tag
        ``job_splits`` names the splits the job encoded).
    :returns: split → its cache, in the order of ``splits``.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else open_dataset(dataset)
    context = context or StageContext.default()
    specs = {
        split: _CacheSpec.of(
            autoencoder,
            info,
            split,
            context,
            repeat=(repeat or {}).get(split),
            augment=augment,
            dtype=dtype,
            seed=seed,
        )
        for split in splits
    }
    found = {split: context.store.get(STAGE, spec.id) for split, spec in specs.items()}
    missing = {split: spec for split, spec in specs.items() if found[split] is None}
    if missing:
        _encode_splits(autoencoder, info, missing, context, encoder_kwargs or {})
    return {split: found[split] or context.store.get(STAGE, spec.id) for split, spec in specs.items()}


def _encode_splits(
    autoencoder: Artifact,
    info: DatasetInfo,
    specs: dict[str, _CacheSpec],
    context: StageContext,
    encoder_kwargs: dict,
) -> None:
    """Build and publish the caches of ``specs`` with one :func:`build_latent_caches` job."""
    scaling = context.scaling
    first = next(iter(specs.values()))
    # Only copies 1… are augmented, so a split of one copy encodes the same whatever the setting.
    augment = next((spec.augment for spec in specs.values() if spec.repeat > 1), True)
    with ExitStack() as stack:  # unwound in reverse: each staging folder published, then its run closed
        runs, folders, manifests = {}, {}, {}
        for split, spec in specs.items():
            runs[split] = run = stack.enter_context(
                stage_run(
                    context.experiment,
                    run_name=spec.run_name,
                    uri=context.tracking_uri,
                    parent_run_id=context.parent_run_id,
                    tags={"stage": STAGE, "artifact_id": spec.id, **spec.tags, "job_splits": ",".join(specs)},
                    params=spec.params,
                )
            )
            manifests[split] = {**spec.manifest(), "mlflow_run_id": run.run_id}
            # Staged on the store: the encoder actors write shards from whichever node they run on.
            folders[split] = stack.enter_context(
                context.store.build_on_store(STAGE, spec.id, manifests[split])
            )
        gpus = scaling.resolved_actor_gpus()
        if scaling.actor_gpus is None:
            for run in runs.values():
                run.client.log_param(run.run_id, "actor_gpus", gpus)
        _, standardizer = load_autoencoder(autoencoder)
        began = time.perf_counter()
        shards = build_latent_caches(
            folders,
            dataset_root=info.root,
            standardizer=standardizer.to_dict(),
            encoder_cls=AutoencoderEncoder,
            encoder_kwargs={"autoencoder_dir": str(autoencoder.uri), **encoder_kwargs},
            repeat={split: spec.repeat for split, spec in specs.items()},
            augment=augment,
            dtype=first.dtype,
            seed=first.seed,
            actors=scaling.actors,
            actor_gpus=gpus,
        )
        seconds = time.perf_counter() - began
        states = sum(entries["states"] for entries in shards.values())
        for split, run in runs.items():
            manifests[split].update(shards[split])
            run.client.log_metric(run.run_id, "cache/rows", manifests[split]["rows"])
            run.client.log_metric(run.run_id, "cache/seconds", seconds)
            run.client.log_metric(run.run_id, "cache/states_per_s", states / max(seconds, 1e-9))


def open_cache(artifact: Artifact, *, verify: bool = True) -> LatentCache:
    """A plain reader of a latent cache artifact (checksums verified unless ``verify=False``)."""
    return LatentCache(artifact.uri, artifact.manifest, verify=verify)


def main(argv=None) -> Artifact:
    parser = argparse.ArgumentParser(description="Encode a dataset split into a latent cache (Ray Data).")
    add_stage_arguments(parser, dataset_default="euler_quadrants:demo", scaling="actors")
    parser.add_argument("--autoencoder", required=True, help="an autoencoder artifact: its folder or URI")
    parser.add_argument("--split", default="train", choices=("train", "valid", "test"))
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args(argv)

    autoencoder = open_artifact(args.autoencoder)
    start_ray(args.address)
    info = open_dataset(args.dataset, data_root=args.data_root)
    artifact = cache_latents(
        autoencoder,
        info,
        args.split,
        StageContext.from_args(args),
        repeat=args.repeat,
        dtype=args.dtype,
        seed=args.seed,
    )
    print(
        f"[lolaray] latent cache {artifact.id}: {artifact.manifest['rows']} trajectories in "
        f"{len(artifact.manifest['shards'])} shards, latent {artifact.manifest['latent_shape']} "
        f"({artifact.manifest['latent_dtype']}), at {artifact.uri}"
    )
    return artifact


if __name__ == "__main__":
    main()
