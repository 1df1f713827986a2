r"""Isotropic power spectra of emulated fields and their per-band errors (method.md §8).

:func:`isotropic_power_spectrum` bins :math:`|\mathcal{F}u|^2` (orthonormal FFT over the
spatial axes) by radial wavenumber :math:`|k|` in cycles per cell, DC bin dropped;
:func:`spectral_rmse` compares a prediction's spectrum (an ensemble's: the mean of its
members') with the truth's in the low, mid and high bands of :func:`band_edges`. Tensors are
channels-first, ``(..., C, *spatial)``, as in :mod:`~lolaray.evaluation.metrics`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lolaray.evaluation.metrics import (
    as_float64,
    is_ensemble,
    spatial_axes,
)

__all__ = ["SPECTRAL_EPS", "band_edges", "isotropic_power_spectrum", "spectral_rmse"]

# Offset of the spectral ratio p_v / p_u (method.md §8), so empty high-k power is not 0/0.
SPECTRAL_EPS = 1e-6


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
    axes = spatial_axes(spatial_dims)
    u = as_float64(u)
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
    pred, truth = as_float64(pred), as_float64(truth)
    ensemble = is_ensemble(pred, truth)
    k, p_u = isotropic_power_spectrum(truth, spatial_dims=spatial_dims)
    _, p_v = isotropic_power_spectrum(pred, spatial_dims=spatial_dims)
    if ensemble:
        p_v = p_v.mean(dim=0)
    return band_errors(k, p_v, p_u)


def band_errors(k: Tensor, p_v: Tensor, p_u: Tensor) -> dict[str, Tensor]:
    """Band errors of :func:`spectral_rmse` from the spectra ``(..., B)`` at wavenumbers ``k``."""
    squared_error = (1 - (p_v + SPECTRAL_EPS) / (p_u + SPECTRAL_EPS)).square()
    e0, e1, e2, e3 = band_edges(k[0].item())
    bands = {"low": (e0, e1), "mid": (e1, e2), "high": (e2, e3)}
    return {
        name: squared_error[..., (k >= lo) & (k <= hi)].mean(dim=-1).sqrt()
        for name, (lo, hi) in bands.items()
    }
