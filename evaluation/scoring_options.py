"""The scoring setting of an evaluation (which rollouts are scored, and how): its
command-line options, shared by ``evaluation/evaluate.py`` and the sweeps.

- ``--starts``: rollout initial states, in simulation steps (multiples of Δ): the last
  context state of each rollout, leads counted from it; each (trajectory, start) is one
  more sample of every metric.
- ``--trajectory-seed``: draw a stratified set of test trajectories with a fixed seed
  (strata: boundary conditions × parameters, i.e. the test files; as evenly as possible
  over them, :mod:`~lolaray.evaluation.trajectory_selection`) instead of taking the first ``N``.
- ``--vrmse-convention``: the ε of VRMSE: ``lola`` (1e-6, the paper's code, default) or
  ``well`` (1e-7, The Well's benchmark).

Like :mod:`~lolaray.evaluation.guidance_options`, this module imports no torch.
"""

from __future__ import annotations

import argparse

__all__ = ["VRMSE_CONVENTIONS", "add_scoring_arguments", "scoring_from_args"]

#: Names of the VRMSE conventions (``metrics.VRMSE_EPS`` holds their ε).
VRMSE_CONVENTIONS = ("lola", "well")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--starts``, ``--trajectory-seed`` and ``--vrmse-convention`` to ``parser``."""
    group = parser.add_argument_group("scoring")
    group.add_argument(
        "--starts",
        type=int,
        nargs="+",
        default=None,
        metavar="STATE",
        help="rollout initial states (the last context state), in simulation steps, multiples of the "
        "stride (default: the dataset's: 0 for Euler, 32 for rayleigh_benard, 4 for turbulence_gravity_cooling)",
    )
    group.add_argument(
        "--trajectory-seed",
        type=int,
        default=None,
        help="draw a stratified set of N test trajectories with this seed: as evenly as possible over "
        "the strata, boundary conditions x parameters (i.e. the test files), every boundary condition "
        "before any gets a second stratum (default: the first N)",
    )
    group.add_argument(
        "--vrmse-convention",
        choices=VRMSE_CONVENTIONS,
        default="lola",
        help="epsilon on the variance of VRMSE: lola 1e-6 (the paper's code), well 1e-7 (The Well)",
    )


def scoring_from_args(args: argparse.Namespace) -> dict:
    """The ``evaluate`` keywords of the parsed options: ``starts``, ``trajectory_seed``, ``vrmse_convention``."""
    if args.starts is not None and any(s < 0 for s in args.starts):
        raise ValueError(f"--starts must be >= 0, got {args.starts}")
    return {
        "starts": None if args.starts is None else sorted(set(args.starts)),
        "trajectory_seed": args.trajectory_seed,
        "vrmse_convention": args.vrmse_convention,
    }
