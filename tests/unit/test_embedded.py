"""The embedded euler_quadrants dataset: generation, format, statistics, failure safety."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from the_well.data import WellDataset

from lolaray.platform import embedded, euler
from lolaray.platform.augmentation import flip_axis, permute_axes, roll_axis
from lolaray.platform.data import WellWindows, standardizer_for
from lolaray.platform.embedded import EmbeddedPreset, generate_dataset, random_quadrant_states

VECTOR_AXIS = (None, None, None, 0, 1)


def test_smoke_dataset_layout_and_the_well_loader(smoke_dataset):
    info = smoke_dataset
    assert info.name == "euler_quadrants"
    assert info.field_names == ("energy", "density", "pressure", "momentum_x", "momentum_y")
    assert info.resolution == (32, 32) and info.n_steps == 101 and info.parameter_names == ("gamma",)
    preset = embedded.EMBEDDED_PRESETS["smoke"]
    for split in ("train", "valid", "test"):
        layout = info.splits[split]
        assert len(layout.files) == len(preset.gammas) * len(preset.boundaries)
        assert set(layout.n_trajectories) == {preset.trajectories_per_file(split)}
    ds = WellDataset(path=f"{info.root}/data/valid", n_steps_input=2, n_steps_output=1)
    sample = ds[0]  # files sort as open before periodic
    assert sample["input_fields"].shape == (2, 32, 32, 5)
    assert sample["constant_scalars"].tolist() == pytest.approx([1.4])
    assert sample["boundary_conditions"].tolist() == [[1, 1], [1, 1]]
    assert ds[len(ds) - 1]["boundary_conditions"].tolist() == [[2, 2], [2, 2]]
    with h5py.File(info.splits["train"].files[0]) as f:
        time = f["dimensions/time"][...]
        assert time[-1] == pytest.approx(1.5) and np.diff(time) == pytest.approx(0.015, abs=1e-6)
        assert f.attrs["gamma"] == pytest.approx(float(f["scalars/gamma"][()]))


def test_statistics_are_of_the_order_of_the_wells_euler(smoke_dataset):
    stats = yaml.safe_load(Path(smoke_dataset.root, "stats.yaml").read_text())
    # The Well (open / periodic): density 0.90 ± 0.6, pressure 0.9 ± 0.8, energy 3.0 ± 3.2, momentum std ~0.5.
    assert 0.45 < stats["mean"]["density"] < 1.8 and 0.3 < stats["std"]["density"] < 1.2
    assert 0.45 < stats["mean"]["pressure"] < 1.8 and 0.3 < stats["std"]["pressure"] < 1.6
    assert 1.0 < stats["mean"]["energy"] < 6.0 and 0.8 < stats["std"]["energy"] < 6.0
    assert all(0.2 < s < 1.0 for s in stats["std"]["momentum"])
    assert 0.02 < stats["std_delta"]["density"] < 0.5
    standardizer = standardizer_for(smoke_dataset)
    assert standardizer.transforms[:3] == ("log1p",) * 3
    x = WellWindows(smoke_dataset, "train", length=1, standardizer=standardizer)[0]["x"]
    assert x.abs().max() < 10


def test_generation_is_deterministic(tmp_path):
    preset = EmbeddedPreset(
        resolution=8,
        gammas=(1.3,),
        boundaries=("open",),
        n_snapshots=5,
        trajectories=(("train", 2), ("valid", 1), ("test", 1)),
    )
    spec = embedded._file_specs(preset)[0]
    a = embedded.generate_file(spec, tmp_path / "a")
    b = embedded.generate_file(spec, tmp_path / "b")
    with h5py.File(a) as fa, h5py.File(b) as fb:
        np.testing.assert_array_equal(fa["t0_fields/density"][...], fb["t0_fields/density"][...])
        assert fa["t0_fields/density"].shape == (2, 5, 8, 8)


def test_interrupted_generation_leaves_nothing_complete(tmp_path, monkeypatch):
    preset = EmbeddedPreset(
        resolution=8, gammas=(1.3, 1.4), n_snapshots=3, trajectories=(("train", 1), ("valid", 1), ("test", 1))
    )
    real = embedded.generate_files
    calls = []

    def flaky(specs, folder, **kw):
        calls.append(specs)
        if len(calls) == 2:  # the second of the two batches (periodic, open)
            raise KeyboardInterrupt("injected")
        return real(specs, folder, **kw)

    monkeypatch.setattr(embedded, "generate_files", flaky)
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(preset, root, parallel="local", progress=False)
    assert len(calls) == 2
    assert not root.exists() and list(tmp_path.iterdir()) == []  # no half-written folder left behind
    monkeypatch.setattr(embedded, "generate_files", real)
    generate_dataset(preset, root, parallel="local", progress=False)
    assert (root / embedded.MANIFEST).is_file() and (root / "stats.yaml").is_file()
    assert len(list((root / "data" / "train").glob("*.hdf5"))) == 4


def test_batched_generation_matches_file_by_file(tmp_path):
    preset = EmbeddedPreset(
        resolution=8,
        gammas=(1.3, 1.76),
        boundaries=("periodic",),
        n_snapshots=4,
        trajectories=(("train", 2), ("valid", 1), ("test", 1)),
    )
    specs = embedded._file_specs(preset)
    together = embedded.generate_files(specs, tmp_path / "together")
    for spec, path in zip(specs, together):
        alone = embedded.generate_file(spec, tmp_path / "alone")
        with h5py.File(path) as a, h5py.File(alone) as b:
            np.testing.assert_allclose(a["t1_fields/momentum"][...], b["t1_fields/momentum"][...], atol=1e-6)


def test_unknown_presets_and_bad_presets():
    with pytest.raises(ValueError, match="unknown embedded preset 'huge'"):
        embedded.embedded_dataset_root("euler_quadrants", "huge")
    with pytest.raises(ValueError, match="boundaries"):
        EmbeddedPreset(boundaries=("reflective",))
    with pytest.raises(ValueError, match="trajectories"):
        EmbeddedPreset(trajectories=(("train", 1),))


def _simulate_stacked(rho, u, v, p, gamma, steps=6):
    """(C, T, H, W) fields of one periodic trajectory, in the dataset's channel order."""
    out = euler.simulate(
        rho,
        u,
        v,
        p,
        torch.full((rho.shape[0],), gamma, dtype=rho.dtype),
        periodic=True,
        snapshot_times=[0.02 * i for i in range(steps)],
        dx=1 / rho.shape[1],
        dy=1 / rho.shape[2],
    )
    names = ("energy", "density", "pressure", "momentum_x", "momentum_y")
    return torch.stack([out[n][0] for n in names])


@pytest.mark.parametrize("augment", ["flip_x", "flip_y", "transpose", "roll"])
def test_augmentations_commute_with_the_physics(augment):
    """An augmented solution is the solution of the augmented initial state: vector components are right."""
    rho, u, v, p = random_quadrant_states(
        1, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    bc = torch.full((2, 2), 2.0)

    def apply(x):
        if augment == "flip_x":
            return flip_axis(x, bc, 0, VECTOR_AXIS)[0]
        if augment == "flip_y":
            return flip_axis(x, bc, 1, VECTOR_AXIS)[0]
        if augment == "transpose":
            return permute_axes(x, bc, [1, 0], VECTOR_AXIS)[0]
        return roll_axis(x, 1, 5)

    reference = _simulate_stacked(rho, u, v, p, 1.4)
    initial = apply(reference[:, :1])  # (C, 1, H, W): energy, density, pressure, momenta
    _e, d, pr, mx, my = initial[:, 0]
    augmented = _simulate_stacked(d[None], (mx / d)[None], (my / d)[None], pr[None], 1.4)
    torch.testing.assert_close(augmented, apply(reference), rtol=1e-9, atol=1e-9)
