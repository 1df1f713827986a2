"""Ensemble rollout throughput: 1 vs 2 Ray actors, and K members batched vs one at a time.

    python benchmarks/ensemble_rollout_throughput.py [--dataset euler_quadrants:demo]

Untrained demo-width networks (throughput does not depend on the weights) on the demo
dataset, in one session:

1. K = 8 members of one latent diffusion rollout (26 states, 16 AB3 steps, decoding
   included) in batches of 1, 2, 4 and 8 members on the device (goal: all 8 batched
   ≥ 2× one at a time);
2. the distributed ``evaluate`` stage with 1 and 2 rollout actors (states/s = trajectories ×
   contexts × members × states ÷ the stage's wall time, metrics and report included).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from lolaray.evaluation.emulator_steps import diffusion_step
from lolaray.evaluation.evaluate import EvaluationConfig, evaluate
from lolaray.evaluation.rollout import decode_in_chunks, ensemble_rollout
from lolaray.platform.artifacts import ArtifactStore
from lolaray.platform.data import WellWindows, open_dataset, standardizer_for
from lolaray.platform.session import start_ray
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_autoencoder, save_emulator


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="euler_quadrants:demo")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--trajectories", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    start_ray(None)
    info = open_dataset(args.dataset)
    work = tempfile.mkdtemp(prefix="lolaray-bench-eval-")
    store, uri = ArtifactStore(f"{work}/store"), f"sqlite:///{work}/mlflow.db"
    local = StageContext(store=store, tracking_uri=uri, scaling=ScalingSpec(workers=0))
    autoencoder = train_autoencoder(
        AutoencoderConfig(
            preset="demo",
            latent_channels=16,
            batch_size=4,
            loop=LoopConfig(optimizer="adam", epochs=1, steps_per_epoch=1),
        ),
        info,
        local,
        log_model=False,
    )
    latent_shape = tuple(autoencoder.manifest["latent_shape"])
    config = EmulatorConfig(kind="diffusion", preset="demo", window=5, stride=4)
    denoiser = build_emulator(config, latent_shape, info.theta_dim).eval()
    model, _ = load_autoencoder(autoencoder)

    # 1. Members per batch, one trajectory, no Ray. Rounds interleave the batch sizes so
    # that a slow spell of this shared machine does not land on one of them only.
    item = WellWindows(info, "test", length=None, standardizer=standardizer_for(info))[0]
    initial = model.encode(item["x"][:, :1].movedim(1, 0)).movedim(0, 1).unsqueeze(0)  # (1, C, 1, h, w)
    step = diffusion_step(denoiser, steps=args.steps)
    batches = sorted({1, 2, 4, args.members} & set(range(1, args.members + 1)))
    seconds = {b: [] for b in batches}
    for round_ in range(args.rounds):
        for max_batch in batches:
            began = time.perf_counter()
            with torch.inference_mode():
                z = ensemble_rollout(
                    step,
                    initial,
                    item["theta"][None],
                    members=args.members,
                    seed=0,
                    trajectory=0,
                    start=0,
                    window=5,
                    context=1,
                    overlap=1,
                    length=26,
                    max_batch=max_batch,
                )
                # The evaluation's decoding: 4 time steps of every member in the batch per call.
                for block in z.split(max_batch):
                    decode_in_chunks(model, block, chunk=4)
            seconds[max_batch].append(time.perf_counter() - began)
            print(f"round {round_}: {max_batch} member(s) per batch: {seconds[max_batch][-1]:6.1f} s")
    median = {b: statistics.median(s) for b, s in seconds.items()}
    print(f"K={args.members} members x 26 states, median of {args.rounds} rounds:")
    for b in batches:
        print(
            f"  {b} per batch: {median[b]:6.1f} s = {args.members * 26 / median[b]:6.1f} states/s "
            f"({median[1] / median[b]:.2f}x one at a time)"
        )
    print(f"batched / one at a time: {median[1] / median[args.members]:.2f}x  (goal >= 2x)")

    # 2. The distributed stage with 1 and 2 actors.
    manifest = {
        "kind": "diffusion",
        "space": "latent",
        "state_shape": list(latent_shape),
        "theta_dim": info.theta_dim,
        "window": 5,
        "stride": 4,
        "compression": autoencoder.manifest["compression"],
        "autoencoder": autoencoder.id,
    }
    with store.build("emulator", "emulator-bench", manifest) as folder:
        save_emulator(folder, denoiser, config, tuple(latent_shape), info.theta_dim)
    emulator = store.get("emulator", "emulator-bench")
    for actors in (1, 2):
        began = time.perf_counter()
        evaluate(
            emulator,
            autoencoder,
            info,
            StageContext.resolve(f"{work}/eval-{actors}", uri, scaling=ScalingSpec(actors=actors)),
            EvaluationConfig(
                contexts=(1,),
                members=args.members,
                trajectories=args.trajectories,
                steps=args.steps,
                max_batch=args.members,
            ),
        )
        elapsed = time.perf_counter() - began
        states = args.trajectories * args.members * 26
        print(
            f"evaluate, {actors} actor(s): {states} states in {elapsed:6.1f} s = {states / elapsed:6.1f} states/s "
            "(whole stage)"
        )


if __name__ == "__main__":
    main()
