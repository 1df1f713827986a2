"""The paper's Table 4 ablation: optimizer × identity init of the autoencoder, same budget.

    python sweeps/autoencoder_ablation.py [--profile smoke|demo] [--epochs 20]

Three autoencoders on the embedded dataset — Adam without identity init, Adam with it,
PSGD with it — trained for the same number of steps, each an MLflow child run of one
parent run; the validation loss (VMSE on standardized fields) per epoch is printed as a
table at a few epochs, like Table 4 (which reports validation MAE on Rayleigh–Bénard).
"""

from __future__ import annotations

import argparse
import sys

from mlflow.tracking import MlflowClient

from lolaray.platform.data import open_dataset
from lolaray.platform.session import start_ray
from lolaray.platform.stages import StageContext, add_stage_arguments
from lolaray.platform.tracking import create_run
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.loop import LoopConfig

VARIANTS = (("adam", False), ("adam", True), ("psgd", True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=("smoke", "demo"), default="demo")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--latent-channels", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 (Adam and PSGD alike)")
    add_stage_arguments(parser, dataset_default=None, scaling="workers")
    args = parser.parse_args(argv)

    smoke = args.profile == "smoke"
    epochs = args.epochs or (3 if smoke else 20)
    steps = args.steps_per_epoch or (8 if smoke else 32)
    start_ray(args.address)
    info = open_dataset(args.dataset or f"euler_quadrants:{args.profile}", data_root=args.data_root)
    context = StageContext.from_args(args)
    uri = context.tracking_uri
    parent = create_run(
        context.experiment,
        run_name=f"autoencoder-ablation-{args.profile}",
        uri=uri,
        tags={"stage": "ablation"},
        params={"epochs": epochs, "steps_per_epoch": steps},
    )
    context = context.replace(parent_run_id=parent)
    client = MlflowClient(uri)
    curves = {}
    for optimizer, identity in VARIANTS:
        config = AutoencoderConfig(
            preset="smoke" if smoke else "demo",
            latent_channels=args.latent_channels,
            architecture={"identity_init": identity},
            batch_size=16,
            valid_states=64,
            loop=LoopConfig(
                optimizer=optimizer, lr=args.lr or 1e-3, epochs=epochs, steps_per_epoch=steps, seed=args.seed
            ),
        )
        name = f"{optimizer} {'with' if identity else 'without'} id. init"
        print(f"[lolaray] training: {name}")
        artifact = train_autoencoder(config, info, context)
        history = client.get_metric_history(artifact.manifest["mlflow_run_id"], "valid/loss")
        curves[name] = [m.value for m in sorted(history, key=lambda m: m.step)]
    client.set_terminated(parent)

    marks = sorted({1, max(1, epochs // 10), max(1, epochs // 2), epochs})
    header = f"{'optimizer / init':<26}" + "".join(f"{'epoch ' + str(e):>12}" for e in marks)
    print("\nvalidation VMSE (standardized fields), lower is better")
    print(header)
    print("-" * len(header))
    for name, curve in curves.items():
        print(
            f"{name:<26}"
            + "".join(f"{curve[e - 1]:>12.4f}" if e <= len(curve) else f"{'-':>12}" for e in marks)
        )
    print(f"\nMLflow: parent run {parent} in experiment '{context.experiment}' at {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
