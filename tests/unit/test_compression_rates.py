"""Compression rates as latent channel counts (``--compression-rates``): ``C_lat = C · r^d / ÷``
on the trainer's own geometry, refusals that name the nearest reachable rates, and the
command line. Pure: no Ray, no data generated or read."""

import dataclasses
import math
import os

import pytest

from lolaray.platform.data import DatasetInfo
from lolaray.platform.dataset_specs import DatasetSpecError, resolve_spec
from lolaray.sweeps import compression
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.compression_rates import (
    SPEC_RATES,
    format_rate,
    latent_channels_for_rates,
    parse_rates,
    study_rates,
)
from lolaray.sweeps.plan import WELL_GEOMETRY, plan_dataset
from lolaray.sweeps.sweep import SweepInputError
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig


def _info(fields=5, resolution=(32, 32), known=()):
    axes = ("x", "y", "z")[: len(resolution)]
    return DatasetInfo(
        name="toy",
        root="(not read)",
        field_names=tuple(f"f{i}" for i in range(fields)),
        vector_axis=(None,) * fields,
        spatial_dims=axes,
        resolution=tuple(resolution),
        parameter_names=(),
        n_steps=10,
        splits={},
        constant_field_names=tuple(known),
        constant_vector_axis=(None,) * len(known),
    )


DEMO = AutoencoderConfig(preset="demo")  # r = 8


@pytest.mark.parametrize(
    ("config", "info", "rates", "channels"),
    [
        # 5 × 32² / (C_lat × 4²) = 320 / C_lat
        (DEMO, _info(), (5, 20, 80, 320), (64, 16, 4, 1)),
        (DEMO, _info(), (2.5,), (128,)),
        # known channels are given, not compressed: they change nothing
        (DEMO, _info(known=("mask", "depth")), (20, 80), (16, 4)),
        # the demo preset takes the data's dimension: 5 × 32³ / (C_lat × 4³) = 2560 / C_lat
        (DEMO, _info(resolution=(32, 32, 32)), (40, 2560), (64, 1)),
        # the reference's 3-D autoencoder (r = 8) on gravity cooling's 6 fields of 64³
        (AutoencoderConfig(preset="paper_3d"), _info(6, (64, 64, 64)), (48, 192, 768), (64, 16, 4)),
        # r = 32 on Rayleigh–Bénard's 4 fields of 512 × 128: 4 × 32² / C_lat
        (AutoencoderConfig(preset="paper"), _info(4, (512, 128)), (64, 256, 1024), (64, 16, 4)),
        # r = 16: the demo profile's 2×2 latents of 32² states at the paper's Euler rates
        (AutoencoderConfig(preset="small_r16"), _info(), (80, 320, 1280), (16, 4, 1)),
    ],
)
def test_rates_give_latent_channels(config, info, rates, channels):
    assert latent_channels_for_rates(rates, config, info) == channels
    # and back: the rate of each count, by the formula C · r^d / C_lat
    r = {"demo": 8, "paper_3d": 8, "paper": 32, "small_r16": 16}[config.preset]
    for rate, c in zip(rates, channels):
        assert math.isclose(info.n_fields * r ** len(info.resolution) / c, rate)


def test_the_config_s_own_latent_channels_are_ignored():
    assert latent_channels_for_rates([80], dataclasses.replace(DEMO, latent_channels=64), _info()) == (4,)


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (
            100,
            (
                "÷100 is not reachable with 5 fields and 4×4 latents of a 32² grid (preset 'demo', r=8): "
                "C_lat = 3.2; nearest rates ÷106.67 (C_lat 3) and ÷80 (C_lat 4)"
            ),
        ),
        (30, "C_lat = 10.67; nearest rates ÷32 (C_lat 10) and ÷29.09 (C_lat 11)"),
        # C_lat would be 0.8, rounding to 0: refused, naming the highest rate there is
        (400, "C_lat = 0.8; the highest rate reachable is ÷320 (C_lat 1)"),
        (10_000, "C_lat = 0.032; the highest rate reachable is ÷320 (C_lat 1)"),
    ],
)
def test_an_unreachable_rate_names_the_nearest_reachable_ones(rate, message):
    with pytest.raises(ValueError) as error:
        latent_channels_for_rates([20, rate], DEMO, _info())
    assert message in str(error.value)


def test_an_unreachable_rate_names_the_known_channels_it_does_not_count():
    with pytest.raises(ValueError, match=r"with 5 fields \(\+ 1 known, not counted\) and 4×4 latents"):
        latent_channels_for_rates([100], DEMO, _info(known=("mask",)))


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ((), "the compression rate list is empty"),
        ((80, 0), "compression rates must be > 0, got 0"),
        ((-5,), "compression rates must be > 0, got -5"),
        ((float("nan"),), "compression rates must be > 0, got nan"),
        ((float("inf"),), "compression rates must be > 0, got inf"),
    ],
)
def test_rates_must_be_positive(rates, message):
    with pytest.raises(ValueError, match=message):
        latent_channels_for_rates(rates, DEMO, _info())


def test_a_grid_the_autoencoder_does_not_divide_is_padded_and_its_rates_follow():
    # 36×32 with r = 8 pads to 40×32: 5×4 latent cells, ÷ = 5·36·32 / (C_lat·20) = 288 / C_lat.
    assert latent_channels_for_rates([72], DEMO, _info(resolution=(36, 32))) == (4,)
    with pytest.raises(ValueError, match=r"5×4 latents of a 36×32 grid \(preset 'demo', r=8\)"):
        latent_channels_for_rates([80], DEMO, _info(resolution=(36, 32)))


@pytest.mark.parametrize(("profile", "dataset"), [("paper", name) for name in WELL_GEOMETRY])
def test_the_paper_s_rates_are_the_paper_profile_s_channels(profile, dataset):
    """On each of the paper's datasets (3-D: the ``paper_3d`` autoencoder), the spec's rates
    give the paper profile's channel counts: the profile needs no change."""
    info, _ = plan_dataset(dataset)
    spec = resolve_spec(info)
    fitted = PROFILES[profile].for_dataset(spec)
    rates = study_rates(PROFILES[profile], spec, SPEC_RATES)
    assert rates == tuple(float(r) for r in spec.compression_rates)
    assert latent_channels_for_rates(rates, fitted.autoencoder, info) == PROFILES[profile].latent_channels


def test_study_rates_command_line_then_profile_then_none():
    spec = resolve_spec(plan_dataset("euler_quadrants:demo")[0])
    demo = dataclasses.replace(PROFILES["demo"], compression_rates=None)
    assert study_rates(demo, spec) is None  # the profile's latent_channels
    assert study_rates(PROFILES["demo"], spec) == (5.0, 20.0, 80.0)  # the demo asks for rates
    asks = dataclasses.replace(demo, compression_rates=(80, 320))
    assert study_rates(asks, spec) == (80.0, 320.0)
    assert study_rates(asks, spec, (20,)) == (20.0,)
    assert study_rates(dataclasses.replace(demo, compression_rates=SPEC_RATES), spec) == (80.0, 320.0, 1280.0)
    unseen = dataclasses.replace(spec, name="folder", compression_rates=(), source="inferred")
    with pytest.raises(DatasetSpecError, match="the dataset settings of folder .* give no compression rates"):
        study_rates(demo, unseen, SPEC_RATES)


def test_parse_rates_and_format_rate():
    assert parse_rates("5,20,80") == (5.0, 20.0, 80.0)
    assert parse_rates(" 2.5, 80 ,") == (2.5, 80.0)
    assert parse_rates("Spec") == SPEC_RATES
    assert parse_rates("") == ()
    with pytest.raises(ValueError, match="--compression-rates takes rates separated by commas"):
        parse_rates("5,x")
    assert [format_rate(r) for r in (80.0, 320 / 3, 2.5)] == ["÷80", "÷106.67", "÷2.5"]


# -- the command line ---------------------------------------------------------------------------


def _channels(argv, profile=None):
    args = compression.parse_args(argv)
    lines = []
    channels = compression.latent_channels_from_args(
        args, profile or PROFILES[args.profile], out=lines.append
    )
    return tuple(channels), lines


def test_compression_rates_on_the_command_line_become_latent_channels():
    channels, lines = _channels(["--profile", "smoke", "--compression-rates", "20,80"])
    assert channels == (16, 4)  # smoke: 32², preset demo (r = 8)
    assert lines == [
        (
            "[lolaray] compression rates ÷20, ÷80 of euler_quadrants: latent channels 16, 4 "
            "(autoencoder preset 'demo')"
        )
    ]
    # the demo profile asks for its own rates (÷5/20/80 of 4×4 latents, r = 8) ...
    assert _channels([])[0] == (64, 16, 4) == PROFILES["demo"].latent_channels
    # ... and the spec's (the paper's 512² rates) reach no whole channel count at ÷1280 there
    with pytest.raises(ValueError, match="÷1280 is not reachable .* r=8"):
        _channels(["--compression-rates", "spec"])
    small_r16 = dataclasses.replace(
        PROFILES["demo"], autoencoder=dataclasses.replace(PROFILES["demo"].autoencoder, preset="small_r16")
    )
    assert _channels(["--compression-rates", "spec"], small_r16)[0] == (16, 4, 1)
    # nothing asked: the profile's counts, nothing printed
    assert _channels(["--profile", "smoke"]) == (PROFILES["smoke"].latent_channels, [])


def test_a_profile_that_asks_for_rates_gets_channels_unless_the_command_line_gives_them():
    asks = dataclasses.replace(PROFILES["smoke"], compression_rates=(5, 320))
    assert _channels(["--profile", "smoke"], asks)[0] == (64, 1)
    assert _channels(["--profile", "smoke", "--compression-rates", "80"], asks)[0] == (4,)
    assert _channels(["--profile", "smoke", "--latent-channels", "2"], asks)[0] == (2,)


def test_an_unreachable_rate_on_the_command_line_is_an_input_error():
    with pytest.raises(SweepInputError, match=r"÷100 is not reachable .* nearest rates ÷106.67"):
        _channels(["--profile", "smoke", "--compression-rates", "100"])
    with pytest.raises(SweepInputError, match="unknown dataset 'nope'"):
        _channels(["--profile", "smoke", "--dataset", "nope", "--compression-rates", "80"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--latent-channels", "4", "--compression-rates", "80"],
            "argument --compression-rates: not allowed with argument --latent-channels",
        ),
        (["--compression-rates", "5,x"], "--compression-rates takes rates separated by commas"),
    ],
)
def test_the_command_line_refuses_both_options_and_bad_rates(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        compression.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "compression.py: error:" in err and message in err


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ("100", "÷100 is not reachable with 5 fields and 4×4 latents of a 32² grid"),
        ("80,0", "compression rates must be > 0, got 0"),
        ("", "the compression rate list is empty"),
    ],
)
def test_main_refuses_a_bad_rate_before_work(rates, message, capsys, tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        status = compression.main(
            ["--profile", "smoke", "--compression-rates", rates, "--store", str(tmp_path / "store")]
            + ["--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]
        )
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert status == 2 and "compression.py: error:" in err and message in err, err
    assert list(tmp_path.iterdir()) == []  # no store, no MLflow database, no Ray


def test_main_sweeps_the_derived_channels(monkeypatch, capsys):
    """``--plan`` receives what the trials would: the channels of the rates, or of the
    profile's rates."""
    seen = []
    monkeypatch.setattr(compression, "print_plan", lambda args, profile, channels, **_: seen.append(channels))
    compression.main(["--profile", "smoke", "--compression-rates", "5,80", "--plan"])
    monkeypatch.setitem(
        compression.PROFILES, "smoke", dataclasses.replace(PROFILES["smoke"], compression_rates=(320,))
    )
    compression.main(["--profile", "smoke", "--plan"])
    assert [tuple(c) for c in seen] == [(64, 4), (1,)]
    assert "latent channels 64, 4" in capsys.readouterr().out


def test_seeds_replicate_every_chain_and_are_checked():
    assert compression.parse_args([]).seeds == 1
    assert compression.parse_args(["--seeds", "3"]).seeds == 3
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            compression.parse_args(["--seeds", bad])
    assert compression._label(64) == "c64" and compression._label(64, 2) == "c64-r2"
    assert compression._label("pixel", 1) == "pixel-r1"
