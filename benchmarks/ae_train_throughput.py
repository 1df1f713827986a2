"""Autoencoder training throughput: the Ray Train loop (1 worker) vs a plain PyTorch loop.

    python benchmarks/ae_train_throughput.py [--preset demo] [--threads 2]

Both train the same network on the same batches of the embedded dataset (single
augmented states, VMSE loss, Adam) with the same number of torch threads, in one
session. Printed: samples/s of each (mean over the epochs after the first, which
includes warm-up), their ratio (goal ≥ 0.9), and the Ray Train run's time from
``fit()`` to the first optimizer step.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import torch
from ray.train import Result
from torch.utils.data import DataLoader

from lolaray.platform.data import WellWindows, open_dataset, standardizer_for
from lolaray.platform.session import start_ray
from lolaray.platform.stages import ScalingSpec
from lolaray.trainers.autoencoder import AutoEncoder
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, AutoencoderTask
from lolaray.trainers.launch import fit_stage
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.optim import build_optimizer
from lolaray.trainers.step import TrainingStep
from lolaray.trainers.training_stage import task_worker


def _loss(config: AutoencoderConfig):
    def loss(model, batch, device):
        x = batch["x"][:, :, 0].to(device)  # (B, C, 1, H, W) -> (B, C, H, W)
        return config.reconstruction_loss(model(x)[0], x), x.shape[0]

    return loss


def plain_loop(config, info, standardizer, *, epochs: int, threads: int) -> list[float]:
    """The reference: DataLoader + model + optimizer in this process, no Ray."""

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoEncoder(**config.model_kwargs(info))
    optimizer = build_optimizer(model.parameters(), name=config.loop.optimizer, lr=config.loop.lr)
    states = WellWindows(info, "train", length=1, standardizer=standardizer, augment=True)
    loader = DataLoader(states, batch_size=config.batch_size, shuffle=True, drop_last=True)
    # The loss the stage trains on, and the step it takes (trainers/step.py); only the data
    # path and Ray Train differ from the stage.
    train_step = TrainingStep(model, optimizer, loss=_loss(config))
    rates = []
    batches = iter(())
    for _ in range(epochs):
        began, samples = time.perf_counter(), 0
        for _ in range(config.loop.steps_per_epoch):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            samples += train_step(batch).samples
        rates.append(samples / (time.perf_counter() - began))
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="euler_quadrants:demo")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    info = open_dataset(args.dataset)
    standardizer = standardizer_for(info)
    config = AutoencoderConfig(
        preset=args.preset,
        latent_channels=16,
        batch_size=args.batch_size,
        valid_states=16,
        loop=LoopConfig(optimizer="adam", lr=1e-3, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch),
    )
    plain = plain_loop(config, info, standardizer, epochs=args.epochs, threads=args.threads)

    start_ray(None, num_cpus=max(4, 2 * args.threads))
    storage = tempfile.mkdtemp(prefix="lolaray-bench-")
    began = time.time()
    summary, _ = fit_stage(
        functools.partial(task_worker, AutoencoderTask),
        {"config": config.to_dict(), "dataset_root": info.root, "standardizer": standardizer.to_dict()},
        name="bench-ae",
        storage_path=storage,
        scaling=ScalingSpec(workers=1, cpus_per_worker=args.threads, use_gpu=False, max_failures=0),
    )
    # The worker's per-epoch samples/s, as reported with each checkpoint.
    rates = list(Result.from_path(f"{storage}/bench-ae").metrics_dataframe["train/samples_per_s"])

    def steady(values):
        tail = values[1:] or values
        return sum(tail) / len(tail)

    n_params = sum(p.numel() for p in AutoEncoder(**config.model_kwargs(info)).parameters())
    print(
        f"model: preset {args.preset}, {n_params:,} parameters; batch {args.batch_size}; "
        f"{args.threads} torch threads; state {info.state_shape}"
    )
    print(
        f"plain PyTorch loop      {steady(plain):8.1f} samples/s  (per epoch: {', '.join(f'{r:.1f}' for r in plain)})"
    )
    print(
        f"Ray Train, 1 worker     {steady(rates):8.1f} samples/s  (per epoch: {', '.join(f'{r:.1f}' for r in rates)})"
    )
    print(f"ratio Ray / plain       {steady(rates) / steady(plain):8.2f}  (goal >= 0.9)")
    print(
        f"time to first step      {summary['first_step_at'] - began:8.1f} s  (fit() call to the first optimizer step)"
    )


if __name__ == "__main__":
    main()
