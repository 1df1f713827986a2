r"""Bootstrap intervals over the scored trajectories, paired across methods.

A study scores every method on the same test trajectories (and start states): its units.
A figure of the study — a mean VRMSE, a ratio of two methods' means, the relative range of
a method's means over the compression rates — is a statistic :math:`T` of the per-unit
values of one or more methods. Its percentile bootstrap interval at level :math:`1 - \alpha`
resamples the :math:`n` units with replacement :math:`B` times, with **the same resampled
units for every method** (so a comparison of two methods is paired: a trajectory that is
hard for both moves both), recomputes :math:`T` on each resample and takes the
:math:`\alpha/2` and :math:`1 - \alpha/2` quantiles:

.. math:: [\,T^*_{(\alpha/2)},\; T^*_{(1-\alpha/2)}\,].

Statistics here are functions of per-method **means over units** (every figure of the
study's tables is one), so :func:`bootstrap_means` draws the resampled means once, as a
``(B, ...)`` batch, and calls the statistic on the batch: vectorized, no Python loop over
resamples. The draw is seeded, so a study's intervals are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "MIN_UNITS", "Interval", "bootstrap_means"]

#: Two-sided level of the study's intervals: each end is a one-sided 95 % bound.
DEFAULT_LEVEL = 0.9
#: Resamples per interval: the quantiles' Monte-Carlo error is ~0.5 % of the interval's width.
DEFAULT_RESAMPLES = 2000
#: Fewer units than this give no interval (a bootstrap of 2 or 3 values is no interval at all).
MIN_UNITS = 4


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap interval (arrays of the statistic's shape).

    :ivar estimate: the statistic on the units as scored.
    :ivar low, high: the interval's ends (NaN where there were fewer than :data:`MIN_UNITS`).
    :ivar units: the number of units resampled.
    :ivar level: the two-sided level.
    """

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    units: int
    level: float

    @property
    def defined(self) -> bool:
        """Whether there were enough units for an interval."""
        return self.units >= MIN_UNITS

    def text(self, index=(), digits: int = 3) -> str:
        """``"0.358 [0.312, 0.401]"`` of one element (``"0.358 [n=2]"`` without an interval)."""
        estimate = float(np.asarray(self.estimate)[index])
        if not self.defined:
            return f"{estimate:.{digits}f} [n={self.units}]"
        low, high = (float(np.asarray(v)[index]) for v in (self.low, self.high))
        return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def bootstrap_means(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    r"""Percentile bootstrap interval of ``statistic(*means)``, the units paired across samples.

    :param samples: per-unit values of each method, arrays ``(n, ...)`` with the same ``n``
        units in the same order (unit ``i`` of every array is the same trajectory).
    :param statistic: a function of the samples' means over units, each ``(..., *shape)``
        with any leading batch axes, returning an array with the same leading axes (it is
        called once on the means as scored and once on a ``(B, ...)`` batch of resampled means).
    :param resamples: :math:`B`.
    :param level: the two-sided level :math:`1 - \alpha`.
    :param seed: seeds the resampling (``numpy.random.default_rng``).
    :returns: the :class:`Interval`; its ends are NaN with fewer than :data:`MIN_UNITS` units.
    :raises ValueError: no sample, samples with different numbers of units, or a level
        outside (0, 1).
    """
    if not samples:
        raise ValueError("bootstrap_means needs at least one sample")
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"paired samples need the same units: got {[a.shape[0] for a in arrays]} units")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    estimate = np.asarray(statistic(*(a.mean(axis=0) for a in arrays)), dtype=np.float64)
    if n < MIN_UNITS:
        nan = np.full_like(estimate, np.nan)
        return Interval(estimate, nan, nan.copy(), n, level)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    # Resampled means: the sum of the drawn units' values, through a count matrix (B, n), so
    # one matrix product does every resample of a sample at once.
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    means = [np.tensordot(counts, a, axes=(1, 0)) / n for a in arrays]
    values = np.asarray(statistic(*means), dtype=np.float64)
    alpha = 1.0 - level
    low, high = np.nanquantile(values, [alpha / 2, 1 - alpha / 2], axis=0)
    return Interval(estimate, low, high, n, level)
