"""Time-invariant fields (issue 16, point 3): read as known conditioning, given to every
network, never predicted and never scored.

A tiny folder whose files carry a per-trajectory ``depth`` field (``tests/wellfiles.py``):
the data layer serves it beside the state, standardized and augmented with the state's
draw; the autoencoder reads it and carries it, pooled, as the latent state's last channel;
emulators and rollouts keep it known at every time; the stages train on it in local mode.
The smoke study on a folder with a constant field (``test_paper_datasets.py``) covers the
cache, both emulators, evaluation and the metrics end to end.
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
    augment_with_constants,
    constant_standardizer_for,
    open_dataset,
    standardizer_for,
)
from lolaray.platform.latent_cache import _read_trajectories, _Source
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.plan import plan_study
from lolaray.trainers.autoencoder import AutoEncoder, pool_to_latent
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.diffusion import expand_mask, known_channel_mask, time_mask, with_known_channels
from lolaray.trainers.emulator_trainer import train_pixel_solver
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_autoencoder, load_emulator

FIELDS = ("energy", "density", "pressure", "momentum_x", "momentum_y")


@pytest.fixture
def with_depth(tmp_path):
    return open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=11, constant=True))


def _depth(info, split, file, trajectory):
    with h5py.File(info.splits[split].files[file], "r") as f:
        return torch.from_numpy(f["t0_fields/depth"][trajectory])


def test_a_constant_field_is_conditioning_not_a_predicted_field(with_depth):
    info = with_depth
    assert info.field_names == FIELDS and info.state_shape == (5, 8, 8)
    assert info.constant_field_names == ("depth",) and info.n_constant_fields == 1

    raw = WellWindows(info, "train", length=3, stride=2)
    item = raw[raw.offsets[1] + raw.windows_per_trajectory[1] + 2]  # file 1, trajectory 1
    assert item["x"].shape == (5, 3, 8, 8) and item["constant"].shape == (1, 8, 8)
    torch.testing.assert_close(item["constant"][0], _depth(info, "train", 1, 1))

    # Standardized with the train split's statistics (over every trajectory), beside x's own.
    scaled = WellWindows(info, "train", length=3, stride=2, standardizer=standardizer_for(info))
    stats = constant_standardizer_for(info)
    assert stats.field_names == ("depth",)
    depths = torch.stack([_depth(info, "train", f, t) for f in range(2) for t in range(2)])
    assert stats.mean[0] == pytest.approx(depths.double().mean().item(), rel=1e-6)
    assert stats.std[0] == pytest.approx(depths.double().std(correction=0).item(), rel=1e-6)
    torch.testing.assert_close(
        scaled[0]["constant"], (raw[0]["constant"] - stats.mean[0]) / stats.std[0], rtol=1e-5, atol=1e-5
    )


def test_the_constant_field_is_augmented_with_the_states_draw():
    # A depth equal to the energy at time 0 must stay equal to it whatever the draw
    # (flips, axis permutations, periodic rolls): one draw moves the state and its depth.
    augment = Augmentation((None, None, None, 0, 1, None))
    x = torch.randn(5, 2, 8, 8)
    depth = x[0:1, 0].clone()
    bc = torch.full((2, 2), 2.0)  # periodic on both axes: rolls too
    moved = 0
    for seed in range(16):
        x_out, depth_out, _ = augment_with_constants(
            augment, x, depth, bc, torch.Generator().manual_seed(seed)
        )
        assert depth_out.shape == (1, 8, 8)
        torch.testing.assert_close(depth_out[0], x_out[0, 0])
        moved += not torch.equal(depth_out, depth)
    assert moved > 8


def test_the_cache_source_carries_the_constant_fields(with_depth):
    info = with_depth
    source = _Source(info.root, "train", standardizer_for(info).to_dict(), repeat=2, seed=0)
    rows = _read_trajectories({"index": np.array([0, 0]), "copy": np.array([0, 1])}, source=source)
    assert rows["x"].shape == (2, 11, 5, 8, 8) and rows["constant"].shape == (2, 1, 8, 8)
    stats = constant_standardizer_for(info)
    expected = (_depth(info, "train", 0, 0) - stats.mean[0]) / stats.std[0]
    torch.testing.assert_close(torch.from_numpy(rows["constant"][0, 0]), expected, rtol=1e-5, atol=1e-5)


def test_the_autoencoder_reads_the_constant_field_and_carries_it_pooled():
    torch.manual_seed(0)
    model = AutoEncoder(
        pixel_channels=5, latent_channels=4, hidden_channels=(8, 8), hidden_blocks=(1, 1), constant_channels=1
    )
    x, depth = torch.randn(2, 5, 8, 8), torch.randn(2, 1, 8, 8, requires_grad=True)
    x_hat, z = model(x, depth)
    assert x_hat.shape == (2, 5, 8, 8)  # the constant field is not reconstructed
    assert z.shape == (2, 5, 4, 4) == (2, *model.latent_shape((5, 8, 8)))
    torch.testing.assert_close(z[:, -1:], pool_to_latent(depth, 2))
    # It reaches both networks: the encoder's code and, through the latent state, the decoder.
    (grad,) = torch.autograd.grad(z[:, :4].square().sum(), depth)
    assert grad.abs().sum() > 0
    other = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(model.decode(torch.cat([z[:, :4], pool_to_latent(other, 2)], 1)), x_hat)
    with pytest.raises(ValueError, match="expected constant fields of shape"):
        model.encode(x)
    with pytest.raises(ValueError, match="5 channels"):
        model.decode(z[:, :4])


def test_masks_keep_the_constant_channels_known_at_every_time():
    x = torch.zeros(2, 6, 4, 8, 8)  # 5 predicted channels, then the depth
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    known = known_channel_mask(mask, x, 1)
    assert known.shape == (2, 6, 4, 1, 1)
    assert expand_mask(known, x)[:, -1].all()
    assert torch.equal(expand_mask(known, x)[:, :5], expand_mask(mask, x[:, :5]))
    assert torch.equal(time_mask(known), mask) and known_channel_mask(mask, x, 0) is mask
    depth = torch.randn(2, 1, 8, 8)
    joined = with_known_channels(torch.randn(2, 5, 4, 8, 8), depth)
    assert joined.shape == (2, 6, 4, 8, 8) and torch.equal(joined[:, 5, 3], depth[:, 0])


def test_a_rollout_keeps_the_constant_field_and_steps_see_it_known():
    initial = torch.randn(3, 6, 2, 4, 4)
    initial[:, -1, 1] = initial[:, -1, 0]  # the depth: the same in both context states
    seen = []

    def step(window, mask, theta, generator):  # fills every unknown entry with noise
        seen.append(mask)
        full = expand_mask(mask, window)
        return torch.where(full, window, torch.randn_like(window))

    states = rollout(step, initial, window=4, context=2, overlap=2, length=9, known_channels=1)
    assert states.shape == (3, 6, 9, 4, 4)
    # The depth of every state is the given one; the other channels were generated.
    torch.testing.assert_close(states[:, -1], initial[:, -1, -1:].expand(-1, 9, -1, -1))
    assert not torch.equal(states[:, 0, 2], states[:, 0, 1])
    assert all(m.shape == (3, 6, 4, 1, 1) and m[:, -1].all() and not m[:, 0, 2:].any() for m in seen)


def test_the_stages_train_on_a_constant_field_in_local_mode(with_depth, local_stage):
    loop = LoopConfig(optimizer="adamw", lr=1e-3, epochs=1, steps_per_epoch=2)
    ae = train_autoencoder(
        AutoencoderConfig(preset="smoke", latent_channels=4, batch_size=4, valid_states=4, loop=loop),
        with_depth,
        local_stage,
        log_model=False,
    )
    assert ae.manifest["latent_shape"] == [5, 4, 4] and ae.manifest["compression"] == 5 * 64 / (4 * 16)
    assert ae.manifest["known_channels"] == 1 and ae.manifest["constant_fields"] == ["depth"]
    model, _ = load_autoencoder(ae)
    assert model.constant_channels == 1

    config = EmulatorConfig(
        preset="smoke",
        architecture={"patch_size": 2},
        window=3,
        stride=2,
        batch_size=4,
        valid_windows=4,
        loop=loop,
    )
    pixel = train_pixel_solver(config, with_depth, local_stage, log_model=False)
    # The pixel solver's states end with the depth; it is known, so never a prediction.
    assert pixel.manifest["state_shape"] == [6, 8, 8] and pixel.manifest["known_channels"] == 1
    solver, _ = load_emulator(pixel)
    window = torch.randn(1, 6, 3, 8, 8)
    mask = known_channel_mask(torch.tensor([[True, False, False]]), window, 1)
    out = solver.predict(window, mask, torch.zeros(1, with_depth.theta_dim))
    torch.testing.assert_close(out[:, -1], window[:, -1])


def test_the_plan_counts_the_constant_fields_where_the_networks_read_them(tmp_path):
    with_depth = open_dataset(make_tiny_dataset(tmp_path / "long", res=8, steps=17, constant=True))
    profile = PROFILES["smoke"]  # windows of 5 states at stride 4: 17 steps
    plan = plan_study(profile, with_depth, (4,))
    assert "5 x 8 x 8 per state (+ constant depth, given, not predicted)" in plan.geometry
    # The pixel solver's states carry the depth: one more input channel than without it.
    assert (
        plan.networks["pixel solver"].parameters
        > plan_study(
            profile, dataclasses.replace(with_depth, constant_field_names=(), constant_vector_axis=()), (4,)
        )
        .networks["pixel solver"]
        .parameters
    )
