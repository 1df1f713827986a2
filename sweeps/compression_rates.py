r"""Compression rates as latent channel counts: what ``--compression-rates 80,320,1280`` trains.

The rate of an autoencoder is :math:`\div = \mathrm{numel}(x) / \mathrm{numel}(z)` for a state
:math:`x` of shape ``(C, *spatial)`` and its code :math:`z` of shape ``(C_lat, *spatial/r)``:
:math:`\div = C \cdot r^d / C_\mathrm{lat}` for ``r`` the autoencoder's factor per axis and
``d`` the grid's dimension. Known (conditioning) channels are given, not compressed: they
count in neither. The geometry is the trainer's own
(:func:`~lolaray.trainers.autoencoder_trainer.latent_geometry`, after
:meth:`~lolaray.trainers.autoencoder_trainer.AutoencoderConfig.validate`): a rate maps to
``C_lat = ÷₁ / ÷`` for ``÷₁`` the rate at one latent channel, and a rate for which that is
not a positive integer is refused, naming the nearest rates the geometry reaches::

    >>> latent_channels_for_rates([20, 80], config, info)  # 5 fields, 32², preset demo (r = 8)
    (16, 4)
    >>> latent_channels_for_rates([100], config, info)
    ValueError: ÷100 is not reachable with 5 fields and 4×4 latents of a 32² grid (preset 'demo',
    r=8): C_lat = 3.2; nearest rates ÷106.67 (C_lat 3) and ÷80 (C_lat 4)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lolaray.platform.data import DatasetInfo
from lolaray.platform.dataset_specs import DatasetSpec, DatasetSpecError
from lolaray.trainers.autoencoder import spatial_factor
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, latent_geometry

if TYPE_CHECKING:
    from lolaray.sweeps.chain import Profile

__all__ = ["SPEC_RATES", "format_rate", "latent_channels_for_rates", "parse_rates", "study_rates"]

#: ``--compression-rates spec`` / ``Profile(compression_rates="spec")``: the dataset spec's
#: rates (:attr:`~lolaray.platform.dataset_specs.DatasetSpec.compression_rates`, the paper's).
SPEC_RATES = "spec"


def format_rate(rate: float) -> str:
    """``80.0`` → ``"÷80"``, ``106.666…`` → ``"÷106.67"``."""
    if float(rate).is_integer():
        return f"÷{int(rate)}"
    return "÷" + f"{rate:.2f}".rstrip("0").rstrip(".")


def parse_rates(text: str) -> tuple[float, ...] | str:
    """The value of ``--compression-rates``: ``"5,20,80"`` → ``(5.0, 20.0, 80.0)``, or
    :data:`SPEC_RATES`. Positivity is checked by :func:`latent_channels_for_rates`.

    :raises ValueError: not numbers separated by commas (the message names the option).
    """
    if text.strip().lower() == SPEC_RATES:
        return SPEC_RATES
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"--compression-rates takes rates separated by commas (5,20,80) or {SPEC_RATES!r}, got {text!r}"
        ) from None


def _grid(sizes: Sequence[int]) -> str:
    """``(32, 32)`` → ``32²``, ``(64, 64, 64)`` → ``64³``, ``(512, 128)`` → ``512×128``."""
    if len(set(sizes)) == 1 and len(sizes) in (2, 3):
        return f"{sizes[0]}{'²' if len(sizes) == 2 else '³'}"
    return "×".join(map(str, sizes))


def latent_channels_for_rates(
    rates: Sequence[float], config: AutoencoderConfig, info: DatasetInfo
) -> tuple[int, ...]:
    r"""The latent channel count of each compression rate, for ``config``'s autoencoder on ``info``.

    :param rates: compression rates :math:`\mathrm{numel}(x)/\mathrm{numel}(z)`, each > 0.
    :param config: the autoencoder (its preset sets ``r``; its ``latent_channels`` is ignored).
    :param info: the dataset's geometry (fields and grid; no data is read).
    :returns: ``C_lat`` per rate, in the order of ``rates``.
    :raises ValueError: no rates, a rate that is not > 0, a config the trainer would refuse on
        ``info`` (a preset of the wrong dimension), or a rate the
        geometry cannot give exactly (``C_lat`` not a positive integer; the message names the
        nearest rates it can give).
    """
    rates = tuple(rates)
    if not rates:
        raise ValueError("the compression rate list is empty: pass --compression-rates R[,R...]")
    bad = [rate for rate in rates if not (math.isfinite(rate) and rate > 0)]
    if bad:
        raise ValueError(f"compression rates must be > 0, got {', '.join(map(str, bad))}")
    unit = dataclasses.replace(config, latent_channels=1)
    unit.validate(info)
    latent_shape, top = latent_geometry(unit, info)  # ÷₁ = C · r^d, the rate at C_lat = 1
    grid = latent_shape[1:]
    r = spatial_factor(unit.model_kwargs(info)["hidden_channels"])  # the network's factor
    known = f" (+ {info.n_known} known, not counted)" if info.n_known else ""
    where = (
        f"with {info.n_fields} fields{known} and {'×'.join(map(str, grid))} latents of a "
        f"{_grid(info.resolution)} grid (preset {config.preset!r}, r={r})"
    )
    channels = []
    for rate in rates:
        exact = top / rate
        count = round(exact)
        if count >= 1 and math.isclose(top / count, rate, rel_tol=1e-9):
            channels.append(count)
            continue
        below = math.floor(exact)
        if below < 1:
            nearest = f"the highest rate reachable is {format_rate(top)} (C_lat 1)"
        else:
            nearest = (
                f"nearest rates {format_rate(top / below)} (C_lat {below}) and "
                f"{format_rate(top / (below + 1))} (C_lat {below + 1})"
            )
        raise ValueError(f"{format_rate(rate)} is not reachable {where}: C_lat = {exact:.4g}; {nearest}")
    return tuple(channels)


def study_rates(
    profile: Profile, spec: DatasetSpec, rates: Sequence[float] | str | None = None
) -> tuple[float, ...] | None:
    """The compression rates a study derives its latent channels from: ``rates`` (the
    command line's), else the profile's
    (:attr:`~lolaray.sweeps.chain.Profile.compression_rates`); :data:`SPEC_RATES` stands for
    the dataset spec's.

    :returns: the rates, or ``None`` when neither asks for rates (the study takes the
        profile's ``latent_channels``).
    :raises DatasetSpecError: :data:`SPEC_RATES` for a dataset whose spec gives no rates.
    """
    rates = profile.compression_rates if rates is None else rates
    if rates is None:
        return None
    if isinstance(rates, str):
        if rates != SPEC_RATES:
            raise ValueError(f"compression rates must be numbers or {SPEC_RATES!r}, got {rates!r}")
        if not spec.compression_rates:
            raise DatasetSpecError(
                f"the dataset settings of {spec.name} ({spec.source}) give no compression rates: "
                "pass --compression-rates R[,R...] or --latent-channels C [C ...]"
            )
        return tuple(float(rate) for rate in spec.compression_rates)
    return tuple(float(rate) for rate in rates)
