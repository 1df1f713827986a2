"""Throughput of ``lolaray.platform.euler`` next to pyro-hydro's ``compressible`` solver.

Both codes run 2-D quadrant (four-state Riemann) problems on the same grid to the same end time
in this one process. Throughput is measured in cell updates per second::

    throughput = (grid cells) x (time steps) / (wall-clock seconds)

one cell update being one cell advanced by one time step. For the batched solver the steps of
every trajectory count (each trajectory takes its own CFL steps); ghost cells never count.
One-off costs (pyro's numba JIT, torch.compile) are excluded by a warm-up run and reported
separately.

Usage::

    python benchmarks/euler_throughput.py [--batch 32] [--resolution 64] [--t-end 1.5]
                                          [--threads N] [--compile]

pyro is optional (``pip install pyro-hydro``); without it the pyro part is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import torch

from lolaray.platform import euler

WELL_GAMMAS = (1.13, 1.22, 1.3, 1.33, 1.365, 1.4, 1.404, 1.453, 1.597, 1.76)


def random_quadrant_problems(batch: int, n: int, seed: int = 0):
    """Random four-quadrant states (cut in [0.3, 0.7]², rho, p in [0.1, 2], u, v in [-1, 1]), The Well's gammas."""
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    cut = 0.3 + 0.4 * torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    quadrant = (
        (centres >= cut[:, :1]).long()[:, :, None] * 2 + (centres >= cut[:, 1:]).long()[:, None, :]
    ).flatten(1)

    def field(low, high):
        values = low + (high - low) * torch.rand(batch, 4, generator=generator, dtype=torch.float64)
        return torch.gather(values, 1, quadrant).view(batch, n, n).float()

    rho, u, v, p = field(0.1, 2.0), field(-1.0, 1.0), field(-1.0, 1.0), field(0.1, 2.0)
    gamma = torch.tensor(WELL_GAMMAS)[torch.arange(batch) % len(WELL_GAMMAS)]
    return rho, u, v, p, gamma


def run_lolaray(batch: int, n: int, t_end: float, *, compile: bool) -> dict:
    """Time one batched run; returns cell updates, wall time and step statistics."""
    rho, u, v, p, gamma = random_quadrant_problems(batch, n)
    snapshots = torch.linspace(0.0, t_end, 101).tolist()  # The Well's 101 states
    kwargs = {"periodic": False, "dx": 1.0 / n, "dy": 1.0 / n, "compile": compile}
    # Warm-up (and the one-off compilation when compiling) on the same shapes, a short time.
    start = time.perf_counter()
    euler.simulate(rho, u, v, p, gamma, snapshot_times=snapshots[:3], **kwargs)
    warm_up = time.perf_counter() - start

    stats = {}
    start = time.perf_counter()
    euler.simulate(rho, u, v, p, gamma, snapshot_times=snapshots, stats=stats, **kwargs)
    wall = time.perf_counter() - start
    steps = stats["steps"].double()
    return {
        "cell_updates": n * n * steps.sum().item(),
        "wall": wall,
        "warm_up": warm_up,
        "steps": (int(steps.min()), steps.mean().item(), int(steps.max())),
    }


def run_pyro(n: int, t_end: float) -> dict | None:
    """Time pyro's compressible solver on its "quad" problem; ``None`` if pyro is not installed."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # pyro calls plt.ion(); no display here
    try:
        from pyro.pyro_sim import Pyro
    except ImportError:
        return None

    inputs = {
        "mesh.nx": n,
        "mesh.ny": n,
        "driver.tmax": t_end,
        "driver.max_steps": 10**7,
        "driver.verbose": 0,
        "io.do_io": 0,
        "vis.dovis": 0,
    }

    def fresh_simulation():
        simulation = Pyro("compressible")
        simulation.initialize_problem("quad", inputs_dict=inputs)
        return simulation

    # pyro writes an ``inputs.auto`` file into the working directory: keep it out of the repository.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        start = time.perf_counter()
        warm = fresh_simulation()
        for _ in range(3):  # numba compiles its kernels on the first steps
            warm.single_step()
        warm_up = time.perf_counter() - start

        simulation = fresh_simulation()
        start = time.perf_counter()
        while not simulation.sim.finished():
            simulation.single_step()
        wall = time.perf_counter() - start
    steps = simulation.sim.n
    return {"cell_updates": n * n * steps, "wall": wall, "warm_up": warm_up, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="trajectories in the lolaray batch")
    parser.add_argument("--resolution", type=int, default=64, help="cells per axis")
    parser.add_argument("--t-end", type=float, default=1.5, help="end time of every run")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--compile", action="store_true", help="also time simulate(compile=True)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n, t_end = args.resolution, args.t_end

    print("throughput = grid cells x time steps / wall-clock seconds (cell updates per second)")
    print(f"grid {n}x{n}, t = 0 -> {t_end}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    variants = [("lolaray eager", False)] + ([("lolaray compiled", True)] if args.compile else [])
    results = {}
    for label, compile in variants:
        result = run_lolaray(args.batch, n, t_end, compile=compile)
        results[label] = result
        low, mean, high = result["steps"]
        print(
            f"{label:17s}: {result['cell_updates'] / result['wall']:.3e} cell updates/s "
            f"({args.batch} trajectories, MUSCL-Hancock+HLLC, cfl 0.4, steps {low}/{mean:.0f}/{high} "
            f"min/mean/max, wall {result['wall']:.2f} s, warm-up {result['warm_up']:.1f} s)"
        )

    pyro = run_pyro(n, t_end)
    if pyro is None:
        print("pyro          : skipped, pyro-hydro is not installed (pip install pyro-hydro)")
        return
    pyro_rate = pyro["cell_updates"] / pyro["wall"]
    print(
        f"{'pyro compressible':17s}: {pyro_rate:.3e} cell updates/s "
        f"(1 problem 'quad', unsplit CTU PLM+HLLC, cfl 0.8, {pyro['steps']} steps, "
        f"wall {pyro['wall']:.2f} s, numba warm-up {pyro['warm_up']:.1f} s)"
    )
    for label, result in results.items():
        ratio = result["cell_updates"] / result["wall"] / pyro_rate
        per_trajectory = result["wall"] / args.batch
        print(
            f"ratio {label} / pyro: {ratio:.1f}x cell updates/s; wall per trajectory to t={t_end}: "
            f"{per_trajectory:.2f} s vs pyro {pyro['wall']:.2f} s"
        )


if __name__ == "__main__":
    main()
