"""Known channels (issue 16, point 3): time-invariant fields and time-varying scalars, read
as conditioning, given to every network, never predicted and never scored.

A tiny folder whose files carry a per-trajectory ``depth`` field and a time-varying scalar
``forcing`` (``tests/wellfiles.py``): the data layer serves them beside the state,
standardized and augmented with the state's draw; the autoencoder reads them and carries
them, pooled, as the latent state's last channels; emulators and rollouts keep them known
at every time, from the truth; the stages train on them in local mode. The smoke study on
a folder with both (``test_paper_datasets.py``) covers the cache, both emulators,
evaluation and the metrics end to end.
"""

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from wellfiles import make_tiny_dataset

from lolaray.evaluation.rollout import rollout
from lolaray.platform.augmentation import Augmentation
from lolaray.platform.data import (
    WellWindows,
    augment_with_known,
    known_standardizer_for,
    open_dataset,
    standardizer_for,
)
from lolaray.platform.latent_cache import _read_trajectories, _Source
from lolaray.platform.well_format import DatasetFormatError
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.plan import plan_study
from lolaray.trainers.autoencoder import AutoEncoder, pool_to_latent
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.diffusion import expand_mask, known_channel_mask, time_mask
from lolaray.trainers.emulator_trainer import train_pixel_solver
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_autoencoder, load_emulator

FIELDS = ("energy", "density", "pressure", "momentum_x", "momentum_y")


@pytest.fixture
def with_known(tmp_path):
    return open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=11, constant=True))


def _read(info, split, file, name, trajectory):
    with h5py.File(info.splits[split].files[file], "r") as f:
        group = "scalars" if name == "forcing" else "t0_fields"
        return torch.from_numpy(f[f"{group}/{name}"][trajectory])


def test_known_channels_are_conditioning_not_predicted_fields(with_known):
    info = with_known
    assert info.field_names == FIELDS and info.state_shape == (5, 8, 8)
    assert info.constant_field_names == ("depth",) and info.varying_scalar_names == ("forcing",)
    assert info.known_names == ("depth", "forcing") and info.conditioned_state_shape == (7, 8, 8)
    assert info.parameter_names == ("gamma",)  # a time-varying scalar is not a parameter in θ

    raw = WellWindows(info, "train", length=3, stride=2)
    index = raw.offsets[1] + raw.windows_per_trajectory[1] + 2  # file 1, trajectory 1, start 2
    item = raw[index]
    assert item["x"].shape == (5, 3, 8, 8) and item["known"].shape == (2, 3, 8, 8)
    depth, forcing = _read(info, "train", 1, "depth", 1), _read(info, "train", 1, "forcing", 1)
    for t, step in enumerate((2, 4, 6)):
        torch.testing.assert_close(item["known"][0, t], depth)  # the same field at every time
        assert torch.all(item["known"][1, t] == forcing[step])  # this state's value, everywhere

    # Standardized with statistics of the train split, beside x's own.
    scaled = WellWindows(info, "train", length=3, stride=2, standardizer=standardizer_for(info))
    stats = known_standardizer_for(info)
    assert stats.field_names == ("depth", "forcing")
    expected = (item["known"] - torch.tensor(stats.mean)[:, None, None, None]) / torch.tensor(stats.std)[
        :, None, None, None
    ]
    torch.testing.assert_close(scaled[index]["known"], expected, rtol=1e-5, atol=1e-5)
    every = torch.stack(
        [WellWindows(info, "train", length=1)[i]["known"][:, 0] for i in range(len(raw.well))]
    )
    assert stats.mean[0] == pytest.approx(every[:, 0].double().mean().item(), rel=0.05)


def test_known_channels_are_augmented_with_the_states_draw():
    # A depth equal to the energy at time 0 must stay equal to it whatever the draw
    # (flips, axis permutations, periodic rolls): one draw moves the state and its depth.
    augment = Augmentation((None, None, None, 0, 1, None))
    x = torch.randn(5, 2, 8, 8)
    depth = x[0:1, :1].expand(-1, 2, -1, -1).clone()
    bc = torch.full((2, 2), 2.0)  # periodic on both axes: rolls too
    moved = 0
    for seed in range(16):
        generator = torch.Generator().manual_seed(seed)
        x_out, depth_out, _ = augment_with_known(augment, x, depth, bc, generator)
        assert depth_out.shape == (1, 2, 8, 8)
        torch.testing.assert_close(depth_out[0, 0], x_out[0, 0])
        moved += not torch.equal(depth_out, depth)
    assert moved > 8


def test_the_cache_source_carries_the_known_channels(with_known):
    info = with_known
    source = _Source(info.root, "train", standardizer_for(info).to_dict(), repeat=2, seed=0)
    rows = _read_trajectories({"index": np.array([0, 0]), "copy": np.array([0, 1])}, source=source)
    assert rows["x"].shape == (2, 11, 5, 8, 8) and rows["known"].shape == (2, 11, 2, 8, 8)
    stats = known_standardizer_for(info)
    depth = (_read(info, "train", 0, "depth", 0) - stats.mean[0]) / stats.std[0]
    forcing = (_read(info, "train", 0, "forcing", 0) - stats.mean[1]) / stats.std[1]
    torch.testing.assert_close(torch.from_numpy(rows["known"][0, 5, 0]), depth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(rows["known"][0, :, 1, 3, 3]), forcing, rtol=1e-5, atol=1e-5)


def test_the_autoencoder_reads_the_known_channels_and_carries_them_pooled():
    torch.manual_seed(0)
    model = AutoEncoder(
        pixel_channels=5, latent_channels=4, hidden_channels=(8, 8), hidden_blocks=(1, 1), known_channels=2
    )
    x, known = torch.randn(2, 5, 8, 8), torch.randn(2, 2, 8, 8, requires_grad=True)
    x_hat, z = model(x, known)
    assert x_hat.shape == (2, 5, 8, 8)  # the known channels are not reconstructed
    assert z.shape == (2, 6, 4, 4) == (2, *model.latent_shape((5, 8, 8)))
    torch.testing.assert_close(z[:, -2:], pool_to_latent(known, 2))
    # They reach both networks: the encoder's code and, through the latent state, the decoder.
    (grad,) = torch.autograd.grad(z[:, :4].square().sum(), known)
    assert grad.abs().sum() > 0
    other = torch.cat([z[:, :4], pool_to_latent(torch.randn(2, 2, 8, 8), 2)], 1)
    assert not torch.allclose(model.decode(other), x_hat)
    with pytest.raises(ValueError, match="expected known channels of shape"):
        model.encode(x)
    with pytest.raises(ValueError, match="6 channels"):
        model.decode(z[:, :4])


def test_masks_keep_the_known_channels_known_at_every_time():
    x = torch.zeros(2, 7, 4, 8, 8)  # 5 predicted channels, then depth and forcing
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    known = known_channel_mask(mask, x, 2)
    assert known.shape == (2, 7, 4, 1, 1)
    assert expand_mask(known, x)[:, -2:].all()
    assert torch.equal(expand_mask(known, x)[:, :5], expand_mask(mask, x[:, :5]))
    assert torch.equal(time_mask(known), mask) and known_channel_mask(mask, x, 0) is mask


def test_a_rollout_takes_every_states_known_channels_from_the_truth():
    truth = torch.randn(3, 7, 9, 4, 4)  # the last two channels: depth and forcing, known
    seen = []

    def step(window, mask, theta, generator):  # fills every unknown entry with noise
        seen.append(mask)
        return torch.where(expand_mask(mask, window), window, torch.randn_like(window))

    states = rollout(step, truth[:, :, :2], window=4, context=2, overlap=2, length=9, known=truth[:, -2:])
    assert states.shape == (3, 7, 9, 4, 4)
    torch.testing.assert_close(states[:, -2:], truth[:, -2:])  # given at every time, not predicted
    assert not torch.allclose(states[:, :5, 2:], truth[:, :5, 2:])  # the rest was generated
    assert all(m.shape == (3, 7, 4, 1, 1) and m[:, -2:].all() and not m[:, 0, 2:].any() for m in seen)
    with pytest.raises(ValueError, match="L' >= 9 states"):
        rollout(step, truth[:, :, :2], window=4, context=2, overlap=2, length=9, known=truth[:, -2:, :5])


def test_the_stages_train_on_known_channels_in_local_mode(with_known, local_stage):
    loop = LoopConfig(optimizer="adamw", lr=1e-3, epochs=1, steps_per_epoch=2)
    ae = train_autoencoder(
        AutoencoderConfig(preset="smoke", latent_channels=4, batch_size=4, valid_states=4, loop=loop),
        with_known,
        local_stage,
        log_model=False,
    )
    # The compression rate counts the code only: the known channels are given, not compressed.
    assert ae.manifest["latent_shape"] == [6, 4, 4] and ae.manifest["compression"] == 5 * 64 / (4 * 16)
    assert ae.manifest["known_channels"] == 2
    assert ae.manifest["constant_fields"] == ["depth"] and ae.manifest["varying_scalars"] == ["forcing"]
    model, _ = load_autoencoder(ae)
    assert model.known_channels == 2

    config = EmulatorConfig(
        preset="smoke",
        architecture={"patch_size": 2},
        window=3,
        stride=2,
        batch_size=4,
        valid_windows=4,
        loop=loop,
    )
    pixel = train_pixel_solver(config, with_known, local_stage, log_model=False)
    # The pixel solver's states end with the known channels; they come back as given.
    assert pixel.manifest["state_shape"] == [7, 8, 8] and pixel.manifest["known_channels"] == 2
    solver, _ = load_emulator(pixel)
    window = torch.randn(1, 7, 3, 8, 8)
    mask = known_channel_mask(torch.tensor([[True, False, False]]), window, 2)
    out = solver.predict(window, mask, torch.zeros(1, with_known.theta_dim))
    torch.testing.assert_close(out[:, -2:], window[:, -2:])


def test_a_time_varying_scalar_of_the_wrong_shape_is_named(with_known):
    victim = with_known.splits["valid"].files[0]
    with h5py.File(victim, "r+") as f:
        del f["scalars/forcing"]
        f["scalars"].create_dataset("forcing", data=np.zeros((2, 5), np.float32)).attrs["time_varying"] = True
    with pytest.raises(DatasetFormatError, match="time-varying scalar 'forcing' has shape \\(2, 5\\)"):
        open_dataset(with_known.root)


def test_the_plan_counts_the_known_channels_where_the_networks_read_them(tmp_path):
    info = open_dataset(make_tiny_dataset(tmp_path / "long", res=8, steps=17, constant=True))
    profile = PROFILES["smoke"]  # windows of 5 states at stride 4: 17 steps
    plan = plan_study(profile, info, (4,))
    assert "5 x 8 x 8 per state (+ known depth, forcing, given, not predicted)" in plan.geometry
    # The pixel solver's states carry them: more input channels than without.
    bare = dataclasses.replace(
        info, constant_field_names=(), constant_vector_axis=(), varying_scalar_names=()
    )
    assert (
        plan.networks["pixel solver"].parameters
        > plan_study(profile, bare, (4,)).networks["pixel solver"].parameters
    )
