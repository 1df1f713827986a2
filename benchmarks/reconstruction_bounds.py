r"""How accurate must a reconstruction of the embedded Euler quadrants be to reach a given VRMSE?

    python benchmarks/reconstruction_bounds.py [--resolutions 32 64] [--trajectories 2]

Issue 15 asks the demo autoencoder for reconstruction VRMSE ≤ 0.10 over leads 1:20 at ÷80.
This script scores reconstructions whose errors are known exactly, on the embedded demo data
(the ``demo`` preset at each resolution; valid and test splits, states 1–20 of every
trajectory, every field, physical units, the evaluation's own
:func:`~lolaray.evaluation.metrics.vrmse`):

- **block averages** of ``k × k`` cells upsampled back (nearest and bilinear): a *linear
  oracle* at ÷k², the best a reconstruction that keeps the state's local means does;
- **every feature moved by one cell** along x (``torch.roll``: exact shapes, misplaced);
- **a half-cell blur** along x (the mean of the state and its one-cell shift).

The states are piecewise smooth with sharp fronts (the quadrants' discontinuities and the
waves they launch), so the error of a misplaced or smeared front is set by the fraction of
cells it crosses: these figures fall as :math:`N^{-1/2}` with the grid's side :math:`N`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from lolaray.evaluation.metrics import vrmse
from lolaray.platform.data import WellWindows, read_dataset_info
from lolaray.platform.embedded import EMBEDDED_PRESETS, ensure_embedded_dataset

LEADS = range(1, 21)


def early_states(resolution: int, trajectories: int) -> torch.Tensor:
    """States 1–20 of every valid and test trajectory: ``(N, 20, C, H, W)`` float64."""
    preset = dataclasses.replace(
        EMBEDDED_PRESETS["demo"],
        resolution=resolution,
        trajectories=(("train", 1), ("valid", trajectories), ("test", trajectories)),
    )
    info = read_dataset_info(ensure_embedded_dataset("euler_quadrants", preset, progress=False))
    states = []
    for split in ("valid", "test"):
        windows = WellWindows(info, split, length=None, stride=1)
        states += [windows[i]["x"][:, list(LEADS)].movedim(1, 0) for i in range(len(windows))]
    return torch.stack(states).double()


def block_average(u: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    flat = u.flatten(0, 1)
    coarse = F.avg_pool2d(flat, k)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(coarse, scale_factor=k, mode=mode, **kwargs).view_as(u)


def score(pred: torch.Tensor, truth: torch.Tensor) -> str:
    errors = vrmse(pred, truth, spatial_dims=2)  # (N, 20, C)
    return f"{errors.mean().item():.3f} (median {errors.median().item():.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--trajectories", type=int, default=2, help="per file in valid and test")
    args = parser.parse_args()
    for resolution in args.resolutions:
        started = time.perf_counter()
        u = early_states(resolution, args.trajectories)
        print(
            f"\n{resolution}²: {u.shape[0]} trajectories × {u.shape[1]} states × {u.shape[2]} fields "
            f"({time.perf_counter() - started:.0f} s with generation); VRMSE over leads 1:20"
        )
        for k in (2, 4, 8):
            for mode in ("nearest", "bilinear"):
                label = f"{k}×{k} block average, {mode} up (÷{k * k}, linear oracle)"
                print(f"  {label:<48} {score(block_average(u, k, mode), u)}")
        shifted = torch.roll(u, shifts=1, dims=-2)
        print(f"  {'every feature moved 1 cell in x (÷1)':<48} {score(shifted, u)}")
        print(f"  {'half-cell blur in x (÷1)':<48} {score(0.5 * (u + shifted), u)}")


if __name__ == "__main__":
    main()
