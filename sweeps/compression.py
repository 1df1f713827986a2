"""The study over compression rates: ``python sweeps/compression.py [--profile demo]``.

Today this entry point prepares the data of the chosen profile on an embedded local Ray
(or a cluster with ``--address auto``): it generates the embedded dataset with Ray tasks
if it is absent, checks it, fits its standardization and prints what a researcher
needs to know about it. The stages themselves run on their own (README, "What runs
today"); ``lolaray.sweeps.chain`` chains them per compression rate, and the Ray Tune
sweep over the rates is next.
"""

from __future__ import annotations

import argparse
import sys
import time

PROFILES = {"smoke": "smoke", "demo": "demo", "paper": None}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="demo", help="size of everything (default demo)"
    )
    parser.add_argument(
        "--dataset",
        default="euler_quadrants",
        help="embedded name (euler_quadrants[:preset]), a name of The Well with --data-root, or a folder",
    )
    parser.add_argument("--data-root", default=None, help="base path of a download of The Well")
    parser.add_argument(
        "--address", default=None, help="Ray address (default: an embedded local Ray; 'auto' on a cluster)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lolaray.platform.data import WellWindows, open_dataset, standardizer_for
    from lolaray.platform.session import start_ray

    start = time.perf_counter()
    resources = start_ray(args.address)
    print(f"[lolaray] Ray up: {int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs")
    preset = PROFILES[args.profile]
    if preset is None and args.dataset == "euler_quadrants":
        print("[lolaray] the paper profile needs a dataset of The Well: pass --dataset NAME --data-root BASE")
        return 2
    info = open_dataset(args.dataset, data_root=args.data_root, preset=preset or "demo")
    standardizer = standardizer_for(info)
    print(f"[lolaray] dataset {info.name} at {info.root}")
    print(f"  fields      {', '.join(info.field_names)}")
    print(
        f"  grid        {' x '.join(map(str, info.resolution))} ({', '.join(info.spatial_dims)}), {info.n_steps} steps"
    )
    print(
        f"  parameters  {', '.join(info.parameter_names)}; theta has {info.theta_dim} entries (parameters + BC codes)"
    )
    for split, layout in info.splits.items():
        print(f"  {split:<6}      {len(layout.files)} files, {sum(layout.n_trajectories)} trajectories")
    print("  standardization (after transform):")
    for name, transform, mean, std in zip(
        standardizer.field_names, standardizer.transforms, standardizer.mean, standardizer.std
    ):
        print(f"    {name:<12} {transform:<7} mean {mean:+.3f}  std {std:.3f}")
    sample = WellWindows(info, "train", length=5, stride=4, standardizer=standardizer)[0]
    print(f"  an emulator window: x {tuple(sample['x'].shape)}, theta {sample['theta'].tolist()}")
    print(f"[lolaray] data ready in {time.perf_counter() - start:.1f} s.")
    print(
        "[lolaray] coming next here: the Ray Tune sweep that chains the stages per compression rate "
        "(autoencoder -> latent cache -> diffusion and neural solver -> ensemble evaluation -> MLflow report). "
        "Each stage already runs on its own; see the README's 'What runs today'."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
