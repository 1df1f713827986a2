r"""Distances between the value distributions of two fields (paper Tables 11–13).

:func:`wasserstein_1d` compares the values of one field (Rayleigh–Bénard's vertical
velocity, the density of turbulence_gravity_cooling); :func:`sliced_emd` the joint values
of all fields, projected on random directions (Euler). Tensors are channels-first, as in
:mod:`~lolaray.evaluation.metrics`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lolaray.evaluation.metrics import (
    as_float64,
    is_ensemble,
    spatial_axes,
)

__all__ = ["sliced_emd", "wasserstein_1d"]


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
    pred, truth = as_float64(pred), as_float64(truth)
    ensemble = is_ensemble(pred, truth)
    spatial_axes(spatial_dims)  # validates spatial_dims
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
    pred, truth = as_float64(pred), as_float64(truth)
    ensemble = is_ensemble(pred, truth)
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
