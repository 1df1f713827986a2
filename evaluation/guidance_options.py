r"""The guidance setting of an evaluation: one checked dictionary and its command-line options.

Both ``evaluation/evaluate.py`` and ``sweeps/compression.py`` take the same options; they
live here once. This module imports no torch, so a command line can check its options
before the heavy imports.

Defaults come from the dataset's spec (``DatasetSpec.guidance``, the paper's setting for its
datasets: Euler subsampling by 32, Rayleigh–Bénard downscaling by 16, gravity cooling's
boundary stripe of 4 cells): ``--guidance`` alone takes it whole; ``--guidance OPERATOR``
takes the spec's settings when it names the spec's operator and :func:`guidance_config`'s
(the paper's Figure 6) otherwise; every option given on the command line wins.
"""

from __future__ import annotations

import argparse

__all__ = [
    "DATASET_GUIDANCE",
    "OPERATOR_NAMES",
    "SOLVER_NAMES",
    "add_guidance_arguments",
    "guidance_config",
    "guidance_from_args",
]

#: Observation operators selectable from the command line (``trainers/guidance.py``'s
#: ``FixedMask`` needs a mask array, so it is for code only).
OPERATOR_NAMES = ("subsample", "downscale", "boundary")
#: Krylov solvers for the MMPS linear system (``trainers/guidance.py``'s ``SOLVERS``).
SOLVER_NAMES = ("gmres", "cg")
#: ``--guidance`` without an operator: the dataset spec's setting.
DATASET_GUIDANCE = "dataset"


def guidance_config(
    operator: str = "downscale",
    factor: int = 8,
    sigma_y: float = 0.1,
    var_y: float | None = None,
    iterations: int = 1,
    solver: str = "gmres",
) -> dict:
    r"""A complete, checked guidance setting.

    The defaults are the paper's (Figure 6): mean-pool ``downscale`` by 8, observation noise
    :math:`\sigma_y = 0.1` in standardized units, model variance
    :math:`\mathrm{var}_y = \sigma_y^2`, one GMRES iteration.

    :param operator: the observation operator (:data:`OPERATOR_NAMES`).
    :param factor: subsampling stride, pooling block size or boundary stripe width (cells).
    :param sigma_y: standard deviation of the noise added to the observations.
    :param var_y: observation variance assumed by the guidance (default ``sigma_y**2``;
        required when ``sigma_y`` is 0).
    :param iterations: Krylov iterations per sampler step.
    :param solver: ``"gmres"`` (reference) or ``"cg"``.
    :raises ValueError: on an unknown operator or solver, or an out-of-range number.
    """
    if operator not in OPERATOR_NAMES:
        raise ValueError(f"unknown guidance operator {operator!r}: choose one of {', '.join(OPERATOR_NAMES)}")
    if solver not in SOLVER_NAMES:
        raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVER_NAMES)}")
    if factor < 1 or iterations < 1 or sigma_y < 0:
        raise ValueError(
            f"need factor >= 1, iterations >= 1, sigma_y >= 0; got {factor}, {iterations}, {sigma_y}"
        )
    var_y = sigma_y**2 if var_y is None else var_y
    if var_y <= 0:
        raise ValueError(f"var_y must be > 0 (set it when sigma_y is 0), got {var_y}")
    return {
        "operator": str(operator),
        "factor": int(factor),
        "sigma_y": float(sigma_y),
        "var_y": float(var_y),
        "iterations": int(iterations),
        "solver": str(solver),
    }


def add_guidance_arguments(parser: argparse.ArgumentParser, *, what: str) -> None:
    """Add ``--guidance`` and its settings to a command line.

    :param what: how ``--guidance`` reads in this command's help, e.g. "guide a diffusion
        emulator".
    """
    group = parser.add_argument_group("guidance (MMPS data assimilation)")
    group.add_argument(
        "--guidance",
        choices=(*OPERATOR_NAMES, DATASET_GUIDANCE),
        nargs="?",
        const=DATASET_GUIDANCE,
        default=None,
        metavar="OPERATOR",
        help=f"{what} (MMPS) by observations of the true states through this operator "
        f"({', '.join(OPERATOR_NAMES)}; alone: the dataset's, e.g. the paper's subsample ×32 on Euler)",
    )
    defaults = "default: the dataset's for its operator, else"
    group.add_argument(
        "--guidance-factor", type=int, default=None, help=f"stride, block size or stripe width ({defaults} 8)"
    )
    group.add_argument(
        "--sigma-y", type=float, default=None, help=f"observation noise, standardized units ({defaults} 0.1)"
    )
    group.add_argument(
        "--var-y", type=float, default=None, help="observation variance of the model (default σ_y²)"
    )
    group.add_argument(
        "--guidance-iterations",
        type=int,
        default=None,
        help=f"Krylov iterations per sampler step ({defaults} 1)",
    )
    group.add_argument("--guidance-solver", choices=SOLVER_NAMES, default=None, help="default gmres")


def guidance_from_args(args: argparse.Namespace, dataset_guidance: dict | None = None) -> dict | None:
    """The checked setting from options added by :func:`add_guidance_arguments`
    (``None`` without ``--guidance``).

    :param dataset_guidance: the dataset spec's setting (``DatasetSpec.guidance``; ``None``:
        the dataset has none, and ``--guidance`` alone takes :func:`guidance_config`'s).
    :raises ValueError: as :func:`guidance_config`.
    """
    if args.guidance is None:
        return None
    spec = dict(dataset_guidance or {})
    operator = spec.get("operator", "downscale") if args.guidance == DATASET_GUIDANCE else args.guidance
    base = {k: v for k, v in spec.items() if k != "operator"} if spec.get("operator") == operator else {}
    given = {
        key: value
        for key, value in (
            ("factor", args.guidance_factor),
            ("sigma_y", args.sigma_y),
            ("var_y", args.var_y),
            ("iterations", args.guidance_iterations),
            ("solver", args.guidance_solver),
        )
        if value is not None
    }
    if "sigma_y" in given and "var_y" not in given:
        base.pop("var_y", None)  # the model's variance follows a σ_y given alone
    return guidance_config(operator, **{**base, **given})
