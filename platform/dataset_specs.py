"""What a study needs to know about a dataset's physics: one :class:`DatasetSpec` per dataset.

The paper sets these per dataset (``method.md`` §1, §7, §8; paper Table 2): the time stride
Δ between the states of an emulator window, the window length ``n + 1``, the lead-time
horizons its tables average over, the rollouts' start states, the augmentations valid for
the grid, the parameters that enter θ as logarithms, the compression rates, the field
scored by a Wasserstein distance and the guidance operator. :data:`PAPER_SPECS` holds the
paper's three datasets (and the embedded Euler data, which follows Euler's settings);
:func:`infer_spec` gives defaults for a folder the platform has never seen, read from its
headers; :func:`resolve_spec` applies overrides and checks that the result fits the data,
with an error naming the command-line option to change
(:mod:`~lolaray.platform.dataset_spec_options` holds the options).

Horizons are inclusive ranges of lead times in simulation steps: ``(1, 20)`` scores the
states 1 to 20 steps after the last context state (at Δ = 4: leads 4, 8, …, 20).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from lolaray.platform.augmentation import AUGMENTATIONS, augmentation_setting
from lolaray.platform.data import DatasetInfo

__all__ = [
    "PAPER_SPECS",
    "DatasetSpec",
    "DatasetSpecError",
    "infer_spec",
    "resolve_spec",
]

#: Largest stride an inferred spec takes: the paper's Δ on its 2-D datasets.
MAX_INFERRED_STRIDE = 4


class DatasetSpecError(ValueError):
    """A dataset setting that does not fit the data; the message names the option to change."""


@dataclass(frozen=True)
class DatasetSpec:
    """The physics-dependent settings of a study on one dataset.

    :param name: the dataset (The Well's name, or a folder's ``dataset_name``).
    :param stride: Δ, simulation steps between consecutive states of a window.
    :param window: states per emulator window, ``n + 1`` (context + generated).
    :param horizons: inclusive lead-time ranges in simulation steps, scored separately.
    :param starts: rollout initial states in simulation steps, multiples of ``stride``: the
        last context state of each rollout, leads counted from it (the paper's: Euler 0,
        Rayleigh–Bénard 32, turbulence_gravity_cooling 4).
    :param augmentations: those of :data:`~lolaray.platform.augmentation.AUGMENTATIONS` the
        training data draws from (the autoencoder's states, the latent cache's augmented
        copies, the pixel solver's windows); only those valid for the grid and its boundaries
        (no permutation on a non-square grid, no roll without a periodic axis).
    :param log_parameters: constant scalars that enter θ as their natural logarithm (the
        emulators standardize θ from the train split after it; see
        :class:`~lolaray.platform.preprocessing.ThetaStandardizer`).
    :param compression_rates: the paper's rates, ``numel(x) / numel(z)`` (``()``: not set).
    :param spatial_downsample: the autoencoder's reduction per spatial axis in the paper.
    :param spatial_dims: 2 or 3, the dimension of the grid (what the networks are built for).
    :param wasserstein_field: the field whose distribution is scored on its own, by its 1-D
        Wasserstein distance and (2-D) its sliced EMD (paper Tables 11–13); ``None``: density
        where the data has it.
    :param guidance: the guidance setting of the paper's figures (MMPS; ``None``: none), in
        :func:`~lolaray.evaluation.guidance_options.guidance_config`'s keywords: the default
        of ``--guidance``.
    :param augment: :attr:`augmentations` as the stages take them (an
        :func:`~lolaray.platform.augmentation.augmentation_setting`), set by
        :func:`resolve_spec`: ``True`` when they are every one the grid allows (the stages'
        default, so a study's artifacts are those of the stages run alone).
    :param source: ``"paper"`` or ``"inferred"``, with ``" + overrides"`` when the command
        line changed anything.
    """

    name: str
    stride: int
    window: int = 5
    horizons: tuple[tuple[int, int], ...] = ((1, 20), (21, 60), (61, 100))
    starts: tuple[int, ...] = (0,)
    augmentations: tuple[str, ...] = AUGMENTATIONS
    log_parameters: tuple[str, ...] = ()
    compression_rates: tuple[int, ...] = ()
    spatial_downsample: int | None = None
    spatial_dims: int = 2
    wasserstein_field: str | None = None
    guidance: dict | None = None
    augment: bool | tuple[str, ...] = True
    source: str = "paper"

    @property
    def span(self) -> int:
        """Simulation steps one window covers: ``(window − 1) · stride + 1``."""
        return (self.window - 1) * self.stride + 1

    def scoring(self) -> dict:
        """The evaluation's keywords this spec sets: start states, horizons, the scored field."""
        return {
            "starts": list(self.starts),
            "horizons": self.horizons,
            "wasserstein_field": self.wasserstein_field,
        }

    def to_dict(self) -> dict:
        """Plain types, for the MLflow parameters of a study."""
        plain = dataclasses.asdict(self)
        del plain["augment"]  # the stages' spelling of `augmentations`
        return {
            **plain,
            "horizons": [list(h) for h in self.horizons],
            "starts": list(self.starts),
            "augmentations": list(self.augmentations),
            "log_parameters": list(self.log_parameters),
            "compression_rates": list(self.compression_rates),
        }

    def describe(self) -> str:
        """One line for the start of a study."""
        horizons = ", ".join(f"{a}:{b}" for a, b in self.horizons)
        return (
            f"dataset settings ({self.source}): stride {self.stride}, window {self.window} "
            f"(spans {self.span} steps), horizons {horizons}, starts {list(self.starts)}, "
            f"augmentations {'/'.join(self.augmentations) or 'none'}, "
            f"log parameters {', '.join(self.log_parameters) or 'none'}, "
            f"scored field {self.wasserstein_field or 'density, where there is one'}"
        )


_EULER = DatasetSpec(
    name="euler_multi_quadrants_openBC",
    stride=4,
    horizons=((1, 20), (21, 60), (61, 100)),
    starts=(0,),
    augmentations=("flip", "permute", "roll"),
    compression_rates=(80, 320, 1280),
    spatial_downsample=32,
    wasserstein_field="density",
    guidance={"operator": "subsample", "factor": 32, "sigma_y": 0.1, "var_y": 1e-2, "iterations": 1},
)

#: The paper's settings (method.md §1, §7, §8; paper Table 2). Rayleigh–Bénard's last
#: horizon is the reference code's 61:160 (the paper's text says 61:180); its grid is not
#: square, so no permutation; Δ = 1 for turbulence_gravity_cooling (the reference code's
#: default of 4 is wrong for it). T0 is logged here, which the reference code meant to do
#: (its ``"T0"`` key never matches a lower-cased name).
PAPER_SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _EULER,
        dataclasses.replace(_EULER, name="euler_multi_quadrants_periodicBC"),
        dataclasses.replace(_EULER, name="euler_quadrants"),  # the embedded Euler data
        DatasetSpec(
            name="rayleigh_benard",
            stride=4,
            horizons=((1, 20), (21, 60), (61, 160)),
            starts=(32,),
            augmentations=("flip", "roll"),
            log_parameters=("rayleigh", "prandtl"),
            compression_rates=(64, 256, 1024),
            spatial_downsample=32,
            wasserstein_field="velocity_y",
            guidance={"operator": "downscale", "factor": 16, "sigma_y": 0.1, "var_y": 1e-2, "iterations": 1},
        ),
        DatasetSpec(
            name="turbulence_gravity_cooling",
            stride=1,
            horizons=((1, 10), (11, 30), (31, 50)),
            starts=(4,),
            augmentations=("flip", "permute"),
            log_parameters=("rho0", "T0"),
            compression_rates=(48, 192, 768),
            spatial_downsample=8,
            spatial_dims=3,
            wasserstein_field="density",
            # factor: the boundary stripe's width in cells
            guidance={"operator": "boundary", "factor": 4, "sigma_y": 1e-2, "var_y": 1e-4, "iterations": 2},
        ),
    )
}


def _inferred_horizons(n_steps: int, stride: int) -> tuple[tuple[int, int], ...]:
    """The lead times of a rollout from the first state, split in thirds (fewer horizons
    when there are fewer than three leads)."""
    leads = list(range(stride, n_steps, stride))  # steps after the first state
    if not leads:
        return ()
    groups = min(3, len(leads))
    size, extra = divmod(len(leads), groups)
    horizons, first, index = [], 1, 0
    for group in range(groups):
        index += size + (1 if group < extra else 0)
        last = leads[index - 1]
        horizons.append((first, last))
        first = last + 1
    return tuple(horizons)


def _valid_augmentations(info: DatasetInfo) -> tuple[str, ...]:
    """Flips always; a permutation on a square (cubic) grid; rolls where an axis is periodic."""
    valid = ["flip"]
    if info.n_spatial_dims > 1 and len(set(info.resolution)) == 1:
        valid.append("permute")
    if any("PERIODIC" in axes for split in info.splits for axes in info.boundary_codes(split)):
        valid.append("roll")
    return tuple(valid)


def _inferred_log_parameters(info: DatasetInfo) -> tuple[str, ...]:
    """The parameters positive in every file that span a decade or more over the train split."""
    values = info.parameter_samples("train")
    every = [v for layout in info.splits.values() for v in layout.parameter_values]
    logged = []
    for i, name in enumerate(info.parameter_names):
        column = values[:, i]
        if len(column) and all(v[i] > 0 for v in every) and column.max() >= 10 * column.min():
            logged.append(name)
    return tuple(logged)


def infer_spec(info: DatasetInfo) -> DatasetSpec:
    """Defaults for a dataset the platform has no settings for, from its headers.

    The window keeps the paper's 5 states when it fits the shortest trajectory, at the
    largest stride up to :data:`MAX_INFERRED_STRIDE` that fits; a shorter folder gets a
    shorter window at stride 1. Horizons split the rollout's lead times in thirds. A
    parameter positive everywhere and spanning a decade or more enters θ as a logarithm.

    :raises DatasetSpecError: the trajectories have fewer than 2 states.
    """
    n = info.n_steps
    if n < 2:
        raise DatasetSpecError(
            f"{info.name}: trajectories of {n} state(s) hold no window (a context state and one "
            "to predict need 2); this folder cannot train an emulator"
        )
    window, stride = min(5, n), 1
    for candidate in range(MAX_INFERRED_STRIDE, 0, -1):
        if (window - 1) * candidate + 1 <= n:
            stride = candidate
            break
    return DatasetSpec(
        name=info.name,
        stride=stride,
        window=window,
        horizons=_inferred_horizons(n, stride),
        starts=(0,),
        augmentations=_valid_augmentations(info),
        log_parameters=_inferred_log_parameters(info),
        spatial_dims=info.n_spatial_dims,
        source="inferred",
    )


def resolve_spec(
    info: DatasetInfo,
    *,
    stride: int | None = None,
    window: int | None = None,
    horizons: Sequence[tuple[int, int]] | None = None,
    starts: Sequence[int] | None = None,
    log_parameters: Sequence[str] | None = None,
    augmentations: Sequence[str] | None = None,
    wasserstein_field: str | None = None,
) -> DatasetSpec:
    """The paper's spec of ``info`` (else :func:`infer_spec`), with the given overrides,
    checked against the data.

    The paper's log parameters are matched to the folder's names case-insensitively (The
    Well spells them ``Rayleigh``, the reference code ``rayleigh``); those the folder lacks
    are dropped, and so are the paper's augmentations the folder's grid does not allow (no
    roll on a folder with no periodic axis, e.g. ``euler_multi_quadrants_openBC``).

    An inferred spec whose stride is overridden gets horizons recomputed for that stride
    unless they are given too.

    :raises DatasetSpecError: a window that does not fit the shortest trajectory (naming
        ``--stride`` / ``--window``), horizons that are empty, overlapping or out of order
        (``--horizons``), negative start states (``--starts``), a log parameter the data
        does not have (``--log-parameters``), an augmentation unknown or not valid for the
        grid (``--augmentations``), a scored field the data lacks (``--wasserstein-field``).
    """
    spec = PAPER_SPECS.get(info.name)
    if spec is None:
        spec = infer_spec(info)
    else:
        by_lower = {name.lower(): name for name in info.parameter_names}
        valid = _valid_augmentations(info)
        spec = dataclasses.replace(
            spec,
            log_parameters=tuple(by_lower[n.lower()] for n in spec.log_parameters if n.lower() in by_lower),
            augmentations=tuple(a for a in spec.augmentations if a in valid),
            wasserstein_field=spec.wasserstein_field if spec.wasserstein_field in info.field_names else None,
        )
    changes = {
        key: value
        for key, value in (
            ("stride", stride),
            ("window", window),
            ("horizons", horizons),
            ("starts", starts),
            ("log_parameters", None if log_parameters is None else tuple(log_parameters)),
            ("augmentations", None if augmentations is None else tuple(augmentations)),
            ("wasserstein_field", wasserstein_field),
        )
        if value is not None
    }
    if changes:
        if spec.source == "inferred" and "horizons" not in changes and "stride" in changes:
            changes["horizons"] = _inferred_horizons(info.n_steps, int(changes["stride"]))
        changes = {
            **changes,
            **(
                {"horizons": tuple(tuple(int(v) for v in h) for h in changes["horizons"])}
                if "horizons" in changes
                else {}
            ),
            **({"starts": tuple(sorted({int(s) for s in changes["starts"]}))} if "starts" in changes else {}),
        }
        spec = dataclasses.replace(spec, **changes, source=f"{spec.source} + overrides")
    _check(spec, info)
    covers_grid = set(spec.augmentations) == set(_valid_augmentations(info))
    return dataclasses.replace(
        spec, augment=True if covers_grid else augmentation_setting(spec.augmentations)
    )


def _check(spec: DatasetSpec, info: DatasetInfo) -> None:
    if spec.spatial_dims != info.n_spatial_dims:
        raise DatasetSpecError(
            f"{info.root}: named {info.name!r} but {info.n_spatial_dims}-D, where the paper's {info.name} "
            f"is {spec.spatial_dims}-D"
        )
    if spec.stride < 1:
        raise DatasetSpecError(f"--stride must be >= 1, got {spec.stride}")
    if spec.window < 2:
        raise DatasetSpecError(
            f"--window must be >= 2 (a context state and one to predict), got {spec.window}"
        )
    if spec.span > info.n_steps:
        fits = [s for s in range(spec.stride, 0, -1) if (spec.window - 1) * s + 1 <= info.n_steps]
        hint = f"--stride {fits[0]}" if fits else f"--window {info.n_steps} --stride 1"
        raise DatasetSpecError(
            f"{info.name}: a window of {spec.window} states at stride {spec.stride} spans {spec.span} "
            f"steps, longer than its shortest trajectory ({info.n_steps} steps); pass {hint}"
        )
    if not spec.horizons:
        raise DatasetSpecError(f"{info.name}: no lead-time horizon to score; pass --horizons FIRST:LAST,...")
    previous = 0
    for first, last in spec.horizons:
        if not previous < first <= last:
            raise DatasetSpecError(
                f"--horizons must be increasing, non-overlapping FIRST:LAST ranges of leads >= 1, "
                f"got {', '.join(f'{a}:{b}' for a, b in spec.horizons)}"
            )
        previous = last
    if any(s < 0 for s in spec.starts):
        raise DatasetSpecError(f"--starts must be >= 0, got {list(spec.starts)}")
    if any(s % spec.stride for s in spec.starts):
        raise DatasetSpecError(
            f"--starts {' '.join(map(str, spec.starts))}: start states are simulation steps on the "
            f"strided trajectory, multiples of the stride {spec.stride}"
        )
    test_steps = min(info.splits["test"].n_steps) if "test" in info.splits else info.n_steps
    if max(spec.starts) + spec.stride >= test_steps:
        raise DatasetSpecError(
            f"{info.name}: start state {max(spec.starts)} leaves nothing to predict in test trajectories "
            f"of {test_steps} steps at stride {spec.stride}; pass smaller --starts (e.g. --starts 0)"
        )
    first_lead = spec.horizons[-1][0]
    reachable = test_steps - 1 - max(spec.starts)
    if first_lead > reachable:
        raise DatasetSpecError(
            f"{info.name}: rollouts from start state {max(spec.starts)} reach lead {reachable} at most in "
            f"test trajectories of {test_steps} steps, before the last horizon ({first_lead}:...); "
            "pass --horizons or --starts"
        )
    _check_augmentations(spec.augmentations, info)
    if spec.wasserstein_field is not None and spec.wasserstein_field not in info.field_names:
        raise DatasetSpecError(
            f"--wasserstein-field: {info.name} has no field {spec.wasserstein_field!r} "
            f"(its fields: {', '.join(info.field_names)})"
        )
    unknown = [name for name in spec.log_parameters if name not in info.parameter_names]
    if unknown:
        raise DatasetSpecError(
            f"--log-parameters: {', '.join(unknown)} not among the parameters of {info.name} "
            f"({', '.join(info.parameter_names) or 'none'})"
        )
    for layout in info.splits.values():
        for file, values in zip(layout.files, layout.parameter_values):
            for name, value in zip(info.parameter_names, values):
                if name in spec.log_parameters and value <= 0:
                    raise DatasetSpecError(
                        f"{file}: parameter {name!r} = {value:g} cannot enter θ as a logarithm; "
                        "leave it out of --log-parameters"
                    )


def _check_augmentations(names: Sequence[str], info: DatasetInfo) -> None:
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise DatasetSpecError(
            f"--augmentations: unknown {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)} or none"
        )
    valid = _valid_augmentations(info)
    grid = "×".join(map(str, info.resolution))
    why = {
        "permute": f"its {grid} grid is not square" if info.n_spatial_dims > 1 else "it has one axis",
        "roll": "none of its axes is periodic",
    }
    invalid = [name for name in names if name not in valid]
    if invalid:
        raise DatasetSpecError(
            f"--augmentations: {', '.join(f'{n} is not a symmetry of {info.name} ({why[n]})' for n in invalid)}; "
            f"valid: {', '.join(valid)}"
        )
