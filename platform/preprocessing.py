"""Per-field transforms and standardization (method.md §1), with an exact inverse.

A state ``x`` with fields on one channel axis is mapped to ``(T_c(x_c) − μ_c) / σ_c`` per
channel ``c``, where ``T_c`` is the field's transform (``log1p`` for non-negative Euler
fields, ``log(x + 1e-6)`` for the gravity-cooling ones, identity otherwise) and ``μ``,
``σ`` are statistics of the transformed train split. Metrics are computed after
:meth:`Standardizer.inverse`, in physical units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

__all__ = ["KNOWN_PREPROCESSING", "TRANSFORMS", "Standardizer", "fit_standardizer"]

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
