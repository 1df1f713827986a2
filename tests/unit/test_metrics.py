"""Tests of lolaray.evaluation.metrics (method.md §8, §11)."""

import math
import types

import numpy as np
import pytest
import scipy.stats
import torch

from lolaray.evaluation import metrics
from lolaray.evaluation.metrics import (
    aggregate_by_horizon,
    band_edges,
    horizon_slices,
    isotropic_power_spectrum,
    nrmse,
    rmse,
    sliced_emd,
    spectral_rmse,
    spread_skill,
    vrmse,
    wasserstein_1d,
)


def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cosine(wavenumbers, size=64):
    """cos(2π m·x / size) on a size^d grid, d = len(wavenumbers)."""
    grids = torch.meshgrid(*[torch.arange(size, dtype=torch.float64)] * len(wavenumbers), indexing="ij")
    phase = sum(m * g for m, g in zip(wavenumbers, grids, strict=True))
    return torch.cos(2 * math.pi * phase / size)


# --------------------------------------------------------------------------- point-wise


def test_identical_fields_score_zero():
    truth = _random(2, 3, 32, 32) + 5.0
    ensemble = truth.expand(4, *truth.shape)
    for pred in (truth.clone(), ensemble):
        assert torch.all(vrmse(pred, truth, spatial_dims=2) == 0)
        assert torch.all(nrmse(pred, truth, spatial_dims=2) == 0)
        assert torch.all(rmse(pred, truth, spatial_dims=2) == 0)
        for band in spectral_rmse(pred, truth, spatial_dims=2).values():
            assert band.shape == (2, 3)
            assert torch.all(band.abs() < 1e-12)
        assert torch.all(wasserstein_1d(pred, truth, spatial_dims=2) == 0)
        assert torch.all(sliced_emd(pred, truth, n_projections=8) < 1e-12)


def test_predicting_spatial_mean_gives_vrmse_just_below_one():
    truth = _random(3, 64, 64)
    pred = truth.mean(dim=(-2, -1), keepdim=True).expand_as(truth)
    n = 64 * 64
    variance = truth.var(dim=(-2, -1))
    # Unbiased variance: mse = (N-1)/N · Var, hence sqrt((N-1)/N) ≈ 0.99988, not 1.
    expected = torch.sqrt((n - 1) / n * variance / (variance + 1e-6))
    score = vrmse(pred, truth, spatial_dims=2)
    torch.testing.assert_close(score, expected, rtol=1e-12, atol=0)
    assert torch.all((score - math.sqrt((n - 1) / n)).abs() < 2e-6)


def test_pointwise_metrics_agree_with_the_well():
    from the_well.benchmark.metrics import NRMSE, RMSE, VRMSE

    meta = types.SimpleNamespace(n_spatial_dims=2)
    # the_well is channels-last (B, T, H, W, C); its eps is fixed at 1e-7.
    pred_last = _random(2, 3, 16, 24, 4, seed=1)
    truth_last = 0.3 * _random(2, 3, 16, 24, 4, seed=2) + 1.0
    pred, truth = pred_last.movedim(-1, -3), truth_last.movedim(-1, -3)

    torch.testing.assert_close(
        vrmse(pred, truth, spatial_dims=2, eps=1e-7),
        VRMSE.eval(pred_last, truth_last, meta),
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(
        nrmse(pred, truth, spatial_dims=2, eps=1e-7),
        NRMSE.eval(pred_last, truth_last, meta),
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(
        rmse(pred, truth, spatial_dims=2), RMSE.eval(pred_last, truth_last, meta), rtol=1e-12, atol=0
    )


def test_vrmse_3d_agrees_with_the_well():
    from the_well.benchmark.metrics import VRMSE

    pred_last = _random(2, 8, 10, 12, 3, seed=3)
    truth_last = _random(2, 8, 10, 12, 3, seed=4)
    ours = vrmse(pred_last.movedim(-1, -4), truth_last.movedim(-1, -4), spatial_dims=3, eps=1e-7)
    theirs = VRMSE.eval(pred_last, truth_last, types.SimpleNamespace(n_spatial_dims=3))
    assert ours.shape == (2, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_ensemble_is_reduced_to_its_mean():
    truth = _random(2, 3, 16, 16, seed=5)
    ensemble = _random(5, 2, 3, 16, 16, seed=6)
    torch.testing.assert_close(
        vrmse(ensemble, truth, spatial_dims=2), vrmse(ensemble.mean(0), truth, spatial_dims=2)
    )
    assert vrmse(ensemble, truth, spatial_dims=2).shape == (2, 3)
    with pytest.raises(ValueError):
        vrmse(ensemble[..., :15], truth, spatial_dims=2)  # neither a state nor an ensemble
    with pytest.raises(ValueError):
        vrmse(ensemble[:, 0], truth, spatial_dims=2)  # same ndim, but no silent broadcasting


# --------------------------------------------------------------------------- spread-skill


def test_spread_skill_hand_example():
    truth = torch.zeros(1, 2, 2, dtype=torch.float64)
    ensemble = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)]).double()
    spread, skill, ratio = spread_skill(ensemble, truth, spatial_dims=2)
    # K = 2: mean deviation² = 1, corrected by (K+1)/(K-1) = 3; ensemble mean 2.
    torch.testing.assert_close(spread, torch.tensor([math.sqrt(3.0)], dtype=torch.float64))
    torch.testing.assert_close(skill, torch.tensor([2.0], dtype=torch.float64))
    torch.testing.assert_close(ratio, (spread + 1e-3) / (skill + 1e-3))


def test_spread_skill_of_single_member_is_zero():
    truth, member = _random(3, 8, 8, seed=7), _random(1, 3, 8, 8, seed=8)
    spread, skill, ratio = spread_skill(member, truth, spatial_dims=2)
    assert torch.all(spread == 0) and torch.all(ratio == 0)
    torch.testing.assert_close(skill, rmse(member[0], truth, spatial_dims=2))


@pytest.mark.parametrize(
    ("shift", "scale", "low", "high"),
    [
        (0.0, 1.0, 0.98, 1.02),  # calibrated: truth exchangeable with the members
        (1.0, 1.0, 0.0, 0.9),  # biased: error exceeds spread
        (0.0, 2.0, 1.1, math.inf),  # over-dispersed
    ],
)
def test_spread_skill_ratio(shift, scale, low, high):
    members = 16
    truth = _random(2, 256, 256, seed=9)
    ensemble = shift + scale * _random(members, 2, 256, 256, seed=10)
    _, _, ratio = spread_skill(ensemble, truth, spatial_dims=2)
    assert torch.all((ratio > low) & (ratio < high)), ratio


# --------------------------------------------------------------------------- spectra


def _full_fft_spectrum(u, spatial_dims):
    """Straightforward fftn reference of the isotropic spectrum (no rfft, no cache)."""
    shape = u.shape[-spatial_dims:]
    power = torch.fft.fftn(u, dim=tuple(range(-spatial_dims, 0)), norm="ortho").abs().square()
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in shape], indexing="ij")
    radius = torch.sqrt(sum(g.square() for g in grids))
    n_bins = math.floor(math.sqrt(spatial_dims) * min(shape) / 2)
    edges = torch.linspace(0, radius.max().item(), n_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(radius, edges)
    k, spectrum = [], []
    for i in range(1, n_bins + 1):
        if (bins == i).any():
            k.append(edges[i])
            spectrum.append(power[..., bins == i].mean(-1))
    return torch.stack(k), torch.stack(spectrum, dim=-1)


@pytest.mark.parametrize(("shape", "spatial_dims"), [((2, 64, 64), 2), ((2, 33, 20), 2), ((2, 12, 16, 9), 3)])
def test_spectrum_equals_full_fft_reference(shape, spatial_dims):
    u = _random(*shape, seed=11)
    k, spectrum = isotropic_power_spectrum(u, spatial_dims=spatial_dims)
    k_ref, spectrum_ref = _full_fft_spectrum(u, spatial_dims)
    torch.testing.assert_close(k, k_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(spectrum, spectrum_ref, rtol=1e-10, atol=1e-14)


def test_band_edges_of_euler_grid():
    k, _ = isotropic_power_spectrum(torch.zeros(512, 512), spatial_dims=2)
    assert len(k) == 362  # floor(sqrt(2)·512/2)
    edges = band_edges(k[0].item())
    np.testing.assert_allclose(edges, (0.00195, 0.0124, 0.0787, 0.5), rtol=2e-3)
    assert edges[0] == k[0].item()


@pytest.mark.parametrize(
    ("wavenumbers", "band"),
    [((2, 0), "low"), ((0, 3), "low"), ((6, 0), "mid"), ((5, 5), "mid"), ((20, 0), "high")],
)
def test_sinusoid_power_lands_in_its_bin_and_band(wavenumbers, band):
    u = _cosine(wavenumbers)
    k, spectrum = isotropic_power_spectrum(u, spatial_dims=2)
    frequency = math.hypot(*wavenumbers) / 64
    peak = int(spectrum.argmax())
    assert k[peak] >= frequency and (peak == 0 or k[peak - 1] < frequency)
    assert spectrum.sum() - spectrum[peak] < 1e-20 * spectrum[peak]

    # Against a zero truth, only the sinusoid's band sees a spectral error.
    errors = spectral_rmse(u, torch.zeros_like(u), spatial_dims=2)
    assert errors[band] > 1e3
    assert all(value < 1e-9 for name, value in errors.items() if name != band)


def test_spectral_rmse_3d_and_ensemble():
    truth = _random(2, 16, 16, 16, seed=18)  # broadband: every bin holds power ≫ 1e-6
    errors = spectral_rmse(truth, truth, spatial_dims=3)
    assert all(value.shape == (2,) and torch.all(value.abs() < 1e-12) for value in errors.values())

    # Members 0.5·u and 1.5·u: their mean spectrum is 1.25·p_u, so se_p = 0.25² in every bin,
    # whereas the ensemble mean (u itself) would score 0: spectra are averaged, not fields.
    ensemble = torch.stack([0.5 * truth, 1.5 * truth])
    for value in spectral_rmse(ensemble, truth, spatial_dims=3).values():
        torch.testing.assert_close(value, torch.full((2,), 0.25, dtype=torch.float64), rtol=1e-4, atol=0)


def test_sinusoid_3d_power_lands_in_its_bin():
    u = _cosine((0, 3, 1), size=16)
    k, spectrum = isotropic_power_spectrum(u, spatial_dims=3)
    assert len(k) == math.floor(math.sqrt(3) * 16 / 2)
    frequency = math.hypot(3, 1) / 16
    peak = int(spectrum.argmax())
    assert k[peak] >= frequency > k[peak - 1]
    assert spectrum.sum() - spectrum[peak] < 1e-20 * spectrum[peak]


# --------------------------------------------------------------------------- distributions


def test_wasserstein_1d_matches_scipy():
    pred = _random(2, 10, 12, seed=12).exp()
    truth = 0.5 * _random(2, 10, 12, seed=13) + 0.2
    ours = wasserstein_1d(pred, truth, spatial_dims=2)
    for c in range(2):
        expected = scipy.stats.wasserstein_distance(pred[c].flatten().numpy(), truth[c].flatten().numpy())
        assert ours[c].item() == pytest.approx(expected, rel=1e-12)


def test_wasserstein_1d_ensemble_and_3d():
    truth = _random(3, 6, 7, 8, seed=14)
    ensemble = _random(4, 3, 6, 7, 8, seed=15) + 0.5
    ours = wasserstein_1d(ensemble, truth, spatial_dims=3)
    per_member = torch.stack([wasserstein_1d(member, truth, spatial_dims=3) for member in ensemble])
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, per_member.mean(0))
    # A spatial permutation keeps the value distribution: distance 0.
    shuffled = truth.flatten(-3)[..., torch.randperm(6 * 7 * 8)].reshape(truth.shape)
    assert torch.all(wasserstein_1d(shuffled, truth, spatial_dims=3) < 1e-12)


def test_sliced_emd_matches_scipy():
    height, width, n_projections = 9, 11, 6
    pred = _random(height, width, seed=16)
    truth = 2.0 * _random(height, width, seed=17) + 1.0
    ours = sliced_emd(pred, truth, n_projections=n_projections, seed=3)

    # Point clouds (x, y, value / std(truth)) projected on the same seeded directions.
    xs, ys = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    scale = truth.numpy().std(ddof=1)
    cloud_v = np.stack([xs.ravel(), ys.ravel(), pred.numpy().ravel() / scale], axis=1)
    cloud_u = np.stack([xs.ravel(), ys.ravel(), truth.numpy().ravel() / scale], axis=1)
    directions = metrics._unit_directions(n_projections, seed=3).numpy()
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    expected = np.mean([scipy.stats.wasserstein_distance(cloud_v @ d, cloud_u @ d) for d in directions])
    assert ours.item() == pytest.approx(expected, rel=1e-12)


def test_sliced_emd_is_deterministic_and_sensitive():
    truth = torch.zeros(2, 32, 32, dtype=torch.float64)
    truth[:, 8:14, 10:16] = 1.0  # a blob
    assert sliced_emd(truth + 0.3, truth).min() > 0.01  # shifted values
    moved = truth.roll(shifts=(6, 4), dims=(-2, -1))
    assert sliced_emd(moved, truth).min() > 1e-3  # displaced structure
    assert sliced_emd(moved, truth).shape == (2,)
    torch.testing.assert_close(
        sliced_emd(moved, truth, seed=1), sliced_emd(moved, truth, seed=1), rtol=0, atol=0
    )
    assert not torch.equal(sliced_emd(moved, truth, seed=1), sliced_emd(moved, truth, seed=2))
    # Ensemble: mean over members of each member's distance.
    ensemble = torch.stack([moved, truth + 0.3])
    torch.testing.assert_close(
        sliced_emd(ensemble, truth), (sliced_emd(moved, truth) + sliced_emd(truth + 0.3, truth)) / 2
    )


# --------------------------------------------------------------------------- horizons


EULER_HORIZONS = ((1, 20), (21, 60), (61, 100))


def test_horizon_slices_labels_and_positions():
    leads = list(range(0, 101, 4))  # Euler: Δ = 4, lead 0 is the initial state
    groups = horizon_slices(leads, EULER_HORIZONS)
    assert list(groups) == ["lead_1-20", "lead_21-60", "lead_61-100"]
    assert groups["lead_1-20"].tolist() == [1, 2, 3, 4, 5]  # leads 4..20
    assert groups["lead_21-60"].tolist() == list(range(6, 16))  # leads 24..60
    assert groups["lead_61-100"].tolist() == list(range(16, 26))
    assert horizon_slices(leads, ((0, 8),))["lead_0-8"].tolist() == [1, 2]  # lead 0 ignored


def test_aggregate_by_horizon_hand_example():
    leads = [0, 1, 5, 30, 70]
    values = torch.tensor([[100.0, 1.0, 3.0, 10.0, 7.0], [100.0, 2.0, 4.0, 20.0, 9.0]])
    result = aggregate_by_horizon(values, leads, ((0, 20), (21, 60), (61, 100), (101, 200)))
    assert result["lead_0-20"].tolist() == [2.0, 3.0]  # lead 0 (value 100) ignored
    assert result["lead_21-60"].tolist() == [10.0, 20.0]
    assert result["lead_61-100"].tolist() == [7.0, 9.0]
    assert result["lead_101-200"].shape == (2,) and torch.all(result["lead_101-200"].isnan())
    with pytest.raises(ValueError):
        aggregate_by_horizon(values, leads[:-1], EULER_HORIZONS)
