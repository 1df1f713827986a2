r"""Evaluation metrics of emulated physical fields (method.md §8 and §11).

Every function is pure torch and works on **channels-first** tensors: a truth ``u`` of
shape ``(..., C, *spatial)`` and a prediction that is either a single state of the same
shape or an ensemble of shape ``(K, ..., C, *spatial)`` with the ``K`` members first (a
prediction of shape ``(K, *truth.shape)`` is read as an ensemble; other shapes are
rejected rather than broadcast).
``spatial_dims`` (2 or 3) says how many trailing axes are spatial. Metrics are reduced
over the spatial axes only and returned per field, shape ``(..., C)``: callers average
over fields, states and trajectories themselves. Computations run in float64 and the
results are float64.

Notation: :math:`\langle\cdot\rangle_s` is the mean over the spatial points,
:math:`v_k` the :math:`K` ensemble members and :math:`\bar v = \frac1K\sum_k v_k`.

Ensemble scores (:func:`crps`, :func:`coverage`, :func:`rank_histogram`,
:func:`ensemble_scores`) need all members at once; the point scores of an ensemble that
arrives in blocks come from the streaming
:class:`~lolaray.evaluation.ensemble_statistics.EnsembleStatistics`, which the evaluation
stage uses and the tests check against the functions here. :data:`VRMSE_EPS` names the
two conventions for the ε of :func:`vrmse`. Spectra are in :mod:`~lolaray.evaluation.spectra`,
distances between value distributions in :mod:`~lolaray.evaluation.distributions`.

.. note::
   ``the_well.benchmark.metrics`` computes the same point-wise scores but expects
   channels-last input and silently mis-reduces channels-first tensors; the tests
   cross-check :func:`vrmse` against it after moving the channel axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "COVERAGE_LEVELS",
    "VRMSE_EPS",
    "aggregate_by_horizon",
    "as_float64",
    "coverage",
    "crps",
    "ensemble_mean",
    "ensemble_scores",
    "horizon_slices",
    "is_ensemble",
    "nrmse",
    "point_prediction",
    "rank_histogram",
    "rmse",
    "spatial_axes",
    "spread_skill",
    "spread_skill_ratio",
    "vrmse",
]

# Offset of the spread-skill ratio, as in the reference notebooks (figures.ipynb): it keeps
# the ratio finite for a perfect, zero-spread prediction.
RATIO_OFFSET = 1e-3
#: The ε on the spatial variance of :func:`vrmse`, per convention: the reference code of the
#: paper (LOLA) uses 1e-6, The Well's benchmark ``sqrt(MSE / (var + 1e-7))``.
VRMSE_EPS = {"lola": 1e-6, "well": 1e-7}
#: Nominal probabilities of the central intervals whose coverage is reported.
COVERAGE_LEVELS = (0.5, 0.9)


def as_float64(x: Tensor) -> Tensor:
    """``x`` as a float64 tensor (every score is computed in float64)."""
    return torch.as_tensor(x).to(torch.float64)


def spatial_axes(spatial_dims: int) -> tuple[int, ...]:
    """The trailing ``spatial_dims`` axes, ``(-spatial_dims, …, -1)``; at least one."""
    if spatial_dims < 1:
        raise ValueError(f"spatial_dims must be >= 1, got {spatial_dims}")
    return tuple(range(-spatial_dims, 0))


def is_ensemble(pred: Tensor, truth: Tensor) -> bool:
    """Whether ``pred`` is an ensemble ``(K, *truth.shape)`` rather than one state ``truth.shape``.

    Shapes must match exactly: silent broadcasting would hide a misplaced axis.
    """
    if pred.shape == truth.shape:
        return False
    if pred.ndim == truth.ndim + 1 and pred.shape[1:] == truth.shape:
        return True
    raise ValueError(
        f"prediction of shape {tuple(pred.shape)} is neither a state nor an ensemble "
        f"for a truth of shape {tuple(truth.shape)}"
    )


def point_prediction(pred: Tensor, truth: Tensor) -> Tensor:
    """The ensemble mean of an ensemble, the prediction itself otherwise (float64)."""
    pred = as_float64(pred)
    return pred.mean(dim=0) if is_ensemble(pred, truth) else pred


# --------------------------------------------------------------------------- point-wise


def ensemble_mean(ensemble: Tensor) -> Tensor:
    r"""Ensemble mean :math:`\bar v = \frac1K \sum_k v_k`.

    :param ensemble: members ``(K, ...)``.
    :returns: ``(...)``, float64.
    """
    return as_float64(ensemble).mean(dim=0)


def _mse(pred: Tensor, truth: Tensor, spatial_dims: int) -> Tensor:
    axes = spatial_axes(spatial_dims)
    truth = as_float64(truth)
    return (truth - point_prediction(pred, truth)).square().mean(dim=axes)


def rmse(pred: Tensor, truth: Tensor, *, spatial_dims: int) -> Tensor:
    r"""Root mean squared error :math:`\sqrt{\langle (u - \bar v)^2 \rangle_s}`.

    For an ensemble this is the *skill*: the RMSE of the ensemble mean.

    :param pred: prediction ``(..., C, *spatial)`` or ensemble ``(K, ..., C, *spatial)``.
    :param truth: ``(..., C, *spatial)``.
    :param spatial_dims: number of trailing spatial axes.
    :returns: ``(..., C)``.
    """
    return _mse(pred, truth, spatial_dims).sqrt()


def nrmse(pred: Tensor, truth: Tensor, *, spatial_dims: int, eps: float = 1e-6) -> Tensor:
    r"""Normalised RMSE :math:`\sqrt{\langle (u-\bar v)^2\rangle_s / (\langle u^2\rangle_s + \epsilon)}`.

    Shapes as in :func:`rmse`; ``eps`` = 1e-6 as in the reference ``eval.py``
    (the_well uses 1e-7).
    """
    truth = as_float64(truth)
    energy = truth.square().mean(dim=spatial_axes(spatial_dims))
    return (_mse(pred, truth, spatial_dims) / (energy + eps)).sqrt()


def vrmse(pred: Tensor, truth: Tensor, *, spatial_dims: int, eps: float = 1e-6) -> Tensor:
    r"""Variance-scaled RMSE :math:`\sqrt{\langle (u-\bar v)^2\rangle_s / (\mathrm{Var}_s(u) + \epsilon)}`.

    :math:`\mathrm{Var}_s` is the *unbiased* (:math:`N-1`) variance over the :math:`N`
    spatial points, as in the reference and in the_well; predicting the spatial mean
    therefore scores :math:`\sqrt{(N-1)/N} \approx 0.9999`, not exactly 1. Shapes as in
    :func:`rmse`; ``eps`` = 1e-6 as in the reference (the_well: 1e-7).
    """
    truth = as_float64(truth)
    variance = truth.var(dim=spatial_axes(spatial_dims), correction=1)
    return (_mse(pred, truth, spatial_dims) / (variance + eps)).sqrt()


def spread_skill(ensemble: Tensor, truth: Tensor, *, spatial_dims: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Ensemble spread, skill and their ratio.

    .. math::
        \mathrm{spread} = \sqrt{\tfrac{K+1}{K-1}\,\big\langle \tfrac1K \textstyle\sum_k
        (v_k - \bar v)^2 \big\rangle_s}, \qquad
        \mathrm{skill} = \sqrt{\langle (u - \bar v)^2 \rangle_s}, \qquad
        \mathrm{ratio} = \frac{\mathrm{spread} + 10^{-3}}{\mathrm{skill} + 10^{-3}}.

    The factor :math:`(K+1)/(K-1)` corrects the finite ensemble so that a calibrated
    ensemble (truth exchangeable with the members) has ratio 1 in expectation. The
    :math:`10^{-3}` offsets are those of the reference notebooks. With :math:`K = 1` there
    is no spread: spread and ratio are 0 by definition (the notebooks' convention for
    deterministic solvers).

    :param ensemble: ``(K, ..., C, *spatial)``.
    :param truth: ``(..., C, *spatial)``.
    :returns: ``(spread, skill, ratio)``, each ``(..., C)``.
    """
    ensemble, truth = as_float64(ensemble), as_float64(truth)
    if not is_ensemble(ensemble, truth):
        raise ValueError("spread_skill needs an ensemble of shape (K, *truth.shape)")
    axes = spatial_axes(spatial_dims)
    mean = ensemble.mean(dim=0)
    deviation = (ensemble - mean).square().mean(dim=0).mean(dim=axes)
    skill = (truth - mean).square().mean(dim=axes).sqrt()
    return spread_skill_ratio(deviation, skill, members=ensemble.shape[0])


def spread_skill_ratio(deviation: Tensor, skill: Tensor, *, members: int) -> tuple[Tensor, Tensor, Tensor]:
    """Spread, skill and ratio from the spatial mean of the members' squared deviation from
    the ensemble mean and the skill (see :func:`spread_skill`)."""
    if members == 1:
        zeros = torch.zeros_like(skill)
        return zeros, skill, zeros.clone()
    spread = ((members + 1) / (members - 1) * deviation).sqrt()
    ratio = (spread + RATIO_OFFSET) / (skill + RATIO_OFFSET)
    return spread, skill, ratio


# --------------------------------------------------------------------------- ensemble scores


def crps(ensemble: Tensor, truth: Tensor, *, spatial_dims: int) -> Tensor:
    r"""Fair (unbiased) continuous ranked probability score, averaged over space.

    .. math::
        \mathrm{CRPS}_{\mathrm{fair}} = \Big\langle \frac1K \sum_k |v_k - u|
        - \frac{1}{2K(K-1)} \sum_{k,j} |v_k - v_j| \Big\rangle_s,

    an unbiased estimate of the CRPS of the distribution the members are drawn from
    (Ferro 2014; the form WeatherBench 2 and GenCast report). The pair sum is computed in
    :math:`O(K \log K)` from the sorted members,
    :math:`\sum_{k,j}|v_k - v_j| = 2\sum_{i=1}^K (2i - K - 1)\, v_{(i)}`. With
    :math:`K = 1` the pair term is absent and the score is the MAE. Lower is better; in
    the field's units.

    :param ensemble: ``(K, ..., C, *spatial)``.
    :param truth: ``(..., C, *spatial)``.
    :returns: ``(..., C)``.
    """
    ensemble, truth = as_float64(ensemble), as_float64(truth)
    if not is_ensemble(ensemble, truth):
        raise ValueError("crps needs an ensemble of shape (K, *truth.shape)")
    axes = spatial_axes(spatial_dims)
    members = ensemble.shape[0]
    score = (ensemble - truth).abs().mean(dim=0)
    if members > 1:
        ordered = ensemble.sort(dim=0).values
        weights = 2 * torch.arange(1, members + 1, dtype=torch.float64, device=ordered.device) - members - 1
        weights = weights.reshape(members, *([1] * truth.ndim))
        half_pair_sum = (weights * ordered).sum(dim=0)  # = (1/2) sum_{k,j} |v_k - v_j|
        score = score - half_pair_sum / (members * (members - 1))
    return score.mean(dim=axes)


def _sorted_quantile(ordered: Tensor, q: float) -> Tensor:
    """Quantile ``q`` of sorted members ``(K, ...)`` with linear interpolation between order
    statistics (``torch.quantile``'s default, without its size limit)."""
    position = q * (ordered.shape[0] - 1)
    below = math.floor(position)
    above = min(below + 1, ordered.shape[0] - 1)
    fraction = position - below
    return ordered[below] * (1 - fraction) + ordered[above] * fraction


def coverage(ensemble: Tensor, truth: Tensor, *, spatial_dims: int, level: float) -> Tensor:
    r"""Fraction of points whose truth lies in the ensemble's central interval of probability ``level``.

    The interval is :math:`[q_{(1-p)/2}, q_{(1+p)/2}]` of the members at each point
    (linear interpolation between order statistics). A calibrated ensemble covers
    :math:`p` of the points (up to :math:`O(1/K)` for small ensembles); an over-confident
    one covers less, an under-confident one more.

    :param ensemble: ``(K, ..., C, *spatial)`` with :math:`K \ge 2`.
    :param truth: ``(..., C, *spatial)``.
    :param level: the nominal probability :math:`p \in (0, 1)`.
    :returns: ``(..., C)`` fractions in ``[0, 1]``.
    """
    ensemble, truth = as_float64(ensemble), as_float64(truth)
    if not is_ensemble(ensemble, truth):
        raise ValueError("coverage needs an ensemble of shape (K, *truth.shape)")
    if not 0 < level < 1:
        raise ValueError(f"coverage level must lie in (0, 1), got {level}")
    ordered = ensemble.sort(dim=0).values
    low = _sorted_quantile(ordered, (1 - level) / 2)
    high = _sorted_quantile(ordered, (1 + level) / 2)
    inside = ((truth >= low) & (truth <= high)).to(torch.float64)
    return inside.mean(dim=spatial_axes(spatial_dims))


def rank_histogram(ensemble: Tensor, truth: Tensor, *, spatial_dims: int) -> Tensor:
    r"""Counts of the rank of the truth among the members (Talagrand diagram).

    The rank at a point is :math:`r = \#\{k : v_k < u\}` in :math:`0..K`. For a calibrated
    ensemble it is uniform; a U shape means over-confidence, a dome under-confidence,
    a slope a bias.

    :param ensemble: ``(K, ..., C, *spatial)``.
    :param truth: ``(..., C, *spatial)``.
    :returns: ``(..., C, K + 1)`` counts over the spatial points (float64, so sums over
        trajectories and lead times stay exact).
    """
    ensemble, truth = as_float64(ensemble), as_float64(truth)
    if not is_ensemble(ensemble, truth):
        raise ValueError("rank_histogram needs an ensemble of shape (K, *truth.shape)")
    spatial_axes(spatial_dims)
    members = ensemble.shape[0]
    rank = (ensemble < truth).sum(dim=0).flatten(start_dim=-spatial_dims)  # (..., C, N)
    counts = truth.new_zeros(*rank.shape[:-1], members + 1)
    return counts.scatter_add_(-1, rank, torch.ones_like(rank, dtype=torch.float64))


def ensemble_scores(ensemble: Tensor, truth: Tensor, *, spatial_dims: int) -> dict[str, Tensor]:
    """The probabilistic scores of an ensemble, per field: ``crps``, ``coverage_50``,
    ``coverage_90`` (``(..., C)``; coverage NaN for a single member, which has no interval)
    and ``rank_histogram`` (``(..., C, K + 1)``). Shapes as in :func:`crps`."""
    scores = {"crps": crps(ensemble, truth, spatial_dims=spatial_dims)}
    for level in COVERAGE_LEVELS:
        name = f"coverage_{round(100 * level)}"
        if ensemble.shape[0] > 1:
            scores[name] = coverage(ensemble, truth, spatial_dims=spatial_dims, level=level)
        else:
            scores[name] = torch.full_like(scores["crps"], math.nan)
    scores["rank_histogram"] = rank_histogram(ensemble, truth, spatial_dims=spatial_dims)
    return scores


# --------------------------------------------------------------------------- horizons


def horizon_slices(
    lead_times: Sequence[int] | Tensor, horizons: Sequence[tuple[int, int]]
) -> dict[str, Tensor]:
    """Group lead times into labelled horizons.

    A horizon ``(first, last)`` is inclusive and labelled ``"lead_{first}-{last}"``; lead
    time 0 (the initial state) never belongs to a horizon. Example (Euler-like):
    ``((1, 20), (21, 60), (61, 100))`` → ``"lead_1-20"``, ``"lead_21-60"``,
    ``"lead_61-100"``. (The reference notebooks cut at ``lead < 20`` / ``< 60``, so a lead
    of exactly 20 falls in their second horizon; pass ``((1, 19), (20, 59), (60, 100))``
    to reproduce them.)

    :param lead_times: ``(T,)`` lead times in simulation steps.
    :param horizons: ``(first, last)`` pairs.
    :returns: label → positions ``(T_h,)`` (int64) into ``lead_times``; possibly empty.
    """
    leads = torch.as_tensor(lead_times).flatten()
    groups = {}
    for first, last in horizons:
        inside = (leads >= first) & (leads <= last) & (leads != 0)
        groups[f"lead_{first}-{last}"] = torch.nonzero(inside).flatten()
    return groups


def aggregate_by_horizon(
    values: Tensor, lead_times: Sequence[int] | Tensor, horizons: Sequence[tuple[int, int]]
) -> dict[str, Tensor]:
    """Mean of a metric over the lead times of each horizon.

    :param values: ``(..., T)``, the metric at each of the ``T`` lead times.
    :param lead_times: ``(T,)`` lead times in simulation steps.
    :param horizons: inclusive ``(first, last)`` pairs, see :func:`horizon_slices`.
    :returns: label → ``(...)`` mean over the entries in the horizon (lead 0 ignored); a
        horizon with no entry is all-NaN rather than an error, so tables keep their shape.
    """
    values = as_float64(values)
    if values.shape[-1] != torch.as_tensor(lead_times).numel():
        raise ValueError(f"values have {values.shape[-1]} time entries but {len(lead_times)} lead times")
    result = {}
    for label, positions in horizon_slices(lead_times, horizons).items():
        if positions.numel() == 0:
            result[label] = values.new_full(values.shape[:-1], math.nan)
        else:
            result[label] = values.index_select(-1, positions.to(values.device)).mean(dim=-1)
    return result
