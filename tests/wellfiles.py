"""Tiny datasets in The Well's layout for tests (random fields, no solver needed)."""

from pathlib import Path

import numpy as np

from lolaray.platform.well_format import compute_stats, write_stats, write_well_file


def write_tiny(path, *, boundary="periodic", gamma=1.4, n_traj=2, steps=11, res=8, seed=0, extra_field=False):
    """One file with ``n_traj`` trajectories of smooth-ish random positive Euler-like fields."""
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
    )


def make_tiny_dataset(root: Path, *, res=8, steps=11, n_traj=2) -> Path:
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
            )
    write_stats(compute_stats(sorted((root / "data" / "train").glob("*.hdf5"))), root / "stats.yaml")
    return root
