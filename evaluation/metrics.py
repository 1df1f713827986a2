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
arrives in blocks come from the streaming :class:`EnsembleStatistics`, which the evaluation
stage uses and the tests check against the functions above. :data:`VRMSE_EPS` names the
two conventions for the ε of :func:`vrmse`.

.. note::
   ``the_well.benchmark.metrics`` computes the same point-wise scores but expects
   channels-last input and silently mis-reduces channels-first tensors; the tests
   cross-check :func:`vrmse` against it after moving the channel axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COVERAGE_LEVELS",
    "VRMSE_EPS",
    "EnsembleStatistics",
    "aggregate_by_horizon",
    "band_edges",
    "coverage",
    "crps",
    "ensemble_mean",
    "ensemble_scores",
    "horizon_slices",
    "isotropic_power_spectrum",
    "nrmse",
    "rank_histogram",
    "rmse",
    "sliced_emd",
    "spectral_rmse",
    "spread_skill",
    "vrmse",
    "wasserstein_1d",
]

# Offset of the spread-skill ratio, as in the reference notebooks (figures.ipynb): it keeps
# the ratio finite for a perfect, zero-spread prediction.
RATIO_OFFSET = 1e-3
# Offset of the spectral ratio p_v / p_u (method.md §8), so empty high-k power is not 0/0.
SPECTRAL_EPS = 1e-6
#: The ε on the spatial variance of :func:`vrmse`, per convention: the reference code of the
#: paper (LOLA) uses 1e-6, The Well's benchmark ``sqrt(MSE / (var + 1e-7))``.
VRMSE_EPS = {"lola": 1e-6, "well": 1e-7}
#: Nominal probabilities of the central intervals whose coverage is reported.
COVERAGE_LEVELS = (0.5, 0.9)


def _f64(x: Tensor) -> Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _spatial_axes(spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims < 1:
        raise ValueError(f"spatial_dims must be >= 1, got {spatial_dims}")
    return tuple(range(-spatial_dims, 0))


def _is_ensemble(pred: Tensor, truth: Tensor) -> bool:
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


def _point_prediction(pred: Tensor, truth: Tensor) -> Tensor:
    """The ensemble mean of an ensemble, the prediction itself otherwise (float64)."""
    pred = _f64(pred)
    return pred.mean(dim=0) if _is_ensemble(pred, truth) else pred


# --------------------------------------------------------------------------- point-wise


def ensemble_mean(ensemble: Tensor) -> Tensor:
    r"""Ensemble mean :math:`\bar v = \frac1K \sum_k v_k`.

    :param ensemble: members ``(K, ...)``.
    :returns: ``(...)``, float64.
    """
    return _f64(ensemble).mean(dim=0)


def _mse(pred: Tensor, truth: Tensor, spatial_dims: int) -> Tensor:
    axes = _spatial_axes(spatial_dims)
    truth = _f64(truth)
    return (truth - _point_prediction(pred, truth)).square().mean(dim=axes)


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
    truth = _f64(truth)
    energy = truth.square().mean(dim=_spatial_axes(spatial_dims))
    return (_mse(pred, truth, spatial_dims) / (energy + eps)).sqrt()


def vrmse(pred: Tensor, truth: Tensor, *, spatial_dims: int, eps: float = 1e-6) -> Tensor:
    r"""Variance-scaled RMSE :math:`\sqrt{\langle (u-\bar v)^2\rangle_s / (\mathrm{Var}_s(u) + \epsilon)}`.

    :math:`\mathrm{Var}_s` is the *unbiased* (:math:`N-1`) variance over the :math:`N`
    spatial points, as in the reference and in the_well; predicting the spatial mean
    therefore scores :math:`\sqrt{(N-1)/N} \approx 0.9999`, not exactly 1. Shapes as in
    :func:`rmse`; ``eps`` = 1e-6 as in the reference (the_well: 1e-7).
    """
    truth = _f64(truth)
    variance = truth.var(dim=_spatial_axes(spatial_dims), correction=1)
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
    ensemble, truth = _f64(ensemble), _f64(truth)
    if not _is_ensemble(ensemble, truth):
        raise ValueError("spread_skill needs an ensemble of shape (K, *truth.shape)")
    axes = _spatial_axes(spatial_dims)
    mean = ensemble.mean(dim=0)
    deviation = (ensemble - mean).square().mean(dim=0).mean(dim=axes)
    skill = (truth - mean).square().mean(dim=axes).sqrt()
    return _spread_skill_ratio(deviation, skill, members=ensemble.shape[0])


def _spread_skill_ratio(deviation: Tensor, skill: Tensor, *, members: int) -> tuple[Tensor, Tensor, Tensor]:
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
    ensemble, truth = _f64(ensemble), _f64(truth)
    if not _is_ensemble(ensemble, truth):
        raise ValueError("crps needs an ensemble of shape (K, *truth.shape)")
    axes = _spatial_axes(spatial_dims)
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
    ensemble, truth = _f64(ensemble), _f64(truth)
    if not _is_ensemble(ensemble, truth):
        raise ValueError("coverage needs an ensemble of shape (K, *truth.shape)")
    if not 0 < level < 1:
        raise ValueError(f"coverage level must lie in (0, 1), got {level}")
    ordered = ensemble.sort(dim=0).values
    low = _sorted_quantile(ordered, (1 - level) / 2)
    high = _sorted_quantile(ordered, (1 + level) / 2)
    inside = ((truth >= low) & (truth <= high)).to(torch.float64)
    return inside.mean(dim=_spatial_axes(spatial_dims))


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
    ensemble, truth = _f64(ensemble), _f64(truth)
    if not _is_ensemble(ensemble, truth):
        raise ValueError("rank_histogram needs an ensemble of shape (K, *truth.shape)")
    _spatial_axes(spatial_dims)
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


# --------------------------------------------------------------------------- spectra


@functools.lru_cache(maxsize=32)
def _spectral_bins(shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Radial binning of the half (rfftn) spectrum of a field of spatial ``shape``.

    Returns ``(bin_of_point, average_weight, k)``: for every point of the flattened
    half spectrum, its output bin (``-1`` for the dropped DC bin) and the weight that
    turns an ``index_add`` into the per-bin average of the *full* spectrum; ``k`` the
    upper edges of the kept bins. Cached because it depends on the shape only.
    """
    ndim = len(shape)
    freqs = [torch.fft.fftfreq(n, dtype=torch.float64) for n in shape[:-1]]
    freqs.append(torch.fft.rfftfreq(shape[-1], dtype=torch.float64))
    grids = torch.meshgrid(*freqs, indexing="ij")
    radius = torch.sqrt(sum(g.square() for g in grids)).flatten()

    # rfftn stores each column j with 0 < j < n/2 for itself and its conjugate mirror
    # (same |k|, same power): count it twice so averages equal those of the full fftn.
    last = shape[-1]
    column = torch.arange(last // 2 + 1)
    multiplicity = torch.where((column > 0) & (2 * column < last), 2.0, 1.0).to(torch.float64)
    multiplicity = multiplicity.expand(*shape[:-1], -1).flatten()

    n_bins = math.floor(math.sqrt(ndim) * min(shape) / 2)
    if n_bins < 1:
        raise ValueError(f"spatial shape {shape} is too small for an isotropic spectrum")
    edges = torch.linspace(0.0, radius.max().item(), n_bins + 1, dtype=torch.float64)
    # right=False is torch's right-inclusive convention: edges[i-1] < |k| <= edges[i];
    # bin 0 then holds |k| = 0 only (the DC component). Clamp guards the top edge's rounding.
    bins = torch.bucketize(radius, edges, right=False).clamp_(max=n_bins)
    counts = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, bins, multiplicity)

    # Drop the DC bin and bins that hold no wavenumber (possible on odd shapes): renumber
    # the kept bins 0..B-1 and send the others to -1.
    kept = counts > 0
    kept[0] = False
    new_index = torch.full((n_bins + 1,), -1, dtype=torch.long)
    new_index[kept] = torch.arange(int(kept.sum()))
    bin_of_point = new_index[bins]
    weight = multiplicity / counts[bins]
    return bin_of_point, weight, edges[kept]


def isotropic_power_spectrum(u: Tensor, *, spatial_dims: int) -> tuple[Tensor, Tensor]:
    r"""Isotropic (radially averaged) power spectrum, as in the reference ``fourier.py``.

    :math:`P(\mathbf k) = |\mathcal F_n(u)(\mathbf k)|^2` with the orthonormal FFT over the
    spatial axes; :math:`|\mathbf k| = \sqrt{\sum_i f_i^2}` with :math:`f_i` the FFT
    frequencies in cycles per pixel. :math:`B = \lfloor \sqrt{N} \min(\mathrm{shape})/2
    \rfloor` bins of equal width on :math:`[0, \max|\mathbf k|]` (:math:`N` = ``spatial_dims``),
    right-inclusive; :math:`P` is averaged per bin; the DC bin (:math:`|\mathbf k| = 0`)
    and any empty bin are dropped. Bins are precomputed once per spatial shape.

    :param u: ``(..., *spatial)``.
    :param spatial_dims: number of trailing spatial axes.
    :returns: ``(k, P)``: the upper bin edges ``(B',)`` and the spectrum ``(..., B')``,
        :math:`B' \le B` the number of kept bins.
    """
    axes = _spatial_axes(spatial_dims)
    u = _f64(u)
    shape = tuple(u.shape[-spatial_dims:])
    bin_of_point, weight, k = _spectral_bins(shape)
    bin_of_point, weight = bin_of_point.to(u.device), weight.to(u.device)

    power = torch.fft.rfftn(u, dim=axes, norm="ortho").abs().square()
    power = power.flatten(start_dim=-spatial_dims) * weight
    keep = bin_of_point >= 0
    spectrum = u.new_zeros(*u.shape[:-spatial_dims], k.numel())
    spectrum.index_add_(-1, bin_of_point[keep], power[..., keep])
    # A copy: k comes from the cache and must not be mutated through the result.
    return k.to(u.device, copy=True), spectrum


def band_edges(k0: float) -> tuple[float, float, float, float]:
    r"""Edges :math:`e = 2^{\mathrm{linspace}(\log_2 k_0,\, -1,\, 4)}` of the spectral bands.

    Bands: low :math:`[e_0, e_1]`, mid :math:`[e_1, e_2]`, high :math:`[e_2, 0.5]`
    (inclusive), with :math:`k_0` the lowest non-DC wavenumber bin and 0.5 the Nyquist
    frequency in cycles per pixel. For Euler (512²): ≈ 0.00195, 0.0124, 0.0787, 0.5.
    """
    exponents = torch.linspace(math.log2(k0), -1.0, 4, dtype=torch.float64)
    edges = [float(2.0**e) for e in exponents]
    # Pin the ends exactly: a rounding error on e_0 would drop the first bin from "low".
    edges[0], edges[-1] = float(k0), 0.5
    return tuple(edges)


def spectral_rmse(pred: Tensor, truth: Tensor, *, spatial_dims: int) -> dict[str, Tensor]:
    r"""Relative spectral error per frequency band.

    .. math::
        \mathrm{se}_p(k) = \Big(1 - \frac{p_v(k) + 10^{-6}}{p_u(k) + 10^{-6}}\Big)^2, \qquad
        \mathrm{band} = \sqrt{\operatorname{mean}_{k \in \mathrm{band}} \mathrm{se}_p(k)},

    with :math:`p_u` the isotropic spectrum of the truth and :math:`p_v` that of the
    prediction, or the mean of the members' spectra for an ensemble. Bands from
    :func:`band_edges` with :math:`k_0` the first bin; a band with no bin (tiny grids)
    is NaN.

    :param pred: prediction ``(..., C, *spatial)`` or ensemble ``(K, ..., C, *spatial)``.
    :param truth: ``(..., C, *spatial)``.
    :returns: ``{"low", "mid", "high"}`` → ``(..., C)``.
    """
    pred, truth = _f64(pred), _f64(truth)
    ensemble = _is_ensemble(pred, truth)
    k, p_u = isotropic_power_spectrum(truth, spatial_dims=spatial_dims)
    _, p_v = isotropic_power_spectrum(pred, spatial_dims=spatial_dims)
    if ensemble:
        p_v = p_v.mean(dim=0)
    return _band_errors(k, p_v, p_u)


def _band_errors(k: Tensor, p_v: Tensor, p_u: Tensor) -> dict[str, Tensor]:
    """Band errors of :func:`spectral_rmse` from the spectra ``(..., B)`` at wavenumbers ``k``."""
    squared_error = (1 - (p_v + SPECTRAL_EPS) / (p_u + SPECTRAL_EPS)).square()
    e0, e1, e2, e3 = band_edges(k[0].item())
    bands = {"low": (e0, e1), "mid": (e1, e2), "high": (e2, e3)}
    return {
        name: squared_error[..., (k >= lo) & (k <= hi)].mean(dim=-1).sqrt()
        for name, (lo, hi) in bands.items()
    }


# --------------------------------------------------------------------------- distributions


def wasserstein_1d(pred: Tensor, truth: Tensor, *, spatial_dims: int) -> Tensor:
    r"""1-D Wasserstein distance between the value distributions of two fields.

    Each field's :math:`N` spatial values are an empirical distribution;
    :math:`W_1 = \int |F_v^{-1}(q) - F_u^{-1}(q)|\,dq` in the field's units (paper Tables
    12–13: RB vertical velocity, TGC density), equal to ``scipy.stats.wasserstein_distance``.
    For an ensemble, the mean over members of each member's distance.

    :param pred: ``(..., C, *spatial)`` or ensemble ``(K, ..., C, *spatial)``.
    :param truth: ``(..., C, *spatial)``.
    :returns: ``(..., C)``.
    """
    pred, truth = _f64(pred), _f64(truth)
    ensemble = _is_ensemble(pred, truth)
    _spatial_axes(spatial_dims)  # validates spatial_dims
    # Equal sizes and uniform weights: the optimal coupling matches order statistics,
    # W1 = mean_i |v_(i) - u_(i)|, the value scipy gives, at the cost of sorts. The
    # truth is sorted once and broadcast against every member.
    sorted_v = pred.flatten(start_dim=-spatial_dims).sort(dim=-1).values
    sorted_u = truth.flatten(start_dim=-spatial_dims).sort(dim=-1).values
    distance = (sorted_v - sorted_u).abs().mean(dim=-1)
    return distance.mean(dim=0) if ensemble else distance


def _unit_directions(n_projections: int, seed: int) -> Tensor:
    """``(n_projections, 3)`` random directions, uniform on the sphere and deterministic in ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_projections, 3, generator=generator, dtype=torch.float64)
    return directions / directions.norm(dim=-1, keepdim=True)


def sliced_emd(pred: Tensor, truth: Tensor, *, n_projections: int = 64, seed: int = 0) -> Tensor:
    r"""Sliced earth mover's distance of 2-D scalar fields (paper Table 11, Euler density).

    A field of :math:`H \times W` values becomes the point cloud
    :math:`\{(x_i, y_j, u_{ij}/\sigma)\}` with positions normalised to :math:`[0, 1]`
    (:math:`x_i = i/(H-1)`, :math:`y_j = j/(W-1)`) and values divided by the truth's
    (unbiased) spatial standard deviation :math:`\sigma` (1 if the truth is constant), so
    that displacement and value errors weigh comparably and the score is unit-free. Both
    clouds hold the same :math:`HW` equally weighted points; for random unit directions
    :math:`\theta_1, \dots, \theta_L \in S^2` (seeded, hence deterministic),

    .. math::
        \mathrm{SEMD} = \frac1L \sum_l W_1\big(\theta_l \cdot X_v,\; \theta_l \cdot X_u\big),

    with :math:`W_1` the 1-D Wasserstein-1 distance of the projected clouds (mean absolute
    difference of their sorted projections, as in :func:`wasserstein_1d`). A small
    drift of a structure costs little, whereas point-wise errors would be large.

    :param pred: ``(..., H, W)`` or ensemble ``(K, ..., H, W)`` (then the mean over members).
    :param truth: ``(..., H, W)``.
    :param n_projections: number :math:`L` of random directions.
    :param seed: seed of the directions.
    :returns: ``(...)`` — e.g. ``(..., C)`` for channels-first fields.
    """
    pred, truth = _f64(pred), _f64(truth)
    ensemble = _is_ensemble(pred, truth)
    height, width = truth.shape[-2:]

    scale = truth.flatten(start_dim=-2).std(dim=-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))[..., None, None]
    values_v = pred.flatten(start_dim=-2)[..., None, :] / scale  # (K?, ..., 1, HW)
    values_u = truth.flatten(start_dim=-2)[..., None, :] / scale  # (..., 1, HW)

    positions = torch.stack(
        torch.meshgrid(
            torch.linspace(0, 1, height, dtype=torch.float64, device=pred.device),
            torch.linspace(0, 1, width, dtype=torch.float64, device=pred.device),
            indexing="ij",
        ),
    ).reshape(2, height * width)
    directions = _unit_directions(n_projections, seed).to(pred.device)

    # Projections are laid out (..., L, HW) so each sort runs along a contiguous axis, and
    # the truth's projections are sorted once and broadcast against every member. Chunks
    # of directions bound the memory of a batch of large fields.
    chunk = max(1, (1 << 24) // max(1, values_v.numel()))
    total = values_v.new_zeros(torch.broadcast_shapes(values_v.shape, values_u.shape)[:-2])
    for start in range(0, n_projections, chunk):
        theta = directions[start : start + chunk]  # (l, 3)
        offset = theta[:, :2] @ positions  # (l, HW), the same for both clouds
        sorted_v = (offset + values_v * theta[:, 2:]).sort(dim=-1).values
        sorted_u = (offset + values_u * theta[:, 2:]).sort(dim=-1).values
        total += (sorted_v - sorted_u).abs().mean(dim=-1).sum(dim=-1)
    distance = total / n_projections
    return distance.mean(dim=0) if ensemble else distance


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
    values = _f64(values)
    if values.shape[-1] != torch.as_tensor(lead_times).numel():
        raise ValueError(f"values have {values.shape[-1]} time entries but {len(lead_times)} lead times")
    result = {}
    for label, positions in horizon_slices(lead_times, horizons).items():
        if positions.numel() == 0:
            result[label] = values.new_full(values.shape[:-1], math.nan)
        else:
            result[label] = values.index_select(-1, positions.to(values.device)).mean(dim=-1)
    return result


# --------------------------------------------------------------------------- streaming


class EnsembleStatistics:
    r"""Streaming sufficient statistics of an ensemble, for members that arrive in blocks.

    Holds :math:`K`, :math:`\sum_k v_k`, :math:`\sum_k v_k^2` and :math:`\sum_k P(v_k)` (the
    members' isotropic power spectra), in float64, so that an ensemble too large for one
    process is scored from its blocks: blocks are :meth:`add`-ed or :meth:`merge`-d (in a
    fixed order, so the sums do not depend on how members were split) and the point scores
    follow. Equal, up to rounding, to :func:`vrmse`, :func:`nrmse`, :func:`spread_skill` and
    :func:`spectral_rmse` on the whole ensemble (the tests check it on random data).

    :param spatial_dims: number of trailing spatial axes of the members.
    """

    def __init__(self, *, spatial_dims: int):
        _spatial_axes(spatial_dims)
        self.spatial_dims = spatial_dims
        self.count = 0
        self.sum: Tensor | None = None
        self.sum_squares: Tensor | None = None
        self.sum_spectra: Tensor | None = None

    def add(self, members: Tensor) -> EnsembleStatistics:
        """Add a block of members ``(k, ..., C, *spatial)``; returns ``self``."""
        members = _f64(members)
        _, spectra = isotropic_power_spectrum(members, spatial_dims=self.spatial_dims)
        return self._accumulate(members.shape[0], members.sum(0), members.square().sum(0), spectra.sum(0))

    def merge(self, other: EnsembleStatistics) -> EnsembleStatistics:
        """Add the statistics of another block; returns ``self``."""
        if other.spatial_dims != self.spatial_dims:
            raise ValueError("cannot merge statistics of different spatial dimensions")
        if other.count == 0:
            return self
        return self._accumulate(other.count, other.sum, other.sum_squares, other.sum_spectra)

    def _accumulate(self, count: int, total: Tensor, squares: Tensor, spectra: Tensor) -> EnsembleStatistics:
        if self.count == 0:
            self.sum, self.sum_squares, self.sum_spectra = total.clone(), squares.clone(), spectra.clone()
        else:
            if total.shape != self.sum.shape:
                raise ValueError(
                    f"block of shape {tuple(total.shape)} does not match {tuple(self.sum.shape)}"
                )
            self.sum += total
            self.sum_squares += squares
            self.sum_spectra += spectra
        self.count += int(count)
        return self

    def to_dict(self) -> dict:
        """Plain numpy arrays (for Ray transfer); inverse of :meth:`from_dict`."""
        return {
            "count": self.count,
            "spatial_dims": self.spatial_dims,
            "sum": self.sum.numpy(),
            "sum_squares": self.sum_squares.numpy(),
            "sum_spectra": self.sum_spectra.numpy(),
        }

    @classmethod
    def from_dict(cls, state: dict) -> EnsembleStatistics:
        stats = cls(spatial_dims=int(state["spatial_dims"]))
        return stats._accumulate(
            int(state["count"]),
            _f64(torch.from_numpy(np.asarray(state["sum"]))),
            _f64(torch.from_numpy(np.asarray(state["sum_squares"]))),
            _f64(torch.from_numpy(np.asarray(state["sum_spectra"]))),
        )

    def _check(self, truth: Tensor) -> Tensor:
        if self.count == 0:
            raise ValueError("no members were added")
        truth = _f64(truth)
        if truth.shape != self.sum.shape:
            raise ValueError(
                f"truth of shape {tuple(truth.shape)} for members of shape {tuple(self.sum.shape)}"
            )
        return truth

    def mean(self) -> Tensor:
        r"""The ensemble mean :math:`\bar v`, ``(..., C, *spatial)``."""
        return self.sum / self.count

    def vrmse(self, truth: Tensor, *, eps: float = 1e-6) -> Tensor:
        """:func:`vrmse` of the ensemble mean, ``(..., C)``."""
        return vrmse(self.mean(), self._check(truth), spatial_dims=self.spatial_dims, eps=eps)

    def nrmse(self, truth: Tensor, *, eps: float = 1e-6) -> Tensor:
        """:func:`nrmse` of the ensemble mean, ``(..., C)``."""
        return nrmse(self.mean(), self._check(truth), spatial_dims=self.spatial_dims, eps=eps)

    def spread_skill(self, truth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r""":func:`spread_skill` from the moments: :math:`\frac1K\sum_k (v_k - \bar v)^2 =
        \frac1K\sum_k v_k^2 - \bar v^2` (clamped at 0 against rounding)."""
        truth = self._check(truth)
        axes = _spatial_axes(self.spatial_dims)
        mean = self.mean()
        deviation = (self.sum_squares / self.count - mean.square()).clamp_min(0).mean(dim=axes)
        skill = (truth - mean).square().mean(dim=axes).sqrt()
        return _spread_skill_ratio(deviation, skill, members=self.count)

    def spectral_rmse(self, truth: Tensor) -> dict[str, Tensor]:
        """:func:`spectral_rmse` of the ensemble (mean of the members' spectra)."""
        k, p_u = isotropic_power_spectrum(self._check(truth), spatial_dims=self.spatial_dims)
        return _band_errors(k, self.sum_spectra / self.count, p_u)
