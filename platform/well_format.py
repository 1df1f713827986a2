"""The Well's on-disk format: writing files, computing ``stats.yaml``, checking a split.

A dataset in The Well's layout is a folder ``<root>/`` holding ``stats.yaml`` and
``data/{train,valid,test}/*.hdf5``; each HDF5 file holds one parameter set with
``n_trajectories`` trajectories of ``T`` snapshots (``PolymathicAI/the_well:docs/data_format.md``).
Arrays are channels-last and float32: scalar fields ``t0`` have shape ``(B, T, *spatial)``,
vector fields ``t1`` have shape ``(B, T, *spatial, D)``. A time-invariant field
(``time_varying: false``, e.g. a bathymetry or an obstacle mask) drops the ``T`` axis, and
the ``B`` axis too when it is the same for every trajectory (``sample_varying: false``).

The loader of record is :class:`the_well.data.WellDataset`. It checks little and fails
with bare assertions deep inside (or silently, see ``the-well.md`` pitfalls), so
:func:`check_split` inspects a split first and raises :class:`DatasetFormatError` naming
the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import fsspec
import h5py
import numpy as np
import yaml

__all__ = [
    "BC_CODES",
    "DatasetFormatError",
    "SplitLayout",
    "check_split",
    "compute_stats",
    "finite_or_raise",
    "write_stats",
    "write_well_file",
]

#: The Well's boundary-condition codes (``the_well.data.datasets.BoundaryCondition``).
BC_CODES = {"WALL": 0, "OPEN": 1, "PERIODIC": 2}


class DatasetFormatError(ValueError):
    """A dataset file or folder does not follow The Well's format (the message names it)."""


def write_well_file(
    path: str | os.PathLike,
    *,
    dataset_name: str,
    t0_fields: Mapping[str, np.ndarray],
    t1_fields: Mapping[str, np.ndarray],
    parameters: Mapping[str, float],
    time: np.ndarray,
    coordinates: Mapping[str, np.ndarray],
    boundary: str | Mapping[str, str],
    constant_fields: Mapping[str, np.ndarray] | None = None,
    varying_scalars: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write one HDF5 file in The Well's layout.

    :param dataset_name: the ``dataset_name`` root attribute (same for every file of a dataset).
    :param t0_fields: scalar fields in channel order, each ``(B, T, *spatial)``.
    :param t1_fields: vector fields, each ``(B, T, *spatial, D)`` with ``D = len(coordinates)``.
    :param parameters: simulation parameters, written as 0-d float32 ``/scalars`` and root attributes.
    :param time: snapshot times ``(T,)``.
    :param coordinates: axis name -> cell-centre coordinates, in axis order (e.g. ``x``, ``y``).
    :param boundary: ``"periodic"``, ``"open"`` or ``"wall"`` on every axis, or one of them
        per axis name (e.g. ``{"x": "periodic", "y": "wall"}`` for Rayleigh–Bénard).
    :param constant_fields: time-invariant scalar fields, written after the ``t0_fields``
        with ``time_varying: false``: ``(B, *spatial)`` per trajectory or ``(*spatial)``
        shared by all (``sample_varying: false``).
    :param varying_scalars: time-varying scalars, ``(B, T)`` (``time_varying: true``).
    """
    axes = list(coordinates)
    per_axis = {axis: boundary for axis in axes} if isinstance(boundary, str) else dict(boundary)
    if sorted(per_axis) != sorted(axes):
        raise ValueError(f"boundary conditions for axes {sorted(per_axis)}, but the axes are {axes}")
    for kind in per_axis.values():
        if kind.upper() not in BC_CODES:
            raise ValueError(f"unknown boundary condition {kind!r}; expected one of periodic, open, wall")
    first = next(iter({**t0_fields, **t1_fields}.values()))
    n_trajectories = int(first.shape[0])
    with h5py.File(path, "w") as f:
        f.attrs["dataset_name"] = dataset_name
        f.attrs["grid_type"] = "cartesian"
        f.attrs["n_spatial_dims"] = len(axes)
        f.attrs["n_trajectories"] = n_trajectories
        f.attrs["simulation_parameters"] = list(parameters)
        for name, value in parameters.items():
            f.attrs[name] = value

        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = axes
        ds = dims.create_dataset("time", data=np.asarray(time, dtype=np.float32))
        ds.attrs["sample_varying"] = False
        ds.attrs["time_varying"] = True
        for axis, coords in coordinates.items():
            ds = dims.create_dataset(axis, data=np.asarray(coords, dtype=np.float32))
            ds.attrs["sample_varying"] = False
            ds.attrs["time_varying"] = False

        bcs = f.create_group("boundary_conditions")
        for axis, coords in coordinates.items():
            group = bcs.create_group(f"{axis}_{per_axis[axis].lower()}")
            group.attrs["bc_type"] = per_axis[axis].upper()
            group.attrs["associated_dims"] = [axis]
            group.attrs["associated_fields"] = []
            group.attrs["sample_varying"] = False
            group.attrs["time_varying"] = False
            # Both ends must be True: an all-False mask reads as OPEN whatever bc_type says.
            mask = np.zeros(len(coords), dtype=bool)
            mask[0] = mask[-1] = True
            group.create_dataset("mask", data=mask)

        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = [*parameters, *(varying_scalars or {})]
        for name, value in parameters.items():
            # 0-d, not (1,): a (1,) parameter makes constant_scalars (1, P) instead of (P,).
            ds = scalars.create_dataset(name, data=np.float32(value))
            ds.attrs["sample_varying"] = False
            ds.attrs["time_varying"] = False
        for name, values in (varying_scalars or {}).items():
            ds = scalars.create_dataset(name, data=np.asarray(values, dtype=np.float32))
            ds.attrs["sample_varying"] = True
            ds.attrs["time_varying"] = True

        constants = dict(constant_fields or {})
        for order, fields in ((0, {**t0_fields, **constants}), (1, t1_fields), (2, {})):
            group = f.create_group(f"t{order}_fields")
            group.attrs["field_names"] = list(fields)
            for name, values in fields.items():
                ds = group.create_dataset(name, data=np.asarray(values, dtype=np.float32))
                ds.attrs["dim_varying"] = [True] * len(axes)
                ds.attrs["sample_varying"] = name not in constants or ds.ndim > len(axes)
                ds.attrs["time_varying"] = name not in constants


def _moments(values: np.ndarray, component_axis: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Sum and sum of squares per component (float64), and the count per component."""
    values = np.asarray(values, dtype=np.float64)
    if component_axis is None:
        return np.array(values.sum()), np.array((values**2).sum()), values.size
    axes = tuple(a for a in range(values.ndim) if a != component_axis % values.ndim)
    count = values.size // values.shape[component_axis]
    return values.sum(axis=axes), (values**2).sum(axis=axes), count


def compute_stats(files: Sequence[str | os.PathLike]) -> dict:
    """Statistics of the fields of ``files`` (a train split), as The Well's ``stats.yaml`` holds them.

    Moments pool every (trajectory, time, space) point per component across files;
    ``std`` is the population standard deviation; ``*_delta`` are the same moments of
    ``u[:, 1:] - u[:, :-1]`` along time. Scalar fields map to a float, vector fields to a
    list with one entry per component.
    """
    acc: dict[str, dict[str, list]] = {}
    for file in files:
        with h5py.File(file, "r") as f:
            for order in (0, 1):
                group = f[f"t{order}_fields"]
                for name in group.attrs["field_names"]:
                    if not bool(group[name].attrs.get("time_varying", True)):
                        continue  # constant fields are conditioning; lolaray fits their statistics itself
                    data = group[name][...]
                    component_axis = -1 if order == 1 else None
                    entry = acc.setdefault(name, {"plain": [0, 0, 0], "delta": [0, 0, 0]})
                    for key, values in (("plain", data), ("delta", np.diff(data, axis=1))):
                        s, s2, n = _moments(values, component_axis)
                        entry[key][0] = entry[key][0] + s
                        entry[key][1] = entry[key][1] + s2
                        entry[key][2] += n

    def finish(s, s2, n):
        mean = s / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        rms = np.sqrt(s2 / n)
        return [np.asarray(v).tolist() for v in (mean, std, rms)]

    stats: dict[str, dict] = {k: {} for k in ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta")}
    for name, entry in acc.items():
        stats["mean"][name], stats["std"][name], stats["rms"][name] = finish(*entry["plain"])
        delta = finish(*entry["delta"])
        stats["mean_delta"][name], stats["std_delta"][name], stats["rms_delta"][name] = delta
    return stats


def write_stats(stats: Mapping, path: str | os.PathLike) -> None:
    """Write ``stats`` as ``stats.yaml`` (values rounded to 5 significant digits like The Well's ``%.4E``)."""

    def rounded(value):
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return float(f"{float(value):.4E}")

    clean = {key: {name: rounded(v) for name, v in fields.items()} for key, fields in stats.items()}
    with open(path, "w") as f:
        yaml.safe_dump(clean, f, sort_keys=False)


@dataclass(frozen=True)
class SplitLayout:
    """What every file of a split agrees on, read from the HDF5 headers (no field data).

    :param files: the split's HDF5 files, sorted (the order ``WellDataset`` indexes them), as
        paths of their file system (no protocol prefix); ``file_sizes`` in bytes.
    :param field_names: flattened channel names in The Well's order (t0, then t1 components ``name_x``...).
    :param vector_axis: per channel, the spatial axis index a vector component points along, else ``None``.
    :param spatial_dims: axis names, e.g. ``("x", "y")``.
    :param resolution: grid size per axis.
    :param parameter_names: the constant scalars (simulation parameters), in file order.
    :param n_trajectories: per file. ``n_steps``: per file (time length).
    :param boundary_types: per file, the ``bc_type`` per axis (e.g. ``("PERIODIC", "PERIODIC")``).
    :param parameter_values: per file, the value of each parameter (one parameter set per file).
    :param constant_field_names: the time-invariant fields' channels (flattened like
        ``field_names``), in The Well's order; ``constant_vector_axis`` as ``vector_axis``.
    :param varying_scalar_names: the time-varying scalars (one value per state, known).
    """

    files: tuple[str, ...]
    file_sizes: tuple[int, ...]
    dataset_name: str
    field_names: tuple[str, ...]
    vector_axis: tuple[int | None, ...]
    spatial_dims: tuple[str, ...]
    resolution: tuple[int, ...]
    parameter_names: tuple[str, ...]
    n_trajectories: tuple[int, ...]
    n_steps: tuple[int, ...]
    boundary_types: tuple[tuple[str, ...], ...]
    parameter_values: tuple[tuple[float, ...], ...] = ()
    constant_field_names: tuple[str, ...] = ()
    constant_vector_axis: tuple[int | None, ...] = ()
    varying_scalar_names: tuple[str, ...] = ()


def _read_header(path: str, fs) -> dict:
    """Everything :class:`SplitLayout` needs from one file, with clear errors for broken files."""
    stream = fs.open(path, "rb")
    try:
        f = h5py.File(stream, "r")
    except OSError as error:
        stream.close()
        raise DatasetFormatError(
            f"{path}: not a readable HDF5 file (truncated or corrupt?): {error}"
        ) from None
    with stream, f:
        try:
            missing = [
                g
                for g in ("dimensions", "boundary_conditions", "scalars", "t0_fields", "t1_fields")
                if g not in f
            ]
            if missing:
                raise DatasetFormatError(f"{path}: missing group(s) {missing}; not in The Well's layout")
            axes = tuple(str(a) for a in f["dimensions"].attrs["spatial_dims"])
            resolution = tuple(int(f["dimensions"][a].shape[-1]) for a in axes)
            channels: dict[bool, tuple[list[str], list[int | None]]] = {True: ([], []), False: ([], [])}
            n_traj = int(f.attrs["n_trajectories"])
            steps = int(f["dimensions"]["time"].shape[-1])
            for order in (0, 1, 2):
                group = f.get(f"t{order}_fields")
                if group is None:
                    continue
                for name in group.attrs["field_names"]:
                    if name not in group:
                        raise DatasetFormatError(f"{path}: field {name!r} is listed but has no dataset")
                    shape = group[name].shape
                    attrs = group[name].attrs
                    time_varying = bool(attrs.get("time_varying", True))
                    sample_varying = bool(attrs.get("sample_varying", True))
                    # Constant fields drop the time axis, and the trajectory axis when shared.
                    leading = (n_traj,) * sample_varying + (steps,) * time_varying
                    expected = (*leading, *resolution) + (len(axes),) * order
                    if tuple(shape) != expected:
                        layout = ("trajectories, " * sample_varying) + ("time, " * time_varying)
                        raise DatasetFormatError(
                            f"{path}: field {name!r} has shape {tuple(shape)}, expected {expected} "
                            f"({layout}*spatial, components)"
                        )
                    names, vector_axis = channels[time_varying]
                    if order == 0:
                        names.append(str(name))
                        vector_axis.append(None)
                    elif order == 1:
                        for i, axis in enumerate(axes):
                            names.append(f"{name}_{axis}")
                            vector_axis.append(i)
                    else:
                        raise DatasetFormatError(
                            f"{path}: tensor (t2) fields are not supported yet ({name!r})"
                        )
            fields, vector_axis = channels[True]
            if not fields:
                raise DatasetFormatError(f"{path}: no time-varying field to emulate")
            params = tuple(
                str(n) for n in f["scalars"].attrs["field_names"] if not f["scalars"][n].attrs["time_varying"]
            )
            varying = tuple(
                str(n) for n in f["scalars"].attrs["field_names"] if f["scalars"][n].attrs["time_varying"]
            )
            for name in varying:  # known conditioning per state, e.g. a forcing amplitude
                sample_varying = bool(f["scalars"][name].attrs.get("sample_varying", True))
                expected = (n_traj,) * sample_varying + (steps,)
                if tuple(f["scalars"][name].shape) != expected:
                    raise DatasetFormatError(
                        f"{path}: time-varying scalar {name!r} has shape {tuple(f['scalars'][name].shape)}, "
                        f"expected {expected} ({'trajectories, ' * sample_varying}time)"
                    )
            bc_by_axis: dict[str, str] = {}
            for group in f["boundary_conditions"].values():
                dims = group.attrs["associated_dims"]
                dims = [dims] if isinstance(dims, str) else list(dims)
                for axis in dims:
                    bc_by_axis[str(axis)] = str(group.attrs["bc_type"]).upper()
            return {
                "dataset_name": str(f.attrs["dataset_name"]),
                "spatial_dims": axes,
                "resolution": resolution,
                "fields": tuple(fields),
                "vector_axis": tuple(vector_axis),
                "constant_fields": tuple(channels[False][0]),
                "varying_scalars": varying,
                "constant_vector_axis": tuple(channels[False][1]),
                "params": params,
                "param_values": tuple(float(np.asarray(f["scalars"][n][()]).reshape(-1)[0]) for n in params),
                "n_trajectories": int(f.attrs["n_trajectories"]),
                "n_steps": int(f["dimensions"]["time"].shape[-1]),
                "bcs": tuple(bc_by_axis.get(a, "WALL") for a in axes),
            }
        except (KeyError, OSError) as error:
            raise DatasetFormatError(f"{path}: unreadable or incomplete The Well file: {error}") from None


def filesystem(url: str | os.PathLike):
    """``(fsspec filesystem, path)`` for a local path or a URL (``hf://``, ``s3://``, ``memory://``...)."""

    try:
        return fsspec.core.url_to_fs(str(url))
    except (ImportError, ValueError) as error:
        raise ValueError(
            f"cannot open {url}: {error}. Streaming from hf:// needs `pip install huggingface_hub` "
            "(and network access); other protocols need their fsspec package (s3fs, gcsfs...)"
        ) from None


def check_split(folder: str | os.PathLike) -> SplitLayout:
    """Inspect the HDF5 files of one split folder (local or any fsspec URL); return what they agree on.

    :raises FileNotFoundError: the folder does not exist or holds no ``*.hdf5``/``*.h5`` file.
    :raises DatasetFormatError: a file is not HDF5, is truncated, lacks The Well's groups, or
        disagrees with its siblings (name, fields, axes, resolution, parameters); the message
        names the file.
    """
    fs, base = filesystem(folder)
    if not fs.isdir(base):
        raise FileNotFoundError(f"dataset split folder {folder} does not exist")
    files = sorted(fs.glob(base.rstrip("/") + "/*.hdf5") + fs.glob(base.rstrip("/") + "/*.h5"))
    if not files:
        raise FileNotFoundError(f"no .hdf5 files in {folder}")
    headers = [_read_header(p, fs) for p in files]
    reference = headers[0]
    for path, header in zip(files[1:], headers[1:]):
        for key, what in (
            ("dataset_name", "dataset name"),
            ("spatial_dims", "spatial axes"),
            ("resolution", "resolution"),
            ("fields", "fields"),
            ("constant_fields", "constant fields"),
            ("varying_scalars", "time-varying scalars"),
            ("params", "parameters"),
        ):
            if header[key] != reference[key]:
                raise DatasetFormatError(
                    f"{path}: {what} {header[key]} disagree with its sibling {files[0]} ({reference[key]})"
                )
    return SplitLayout(
        files=tuple(files),
        file_sizes=tuple(int(fs.size(p)) for p in files),
        dataset_name=reference["dataset_name"],
        field_names=reference["fields"],
        vector_axis=reference["vector_axis"],
        spatial_dims=reference["spatial_dims"],
        resolution=reference["resolution"],
        parameter_names=reference["params"],
        n_trajectories=tuple(h["n_trajectories"] for h in headers),
        n_steps=tuple(h["n_steps"] for h in headers),
        boundary_types=tuple(h["bcs"] for h in headers),
        parameter_values=tuple(h["param_values"] for h in headers),
        constant_field_names=reference["constant_fields"],
        constant_vector_axis=reference["constant_vector_axis"],
        varying_scalar_names=reference["varying_scalars"],
    )


def finite_or_raise(values: np.ndarray, *, where: str) -> None:
    """Raise :class:`DatasetFormatError` naming ``where`` if ``values`` holds NaN or Inf."""
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DatasetFormatError(f"{where}: {bad} non-finite value(s) (NaN/Inf) in the data")
