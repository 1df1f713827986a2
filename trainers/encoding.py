"""Encode a dataset into a latent cache: the stage ``cache_latents(autoencoder, dataset, split)``.

The stage wires a trained autoencoder into the Ray Data pipeline of
:mod:`lolaray.platform.latent_cache` (which must not import trainers): the
:class:`AutoencoderEncoder` actor holds the network, one per actor, on a GPU when the
cluster has them. Command line::

    python -m lolaray.trainers.encoding --autoencoder lolaray-store/autoencoder/<id> \\
        --dataset euler_quadrants:smoke --split train --repeat 4
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from lolaray.platform.artifacts import Artifact, open_artifact
from lolaray.platform.augmentation import augmentation_setting
from lolaray.platform.data import DatasetInfo, open_dataset
from lolaray.platform.latent_cache import LatentCache, build_latent_cache, encode_latents
from lolaray.platform.session import start_ray
from lolaray.platform.stages import StageContext, StageOutput, add_stage_arguments, run_stage
from lolaray.platform.tracking import StageRun
from lolaray.trainers.snapshots import load_autoencoder

__all__ = ["AutoencoderEncoder", "cache_latents", "open_cache"]

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
    repeat = repeat or (4 if split == "train" else 1)
    if split != "train" and repeat != 1:
        raise ValueError(f"only the train split is augmented; got repeat={repeat} for {split!r}")
    config = {"split": split, "repeat": repeat, "dtype": dtype, "seed": seed, "dataset": info.fingerprint()}
    augment = augmentation_setting(augment) if repeat > 1 else True
    if augment is not True:  # a subset only: caches with every augmentation keep their earlier ids
        config["augment"] = augment
    context = context or StageContext.default()
    scaling = context.scaling
    rate = autoencoder.manifest.get("compression")

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

        manifest = {
            "autoencoder": autoencoder.id,
            "dataset": info.name,
            "dataset_fingerprint": info.fingerprint(),
            "split": split,
            "repeat": repeat,
            "compression": rate,
            "latent_shape": list(autoencoder.manifest["latent_shape"]),
            "latent_dtype": dtype,
        }
        if autoencoder.manifest.get("known_channels"):  # the latent states' last channels: known ones
            manifest["known_channels"] = autoencoder.manifest["known_channels"]
        # Staged on the store: the encoder actors write shards from whichever node they run on.
        return StageOutput(manifest=manifest, write=write, on_store=True)

    params = {
        **config,
        "actors": scaling.actors,
        **({} if scaling.actor_gpus is None else {"actor_gpus": scaling.actor_gpus}),
    }
    return run_stage(
        context,
        STAGE,
        config=config,
        upstream=[autoencoder.id],
        run_name=f"latents-{split}-x{rate:g}",
        build=build,
        tags={"autoencoder": autoencoder.id, "compression": f"{rate:g}"},
        params=params,
    )


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
