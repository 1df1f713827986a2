r"""Probability-flow ODE samplers (method.md §5, "Sampling").

With :math:`\rho = \sigma / \alpha` and :math:`y = x / \alpha`, the probability-flow
ODE of :math:`x_t = \alpha_t x + \sigma_t \varepsilon` reads

.. math:: \frac{\mathrm{d} y}{\mathrm{d} \rho} = z(x_t, t) = \frac{x_t - \alpha_t \mu(x_t, t)}{\sigma_t}

where :math:`\mu \approx \mathbb{E}[x \mid x_t]` is the denoiser and :math:`z` the
predicted noise. All samplers integrate it from :math:`t = 1` to :math:`t = 0` on the
uniform grid :math:`t_i = 1 - i / K`, :math:`i = 0, \dots, K`, starting from
:math:`x \sim \mathcal{N}(0, (\alpha_1^2 + \sigma_1^2) I)`.

A denoiser is a callable ``denoise(x_t, t) -> μ`` with :math:`t` of shape :math:`(B,)`;
closures capture the label, mask and context (see
:meth:`lolaray.trainers.diffusion.ElucidatedDenoiser.bind`). Given :py:`mask` and
:py:`context`, the known entries of the output are set exactly to the context.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .diffusion import expand_mask

__all__ = [
    "adams_bashforth",
    "adams_bashforth_coefficients",
    "euler",
    "heun",
    "initial_noise",
    "sample",
    "time_grid",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]


def time_grid(steps: int) -> Tensor:
    r"""Returns :math:`t_i = 1 - i / K`, :math:`i = 0, \dots, K` (float64)."""

    if steps < 1:
        raise ValueError(f"need at least one step, got {steps}")
    return 1 - torch.arange(steps + 1, dtype=torch.float64) / steps


def _grid(schedule: Callable, steps: int) -> tuple[list[float], list[float], list[float], Tensor]:
    # The schedule is evaluated in float64 once; steps use python floats.
    t = time_grid(steps)
    alpha, sigma = schedule(t)
    return t.tolist(), alpha.tolist(), sigma.tolist(), (sigma / alpha)


def initial_noise(
    schedule: Callable,
    shape: Sequence[int] | None = None,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> Tensor:
    r"""Returns :math:`x_1 = \sqrt{\alpha_1^2 + \sigma_1^2}\, \varepsilon`, from a given
    standard normal :py:`noise` or one drawn with :py:`generator`."""

    if noise is None:
        if shape is None:
            raise ValueError("give a shape or a noise tensor")
        noise = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    alpha, sigma = schedule(torch.ones((), dtype=torch.float64))
    return noise * float(torch.sqrt(alpha**2 + sigma**2))


def _times(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _finish(x: Tensor, mask: Tensor | None, context: Tensor | None) -> Tensor:
    if mask is None:
        return x
    if context is None:
        raise ValueError("a mask needs the context")
    return torch.where(expand_mask(mask, x), context.to(x.dtype), x)


def adams_bashforth_coefficients(nodes: Sequence[float], a: float, b: float) -> list[float]:
    r"""Returns :math:`\int_a^b \ell_j(\rho)\, \mathrm{d}\rho` for the Lagrange basis
    :math:`\ell_j` on the nodes :math:`\rho_j`.

    In the variable :math:`s = (\rho - a) / (b - a)` (which keeps the Vandermonde system
    well conditioned whatever the scale of :math:`\rho`), :math:`\ell_j(s) = \sum_k
    A_{kj} s^k` with :math:`V A = I`, :math:`V_{jk} = s_j^k`, so the integrals are
    :math:`(b - a) A^\top w` with :math:`w_k = 1 / (k + 1)`, i.e. the solution of
    :math:`V^\top c = w`, solved in float64.
    """

    h = b - a
    s = (torch.as_tensor(nodes, dtype=torch.float64) - a) / h
    n = s.numel()
    k = torch.arange(n, dtype=torch.float64)
    V = s[:, None] ** k  # (nodes, powers)
    w = 1 / (k + 1)
    c = torch.linalg.solve(V.T, w)
    return (h * c).tolist()


def adams_bashforth(
    denoise: Denoiser,
    x_init: Tensor,
    schedule: Callable,
    *,
    steps: int = 16,
    order: int = 3,
    mask: Tensor | None = None,
    context: Tensor | None = None,
) -> Tensor:
    r"""Adams–Bashforth multistep integration of the PF-ODE in :math:`\rho = \sigma /
    \alpha` (the paper's sampler; one denoiser call per step).

    .. math::
        x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1}
            \sum_{j} \Big(\int_{\rho_i}^{\rho_{i+1}} \ell_j(\rho)\, \mathrm{d}\rho\Big) z_j

    over the last :math:`\min(\text{order}, i + 1)` slopes :math:`z_j` (orders
    1, 2, 3, 3, … for order 3), with exact Lagrange integrals
    (:func:`adams_bashforth_coefficients`).

    Arguments:
        denoise: The denoiser ``(x_t, t) -> μ``.
        x_init: The initial state :math:`x_1` (see :func:`initial_noise`).
        schedule: The noise schedule ``t -> (α, σ)``.
        steps: The number of steps :math:`K`.
        order: The maximum order.
        mask, context: The known entries and the context, set exactly in the output.
    """

    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")

    t, alpha, sigma, rho = _grid(schedule, steps)
    rho = rho.tolist()

    x = x_init
    slopes: list[Tensor] = []

    for i in range(steps):
        mu = denoise(x, _times(t[i], x))
        slopes = [*slopes, (x - alpha[i] * mu) / sigma[i]][-order:]

        nodes = rho[i + 1 - len(slopes) : i + 1]
        coefs = adams_bashforth_coefficients(nodes, rho[i], rho[i + 1])

        x = (alpha[i + 1] / alpha[i]) * x + alpha[i + 1] * sum(
            c * z for c, z in zip(coefs, slopes, strict=True)
        )

    return _finish(x, mask, context)


def euler(
    denoise: Denoiser,
    x_init: Tensor,
    schedule: Callable,
    *,
    steps: int = 16,
    mask: Tensor | None = None,
    context: Tensor | None = None,
) -> Tensor:
    r"""Euler integration of the PF-ODE in :math:`\rho` (DDIM, :math:`\eta = 0`; equal to
    Adams–Bashforth of order 1), :math:`K` denoiser calls.

    .. math:: x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1} (\rho_{i+1} - \rho_i)\, z_i
    """

    t, alpha, sigma, rho = _grid(schedule, steps)
    rho = rho.tolist()

    x = x_init
    for i in range(steps):
        mu = denoise(x, _times(t[i], x))
        z = (x - alpha[i] * mu) / sigma[i]
        x = (alpha[i + 1] / alpha[i]) * x + alpha[i + 1] * (rho[i + 1] - rho[i]) * z

    return _finish(x, mask, context)


def heun(
    denoise: Denoiser,
    x_init: Tensor,
    schedule: Callable,
    *,
    steps: int = 16,
    mask: Tensor | None = None,
    context: Tensor | None = None,
) -> Tensor:
    r"""Heun (explicit trapezoidal) integration of the PF-ODE in :math:`\rho`,
    :math:`2K` denoiser calls (the last noise level :math:`\sigma_\min > 0`, so every
    step is corrected).

    .. math::
        \tilde{y} = y_i + h z(x_i, t_i), \quad
        y_{i+1} = y_i + \tfrac{h}{2} \big(z(x_i, t_i) + z(\alpha_{i+1} \tilde{y}, t_{i+1})\big)

    with :math:`y = x / \alpha` and :math:`h = \rho_{i+1} - \rho_i`.
    """

    t, alpha, sigma, rho = _grid(schedule, steps)
    rho = rho.tolist()

    x = x_init
    for i in range(steps):
        h = rho[i + 1] - rho[i]
        z = (x - alpha[i] * denoise(x, _times(t[i], x))) / sigma[i]
        y = x / alpha[i]
        x_pred = alpha[i + 1] * (y + h * z)
        z_pred = (x_pred - alpha[i + 1] * denoise(x_pred, _times(t[i + 1], x))) / sigma[i + 1]
        x = alpha[i + 1] * (y + 0.5 * h * (z + z_pred))

    return _finish(x, mask, context)


def sample(
    denoise: Denoiser,
    schedule: Callable,
    *,
    kind: str = "ab3",
    steps: int = 16,
    shape: Sequence[int] | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
    context: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> Tensor:
    r"""Samples with the probability-flow ODE.

    Arguments:
        denoise: The denoiser ``(x_t, t) -> μ``.
        schedule: The noise schedule ``t -> (α, σ)``.
        kind: ``"ab<order>"`` (``"ab3"``: the paper's), ``"euler"`` or ``"heun"``.
        steps: The number of steps :math:`K`.
        shape: The output shape (with :py:`generator`), or
        noise: a standard normal tensor, scaled to :math:`x_1` here.
        mask, context: The known entries and the context, set exactly in the output.

    Returns:
        The sample :math:`x_0`.
    """

    x = initial_noise(schedule, shape, noise=noise, generator=generator, dtype=dtype, device=device)
    kw = {"steps": steps, "mask": mask, "context": context}

    if match := re.fullmatch(r"ab(\d+)", kind):
        return adams_bashforth(denoise, x, schedule, order=int(match.group(1)), **kw)
    elif kind == "euler":
        return euler(denoise, x, schedule, **kw)
    elif kind == "heun":
        return heun(denoise, x, schedule, **kw)
    else:
        raise ValueError(
            f"unknown sampler kind {kind!r}, expected 'ab<order>' (e.g. 'ab3'), 'euler' or 'heun'"
        )
