"""The Well format, the data layer, preprocessing and augmentations (no solver needed)."""

import platform
import subprocess
import sys
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
import torch
import yaml
from the_well.data import WellDataset
from wellfiles import make_tiny_dataset, write_tiny

from lolaray.platform.augmentation import Augmentation, augmentation_setting, flip_axis, permute_axes
from lolaray.platform.data import WellWindows, open_dataset, read_dataset_info, standardizer_for
from lolaray.platform.latent_cache import _read_trajectories, _Source
from lolaray.platform.preprocessing import Standardizer, fit_standardizer
from lolaray.platform.well_format import (
    DatasetFormatError,
    check_split,
)

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("energy", "density", "pressure", "momentum_x", "momentum_y")


@pytest.fixture
def tiny_root(tmp_path):
    return make_tiny_dataset(tmp_path / "tiny_euler")


def test_the_well_reads_our_files(tiny_root):
    ds = WellDataset(path=str(tiny_root / "data" / "train"), n_steps_input=4, n_steps_output=1)
    assert ds.metadata.field_names[0] == ["energy", "density", "pressure"]
    assert ds.metadata.field_names[1] == ["momentum_x", "momentum_y"]
    assert ds.metadata.constant_scalar_names == ["gamma"]
    assert len(ds) == 2 * 2 * (11 - 5 + 1)
    first, last = ds[0], ds[len(ds) - 1]  # files sort as open (1.76) before periodic (1.4)
    assert first["input_fields"].shape == (4, 8, 8, 5)
    assert first["constant_scalars"].tolist() == pytest.approx([1.76])
    assert first["boundary_conditions"].tolist() == [[1, 1], [1, 1]]  # open reads as 1
    assert last["boundary_conditions"].tolist() == [[2, 2], [2, 2]]  # periodic reads as 2


def test_dataset_info_and_windows(tiny_root):
    info = open_dataset(tiny_root)
    assert info.field_names == FIELDS
    assert info.vector_axis == (None, None, None, 0, 1)
    assert info.resolution == (8, 8) and info.n_steps == 11 and info.theta_dim == 5
    windows = WellWindows(info, "valid", length=3, stride=4)
    assert len(windows) == 2 * 2 * (11 - 9 + 1)
    item = windows[len(windows) - 1]
    assert item["x"].shape == (5, 3, 8, 8)
    assert item["theta"].tolist() == pytest.approx([1.4, 2, 2, 2, 2])
    assert windows.locate(len(windows) - 1) == (1, 1, 2)
    # The window is the file's trajectory at steps start, start+4, start+8 (channels-first).
    with h5py.File(windows.files[1]) as f:
        energy = f["t0_fields/energy"][1, [2, 6, 10]]
        momentum_y = f["t1_fields/momentum"][1, [2, 6, 10], ..., 1]
    torch.testing.assert_close(item["x"][0], torch.from_numpy(energy))
    torch.testing.assert_close(item["x"][4], torch.from_numpy(momentum_y))
    whole = WellWindows(info, "test", length=None)
    assert len(whole) == 4 and whole[0]["x"].shape == (5, 11, 8, 8)


def test_window_longer_than_trajectory(tiny_root):
    info = open_dataset(tiny_root)
    with pytest.raises(ValueError, match="longer than the shortest trajectory"):
        WellWindows(info, "train", length=4, stride=4)  # spans 13 > 11 steps


def test_missing_dataset_path(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "data" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .hdf5 files"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "nodata").mkdir()
    with pytest.raises(FileNotFoundError, match="no .*nodata/data folder"):
        read_dataset_info(tmp_path / "nodata")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'euler_quadrats'"):
        open_dataset("euler_quadrats")
    with pytest.raises(ValueError, match="data_root"):
        open_dataset("euler_multi_quadrants_openBC")


def test_the_well_name_with_data_root(tiny_root, tmp_path):
    base = tmp_path / "base"
    (base / "datasets").mkdir(parents=True)
    (base / "datasets" / "rayleigh_benard").symlink_to(tiny_root)
    assert open_dataset("rayleigh_benard", data_root=str(base)).name == "tiny_euler"
    with pytest.raises(FileNotFoundError, match="not found under"):
        open_dataset("turbulence_gravity_cooling", data_root=str(base))


def test_truncated_and_non_hdf5_files(tiny_root):
    folder = tiny_root / "data" / "train"
    victim = min(folder.glob("*.hdf5"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match=f"{victim.name}.*not a readable HDF5"):
        check_split(folder)
    victim.write_text("this is not HDF5")
    with pytest.raises(DatasetFormatError, match=victim.name):
        open_dataset(tiny_root)


def test_fields_disagree_with_siblings(tiny_root):
    odd = tiny_root / "data" / "valid" / "tiny_zz_odd.hdf5"
    write_tiny(odd, extra_field=True)
    with pytest.raises(DatasetFormatError, match="tiny_zz_odd.hdf5: fields .* disagree with its sibling"):
        open_dataset(tiny_root)


def test_a_constant_field_in_one_file_only_is_named(tiny_root):
    victim = min((tiny_root / "data" / "train").glob("*.hdf5"))
    with h5py.File(victim, "r+") as f:
        group = f["t0_fields"]
        depth = group.create_dataset("depth", data=np.ones((2, 8, 8), dtype=np.float32))
        depth.attrs["time_varying"] = False
        group.attrs["field_names"] = [*group.attrs["field_names"], "depth"]
    with pytest.raises(DatasetFormatError, match="constant fields .* disagree with its sibling"):
        open_dataset(tiny_root)


def test_a_constant_field_of_the_wrong_shape_is_named(tiny_root):
    victim = min((tiny_root / "data" / "train").glob("*.hdf5"))
    with h5py.File(victim, "r+") as f:
        group = f["t0_fields"]
        depth = group.create_dataset("depth", data=np.ones((2, 11, 8, 8), dtype=np.float32))
        depth.attrs["time_varying"] = False
        group.attrs["field_names"] = [*group.attrs["field_names"], "depth"]
    with pytest.raises(DatasetFormatError, match=f"{victim.name}: field 'depth' has shape .* expected"):
        open_dataset(tiny_root)


def test_resolution_disagrees_between_splits(tiny_root):
    for f in (tiny_root / "data" / "test").glob("*.hdf5"):
        f.unlink()
    write_tiny(tiny_root / "data" / "test" / "tiny.hdf5", res=16)
    with pytest.raises(DatasetFormatError, match="test: resolution"):
        open_dataset(tiny_root)


def test_nan_in_a_field(tiny_root):
    victim = sorted((tiny_root / "data" / "test").glob("*.hdf5"))[1]
    with h5py.File(victim, "r+") as f:
        f["t0_fields/density"][1, 5, 3, 3] = np.nan
    windows = WellWindows(open_dataset(tiny_root), "test", length=2, stride=1)
    windows[0]  # clean window
    bad = windows.offsets[1] + 1 * windows.windows_per_trajectory[1] + 4  # trajectory 1, steps 4..5
    with pytest.raises(DatasetFormatError, match=f"{victim.name}: NaN/Inf in trajectory 1, time steps 4..5"):
        windows[int(bad)]


def test_stats_yaml_matches_numpy(tiny_root):
    stats = yaml.safe_load((tiny_root / "stats.yaml").read_text())
    assert set(stats) == {"mean", "std", "rms", "mean_delta", "std_delta", "rms_delta"}
    values, momenta = [], []
    for f in sorted((tiny_root / "data" / "train").glob("*.hdf5")):
        with h5py.File(f) as h:
            values.append(h["t0_fields/density"][...])
            momenta.append(h["t1_fields/momentum"][...])
    density = np.concatenate(values)
    assert stats["mean"]["density"] == pytest.approx(density.mean(), rel=1e-3)
    assert stats["std"]["density"] == pytest.approx(density.std(), rel=1e-3)
    assert stats["std_delta"]["density"] == pytest.approx(np.diff(density, axis=1).std(), rel=1e-3)
    momentum = np.concatenate(momenta)
    assert stats["std"]["momentum"] == pytest.approx(momentum.reshape(-1, 2).std(0), rel=1e-3)


@pytest.mark.parametrize("transforms", [("log1p",) * 3 + ("none",) * 2, ("log_eps",) * 3 + ("none",) * 2])
def test_standardizer_round_trip(transforms):
    x = torch.rand(4, 5, 3, 8, 8, dtype=torch.float64) * 3 + 0.01
    x[:, 3:] -= 1.5  # momenta take both signs
    s = Standardizer(FIELDS, transforms, (0.5, -0.2, 0.1, 0.0, 0.3), (1.3, 0.7, 2.0, 0.5, 1.1))
    y = s.forward(x, channel_dim=1)
    torch.testing.assert_close(s.inverse(y, channel_dim=1), x, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y, x)
    xf = x.float()
    torch.testing.assert_close(s.inverse(s.forward(xf, 1), 1), xf, rtol=1e-5, atol=1e-5)


def test_fit_standardizer_standardizes():
    states = [torch.rand(5, 8, 8) * (c + 1) + 0.1 for c in range(40)]
    s = fit_standardizer(states, field_names=FIELDS, transforms=("log1p",) * 3 + ("none",) * 2)
    y = torch.stack([s.forward(x, 0) for x in states]).transpose(0, 1).flatten(1)
    torch.testing.assert_close(y.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(1, unbiased=False), torch.ones(5), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="channels"):
        s.forward(torch.rand(3, 8, 8))


def test_flip_negates_the_component_along_the_axis():
    x = torch.randn(5, 2, 6, 6)
    bc = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    y, bc_y = flip_axis(x, bc, 0, (None, None, None, 0, 1))
    torch.testing.assert_close(y[0], x[0].flip(1))
    torch.testing.assert_close(y[3], -x[3].flip(1))  # momentum_x negated
    torch.testing.assert_close(y[4], x[4].flip(1))  # momentum_y not
    assert bc_y.tolist() == [[2.0, 1.0], [0.0, 1.0]]
    y, _ = flip_axis(x, bc, 1, (None, None, None, 0, 1))
    torch.testing.assert_close(y[3], x[3].flip(2))
    torch.testing.assert_close(y[4], -x[4].flip(2))


def test_permutation_swaps_components():
    x = torch.randn(5, 2, 6, 6)
    bc = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    y, bc_y = permute_axes(x, bc, [1, 0], (None, None, None, 0, 1))
    torch.testing.assert_close(y[1], x[1].transpose(-1, -2))
    torch.testing.assert_close(y[3], x[4].transpose(-1, -2))  # new x-momentum = old y-momentum
    torch.testing.assert_close(y[4], x[3].transpose(-1, -2))
    assert bc_y.tolist() == [[2.0, 2.0], [1.0, 1.0]]


def test_random_augmentation_rolls_only_periodic_axes_and_is_seeded():
    x = torch.randn(5, 3, 8, 8)
    augment = Augmentation((None, None, None, 0, 1), flip=False, permute=False)
    open_bc = torch.ones(2, 2)
    y, _ = augment(x, open_bc, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, x)
    periodic = torch.full((2, 2), 2.0)
    shifted = [augment(x, periodic, torch.Generator().manual_seed(s))[0] for s in range(4)]
    assert any(not torch.equal(s, x) for s in shifted)
    full = Augmentation((None, None, None, 0, 1))
    a = full(x, periodic, torch.Generator().manual_seed(3))[0]
    b = full(x, periodic, torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(a, b)
    # Norms of the vector field per cell are invariant under every augmentation.
    speed = lambda z: (z[3] ** 2 + z[4] ** 2).flatten().sort().values
    torch.testing.assert_close(speed(a), speed(x))


def test_an_augmentation_setting_names_what_is_drawn():
    assert augmentation_setting(["roll", "flip", "permute"]) is True
    assert augmentation_setting(["roll", "flip", "roll"]) == ("flip", "roll")
    assert augmentation_setting([]) is False and augmentation_setting(False) is False
    with pytest.raises(ValueError, match="unknown augmentation\\(s\\) rotate"):
        augmentation_setting(["flip", "rotate"])
    assert Augmentation.from_setting((None,), False) is None
    # Flips only, on a periodic square grid: every draw is one of the four flips, never a
    # roll or a transposition (which a full augmentation draws within a few seeds).
    x = torch.arange(64.0).view(1, 1, 8, 8)
    periodic = torch.full((2, 2), 2.0)
    flips = [x, x.flip(2), x.flip(3), x.flip(2).flip(3)]
    only_flips = Augmentation.from_setting((None,), ("flip",))
    for seed in range(16):
        y, _ = only_flips(x, periodic, torch.Generator().manual_seed(seed))
        assert any(torch.equal(y, f) for f in flips)
    full = Augmentation.from_setting((None,), True)
    drawn = [full(x, periodic, torch.Generator().manual_seed(seed))[0] for seed in range(16)]
    assert any(not any(torch.equal(y, f) for f in flips) for y in drawn)


def test_windows_take_an_augmentation_setting(tiny_root):
    info = open_dataset(tiny_root)
    plain = WellWindows(info, "train", length=2)
    assert plain.augment is None
    flipped = WellWindows(info, "train", length=2, augment=("flip",))
    assert (flipped.augment.flip, flipped.augment.permute, flipped.augment.roll) == (True, False, False)


def test_the_latent_caches_copies_draw_only_the_named_augmentations(tiny_root):
    """Copies 1… of a cached trajectory are augmented with the setting the stage passes: with
    flips only, the scalar fields of every copy of a periodic trajectory are one of its four
    flips, never rolled or transposed; with every augmentation some copy is neither."""
    info = open_dataset(tiny_root)
    standardizer = standardizer_for(info).to_dict()
    periodic = next(i for i, f in enumerate(info.splits["train"].files) if "periodic" in f)
    batch = {"index": np.array([2 * periodic] * 8), "copy": np.arange(8)}  # 2 trajectories per file

    def scalar_fields_of_copies(augment):
        source = _Source(str(tiny_root), "train", standardizer, 8, 0, augment)
        return torch.from_numpy(_read_trajectories(batch, source=source)["x"])[:, :, :3]  # (8, L, 3, H, W)

    def is_a_flip(copy, original):
        flips = (original, original.flip(-2), original.flip(-1), original.flip(-2).flip(-1))
        return any(torch.allclose(copy, f) for f in flips)

    flipped = scalar_fields_of_copies(("flip",))
    assert all(is_a_flip(copy, flipped[0]) for copy in flipped[1:])
    every = scalar_fields_of_copies(True)
    assert not all(is_a_flip(copy, every[0]) for copy in every[1:])


def test_stdlib_platform_is_not_shadowed():
    code = "import sys; sys.path.insert(0, '.'); import platform; print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == platform.system()
    assert not (REPO / "platform" / "__init__.py").exists()
    code = "import lolaray.platform.data as d; import platform; print(platform.python_version())"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)


def test_a_dataset_behind_an_fsspec_url(tiny_root):
    """Remote roots (hf://, s3://...) go through fsspec like The Well's loader: memory:// stands in."""

    memory = fsspec.filesystem("memory")
    for path in tiny_root.rglob("*"):
        if path.is_file():
            memory.pipe(f"/remote/{path.relative_to(tiny_root.parent)}", path.read_bytes())
    info = open_dataset("memory://remote/tiny_euler")
    assert info.root == "memory://remote/tiny_euler" and not info.is_local
    assert info.field_names == FIELDS and len(info.splits["valid"].files) == 2
    remote = WellWindows(info, "valid", length=2, stride=3)
    local = WellWindows(open_dataset(tiny_root), "valid", length=2, stride=3)
    torch.testing.assert_close(remote[5]["x"], local[5]["x"])
    assert info.fingerprint() != open_dataset(tiny_root).fingerprint()
    with pytest.raises(FileNotFoundError, match="not found at memory://remote/rayleigh_benard"):
        open_dataset("rayleigh_benard", data_root="memory://remote")
    with pytest.raises(ValueError, match="huggingface_hub"):
        open_dataset("rayleigh_benard", data_root="hf://datasets/polymathic-ai/")
