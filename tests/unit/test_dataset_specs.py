"""Dataset settings: the paper's per dataset, inferred ones for unseen folders, overrides."""

import argparse
import dataclasses

import pytest
from wellfiles import make_tiny_dataset

from lolaray.platform.data import DatasetInfo, open_dataset
from lolaray.platform.dataset_spec_options import add_dataset_spec_arguments, parse_horizons, spec_from_args
from lolaray.platform.dataset_specs import PAPER_SPECS, DatasetSpecError, infer_spec, resolve_spec
from lolaray.platform.well_format import SplitLayout
from lolaray.sweeps.chain import PROFILES


def _info(
    name="unseen",
    *,
    steps=101,
    resolution=(32, 32),
    boundaries=("OPEN", "OPEN"),
    parameters=None,
    fields=("density",),
) -> DatasetInfo:
    """A dataset's headers, without files: only what the specs read. ``parameters`` maps
    each parameter to its value in each file (default: one file with gamma 1.4)."""
    parameters = {"gamma": (1.4,)} if parameters is None else parameters
    n_files = len(next(iter(parameters.values()), (0,)))
    dims = ("x", "y", "z")[: len(resolution)]
    layout = SplitLayout(
        files=tuple(f"f{i}.hdf5" for i in range(n_files)),
        file_sizes=(1,) * n_files,
        dataset_name=name,
        field_names=fields,
        vector_axis=(None,) * len(fields),
        spatial_dims=dims,
        resolution=resolution,
        parameter_names=tuple(parameters),
        n_trajectories=(2,) * n_files,
        n_steps=(steps,) * n_files,
        boundary_types=(boundaries,) * n_files,
        parameter_values=tuple(zip(*parameters.values())) if parameters else ((),) * n_files,
    )
    return DatasetInfo(
        name=name,
        root="/nowhere",
        field_names=fields,
        vector_axis=(None,) * len(fields),
        spatial_dims=dims,
        resolution=resolution,
        parameter_names=tuple(parameters),
        n_steps=steps,
        splits={"train": layout, "valid": layout, "test": layout},
    )


def test_the_papers_datasets_take_the_papers_settings():
    euler, rb, tgc = (
        PAPER_SPECS[n]
        for n in ("euler_multi_quadrants_openBC", "rayleigh_benard", "turbulence_gravity_cooling")
    )
    assert (euler.stride, euler.window, euler.horizons, euler.starts) == (
        4,
        5,
        ((1, 20), (21, 60), (61, 100)),
        (0,),
    )
    assert (rb.stride, rb.starts, rb.horizons[-1]) == (4, (32,), (61, 160))
    assert "permute" not in rb.augmentations and rb.log_parameters == ("rayleigh", "prandtl")
    assert (tgc.stride, tgc.starts, tgc.horizons) == (1, (4,), ((1, 10), (11, 30), (31, 50)))
    assert tgc.compression_rates == (48, 192, 768) and tgc.spatial_downsample == 8
    assert PAPER_SPECS["euler_quadrants"].horizons == euler.horizons  # the embedded Euler data
    # The Well spells RB's parameters Rayleigh and Prandtl: matched case-insensitively.
    well_rb = _info(
        "rayleigh_benard",
        steps=200,
        resolution=(512, 128),
        boundaries=("PERIODIC", "WALL"),
        parameters={"Rayleigh": (1e8,), "Prandtl": (1.0,)},
        fields=("buoyancy", "pressure", "velocity_x", "velocity_y"),
    )
    assert resolve_spec(well_rb) == dataclasses.replace(rb, log_parameters=("Rayleigh", "Prandtl"))


@pytest.mark.parametrize(
    ("steps", "stride", "window", "horizons"),
    [
        (101, 4, 5, ((1, 36), (37, 68), (69, 100))),  # 25 leads: 9 + 8 + 8
        (12, 2, 5, ((1, 4), (5, 8), (9, 10))),  # the 3-D folder of issue 16: stride 4 would span 17
        (9, 2, 5, ((1, 4), (5, 6), (7, 8))),
        (5, 1, 5, ((1, 2), (3, 3), (4, 4))),
        (3, 1, 3, ((1, 1), (2, 2))),
    ],
)
def test_defaults_fit_folders_of_any_length(steps, stride, window, horizons):
    spec = infer_spec(_info(steps=steps))
    assert (spec.stride, spec.window, spec.horizons) == (stride, window, horizons)
    assert spec.span <= steps and spec.source == "inferred"


@pytest.mark.parametrize(
    ("resolution", "boundaries", "augmentations"),
    [
        ((32, 32), ("PERIODIC", "PERIODIC"), ("flip", "permute", "roll")),
        ((48, 32), ("PERIODIC", "OPEN"), ("flip", "roll")),  # non-square: no permutation
        ((16, 12, 8), ("OPEN", "OPEN", "WALL"), ("flip",)),
        ((8, 8, 8), ("WALL", "WALL", "WALL"), ("flip", "permute")),
    ],
)
def test_only_augmentations_valid_for_the_grid(resolution, boundaries, augmentations):
    assert infer_spec(_info(resolution=resolution, boundaries=boundaries)).augmentations == augmentations


def test_augmentations_are_overridden_and_checked_against_the_grid():
    rb_like = _info(resolution=(48, 32), boundaries=("PERIODIC", "WALL"))
    spec = resolve_spec(rb_like)
    assert (spec.augmentations, spec.augment) == (("flip", "roll"), True)  # every one the grid allows
    spec = resolve_spec(rb_like, augmentations=["roll", "flip", "roll"])
    assert spec.augment is True and spec.source == "inferred + overrides"
    assert resolve_spec(rb_like, augmentations=["flip"]).augment == ("flip",)
    assert resolve_spec(rb_like, augmentations=[]).augment is False
    with pytest.raises(
        DatasetSpecError, match="--augmentations: permute is not a symmetry of .*48×32 grid is not square"
    ):
        resolve_spec(rb_like, augmentations=["flip", "permute"])
    with pytest.raises(DatasetSpecError, match="--augmentations: roll .* \\(none of its axes is periodic\\)"):
        resolve_spec(_info(boundaries=("OPEN", "WALL")), augmentations=["roll"])
    with pytest.raises(
        DatasetSpecError, match="--augmentations: unknown rotate; choose from flip, permute, roll"
    ):
        resolve_spec(rb_like, augmentations=["rotate"])
    # The paper's Euler augmentations on The Well's open-boundary Euler folder: no periodic axis, no roll.
    open_euler = resolve_spec(_info("euler_multi_quadrants_openBC", boundaries=("OPEN", "OPEN")))
    assert (open_euler.augmentations, open_euler.augment) == (("flip", "permute"), True)
    assert "augment" not in open_euler.to_dict()


def test_a_profile_trains_on_the_specs_augmentations():
    square = _info(boundaries=("PERIODIC", "PERIODIC"))
    profile = PROFILES["demo"].for_dataset(resolve_spec(square, augmentations=["flip", "roll"]))
    assert (
        profile.augment == profile.autoencoder.augment == profile.pixel_emulator.augment == ("flip", "roll")
    )
    assert profile.repeat == PROFILES["demo"].repeat
    assert profile.emulator.augment is True  # latent emulators train on the cache's copies
    unaugmented = PROFILES["smoke"].for_dataset(resolve_spec(square, augmentations=[]))
    assert (unaugmented.augment, unaugmented.autoencoder.augment, unaugmented.repeat) == (False, False, 1)
    # Every augmentation the grid allows: the stages' defaults, so their artifact ids do not change.
    every = PROFILES["smoke"].for_dataset(resolve_spec(square))
    assert every.autoencoder.to_dict() == PROFILES["smoke"].autoencoder.to_dict()
    assert "augment" not in every.pixel_emulator.to_dict()
    assert (
        every.pixel_emulator.to_dict()
        == dataclasses.replace(PROFILES["smoke"].pixel_emulator, log_parameters=()).to_dict()
    )


def test_the_scored_field_is_the_papers_or_the_command_lines():
    rb = _info(
        "rayleigh_benard", steps=200, resolution=(64, 16), fields=("buoyancy", "velocity_x", "velocity_y")
    )
    assert resolve_spec(rb).scoring() == {
        "starts": [32],
        "horizons": ((1, 20), (21, 60), (61, 160)),
        "wasserstein_field": "velocity_y",
    }
    assert resolve_spec(rb, wasserstein_field="buoyancy").wasserstein_field == "buoyancy"
    assert resolve_spec(rb).describe().endswith("scored field velocity_y")
    assert infer_spec(_info()).wasserstein_field is None  # the evaluation's default: density
    with pytest.raises(
        DatasetSpecError,
        match="--wasserstein-field: unseen has no field 'vorticity' \\(its fields: density\\)",
    ):
        resolve_spec(_info(), wasserstein_field="vorticity")
    parser = argparse.ArgumentParser()
    add_dataset_spec_arguments(parser, windows=False)
    assert (
        spec_from_args(parser.parse_args(["--wasserstein-field", "velocity_x"]), rb).wasserstein_field
        == "velocity_x"
    )


def test_a_folder_too_short_for_any_window_is_refused():
    with pytest.raises(DatasetSpecError, match="1 state\\(s\\) hold no window"):
        infer_spec(_info(steps=1))


def test_overrides_are_checked_and_name_the_option_to_change():
    info = _info(steps=12)
    spec = resolve_spec(info, stride=1)
    assert (
        spec.stride == 1
        and spec.horizons == ((1, 4), (5, 8), (9, 11))
        and spec.source == "inferred + overrides"
    )
    assert resolve_spec(info, horizons=[(1, 4), (5, 10)]).horizons == ((1, 4), (5, 10))
    assert resolve_spec(info, starts=[2, 0, 2]).starts == (0, 2)
    with pytest.raises(
        DatasetSpecError,
        match="spans 17 steps, longer than its shortest trajectory \\(12 steps\\); pass --stride 2",
    ):
        resolve_spec(info, stride=4)
    with pytest.raises(DatasetSpecError, match="pass --window 12 --stride 1"):
        resolve_spec(info, window=13)
    with pytest.raises(DatasetSpecError, match="--horizons must be increasing"):
        resolve_spec(info, horizons=[(1, 10), (5, 12)])
    with pytest.raises(DatasetSpecError, match="--window must be >= 2"):
        resolve_spec(info, window=1)
    with pytest.raises(DatasetSpecError, match="--starts must be >= 0"):
        resolve_spec(info, starts=[-1])
    with pytest.raises(DatasetSpecError, match="multiples of the stride 2"):
        resolve_spec(info, starts=[3])
    with pytest.raises(DatasetSpecError, match="start state 10 leaves nothing to predict"):
        resolve_spec(info, starts=[10])
    with pytest.raises(DatasetSpecError, match="reach lead 3 at most .* before the last horizon"):
        resolve_spec(info, starts=[8], horizons=[(1, 2), (4, 6)])
    # The paper's Rayleigh–Bénard horizons from its start state 32 need more than 60 steps.
    with pytest.raises(DatasetSpecError, match="reach lead 27 at most .*; pass --horizons or --starts"):
        resolve_spec(_info("rayleigh_benard", steps=60, resolution=(16, 8)))


def test_the_command_line_overrides_the_spec(tmp_path):
    parser = argparse.ArgumentParser()
    add_dataset_spec_arguments(parser)
    info = open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=11))
    args = parser.parse_args(["--stride", "2", "--horizons", "1:4,5:10", "--augmentations", "flip"])
    args.starts = None
    spec = spec_from_args(args, info)
    assert (spec.stride, spec.window, spec.horizons) == (2, 5, ((1, 4), (5, 10)))
    assert (spec.augmentations, spec.augment) == (("flip",), ("flip",))
    assert spec_from_args(parser.parse_args(["--augmentations", "none"]), info).augment is False
    assert spec.to_dict()["horizons"] == [[1, 4], [5, 10]]
    assert parse_horizons("1:20,21:60") == ((1, 20), (21, 60))
    with pytest.raises(DatasetSpecError, match="FIRST:LAST"):
        parse_horizons("1-20")
    with pytest.raises(SystemExit):
        parser.parse_args(["--horizons", "soon"])


def test_a_profile_takes_the_datasets_window():
    spec = resolve_spec(_info(steps=3))  # window 3, stride 1
    profile = PROFILES["smoke"].for_dataset(spec)
    assert (profile.emulator.window, profile.emulator.stride) == (3, 1)
    assert (profile.pixel_emulator.window, profile.pixel_emulator.stride) == (3, 1)
    assert profile.contexts == (1, 2)  # a window of 3 holds contexts up to 2
    euler = PROFILES["smoke"].for_dataset(PAPER_SPECS["euler_quadrants"])
    # The embedded study's emulators differ from the profile's only by the spec's (empty) log parameters.
    assert euler.emulator == dataclasses.replace(PROFILES["smoke"].emulator, log_parameters=())


def test_positive_parameters_spanning_a_decade_enter_theta_as_logarithms():
    info = _info(
        parameters={
            "reynolds": (1e3, 1e4, 1e5),  # positive, five decades: logged
            "gamma": (1.3, 1.4, 1.6),  # positive, less than a decade: raw
            "tilt": (-1.0, 10.0, 100.0),  # spans decades but not positive: raw
        }
    )
    assert infer_spec(info).log_parameters == ("reynolds",)
    assert resolve_spec(info, log_parameters=[]).log_parameters == ()
    assert resolve_spec(info, log_parameters=["gamma"]).log_parameters == ("gamma",)
    with pytest.raises(DatasetSpecError, match="--log-parameters: mach not among the parameters"):
        resolve_spec(info, log_parameters=["mach"])
    with pytest.raises(
        DatasetSpecError, match="f0.hdf5: parameter 'tilt' = -1 cannot enter θ as a logarithm"
    ):
        resolve_spec(info, log_parameters=["tilt"])
    parser = argparse.ArgumentParser()
    add_dataset_spec_arguments(parser)
    assert parser.parse_args(["--log-parameters", "none"]).log_parameters == ()
    assert parser.parse_args(["--log-parameters", "reynolds, gamma"]).log_parameters == ("reynolds", "gamma")
