"""Whole trajectories read once (:class:`~lolaray.platform.data.WellWindows` ``preload``) give
the items The Well's reader gives one window at a time, on every layout the platform reads."""

import pytest
import torch
from wellfiles import make_gravity_cooling_like, make_rayleigh_benard_like, make_tiny_dataset

from lolaray.platform.augmentation import Augmentation
from lolaray.platform.data import WellWindows, open_dataset, preload_budget, split_bytes, standardizer_for

MAKERS = {
    "tiny": lambda root: make_tiny_dataset(root / "tiny"),
    "rayleigh_benard_with_known": lambda root: make_rayleigh_benard_like(
        root / "rayleigh_benard", constant=True
    ),
    "gravity_cooling_3d": lambda root: make_gravity_cooling_like(root / "turbulence_gravity_cooling"),
}


def _windows(info, *, preload, **kwargs):
    augment = kwargs.pop("augment", False)
    if augment:  # the same draws on both sides
        augment = Augmentation.from_setting((*info.vector_axis, *info.known_vector_axis), True)
        kwargs["generator"] = torch.Generator().manual_seed(3)
    return WellWindows(info, "train", preload=preload, augment=augment, **kwargs)


@pytest.mark.parametrize("layout", list(MAKERS))
@pytest.mark.parametrize(("length", "stride", "augment"), [(1, 1, True), (3, 2, False), (4, 1, True)])
def test_preloaded_windows_equal_the_well_read_one_at_a_time(tmp_path, layout, length, stride, augment):
    info = open_dataset(str(MAKERS[layout](tmp_path)))
    kwargs = {"length": length, "stride": stride, "standardizer": standardizer_for(info), "augment": augment}
    alone, whole = _windows(info, preload=False, **kwargs), _windows(info, preload=True, **kwargs)
    assert whole._trajectories is not None and alone._trajectories is None
    assert len(alone) == len(whole)
    order = torch.randperm(len(alone), generator=torch.Generator().manual_seed(0)).tolist()
    for index in order:  # shuffled, as a training loop reads them; the augmentations draw in order
        ours, theirs = whole[index], alone[index]
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(ours[key], value), (layout, index, key)
            else:
                assert ours[key] == value, (layout, index, key)
    # Every trajectory read once, and a window changed downstream leaves the trajectory intact.
    assert len(whole._loaded) == sum(info.splits["train"].n_trajectories)
    whole[0]["x"].zero_()
    assert torch.equal(whole[0]["x"], alone[0]["x"]) or augment


def test_preload_follows_the_budget(tmp_path, monkeypatch):
    info = open_dataset(str(make_tiny_dataset(tmp_path / "tiny")))
    size = split_bytes(info, "train")
    assert size == 2 * 2 * 11 * 5 * 8 * 8 * 4  # files x trajectories x steps x fields x cells x float32
    monkeypatch.setenv("LOLARAY_PRELOAD_BYTES", str(size))
    assert WellWindows(info, "train")._trajectories is not None
    monkeypatch.setenv("LOLARAY_PRELOAD_BYTES", str(size - 1))
    assert WellWindows(info, "train")._trajectories is None
    monkeypatch.setenv("LOLARAY_PRELOAD_BYTES", "lots")
    with pytest.raises(ValueError, match="LOLARAY_PRELOAD_BYTES"):
        preload_budget()
