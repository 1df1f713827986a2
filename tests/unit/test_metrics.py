"""Tests of lolaray.evaluation.metrics (method.md §8, §11)."""

import math
import types

import numpy as np
import pytest
import scipy.stats
import torch
from the_well.benchmark.metrics import NRMSE, RMSE, VRMSE

from lolaray.evaluation import aggregation, distributions, ensemble_statistics, metrics, split_ensemble
from lolaray.evaluation.distributions import sliced_emd, wasserstein_1d
from lolaray.evaluation.metrics import aggregate_by_horizon, horizon_slices, nrmse, rmse, spread_skill, vrmse
from lolaray.evaluation.spectra import band_edges, isotropic_power_spectrum, spectral_rmse


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
    directions = distributions._unit_directions(n_projections, seed=3).numpy()
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


# --------------------------------------------------------------------------- ensemble scores


def _gaussian_crps(mu, sigma, y):
    """Closed-form CRPS of N(mu, sigma²) at y (Gneiting & Raftery 2007)."""
    z = (y - mu) / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    return sigma * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_crps_of_one_member_is_the_mae(spatial_dims):
    truth = _random(2, 3, *[6] * spatial_dims, seed=1)
    member = _random(1, 2, 3, *[6] * spatial_dims, seed=2)
    expected = (member[0] - truth).abs().mean(dim=tuple(range(-spatial_dims, 0)))
    torch.testing.assert_close(metrics.crps(member, truth, spatial_dims=spatial_dims), expected)


def test_crps_hand_example():
    # Members 0 and 2, truth 3: MAE term (3 + 1)/2 = 2; pair term (|0-2| + |2-0|) / (2·2·1) = 1.
    ensemble = torch.tensor([0.0, 2.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    truth = torch.full((1, 1, 1), 3.0, dtype=torch.float64)
    torch.testing.assert_close(metrics.crps(ensemble, truth, spatial_dims=2), torch.tensor([1.0]).double())


@pytest.mark.parametrize(("members", "sigma", "offset"), [(2, 1.0, 0.0), (5, 0.5, 1.0), (16, 2.0, -0.5)])
def test_fair_crps_of_gaussian_ensembles_matches_closed_form(members, sigma, offset):
    # Unbiasedness: even with 2 members, the mean fair CRPS is the distribution's CRPS.
    points = 128
    truth = offset + _random(4, points, points, seed=3)  # C = 4 fields of 128² points
    ensemble = sigma * _random(members, 4, points, points, seed=4)
    expected = _gaussian_crps(0.0, sigma, truth).mean(dim=(-2, -1))
    score = metrics.crps(ensemble, truth, spatial_dims=2)
    # Standard error of a mean over 16k points of a quantity of order sigma: ~1 % of sigma.
    torch.testing.assert_close(score, expected, atol=0.03 * sigma, rtol=0)
    # The plain (biased) ensemble CRPS is off by sigma/(sqrt(pi)·K) on average: the fair one is not.
    plain = (ensemble - truth).abs().mean(0) - (ensemble[:, None] - ensemble[None]).abs().mean((0, 1)) / 2
    assert (plain.mean(dim=(-2, -1)) - expected).mean() > 0.5 * sigma / (math.sqrt(math.pi) * members)


@pytest.mark.parametrize(
    ("scale", "calibrated"),
    [(1.0, True), (0.3, False), (3.0, False)],
)
def test_coverage_of_calibrated_and_miscalibrated_ensembles(scale, calibrated):
    members, points = 99, 64
    truth = _random(2, points, points, seed=5)
    ensemble = scale * _random(members, 2, points, points, seed=6)
    for level in metrics.COVERAGE_LEVELS:
        covered = metrics.coverage(ensemble, truth, spatial_dims=2, level=level)
        # Interpolated order statistics of K = 99 cover level·(K-1)/(K+1) in expectation.
        nominal = level * (members - 1) / (members + 1)
        if calibrated:
            torch.testing.assert_close(covered, torch.full_like(covered, nominal), atol=0.03, rtol=0)
        elif scale < 1:  # over-confident: too narrow, covers far less than nominal
            assert torch.all(covered < nominal - 0.15)
        else:  # under-confident: too wide
            assert torch.all(covered > nominal + 0.05)


def test_coverage_hand_example_and_bad_level():
    ensemble = torch.arange(5, dtype=torch.float64).reshape(5, 1, 1, 1).expand(5, 1, 1, 4).clone()
    truth = torch.tensor([[[-1.0, 1.0, 2.0, 3.5]]], dtype=torch.float64)
    # 50 % interval of 0..4: [1, 3]; covers 1 and 2 of the 4 points.
    covered = metrics.coverage(ensemble, truth, spatial_dims=2, level=0.5)
    torch.testing.assert_close(covered, torch.tensor([0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="level"):
        metrics.coverage(ensemble, truth, spatial_dims=2, level=1.0)


def test_rank_histogram_is_flat_for_calibrated_and_u_shaped_for_over_confident():
    members, points = 7, 96
    truth = _random(1, points, points, seed=7)
    calibrated = metrics.rank_histogram(_random(members, 1, points, points, seed=8), truth, spatial_dims=2)
    narrow = metrics.rank_histogram(0.2 * _random(members, 1, points, points, seed=8), truth, spatial_dims=2)
    assert calibrated.shape == (1, members + 1)
    assert calibrated.sum() == points * points and narrow.sum() == points * points
    flat = points * points / (members + 1)
    torch.testing.assert_close(calibrated, torch.full_like(calibrated, flat), rtol=0.1, atol=0)
    assert narrow[0, 0] > 2 * flat and narrow[0, -1] > 2 * flat and narrow[0, members // 2] < flat


def test_ensemble_scores_of_a_single_member():
    truth, member = _random(3, 8, 8, seed=9), _random(1, 3, 8, 8, seed=10)
    scores = metrics.ensemble_scores(member, truth, spatial_dims=2)
    torch.testing.assert_close(scores["crps"], (member[0] - truth).abs().mean(dim=(-2, -1)))
    assert torch.isnan(scores["coverage_90"]).all() and scores["rank_histogram"].shape == (3, 2)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("split", [(6,), (2, 4), (1, 2, 3)], ids=["one-block", "two-blocks", "three-blocks"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_streaming_statistics_equal_reference_functions(split, spatial_dims):
    ensemble = 1.5 + _random(6, 5, 2, *[12] * spatial_dims, seed=11)  # (K, L, C, *spatial)
    truth = _random(5, 2, *[12] * spatial_dims, seed=12)
    stats = ensemble_statistics.EnsembleStatistics(spatial_dims=spatial_dims)
    start = 0
    for size in split:
        block = ensemble_statistics.EnsembleStatistics(spatial_dims=spatial_dims).add(
            ensemble[start : start + size]
        )
        # Through the numpy form the Ray actors return.
        stats.merge(ensemble_statistics.EnsembleStatistics.from_dict(block.to_dict()))
        start += size
    assert stats.count == 6
    for got, expected in zip(
        stats.spread_skill(truth), spread_skill(ensemble, truth, spatial_dims=spatial_dims), strict=True
    ):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(stats.vrmse(truth), vrmse(ensemble, truth, spatial_dims=spatial_dims))
    torch.testing.assert_close(stats.nrmse(truth), nrmse(ensemble, truth, spatial_dims=spatial_dims))
    expected_bands = spectral_rmse(ensemble, truth, spatial_dims=spatial_dims)
    for band, value in stats.spectral_rmse(truth).items():
        torch.testing.assert_close(value, expected_bands[band], equal_nan=True)


def test_streaming_statistics_reject_mismatched_blocks():
    stats = ensemble_statistics.EnsembleStatistics(spatial_dims=2).add(_random(2, 3, 8, 8))
    with pytest.raises(ValueError, match="does not match"):
        stats.add(_random(2, 3, 8, 4))
    with pytest.raises(ValueError, match="truth of shape"):
        stats.vrmse(_random(3, 4, 4))


def test_streaming_vrmse_under_the_well_convention_agrees_with_the_well():
    ensemble = _random(4, 2, 3, 16, 16, seed=13)  # (K, T, C, H, W)
    truth = _random(2, 3, 16, 16, seed=14)
    stats = ensemble_statistics.EnsembleStatistics(spatial_dims=2).add(ensemble[:1]).add(ensemble[1:])
    ours = stats.vrmse(truth, eps=metrics.VRMSE_EPS["well"])
    mean_last, truth_last = ensemble.mean(0).movedim(-3, -1), truth.movedim(-3, -1)
    theirs = VRMSE.eval(mean_last[None], truth_last[None], types.SimpleNamespace(n_spatial_dims=2))[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    assert metrics.VRMSE_EPS == {"lola": 1e-6, "well": 1e-7}


@pytest.mark.parametrize("split", [(5,), (2, 3), (1, 1, 3)], ids=["one-block", "two-blocks", "three-blocks"])
def test_the_evaluation_stage_aggregation_equals_reference_functions(split, tmp_path):
    """What the evaluation stage computes from its actors' member blocks (``_combine``; the
    blocks written to a scratch folder and scored one lead time at a time, as
    :mod:`~lolaray.evaluation.split_ensemble` does; ``_per_field_lead``) equals the
    reference functions on the whole ensemble."""

    ensemble = 2.0 + _random(5, 4, 2, 16, 16, seed=21)  # (K, L, C, H, W): members by lead
    truth = 2.0 + _random(4, 2, 16, 16, seed=22)  # (L, C, H, W)
    blocks, start = [], 0
    for size in split:
        members = ensemble[start : start + size]
        start += size
        blocks.append(
            {
                "count": size,
                "seconds": 1.0,
                "warmup": False,
                "moments": ensemble_statistics.EnsembleStatistics(spatial_dims=2).add(members).to_dict(),
                "absolute": {"wasserstein": (wasserstein_1d(members, truth, spatial_dims=2) * size).numpy()},
            }
        )
        split_ensemble.write_block(str(tmp_path), (0, 0, 1), start - size, members.numpy())
    truths = {"absolute": truth.movedim(1, 0)}  # the stage keeps truths as (C, L, H, W)
    starts = [sum(split[:i]) for i in range(len(split))]
    chunks = split_ensemble.lead_chunks(4, members=5, state_size=2 * 16 * 16, chunk_bytes=1)  # a lead each
    scores = split_ensemble.join_chunks(
        [
            split_ensemble.score_chunk(
                split_ensemble.read_chunk(str(tmp_path), (0, 0, 1), starts, leads),
                {"absolute": truth[leads.start : leads.stop].numpy()},
                spatial_dims=2,
            )
            for leads in chunks
        ]
    )
    sums = aggregation._combine(blocks, "absolute")
    got = aggregation._per_field_lead(
        sums, truths["absolute"], scores["absolute"], kind="diffusion", spatial_dims=2, vrmse_eps=1e-6
    )
    spread, skill, ratio = spread_skill(ensemble, truth, spatial_dims=2)
    expected = {
        "vrmse": vrmse(ensemble, truth, spatial_dims=2),
        "nrmse": nrmse(ensemble, truth, spatial_dims=2),
        "spread": spread,
        "skill": skill,
        "spread_skill": ratio,
        "wasserstein": wasserstein_1d(ensemble, truth, spatial_dims=2),
        "crps": metrics.crps(ensemble, truth, spatial_dims=2),
        "coverage_50": metrics.coverage(ensemble, truth, spatial_dims=2, level=0.5),
        "coverage_90": metrics.coverage(ensemble, truth, spatial_dims=2, level=0.9),
        **{f"psrmse_{b}": v for b, v in spectral_rmse(ensemble, truth, spatial_dims=2).items()},
    }
    assert set(got) == set(expected) and sums["count"] == 5 and sums["timed_seconds"] == len(split)
    for name, value in expected.items():
        assert got[name].shape == (4, 2), name
        torch.testing.assert_close(got[name], value, equal_nan=True, msg=name)
    torch.testing.assert_close(
        torch.from_numpy(scores["absolute"]["rank_histogram"]),
        metrics.rank_histogram(ensemble, truth, spatial_dims=2),
    )
