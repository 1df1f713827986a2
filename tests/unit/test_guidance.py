"""MMPS guidance: observation operators, Krylov solvers, exactness on a linear-Gaussian
problem, and shapes and gradients through a decoder in 2-D and 3-D."""

import argparse

import pytest
import torch

from lolaray.evaluation.guidance_options import (
    OPERATOR_NAMES,
    SOLVER_NAMES,
    add_guidance_arguments,
    guidance_from_args,
)
from lolaray.platform.dataset_specs import PAPER_SPECS
from lolaray.trainers.autoencoder import build_autoencoder
from lolaray.trainers.diffusion import LogLinearSchedule
from lolaray.trainers.guidance import (
    OPERATORS,
    SOLVERS,
    BoundaryStripe,
    Downscale,
    FixedMask,
    MMPSDenoiser,
    Subsample,
    build_operator,
    conjugate_gradient,
    gmres,
)
from lolaray.trainers.samplers import sample

torch.set_default_dtype(torch.float32)


# ------------------------------------------------------------------------ operators


@pytest.mark.parametrize("spatial", [(8, 8), (4, 8, 8)])
def test_operators_shapes_and_values(spatial):
    d = len(spatial)
    x = torch.randn(3, 2, 5, *spatial)
    assert Subsample(2, spatial_dims=d)(x).shape == (3, 2, 5, *(s // 2 for s in spatial))
    assert torch.equal(Subsample(2, spatial_dims=d)(x), x[(..., *[slice(None, None, 2)] * d)])
    down = Downscale(4, spatial_dims=d)(x)
    assert down.shape == (3, 2, 5, *(s // 4 for s in spatial))
    assert torch.allclose(down[(..., *[0] * d)], x[(..., *[slice(0, 4)] * d)].mean(dim=tuple(range(-d, 0))))
    assert torch.allclose(Downscale(4, spatial_dims=d)(torch.full_like(x, 3.0)), torch.full_like(down, 3.0))
    stripe = BoundaryStripe(1, spatial)
    inner = 1
    for s in spatial:
        inner *= s - 2
    assert stripe(x).shape == (3, 2, 5, x[0, 0, 0].numel() - inner)
    mask = torch.zeros(spatial, dtype=torch.bool)
    mask[(0,) * d] = True
    assert torch.equal(FixedMask(mask)(x)[..., 0], x[(..., *[0] * d)])
    # linear: A(a x + b y) = a A(x) + b A(y)
    y = torch.randn_like(x)
    for op in (Subsample(2, d), Downscale(2, d), stripe):
        assert torch.allclose(op(2 * x - 3 * y), 2 * op(x) - 3 * op(y), atol=1e-5)


def test_operator_errors_are_clear():
    with pytest.raises(ValueError, match="not divisible by factor 3"):
        Downscale(3)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="leave an interior"):
        BoundaryStripe(4, (8, 8))
    with pytest.raises(ValueError, match="unknown observation operator 'blur'"):
        build_operator("blur", 2, (8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        FixedMask(torch.ones(4, 4, dtype=torch.bool))(torch.zeros(1, 8, 8))


# --------------------------------------------------------------------------- solvers


def _spd(batch, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, m, m, generator=g, dtype=torch.float64)
    return a @ a.transpose(1, 2) + m * torch.eye(m, dtype=torch.float64)


@pytest.mark.parametrize("solver", [gmres, conjugate_gradient])
def test_krylov_solvers_converge_in_m_iterations(solver):
    a = _spd(4, 6)
    b = torch.randn(4, 6, dtype=torch.float64)
    u = solver(lambda v: (a @ v[..., None])[..., 0], b, iterations=6)
    assert torch.allclose(u, torch.linalg.solve(a, b), atol=1e-8)
    # fewer iterations: an approximation that still reduces the residual
    u1 = solver(lambda v: (a @ v[..., None])[..., 0], b, iterations=1)
    assert ((a @ u1[..., None])[..., 0] - b).norm() < b.norm()


def test_gmres_handles_a_non_symmetric_system_and_empty_observations():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 5, 5, generator=g, dtype=torch.float64) + 5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(2, 5, dtype=torch.float64, generator=g)
    u = gmres(lambda v: (a @ v[..., None])[..., 0], b, iterations=5)
    assert torch.allclose(u, torch.linalg.solve(a, b), atol=1e-8)
    assert gmres(lambda v: v, torch.zeros(2, 0), iterations=1).shape == (2, 0)


# ------------------------------------------------------------- linear-Gaussian problem


class GaussianProblem:
    """x ~ N(m, S) in d dimensions, y = H x + N(0, var_y I): everything in closed form."""

    def __init__(self, d=6, k=3, var_y=0.05, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.m = torch.randn(d, generator=g, dtype=torch.float64)
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        self.S = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
        self.H = torch.randn(k, d, generator=g, dtype=torch.float64)
        self.var_y = var_y
        self.schedule = LogLinearSchedule(sigma_min=1e-3, sigma_max=1e2)
        x = self.m + torch.linalg.cholesky(self.S) @ torch.randn(d, generator=g, dtype=torch.float64)
        self.y = self.H @ x + var_y**0.5 * torch.randn(k, generator=g, dtype=torch.float64)

    def denoise(self, x_t, t):
        # E[x | x_t] = m + α S (α² S + σ² I)^{-1} (x_t - α m), batched over rows
        alpha, sigma = (v[:, None, None] for v in self.schedule(t.double()))
        eye = torch.eye(len(self.m), dtype=torch.float64)
        gain = alpha * self.S @ torch.linalg.inv(alpha**2 * self.S + sigma**2 * eye)
        centred = x_t.double() - alpha[:, :, 0] * self.m
        return (self.m + (gain @ centred[..., None])[..., 0]).to(x_t.dtype)

    def observe(self, x):
        return x @ self.H.T.to(x.dtype)

    def exact_mean(self, x_t, t):
        # E[x | x_t, y]: precision S^-1 + α²/σ² I + H^T H / var_y
        alpha, sigma = self.schedule(t.double())
        d = len(self.m)
        out = []
        for row, a, s in zip(x_t.double(), alpha, sigma):
            prec = torch.linalg.inv(self.S) + a**2 / s**2 * torch.eye(d, dtype=torch.float64)
            prec = prec + self.H.T @ self.H / self.var_y
            rhs = torch.linalg.solve(self.S, self.m) + a * row / s**2 + self.H.T @ self.y / self.var_y
            out.append(torch.linalg.solve(prec, rhs))
        return torch.stack(out)

    def posterior(self):
        gain = (
            self.S
            @ self.H.T
            @ torch.linalg.inv(self.H @ self.S @ self.H.T + self.var_y * torch.eye(len(self.y)))
        )
        return self.m + gain @ (self.y - self.H @ self.m), self.S - gain @ self.H @ self.S


@pytest.mark.parametrize("solver", ["gmres", "cg"])
@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_mmps_mean_is_the_exact_posterior_mean_on_a_gaussian_problem(solver, t):
    problem = GaussianProblem()
    x_t = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.full((5,), t, dtype=torch.float64)
    guided = MMPSDenoiser(
        problem.denoise,
        problem.schedule,
        problem.observe,
        problem.y.expand(5, -1),
        var_y=problem.var_y,
        iterations=3,  # = the number of observations: the Krylov solve is exact
        solver=solver,
    )
    assert torch.allclose(guided(x_t, t), problem.exact_mean(x_t, t), atol=1e-7)
    # and unguided differs: the test can fail
    assert not torch.allclose(problem.denoise(x_t, t), problem.exact_mean(x_t, t), atol=1e-3)


def test_guided_sampling_matches_the_exact_posterior_on_a_gaussian_problem():
    problem = GaussianProblem()
    n = 16000  # Monte Carlo error of the covariance entries: about 0.005
    guided = MMPSDenoiser(
        problem.denoise,
        problem.schedule,
        problem.observe,
        problem.y.expand(n, -1),
        var_y=problem.var_y,
        iterations=3,
    )
    noise = torch.randn(n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    samples = sample(guided, problem.schedule, kind="ab3", steps=64, noise=noise, dtype=torch.float64)
    mean, cov = problem.posterior()
    assert torch.allclose(samples.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(samples.T), cov, atol=0.03)
    # the prior is far from the posterior: an unguided sampler would fail these checks
    assert (problem.m - mean).abs().max() > 0.1


def test_zero_observation_weight_is_the_unguided_mean():
    problem = GaussianProblem()
    x_t = torch.randn(4, 6, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    guided = MMPSDenoiser(
        problem.denoise, problem.schedule, problem.observe, problem.y.expand(4, -1), weight=0.0
    )
    assert torch.equal(guided(x_t, t), problem.denoise(x_t, t))


# ------------------------------------------------------ through a decoder, 2-D and 3-D


@pytest.mark.parametrize(
    "preset, spatial, operator",
    [("smoke", (16, 16), Downscale(4, 2)), ("smoke_3d", (8, 8, 8), BoundaryStripe(1, (8, 8, 8)))],
)
def test_mmps_through_a_decoder_in_2d_and_3d(preset, spatial, operator):
    torch.manual_seed(0)
    autoencoder = build_autoencoder(preset, pixel_channels=2, latent_channels=3).eval()
    latent = autoencoder.encode(torch.randn(1, 2, *spatial)).shape[1:]
    schedule = LogLinearSchedule()
    conv = (torch.nn.Conv2d if len(spatial) == 2 else torch.nn.Conv3d)(3, 3, 3, padding=1).double()

    def denoise(z_t, t):  # a smooth, non-linear stand-in for a trained denoiser
        alpha, sigma = schedule(t.double())
        scale = (1 / (alpha**2 + sigma**2).sqrt()).reshape(-1, *[1] * (z_t.ndim - 1))
        return torch.tanh(conv(scale * z_t))

    def observe(z):
        return operator(autoencoder.decode(z.float()).double()).flatten(1)

    batch = 2
    y = observe(torch.randn(batch, *latent, dtype=torch.float64))
    z_t = torch.randn(batch, *latent, dtype=torch.float64)
    t = torch.full((batch,), 0.5, dtype=torch.float64)
    with torch.no_grad():  # guidance must compute its gradients even inside no_grad
        guided = MMPSDenoiser(denoise, schedule, observe, y, var_y=1e-2, iterations=2)(z_t, t)
        plain = denoise(z_t, t)
    assert guided.shape == z_t.shape and torch.isfinite(guided).all()
    assert not guided.requires_grad
    # the correction pulls the decoded observations towards y
    assert (observe(guided) - y).norm() < (observe(plain) - y).norm()


def test_command_line_guidance_options_match_the_operators_and_solvers():
    assert set(OPERATOR_NAMES) == set(OPERATORS) and set(SOLVER_NAMES) == set(SOLVERS)
    parser = argparse.ArgumentParser()
    add_guidance_arguments(parser, what="guide")
    assert guidance_from_args(parser.parse_args([])) is None
    # The paper's setting (method.md §7): σ_y = 0.1, var_y = σ_y², one GMRES iteration.
    assert guidance_from_args(parser.parse_args(["--guidance", "downscale"])) == {
        "operator": "downscale",
        "factor": 8,
        "sigma_y": 0.1,
        "var_y": pytest.approx(0.01),
        "iterations": 1,
        "solver": "gmres",
    }
    with pytest.raises(ValueError, match="var_y must be > 0"):
        guidance_from_args(parser.parse_args(["--guidance", "boundary", "--sigma-y", "0"]))


def test_guidance_defaults_come_from_the_datasets_spec():
    parser = argparse.ArgumentParser()
    add_guidance_arguments(parser, what="guide")

    def setting(argv, dataset):
        return guidance_from_args(parser.parse_args(argv), PAPER_SPECS[dataset].guidance)

    def expected(operator, factor, sigma_y, var_y, iterations):
        keys = ("operator", "factor", "sigma_y", "var_y", "iterations", "solver")
        return dict(zip(keys, (operator, factor, sigma_y, pytest.approx(var_y), iterations, "gmres")))

    # --guidance alone: the paper's setting of the dataset (method.md §7-§8).
    assert setting(["--guidance"], "euler_quadrants") == expected("subsample", 32, 0.1, 1e-2, 1)
    assert setting(["--guidance"], "rayleigh_benard") == expected("downscale", 16, 0.1, 1e-2, 1)
    assert setting(["--guidance"], "turbulence_gravity_cooling") == expected("boundary", 4, 1e-2, 1e-4, 2)
    # The spec's operator named: its settings; another operator: Figure 6's defaults.
    assert setting(["--guidance", "boundary"], "turbulence_gravity_cooling") == expected(
        "boundary", 4, 1e-2, 1e-4, 2
    )
    assert setting(["--guidance", "subsample"], "rayleigh_benard") == expected("subsample", 8, 0.1, 1e-2, 1)
    # What the command line gives wins; the model variance follows a σ_y given alone.
    assert setting(["--guidance", "--guidance-factor", "8"], "euler_quadrants") == expected(
        "subsample", 8, 0.1, 1e-2, 1
    )
    assert setting(["--guidance", "--sigma-y", "0.2"], "rayleigh_benard") == expected(
        "downscale", 16, 0.2, 0.04, 1
    )
    assert (
        setting(["--guidance", "--guidance-iterations", "3"], "turbulence_gravity_cooling")["iterations"] == 3
    )
    # A dataset with no guidance setting (an unseen folder): Figure 6's.
    assert guidance_from_args(parser.parse_args(["--guidance"])) == expected("downscale", 8, 0.1, 1e-2, 1)
