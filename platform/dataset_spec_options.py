"""The command-line options that override a dataset's spec (``--stride``, ``--window``,
``--augmentations``, ``--horizons``, ``--wasserstein-field``, ``--log-parameters``), shared
by the sweeps and the evaluation, and :func:`spec_from_args`, the spec they give
(:func:`~lolaray.platform.dataset_specs.resolve_spec`)."""

from __future__ import annotations

import argparse

from lolaray.platform.augmentation import AUGMENTATIONS
from lolaray.platform.data import DatasetInfo
from lolaray.platform.dataset_specs import DatasetSpec, DatasetSpecError, resolve_spec

__all__ = ["add_dataset_spec_arguments", "parse_horizons", "spec_from_args"]


def parse_horizons(text: str) -> tuple[tuple[int, int], ...]:
    """``"1:20,21:60,61:100"`` → ``((1, 20), (21, 60), (61, 100))``.

    :raises DatasetSpecError: not of that form (the message names ``--horizons``).
    """
    try:
        horizons = tuple(tuple(int(v) for v in part.split(":")) for part in text.split(","))
    except ValueError:
        horizons = ((),)
    if not horizons or any(len(h) != 2 for h in horizons):
        raise DatasetSpecError(f"--horizons takes FIRST:LAST lead ranges separated by commas, got {text!r}")
    return horizons


def _horizons_option(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return parse_horizons(text)
    except DatasetSpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _names_option(text: str) -> tuple[str, ...]:
    return () if text.strip().lower() == "none" else tuple(n.strip() for n in text.split(",") if n.strip())


def add_dataset_spec_arguments(parser: argparse.ArgumentParser, *, windows: bool = True) -> None:
    """``--stride``, ``--window``, ``--augmentations`` (unless ``windows`` is false: an
    evaluation takes them from its emulator), ``--horizons``, ``--wasserstein-field`` and
    ``--log-parameters``: overrides of the dataset's spec. ``--starts``, one of
    the scoring options, overrides the spec's start states."""
    group = parser.add_argument_group(
        "dataset settings (default: the paper's for its datasets, else inferred from the data)"
    )
    if windows:
        group.add_argument(
            "--stride", type=int, default=None, help="simulation steps between window states (Δ)"
        )
        group.add_argument("--window", type=int, default=None, help="states per emulator window (n + 1)")
        group.add_argument(
            "--augmentations",
            type=_names_option,
            default=None,
            metavar="NAME,...|none",
            help=f"what the training data draws from ({', '.join(AUGMENTATIONS)}; default: every one valid "
            "for the grid)",
        )
    group.add_argument(
        "--horizons",
        type=_horizons_option,
        default=None,
        metavar="FIRST:LAST,...",
        help="lead-time horizons in simulation steps, e.g. 1:20,21:60,61:100",
    )
    group.add_argument(
        "--wasserstein-field",
        default=None,
        metavar="FIELD",
        help="the field whose distribution is scored on its own (Wasserstein, SEMD; default: the "
        "paper's, density for Euler, velocity_y for rayleigh_benard; else density where there is one)",
    )
    group.add_argument(
        "--log-parameters",
        type=_names_option,
        default=None,
        metavar="NAME,...|none",
        help="parameters that enter θ as logarithms (default: the paper's, else those spanning a decade)",
    )


def spec_from_args(args: argparse.Namespace, info: DatasetInfo) -> DatasetSpec:
    """:func:`resolve_spec` with a command line's overrides (:func:`add_dataset_spec_arguments`)."""
    return resolve_spec(
        info,
        stride=getattr(args, "stride", None),
        window=getattr(args, "window", None),
        horizons=getattr(args, "horizons", None),
        starts=getattr(args, "starts", None),
        log_parameters=getattr(args, "log_parameters", None),
        augmentations=getattr(args, "augmentations", None),
        wasserstein_field=getattr(args, "wasserstein_field", None),
    )
