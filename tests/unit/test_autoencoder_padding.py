"""Grids the autoencoder's factor ``r`` does not divide (issue 28): padded at the end of each
axis as the boundary allows (wrap on a periodic axis, reflection otherwise, replication
where a reflection cannot reach), cropped after decoding; and a grid ``r`` divides gives the
very network, outputs and artifact ids it gave before. Pure: tiny networks, no Ray, no data."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lolaray.platform.artifacts import artifact_id
from lolaray.platform.data import DatasetInfo
from lolaray.platform.preprocessing import Standardizer
from lolaray.platform.stages import ScalingSpec
from lolaray.platform.well_format import SplitLayout
from lolaray.sweeps import compression
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.compression_rates import latent_channels_for_rates
from lolaray.trainers import training_stage
from lolaray.trainers.autoencoder import AutoEncoder, build_autoencoder, pad_axis, pool_to_latent
from lolaray.trainers.autoencoder_trainer import (
    AutoencoderConfig,
    AutoencoderTask,
    latent_geometry,
    periodic_axes,
    train_autoencoder,
)
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_autoencoder, save_autoencoder

# r = 8 (four levels) at a few hundred parameters: seconds on a CPU.
TINY = {"hidden_channels": (4, 4, 4, 4), "hidden_blocks": (0, 1, 0, 1), "dropout": 0.0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny nets on a shared 2-core machine: threads buy nothing. Restored after.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _info(resolution, boundaries_per_file, *, fields=("density", "pressure"), name="grid") -> DatasetInfo:
    """A dataset's headers without files: one file per entry of ``boundaries_per_file``."""
    dims = ("x", "y", "z")[: len(resolution)]
    n = len(boundaries_per_file)
    layout = SplitLayout(
        files=tuple(f"f{i}.hdf5" for i in range(n)),
        file_sizes=(1,) * n,
        dataset_name=name,
        field_names=fields,
        vector_axis=(None,) * len(fields),
        spatial_dims=dims,
        resolution=tuple(resolution),
        parameter_names=("gamma",),
        n_trajectories=(2,) * n,
        n_steps=(20,) * n,
        boundary_types=tuple(boundaries_per_file),
        parameter_values=((1.4,),) * n,
    )
    return DatasetInfo(
        name=name,
        root="/nowhere",
        field_names=fields,
        vector_axis=(None,) * len(fields),
        spatial_dims=dims,
        resolution=tuple(resolution),
        parameter_names=("gamma",),
        n_steps=20,
        splits=dict.fromkeys(("train", "valid", "test"), layout),
    )


def _stem_input(model: AutoEncoder, x: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """What the encoder's first conv reads when ``model`` encodes ``x``."""
    seen = []
    handle = model.encoder.stem.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.encode(x, known)
    finally:
        handle.remove()
    return seen[0]


# -- shapes ---------------------------------------------------------------------------------


def test_a_12x20_grid_encodes_to_2x3_and_decodes_to_12x20():
    model = AutoEncoder(
        pixel_channels=3, latent_channels=5, pixel_grid=(12, 20), grid_padding=("circular", "reflect"), **TINY
    ).eval()
    assert model.spatial_factor == 8 and model.grid_pad == (4, 4) and model.latent_grid == (2, 3)
    assert model.latent_shape((3, 12, 20)) == (5, 2, 3)
    x = torch.randn(2, 3, 12, 20)
    with torch.no_grad():
        x_hat, z = model(x)
        assert model.decode(z).shape == x.shape
    assert z.shape == (2, 5, 2, 3) and x_hat.shape == x.shape
    assert _stem_input(model, x).shape == (2, 3, 16, 24)


def test_a_padded_network_takes_only_its_grid():
    model = AutoEncoder(pixel_channels=3, latent_channels=5, pixel_grid=(12, 20), **TINY)
    with pytest.raises(
        ValueError, match=r"grid \(16, 24\), but this autoencoder was built for the grid \(12, 20\)"
    ):
        model.encode(torch.randn(1, 3, 16, 24))
    with pytest.raises(ValueError, match=r"expected a latent on the grid \(2, 3\)"):
        model.decode(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match="grid_padding must give one of"):
        AutoEncoder(
            pixel_channels=3, latent_channels=5, pixel_grid=(12, 20), grid_padding=("wrap", "reflect"), **TINY
        )
    with pytest.raises(ValueError, match="grid_padding needs a pixel_grid"):
        AutoEncoder(pixel_channels=3, latent_channels=5, grid_padding=("reflect", "reflect"), **TINY)


# -- what the padding holds -------------------------------------------------------------------


def test_periodic_axes_wrap_and_open_axes_reflect():
    model = AutoEncoder(
        pixel_channels=2, latent_channels=4, pixel_grid=(12, 20), grid_padding=("circular", "reflect"), **TINY
    )
    x = torch.randn(1, 2, 12, 20)
    seen = _stem_input(model, x)
    torch.testing.assert_close(seen[..., :12, :20], x, rtol=0, atol=0)
    # axis H (periodic): rows 12..15 are rows 0..3, wrapped around
    torch.testing.assert_close(seen[..., 12:, :20], x[..., :4, :], rtol=0, atol=0)
    # axis W (open): columns 20..23 mirror 18, 17, 16, 15 about the last column (not repeated)
    torch.testing.assert_close(seen[..., :12, 20:], x[..., :, [18, 17, 16, 15]], rtol=0, atol=0)
    # the corner: wrapped rows of the mirrored columns
    torch.testing.assert_close(seen[..., 12:, 20:], x[..., :4, [18, 17, 16, 15]], rtol=0, atol=0)
    # as torch pads when it can (one axis at a time)
    expected = F.pad(F.pad(x, (0, 4, 0, 0), mode="reflect"), (0, 0, 0, 4), mode="circular")
    torch.testing.assert_close(seen, expected, rtol=0, atol=0)


def test_an_axis_too_short_to_reflect_replicates_and_a_periodic_one_wraps_again():
    # 3 cells and r = 8 pad 5 cells: a reflection reaches 2, so the last cell is repeated.
    model = AutoEncoder(pixel_channels=1, latent_channels=2, pixel_grid=(3, 8), **TINY)
    assert model.grid_padding == ("reflect", "reflect") and model.padding_modes == ("replicate", "reflect")
    x = torch.arange(24.0).reshape(1, 1, 3, 8)
    seen = _stem_input(model, x)
    assert seen.shape == (1, 1, 8, 8)
    torch.testing.assert_close(seen[..., 3:, :], x[..., [2] * 5, :], rtol=0, atol=0)
    periodic = pad_axis(x, 2, 5, "circular")
    torch.testing.assert_close(periodic[..., 3:, :], x[..., [0, 1, 2, 0, 1], :], rtol=0, atol=0)
    with pytest.raises(ValueError, match="a reflection pads at most 2 cells"):
        pad_axis(x, 2, 5, "reflect")


def test_known_channels_are_padded_like_the_state_before_pooling():
    model = AutoEncoder(
        pixel_channels=2,
        latent_channels=3,
        known_channels=1,
        pixel_grid=(12, 20),
        grid_padding=("reflect", "circular"),
        **TINY,
    ).eval()
    x, known = torch.randn(2, 2, 12, 20), torch.randn(2, 1, 12, 20)
    seen = _stem_input(model, x, known)
    padded = pad_axis(pad_axis(known, 2, 4, "reflect"), 3, 4, "circular")
    torch.testing.assert_close(seen[:, 2:], padded, rtol=0, atol=0)
    with torch.no_grad():
        x_hat, z = model(x, known)
    assert z.shape == (2, 4, 2, 3) and x_hat.shape == x.shape
    torch.testing.assert_close(z[:, -1:], pool_to_latent(padded, 8))


# -- a grid r divides: today's network, outputs and ids -----------------------------------------


def test_a_grid_r_divides_builds_today_s_network():
    torch.manual_seed(0)
    today = AutoEncoder(pixel_channels=3, latent_channels=4, **TINY).eval()
    torch.manual_seed(0)
    declared = AutoEncoder(pixel_channels=3, latent_channels=4, pixel_grid=(16, 24), **TINY).eval()
    assert declared.grid_pad == (0, 0)
    assert repr(declared) == repr(today)
    assert today.state_dict().keys() == declared.state_dict().keys()
    for key, value in today.state_dict().items():
        assert torch.equal(value, declared.state_dict()[key]), key
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        for a, b in zip(today(x), declared(x)):
            assert torch.equal(a, b)


def test_a_grid_r_divides_keeps_the_weights_and_outputs_pinned_before_padding():
    # Numbers of the network as built before grids were padded (same seed): its init draws
    # and its maps are unchanged.
    torch.manual_seed(0)
    model = build_autoencoder("smoke", pixel_channels=2, latent_channels=3).eval()
    total = sum(p.double().abs().sum() for p in model.state_dict().values()).item()
    assert total == pytest.approx(936.3243359516248, rel=1e-9)
    x = torch.randn(2, 2, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x_hat, z = model(x)
    assert x_hat.double().abs().sum().item() == pytest.approx(77.8243843531236, rel=1e-5)
    assert z.double().abs().sum().item() == pytest.approx(54.74322738638148, rel=1e-5)


SMOKE_AE = AutoencoderConfig(
    preset="demo",
    batch_size=8,
    valid_states=16,
    loop=LoopConfig(optimizer="adam", lr=1e-3, epochs=2, steps_per_epoch=16),
)


def test_a_grid_r_divides_keeps_its_snapshot_keywords_and_artifact_id(monkeypatch):
    info = _info((32, 32), [("PERIODIC", "OPEN")])
    # The snapshot's keywords of before: no pixel_grid / grid_padding.
    assert SMOKE_AE.model_kwargs(info) == {
        "spatial_dims": 2,
        "hidden_channels": (32, 64, 128, 128),
        "hidden_blocks": (1, 1, 1, 1),
        "pixel_channels": 2,
        "latent_channels": 16,
    }
    assert latent_geometry(SMOKE_AE, info) == ((16, 4, 4), 2 * 32 * 32 / (16 * 4 * 4))
    # The id the stage asks for, pinned at its value from before grids were padded.
    asked = {}

    def run_stage(context, stage, *, config, upstream=(), **_):
        asked["id"] = artifact_id(stage, config, upstream)

    monkeypatch.setattr(training_stage, "run_stage", run_stage)
    train_autoencoder(SMOKE_AE, info, context=SimpleNamespace(scaling=ScalingSpec()))
    assert asked["id"] == "autoencoder-0d6ba8ec4225"


# -- the trainer on an odd grid -------------------------------------------------------------------

ODD_3D = _info(
    (16, 12, 8),
    # x periodic in both files, y in only one: only x wraps.
    [("PERIODIC", "PERIODIC", "WALL"), ("PERIODIC", "OPEN", "WALL")],
    fields=("density", "pressure", "velocity_x", "velocity_y", "velocity_z"),
    name="odd3d",
)


def test_the_smoke_study_s_autoencoder_accepts_a_16x12x8_grid():
    config = PROFILES["smoke"].autoencoder
    assert config.preset == "demo"  # r = 8: y (12) is not a multiple
    config.validate(ODD_3D)
    assert periodic_axes(ODD_3D) == (True, False, False)
    kwargs = config.model_kwargs(ODD_3D)
    assert kwargs["spatial_dims"] == 3
    assert kwargs["pixel_grid"] == (16, 12, 8) and kwargs["grid_padding"] == (
        "circular",
        "reflect",
        "reflect",
    )
    latent, rate = latent_geometry(config, ODD_3D)
    c = config.latent_channels
    assert latent == (c, 2, 2, 1)
    assert rate == pytest.approx(5 * 16 * 12 * 8 / (c * 2 * 2 * 1))  # numel(x) / numel(z): 120 at C_lat 16
    # the rates a study derives its channels from use the same geometry
    assert latent_channels_for_rates([rate, 4 * rate], config, ODD_3D) == (c, c // 4)
    with torch.device("meta"):
        model = AutoEncoder(**kwargs)
        x_hat, z = model(torch.empty(1, 5, 16, 12, 8))
    assert tuple(z.shape) == (1, *latent) and tuple(x_hat.shape) == (1, 5, 16, 12, 8)


def test_the_rate_of_a_padded_grid_need_not_be_an_integer():
    info = _info((12, 20), [("OPEN", "OPEN")], fields=("a", "b", "c", "d", "e"))
    latent, rate = latent_geometry(AutoencoderConfig(preset="demo", latent_channels=16), info)
    assert latent == (16, 2, 3) and rate == 12.5  # 5 · 12 · 20 / (16 · 2 · 3)


def test_a_padded_autoencoder_survives_its_snapshot(tmp_path):
    info = _info((12, 20), [("PERIODIC", "OPEN")])
    config = AutoencoderConfig(preset="demo", latent_channels=3, architecture=dict(TINY))
    kwargs = config.model_kwargs(info)
    assert kwargs["pixel_grid"] == (12, 20) and kwargs["grid_padding"] == ("circular", "reflect")
    torch.manual_seed(0)
    model = AutoEncoder(**kwargs).eval()
    standardizer = Standardizer(("density", "pressure"), ("none", "none"), (0.0, 0.0), (1.0, 1.0))
    save_autoencoder(tmp_path, model, kwargs, standardizer)
    loaded, _ = load_autoencoder(tmp_path)
    assert (loaded.pixel_grid, loaded.padding_modes) == ((12, 20), ("circular", "reflect"))
    x = torch.randn(2, 2, 12, 20)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)


def test_one_training_step_on_a_padded_grid_sees_the_cropped_reconstruction():
    info = _info((12, 20), [("PERIODIC", "OPEN")])
    config = AutoencoderConfig(preset="demo", latent_channels=3, architecture=dict(TINY))
    torch.manual_seed(0)
    model = AutoEncoder(**config.model_kwargs(info))
    task = AutoencoderTask.__new__(AutoencoderTask)  # the loss only reads the config
    task.config = config
    batch = {"x": torch.randn(4, 2, 1, 12, 20)}  # (B, C, 1 state, H, W), as the train split's
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss, count = task.loss(model, batch, torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert count == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[1] != losses[0]


# -- --autoencoder-preset ----------------------------------------------------------------------


def test_an_unknown_autoencoder_preset_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        compression.parse_args(["--autoencoder-preset", "huge"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --autoencoder-preset: unknown autoencoder preset 'huge'; choose one of" in err
    assert "demo, paper, paper_3d, paper_small, small_r16, small_r8, smoke, smoke_3d" in err


def test_the_autoencoder_preset_replaces_the_profile_s_before_rates_become_channels(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(
        compression,
        "print_plan",
        lambda args, profile, channels, **_: seen.append((profile, tuple(channels))),
    )
    # smoke: 5 fields of 32²; preset smoke has r = 2, so ÷5 is 4 channels (r = 8 would make it 64)
    compression.main(
        ["--profile", "smoke", "--autoencoder-preset", "smoke", "--compression-rates", "5,20", "--plan"]
    )
    profile, channels = seen[-1]
    assert profile.autoencoder.preset == "smoke" and channels == (4, 1)
    assert "(autoencoder preset 'smoke')" in capsys.readouterr().out
    # on 3-D data a 2-D preset still becomes its 3-D counterpart
    compression.main(
        ["--autoencoder-preset", "paper", "--dataset", "turbulence_gravity_cooling"]
        + ["--compression-rates", "spec", "--plan"]
    )
    assert "(autoencoder preset 'paper_3d')" in capsys.readouterr().out
