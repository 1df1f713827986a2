"""Tiny datasets in The Well's layout for tests (random fields, no solver needed)."""

from pathlib import Path

import numpy as np

from lolaray.platform.well_format import compute_stats, write_stats, write_well_file


def write_tiny(
    path,
    *,
    boundary="periodic",
    gamma=1.4,
    n_traj=2,
    steps=11,
    res=8,
    seed=0,
    extra_field=False,
    constant=False,
):
    """One file with ``n_traj`` trajectories of smooth-ish random positive Euler-like fields;
    ``constant``: with a time-invariant field ``depth`` per trajectory and a time-varying
    scalar ``forcing``."""
    rng = np.random.default_rng(seed)
    shape = (n_traj, steps, res, res)
    t0 = {name: rng.uniform(0.5, 2.0, shape).astype(np.float32) for name in ("energy", "density", "pressure")}
    if extra_field:
        t0["temperature"] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    centres = (np.arange(res) + 0.5) / res
    write_well_file(
        path,
        dataset_name="tiny_euler",
        t0_fields=t0,
        t1_fields={"momentum": rng.normal(size=(*shape, 2)).astype(np.float32)},
        parameters={"gamma": gamma},
        time=np.arange(steps) * 0.015,
        coordinates={"x": centres, "y": centres},
        boundary=boundary,
        constant_fields={"depth": depth_field(rng, (n_traj, res, res))} if constant else None,
        varying_scalars={"forcing": forcing(rng, n_traj, steps)} if constant else None,
    )


def depth_field(rng, shape):
    """A positive, trajectory-dependent time-invariant field (a bathymetry-like ramp plus bumps)."""
    ramp = np.linspace(1.0, 3.0, shape[-2])[:, None] * np.ones(shape[-1])
    return (ramp + rng.uniform(0.0, 0.5, shape)).astype(np.float32)


def forcing(rng, n_traj, steps):
    """A time-varying scalar per trajectory, ``(n_traj, steps)``: a slow ramp with a random slope."""
    return (np.linspace(0.0, 1.0, steps)[None] * rng.uniform(0.5, 2.0, (n_traj, 1))).astype(np.float32)


def make_tiny_dataset(root: Path, *, res=8, steps=11, n_traj=2, constant=False) -> Path:
    """``root/data/{train,valid,test}`` with a periodic (gamma 1.4) and an open (gamma 1.76) file each."""
    for split in ("train", "valid", "test"):
        (root / "data" / split).mkdir(parents=True)
        for i, (bc, gamma) in enumerate((("periodic", 1.4), ("open", 1.76))):
            write_tiny(
                root / "data" / split / f"tiny_{bc}_{gamma}.hdf5",
                boundary=bc,
                gamma=gamma,
                seed=i,
                res=res,
                steps=steps,
                n_traj=n_traj,
                constant=constant,
            )
    write_stats(compute_stats(sorted((root / "data" / "train").glob("*.hdf5"))), root / "stats.yaml")
    return root


def _smooth(rng, shape, *, axes, scale=1.0):
    """Random fields smooth along ``axes`` (a few low Fourier modes), shape ``shape``."""
    field = rng.normal(size=shape)
    for axis in axes:
        field = np.fft.irfft(
            np.fft.rfft(field, axis=axis)[(slice(None),) * (axis % field.ndim) + (slice(0, 3),)],
            n=shape[axis],
            axis=axis,
        )
    return (scale * field / (field.std() + 1e-12)).astype(np.float32)


def make_rayleigh_benard_like(root: Path, *, res=(16, 8), steps=33, n_traj=2, constant=False) -> Path:
    """A tiny folder mimicking The Well's ``rayleigh_benard``: a non-square grid, x periodic
    and y WALL, buoyancy / pressure / 2-D velocity, Rayleigh and Prandtl numbers spanning
    decades (so the paper's settings apply by name: stride 4, ln Ra and ln Pr in θ).
    ``constant``: with a time-invariant field ``depth`` and a time-varying scalar ``forcing``
    per trajectory (not in The Well's rayleigh_benard; how the smoke study covers known
    channels on a 2-D non-square grid)."""
    nx, ny = res
    x, y = (np.arange(nx) + 0.5) / nx, (np.arange(ny) + 0.5) / ny
    shape = (n_traj, steps, nx, ny)
    for split in ("train", "valid", "test"):
        (root / "data" / split).mkdir(parents=True)
        for i, (rayleigh, prandtl) in enumerate(((1e6, 1.0), (1e8, 10.0))):
            rng = np.random.default_rng(100 * i + len(split))
            write_well_file(
                root / "data" / split / f"rayleigh_benard_Rayleigh_{rayleigh:.0e}_Prandtl_{prandtl:g}.hdf5",
                dataset_name="rayleigh_benard",
                t0_fields={
                    "buoyancy": 0.38 + _smooth(rng, shape, axes=(2, 3), scale=0.25),
                    "pressure": _smooth(rng, shape, axes=(2, 3), scale=0.15),
                },
                t1_fields={"velocity": _smooth(rng, (*shape, 2), axes=(2, 3), scale=0.2)},
                parameters={"Rayleigh": rayleigh, "Prandtl": prandtl},
                time=np.arange(steps) * 0.25,
                coordinates={"x": x, "y": y},
                boundary={"x": "periodic", "y": "wall"},
                constant_fields={"depth": depth_field(rng, (n_traj, nx, ny))} if constant else None,
                varying_scalars={"forcing": forcing(rng, n_traj, steps)} if constant else None,
            )
    write_stats(compute_stats(sorted((root / "data" / "train").glob("*.hdf5"))), root / "stats.yaml")
    return root


def make_gravity_cooling_like(root: Path, *, res=(8, 8, 8), steps=12, n_traj=2) -> Path:
    """A tiny folder mimicking The Well's ``turbulence_gravity_cooling``: 3-D, open
    boundaries, positive density / pressure / temperature (log-transformed by the paper's
    preprocessing), a 3-vector velocity, and rho0, Z, T0 parameters (stride 1 by name)."""
    axes = dict(zip("xyz", ((np.arange(n) + 0.5) / n for n in res)))
    shape = (n_traj, steps, *res)
    for split in ("train", "valid", "test"):
        (root / "data" / split).mkdir(parents=True)
        for i, (rho0, metallicity, t0) in enumerate(((0.1, 0.0, 10.0), (10.0, 0.02, 1000.0))):
            rng = np.random.default_rng(200 * i + len(split))
            positive = {
                name: np.exp(mean + _smooth(rng, shape, axes=(2, 3, 4), scale=std)).astype(np.float32)
                for name, mean, std in (
                    ("density", -1.75, 0.95),
                    ("pressure", -4.2, 1.75),
                    ("temperature", 5.5, 1.1),
                )
            }
            write_well_file(
                root / "data" / split / f"turbulence_gravity_cooling_rho0_{rho0:g}_T0_{t0:g}.hdf5",
                dataset_name="turbulence_gravity_cooling",
                t0_fields=positive,
                t1_fields={"velocity": _smooth(rng, (*shape, 3), axes=(2, 3, 4), scale=0.5)},
                parameters={"rho0": rho0, "Z": metallicity, "T0": t0},
                time=np.arange(steps) * 0.1,
                coordinates=axes,
                boundary="open",
            )
    write_stats(compute_stats(sorted((root / "data" / "train").glob("*.hdf5"))), root / "stats.yaml")
    return root
