r"""Which compression rates put a study of this data in the paper's regime?

    python benchmarks/choose_rates.py [--dataset euler_quadrants:demo] [--trajectories 10]
        [--factor 8] [--channels 64 16 4 1] [--seed 0]

The paper's rates (÷80/320/1280 on 512² Euler) mean little on another grid: fronts are
lines, so the information in a state grows with its side :math:`N`, not :math:`N^2`, and
the same ÷ on a 32² grid keeps ~16× fewer numbers per front. This script measures, on the
scored trajectories a study would draw (the stratified draw with ``--seed``), what a latent
of each size can hold at best, so a researcher picks rates from numbers, not by copying:

- **PCA-k**: the best *linear* code of ``k`` numbers (fitted on train states, standardized
  as the autoencoder reads them), VRMSE by the dataset's lead-time horizons — the baseline
  every study reports beside its autoencoders (an autoencoder should beat it by 10 %);
- **block averages**: the state's ``b × b`` local means upsampled back (bilinear), a linear
  oracle at ÷b² that keeps the large scales and smears the fronts;
- **the intrinsic dimension** of the initial states: the PCA components that hold 99 % of
  their variance, and the two-nearest-neighbour estimate (Facco et al. 2017,
  :math:`\hat d = n / \sum_i \ln(r_{2,i}/r_{1,i})`) — a latent with fewer numbers than the
  initial states' degrees of freedom cannot even tell the initial conditions apart.

Each candidate is a latent of ``C_lat`` channels on the autoencoder's grid (``--factor`` r:
latent side = side / r); the rate is ÷ = C·r^d / C_lat. Pick rates whose PCA-k error spans
the range you want to study (the paper's Euler autoencoders: 0.011 to 0.060 over 1:20, a
growth of ×5) and whose smallest latent still holds the initial state's degrees of freedom.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from lolaray.evaluation.baselines import PCA_FIT_STATES, fit_pca, pca_vrmse, train_states
from lolaray.evaluation.metrics import aggregate_by_horizon, vrmse
from lolaray.evaluation.trajectory_selection import stratified_trajectories, trajectory_strata
from lolaray.platform.data import WellWindows, open_dataset, standardizer_for
from lolaray.platform.dataset_specs import resolve_spec


def two_nn_dimension(points: np.ndarray) -> float:
    r"""The two-nearest-neighbour intrinsic dimension :math:`n / \sum \ln(r_2 / r_1)`."""
    flat = points.reshape(len(points), -1)
    squared = (flat**2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * flat @ flat.T, 0.0))
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, :2]
    ratios = nearest[:, 1] / np.maximum(nearest[:, 0], 1e-12)
    return len(ratios) / float(np.log(ratios[ratios > 1]).sum())


def block_average(x: torch.Tensor, b: int) -> torch.Tensor:
    """``b × b`` local means upsampled back bilinearly, states ``(N, C, H, W)``."""
    coarse = F.avg_pool2d(x, b)
    return F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="euler_quadrants:demo")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--trajectories", type=int, default=10, help="scored test trajectories (stratified)")
    parser.add_argument("--seed", type=int, default=0, help="the scored set's draw")
    parser.add_argument("--factor", type=int, default=8, help="the autoencoder's spatial factor r")
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 16, 4, 1], help="latent channels")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    info = open_dataset(args.dataset, data_root=args.data_root)
    spec = resolve_spec(info)
    horizons = tuple(spec.horizons)
    labels = [f"{a}:{b}" for a, b in horizons]
    standardizer = standardizer_for(info)
    test = WellWindows(info, "test", length=None, standardizer=standardizer)
    scored = stratified_trajectories(trajectory_strata(info, "test"), args.trajectories, seed=args.seed)
    states = [test[t]["x"] for t in scored]  # (C, T, *spatial), standardized
    side = info.resolution
    fields, d = info.n_fields, info.n_spatial_dims
    latent_cells = math.prod(s // args.factor for s in side)
    print(
        f"{info.name}: {fields} fields on {'×'.join(map(str, side))}, {len(scored)} scored test trajectories "
        f"(stratified, seed {args.seed}: {scored}); horizons {', '.join(labels)}"
    )

    train = WellWindows(info, "train", length=None, standardizer=standardizer)
    initial = torch.stack([train[i]["x"][:, 0] for i in range(len(train))]).double()
    spectrum = torch.linalg.svdvals((initial - initial.mean(0)).reshape(len(initial), -1)) ** 2
    held = (spectrum.cumsum(0) / spectrum.sum()).numpy()
    print(
        f"initial states ({len(initial)} train trajectories): 99 % of their variance in "
        f"{int(np.searchsorted(held, 0.99)) + 1} principal components, 90 % in "
        f"{int(np.searchsorted(held, 0.90)) + 1}; two-NN intrinsic dimension {two_nn_dimension(initial.numpy()):.1f}"
    )

    fit = train_states(train, max_states=PCA_FIT_STATES)
    largest = max(args.channels) * latent_cells
    basis = fit_pca(fit, components=min(largest, *fit.reshape(len(fit), -1).shape))
    print(f"PCA fitted on {len(fit)} train states ({time.perf_counter() - started:.0f} s so far)\n")
    header = f"{'latent':<22}{'÷':>8}{'numbers':>9}  " + "  ".join(f"{h:>12}" for h in labels)
    print("PCA-k (the best linear code of the latent's size), VRMSE by horizon (mean over the scored set)")
    print(header)
    for channels in args.channels:
        k = channels * latent_cells
        rate = fields * args.factor**d / channels
        if k > basis.components.shape[0]:
            print(f"{channels} × {latent_cells} cells: more numbers than fitted components")
            continue
        by_horizon = {}
        for x in states:
            per_state = pca_vrmse(basis, x, k, standardizer, spatial_dims=d, eps=1e-6)
            for label, value in aggregate_by_horizon(
                per_state, torch.arange(len(per_state)), horizons
            ).items():
                by_horizon.setdefault(label, []).append(float(value))
        cells = "  ".join(f"{np.mean(v):12.3f}" for v in by_horizon.values())
        print(f"{f'{channels} ch × {latent_cells} cells':<22}{rate:>8.3g}{k:>9}  {cells}")

    if d == 2:
        print("\nblock averages upsampled bilinearly (a linear oracle at ÷b²)")
        print(header)
        for b in (2, 4, 8):
            by_horizon = {}
            for x in states:
                u = standardizer.inverse(x.double(), channel_dim=0).movedim(1, 0)  # (T, C, H, W)
                per_state = vrmse(block_average(u, b), u, spatial_dims=2).mean(-1)
                for label, value in aggregate_by_horizon(
                    per_state, torch.arange(len(per_state)), horizons
                ).items():
                    by_horizon.setdefault(label, []).append(float(value))
            cells = "  ".join(f"{np.mean(v):12.3f}" for v in by_horizon.values())
            print(f"{f'{b}×{b} blocks':<22}{b * b:>8}{fields * math.prod(s // b for s in side):>9}  {cells}")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
