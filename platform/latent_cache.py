"""The latent cache: trajectories encoded once, stored as Parquet shards, streamed as windows.

Writing (:func:`build_latent_caches`, or :func:`build_latent_cache` for one split) is a Ray
Data pipeline::

    (split, trajectory, copy) ──map──► read + augment + standardize (tasks)
                  ──map_batches──► encoder actor pool (a GPU each on a cluster)
                  ──write──► each split's shards (on the store's file system, from any node)

One job encodes every split asked for with one actor pool: the pool's start (an actor
loading the autoencoder) and the job's scheduling are most of a small split's time.

Each row holds one (augmented copy of a) trajectory: ``trajectory_id``, ``file``,
``trajectory``, ``copy``, ``theta`` and the latent trajectory ``(L, C, h[, w, z])`` as raw
bytes in the stored dtype (float32, float16, or bfloat16 bit patterns — Arrow has no
bfloat16), with its length ``L``. The shape and dtype are in the manifest, so a plain
reader needs only pyarrow and numpy.

The manifest (shard list with row counts and SHA-256 checksums, latent shape and dtype,
the autoencoder's and the dataset's ids, split, repeat, creation time) is written last by
the artifact store: a cache without it is never read as complete, and a shard whose
checksum disagrees is reported by name (:class:`CorruptCacheError`).

Reading: :func:`window_dataset` (Ray Data: random windows of ``n+1`` states at stride Δ,
fresh draws on every pass, for Ray Train's ``get_dataset_shard``) and
:class:`LatentCache` (plain pyarrow, for evaluation and notebooks).
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.dataset
import pyarrow.fs
import pyarrow.parquet as pq
import ray.data
import torch
from ray.data import Datasink
from ray.data.block import BlockAccessor

from lolaray.platform.artifacts import filesystem_for
from lolaray.platform.augmentation import Augmentation, augmentation_setting
from lolaray.platform.data import (
    WellWindows,
    augment_with_known,
    cached_windows,
    known_standardizer_for,
    read_dataset_info,
)
from lolaray.platform.preprocessing import Standardizer

__all__ = [
    "CorruptCacheError",
    "LatentCache",
    "build_latent_cache",
    "build_latent_caches",
    "decode_latents",
    "draw_windows",
    "encode_latents",
    "trajectory_dataset",
    "window_dataset",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CorruptCacheError(RuntimeError):
    """A shard of a latent cache is missing or does not match its manifest."""


def encode_latents(z: torch.Tensor, dtype: str) -> bytes:
    """A latent tensor as raw bytes of ``dtype`` (bfloat16 as its 16-bit patterns)."""
    z = z.detach().to("cpu", DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":
        return z.view(torch.int16).numpy().tobytes()
    return z.numpy().tobytes()


def decode_latents(blob: bytes, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`encode_latents`; returns float32 of ``shape``."""
    if dtype == "bfloat16":
        bits = np.frombuffer(blob, dtype=np.int16).reshape(shape)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16).float()
    return torch.from_numpy(np.frombuffer(blob, dtype=np.dtype(dtype)).reshape(shape).copy()).float()


def _sha256(fs: pyarrow.fs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Source:
    """Where the trajectories come from, as plain values (pickled into Ray tasks)."""

    root: str
    split: str
    standardizer: dict
    repeat: int
    seed: int
    augment: bool | tuple[str, ...] = True


def _read_trajectories(batch: dict, *, source: _Source) -> dict:
    """Ray task: read, augment (copies ≥ 1) and standardize whole trajectories."""

    windows = cached_windows(source.root, source.split, None, 1, False)
    info = windows.info
    standardizer = Standardizer.from_dict(source.standardizer)
    augment = Augmentation.from_setting((*info.vector_axis, *info.known_vector_axis), source.augment)
    keys = ("trajectory_id", "file", "trajectory", "copy", "theta", "x")
    out: dict[str, list] = {k: [] for k in keys + ("known",) * bool(info.n_known)}
    for index, copy in zip(batch["index"], batch["copy"]):
        item = windows[int(index)]
        x, bc = item["x"], item["theta"][len(info.parameter_names) :].view(info.n_spatial_dims, 2)
        known = item.get("known")
        if copy > 0:  # copy 0 is the unaugmented trajectory; the others are seeded random symmetries
            key = f"{source.seed}:{source.split}:{int(index)}:{int(copy)}".encode()
            generator = torch.Generator().manual_seed(
                int.from_bytes(hashlib.sha256(key).digest()[:7], "little")
            )
            x, known, bc = augment_with_known(augment, x, known, bc, generator)
        theta = torch.cat([item["theta"][: len(info.parameter_names)], bc.flatten()])
        name = Path(windows.files[item["file"]]).name
        out["trajectory_id"].append(f"{name}:{item['trajectory']}:{int(copy)}")
        out["file"].append(name)
        out["trajectory"].append(item["trajectory"])
        out["copy"].append(int(copy))
        out["theta"].append(theta.numpy().astype(np.float32))
        out["x"].append(standardizer.forward(x, channel_dim=0).movedim(1, 0).numpy())  # (L, C, *spatial)
        if known is not None:  # (L, K, *spatial), as x
            out["known"].append(
                known_standardizer_for(info).forward(known, channel_dim=0).movedim(1, 0).numpy()
            )
    return {k: np.stack(v) if k in ("theta", "x", "known") else np.array(v) for k, v in out.items()}


def _read_split_trajectories(batch: dict, *, sources: Mapping[str, _Source]) -> Iterator[dict]:
    """Ray task: :func:`_read_trajectories` of a batch whose rows may belong to several splits
    (``batch["split"]``), one output per split (their trajectories may differ in length),
    each row keeping its ``split``."""

    splits = np.asarray(batch["split"])
    for split in dict.fromkeys(splits.tolist()):  # each split once, in the rows' order
        rows = splits == split
        out = _read_trajectories(
            {"index": batch["index"][rows], "copy": batch["copy"][rows]}, source=sources[split]
        )
        out["split"] = np.array([split] * int(rows.sum()))
        yield out


class _SplitTagged:
    """Ray Data actor: the caller's encoder (built once per actor), its output rows tagged
    with their input rows' ``split`` for the write to route; the encoder never sees the split."""

    def __init__(self, encoder_cls, **kwargs):
        self.encoder = encoder_cls(**kwargs)

    def __call__(self, batch: dict) -> pa.Table:
        split = batch.pop("split")
        return self.encoder(batch).append_column("split", pa.array(split.tolist(), pa.string()))


class _SplitShardsDatasink(Datasink):
    """Writes each row into its split's shard folder, without the ``split`` column.

    Each write task gets at least ``rows_per_shard`` rows and cuts each split's share of them
    into files of at most ``rows_per_shard`` rows, with the options ``write_parquet`` used
    before (one row group per full shard): a split's shards hold the rows and columns a job
    of that split alone writes; only where the rows are cut into files differs.

    :param shards: split → ``(file system, shard folder)``.
    """

    def __init__(self, shards: Mapping[str, tuple[pyarrow.fs.FileSystem, str]], rows_per_shard: int):
        self.shards, self.rows_per_shard = dict(shards), rows_per_shard
        self.write_id = uuid.uuid4().hex[:16]  # a file's name: the job's id, the write task's, its part

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def on_write_start(self, schema=None) -> None:
        for fs, folder in self.shards.values():
            if _makes_dirs(fs):
                fs.create_dir(folder, recursive=True)

    def write(self, blocks, ctx) -> None:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return
        table = pa.concat_tables(tables)
        splits = table.column("split")
        for split in dict.fromkeys(splits.to_pylist()):
            rows = table.filter(pyarrow.compute.equal(splits, split)).drop_columns(["split"])
            fs, folder = self.shards[split]
            pyarrow.dataset.write_dataset(
                _widened(rows),
                base_dir=folder,
                filesystem=fs,
                format="parquet",
                basename_template=f"{self.write_id}_{ctx.task_idx:06}-{{i}}.parquet",
                existing_data_behavior="overwrite_or_ignore",
                create_dir=_makes_dirs(fs),
                min_rows_per_group=self.rows_per_shard,
                max_rows_per_group=self.rows_per_shard,
                max_rows_per_file=self.rows_per_shard,
            )


def _makes_dirs(fs: pyarrow.fs.FileSystem) -> bool:
    """Whether to create folders on ``fs``: not on S3, which has none (``write_parquet``'s
    rule too: creating one checks every parent prefix, which a policy that grants only the
    store's prefix refuses)."""
    return fs.type_name != "s3"


def _widened(table: pa.Table) -> pa.Table:
    """``table`` with its binary columns of over 2 GiB as ``large_binary``: a row group is
    one contiguous array per column, and ``binary``'s 32-bit offsets address 2 GiB at most
    (Parquet stores both alike)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_binary(field.type) and table.column(i).nbytes >= 2**31:
            table = table.set_column(i, field.name, table.column(i).cast(pa.large_binary()))
    return table


def build_latent_caches(
    folders: Mapping[str, str | os.PathLike],
    *,
    dataset_root: str,
    standardizer: dict,
    encoder_cls,
    encoder_kwargs: dict,
    repeat: Mapping[str, int] | None = None,
    augment: bool | Sequence[str] = True,
    dtype: str = "float32",
    seed: int = 0,
    actors: int = 1,
    actor_gpus: float = 0.0,
    actor_cpus: float = 0.5,
    trajectories_per_batch: int = 2,
    rows_per_shard: int = 64,
) -> dict[str, dict]:
    """Encode every trajectory of each split of ``folders`` (``repeat[split]`` copies each)
    into Parquet shards in that split's folder (a path or URI every Ray worker can write: a
    staging folder on the store, :meth:`~lolaray.platform.artifacts.ArtifactStore.build_on_store`),
    in one Ray Data job with one encoder actor pool.

    A split's shards hold the same rows, byte for byte, as a job of that split alone writes:
    a copy's augmentation is seeded by the seed, its split, trajectory and copy, and the
    encoder encodes each trajectory on its own.

    :param encoder_cls: a callable class for ``map_batches``: built once per actor with
        ``encoder_kwargs`` (plus ``dtype``), called with a batch whose ``x`` is ``(B, L, C, *spatial)``
        (and ``known`` ``(B, L, K, *spatial)`` on data with known channels);
        returns a pyarrow table with the shard columns (``trajectory_id, file, trajectory, copy,
        theta, length, latent``); see :class:`lolaray.trainers.encoding.AutoencoderEncoder`.
    :param repeat: copies per trajectory of each split (default 1).
    :param augment: the augmentations of copies 1… (an
        :func:`~lolaray.platform.augmentation.augmentation_setting`; copy 0 is never augmented).
    :param actors: size of the encoder actor pool; ``actor_gpus`` GPUs per actor on a cluster.
    :returns: per split, the manifest entries describing its shards (``shards``, ``rows``,
        ``min_length``, ``states``).
    """

    if dtype not in DTYPES:
        raise ValueError(f"unknown latent dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    repeat = {split: (repeat or {}).get(split, 1) for split in folders}
    augment = augmentation_setting(augment)
    for copies in repeat.values():
        if copies < 1:
            raise ValueError(f"repeat must be >= 1, got {copies}")
        if copies > 1 and augment is False:
            raise ValueError(
                f"repeat={copies} copies of each trajectory need augmentations to differ; got none"
            )
    info = read_dataset_info(dataset_root)
    items = [
        {"split": split, "index": i, "copy": c}
        for split in folders
        for i in range(len(WellWindows(info, split, length=None)))
        for c in range(repeat[split])
    ]
    sources = {s: _Source(dataset_root, s, standardizer, repeat[s], seed, augment) for s in folders}
    blocks = max(1, -(-len(items) // trajectories_per_batch))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        _read_split_trajectories, batch_size=trajectories_per_batch, fn_kwargs={"sources": sources}
    )
    ds = ds.map_batches(
        _SplitTagged,
        fn_constructor_kwargs={"encoder_cls": encoder_cls, **encoder_kwargs, "dtype": dtype},
        batch_size=trajectories_per_batch,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=actor_gpus or None,
        num_cpus=None if actor_gpus else actor_cpus,
    )
    shards = {}
    for split, folder in folders.items():
        fs, base = filesystem_for(folder)
        shards[split] = (fs, f"{base.rstrip('/')}/shards")
    # Rows land in the order the actors finish; readers that need a fixed order (the
    # emulator workers) sort by trajectory id. (A Ray Data sort here is a shuffle, whose
    # tasks cannot be scheduled inside a Tune trial's placement group.)
    ds.write_datasink(_SplitShardsDatasink(shards, rows_per_shard))
    return {split: describe_shards(fs, folder) for split, (fs, folder) in shards.items()}


def build_latent_cache(
    folder: str | os.PathLike,
    *,
    dataset_root: str,
    split: str,
    standardizer: dict,
    encoder_cls,
    encoder_kwargs: dict,
    repeat: int = 1,
    **options,
) -> dict:
    """:func:`build_latent_caches` of one split into ``folder``: every trajectory of
    ``split``, ``repeat`` copies each (``options``: its other keywords).

    :returns: the manifest entries describing the shards (``shards``, ``rows``, ``min_length``, ``states``).
    """
    return build_latent_caches(
        {split: folder},
        dataset_root=dataset_root,
        standardizer=standardizer,
        encoder_cls=encoder_cls,
        encoder_kwargs=encoder_kwargs,
        repeat={split: repeat},
        **options,
    )[split]


def describe_shards(fs: pyarrow.fs.FileSystem, shards: str) -> dict:
    """Row counts, checksums and the latent geometry of the shards in folder ``shards`` of ``fs``."""
    found = fs.get_file_info(pyarrow.fs.FileSelector(shards, allow_not_found=True))
    entries, lengths = [], []
    for path in sorted(i.path for i in found if i.path.endswith(".parquet")):
        meta = pq.read_metadata(path, filesystem=fs)
        name = path.rsplit("/", 1)[-1]
        entries.append({"file": name, "rows": meta.num_rows, "sha256": _sha256(fs, path)})
        lengths.extend(pq.read_table(path, columns=["length"], filesystem=fs).column("length").to_pylist())
    return {
        "shards": entries,
        "rows": sum(e["rows"] for e in entries),
        "min_length": min(lengths, default=0),
        "states": sum(lengths),
    }


class LatentCache:
    """A complete latent cache, read with pyarrow (no Ray): trajectories and windows.

    :param folder: the cache artifact's folder (``manifest.json`` + ``shards/``): a local
        path or a ``pyarrow.fs`` URI (``s3://…``).
    :param manifest: its manifest.
    :param verify: check every shard's checksum first (raises :class:`CorruptCacheError`).
    """

    def __init__(self, folder: str | os.PathLike, manifest: dict, *, verify: bool = True):
        self.folder = str(folder)
        self.filesystem, self._base = filesystem_for(folder)
        self.manifest = manifest
        self.latent_shape = tuple(manifest["latent_shape"])
        self.dtype = manifest["latent_dtype"]
        if verify:
            self.verify()

    @property
    def shard_paths(self) -> list[str]:
        """The shards' paths on :attr:`filesystem`."""
        return [f"{self._base.rstrip('/')}/shards/{s['file']}" for s in self.manifest["shards"]]

    def verify(self) -> None:
        for shard, path in zip(self.manifest["shards"], self.shard_paths):
            if self.filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
                raise CorruptCacheError(f"latent cache {self.folder}: shard {shard['file']} is missing")
            if _sha256(self.filesystem, path) != shard["sha256"]:
                raise CorruptCacheError(
                    f"latent cache {self.folder}: shard {shard['file']} does not match its checksum "
                    "(corrupted or modified after writing); delete the cache folder to rebuild it"
                )

    def trajectories(self) -> Iterator[dict]:
        """Each row: ``trajectory_id``, ``file``, ``trajectory``, ``copy``, ``theta`` (D,), ``z`` (L, C, *spatial)."""
        for path in self.shard_paths:
            for row in pq.read_table(path, filesystem=self.filesystem).to_pylist():
                shape = (row["length"], *self.latent_shape)
                yield {
                    "trajectory_id": row["trajectory_id"],
                    "file": row["file"],
                    "trajectory": row["trajectory"],
                    "copy": row["copy"],
                    "theta": torch.tensor(row["theta"], dtype=torch.float32),
                    "z": decode_latents(row["latent"], self.dtype, shape),
                }

    def windows(self, length: int, stride: int) -> Iterator[dict]:
        """Every window of ``length`` states at ``stride``, in order: ``z`` (C, length, *spatial)."""
        for row in self.trajectories():
            span = (length - 1) * stride + 1
            for start in range(row["z"].shape[0] - span + 1):
                yield {
                    "z": row["z"][start : start + span : stride].movedim(0, 1),
                    "theta": row["theta"],
                    "trajectory_id": row["trajectory_id"],
                    "start": start,
                }


def draw_windows(
    batch: dict,
    *,
    length: int,
    stride: int,
    per_trajectory: int,
    shape,
    dtype,
    rng_key: tuple[int, ...] | None = None,
) -> dict:
    """``per_trajectory`` random windows from each trajectory row of ``batch``.

    :param rng_key: ``None`` draws fresh windows on every call; integers (e.g. ``(seed,
        epoch, pass)``) make each trajectory's draw a function of the key and its
        ``trajectory_id`` alone — reproducible whatever the order the rows arrive in.
    """
    span = (length - 1) * stride + 1
    z, theta, ids, starts = [], [], [], []
    for blob, n, th, tid in zip(batch["latent"], batch["length"], batch["theta"], batch["trajectory_id"]):
        if rng_key is None:
            rng = np.random.default_rng()
        else:
            rng = np.random.default_rng([*(int(k) for k in rng_key), zlib.crc32(str(tid).encode())])
        trajectory = decode_latents(blob, dtype, (int(n), *shape))
        choices = rng.choice(int(n) - span + 1, size=min(per_trajectory, int(n) - span + 1), replace=False)
        for start in choices:
            z.append(trajectory[start : start + span : stride].movedim(0, 1).numpy())
            theta.append(np.asarray(th, dtype=np.float32))
            ids.append(tid)
            starts.append(int(start))
    return {
        "z": np.stack(z),
        "theta": np.stack(theta),
        "trajectory_id": np.array(ids),
        "start": np.array(starts),
    }


def _check_window(cache: LatentCache, length: int, stride: int) -> None:
    span = (length - 1) * stride + 1
    if length < 2 or stride < 1 or span > cache.manifest["min_length"]:
        raise ValueError(
            f"windows of {length} states at stride {stride} (span {span} steps) do not fit the cached "
            f"trajectories ({cache.manifest['min_length']} steps); need length >= 2 and span <= trajectory length"
        )


def trajectory_dataset(cache: LatentCache, *, materialize: bool = True):
    """The cache's trajectory rows as a Ray Data dataset (``latent``, ``length``, ``theta``,
    ``trajectory_id``, ...), read once into Ray's object store when ``materialize`` (spilled
    to disk when it does not fit): re-reading Parquet every epoch was ~20x slower here
    (benchmarks/latent_cache_throughput.py). Train workers cut windows from it with
    :func:`draw_windows`."""

    ds = ray.data.read_parquet(
        cache.shard_paths, filesystem=cache.filesystem, override_num_blocks=max(1, len(cache.shard_paths))
    )
    return ds.materialize() if materialize else ds


def window_dataset(
    cache: LatentCache, *, length: int, stride: int, per_trajectory: int = 4, materialize: bool = True
):
    """A Ray Data dataset of random windows ``z`` ``(C, length, *spatial)`` from the cache's shards.

    Windows never cross trajectories (each is cut from one row). Pass it to a ``TorchTrainer``
    (``datasets={"train": ...}``) and read ``get_dataset_shard("train").iter_torch_batches()``:
    every epoch re-executes the window draw and so sees fresh windows.

    :param materialize: read the shards once into Ray's object store (spilled to disk when it
        does not fit) so that each epoch only re-draws windows; re-reading Parquet every epoch
        was ~20x slower here (benchmarks/latent_cache_throughput.py).
    """
    _check_window(cache, length, stride)
    ds = trajectory_dataset(cache, materialize=materialize)
    return ds.map_batches(
        draw_windows,
        batch_size=16,
        fn_kwargs={
            "length": length,
            "stride": stride,
            "per_trajectory": per_trajectory,
            "shape": cache.latent_shape,
            "dtype": cache.dtype,
        },
    )
