"""Per-field transforms and standardization (method.md §1), with an exact inverse.

A state ``x`` with fields on one channel axis is mapped to ``(T_c(x_c) − μ_c) / σ_c`` per
channel ``c``, where ``T_c`` is the field's transform (``log1p`` for non-negative Euler
fields, ``log(x + 1e-6)`` for the gravity-cooling ones, identity otherwise) and ``μ``,
``σ`` are statistics of the transformed train split. Metrics are computed after
:meth:`Standardizer.inverse`, in physical units.

The conditioning vector ``θ = [parameters..., boundary codes]`` stays in physical units
everywhere (data, latent caches, rollouts, tables); :class:`ThetaStandardizer` says how
the emulators' label embedding standardizes it, ``(ln? θ_i − μ_i) / σ_i`` per parameter
with the boundary codes raw, and is saved inside the network (never inverted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = [
    "KNOWN_PREPROCESSING",
    "TRANSFORMS",
    "Standardizer",
    "ThetaStandardizer",
    "fit_standardizer",
    "fit_theta_standardizer",
]

#: name -> (forward, inverse) on tensors.
TRANSFORMS = {
    "none": (lambda x: x, lambda y: y),
    "log1p": (torch.log1p, torch.expm1),
    "log_eps": (lambda x: torch.log(x + 1e-6), lambda y: torch.exp(y) - 1e-6),
}

#: Transforms (and, for The Well's datasets, the paper's statistics after the transform) per dataset.
#: ``mean``/``std`` of ``None`` means "fit them on the train split".
KNOWN_PREPROCESSING: dict[str, dict] = {
    "euler_quadrants": {"transforms": ("log1p", "log1p", "log1p", "none", "none"), "mean": None, "std": None},
    "euler_multi_quadrants_openBC": {
        "transforms": ("log1p", "log1p", "log1p", "none", "none"),
        "mean": (1.20, 0.60, 0.58, 0.0, 0.0),
        "std": (0.51, 0.27, 0.29, 0.53, 0.52),
    },
    "euler_multi_quadrants_periodicBC": {
        "transforms": ("log1p", "log1p", "log1p", "none", "none"),
        "mean": (1.20, 0.60, 0.58, 0.0, 0.0),
        "std": (0.51, 0.27, 0.29, 0.53, 0.52),
    },
    "rayleigh_benard": {
        "transforms": ("none", "none", "none", "none"),
        "mean": (0.38, 0.01, 0.0, 0.0),
        "std": (0.25, 0.15, 0.21, 0.18),
    },
    "turbulence_gravity_cooling": {
        "transforms": ("log_eps", "log_eps", "log_eps", "none", "none", "none"),
        "mean": (-1.75, -4.20, 5.50, 0.0, 0.0, 0.0),
        "std": (0.95, 1.75, 1.10, 0.5, 0.5, 0.5),
    },
}


@dataclass(frozen=True)
class Standardizer:
    """Per-channel transform + z-score, and its inverse.

    :param field_names: channel names, in channel order.
    :param transforms: one key of :data:`TRANSFORMS` per channel.
    :param mean, std: statistics of the transformed fields, one per channel.
    """

    field_names: tuple[str, ...]
    transforms: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        n = len(self.field_names)
        for name in ("transforms", "mean", "std"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Standardizer: {name} has {len(getattr(self, name))} entries for {n} fields"
                )
        unknown = sorted(set(self.transforms) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"unknown transform(s) {unknown}; known: {sorted(TRANSFORMS)}")
        if min(self.std) <= 0:
            raise ValueError(f"standard deviations must be positive, got {self.std}")

    def _stats(self, x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = [1] * x.ndim
        shape[channel_dim] = -1
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def _per_channel(self, x: torch.Tensor, channel_dim: int, which: int) -> torch.Tensor:
        if x.shape[channel_dim] != len(self.field_names):
            raise ValueError(
                f"expected {len(self.field_names)} channels ({', '.join(self.field_names)}) on dim {channel_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        channels = x.unbind(channel_dim)
        return torch.stack([TRANSFORMS[t][which](c) for t, c in zip(self.transforms, channels)], channel_dim)

    def forward(self, x: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
        """Physical fields → standardized: ``(T_c(x_c) − μ_c)/σ_c`` along ``channel_dim``."""
        mean, std = self._stats(x, channel_dim)
        return (self._per_channel(x, channel_dim, 0) - mean) / std

    def inverse(self, y: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
        """Standardized → physical fields: ``T_c⁻¹(σ_c y_c + μ_c)``."""
        mean, std = self._stats(y, channel_dim)
        return self._per_channel(y * std + mean, channel_dim, 1)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Standardizer:
        return cls(**{k: tuple(v) for k, v in d.items()})


def fit_standardizer(
    states: Iterable[torch.Tensor],
    *,
    field_names: Sequence[str],
    transforms: Sequence[str],
) -> Standardizer:
    """Statistics of transformed states as the reference computes them (method.md §1).

    Each state ``(C, *spatial)`` contributes its per-channel spatial means of ``x`` and
    ``x²`` (after the transform); these are averaged over states and
    ``σ = sqrt(E[x²] − E[x]²)``.

    :param states: an iterable of single states ``(C, *spatial)`` in physical units.
    """
    identity = Standardizer(
        tuple(field_names), tuple(transforms), (0.0,) * len(field_names), (1.0,) * len(field_names)
    )
    first = second = None
    count = 0
    for state in states:
        y = identity.forward(state.double(), channel_dim=0).flatten(1)
        m1, m2 = y.mean(1), (y**2).mean(1)
        first = m1 if first is None else first + m1
        second = m2 if second is None else second + m2
        count += 1
    if count == 0:
        raise ValueError("cannot fit standardization statistics on zero states")
    mean = first / count
    std = (second / count - mean**2).clamp_min(1e-12).sqrt()
    return Standardizer(tuple(field_names), tuple(transforms), tuple(mean.tolist()), tuple(std.tolist()))


@dataclass(frozen=True)
class ThetaStandardizer:
    """How the emulators standardize ``θ = [parameters..., boundary codes]``: parameter
    ``i`` becomes ``(T_i(θ_i) − μ_i) / σ_i`` with ``T_i = ln`` where ``log[i]``; the
    boundary codes (small integers) enter raw.

    :param parameter_names: in θ order.
    :param log: per parameter, whether it enters as its natural logarithm.
    :param mean, std: per parameter, of the transformed values over the train split's
        trajectories (``std`` 1 for a parameter constant there).
    :param boundary_codes: entries after the parameters (two per spatial axis).
    """

    parameter_names: tuple[str, ...]
    log: tuple[bool, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    boundary_codes: int

    def label_standardization(self) -> dict:
        """The ``log``/``mean``/``std`` keywords of
        :class:`~lolaray.trainers.transformer.LabelEmbedding`, over the whole of θ."""
        codes = self.boundary_codes
        return {
            "log": [*self.log, *([False] * codes)],
            "mean": [*self.mean, *([0.0] * codes)],
            "std": [*self.std, *([1.0] * codes)],
        }

    def describe(self) -> str:
        """One line for the start of a study, e.g. ``θ: ln rayleigh (μ 17.3, σ 1.2), ...``."""
        parts = [
            f"{'ln ' if log else ''}{name} (μ {mean:.3g}, σ {std:.3g})"
            for name, log, mean, std in zip(self.parameter_names, self.log, self.mean, self.std)
        ]
        return (
            "θ standardized from the train split: "
            + (", ".join(parts) or "no parameters")
            + (f"; {self.boundary_codes} boundary codes raw")
        )

    def to_dict(self) -> dict:
        return {
            **{k: list(v) for k, v in asdict(self).items() if k != "boundary_codes"},
            "boundary_codes": self.boundary_codes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ThetaStandardizer:
        return cls(
            parameter_names=tuple(d["parameter_names"]),
            log=tuple(bool(v) for v in d["log"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            boundary_codes=int(d["boundary_codes"]),
        )


def fit_theta_standardizer(
    values: np.ndarray,
    *,
    parameter_names: Sequence[str],
    log_parameters: Sequence[str],
    boundary_codes: int,
) -> ThetaStandardizer:
    """Statistics of the parameters of the train split's trajectories.

    :param values: ``(trajectories, parameters)``, one row per train trajectory.
    :param log_parameters: names of ``parameter_names`` that enter as logarithms.
    :raises ValueError: an unknown name in ``log_parameters``, or a logged parameter with a
        value ``<= 0``.
    """
    names = tuple(parameter_names)
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(names))
    unknown = sorted(set(log_parameters) - set(names))
    if unknown:
        raise ValueError(
            f"log parameter(s) {unknown} are not parameters of the data ({', '.join(names) or 'none'})"
        )
    log = tuple(name in set(log_parameters) for name in names)
    mean, std = [], []
    for i, name in enumerate(names):
        column = values[:, i]
        if log[i]:
            if (column <= 0).any():
                raise ValueError(
                    f"parameter {name!r} takes values <= 0 ({column.min():g}): it cannot enter θ as a log"
                )
            column = np.log(column)
        m = float(column.mean()) if len(column) else 0.0
        s = float(column.std()) if len(column) else 0.0
        mean.append(m)
        # A parameter constant over the train split carries no information: θ̃ = 0 for it.
        std.append(s if s > 1e-9 * max(1.0, abs(m)) and math.isfinite(s) else 1.0)
    return ThetaStandardizer(names, log, tuple(mean), tuple(std), int(boundary_codes))
