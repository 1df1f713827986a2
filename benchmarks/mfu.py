r"""Model-FLOPs utilisation of the training steps on this machine's CPU (or GPU).

    python benchmarks/mfu.py [--steps 5] [--threads 2] [--wide]

1. The GEMM peak, measured: the best of a few ``n × n`` matrix products in fp32 and in
   bf16 (``2 n^3`` FLOPs each), the ceiling any network step can reach in that dtype.
2. Training steps of the demo profile's networks at ÷20 — the autoencoder (``small_r8`` on the
   demo dataset's 32² states, batch 8) and the latent diffusion emulator (``demo`` preset, 2×2
   patches of its 16 × 4 × 4 latents, batch 16) — and, with ``--wide``, of a paper-width emulator (``paper`` preset, 1024
   wide, on 64 × 8 × 8 latents, batch 1), in fp32 and under bf16 autocast: forward,
   backward, clipping and the AdamW step, as :func:`~lolaray.trainers.loop.run_training`
   takes them.
3. MFU = (FLOPs of one step, counted on the meta device by :mod:`lolaray.sweeps.step_costs`) /
   (measured seconds per step) / (the GEMM peak in the step's dtype). On a CPU also by CPU
   time (step FLOPs over its CPU seconds / threads, against the peak measured the same way):
   on a machine shared with other work, wall time counts their work too.

The precision ``"auto"`` would choose here is printed too (the AMX flag and the probe of
:func:`~lolaray.trainers.hardware.measure_bf16_speedup`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.plan import plan_dataset
from lolaray.sweeps.step_costs import autoencoder_cost, emulator_cost
from lolaray.trainers.autoencoder import AutoEncoder
from lolaray.trainers.autoencoder_trainer import latent_geometry
from lolaray.trainers.emulator_trainer import Objective, draw_masks
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.hardware import (
    autocast_context,
    cpu_flags,
    measure_bf16_speedup,
    measure_gemm_peak,
    resolve_precision,
)
from lolaray.trainers.optim import build_optimizer
from lolaray.trainers.step import TrainingStep


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, loss_fn, *, precision: str, device: torch.device, steps: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds per training step (after one
    warm-up step) of the training step itself (:class:`~lolaray.trainers.step.TrainingStep`),
    AdamW, clip 1. On a shared CPU the wall time counts the others' work too;
    CPU seconds / threads is what the step would take with the cores to itself."""
    optimizer = build_optimizer(model.parameters(), name="adamw", lr=1e-4)
    train_step = TrainingStep(
        model,
        optimizer,
        loss=lambda m, _batch, _device: (loss_fn(m), 1),
        device=device,
        autocast=autocast_context(precision, device.type),
    )
    model.train()
    times, cpu_times = [], []
    for _ in range(steps + 1):
        _synchronize(device)
        began, cpu = time.perf_counter(), _cpu_seconds()
        train_step(None)
        _synchronize(device)
        times.append(time.perf_counter() - began)
        cpu_times.append(_cpu_seconds() - cpu)
    return _median(times[1:]), _median(cpu_times[1:])


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _cpu_seconds() -> float:
    # process_time counts in nanoseconds; os.times ticks every 10 ms, a fraction of a small step
    return time.process_time()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--gemm", type=int, default=2048, help="size n of the peak's n x n products")
    parser.add_argument("--wide", action="store_true", help="also a paper-width (1024) emulator")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    flags = cpu_flags()
    print(
        f"device {device}, {torch.get_num_threads()} threads; CPU flags: amx_bf16={'amx_bf16' in flags}, "
        f"avx512_bf16={'avx512_bf16' in flags}"
    )
    measured_peaks = {
        "fp32": measure_gemm_peak(torch.float32, device, n=args.gemm),
        "bf16": measure_gemm_peak(torch.bfloat16, device, n=args.gemm),
    }
    peaks = {dtype: wall for dtype, (wall, _) in measured_peaks.items()}
    cpu_peaks = {dtype: cpu for dtype, (_, cpu) in measured_peaks.items()}
    print(
        f"GEMM peak ({args.gemm}^2 products), by wall time: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s ({peaks['bf16'] / peaks['fp32']:.1f}x)"
    )
    if device.type == "cpu":
        print(
            f"GEMM peak by CPU time / threads: fp32 {cpu_peaks['fp32'] / 1e9:.1f} GFLOP/s, "
            f"bf16 {cpu_peaks['bf16'] / 1e9:.1f} GFLOP/s"
        )

    info, _ = plan_dataset("euler_quadrants:demo")
    demo = PROFILES["demo"]
    ae_config = dataclasses.replace(demo.autoencoder, latent_channels=16)  # ÷20
    cases = []

    def autoencoder_case():
        model = AutoEncoder(**ae_config.model_kwargs(info)).to(device)
        x = torch.randn(ae_config.batch_size, *info.state_shape, device=device)

        def loss(m):
            x_hat, _ = m(x)
            return ae_config.reconstruction_loss(x_hat, x)

        return model, loss, autoencoder_cost(ae_config, info).train.flops

    grid = "x".join(str(n) for n in info.state_shape[1:])
    cases.append((f"autoencoder {ae_config.preset} {grid}, batch {ae_config.batch_size}", autoencoder_case))

    def emulator_case(config: EmulatorConfig, latent: tuple[int, ...]):
        def build():
            model = Objective(build_emulator(config, latent, info.theta_dim)).to(device)
            x = torch.randn(config.batch_size, latent[0], config.window, *latent[1:], device=device)
            theta = torch.randn(config.batch_size, info.theta_dim, device=device)
            mask = draw_masks(config.batch_size, config).to(device)
            return (
                model,
                lambda m: m(x, theta, mask),
                emulator_cost(config, latent, info.theta_dim).train.flops,
            )

        return build

    emulator = dataclasses.replace(demo.emulator, kind="diffusion")
    latent, _ = latent_geometry(ae_config, info)
    label = "x".join(str(n) for n in latent)
    cases.append(
        (f"latent diffusion demo {label}, batch {emulator.batch_size}", emulator_case(emulator, latent))
    )
    if args.wide:
        wide = dataclasses.replace(emulator, preset="paper", batch_size=1, architecture={})
        cases.append(("latent diffusion paper 64x8x8, batch 1", emulator_case(wide, (64, 8, 8))))

    threads = torch.get_num_threads()
    print(
        f"{'training step':<40} {'dtype':<5} {'GFLOP/step':>10} {'s/step':>8} {'GFLOP/s':>8} {'MFU':>6} "
        f"{'CPU s/step':>10} {'MFU (CPU time)':>14}"
    )
    for name, build in cases:
        model, loss_fn, flops = build()
        measured = {}
        for precision in ("fp32", "bf16"):
            seconds, cpu = time_steps(model, loss_fn, precision=precision, device=device, steps=args.steps)
            measured[precision] = seconds
            achieved = flops / seconds
            line = (
                f"{name:<40} {precision:<5} {flops / 1e9:>10.2f} {seconds:>8.3f} {achieved / 1e9:>8.1f} "
                f"{achieved / peaks[precision]:>6.1%}"
            )
            if device.type == "cpu":  # the step's FLOPs over its CPU time spread on the threads
                line += f" {cpu:>10.3f} {flops / (cpu / threads) / cpu_peaks[precision]:>14.1%}"
            print(line)
        chosen = resolve_precision(
            "auto", device.type, measured_speedup=lambda m=model: measure_bf16_speedup(m)
        )
        print(
            f"{'':<40} bf16/fp32 step time {measured['bf16'] / measured['fp32']:.2f}; "
            f"precision='auto' chooses {chosen}"
        )


if __name__ == "__main__":
    main()
