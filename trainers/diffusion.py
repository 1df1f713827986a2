r"""Diffusion: noise schedules, EDM preconditioning, loss and context masks (method.md §5).

A schedule gives :math:`(\alpha_t, \sigma_t)` for :math:`t \in [0, 1]` and the
perturbation kernel :math:`x_t = \alpha_t x + \sigma_t \varepsilon`. The denoiser
:math:`d_\phi(x_t, t) \approx \mathbb{E}[x \mid x_t]` is trained by denoising score
matching, its known (context) entries being given clean, as in Eq. (7) of the paper.

Masks are boolean, ``True`` = known (context) entry. A time mask of shape
:math:`(B, T)` is broadcast over channels and space. States whose last :math:`K` channels
are known (constant fields, time-varying scalars: given, never predicted) take a
channel-and-time mask (:func:`known_channel_mask`), those channels known at every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .transformer import LabelEmbedding, SineEncoding

__all__ = [
    "ElucidatedDenoiser",
    "LogLinearSchedule",
    "LogLogitSchedule",
    "Schedule",
    "TimeEmbedding",
    "context_mask",
    "context_pmf",
    "denoiser_loss",
    "expand_mask",
    "known_channel_mask",
    "sample_context_mask",
    "time_mask",
]


# ---------------------------------------------------------------------------- schedules


class Schedule(nn.Module):
    r"""Abstract noise schedule :math:`t \mapsto (\alpha_t, \sigma_t)`, with
    :math:`\alpha_t / \sigma_t` decreasing in :math:`t \in [0, 1]`."""

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns :math:`(\alpha_t, \sigma_t)`, each of the shape and dtype of :math:`t`."""

        raise NotImplementedError


class LogLogitSchedule(Schedule):
    r"""Variance-exploding log-logit schedule (the paper's rectified flow, default).

    .. math::
        u_t = u_\min + t (u_\max - u_\min), \quad
        \alpha_t = 1, \quad
        \sigma_t = \exp(s \,\mathrm{logit}(u_t) + \text{shift})

    with :math:`u_\min = \sigma_\min / (1 + \sigma_\min)` and :math:`u_\max = \sigma_\max
    / (1 + \sigma_\max)`, so that :math:`\sigma_0 = \sigma_\min` and :math:`\sigma_1 =
    \sigma_\max` when :math:`s = 1`, shift :math:`= 0`. Then :math:`\sigma_t = u_t / (1 -
    u_t)`: the rectified flow :math:`x_u = (1 - u) x + u \varepsilon` of the paper
    (:math:`\alpha = 1 - t, \sigma = t`) divided by :math:`1 - u`, which leaves the
    probability-flow ODE trajectories unchanged.

    Arguments:
        sigma_min: The smallest noise level :math:`\sigma_0`.
        sigma_max: The largest noise level :math:`\sigma_1`.
        scale: The logit scale :math:`s`.
        shift: The log-noise shift.
    """

    def __init__(
        self,
        sigma_min: float = 1e-3,
        sigma_max: float = 1e3,
        *,
        scale: float = 1.0,
        shift: float = 0.0,
    ):
        super().__init__()

        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")

        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.scale, self.shift = float(scale), float(shift)
        self.u_min = sigma_min / (1 + sigma_min)
        self.u_max = sigma_max / (1 + sigma_max)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = self.u_min + t * (self.u_max - self.u_min)
        sigma = torch.exp(self.scale * torch.logit(u) + self.shift)
        return torch.ones_like(sigma), sigma


class LogLinearSchedule(Schedule):
    r"""Variance-exploding log-linear schedule (option).

    .. math:: \alpha_t = 1, \quad \sigma_t = \exp((1 - t) \ln\sigma_\min + t \ln\sigma_\max)

    Arguments:
        sigma_min: The smallest noise level :math:`\sigma_0`.
        sigma_max: The largest noise level :math:`\sigma_1`.
    """

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1e3):
        super().__init__()

        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")

        self.log_min, self.log_max = math.log(sigma_min), math.log(sigma_max)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = torch.exp(self.log_min + t * (self.log_max - self.log_min))
        return torch.ones_like(sigma), sigma


# ------------------------------------------------------------------------------- masks


def context_pmf(length: int, *, distribution: str = "paper", rate: float | None = None) -> Tensor:
    r"""Returns the probabilities :math:`P(c = k)`, :math:`k = 1, \dots, n`, of the
    context length of a window of :math:`L = n + 1` states (float64, shape :math:`(n,)`).

    * ``paper``: :math:`c \sim \mathrm{Pois}(\lambda = 2)` truncated to :math:`[1, n]`,
      i.e. :math:`P(c = k) \propto \lambda^k / k!` normalised over :math:`[1, n]`.
    * ``reference``: :math:`c = 1 + (\mathrm{Pois}(\lambda = 1) \bmod n)`.
    """

    _check_length(length)
    n = length - 1

    if distribution == "paper":
        rate = 2.0 if rate is None else rate
        k = torch.arange(1, n + 1, dtype=torch.float64)
        logp = k * math.log(rate) - torch.lgamma(k + 1)
        return torch.softmax(logp, dim=0)
    elif distribution == "reference":
        rate = 1.0 if rate is None else rate
        # Fold the Poisson pmf modulo n; the tail beyond 200 + 20λ is negligible.
        j = torch.arange(0, int(200 + 20 * rate), dtype=torch.float64)
        pois = torch.exp(j * math.log(rate) - rate - torch.lgamma(j + 1))
        pmf = torch.zeros(n, dtype=torch.float64).index_add_(0, (j % n).long(), pois)
        return pmf / pmf.sum()
    else:
        raise ValueError(f"unknown context distribution {distribution!r}, expected 'paper' or 'reference'")


def _check_length(length: int) -> None:
    if length < 2:
        raise ValueError(f"an emulation window needs at least 2 states (context + target), got {length}")


def context_mask(
    batch: int,
    length: int,
    context: int,
    *,
    backward: bool = False,
    device: torch.device | None = None,
) -> Tensor:
    r"""Returns the time mask :math:`(B, L)` with the first (or, if :py:`backward`, the
    last) :math:`c` states known, for rollouts.

    Arguments:
        batch: The batch size :math:`B`.
        length: The window length :math:`L \geq 2`.
        context: The context length :math:`1 \leq c < L`.
        backward: Whether the context is at the end of the window.
    """

    _check_length(length)
    if not 1 <= context < length:
        raise ValueError(
            f"context length must be in [1, {length - 1}] for a window of {length}, got {context}"
        )

    idx = torch.arange(length, device=device)
    mask = idx >= length - context if backward else idx < context
    return mask.expand(batch, length).clone()


def sample_context_mask(
    batch: int,
    length: int,
    *,
    distribution: str = "paper",
    rate: float | None = None,
    forward_prob: float = 0.66,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Draws training context masks over time.

    * ``paper`` (default): :math:`c \sim \mathrm{Pois}(\lambda = 2)` truncated to
      :math:`[1, n]` with :math:`n = L - 1`; the first :math:`c` states are known.
      The truncation is exact: :math:`c` is drawn from the renormalised pmf
      :func:`context_pmf` (equivalent to rejection of draws outside :math:`[1, n]`).
    * ``reference``: :math:`c = 1 + (\mathrm{Pois}(\lambda = 1) \bmod n)`; with
      probability :py:`forward_prob` (0.66) the first :math:`c` states are known,
      else the last :math:`c` (backward emulation).

    Arguments:
        batch: The batch size :math:`B`.
        length: The window length :math:`L \geq 2`.
        distribution: ``"paper"`` or ``"reference"``.
        rate: The Poisson rate :math:`\lambda` (default 2 for paper, 1 for reference).
        forward_prob: The probability of a forward mask (``reference`` only).
        generator: A CPU generator, for reproducibility.
        device: The device of the outputs.

    Returns:
        The boolean mask :math:`(B, L)` (``True`` = known) and the context lengths
        :math:`(B,)` (int64).
    """

    _check_length(length)
    n = length - 1
    idx = torch.arange(length)

    if distribution == "paper":
        pmf = context_pmf(length, distribution="paper", rate=rate)
        c = 1 + torch.multinomial(pmf, batch, replacement=True, generator=generator)
        mask = idx < c[:, None]
    elif distribution == "reference":
        lam = torch.full((batch,), 1.0 if rate is None else float(rate), dtype=torch.float64)
        c = 1 + torch.poisson(lam, generator=generator).long() % n
        forward = torch.rand(batch, generator=generator) < forward_prob
        mask = torch.where(forward[:, None], idx < c[:, None], idx >= length - c[:, None])
    else:
        raise ValueError(f"unknown context distribution {distribution!r}, expected 'paper' or 'reference'")

    return mask.to(device), c.to(device)


def expand_mask(mask: Tensor, x: Tensor) -> Tensor:
    r"""Expands a boolean mask to the shape of a window :math:`x` of shape
    :math:`(B, C, T, *)`.

    A time mask :math:`(B, T)` becomes :math:`(B, C, T, 1, \dots)`-broadcast; any
    other mask must broadcast to :math:`x`.
    """

    mask = mask.to(device=x.device, dtype=torch.bool)
    if mask.ndim == 2:
        if mask.shape != (x.shape[0], x.shape[2]):
            raise ValueError(
                f"a time mask must have shape (B, T) = {(x.shape[0], x.shape[2])}, got {tuple(mask.shape)}"
            )
        mask = mask.reshape(x.shape[0], 1, x.shape[2], *([1] * (x.ndim - 3)))
    try:
        return mask.expand(x.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to {tuple(x.shape)}"
        ) from None


def known_channel_mask(mask: Tensor, x: Tensor, known_channels: int) -> Tensor:
    r"""The mask of a window :math:`x` :math:`(B, C + K, T, *)` whose last :math:`K`
    channels are known everywhere (constant fields, time-varying scalars) and whose other
    channels follow the time mask :math:`(B, T)`: shape :math:`(B, C + K, T, 1, \dots)`. With :math:`K = 0`
    the time mask is returned as is.
    """

    if known_channels == 0:
        return mask
    if not 0 < known_channels < x.shape[1]:
        raise ValueError(f"{known_channels} known channels of a window with {x.shape[1]} channels")
    batch, channels, steps = x.shape[:3]
    ones = [1] * (x.ndim - 3)
    out = (
        expand_mask(mask, x)
        .reshape(batch, channels, steps, -1)[..., :1]
        .reshape(batch, channels, steps, *ones)
    )
    out = out.clone()
    out[:, -known_channels:] = True
    return out


def time_mask(mask: Tensor) -> Tensor:
    r"""The time mask :math:`(B, T)` of a time mask or of a :func:`known_channel_mask`
    (its first channel's)."""

    if mask.ndim == 2:
        return mask
    return mask[:, 0].reshape(mask.shape[0], mask.shape[2], -1)[..., 0]


# ---------------------------------------------------------------------------- denoiser


class TimeEmbedding(nn.Sequential):
    r"""Embedding of the noise level, ``SineEncoding(M) → Linear → SiLU → Linear``.

    Shapes:
        c_noise: :math:`(B,)`; returns :math:`(B, M)`.
    """

    def __init__(self, mod_features: int):
        super().__init__(
            SineEncoding(mod_features),
            nn.Linear(mod_features, mod_features),
            nn.SiLU(),
            nn.Linear(mod_features, mod_features),
        )


def _mask_to_cond(known: Tensor, backbone: nn.Module) -> Tensor:
    # The reference broadcasts the mask over all C channels (cond_channels = C); a
    # backbone with a single conditioning channel gets the first channel's mask.
    if getattr(backbone, "cond_channels", known.shape[1]) == known.shape[1]:
        return known
    return known[:, :1]


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    # (B,) -> (B, 1, ..., 1), to broadcast against a window.
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class ElucidatedDenoiser(nn.Module):
    r"""EDM-preconditioned denoiser :math:`d_\phi(x_t, t, \theta, b) \approx
    \mathbb{E}[x \mid x_t]` (method.md §5).

    .. math::
        c_\text{in} = \frac{1}{\sqrt{\alpha_t^2 + \sigma_t^2}}, \quad
        c_\text{out} = \frac{\sigma_t}{\sqrt{\alpha_t^2 + \sigma_t^2}}, \quad
        c_\text{skip} = \frac{\alpha_t}{\alpha_t^2 + \sigma_t^2}, \quad
        c_\text{noise} = 10 \ln(\sigma_t / \alpha_t)

    .. math::
        \mu = c_\text{skip} x_t + c_\text{out} F_\phi(c_\text{in} x_t, b, m), \quad
        m = \mathrm{TimeEmb}(c_\text{noise}) + \mathrm{LabelEmb}(\theta)

    with posterior variance :math:`\sigma_t^2 / (\alpha_t^2 + \sigma_t^2)`. Known
    entries (:math:`b = 1`) of :math:`x_t` are replaced by :math:`\sqrt{\alpha_t^2 +
    \sigma_t^2}\, y` so the network sees the clean context :math:`y` there, and by
    default the returned mean is :math:`y` there ("masked denoiser").

    Arguments:
        backbone: A :class:`~lolaray.trainers.transformer.SpatioTemporalTransformer`
            (or any module ``backbone(x, mod, cond)`` with attributes
            ``mod_features`` and ``cond_channels``).
        schedule: The noise schedule (default :class:`LogLogitSchedule`).
        label_features: The size :math:`|\theta|` of the conditioning vector (0 for none).
        label_standardization: ``log``, ``mean`` and ``std`` of
            :class:`~lolaray.trainers.transformer.LabelEmbedding` (default: raw :math:`\theta`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        schedule: Schedule | None = None,
        label_features: int = 0,
        label_standardization: Mapping | None = None,
    ):
        super().__init__()

        self.backbone = backbone
        self.schedule = LogLogitSchedule() if schedule is None else schedule
        self.label_features = label_features

        mod = backbone.mod_features
        self.time_embedding = TimeEmbedding(mod)
        self.label_embedding = (
            LabelEmbedding(label_features, mod, **(label_standardization or {}))
            if label_features > 0
            else None
        )

    def modulation(self, c_noise: Tensor, label: Tensor | None) -> Tensor:
        r"""Returns :math:`m = \mathrm{TimeEmb}(c_\text{noise}) + \mathrm{LabelEmb}(\theta)`,
        :math:`(B, M)`."""

        mod = self.time_embedding(c_noise)
        if self.label_embedding is not None:
            if label is None or label.shape != (c_noise.shape[0], self.label_features):
                raise ValueError(
                    f"expected a label of shape {(c_noise.shape[0], self.label_features)}, "
                    f"got {None if label is None else tuple(label.shape)}"
                )
            mod = mod + self.label_embedding(label.to(mod.dtype))
        return mod

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        label: Tensor | None = None,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        *,
        replace_known: bool = True,
    ) -> Tensor:
        r"""Returns the posterior mean :math:`\mu \approx \mathbb{E}[x \mid x_t]`.

        Arguments:
            x_t: The noisy window :math:`(B, C, T, H, W[, Z])`.
            t: The times :math:`(B,)` or a scalar (tensor or float).
            label: The conditioning vectors :math:`(B, |\theta|)`.
            mask: The known entries, :math:`(B, T)` or broadcastable to :math:`x_t`;
                ``None`` = nothing known.
            context: The clean window whose known entries are the context (same shape
                as :math:`x_t`; other entries are ignored). Required with a mask.
            replace_known: Whether the returned mean equals :py:`context` on known
                entries. The training loss uses the raw output (:py:`False`), as the
                paper's Eq. (7) and the reference code do.

        Returns:
            The mean :math:`\mu`, shape of :math:`x_t`.
        """

        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        alpha, sigma = self.schedule(t)
        scale = torch.sqrt(alpha**2 + sigma**2)

        c_in = _per_sample(1 / scale, x_t)
        c_out = _per_sample(sigma / scale, x_t)
        c_skip = _per_sample(alpha / scale**2, x_t)
        c_noise = 10 * torch.log(sigma / alpha)

        if mask is None:
            known = None
            cond = torch.zeros_like(x_t[:, :1])
        else:
            if context is None:
                raise ValueError("a mask needs the context (the clean window)")
            known = expand_mask(mask, x_t)
            cond = _mask_to_cond(known, self.backbone)
            # The network input c_in·x_t is then exactly the clean context.
            x_t = torch.where(known, _per_sample(scale, x_t) * context, x_t)

        mod = self.modulation(c_noise, label)
        out = self.backbone(c_in * x_t, mod, cond)
        mean = c_skip * x_t + c_out * out.to(x_t.dtype)

        if known is not None and replace_known:
            mean = torch.where(known, context.to(mean.dtype), mean)

        return mean

    def variance(self, t: Tensor) -> Tensor:
        r"""Returns the posterior variance :math:`\sigma_t^2 / (\alpha_t^2 + \sigma_t^2)`
        of shape of :math:`t`."""

        alpha, sigma = self.schedule(t)
        return sigma**2 / (alpha**2 + sigma**2)

    def bind(
        self,
        label: Tensor | None = None,
        mask: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        r"""Returns the closure :math:`(x_t, t) \mapsto \mu` used by the samplers of
        :mod:`lolaray.trainers.samplers`."""

        return lambda x_t, t: self(x_t, t, label, mask, context)


def denoiser_loss(
    denoiser: ElucidatedDenoiser,
    x: Tensor,
    label: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Denoising score-matching loss with known entries given clean.

    .. math::
        t \sim \mathcal{U}(0, 1), \quad x_t = \alpha_t x + \sigma_t \varepsilon, \quad
        \ell = \operatorname{mean}\Big[\frac{(d_\phi(x_t, t, \theta, b) - x)^2}
               {\sigma_t^2 / (\alpha_t^2 + \sigma_t^2)}\Big]

    i.e. the weighting :math:`\lambda_t = 1 + \alpha_t^2 / \sigma_t^2` (:math:`1 +
    1/\sigma_t^2` for :math:`\alpha = 1`), averaged over all entries, known ones included
    (there the network receives the clean :math:`x` and must reproduce it).

    Arguments:
        denoiser: The denoiser.
        x: The clean windows :math:`(B, C, T, H, W[, Z])`.
        label: The conditioning vectors :math:`(B, |\theta|)`.
        mask: The known entries (:math:`(B, T)` or broadcastable); ``None`` = none.
        t: Fixed times :math:`(B,)` (default: drawn uniformly).
        noise: Fixed standard normal noise like :math:`x` (default: drawn).
        generator: A generator for :math:`t` and :math:`\varepsilon` (on :math:`x`'s device).

    Returns:
        The scalar loss.
    """

    if t is None:
        t = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    alpha, sigma = denoiser.schedule(t)
    x_t = _per_sample(alpha, x) * x + _per_sample(sigma, x) * noise

    mean = denoiser(x_t, t, label, mask, x if mask is not None else None, replace_known=False)
    var = _per_sample(sigma**2 / (alpha**2 + sigma**2), x)

    return ((mean.float() - x.float()).square() / var.float()).mean()
