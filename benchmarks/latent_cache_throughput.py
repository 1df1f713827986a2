"""Latent cache throughput: windows/s from the cache vs from HDF5 + encoding; encode states/s.

    python benchmarks/latent_cache_throughput.py [--dataset euler_quadrants:demo]

One session, side by side:

1. encoding throughput (states/s) of ``cache_latents`` with 1 and 2 encoder actors;
2. emulator-training windows (n+1 = 5 states at stride 4) delivered per second to a
   consuming loop (a) from the cache through Ray Data (``window_dataset`` →
   ``iter_torch_batches``) and (b) from the HDF5 files with on-the-fly standardization and
   encoding by the autoencoder (what training without a cache would do). Goal: (a) ≥ 10× (b).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ray.data
import torch
from torch.utils.data import DataLoader

from lolaray.platform.data import WellWindows, open_dataset, standardizer_for
from lolaray.platform.latent_cache import window_dataset
from lolaray.platform.session import start_ray
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.encoding import cache_latents, open_cache
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_autoencoder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="euler_quadrants:demo")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--windows", type=int, default=480, help="windows consumed per measurement")
    args = parser.parse_args(argv)

    start_ray(None)

    ray.data.DataContext.get_current().enable_progress_bars = False
    info = open_dataset(args.dataset)
    work = tempfile.mkdtemp(prefix="lolaray-bench-cache-")
    uri = f"sqlite:///{work}/mlflow.db"
    # Throughput does not depend on the weights: one optimizer step is enough to have an artifact.
    config = AutoencoderConfig(
        preset=args.preset,
        latent_channels=16,
        batch_size=4,
        loop=LoopConfig(optimizer="adam", epochs=1, steps_per_epoch=1),
    )
    autoencoder = train_autoencoder(
        config,
        info,
        StageContext.resolve(f"{work}/store", uri, scaling=ScalingSpec(workers=0)),
        log_model=False,
    )
    print(
        f"dataset {info.name} {info.state_shape}, latent {tuple(autoencoder.manifest['latent_shape'])}, "
        f"autoencoder preset {args.preset}"
    )

    encode_rates = {}
    for actors in (1, 2):
        began = time.perf_counter()
        cache = cache_latents(
            autoencoder,
            info,
            "valid",
            StageContext.resolve(f"{work}/store-{actors}", uri, scaling=ScalingSpec(actors=actors)),
        )
        seconds = time.perf_counter() - began
        encode_rates[actors] = cache.manifest["states"] / seconds
        print(
            f"encode, {actors} actor(s): {cache.manifest['states']} states in {seconds:.1f} s "
            f"= {encode_rates[actors]:.0f} states/s (whole stage: read + standardize + encode + write)"
        )
    print(f"encode speed-up 2 vs 1 actors: {encode_rates[2] / encode_rates[1]:.2f}x")

    # (a) windows from the cache, as a Ray Train worker would consume them.
    train_cache = open_cache(
        cache_latents(autoencoder, info, "train", StageContext.resolve(f"{work}/store-1", uri), repeat=1)
    )
    windows = window_dataset(train_cache, length=5, stride=4, per_trajectory=8).select_columns(["z", "theta"])
    consumed, began = 0, time.perf_counter()
    while consumed < args.windows:
        for batch in windows.iter_torch_batches(batch_size=args.batch_size):
            consumed += batch["z"].shape[0]
            if consumed >= args.windows:
                break
    cached_rate = consumed / (time.perf_counter() - began)

    # (b) windows from HDF5 with on-the-fly preprocessing and encoding.
    model, _ = load_autoencoder(autoencoder)
    source = WellWindows(info, "train", length=5, stride=4, standardizer=standardizer_for(info), augment=True)
    loader = DataLoader(source, batch_size=args.batch_size, shuffle=True, drop_last=True)
    consumed, began = 0, time.perf_counter()
    with torch.inference_mode():
        while consumed < args.windows:
            for batch in loader:
                x = batch["x"]  # (B, C, 5, H, W)
                states = x.movedim(2, 1).flatten(0, 1)
                z = model.encode(states).unflatten(0, (x.shape[0], 5)).movedim(1, 2)
                consumed += z.shape[0]
                if consumed >= args.windows:
                    break
    onthefly_rate = consumed / (time.perf_counter() - began)
    print(f"windows/s from the latent cache (Ray Data):        {cached_rate:8.1f}")
    print(f"windows/s from HDF5 + standardize + encode:       {onthefly_rate:8.1f}")
    print(
        f"ratio cache / on-the-fly:                         {cached_rate / onthefly_rate:8.1f}x  (goal >= 10x)"
    )


if __name__ == "__main__":
    main()
