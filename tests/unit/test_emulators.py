"""Unit tests of the emulator backbone, diffusion, samplers and neural solver."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from lolaray.trainers.diffusion import (
    ElucidatedDenoiser,
    LogLinearSchedule,
    LogLogitSchedule,
    context_mask,
    context_pmf,
    denoiser_loss,
    sample_context_mask,
)
from lolaray.trainers.samplers import (
    adams_bashforth,
    adams_bashforth_coefficients,
    euler,
    heun,
    initial_noise,
    sample,
)
from lolaray.trainers.solver import NeuralSolver, solver_loss
from lolaray.trainers.transformer import (
    EMULATOR_PRESETS,
    LearnedRoPE,
    MultiheadSelfAttention,
    SpatioTemporalTransformer,
    build_backbone,
    count_parameters,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny matrices: one thread is as fast and avoids oversubscription on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _denoiser(channels=4, labels=3, spatial_dims=2, **kw):
    torch.manual_seed(0)
    backbone = build_backbone("smoke", in_channels=channels, spatial_dims=spatial_dims, **kw)
    return ElucidatedDenoiser(backbone, label_features=labels)


def _solver(channels=4, labels=3, spatial_dims=2, **kw):
    torch.manual_seed(0)
    backbone = build_backbone("smoke", in_channels=channels, spatial_dims=spatial_dims, **kw)
    return NeuralSolver(backbone, label_features=labels)


# ------------------------------------------------------------------ analytic sampling


def _gaussian_problem(schedule, dim=4096, seed=0):
    """x ~ N(m, diag(s²)), VE schedule (α = 1): E[x | x_t] = m + s²/(s²+σ²)(x_t − m) and the
    PF-ODE maps x(σ) − m = (x(σ₁) − m)·sqrt(s²+σ²)/sqrt(s²+σ₁²)."""

    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, generator=g, dtype=torch.float64)
    s = 0.2 + 1.8 * torch.rand(dim, generator=g, dtype=torch.float64)

    def denoise(x, t):
        _, sigma = schedule(t.double())
        return (m + s**2 / (s**2 + sigma[:, None] ** 2) * (x.double() - m)).to(x.dtype)

    eps = torch.randn(2, dim, generator=g, dtype=torch.float64)
    x_init = initial_noise(schedule, noise=eps)
    _, sigma_1 = schedule(torch.tensor(1.0, dtype=torch.float64))
    _, sigma_0 = schedule(torch.tensor(0.0, dtype=torch.float64))
    exact = m + (x_init - m) * torch.sqrt(s**2 + sigma_0**2) / torch.sqrt(s**2 + sigma_1**2)

    def error(x):
        return ((x.double() - exact).norm() / (exact - m).norm()).item()

    return denoise, x_init, error


@pytest.mark.parametrize(
    "schedule, tol, gain",
    [(LogLogitSchedule(), 0.04, 0.5), (LogLinearSchedule(), 0.15, 0.75)],
    ids=["loglogit", "loglinear"],
)
def test_ab3_matches_exact_pf_ode(schedule, tol, gain):
    denoise, x_init, error = _gaussian_problem(schedule)

    err_ab3 = error(adams_bashforth(denoise, x_init, schedule, steps=16, order=3))
    err_euler = error(euler(denoise, x_init, schedule, steps=16))

    assert err_ab3 < tol, err_ab3  # relative L2 error w.r.t. |x - m|
    assert err_ab3 < gain * err_euler, (err_ab3, err_euler)
    # More steps, smaller error.
    assert error(adams_bashforth(denoise, x_init, schedule, steps=64)) < 0.2 * err_ab3


def test_euler_converges_first_order():
    schedule = LogLogitSchedule()
    denoise, x_init, error = _gaussian_problem(schedule)

    errs = [error(euler(denoise, x_init, schedule, steps=k)) for k in (8, 16, 32, 64)]
    ratios = [a / b for a, b in itertools.pairwise(errs)]

    assert all(1.6 < r < 2.6 for r in ratios), (errs, ratios)


def test_heun_converges():
    schedule = LogLogitSchedule()
    denoise, x_init, error = _gaussian_problem(schedule)

    err_32, err_64 = (error(heun(denoise, x_init, schedule, steps=k)) for k in (32, 64))
    assert err_64 < 0.25 * err_32  # at least second order there
    assert err_64 < error(euler(denoise, x_init, schedule, steps=64))


def test_sampler_float32_matches_float64():
    schedule = LogLogitSchedule()
    denoise, x_init, _ = _gaussian_problem(schedule)

    x64 = adams_bashforth(denoise, x_init, schedule, steps=16)
    x32 = adams_bashforth(denoise, x_init.float(), schedule, steps=16)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, atol=1e-3, rtol=1e-3)


def test_adams_bashforth_coefficients():
    # Classic uniform-step coefficients, and invariance to the scale of ρ.
    torch.testing.assert_close(
        torch.tensor(adams_bashforth_coefficients([0.0, 1.0, 2.0], 2.0, 3.0)),
        torch.tensor([5 / 12, -16 / 12, 23 / 12]),
    )
    torch.testing.assert_close(
        torch.tensor(adams_bashforth_coefficients([1000.0, 990.0], 990.0, 980.0)),
        -10 * torch.tensor([-1 / 2, 3 / 2]),
    )
    assert adams_bashforth_coefficients([5.0], 5.0, 2.0) == pytest.approx([-3.0])


def test_sample_dispatcher_and_reproducibility():
    schedule = LogLogitSchedule()
    denoise, _, _ = _gaussian_problem(schedule, dim=64)

    a = sample(denoise, schedule, shape=(2, 64), generator=torch.Generator().manual_seed(3), steps=4)
    b = sample(denoise, schedule, shape=(2, 64), generator=torch.Generator().manual_seed(3), steps=4)
    assert torch.equal(a, b)

    noise = torch.randn(2, 64, dtype=torch.float64)
    x1 = initial_noise(schedule, noise=noise)
    assert torch.equal(
        sample(denoise, schedule, kind="euler", noise=noise, steps=5), euler(denoise, x1, schedule, steps=5)
    )
    assert torch.equal(
        sample(denoise, schedule, kind="ab2", noise=noise, steps=5),
        adams_bashforth(denoise, x1, schedule, steps=5, order=2),
    )
    # Initial scale sqrt(α₁² + σ₁²) ≈ 1000.
    assert math.isclose(float(x1[0, 0] / noise[0, 0]), math.sqrt(1 + 1e6), rel_tol=1e-9)

    with pytest.raises(ValueError, match="unknown sampler kind"):
        sample(denoise, schedule, kind="ddpm", noise=noise)


# ----------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("kind", ["ab3", "euler", "heun"])
def test_sampling_keeps_context_exactly(kind):
    denoiser = _denoiser().eval()
    g = torch.Generator().manual_seed(0)
    context = torch.randn(3, 4, 5, 4, 4, generator=g)
    label = torch.randn(3, 3, generator=g)
    mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)

    with torch.no_grad():
        x = sample(
            denoiser.bind(label, mask, context),
            denoiser.schedule,
            kind=kind,
            steps=3,
            shape=context.shape,
            generator=g,
            mask=mask,
            context=context,
        )

    known = mask[:, None, :, None, None].expand_as(x)
    assert torch.equal(x[known], context[known])
    assert x.isfinite().all()
    assert not torch.allclose(x[~known], context[~known])


def test_denoiser_sees_clean_context_and_returns_it():
    denoiser = _denoiser().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    label = torch.randn(2, 3, generator=g)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    known = mask[:, None, :, None, None].expand_as(x)
    t = torch.tensor([0.3, 0.7])

    x_t = x + torch.randn(x.shape, generator=g)
    x_t_other = torch.where(known, torch.randn(x.shape, generator=g), x_t)  # other noise on known entries

    with torch.no_grad():
        raw = denoiser(x_t, t, label, mask, x, replace_known=False)
        raw_other = denoiser(x_t_other, t, label, mask, x, replace_known=False)
        mean = denoiser(x_t, t, label, mask, x)

    torch.testing.assert_close(raw, raw_other)  # the noisy values at known entries are ignored
    assert torch.equal(mean[known], x[known])
    assert torch.equal(mean[~known], raw[~known])


def test_solver_predict_keeps_context_and_ignores_unknown():
    solver = _solver().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    known = mask[:, None, :, None, None].expand_as(x)
    label = torch.randn(2, 3, generator=g)

    y = solver.predict(x, mask, label)
    y_other = solver.predict(torch.where(known, x, 100 * torch.randn(x.shape, generator=g)), mask, label)

    assert torch.equal(y[known], x[known])
    torch.testing.assert_close(y, y_other)


def test_paper_context_distribution():
    length, n_samples = 5, 200_000
    mask, c = sample_context_mask(n_samples, length, generator=torch.Generator().manual_seed(0))

    pmf = context_pmf(length)  # Pois(2) truncated to [1, 4] ∝ (2, 2, 4/3, 2/3)
    torch.testing.assert_close(pmf, torch.tensor([1 / 3, 1 / 3, 2 / 9, 1 / 9], dtype=torch.float64))

    counts = torch.bincount(c - 1, minlength=length - 1).double()
    assert stats.chisquare(counts.numpy(), (n_samples * pmf).numpy()).pvalue > 1e-3
    # Forward only: the first c states are known.
    assert torch.equal(mask, torch.arange(length) < c[:, None])

    # The reference distribution is distinguishable (so this test can fail).
    _, c_ref = sample_context_mask(n_samples, length, distribution="reference", generator=torch.Generator())
    counts_ref = torch.bincount(c_ref - 1, minlength=length - 1).double()
    assert stats.chisquare(counts_ref.numpy(), (n_samples * pmf).numpy()).pvalue < 1e-6


def test_reference_context_distribution():
    length, n_samples = 5, 200_000
    mask, c = sample_context_mask(
        n_samples, length, distribution="reference", generator=torch.Generator().manual_seed(0)
    )
    pmf = context_pmf(length, distribution="reference")
    torch.testing.assert_close(pmf.float(), torch.tensor([0.383, 0.371, 0.185, 0.061]), atol=1e-3, rtol=0)

    counts = torch.bincount(c - 1, minlength=length - 1).double()
    assert stats.chisquare(counts.numpy(), (n_samples * pmf).numpy()).pvalue > 1e-3

    idx = torch.arange(length)
    forward = (mask == (idx < c[:, None])).all(dim=1)
    backward = (mask == (idx >= length - c[:, None])).all(dim=1)
    assert (forward | backward).all()
    assert abs(forward.double().mean().item() - 0.66) < 0.005


def test_context_mask_for_rollouts():
    assert context_mask(2, 5, 2).tolist() == [[True, True, False, False, False]] * 2
    assert context_mask(1, 5, 1, backward=True).tolist() == [[False, False, False, False, True]]


# ------------------------------------------------------------------------------ RoPE


def test_rope_scores_depend_on_relative_positions_only():
    torch.manual_seed(0)
    rope = LearnedRoPE(axes=3, channels=64, heads=4)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (3, 4, 4)), indexing="ij"), -1)
    coords = grid.flatten(0, -2).float()
    q, k = torch.randn(2, 2, 4, coords.shape[0], 16).unbind(0)

    def scores(p):
        return rope(q, p) @ rope(k, p).transpose(-1, -2)

    reference = scores(coords)
    shifted = scores(coords + torch.tensor([3.0, -5.0, 11.0]))
    torch.testing.assert_close(shifted, reference, atol=1e-4, rtol=1e-4)

    # Not a trivial invariance: rescaled positions change the scores, and RoPE is not the identity.
    assert not torch.allclose(scores(2 * coords), reference, atol=1e-2)
    assert not torch.allclose(reference, q @ k.transpose(-1, -2), atol=1e-2)


def test_attention_is_shift_invariant():
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(channels=64, heads=4, axes=3)
    coords = torch.randint(0, 8, (20, 3)).float()
    x = torch.randn(2, 20, 64)
    torch.testing.assert_close(attn(x, coords + 7.0), attn(x, coords), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(attn(x, coords * 3.0), attn(x, coords), atol=1e-3)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "shape, spatial_dims, patch",
    [
        ((2, 4, 3, 4, 4), 2, 1),  # 2-D latent window
        ((2, 4, 3, 2, 4, 2), 3, 1),  # 3-D latent window
        ((2, 3, 2, 8, 8), 2, 4),  # pixel window, patch (1, 4, 4)
        ((2, 3, 2, 4, 4, 4), 3, (1, 2, 2, 2)),  # 3-D pixel window
    ],
)
def test_shapes_and_gradients(shape, spatial_dims, patch):
    x = torch.randn(shape)
    label = torch.randn(shape[0], 3)
    mask = torch.zeros(shape[0], shape[2], dtype=torch.bool)
    mask[:, 0] = True

    for model, loss in (
        (
            _denoiser(shape[1], spatial_dims=spatial_dims, patch_size=patch),
            lambda m: denoiser_loss(m, x, label, mask),
        ),
        (
            _solver(shape[1], spatial_dims=spatial_dims, patch_size=patch),
            lambda m: solver_loss(m, x, label, mask),
        ),
    ):
        if isinstance(model, ElucidatedDenoiser):
            out = model(x, torch.rand(shape[0]), label, mask, x)
        else:
            out = model(x, mask, label)
        assert out.shape == x.shape

        loss(model).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.isfinite().all(), name
        assert model.backbone.in_proj.weight.grad.abs().sum() > 0
        assert model.backbone.blocks[0].attn.rope.theta.grad.abs().sum() > 0


def test_gradient_checkpointing_matches():
    x = torch.randn(2, 4, 3, 4, 4)
    mod = torch.randn(2, 64)
    cond = torch.ones(2, 1, 3, 1, 1)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone = build_backbone("smoke", in_channels=4, checkpointing=checkpointing)
        backbone(x, mod, cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in backbone.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    label = torch.randn(2, 3, generator=g)
    mask = context_mask(2, 3, 1)
    t = torch.tensor([0.2, 0.9])

    for model, call in (
        (_denoiser().eval(), lambda m: m(x, t, label, mask, x)),
        (_solver().eval(), lambda m: m(x, mask, label)),
    ):
        with torch.no_grad():
            ref = call(model)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = call(model)
        assert out.dtype == torch.float32 and out.isfinite().all()
        assert (out - ref).norm() / ref.norm() < 0.05

    model = _denoiser()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = denoiser_loss(model, x, label, mask, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.isfinite() and all(p.grad.isfinite().all() for p in model.parameters())


def test_presets():
    assert set(EMULATOR_PRESETS) >= {"paper", "paper_pixel", "smoke", "demo"}
    with torch.device("meta"):
        paper = build_backbone("paper", in_channels=64)
    assert (paper.hid_channels, len(paper.blocks)) == (1024, 16)
    # Paper Table 5: ≈2.2e8 parameters (the denoiser's embeddings add ≈0.2e6).
    assert 2.15e8 < count_parameters(paper) < 2.30e8
    assert count_parameters(build_backbone("smoke", in_channels=4)) < 5e5


# --------------------------------------------------------------------------- overfit


def test_diffusion_overfits_a_few_windows():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 3, 4, 4, generator=g)
    label = torch.randn(4, 3, generator=g)
    denoiser = _denoiser()

    # A fixed evaluation of the loss at mid noise levels (at σ → 0 the optimal loss of
    # the weighting 1 + 1/σ² stays O(1) for any network that does not memorise ε).
    reps = 5
    x_eval, label_eval = x.repeat(reps, 1, 1, 1, 1), label.repeat(reps, 1)
    t_eval = torch.linspace(0.2, 0.8, reps).repeat_interleave(4)
    mask_eval, _ = sample_context_mask(4 * reps, 3, generator=g)
    noise_eval = torch.randn(x_eval.shape, generator=g)

    def evaluate():
        denoiser.eval()
        with torch.no_grad():
            loss = denoiser_loss(denoiser, x_eval, label_eval, mask_eval, t=t_eval, noise=noise_eval)
        denoiser.train()
        return loss.item()

    before = evaluate()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0)
    for _ in range(300):
        mask, _ = sample_context_mask(16, 3, generator=g)
        loss = denoiser_loss(denoiser, x.repeat(4, 1, 1, 1, 1), label.repeat(4, 1), mask, generator=g)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
    after = evaluate()

    assert after < before / 5, (before, after)


def test_solver_overfits_a_few_windows():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 3, 4, 4, generator=g)
    label = torch.randn(4, 3, generator=g)
    mask_eval, _ = sample_context_mask(4, 3, generator=g)
    solver = _solver()

    with torch.no_grad():
        before = solver_loss(solver, x, label, mask_eval).item()
    optimizer = torch.optim.AdamW(solver.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0)
    for _ in range(200):
        mask, _ = sample_context_mask(4, 3, generator=g)
        loss = solver_loss(solver, x, label, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = solver_loss(solver, x, label, mask_eval).item()

    assert after < before / 10, (before, after)


def test_denoiser_loss_weighting():
    denoiser = _denoiser().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    label = torch.randn(2, 3, generator=g)
    mask = context_mask(2, 3, 1)
    t, noise = torch.tensor([0.1, 0.6]), torch.randn(x.shape, generator=g)

    with torch.no_grad():
        loss = denoiser_loss(denoiser, x, label, mask, t=t, noise=noise)
        _, sigma = denoiser.schedule(t)
        sigma = sigma[:, None, None, None, None]
        mean = denoiser(x + sigma * noise, t, label, mask, x, replace_known=False)
    expected = ((mean - x) ** 2 * (1 + 1 / sigma**2)).mean()
    torch.testing.assert_close(loss, expected)


def test_schedules():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    alpha, sigma = LogLogitSchedule()(t)
    u = 1e-3 / 1.001 + t * (1e3 / 1001 - 1e-3 / 1.001)
    torch.testing.assert_close(sigma, u / (1 - u))
    assert torch.equal(alpha, torch.ones_like(t))
    assert sigma[0].item() == pytest.approx(1e-3) and sigma[-1].item() == pytest.approx(1e3)
    _, sigma = LogLinearSchedule()(t)
    torch.testing.assert_close(sigma.log(), math.log(1e-3) + t * math.log(1e6))


# ------------------------------------------------------------------------ bad config


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="at least 2 states"):
        sample_context_mask(4, 1)
    with pytest.raises(ValueError, match="context length"):
        context_mask(4, 5, 5)
    with pytest.raises(ValueError, match="context length"):
        context_mask(4, 5, 0)
    with pytest.raises(ValueError, match="must divide hid_channels"):
        SpatioTemporalTransformer(in_channels=4, hid_channels=64, attention_heads=3, hid_blocks=1)
    with pytest.raises(ValueError, match="even"):
        SpatioTemporalTransformer(in_channels=4, hid_channels=48, attention_heads=16, hid_blocks=1)
    with pytest.raises(ValueError, match="unknown context distribution"):
        sample_context_mask(4, 5, distribution="uniform")
    with pytest.raises(ValueError, match="unknown emulator preset"):
        build_backbone("huge", in_channels=4)

    backbone = build_backbone("smoke", in_channels=4, patch_size=4)
    mod = torch.zeros(1, backbone.mod_features)
    with pytest.raises(ValueError, match="width axis of size 6"):
        backbone(torch.zeros(1, 4, 3, 8, 6), mod, torch.zeros(1, 1, 3, 1, 1))
    with pytest.raises(ValueError, match="rank 5"):
        backbone(torch.zeros(1, 4, 8, 8), mod, torch.zeros(1, 1, 3, 1))
    with pytest.raises(ValueError, match="time mask"):
        _denoiser()(
            torch.zeros(1, 4, 3, 4, 4),
            torch.tensor([0.5]),
            torch.zeros(1, 3),
            torch.ones(1, 2).bool(),
            torch.zeros(1, 4, 3, 4, 4),
        )
