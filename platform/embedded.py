"""The embedded dataset ``euler_quadrants``: a small Euler multi-quadrants set made on the spot.

It mimics The Well's ``euler_multi_quadrants_{openBC,periodicBC}``: 2-D compressible Euler
(ideal gas) on ``[0, 1]²`` from random piecewise-constant quadrant states, snapshots every
0.015 up to t = 1.5 (101 states), fields ``energy, density, pressure`` (t0) and
``momentum`` (t1), one HDF5 file per (gamma, boundary condition) per split, and
``stats.yaml`` from the train split — so the loader reads it exactly like the real data.

Generation runs one task per file (Ray tasks when a Ray session is up, in-process
otherwise); every trajectory's random draw derives from (seed, split, gamma, boundary,
index), so the result does not depend on how the files are spread over workers. A dataset
folder is built under a temporary name and renamed into place after its manifest is
written: a folder without ``lolaray-dataset.json`` is never taken for a finished dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from lolaray.platform import euler
from lolaray.platform.well_format import compute_stats, write_stats, write_well_file

__all__ = [
    "EMBEDDED_DATASETS",
    "EMBEDDED_PRESETS",
    "GAMMAS",
    "EmbeddedPreset",
    "data_cache_dir",
    "embedded_dataset_root",
    "ensure_embedded_dataset",
    "generate_dataset",
    "generate_file",
    "random_quadrant_states",
]

logger = logging.getLogger(__name__)

#: The adiabatic indices of The Well's Euler multi-quadrants sets.
GAMMAS = (1.13, 1.22, 1.3, 1.33, 1.365, 1.4, 1.404, 1.453, 1.597, 1.76)
#: Embedded dataset names understood by the data layer.
EMBEDDED_DATASETS = ("euler_quadrants",)
#: The manifest that marks a finished dataset folder (written last).
MANIFEST = "lolaray-dataset.json"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class EmbeddedPreset:
    """Size and content of an embedded Euler quadrants dataset.

    :param resolution: cells per axis (square grid).
    :param gammas: one file per gamma (and boundary) per split.
    :param boundaries: ``"periodic"`` and/or ``"open"``.
    :param trajectories: trajectories per file for each split.
    :param n_snapshots: stored states per trajectory (101 like The Well).
    :param snapshot_dt: time between stored states (0.015 like The Well).
    :param density_range, pressure_range: log-uniform ranges of the quadrant states.
    :param max_speed: velocities are uniform in ``[-max_speed, max_speed]``.
    :param seed: root of every random draw.
    """

    resolution: int = 64
    gammas: tuple[float, ...] = (1.13, 1.3, 1.4, 1.597, 1.76)
    boundaries: tuple[str, ...] = ("periodic", "open")
    trajectories: tuple[tuple[str, int], ...] = (("train", 8), ("valid", 2), ("test", 2))
    n_snapshots: int = 101
    snapshot_dt: float = 0.015
    density_range: tuple[float, float] = (0.1, 3.0)
    pressure_range: tuple[float, float] = (0.1, 3.0)
    max_speed: float = 0.75
    seed: int = 0

    def __post_init__(self):
        if self.resolution < 4:
            raise ValueError(f"resolution must be at least 4 cells, got {self.resolution}")
        unknown = [g for g in self.gammas if g <= 1.0]
        if unknown or not self.gammas:
            raise ValueError(f"gammas must be a non-empty list of values > 1, got {self.gammas}")
        bad = [b for b in self.boundaries if b not in ("periodic", "open")]
        if bad or not self.boundaries:
            raise ValueError(f"boundaries must be 'periodic' and/or 'open', got {self.boundaries}")
        splits = dict(self.trajectories)
        if set(splits) != set(SPLITS) or min(splits.values()) < 1:
            raise ValueError(f"trajectories must give >= 1 trajectory for each of {SPLITS}, got {splits}")
        if self.n_snapshots < 2:
            raise ValueError(f"n_snapshots must be >= 2, got {self.n_snapshots}")

    def trajectories_per_file(self, split: str) -> int:
        return dict(self.trajectories)[split]

    def fingerprint(self) -> str:
        """A short hash of every field: two presets with the same fingerprint make the same data."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


EMBEDDED_PRESETS: dict[str, EmbeddedPreset] = {
    # Seconds on 2 CPU cores: tests and the smoke sweep.
    "smoke": EmbeddedPreset(
        resolution=32,
        gammas=(1.4, 1.597),
        trajectories=(("train", 3), ("valid", 1), ("test", 1)),
    ),
    # Under a minute on 2 CPU cores: the demo profile's data. 32² (the autoencoders' cost per
    # state is what bounds the demo's training on a laptop), 16 train trajectories per file.
    "demo": EmbeddedPreset(resolution=32, trajectories=(("train", 16), ("valid", 2), ("test", 2))),
}


def data_cache_dir() -> Path:
    """Where embedded datasets are generated: ``$LOLARAY_DATA_DIR``, else ``~/.cache/lolaray/datasets``."""
    return Path(os.environ.get("LOLARAY_DATA_DIR", Path.home() / ".cache" / "lolaray" / "datasets"))


def embedded_dataset_root(
    name: str, preset: str | EmbeddedPreset, cache_dir: str | Path | None = None
) -> Path:
    """The folder of an embedded dataset (named after the preset and its fingerprint)."""
    if name not in EMBEDDED_DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; known: {', '.join(EMBEDDED_DATASETS)}")
    config = _resolve_preset(preset)
    label = preset if isinstance(preset, str) else "custom"
    return Path(cache_dir or data_cache_dir()) / f"{name}-{label}-{config.fingerprint()}"


def _resolve_preset(preset: str | EmbeddedPreset) -> EmbeddedPreset:
    if isinstance(preset, EmbeddedPreset):
        return preset
    if preset not in EMBEDDED_PRESETS:
        raise ValueError(f"unknown embedded preset {preset!r}; known: {', '.join(EMBEDDED_PRESETS)}")
    return EMBEDDED_PRESETS[preset]


def _seed(*parts) -> int:
    """A 63-bit seed from the string form of ``parts`` (stable across processes and platforms)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def random_quadrant_states(
    batch: int,
    resolution: int,
    *,
    generator: torch.Generator,
    density_range: tuple[float, float] = (0.1, 3.0),
    pressure_range: tuple[float, float] = (0.1, 3.0),
    max_speed: float = 0.75,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random piecewise-constant quadrant initial states (a random 2-D Riemann problem).

    The domain is cut at a random point ``(x0, y0)`` in ``[0.25, 0.75]²`` into four quadrants,
    each with its own constant ``(ρ, u, v, p)``: ``ρ`` and ``p`` log-uniform in their ranges,
    ``u, v`` uniform in ``[-max_speed, max_speed]``. The two cut lines carry four
    discontinuities that meet at the corner point.

    :returns: ``(rho, u, v, p)``, each ``(batch, resolution, resolution)`` with axis 1 = x.
    """
    g = generator
    centres = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    cut = 0.25 + 0.5 * torch.rand(batch, 2, generator=g, dtype=torch.float64)
    right = (centres[None, :] >= cut[:, :1]).long()  # (B, Nx): x beyond the cut
    top = (centres[None, :] >= cut[:, 1:]).long()  # (B, Ny)
    quadrant = right[:, :, None] * 2 + top[:, None, :]  # (B, Nx, Ny) in 0..3

    def log_uniform(lo, hi):
        u = torch.rand(batch, 4, generator=g, dtype=torch.float64)
        return torch.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))

    values = {
        "rho": log_uniform(*density_range),
        "p": log_uniform(*pressure_range),
        "u": max_speed * (2 * torch.rand(batch, 4, generator=g, dtype=torch.float64) - 1),
        "v": max_speed * (2 * torch.rand(batch, 4, generator=g, dtype=torch.float64) - 1),
    }
    fields = {
        k: torch.gather(v, 1, quadrant.flatten(1)).view_as(quadrant).to(dtype) for k, v in values.items()
    }
    return fields["rho"], fields["u"], fields["v"], fields["p"]


@dataclass(frozen=True)
class FileSpec:
    """One file to generate: a (split, gamma, boundary) cell of the preset."""

    split: str
    gamma: float
    boundary: str
    n_trajectories: int
    preset: EmbeddedPreset = field(repr=False)

    @property
    def filename(self) -> str:
        return f"euler_quadrants_{self.boundary}BC_gamma_{self.gamma}.hdf5"


def _file_specs(preset: EmbeddedPreset) -> list[FileSpec]:
    return [
        FileSpec(split, gamma, boundary, preset.trajectories_per_file(split), preset)
        for split in SPLITS
        for boundary in preset.boundaries
        for gamma in preset.gammas
    ]


def generate_files(specs: Sequence[FileSpec], folder: str | Path, *, device: str | None = None) -> list[str]:
    """Simulate the trajectories of several files in one batch and write each file.

    All ``specs`` must share the boundary condition (one solver call advances them
    together; gamma is per trajectory). Initial states are drawn per file from a seed of
    (preset seed, split, gamma, boundary), so a file's content does not depend on which
    other files share its batch.

    :returns: the paths written (``folder/<split>/<name>.hdf5``), in the order of ``specs``.
    """
    if len({(s.boundary, s.preset) for s in specs}) != 1:
        raise ValueError("generate_files needs specs of one preset and one boundary condition")
    preset = specs[0].preset
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    initial = []
    for spec in specs:
        generator = torch.Generator().manual_seed(_seed(preset.seed, spec.split, spec.gamma, spec.boundary))
        initial.append(
            random_quadrant_states(
                spec.n_trajectories,
                preset.resolution,
                generator=generator,
                density_range=preset.density_range,
                pressure_range=preset.pressure_range,
                max_speed=preset.max_speed,
            )
        )
    rho, u, v, p = (torch.cat(parts).to(device) for parts in zip(*initial))
    gamma = torch.cat([torch.full((s.n_trajectories,), s.gamma) for s in specs]).to(device)
    times = np.arange(preset.n_snapshots) * preset.snapshot_dt
    out = euler.simulate(
        rho,
        u,
        v,
        p,
        gamma,
        periodic=specs[0].boundary == "periodic",
        snapshot_times=times.tolist(),
        dx=1.0 / preset.resolution,
        dy=1.0 / preset.resolution,
    )
    out = {k: t.float().cpu().numpy() for k, t in out.items()}
    centres = (np.arange(preset.resolution) + 0.5) / preset.resolution
    paths, first = [], 0
    for spec in specs:
        rows = slice(first, first + spec.n_trajectories)
        first += spec.n_trajectories
        path = Path(folder) / spec.split / spec.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        write_well_file(
            path,
            dataset_name="euler_quadrants",
            t0_fields={name: out[name][rows] for name in ("energy", "density", "pressure")},
            t1_fields={"momentum": np.stack([out["momentum_x"][rows], out["momentum_y"][rows]], axis=-1)},
            parameters={"gamma": spec.gamma},
            time=times,
            coordinates={"x": centres, "y": centres},
            boundary=spec.boundary,
        )
        paths.append(str(path))
    return paths


def generate_file(spec: FileSpec, folder: str | Path, *, device: str | None = None) -> str:
    """Simulate and write one file (see :func:`generate_files`)."""
    return generate_files([spec], folder, device=device)[0]


def _batches(specs: list[FileSpec], *, by_split: bool) -> list[list[FileSpec]]:
    """Files grouped for one solver call each: by boundary (and by split, for more parallel tasks)."""
    groups: dict[tuple, list[FileSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.boundary, spec.split if by_split else None), []).append(spec)
    return list(groups.values())


def generate_dataset(
    preset: str | EmbeddedPreset,
    root: str | Path,
    *,
    parallel: str = "auto",
    progress: bool = True,
) -> Path:
    """Generate the dataset into ``root`` (``root/data/{train,valid,test}/*.hdf5`` + ``stats.yaml``).

    The folder is assembled under a temporary sibling name and renamed into place once its
    manifest is written, so an interrupted generation leaves nothing that passes as complete.
    If another process finished ``root`` first, its copy is kept.

    :param parallel: ``"ray"`` (one Ray task per file), ``"local"`` (in this process) or
        ``"auto"`` (Ray when a Ray session is up).
    """
    config = _resolve_preset(preset)
    root = Path(root)
    if parallel not in ("auto", "ray", "local"):
        raise ValueError(f"parallel must be 'auto', 'ray' or 'local', got {parallel!r}")
    use_ray = parallel == "ray"
    if parallel == "auto":
        use_ray = ray.is_initialized()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    specs = _file_specs(config)
    start = time.perf_counter()
    say = print if progress else logger.info
    say(
        f"[lolaray] generating {len(specs)} files of euler_quadrants into {root} ({'Ray tasks' if use_ray else 'in-process'})"
    )
    try:
        # Ray: one task per (boundary, split), so the cluster's CPUs/GPUs share the work;
        # in-process: one batched solver call per boundary (bigger batches vectorise better).
        batches = _batches(specs, by_split=use_ray)
        if use_ray:
            task = ray.remote(num_cpus=1)(generate_files)
            pending = [task.remote(batch, str(staging / "data")) for batch in batches]
            for done in range(1, len(pending) + 1):
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready)
                say(
                    f"[lolaray]   {done}/{len(batches)} batches of files ({time.perf_counter() - start:.1f} s)"
                )
        else:
            for done, batch in enumerate(batches, start=1):
                generate_files(batch, staging / "data")
                say(
                    f"[lolaray]   {done}/{len(batches)} batches of files ({time.perf_counter() - start:.1f} s)"
                )
        train_files = sorted((staging / "data" / "train").glob("*.hdf5"))
        write_stats(compute_stats(train_files), staging / "stats.yaml")
        manifest = {
            "dataset": "euler_quadrants",
            "preset": dataclasses.asdict(config),
            "fingerprint": config.fingerprint(),
            "files": {s: sorted(p.name for p in (staging / "data" / s).glob("*.hdf5")) for s in SPLITS},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - start, 2),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if _is_complete(root):
            shutil.rmtree(staging)
        else:
            if root.exists():  # an incomplete leftover of an interrupted run
                shutil.rmtree(root)
            os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"[lolaray] euler_quadrants ready in {time.perf_counter() - start:.1f} s: {root}")
    return root


def _is_complete(root: Path) -> bool:
    return (root / MANIFEST).is_file()


def ensure_embedded_dataset(
    name: str = "euler_quadrants",
    preset: str | EmbeddedPreset = "demo",
    *,
    cache_dir: str | Path | None = None,
    parallel: str = "auto",
    progress: bool = True,
) -> Path:
    """The folder of an embedded dataset, generated first if it is absent or incomplete."""
    root = embedded_dataset_root(name, preset, cache_dir)
    if not _is_complete(root):
        generate_dataset(preset, root, parallel=parallel, progress=progress)
    return root
