"""Unit tests of the study's baselines and bootstrap intervals (issue 28, points 2 and 4):
persistence and PCA of the latent's size against hand computations, the evaluation's
per-unit baseline rows, and the bootstrap's coverage of a known mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lolaray.evaluation.baselines import (
    fit_pca,
    latent_numbers,
    pca_baseline,
    pca_vrmse,
    persistence_vrmse,
    train_states,
)
from lolaray.evaluation.bootstrap import MIN_UNITS, bootstrap_means
from lolaray.evaluation.rollout import lead_times
from lolaray.evaluation.study_units import interval_table, long_unit_rows
from lolaray.platform.data import WellWindows, standardizer_for

HORIZONS = ((1, 4), (5, 8))


def _hand_vrmse(pred: np.ndarray, truth: np.ndarray, eps: float = 1e-6) -> float:
    """VRMSE of one field of one state, by the paper's formula (unbiased spatial variance)."""
    mse = np.mean((pred - truth) ** 2)
    return math.sqrt(mse / (np.var(truth, ddof=1) + eps))


def test_persistence_is_the_initial_state_repeated():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(2, 4, 3, 3))  # (C, L, H, W)
    leads = lead_times(4, 2, 2)  # context 2: leads -2, 0, 2, 4
    got = persistence_vrmse(torch.from_numpy(truth), leads, spatial_dims=2, eps=1e-6).numpy()
    initial = truth[:, 1]
    expected = [np.mean([_hand_vrmse(initial[c], truth[c, i]) for c in range(2)]) for i in range(4)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert got[1] == 0  # the initial state predicts itself
    with pytest.raises(ValueError, match="lead 0"):
        persistence_vrmse(torch.from_numpy(truth), torch.tensor([1, 2, 3, 4]), spatial_dims=2, eps=1e-6)


def test_pca_recovers_a_low_rank_subspace_and_projects_by_hand():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(12, 2)))[0]  # two orthonormal directions in R^12
    offset = rng.normal(size=12)
    states = offset + rng.normal(size=(50, 2)) * [3.0, 1.0] @ basis.T
    fitted = fit_pca(torch.from_numpy(states).reshape(50, 3, 4), components=2)
    # Two components reconstruct states of that subspace exactly ...
    exact = fitted.reconstruct(torch.from_numpy(states[:5]).reshape(5, 3, 4), 2).reshape(5, 12)
    # (float32 eigenvectors, orthonormalized in float64: ~1e-6 of the states' scale)
    np.testing.assert_allclose(exact.numpy(), states[:5], atol=1e-5)
    # ... and one is the projection on the leading direction (by hand, from numpy's SVD).
    centred = states - states.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    by_hand = states.mean(0) + np.outer(centred[:5] @ v, v)
    one = fitted.reconstruct(torch.from_numpy(states[:5]).reshape(5, 3, 4), 1).reshape(5, 12)
    np.testing.assert_allclose(one.numpy(), by_hand, atol=1e-6)
    # The wide case (fewer states than numbers) goes through the other Gram matrix.
    wide = fit_pca(torch.from_numpy(states[:6]).reshape(6, 12), components=3)
    np.testing.assert_allclose(wide.components @ wide.components.T, np.eye(3), atol=1e-8)
    with pytest.raises(ValueError, match="at most 6"):
        fit_pca(torch.from_numpy(states[:6]), components=7)
    with pytest.raises(ValueError, match="holds 2"):
        fitted.reconstruct(torch.from_numpy(states[:1]), 3)


def test_latent_numbers_leave_the_known_channels_out():
    assert latent_numbers({"latent_shape": [16, 2, 2]}) == 64
    assert latent_numbers({"latent_shape": [6, 4, 4], "known_channels": 2}) == 64
    assert latent_numbers({"latent_shape": [4, 2, 2, 2]}) == 32


def test_pca_baseline_on_the_embedded_data_matches_a_hand_fit(smoke_dataset):
    info = smoke_dataset
    standardizer = standardizer_for(info)
    rows, by_horizon, k = pca_baseline(
        info, standardizer, [0, 2], components=16, horizons=HORIZONS, rate=320.0, eps=1e-6, fit_states=512
    )
    assert k == 16 and [r["trajectory"] for r in rows] == [0, 2]
    assert {r["method"] for r in rows} == {"pca"} and all(r["compression"] == 320.0 for r in rows)
    # By hand: the same draw of train states, the same basis, one test trajectory.
    train = WellWindows(info, "train", length=None, standardizer=standardizer)
    basis = fit_pca(train_states(train, max_states=512), components=16)
    x = WellWindows(info, "test", length=None, standardizer=standardizer)[2]["x"]
    per_state = pca_vrmse(basis, x, 16, standardizer, spatial_dims=2, eps=1e-6)
    assert rows[1]["vrmse/lead_1-4"] == pytest.approx(float(per_state[1:5].mean()), rel=1e-9)
    assert by_horizon["lead_5-8"] == pytest.approx(np.mean([r["vrmse/lead_5-8"] for r in rows]))
    # More components reconstruct better.
    _, richer, _ = pca_baseline(
        info, standardizer, [0, 2], components=64, horizons=HORIZONS, rate=80.0, eps=1e-6, fit_states=512
    )
    assert richer["lead_1-4"] < by_horizon["lead_1-4"]


def test_bootstrap_intervals_cover_a_known_mean_at_their_level():
    rng = np.random.default_rng(2)
    trials, hits = 300, 0
    for i in range(trials):
        sample = rng.lognormal(0.0, 0.3, size=24)  # mean exp(0.045)
        interval = bootstrap_means([sample], lambda m: m, resamples=1000, seed=i)
        hits += interval.low <= math.exp(0.3**2 / 2) <= interval.high
    # Nominal 0.90; the percentile bootstrap runs a little under it at n = 24.
    assert 0.83 <= hits / trials <= 0.96, hits / trials


def test_paired_bootstrap_sees_through_a_shared_difficulty():
    rng = np.random.default_rng(3)
    hard = rng.lognormal(0.0, 0.8, size=10)  # trajectories differ ×5 in difficulty
    a, b = hard * 1.0, hard * 1.1 * rng.lognormal(0.0, 0.01, size=10)
    paired = bootstrap_means([b, a], lambda x, y: x / y)
    assert paired.low > 1.05  # the ratio of means is about 1.1 on every resample
    unpaired_b = bootstrap_means([b], lambda x: x)
    unpaired_a = bootstrap_means([a], lambda x: x)
    assert unpaired_b.low < unpaired_a.high  # alone, each mean's interval overlaps the other
    few = bootstrap_means([a[: MIN_UNITS - 1]], lambda x: x)
    assert not few.defined and math.isnan(float(few.low)) and "[n=3]" in few.text()
    with pytest.raises(ValueError, match="same units"):
        bootstrap_means([a, a[:5]], lambda x, y: x)


def test_interval_tables_show_mean_interval_and_median():
    rows = [
        {"method": "diffusion", "compression": 80.0, "reference": "absolute", "context": c}
        | {"trajectory": t, "start": 0, "vrmse/lead_1-4": v * (1 + 0.1 * c), "spread_skill/lead_1-4": 0.9}
        for t, v in enumerate([0.2, 0.3, 0.25, 0.35, 5.0])  # one collapsing trajectory
        for c in (1, 2)
    ]
    long = long_unit_rows(rows, ["lead_1-4"], steps=8)
    overall = [r for r in long if r["context"] == "all"]
    assert len(overall) == 5 and overall[0]["vrmse"] == pytest.approx(0.2 * 1.15)
    table = interval_table(long, horizons=["lead_1-4"])
    (keys, ((mean, low, high, median, units, seed_sd),)) = table.rows[0]
    assert keys == ("diffusion", 80.0) and units == 5
    assert mean == pytest.approx(np.mean([0.2, 0.3, 0.25, 0.35, 5.0]) * 1.15)
    assert median == pytest.approx(0.3 * 1.15) and low < mean < high
    assert "med 0.345" in table.to_text() and "mean over 5 scored units" in table.to_text()
    assert math.isnan(seed_sd) and "seeds" not in table.to_text().splitlines()[2]
    # Two replicates (--seeds 2): a unit is the mean of its replicates, their spread shown.
    twice = [{**r, "replicate": 0} for r in long] + [
        {**r, "replicate": 1, "vrmse": r["vrmse"] + 0.1} for r in long if "vrmse" in r
    ]
    (_, ((mean2, _, _, _, units2, seed_sd2),)) = interval_table(twice, horizons=["lead_1-4"]).rows[0]
    assert units2 == 5 and mean2 == pytest.approx(mean + 0.05)
    assert seed_sd2 == pytest.approx(0.1 / math.sqrt(2))
