"""Tests of the batched 2-D Euler solver ``lolaray.platform.euler``."""

import math

import pytest
import torch

from lolaray.platform import euler

# The adiabatic indices of The Well's euler_multi_quadrants sets.
WELL_GAMMAS = (1.13, 1.22, 1.3, 1.33, 1.365, 1.4, 1.404, 1.453, 1.597, 1.76)
# Toro's exact star state of the Sod problem (Table 4.3, test 1).
SOD_STAR = {"p": 0.30313, "u": 0.92745, "rho_left": 0.42632, "rho_right": 0.26557}
SNAPSHOTS_TO_1_5 = [0.015 * i for i in range(101)]


def quadrant_problem(batch: int, n: int, *, seed: int, dtype=torch.float32):
    """Random four-quadrant states: cut point in [0.3, 0.7]², rho, p in [0.1, 2], u, v in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    cut = 0.3 + 0.4 * torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    right = (centres[None, :] >= cut[:, :1]).long()
    top = (centres[None, :] >= cut[:, 1:]).long()
    quadrant = (right[:, :, None] * 2 + top[:, None, :]).flatten(1)  # (B, n * n) in 0..3

    def spread(values):
        return torch.gather(values, 1, quadrant).view(batch, n, n).to(dtype)

    def draw(low, high):
        return low + (high - low) * torch.rand(batch, 4, generator=generator, dtype=torch.float64)

    return spread(draw(0.1, 2.0)), spread(draw(-1, 1)), spread(draw(-1, 1)), spread(draw(0.1, 2.0))


def extreme_quadrant_problem(batch: int, n: int, *, seed: int, dtype=torch.float32):
    """Quadrants split at the centre with speeds of exactly ±1 and rho, p skewed towards 0.1.

    The MC reconstruction of these needs the first-order fallback in a few cells (it fails without it).
    """
    generator = torch.Generator().manual_seed(seed)
    high = ((torch.arange(n) + 0.5) / n >= 0.5).long()
    quadrant = (high[:, None] * 2 + high[None, :]).flatten()
    skewed = lambda: 0.1 + 1.9 * torch.rand(batch, 4, generator=generator) ** 3
    unit = lambda: torch.sign(torch.randn(batch, 4, generator=generator))
    values = (skewed(), unit(), unit(), skewed())
    return tuple(value[:, quadrant].view(batch, n, n).to(dtype) for value in values)


def outward_vacuum_problem(batch: int, n: int, dtype=torch.float32):
    """Thin gas (rho = p = 0.1) in all quadrants flying apart at speed 1: a near-vacuum centre."""
    centres = (torch.arange(n, dtype=dtype) + 0.5) / n
    u = torch.where(centres >= 0.5, 1.0, -1.0).to(dtype)[:, None].expand(n, n)
    rho = torch.full((batch, n, n), 0.1, dtype=dtype)
    return rho, u.expand(batch, n, n).clone(), u.T.expand(batch, n, n).clone(), rho.clone()


def sod_problem(n: int, *, along: str, dtype=torch.float32):
    """Sod's tube with the discontinuity at 0.5 along ``along`` ("x" or "y") and 4 cells across."""
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    left = (centres < 0.5)[:, None].expand(n, 4)
    rho = torch.where(left, 1.0, 0.125).to(dtype)
    p = torch.where(left, 1.0, 0.1).to(dtype)
    if along == "y":
        rho, p = rho.T, p.T
    zero = torch.zeros_like(rho)
    return rho[None].contiguous(), zero[None], zero[None].clone(), p[None].contiguous()


def run_sod(along: str, n: int = 400):
    rho, u, v, p = sod_problem(n, along=along)
    out = euler.simulate(
        rho, u, v, p, torch.tensor([1.4]), periodic=False, snapshot_times=[0.0, 0.2], dx=1 / n, dy=1 / n
    )
    return {key: value[0, -1] for key, value in out.items()}


def plateau_means(final: dict, along: str, n: int = 400) -> dict:
    """Means over the middle of the two star plateaus of a Sod solution at t = 0.2."""
    # At t = 0.2: rarefaction head 0.263, tail 0.486, contact 0.686, shock 0.850.
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    fields = {key: value if along == "x" else value.T for key, value in final.items()}
    momentum = fields["momentum_x"] if along == "x" else fields["momentum_y"]
    velocity = momentum / fields["density"]

    def mean(field, low, high):
        return field[(centres > low) & (centres < high)].double().mean().item()

    return {
        "p": mean(fields["pressure"], 0.53, 0.82),
        "u": mean(velocity, 0.53, 0.82),
        "rho_left": mean(fields["density"], 0.53, 0.65),
        "rho_right": mean(fields["density"], 0.72, 0.82),
        "transverse_momentum": (fields["momentum_y"] if along == "x" else fields["momentum_x"]).abs().max(),
        "far_left_density": mean(fields["density"], 0.0, 0.2),
        "far_right_density": mean(fields["density"], 0.9, 1.0),
    }


def test_sod_exact_star_state_matches_toro():
    p_star, u_star, rho_left, rho_right = euler.sod_exact_star_state(1.0, 0.0, 1.0, 0.125, 0.0, 0.1, 1.4)
    assert p_star == pytest.approx(SOD_STAR["p"], abs=1e-5)
    assert u_star == pytest.approx(SOD_STAR["u"], abs=1e-5)
    assert rho_left == pytest.approx(SOD_STAR["rho_left"], abs=1e-5)
    assert rho_right == pytest.approx(SOD_STAR["rho_right"], abs=1e-5)
    # Mirror symmetry of the exact solution: swapping sides flips the velocity.
    p_mirror, u_mirror, rho_l_mirror, rho_r_mirror = euler.sod_exact_star_state(
        0.125, 0.0, 0.1, 1.0, 0.0, 1.0, 1.4
    )
    assert (p_mirror, u_mirror, rho_l_mirror, rho_r_mirror) == pytest.approx(
        (p_star, -u_star, rho_right, rho_left), rel=1e-10
    )


@pytest.fixture(scope="module")
def sod_runs():
    return {along: run_sod(along) for along in ("x", "y")}


@pytest.mark.parametrize("along", ["x", "y"])
def test_sod_plateaus_match_exact_star_state(sod_runs, along):
    exact = dict(
        zip(("p", "u", "rho_left", "rho_right"), euler.sod_exact_star_state(1, 0, 1, 0.125, 0, 0.1, 1.4))
    )
    measured = plateau_means(sod_runs[along], along)
    for key, value in exact.items():
        assert measured[key] == pytest.approx(value, rel=0.02), key
        assert measured[key] == pytest.approx(SOD_STAR[key], rel=0.02), key
    assert measured["transverse_momentum"] < 1e-6
    assert measured["far_left_density"] == pytest.approx(1.0, abs=1e-5)
    assert measured["far_right_density"] == pytest.approx(0.125, abs=1e-5)


def test_sod_along_y_is_the_transpose_of_sod_along_x(sod_runs):
    along_x, along_y = sod_runs["x"], sod_runs["y"]
    for key in ("density", "energy", "pressure"):
        torch.testing.assert_close(along_y[key], along_x[key].T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(along_y["momentum_y"], along_x["momentum_x"].T, rtol=1e-6, atol=1e-6)


def test_periodic_run_conserves_mass_momentum_and_energy():
    rho, u, v, p = quadrant_problem(3, 32, seed=1, dtype=torch.float64)
    steps = []
    out = euler.simulate(
        rho,
        u,
        v,
        p,
        torch.tensor([1.13, 1.4, 1.76], dtype=torch.float64),
        periodic=True,
        snapshot_times=[0.0, 0.25, 0.5, 0.75, 1.0],
        dx=1 / 32,
        dy=1 / 32,
        progress=steps.append,
    )
    assert len(steps) > 200
    for key in ("density", "momentum_x", "momentum_y", "energy"):
        assert out[key].dtype == torch.float64
        totals = out[key].sum(dim=(2, 3))  # (B, T)
        scale = out[key][:, 0].abs().sum(dim=(1, 2), keepdim=True).squeeze(-1)
        drift = ((totals - totals[:, :1]) / scale).abs().max().item()
        assert drift < 1e-12, f"{key} drifts by {drift:.2e}"
    # The run must have moved: a silent no-op would also conserve everything.
    assert (out["density"][:, -1] - out["density"][:, 0]).abs().max() > 0.1


@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "open"])
def test_strong_quadrant_problems_stay_positive_to_t_1_5(periodic):
    n = 32
    problems = (
        quadrant_problem(10, n, seed=7),
        extreme_quadrant_problem(10, n, seed=5),
        outward_vacuum_problem(10, n),
    )
    rho, u, v, p = (torch.cat(parts) for parts in zip(*problems, strict=True))
    gamma = torch.tensor(WELL_GAMMAS * 3)
    out = euler.simulate(
        rho, u, v, p, gamma, periodic=periodic, snapshot_times=SNAPSHOTS_TO_1_5, dx=1 / n, dy=1 / n
    )
    assert set(out) == set(euler.FIELDS)
    for key, field in out.items():
        assert field.shape == (30, 101, n, n), key
        assert field.dtype == torch.float32, key
        assert torch.isfinite(field).all(), key
    assert (out["density"] > 0).all()
    assert (out["pressure"] > 0).all()
    torch.testing.assert_close(out["density"][:, 0], rho)
    torch.testing.assert_close(out["pressure"][:, 0], p)
    # Energy is consistent with the stored pressure and momenta.
    kinetic = 0.5 * (out["momentum_x"] ** 2 + out["momentum_y"] ** 2) / out["density"]
    energy = out["pressure"] / (gamma.view(-1, 1, 1, 1) - 1) + kinetic
    torch.testing.assert_close(out["energy"], energy, rtol=1e-4, atol=1e-5)
    # Still evolving at the end (the vacuum problems and random ones are not at rest).
    assert (out["density"][:, -1] - out["density"][:, -2]).abs().amax(dim=(1, 2)).min() > 0


def advected_wave_error(n: int, limiter: str = "mc") -> float:
    """Mean |error| of a density wave carried by a uniform flow (u, v) = (1, 0.5) to t = 0.5."""
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x, y = torch.meshgrid(centres, centres, indexing="ij")
    rho = 1 + 0.2 * torch.sin(2 * math.pi * (x + y))
    ones = torch.ones_like(rho)[None]
    out = euler.simulate(
        rho[None].float(), ones.float(), 0.5 * ones.float(), ones.float(), torch.tensor([1.4]),
        periodic=True, snapshot_times=[0.0, 0.2, 0.5], dx=1 / n, dy=1 / n, limiter=limiter,
    )  # fmt: skip
    exact = 1 + 0.2 * torch.sin(2 * math.pi * (x - 0.5 + y - 0.25))
    return (out["density"][0, -1].double() - exact).abs().mean().item()


def test_smooth_advection_converges_at_second_order():
    coarse, fine = advected_wave_error(32), advected_wave_error(64)
    assert fine < 1e-3
    assert math.log2(coarse / fine) > 1.7, (coarse, fine)
    # minmod clips harder at the extrema: still far better than first order, worse than MC.
    minmod = advected_wave_error(32, limiter="minmod")
    assert coarse < minmod < 2 * advected_wave_error(16)


def diagonal_symmetric_problem(n: int):
    """Quadrants with state(x, y) = state(y, x) under u <-> v: A (low-left) and D (top-right) on the
    diagonal have u = v; B (x high, y low) and C (its mirror) swap their velocities."""
    values = torch.tensor(
        [  # rho,  u,    v,    p  for quadrants (left, bottom), (left, top), (right, bottom), (right, top)
            [1.5, 0.3, 0.3, 1.5],
            [0.5, 0.8, -0.4, 0.3],
            [0.5, -0.4, 0.8, 0.3],
            [0.14, -0.2, -0.2, 0.1],
        ]
    )
    centres = (torch.arange(n) + 0.5) / n
    high = (centres >= 0.4).long()
    quadrant = high[:, None] * 2 + high[None, :]
    rho, u, v, p = (values[quadrant, k][None] for k in range(4))
    return rho, u, v, p


@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "open"])
def test_diagonally_symmetric_problem_stays_symmetric(periodic):
    n = 40
    rho, u, v, p = diagonal_symmetric_problem(n)
    torch.testing.assert_close(rho, rho.transpose(1, 2))
    torch.testing.assert_close(u, v.transpose(1, 2))
    out = euler.simulate(
        rho,
        u,
        v,
        p,
        torch.tensor([1.4]),
        periodic=periodic,
        snapshot_times=[0.0, 0.2, 0.4],
        dx=1 / n,
        dy=1 / n,
    )
    final = {key: value[0, -1] for key, value in out.items()}
    for key in ("density", "energy", "pressure"):
        torch.testing.assert_close(final[key], final[key].T, rtol=0, atol=1e-5)
    torch.testing.assert_close(final["momentum_x"], final["momentum_y"].T, rtol=0, atol=1e-5)
    assert (final["density"] - rho[0]).abs().max() > 0.1


def test_trajectories_are_independent_of_their_batch():
    """Each trajectory takes its own time steps: alone or in a batch it gives the same result."""
    rho, u, v, p = quadrant_problem(3, 24, seed=3)
    gamma = torch.tensor([1.13, 1.597, 1.76])
    kwargs = {"periodic": False, "snapshot_times": [0.0, 0.05, 0.1], "dx": 1 / 24, "dy": 1 / 24}
    batch_stats, alone_stats = {}, {}
    batch = euler.simulate(rho, u, v, p, gamma, stats=batch_stats, **kwargs)
    alone = euler.simulate(rho[1:2], u[1:2], v[1:2], p[1:2], gamma[1:2], stats=alone_stats, **kwargs)
    for key in euler.FIELDS:
        torch.testing.assert_close(batch[key][1:2], alone[key], rtol=1e-5, atol=1e-6)
    assert batch_stats["steps"][1] == alone_stats["steps"][0]
    # Different sound speeds, different step counts: the steps are not shared across the batch.
    assert batch_stats["steps"].unique().numel() > 1, batch_stats


def test_uniform_flow_stays_uniform_and_progress_reaches_the_end():
    shape = (2, 8, 6)
    rho, p = torch.full(shape, 0.7), torch.full(shape, 1.3)
    u, v = torch.full(shape, 0.4), torch.full(shape, -0.9)
    seen = []
    out = euler.simulate(
        rho, u, v, p, torch.tensor([1.4, 1.13]), periodic=False, snapshot_times=[0.0, 0.01, 0.025],
        dx=0.1, dy=0.05, progress=seen.append,
    )  # fmt: skip
    torch.testing.assert_close(out["density"], torch.full((2, 3, 8, 6), 0.7))
    torch.testing.assert_close(out["momentum_y"], torch.full((2, 3, 8, 6), 0.7 * -0.9))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.025)


def test_conversions_round_trip():
    rho, u, v, p = quadrant_problem(2, 5, seed=0, dtype=torch.float64)
    gamma = torch.tensor([1.3, 1.6], dtype=torch.float64)
    U = euler.primitive_to_conserved(rho, u, v, p, gamma)
    assert U.shape == (2, 4, 5, 5)
    torch.testing.assert_close(U[:, 3], p / (gamma.view(-1, 1, 1) - 1) + 0.5 * rho * (u**2 + v**2))
    for original, recovered in zip((rho, u, v, p), euler.conserved_to_primitive(U, gamma), strict=True):
        torch.testing.assert_close(recovered, original)


def test_max_steps_stops_a_long_run():
    rho, u, v, p = quadrant_problem(1, 16, seed=0)
    with pytest.raises(RuntimeError, match="max_steps"):
        euler.simulate(
            rho, u, v, p, torch.tensor([1.4]), periodic=True, snapshot_times=[0.0, 1.0],
            dx=1 / 16, dy=1 / 16, max_steps=5,
        )  # fmt: skip


def _nan_density(U):
    U[1, 0, 3, 3] = math.nan


def _zero_pressure(U):
    U[2, 1:, 3, 3] = 0.0  # no momentum and no energy: p = 0 with a finite signal speed


@pytest.mark.parametrize(("poison", "trajectory"), [(_nan_density, 1), (_zero_pressure, 2)])
def test_breakdown_names_the_trajectory(monkeypatch, poison, trajectory):
    real_step = euler._muscl_hancock_step

    def poisoned_step(U, *args):
        U_new = real_step(U, *args)
        poison(U_new)
        return U_new

    monkeypatch.setattr(euler, "_muscl_hancock_step", poisoned_step)
    rho, u, v, p = quadrant_problem(3, 8, seed=0)
    with pytest.raises(FloatingPointError, match=f"trajectory {trajectory} "):
        euler.simulate(
            rho, u, v, p, torch.tensor([1.4] * 3), periodic=True, snapshot_times=[0.0, 0.1], dx=0.1, dy=0.1
        )


def _valid_args(batch=2, n=4):
    rho, u, v, p = quadrant_problem(batch, n, seed=0)
    return {
        "rho": rho, "u": u, "v": v, "p": p, "gamma": torch.full((batch,), 1.4),
        "periodic": True, "snapshot_times": [0.0, 0.1], "dx": 0.25, "dy": 0.25,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(u=a["u"][:, :3]), "u has shape"),
        (lambda a: a.update(rho=a["rho"][0]), r"\(B, Nx, Ny\)"),
        (lambda a: a.update(p=a["p"].double()), "p is torch.float64"),
        (lambda a: a["rho"].__setitem__((1, 0, 0), 0.0), r"density must be positive.*\[1\]"),
        (lambda a: a["p"].__setitem__((0, 2, 1), -1.0), r"pressure must be positive.*\[0\]"),
        (lambda a: a["u"].__setitem__((0, 2, 1), math.inf), "NaN or Inf"),
        (lambda a: a.update(gamma=torch.full((3,), 1.4)), "gamma must have shape"),
        (lambda a: a.update(gamma=torch.tensor([1.4, 1.0])), "gamma must be finite and > 1"),
        (lambda a: a.update(snapshot_times=[0.0, 0.1, 0.1]), "strictly increasing"),
        (lambda a: a.update(snapshot_times=[0.0, 0.2, 0.1]), "strictly increasing"),
        (lambda a: a.update(snapshot_times=[0.1, 0.2]), "start at 0.0"),
        (lambda a: a.update(snapshot_times=[]), "non-empty"),
        (lambda a: a.update(limiter="superbee"), "unknown limiter 'superbee'"),
        (lambda a: a.update(dx=0.0), "dx and dy must be positive"),
        (lambda a: a.update(cfl=1.5), "cfl"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(change, message):
    args = _valid_args()
    change(args)
    with pytest.raises(ValueError, match=message):
        euler.simulate(**args)


def test_valid_arguments_of_the_bad_input_test_run():
    out = euler.simulate(**_valid_args())
    assert out["density"].shape == (2, 2, 4, 4)
