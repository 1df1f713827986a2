"""Time per generated state of the paper-size emulators (the paper's Table 1), on a GPU.

    python benchmarks/paper_inference.py [--device cuda] [--members 16] [--no-pixel-diffusion]

Untrained networks of the paper's sizes (inference cost does not depend on the weights) on
Euler's 5 × 512 × 512 states: the ``paper`` autoencoder (r = 32, 64 latent channels, so
64 × 16 × 16 latents), the latent denoiser and solver (``paper`` preset, 1024 wide), and
the pixel solver and denoiser (``paper_pixel``, 2048 wide, patch 16). One autoregressive
rollout of 26 states (window 5, context = overlap = 1), diffusion with 16 AB3 steps and
``members`` members in one batch, solvers with one member, in bf16 autocast on CUDA (the
precision ``"auto"`` chooses there). Time per state = wall time of the whole rollout,
decoding included, ÷ (members × states), as in :mod:`lolaray.evaluation`. Paper (A100):
pixel diffusion ≈ 12× latent diffusion, latent diffusion ≈ 6.5× latent solver.

On a CPU this takes hours (pixel diffusion alone ~20 PFLOP): use
``benchmarks/emulator_inference.py`` (demo sizes) there.
"""

from __future__ import annotations

import argparse
import time

import torch

from lolaray.evaluation.emulator_steps import diffusion_step, solver_step
from lolaray.evaluation.rollout import decode_in_chunks, ensemble_rollout
from lolaray.trainers.autoencoder import build_autoencoder
from lolaray.trainers.diffusion import ElucidatedDenoiser
from lolaray.trainers.hardware import autocast_context, resolve_precision
from lolaray.trainers.solver import NeuralSolver
from lolaray.trainers.transformer import build_backbone


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--length", type=int, default=26)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--no-pixel-diffusion", action="store_true", help="skip the costliest case")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    precision = resolve_precision("auto", device.type)
    autocast = autocast_context(precision, device.type)
    torch.manual_seed(0)
    R, theta = args.resolution, torch.randn(1, 5, device=device)
    autoencoder = build_autoencoder("paper", pixel_channels=5, latent_channels=64).to(device).eval()
    latent_shape, pixel_shape = (64, R // 32, R // 32), (5, R, R)

    def emulator(kind, shape, preset):
        backbone = build_backbone(preset, in_channels=shape[0])
        cls = ElucidatedDenoiser if kind == "diffusion" else NeuralSolver
        return cls(backbone, label_features=5).to(device).eval()

    cases = {
        "latent diffusion": ("diffusion", latent_shape, "paper", args.members, True),
        "latent solver": ("solver", latent_shape, "paper", 1, True),
        "pixel solver": ("solver", pixel_shape, "paper_pixel", 1, False),
    }
    if not args.no_pixel_diffusion:
        cases["pixel diffusion"] = ("diffusion", pixel_shape, "paper_pixel", args.members, False)
    print(f"device {device}, precision {precision}, {args.members} members, {args.length} states at {R}^2")
    times = {}
    for name, (kind, shape, preset, members, latent) in cases.items():
        model = emulator(kind, shape, preset)
        step = diffusion_step(model, steps=16) if kind == "diffusion" else solver_step(model)
        x0 = torch.randn(1, 5, 1, R, R, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        with torch.inference_mode(), autocast():
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
                context=1,
                overlap=1,
                length=args.length,
            )
            if latent:
                out = decode_in_chunks(autoencoder, out, chunk=4)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        times[name] = seconds / (members * args.length)
        print(
            f"{name:<17} {1000 * times[name]:9.2f} ms/state  ({members} member(s), {seconds:.1f} s for the rollout"
            + (
                f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB)"
                if device.type == "cuda"
                else ")"
            )
        )
        del model, step, out
    if "pixel diffusion" in times:
        print(
            f"pixel diffusion / latent diffusion: {times['pixel diffusion'] / times['latent diffusion']:6.1f}x (paper ~12x)"
        )
    print(
        f"latent diffusion / latent solver:   {times['latent diffusion'] / times['latent solver']:6.1f}x (paper ~6.5x)"
    )
    print(
        f"pixel solver / latent solver:       {times['pixel solver'] / times['latent solver']:6.1f}x (paper ~4.3x)"
    )


if __name__ == "__main__":
    main()
