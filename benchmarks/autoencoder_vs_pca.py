r"""Does an autoencoder beat PCA of its size on the states a study scores?

    python benchmarks/autoencoder_vs_pca.py lolaray-store/autoencoder/<id> [<id> ...] \
        [--dataset euler_quadrants:demo] [--trajectories 10] [--seed 0]

For each trained autoencoder (an artifact folder of the store), its reconstruction VRMSE by
lead-time horizon on the scored test trajectories (the stratified draw a study makes with
``--seed``; state ``i`` of a trajectory has lead ``i``, as the evaluation's autoencoder rows)
beside that of PCA with as many components as the latent holds numbers
(:mod:`lolaray.evaluation.baselines`), and their ratio — the findings' guard asks for at most
0.9. A learning curve is this script run on autoencoders trained for different step counts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lolaray.evaluation.baselines import latent_numbers, pca_baseline
from lolaray.evaluation.metrics import aggregate_by_horizon, vrmse
from lolaray.evaluation.trajectory_selection import stratified_trajectories, trajectory_strata
from lolaray.platform.artifacts import open_artifact
from lolaray.platform.data import WellWindows, open_dataset
from lolaray.platform.dataset_specs import resolve_spec
from lolaray.trainers.snapshots import load_autoencoder


def reconstruction_vrmse(model, standardizer, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """VRMSE of D(E(x)) per state, field mean, physical units: ``x`` ``(C, T, *spatial)``."""
    states = x.movedim(1, 0)
    with torch.no_grad():
        recon = model.decode(model.encode(states))
    u = standardizer.inverse(states.double(), channel_dim=1)
    v = standardizer.inverse(recon.double(), channel_dim=1)
    return vrmse(v, u, spatial_dims=spatial_dims).mean(-1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("autoencoders", nargs="+", help="autoencoder artifact folders")
    parser.add_argument("--dataset", default="euler_quadrants:demo")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--trajectories", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    info = open_dataset(args.dataset, data_root=args.data_root)
    horizons = tuple(resolve_spec(info).horizons)
    scored = stratified_trajectories(trajectory_strata(info, "test"), args.trajectories, seed=args.seed)
    print(f"{info.name}: {len(scored)} scored test trajectories {scored}")
    for folder in args.autoencoders:
        started = time.perf_counter()
        artifact = open_artifact(folder)
        model, standardizer = load_autoencoder(artifact)
        test = WellWindows(info, "test", length=None, standardizer=standardizer)
        ours: dict[str, list[float]] = {}
        for t in scored:
            per_state = reconstruction_vrmse(model, standardizer, test[t]["x"], info.n_spatial_dims)
            for label, value in aggregate_by_horizon(
                per_state, torch.arange(len(per_state)), horizons
            ).items():
                ours.setdefault(label, []).append(float(value))
        k = latent_numbers(artifact.manifest)
        _, pca, _ = pca_baseline(
            info,
            standardizer,
            scored,
            components=k,
            horizons=horizons,
            rate=artifact.manifest["compression"],
            eps=1e-6,
        )
        print(
            f"\n{artifact.id}: ÷{artifact.manifest['compression']:g}, {k} numbers, "
            f"{artifact.manifest.get('optimizer_steps', '?')} optimizer steps ({time.perf_counter() - started:.0f} s)"
        )
        for label in pca:
            mean = float(np.mean(ours[label]))
            print(
                f"  {label:<12} autoencoder {mean:.3f}   PCA-{k} {pca[label]:.3f}   ratio {mean / pca[label]:.2f}"
            )


if __name__ == "__main__":
    main()
