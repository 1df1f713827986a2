r"""A dry run of the paper profile: every paper-size network built for real, one training step
and one sampling step at batch 1, with time and peak memory.

``--plan`` (:mod:`lolaray.sweeps.plan`) counts the study on the meta device; this module
proves on a real device (this CPU, or a GPU) that the networks of the paper profile
build, that their parameter counts are the paper's (method.md §2, §4, §10), and that one
step of each runs and what it costs:

- the training step is the stage's own objective (VMSE for autoencoders, the denoising
  loss, the solver loss), backward, clipping at 1 and the profile's optimizer (PSGD for
  the autoencoders, AdamW for the emulators), in the precision ``"auto"`` resolves to;
- the sampling step is one call of what inference calls: for the denoiser one step of
  the AB sampler (one network evaluation), for a solver one prediction, for an
  autoencoder the encoding and decoding of one state.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set
of a fresh process per network (:func:`run_isolated`), so that networks do not inherit
each other's peak. When the predicted memory of a step (weights, gradients, optimizer
state and saved activations from the meta-device count) exceeds the budget (24 GiB, or
less when this machine has less free), the grid is halved until it fits, and the
result says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import heavyball.utils
import torch

from lolaray.sweeps.plan import plan_dataset
from lolaray.sweeps.step_costs import autoencoder_cost, emulator_cost
from lolaray.trainers.autoencoder import AutoEncoder
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig
from lolaray.trainers.emulator_trainer import Objective
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.hardware import autocast_context, measure_bf16_speedup, resolve_precision
from lolaray.trainers.optim import build_optimizer
from lolaray.trainers.samplers import sample
from lolaray.trainers.step import TrainingStep
from lolaray.trainers.transformer import count_parameters

__all__ = [
    "PAPER_NETWORKS",
    "DryRunResult",
    "NetworkSpec",
    "StepDoesNotFit",
    "dry_run",
    "memory_budget",
    "predicted_step_bytes",
    "run_isolated",
]

GIB = 2**30
_DOES_NOT_FIT = 3  # exit status of ``--one`` when the step cannot fit the budget


@dataclass(frozen=True)
class NetworkSpec:
    """A paper-size network.

    :param kind: ``autoencoder``, ``diffusion`` or ``solver``.
    :param preset: its preset (:data:`~lolaray.trainers.autoencoder.AUTOENCODER_PRESETS` or
        :data:`~lolaray.trainers.transformer.EMULATOR_PRESETS`).
    :param dataset: the paper's dataset it is sized for (its fields, grid and θ).
    :param stated_parameters: the count method.md gives, to the digits it gives.
    :param latent: emulators in latent space: the latent state ``(C, *spatial)``; ``None``:
        the dataset's pixels (autoencoders, the pixel solver).
    :param optimizer: the paper profile's optimizer for it.
    """

    kind: str
    preset: str
    dataset: str
    stated_parameters: float
    latent: tuple[int, ...] | None = None
    optimizer: str = "adamw"


#: The paper profile's networks, with the parameter counts of method.md.
PAPER_NETWORKS: dict[str, NetworkSpec] = {
    "autoencoder (Euler 512^2, c64)": NetworkSpec(
        "autoencoder", "paper", "euler_multi_quadrants_openBC", 3.13e8, optimizer="psgd"
    ),
    "autoencoder small (Euler 512^2, c64)": NetworkSpec(
        "autoencoder", "paper_small", "euler_multi_quadrants_openBC", 7.9e7, optimizer="psgd"
    ),
    "autoencoder 3-D (TGC 64^3, c64)": NetworkSpec(
        "autoencoder", "paper_3d", "turbulence_gravity_cooling", 7.41e8, optimizer="psgd"
    ),
    "latent denoiser (Euler c64, 64x16x16)": NetworkSpec(
        "diffusion", "paper", "euler_multi_quadrants_openBC", 2.23e8, latent=(64, 16, 16)
    ),
    "latent solver (Euler c64, 64x16x16)": NetworkSpec(
        "solver", "paper", "euler_multi_quadrants_openBC", 2.2e8, latent=(64, 16, 16)
    ),
    "pixel solver (Euler 5x512^2, patch 16)": NetworkSpec(
        "solver", "paper_pixel", "euler_multi_quadrants_openBC", 8.6e8
    ),
}


@dataclass(frozen=True)
class DryRunResult:
    """What one network's dry run measured (bytes, seconds)."""

    name: str
    parameters: int
    stated_parameters: float
    grid: tuple[int, ...]
    full_grid: tuple[int, ...]
    precision: str
    device: str
    loss: float
    train_seconds: float
    sample_seconds: float
    train_cpu_seconds: float
    sample_cpu_seconds: float
    build_bytes: int
    sample_peak_bytes: int
    train_peak_bytes: int
    predicted_bytes: int

    @property
    def reduced(self) -> bool:
        return self.grid != self.full_grid

    def line(self) -> str:
        grid = "x".join(map(str, self.grid)) + (" (reduced)" if self.reduced else "")
        return (
            f"{self.name:<40} {self.parameters:>12,} {self.stated_parameters:>8.3g} {grid:<18} {self.precision:<5} "
            f"{self.train_seconds:>8.1f} {self.train_cpu_seconds:>7.1f} {self.train_peak_bytes / GIB:>8.2f} "
            f"{self.sample_seconds:>8.2f} {self.sample_cpu_seconds:>7.2f} "
            f"{self.sample_peak_bytes / GIB:>8.2f} {self.predicted_bytes / GIB:>8.2f}"
        )


HEADER = (
    f"{'network':<40} {'parameters':>12} {'paper':>8} {'grid':<18} {'dtype':<5} {'train s':>8} {'CPU s':>7} {'peak GiB':>8} "
    f"{'sample s':>8} {'CPU s':>7} {'peak GiB':>8} {'pred GiB':>8}"
)


def _shapes(spec: NetworkSpec, grid: tuple[int, ...] | None):
    """``(config, state shape (C, *spatial), θ size, full spatial grid)`` of ``spec``."""
    info, _ = plan_dataset(spec.dataset)
    full = tuple(info.resolution) if spec.latent is None else tuple(spec.latent[1:])
    grid = full if grid is None else tuple(grid)
    if spec.kind == "autoencoder":
        info = dataclasses.replace(info, resolution=grid)
        config = AutoencoderConfig(preset=spec.preset, latent_channels=64, batch_size=1)
        return config, info, info.state_shape, full
    config = EmulatorConfig(
        kind=spec.kind, space="latent" if spec.latent else "pixel", preset=spec.preset, batch_size=1
    )
    channels = spec.latent[0] if spec.latent else info.n_fields
    return config, info, (channels, *grid), full


class StepDoesNotFit(MemoryError):
    """Even at the smallest grid tried, the predicted step exceeds the memory budget.

    :param predicted, budget: bytes.
    """

    def __init__(self, message: str, *, predicted: int, budget: int):
        super().__init__(message)
        self.predicted, self.budget = predicted, budget


# fp32 weights and gradients (8 bytes a parameter) plus the optimizer's state: AdamW's two
# moments; heavyball's PSGD keeps momentum, the delayed update and cached preconditioner
# products (the 7.4e8-parameter 3-D autoencoder reached 15 GB resident at a 32^3 grid).
_BYTES_PER_PARAMETER = {"adamw": 16, "adam": 16, "psgd": 24}


def predicted_step_bytes(spec: NetworkSpec, grid: tuple[int, ...] | None = None) -> int:
    """Memory of one training step at batch 1, from the meta-device count: weights, gradients
    and optimizer state (16 bytes a parameter with AdamW, 24 with PSGD), the saved activations
    without the attention scores (fused attention kernels keep none), half as much again
    for the backward pass's transients, and 1 GiB for the process."""
    config, info, shape, _ = _shapes(spec, grid)
    if spec.kind == "autoencoder":
        cost = autoencoder_cost(config, info)
    else:
        cost = emulator_cost(config, shape, info.theta_dim)
    activations = cost.train.activation_bytes - cost.train.attention_bytes
    return int(_BYTES_PER_PARAMETER[spec.optimizer] * cost.parameters + 1.5 * activations + GIB)


def memory_budget(device: str, *, nominal: int = 24 * GIB, reserve: int = 2 * GIB) -> int:
    """The memory a dry-run step may take: ``nominal`` (24 GiB), or what this machine has
    free minus ``reserve`` when that is less (CPU: ``MemAvailable``; CUDA: free device memory)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return min(nominal, free - reserve)
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return nominal
    return min(nominal, available - reserve)


def _fitting_grid(spec: NetworkSpec, budget: int) -> tuple[tuple[int, ...], int]:
    """The full grid, or the grid halved along every axis until the predicted step fits."""
    _, _, _, grid = _shapes(spec, None)
    predicted = predicted_step_bytes(spec, grid)
    while predicted > budget and min(grid) > 32:
        grid = tuple(size // 2 for size in grid)
        predicted = predicted_step_bytes(spec, grid)
    return grid, predicted


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _build(spec: NetworkSpec, grid: tuple[int, ...], device: torch.device):
    """The network on ``device``, its training loss and its sampling step (closures)."""
    config, info, shape, _ = _shapes(spec, grid)
    generator = torch.Generator().manual_seed(0)
    if spec.kind == "autoencoder":
        model = AutoEncoder(**config.model_kwargs(info)).to(device)
        x = torch.randn(1, *shape, generator=generator).to(device)

        def train_loss(m):
            x_hat, _ = m(x)
            return config.reconstruction_loss(x_hat, x)

        def sample_step(m):
            return m.decode(m.encode(x))

        return model, model, train_loss, sample_step
    model = Objective(build_emulator(config, shape, info.theta_dim)).to(device)
    window = (1, shape[0], config.window, *shape[1:])
    x = torch.randn(*window, generator=generator).to(device)
    theta = torch.randn(1, info.theta_dim, generator=generator).to(device)
    mask = (torch.arange(config.window) < 1).expand(1, -1).to(device)  # context of one state

    def train_loss(m):
        return m(x, theta, mask)

    emulator = model.emulator
    if spec.kind == "diffusion":

        def sample_step(m):
            denoise = emulator.bind(theta, mask, x)
            return sample(
                denoise,
                emulator.schedule,
                steps=1,
                noise=torch.randn_like(x),
                mask=mask,
                context=x,
                device=device,
            )

    else:

        def sample_step(m):
            return emulator.predict(x, mask, theta)

    return model, emulator, train_loss, sample_step


def _cpu_seconds() -> float:
    # The process's CPU time: on a shared machine the wall time also counts the others' work.
    times = os.times()
    return times.user + times.system


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dry_run(
    name: str,
    *,
    device: str = "cpu",
    precision: str = "auto",
    budget: int | None = None,
    grid: tuple[int, ...] | None = None,
) -> DryRunResult:
    """Build ``PAPER_NETWORKS[name]`` on ``device`` and take one sampling and one training step.

    :param precision: ``fp32``, ``bf16`` or ``auto`` (:func:`~lolaray.trainers.hardware.resolve_precision`).
    :param budget: bytes a step may take (default :func:`memory_budget`); the grid is
        reduced until the predicted step fits.
    :param grid: force a spatial grid (default: the paper's, or the largest that fits).
    """

    spec = PAPER_NETWORKS[name]
    target = torch.device(device)
    torch.manual_seed(0)
    _, _, _, full = _shapes(spec, None)
    if grid is None:
        budget = memory_budget(device) if budget is None else budget
        grid, predicted = _fitting_grid(spec, budget)
        if predicted > budget:
            raise StepDoesNotFit(
                f"{name}: a training step needs ~{predicted / GIB:.1f} GiB even at a {'x'.join(map(str, grid))} grid, "
                f"more than the {budget / GIB:.1f} GiB budget (24 GiB, or this machine's free memory less 2 GiB)",
                predicted=predicted,
                budget=budget,
            )
    else:
        predicted = predicted_step_bytes(spec, grid)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)

    def peak() -> int:
        return torch.cuda.max_memory_allocated(target) if target.type == "cuda" else _peak_rss()

    model, network, train_loss, sample_step = _build(spec, grid, target)
    parameters = count_parameters(network) if spec.kind == "autoencoder" else count_parameters(model.emulator)
    build_bytes = peak()
    chosen = resolve_precision(precision, target.type, measured_speedup=lambda: measure_bf16_speedup(model))
    autocast = autocast_context(chosen, target.type)

    model.eval()
    _synchronize(target)
    began, cpu = time.perf_counter(), _cpu_seconds()
    with torch.inference_mode(), autocast():
        sample_step(model)
    _synchronize(target)
    sample_seconds, sample_cpu = time.perf_counter() - began, _cpu_seconds() - cpu
    sample_peak = peak()

    heavyball.utils.compile_mode = None if target.type != "cuda" else "default"
    optimizer = build_optimizer(model.parameters(), name=spec.optimizer, lr=1e-5)
    model.train()
    _synchronize(target)
    train_step = TrainingStep(
        model, optimizer, loss=lambda m, _batch, _device: (train_loss(m), 1), device=target, autocast=autocast
    )
    began, cpu = time.perf_counter(), _cpu_seconds()
    outcome = train_step(None)
    _synchronize(target)
    train_seconds, train_cpu = time.perf_counter() - began, _cpu_seconds() - cpu
    return DryRunResult(
        name=name,
        parameters=parameters,
        stated_parameters=spec.stated_parameters,
        grid=tuple(grid),
        full_grid=tuple(full),
        precision=chosen,
        device=str(target),
        loss=outcome.loss,
        train_seconds=train_seconds,
        sample_seconds=sample_seconds,
        train_cpu_seconds=train_cpu,
        sample_cpu_seconds=sample_cpu,
        build_bytes=build_bytes,
        sample_peak_bytes=sample_peak,
        train_peak_bytes=peak(),
        predicted_bytes=predicted,
    )


def run_isolated(
    name: str, *, device: str = "cpu", precision: str = "auto", timeout: float = 3600
) -> DryRunResult:
    """:func:`dry_run` in a fresh Python process (so its peak memory is its own)."""
    command = [sys.executable, "-m", "lolaray.sweeps.dry_run", "--one", name, "--device", device]
    command += ["--precision", precision, "--json"]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )
    if done.returncode == _DOES_NOT_FIT:
        fields = json.loads(done.stdout.strip().splitlines()[-1])
        raise StepDoesNotFit(fields["not_run"], predicted=fields["predicted"], budget=fields["budget"])
    if done.returncode != 0:
        raise RuntimeError(f"dry run of {name!r} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    fields["grid"], fields["full_grid"] = tuple(fields["grid"]), tuple(fields["full_grid"])
    return DryRunResult(**fields)


def within_stated_digits(count: int, stated: float) -> bool:
    """Whether ``count`` rounds to ``stated`` at the digits it is given with (3.13e8: ±5e5)."""
    mantissa = f"{stated:e}".split("e")[0].rstrip("0")
    digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return abs(count - stated) <= 0.5 * 10 ** (math.floor(math.log10(stated)) - digits)


def main(argv=None, *, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", default=None, help="one network (a key of PAPER_NETWORKS), in this process")
    parser.add_argument("--networks", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--json", action="store_true", help="--one: print the result as JSON")
    parser.add_argument(
        "--grid",
        type=int,
        nargs="+",
        default=None,
        help="--one: force this spatial grid (printed as reduced)",
    )
    args = parser.parse_args(argv)
    if args.one is not None:
        grid = None if args.grid is None else tuple(args.grid)
        try:
            result = dry_run(args.one, device=args.device, precision=args.precision, grid=grid)
        except StepDoesNotFit as error:
            out(json.dumps({"not_run": str(error), "predicted": error.predicted, "budget": error.budget}))
            return _DOES_NOT_FIT
        out(json.dumps(dataclasses.asdict(result)) if args.json else result.line())
        return 0
    names = args.networks or list(PAPER_NETWORKS)
    out(f"Dry run of the paper profile on {args.device} ({torch.get_num_threads()} threads), batch 1:")
    out(HEADER)
    failed = 0
    for name in names:
        try:
            result = run_isolated(name, device=args.device, precision=args.precision)
        except StepDoesNotFit as error:
            out(f"{name:<40} not run: {error}")
            continue
        matches = within_stated_digits(result.parameters, result.stated_parameters)
        failed += not matches
        out(result.line() + ("" if matches else "   <-- parameter count differs from method.md"))
    out(
        "train s / peak: one training step (forward, backward, clip, optimizer); sample s / peak: one sampling step; "
        "CPU s: the process's CPU time (wall time on a shared machine counts others' work too); "
        "pred: predicted step memory; peaks are the process's resident set on CPU."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
