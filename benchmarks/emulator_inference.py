"""Time per generated state of the four emulators (the paper's Table 1, in miniature).

    python benchmarks/emulator_inference.py [--resolution 64] [--members 4]

Untrained networks of the same width and depth (inference cost does not depend on the
weights), on Euler-like states ``5 × R × R``: the latent space of an r = 8 autoencoder
(16 × R/8 × R/8, patch 1) and pixels with patch 4 (so pixel windows have 4× the tokens of
latent ones, as the paper's 512² Euler with patch 16 vs 16² latents). One autoregressive
rollout of 26 states (window 5, context = overlap = 1), diffusion with 16 AB3 steps and
``members`` members batched, solvers with one member.

Time per state, measured as a benchmark should be: one warm-up rollout per emulator first
(lazy initialisation, kernel selection and allocator growth are not inference), the
device synchronized before the clock starts and before it stops, the median of
``--repeats`` rollouts, divided by members × *generated* states (the context state is
given, not generated); decoding is included. The sampler's step count is printed beside
it (diffusion cost grows linearly with it). Paper (A100, 512²): pixel diffusion ≈ 12×
latent diffusion; latent diffusion ≈ 6.5× latent solver.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lolaray.evaluation.emulator_steps import diffusion_step, solver_step
from lolaray.evaluation.rollout import decode_in_chunks, ensemble_rollout
from lolaray.trainers.autoencoder import build_autoencoder
from lolaray.trainers.diffusion import ElucidatedDenoiser
from lolaray.trainers.solver import NeuralSolver
from lolaray.trainers.transformer import build_backbone


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    run: Callable[[], object], *, device: torch.device, repeats: int, warmup: int = 1
) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``run`` after ``warmup`` untimed ones, the device
    synchronized on both sides of each timed call (CUDA work is asynchronous)."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        _synchronize(device)
        began = time.perf_counter()
        run()
        _synchronize(device)
        seconds.append(time.perf_counter() - began)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--length", type=int, default=26)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16, help="diffusion sampler steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per emulator (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    context = 1
    generated = args.length - context

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    R, theta = args.resolution, torch.randn(1, 5)
    theta = theta.to(device)
    autoencoder = build_autoencoder("demo", pixel_channels=5, latent_channels=16).eval().to(device)
    latent_shape, pixel_shape = (16, R // 8, R // 8), (5, R, R)

    def emulator(kind, shape, patch):
        backbone = build_backbone(args.preset, in_channels=shape[0], patch_size=patch)
        cls = ElucidatedDenoiser if kind == "diffusion" else NeuralSolver
        return cls(backbone, label_features=5).eval().to(device)

    cases = {
        "latent diffusion": ("diffusion", latent_shape, 1, args.members, True),
        "latent solver": ("solver", latent_shape, 1, 1, True),
        "pixel solver": ("solver", pixel_shape, 4, 1, False),
        "pixel diffusion": ("diffusion", pixel_shape, 4, args.members, False),
    }
    times = {}
    print(
        f"device {device}, {generated} generated states per rollout, median of {args.repeats}, warm-up excluded"
    )
    for name, (kind, shape, patch, members, latent) in cases.items():
        model = emulator(kind, shape, patch)
        step = diffusion_step(model, steps=args.steps) if kind == "diffusion" else solver_step(model)
        x0 = torch.randn(1, 5, 1, R, R, device=device)

        def run(step=step, members=members, latent=latent, x0=x0):
            with torch.inference_mode():
                initial = autoencoder.encode(x0[:, :, 0]).unsqueeze(2) if latent else x0
                out = ensemble_rollout(
                    step,
                    initial,
                    theta,
                    members=members,
                    seed=0,
                    trajectory=0,
                    start=0,
                    window=5,
                    context=context,
                    overlap=context,
                    length=args.length,
                )
                if latent:
                    out = decode_in_chunks(autoencoder, out, chunk=4)
            assert out.shape == (members, 5, args.length, R, R)

        seconds = statistics.median(time_call(run, device=device, repeats=args.repeats))
        times[name] = seconds / (members * generated)
        tokens = 5 * (shape[1] // patch) * (shape[2] // patch)
        steps = f"{args.steps} sampler steps" if kind == "diffusion" else "1 network call"
        print(
            f"{name:<17} {1000 * times[name]:9.2f} ms/state  per member x state, {steps}, "
            f"{members} member(s), {tokens} tokens/window, {seconds:.2f} s per rollout"
        )
    print(
        f"pixel diffusion / latent diffusion: {times['pixel diffusion'] / times['latent diffusion']:6.1f}x  "
        "(paper ~12x)"
    )
    print(
        f"latent diffusion / latent solver:   {times['latent diffusion'] / times['latent solver']:6.1f}x  "
        "(paper ~6.5x)"
    )
    print(
        f"pixel solver / latent solver:       {times['pixel solver'] / times['latent solver']:6.1f}x  "
        "(paper ~4.3x)"
    )


if __name__ == "__main__":
    main()
