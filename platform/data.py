"""The data layer: open a dataset in The Well's format and serve channels-first windows.

Three ways to name a dataset (:func:`open_dataset`):

- an embedded name (``"euler_quadrants"``, optionally ``"euler_quadrants:smoke"``): generated
  once into the cache folder (:mod:`lolaray.platform.embedded`);
- a name of The Well plus a base path (a local download or ``hf://datasets/polymathic-ai/``);
- a folder in The Well's layout (``<folder>/data/{train,valid,test}/*.hdf5``).

Items are read through :class:`the_well.data.WellDataset` and returned channels-first:
``x`` of shape ``(C, L, *spatial)`` for windows of ``L`` states, standardized
(:mod:`~lolaray.platform.preprocessing`) and optionally augmented
(:mod:`~lolaray.platform.augmentation`), with the conditioning vector
``θ = [parameters..., bc_codes.flatten()]`` (method.md §1). What is known about each
state without being predicted — time-invariant fields (a bathymetry, an obstacle mask)
and time-varying scalars (a forcing amplitude), broadcast over space — comes beside ``x``
as ``known`` ``(K, L, *spatial)``: standardized with statistics of the train split,
augmented with the same draw as ``x``, never part of the predicted state.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.data
import torch
from the_well.data import WELL_DATASETS, WellDataset
from torch.utils.data import Dataset

from lolaray.platform.augmentation import Augmentation
from lolaray.platform.embedded import (
    EMBEDDED_DATASETS,
    EMBEDDED_PRESETS,
    data_cache_dir,
    ensure_embedded_dataset,
)
from lolaray.platform.preprocessing import (
    KNOWN_PREPROCESSING,
    Standardizer,
    ThetaStandardizer,
    fit_standardizer,
    fit_theta_standardizer,
)
from lolaray.platform.well_format import DatasetFormatError, SplitLayout, check_split, filesystem

__all__ = [
    "DEFAULT_PRELOAD_BYTES",
    "PRELOAD_BYTES_ENV",
    "DatasetInfo",
    "WellWindows",
    "augment_with_known",
    "cached_windows",
    "known_standardizer_for",
    "locate_dataset",
    "open_dataset",
    "preload_budget",
    "ray_dataset",
    "split_bytes",
    "standardizer_for",
    "theta_standardizer_for",
]

SPLITS = ("train", "valid", "test")
HF_BASE = "hf://datasets/polymathic-ai/"


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset in The Well's layout, read from its file headers.

    :param name: the files' ``dataset_name`` (e.g. ``euler_quadrants``).
    :param root: the folder holding ``data/`` and ``stats.yaml``.
    :param field_names: channel names in channel order (vector components as ``momentum_x``...).
    :param vector_axis: per channel, the spatial axis a vector component points along, else ``None``.
    :param spatial_dims: axis names; ``resolution``: cells per axis.
    :param parameter_names: the constant scalars that enter θ.
    :param n_steps: the shortest trajectory length across splits.
    :param splits: the layout of each split folder present.
    :param constant_field_names: the time-invariant fields' channels (conditioning, not
        predicted); ``constant_vector_axis`` as ``vector_axis``.
    :param varying_scalar_names: the time-varying scalars (conditioning, one value per state).
    """

    name: str
    root: str
    field_names: tuple[str, ...]
    vector_axis: tuple[int | None, ...]
    spatial_dims: tuple[str, ...]
    resolution: tuple[int, ...]
    parameter_names: tuple[str, ...]
    n_steps: int
    splits: dict[str, SplitLayout]
    constant_field_names: tuple[str, ...] = ()
    constant_vector_axis: tuple[int | None, ...] = ()
    varying_scalar_names: tuple[str, ...] = ()

    @property
    def n_fields(self) -> int:
        return len(self.field_names)

    @property
    def known_names(self) -> tuple[str, ...]:
        """The known channels given to the networks beside each state, never predicted: the
        time-invariant fields, then the time-varying scalars."""
        return self.constant_field_names + self.varying_scalar_names

    @property
    def n_known(self) -> int:
        """:math:`K`, the number of :attr:`known_names`."""
        return len(self.known_names)

    @property
    def known_vector_axis(self) -> tuple[int | None, ...]:
        """Per known channel, the spatial axis a vector component points along, else ``None``."""
        return self.constant_vector_axis + (None,) * len(self.varying_scalar_names)

    @property
    def n_spatial_dims(self) -> int:
        return len(self.spatial_dims)

    @property
    def theta_dim(self) -> int:
        """Length of θ: the parameters, then two boundary codes per axis."""
        return len(self.parameter_names) + 2 * self.n_spatial_dims

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Channels-first shape of one state, ``(C, *spatial)``."""
        return (self.n_fields, *self.resolution)

    @property
    def conditioned_state_shape(self) -> tuple[int, ...]:
        """A state as a pixel-space emulator sees it, the known channels last:
        ``(C + K, *spatial)``."""
        return (self.n_fields + self.n_known, *self.resolution)

    def parameter_samples(self, split: str = "train") -> np.ndarray:
        """The parameters of every trajectory of ``split``, ``(trajectories, parameters)``
        (each file holds one parameter set for all its trajectories)."""
        layout = self.splits[split]
        rows = [values for values, n in zip(layout.parameter_values, layout.n_trajectories) for _ in range(n)]
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self.parameter_names))

    def boundary_codes(self, split: str) -> list[tuple[str, ...]]:
        """Per file of ``split``, the boundary type of each axis (e.g. ``("PERIODIC", "PERIODIC")``)."""
        return list(self.splits[split].boundary_types)

    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    def fingerprint(self) -> str:
        """Identifies the data: name, root and every file's name and size."""
        parts = [self.name, self.root]
        for split, layout in sorted(self.splits.items()):
            for f, size in zip(layout.files, layout.file_sizes):
                parts.append(f"{split}/{Path(f).name}:{size}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def _well_dataset_names() -> tuple[str, ...]:
    return tuple(WELL_DATASETS)


def open_dataset(
    dataset: str | os.PathLike,
    *,
    data_root: str | None = None,
    preset: str = "demo",
    cache_dir: str | Path | None = None,
    parallel: str = "auto",
) -> DatasetInfo:
    """Resolve ``dataset`` to a folder in The Well's layout, check it, and return its metadata.

    :param dataset: an embedded name (``euler_quadrants`` or ``euler_quadrants:<preset>``),
        a name of The Well (with ``data_root``), or a folder path.
    :param data_root: for a name of The Well: the download's base path (the folder holding
        ``datasets/<name>`` or ``<name>``), or ``hf://datasets/polymathic-ai/``.
    :param preset: the embedded preset when ``dataset`` names none.
    :raises ValueError: unknown name, or a name of The Well without ``data_root``.
    :raises FileNotFoundError: the folder or a split is missing.
    :raises DatasetFormatError: a file is broken or disagrees with its siblings.
    """
    kind, value = locate_dataset(dataset, data_root=data_root, preset=preset)
    if kind == "embedded":
        name, preset = value
        root = ensure_embedded_dataset(name, preset, cache_dir=cache_dir, parallel=parallel)
    else:
        root = value
    return read_dataset_info(root)


def locate_dataset(
    dataset: str | os.PathLike, *, data_root: str | None = None, preset: str = "demo"
) -> tuple[str, object]:
    """Where ``dataset`` is, checked without generating or reading any data.

    Entry points call it first, so a typo fails before any work starts.

    :returns: ``("embedded", (name, preset))`` or ``("root", folder or URL)``.
    :raises ValueError: unknown name or embedded preset, or a name of The Well without ``data_root``.
    :raises FileNotFoundError: a name of The Well not found under ``data_root``.
    """
    text = str(dataset)
    name, _, suffix = text.partition(":")
    if name in EMBEDDED_DATASETS:
        preset = suffix or preset
        if preset not in EMBEDDED_PRESETS:
            raise ValueError(
                f"unknown preset {preset!r} of the embedded dataset {name!r}: "
                f"choose one of {', '.join(EMBEDDED_PRESETS)}"
            )
        return "embedded", (name, preset)
    if name in _well_dataset_names() and not Path(text).exists():
        if data_root is None:
            raise ValueError(
                f"{name!r} is a dataset of The Well: pass its base path with data_root/--data-root "
                f"(a local download made by `the-well-download`, or {HF_BASE})"
            )
        return "root", _resolve_well_root(name, data_root)
    if "://" in text or Path(text).exists():
        return "root", text
    raise ValueError(
        f"unknown dataset {text!r}: not an embedded dataset ({', '.join(EMBEDDED_DATASETS)}), "
        "not a name of The Well, and not an existing folder"
    )


def _resolve_well_root(name: str, data_root: str) -> str | Path:
    if "://" in data_root:  # hf://datasets/polymathic-ai/ (The Well's layout: <base>/<name>/data/...)
        root = f"{data_root.rstrip('/')}/{name}"
        fs, base = filesystem(root)
        if not fs.isdir(base + "/data"):
            raise FileNotFoundError(f"dataset {name!r} not found at {root} (no {root}/data)")
        return root
    for candidate in (Path(data_root) / "datasets" / name, Path(data_root) / name):
        if (candidate / "data").is_dir():
            return candidate
    raise FileNotFoundError(
        f"dataset {name!r} not found under {data_root} (looked for {data_root}/datasets/{name}/data "
        f"and {data_root}/{name}/data)"
    )


def read_dataset_info(root: str | Path) -> DatasetInfo:
    """Check every split folder under ``root/data`` (local or a URL) and collect the dataset's metadata."""
    root = str(root) if "://" in str(root) else str(Path(root).resolve())
    fs, base = filesystem(root)
    if not fs.isdir(f"{base}/data"):
        raise FileNotFoundError(f"{root} is not a dataset in The Well's layout: no {root}/data folder")
    splits = {s: check_split(f"{root}/data/{s}") for s in SPLITS if fs.isdir(f"{base}/data/{s}")}
    if "train" not in splits:
        raise FileNotFoundError(f"{root}/data/train is missing: the train split is required (statistics)")
    first = splits["train"]
    for split, layout in splits.items():
        for key in (
            "dataset_name",
            "field_names",
            "constant_field_names",
            "varying_scalar_names",
            "spatial_dims",
            "resolution",
            "parameter_names",
        ):
            if getattr(layout, key) != getattr(first, key):
                raise DatasetFormatError(
                    f"{root}/data/{split}: {key} {getattr(layout, key)} disagree with the train split "
                    f"({getattr(first, key)})"
                )
    return DatasetInfo(
        name=first.dataset_name,
        root=root,
        field_names=first.field_names,
        vector_axis=first.vector_axis,
        spatial_dims=first.spatial_dims,
        resolution=first.resolution,
        parameter_names=first.parameter_names,
        n_steps=min(min(layout.n_steps) for layout in splits.values()),
        splits=splits,
        constant_field_names=first.constant_field_names,
        constant_vector_axis=first.constant_vector_axis,
        varying_scalar_names=first.varying_scalar_names,
    )


#: Bytes of a split's fields up to which :class:`WellWindows` keeps whole trajectories in memory
#: (``$LOLARAY_PRELOAD_BYTES``; ``0``: never).
PRELOAD_BYTES_ENV = "LOLARAY_PRELOAD_BYTES"
DEFAULT_PRELOAD_BYTES = 1 << 30

# Keys of a WellDataset item whose first axis is time (the window's states).
_TIME_MAJOR_KEYS = ("input_fields", "input_scalars")


def preload_budget(environ=None) -> int:
    """The bytes of a split :class:`WellWindows` reads whole (``$LOLARAY_PRELOAD_BYTES``,
    default 1 GiB per process)."""
    value = (os.environ if environ is None else environ).get(PRELOAD_BYTES_ENV, "")
    try:
        return int(float(value)) if value.strip() else DEFAULT_PRELOAD_BYTES
    except ValueError as error:
        raise ValueError(f"${PRELOAD_BYTES_ENV} must be a number of bytes, got {value!r}") from error


def split_bytes(info: DatasetInfo, split: str) -> int:
    """Bytes of a split's fields and known channels in float32, every time step."""
    layout = info.splits[split]
    channels = info.n_fields + len(info.constant_field_names) + len(info.varying_scalar_names)
    cells = int(np.prod(info.resolution))
    return sum(t * n for t, n in zip(layout.n_trajectories, layout.n_steps)) * channels * cells * 4


def _well_dataset(info: DatasetInfo, split: str, *, length: int, stride: int) -> WellDataset:
    """The Well's reader of ``split``: windows of ``length`` states ``stride`` steps apart."""
    return WellDataset(
        # Custom names need path= (well_dataset_name must be one of The Well's); stats are
        # never read (use_normalization=False: lolaray standardizes itself).
        path=f"{info.root}/data/{split}",
        normalization_path=f"{info.root}/stats.yaml",
        n_steps_input=length,
        n_steps_output=0,
        min_dt_stride=stride,
        max_dt_stride=stride,
        use_normalization=False,
        return_grid=False,
        boundary_return_type="padding",
    )


class WellWindows(Dataset):
    """Windows of ``length`` states ``stride`` steps apart from one split, channels-first.

    Item ``i`` is a dict with ``x`` ``(C, length, *spatial)`` float32 (standardized if a
    standardizer is given, augmented if ``augment``), ``theta`` ``(P + 2·n_dims,)``, on data
    with known channels (:attr:`DatasetInfo.known_names`) ``known`` ``(K, length, *spatial)``
    (standardized by :func:`known_standardizer_for` whenever ``x`` is, augmented with the
    same draw), and the
    provenance ``file`` (index into the split's sorted files), ``trajectory`` (index in that
    file) and ``start`` (first time index). Windows never cross trajectories; item order
    is file → trajectory → start (The Well's).

    :param length: states per window (``None``: whole trajectories).
    :param stride: time steps between consecutive states of a window (Δ).
    :param augment: an :class:`~lolaray.platform.augmentation.Augmentation`, or a setting of
        :func:`~lolaray.platform.augmentation.augmentation_setting` (``True``: all, ``False``:
        none, or names such as ``("flip", "roll")``).
    :param preload: read whole trajectories, once each, and cut windows from them in memory
        (``None``: when the split's fields fit :func:`preload_budget` and its trajectories
        all have the same length). The Well's reader costs about the same per window as
        per trajectory — its per-item HDF5 attribute reads dominate — so on the demo data a
        batch of 8 single states took 62 ms one window at a time (an autoencoder step takes
        90), and a whole trajectory of 101 states 11 ms. The items are the same either way.
    :raises ValueError: the window does not fit in the trajectories.
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        *,
        length: int | None = 1,
        stride: int = 1,
        standardizer: Standardizer | None = None,
        augment: Augmentation | bool | Sequence[str] = False,
        generator: torch.Generator | None = None,
        preload: bool | None = None,
    ):
        if split not in info.splits:
            raise FileNotFoundError(f"{info.root}/data/{split} is missing (have: {', '.join(info.splits)})")
        layout = info.splits[split]
        shortest = min(layout.n_steps)
        length = shortest if length is None else length
        if length < 1 or stride < 1:
            raise ValueError(f"window length and stride must be >= 1, got length={length}, stride={stride}")
        span = (length - 1) * stride + 1
        if span > shortest:
            raise ValueError(
                f"a window of {length} states at stride {stride} spans {span} steps, longer than the "
                f"shortest trajectory of {info.name}/{split} ({shortest} steps)"
            )

        self.info, self.split, self.length, self.stride = info, split, length, stride
        self.standardizer = standardizer
        if not isinstance(augment, Augmentation):
            # One draw for the state and its constant fields: a flipped state keeps its bathymetry.
            augment = Augmentation.from_setting((*info.vector_axis, *info.known_vector_axis), augment)
        self.augment = augment
        self.generator = generator
        self.files = layout.files
        self.windows_per_trajectory = [n - span + 1 for n in layout.n_steps]
        self.offsets = np.cumsum(
            [0] + [t * w for t, w in zip(layout.n_trajectories, self.windows_per_trajectory)]
        )
        self.well = _well_dataset(info, split, length=length, stride=stride)
        if len(self.well) != int(self.offsets[-1]):
            raise RuntimeError(
                f"window count mismatch with WellDataset ({len(self.well)} vs {self.offsets[-1]})"
            )
        if preload is None:
            preload = len(set(layout.n_steps)) == 1 and split_bytes(info, split) <= preload_budget()
        # Whole trajectories (one item each, file -> trajectory order) and those read so far.
        self._trajectories: WellDataset | None = None
        self._loaded: dict[tuple[int, int], dict] = {}
        if preload:
            if len(set(layout.n_steps)) != 1:
                raise ValueError(f"{info.name}/{split}: preload needs trajectories of one length")
            self._trajectories = _well_dataset(info, split, length=shortest, stride=1)
            self._first_trajectory = np.cumsum([0, *layout.n_trajectories])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(file, trajectory, start)`` of window ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range [0, {len(self)})")
        file = int(np.searchsorted(self.offsets, index, side="right") - 1)
        local = index - int(self.offsets[file])
        per = self.windows_per_trajectory[file]
        return file, local // per, local % per

    def _read(self, index: int, file: int, trajectory: int, start: int) -> dict:
        """The Well's item of window ``index``: read alone, or cut from its whole trajectory."""
        if self._trajectories is None:
            return self.well[index]
        whole = self._loaded.get((file, trajectory))
        if whole is None:
            whole = self._trajectories[int(self._first_trajectory[file]) + trajectory]
            self._loaded[(file, trajectory)] = whole
        times = slice(start, start + (self.length - 1) * self.stride + 1, self.stride)
        # Copies: the windows are augmented and standardized downstream, the trajectory is kept.
        return {
            key: value[times].clone() if key in _TIME_MAJOR_KEYS else value.clone()
            for key, value in whole.items()
        }

    def __getitem__(self, index: int) -> dict:
        file, trajectory, start = self.locate(index)
        item = self._read(index, file, trajectory, start)
        fields = item["input_fields"]  # (L, *spatial, C), channels-last
        if not torch.isfinite(fields).all():
            raise DatasetFormatError(
                f"{self.files[file]}: NaN/Inf in trajectory {trajectory}, time steps "
                f"{start}..{start + (self.length - 1) * self.stride}"
            )
        x = fields.movedim(-1, 0).float()  # (C, L, *spatial)
        bc = item["boundary_conditions"].float()
        known = _known_channels(self.info, item, x.shape[1])
        if known is not None and not torch.isfinite(known).all():
            raise DatasetFormatError(
                f"{self.files[file]}: NaN/Inf in a constant field or time-varying scalar of trajectory "
                f"{trajectory}"
            )
        if self.augment is not None:
            x, known, bc = augment_with_known(self.augment, x, known, bc, self.generator)
        if self.standardizer is not None:
            x = self.standardizer.forward(x, channel_dim=0)
            if known is not None:
                known = known_standardizer_for(self.info).forward(known, channel_dim=0)
        params = item.get("constant_scalars", torch.zeros(0)).float().reshape(-1)
        out = {
            "x": x.contiguous(),
            "theta": torch.cat([params, bc.flatten()]),
            "file": file,
            "trajectory": trajectory,
            "start": start,
        }
        if known is not None:
            out["known"] = known.contiguous()
        return out


def _known_channels(info: DatasetInfo, item: dict, steps: int) -> torch.Tensor | None:
    """The known channels of a WellDataset item, ``(K, L, *spatial)``: the time-invariant
    fields repeated over the window's ``L`` states, then the time-varying scalars repeated
    over space (``None`` without any)."""
    if not info.n_known:
        return None
    parts = []
    if info.constant_field_names:
        constant = item["constant_fields"].movedim(-1, 0).float()  # (K_f, *spatial)
        parts.append(constant.unsqueeze(1).expand(-1, steps, *constant.shape[1:]))
    if info.varying_scalar_names:
        # WellDataset puts every time-varying scalar in input_scalars (L, S), in file order.
        scalars = item["input_scalars"].reshape(steps, -1).float().movedim(0, 1)  # (S, L)
        parts.append(
            scalars.reshape(*scalars.shape, *([1] * info.n_spatial_dims)).expand(-1, -1, *info.resolution)
        )
    return torch.cat(parts)


def augment_with_known(
    augment: Augmentation,
    x: torch.Tensor,
    known: torch.Tensor | None,
    bc: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One random symmetry of a window ``x`` ``(C, L, *spatial)``, its known channels
    ``(K, L, *spatial)`` (or ``None``) and its boundary codes, the same draw for all three
    (a flipped state keeps its bathymetry); ``augment`` covers the channels of ``x``, then
    those of ``known``."""
    if known is None:
        x, bc = augment(x, bc, generator)
        return x, None, bc
    both, bc = augment(torch.cat([x, known]), bc, generator)
    return both[: x.shape[0]], both[x.shape[0] :], bc


def standardizer_for(info: DatasetInfo, *, max_states: int = 1024, seed: int = 0) -> Standardizer:
    """The standardization of ``info``: the paper's statistics for The Well's datasets, else fitted.

    Fitted statistics follow method.md §1 (``max_states`` random single states of the train
    split, unaugmented) and are cached as JSON next to the data when it is writable, else
    under the data cache folder, keyed by the dataset's fingerprint.
    """
    known = KNOWN_PREPROCESSING.get(info.name, {})
    transforms = known.get("transforms") or ("none",) * info.n_fields
    if len(transforms) != info.n_fields:
        transforms = ("none",) * info.n_fields
    if known.get("mean") is not None and len(known["mean"]) == info.n_fields:
        return Standardizer(info.field_names, tuple(transforms), tuple(known["mean"]), tuple(known["std"]))
    key = f"lolaray-standardizer-{info.fingerprint()}-{max_states}-{seed}.json"
    folders = ([Path(info.root)] if info.is_local else []) + [data_cache_dir() / "standardizers"]
    for folder in folders:
        if (folder / key).is_file():
            return Standardizer.from_dict(json.loads((folder / key).read_text()))
    states = WellWindows(info, "train", length=1)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(states), size=min(max_states, len(states)), replace=False)
    fitted = fit_standardizer(
        (states[int(i)]["x"][:, 0] for i in picks), field_names=info.field_names, transforms=transforms
    )
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{key}.{os.getpid()}"
            tmp.write_text(json.dumps(fitted.to_dict(), indent=2))
            os.replace(tmp, folder / key)
            break
        except OSError:
            continue
    return fitted


@functools.lru_cache(maxsize=8)
def _known_standardizer(root: str, fingerprint: str, max_states: int, seed: int) -> Standardizer:
    info = read_dataset_info(root)
    states = WellWindows(info, "train", length=1)
    picks = np.random.default_rng(seed).choice(len(states), size=min(max_states, len(states)), replace=False)
    return fit_standardizer(
        (states[int(i)]["known"][:, 0] for i in sorted(picks)),
        field_names=info.known_names,
        transforms=("none",) * info.n_known,
    )


def known_standardizer_for(info: DatasetInfo, *, max_states: int = 256, seed: int = 0) -> Standardizer:
    """The standardization of ``info``'s known channels (:attr:`DatasetInfo.known_names`):
    mean and standard deviation per channel over ``max_states`` random states of the train
    split (fitted once per process; a known channel is one value per state or a field that
    does not change along a trajectory, so a few hundred states suffice)."""
    if not info.n_known:
        raise ValueError(f"{info.name} has no time-invariant field or time-varying scalar")
    return _known_standardizer(info.root, info.fingerprint(), max_states, seed)


def theta_standardizer_for(info: DatasetInfo, log_parameters: Sequence[str]) -> ThetaStandardizer:
    """How the emulators standardize θ on ``info``: ``log_parameters`` as logarithms, the
    statistics over the train split's trajectories (read from the file headers).

    :raises ValueError: a name of ``log_parameters`` is not a parameter of the data, or a
        logged parameter is ``<= 0`` on the train split (:func:`~lolaray.platform.dataset_specs.resolve_spec`
        checks every split, naming the file).
    """
    return fit_theta_standardizer(
        info.parameter_samples("train"),
        parameter_names=info.parameter_names,
        log_parameters=log_parameters,
        boundary_codes=2 * info.n_spatial_dims,
    )


@functools.lru_cache(maxsize=8)
def cached_windows(root: str, split: str, length: int | None, stride: int, standardize: bool) -> WellWindows:
    """A :class:`WellWindows` per process and arguments: Ray reuses its task workers, so a
    map function reads the files' headers once per worker rather than once per batch."""
    info = read_dataset_info(root)
    return WellWindows(
        info,
        split,
        length=length,
        stride=stride,
        standardizer=standardizer_for(info) if standardize else None,
    )


def _read_windows(batch: dict, *, root, split, length, stride, standardize) -> dict:
    windows = cached_windows(root, split, length, stride, standardize)
    items = [windows[int(i)] for i in batch["id"]]
    rows = {
        "x": np.stack([it["x"].numpy() for it in items]),
        "theta": np.stack([it["theta"].numpy() for it in items]),
        "file": np.array([Path(windows.files[it["file"]]).name for it in items]),
        "trajectory": np.array([it["trajectory"] for it in items]),
        "start": np.array([it["start"] for it in items]),
    }
    if "known" in items[0]:
        rows["known"] = np.stack([it["known"].numpy() for it in items])
    return rows


def ray_dataset(
    info: DatasetInfo,
    split: str,
    *,
    length: int | None = None,
    stride: int = 1,
    standardize: bool = True,
    indices: Sequence[int] | None = None,
    rows_per_block: int = 4,
):
    """A Ray Data dataset of windows (``length=None``: whole trajectories) of one split.

    Rows: ``x`` ``(C, L, *spatial)`` float32, ``theta``, ``file`` (file name), ``trajectory``,
    ``start``, and ``known`` ``(K, L, *spatial)`` on data with known channels. Reading happens in Ray tasks, each building its own :class:`WellWindows`
    (HDF5 handles are never pickled).
    """

    count = len(WellWindows(info, split, length=length, stride=stride))
    ids = list(range(count)) if indices is None else [int(i) for i in indices]
    blocks = max(1, min(len(ids), -(-len(ids) // rows_per_block)))
    return ray.data.from_items([{"id": i} for i in ids], override_num_blocks=blocks).map_batches(
        _read_windows,
        batch_size=rows_per_block,
        batch_format="numpy",
        fn_kwargs={
            "root": info.root,
            "split": split,
            "length": length,
            "stride": stride,
            "standardize": standardize,
        },
    )
