"""The data layer on Ray: generation in Ray tasks, and Ray Data datasets of windows."""

import h5py
import numpy as np
import pytest
import yaml
from wellfiles import make_tiny_dataset

from lolaray.platform.data import WellWindows, open_dataset, ray_dataset
from lolaray.platform.embedded import EmbeddedPreset, generate_dataset


def test_ray_generation_equals_in_process_generation(ray_cluster, tmp_path):
    preset = EmbeddedPreset(
        resolution=8,
        gammas=(1.22, 1.453),
        n_snapshots=6,
        trajectories=(("train", 2), ("valid", 1), ("test", 1)),
    )
    by_ray = generate_dataset(preset, tmp_path / "ray", parallel="ray", progress=False)
    local = generate_dataset(preset, tmp_path / "local", parallel="local", progress=False)
    files = sorted(p.relative_to(by_ray) for p in by_ray.glob("data/*/*.hdf5"))
    assert len(files) == 12 and files == sorted(p.relative_to(local) for p in local.glob("data/*/*.hdf5"))
    for name in files:
        with h5py.File(by_ray / name) as a, h5py.File(local / name) as b:
            # Equal up to float32 round-off: the batches differ (per task vs per boundary).
            np.testing.assert_allclose(a["t0_fields/energy"][...], b["t0_fields/energy"][...], rtol=1e-5)
    stats = [yaml.safe_load((root / "stats.yaml").read_text()) for root in (by_ray, local)]
    assert stats[0]["mean"]["density"] == pytest.approx(stats[1]["mean"]["density"], rel=1e-4)


def test_ray_dataset_of_windows(ray_cluster, tmp_path):
    info = open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=11))
    ds = ray_dataset(info, "valid", length=3, stride=4, standardize=False)
    rows = ds.take_all()
    windows = WellWindows(info, "valid", length=3, stride=4)
    assert len(rows) == len(windows) == 12
    rows.sort(key=lambda r: (r["file"], r["trajectory"], r["start"]))
    for row, index in zip(rows, range(len(windows))):
        item = windows[index]
        assert row["x"].shape == (5, 3, 8, 8)
        np.testing.assert_array_equal(row["x"], item["x"].numpy())
        np.testing.assert_array_equal(row["theta"], item["theta"].numpy())
    trajectories = ray_dataset(info, "test", length=None).take_all()
    assert len(trajectories) == 4 and trajectories[0]["x"].shape == (5, 11, 8, 8)
