r"""Streaming scores of an ensemble whose members arrive in blocks.

The rollout actors (:mod:`~lolaray.evaluation.rollout_actor`) score an ensemble block by
block: :class:`EnsembleStatistics` keeps its sufficient statistics, so the point scores of
the whole ensemble follow from its blocks in any split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lolaray.evaluation.metrics import (
    as_float64,
    nrmse,
    spatial_axes,
    spread_skill_ratio,
    vrmse,
)
from lolaray.evaluation.spectra import band_errors, isotropic_power_spectrum

__all__ = ["EnsembleStatistics"]


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
        spatial_axes(spatial_dims)
        self.spatial_dims = spatial_dims
        self.count = 0
        self.sum: Tensor | None = None
        self.sum_squares: Tensor | None = None
        self.sum_spectra: Tensor | None = None

    def add(self, members: Tensor) -> EnsembleStatistics:
        """Add a block of members ``(k, ..., C, *spatial)``; returns ``self``."""
        members = as_float64(members)
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
            as_float64(torch.from_numpy(np.asarray(state["sum"]))),
            as_float64(torch.from_numpy(np.asarray(state["sum_squares"]))),
            as_float64(torch.from_numpy(np.asarray(state["sum_spectra"]))),
        )

    def _check(self, truth: Tensor) -> Tensor:
        if self.count == 0:
            raise ValueError("no members were added")
        truth = as_float64(truth)
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
        axes = spatial_axes(self.spatial_dims)
        mean = self.mean()
        deviation = (self.sum_squares / self.count - mean.square()).clamp_min(0).mean(dim=axes)
        skill = (truth - mean).square().mean(dim=axes).sqrt()
        return spread_skill_ratio(deviation, skill, members=self.count)

    def spectral_rmse(self, truth: Tensor) -> dict[str, Tensor]:
        """:func:`spectral_rmse` of the ensemble (mean of the members' spectra)."""
        k, p_u = isotropic_power_spectrum(self._check(truth), spatial_dims=self.spatial_dims)
        return band_errors(k, self.sum_spectra / self.count, p_u)
