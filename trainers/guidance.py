r"""Guided sampling: moment matching posterior sampling (MMPS) through the decoder (method.md §7).

Observations are taken of the *standardized pixel* states, :math:`y = \mathcal{A}(x) +
\sigma_y \varepsilon`, with a linear observation operator :math:`\mathcal{A}`
(:class:`Subsample`, :class:`Downscale`, :class:`BoundaryStripe`, :class:`FixedMask`).
A latent diffusion emulator samples :math:`z`; its states are :math:`x = D(z)`, so the
operator the guidance sees is :math:`A(z) = \mathcal{A}(D(z))` — non-linear in
:math:`z`, linearised by Jacobian-vector products.

At each sampler step, :class:`MMPSDenoiser` corrects the denoiser's mean
:math:`\hat{x} = \mu(x_t) \approx \mathbb{E}[x \mid x_t]` with the observation residual,
for :math:`x_t = \alpha_t x + \sigma_t \varepsilon` and :math:`\gamma_t = \sigma_t^2 / \alpha_t`:

.. math::
    \mathbb{V}[x \mid x_t] \approx \gamma_t \frac{\partial \hat{x}}{\partial x_t}
    \quad \text{(Tweedie)}, \qquad
    \Sigma_y = \sigma^2_{y,\text{model}} I + J_A \, \mathbb{V}[x \mid x_t] \, J_A^\top,

.. math::
    \Sigma_y u = y - A(\hat{x}) \quad \text{(a few GMRES or CG iterations)}, \qquad
    \mathbb{E}[x \mid x_t, y] \approx \hat{x} + \gamma_t \,
    \Big(\frac{\partial A(\hat{x})}{\partial x_t}\Big)^{\!\top} u.

:math:`J_A^\top` and :math:`(\partial \hat{x} / \partial x_t)^\top` are applied by
vector-Jacobian products, :math:`J_A` by a Jacobian-vector product (computed as the
derivative of a VJP, which works for every op with a double backward; attention runs on
the MATH backend for it). Everything is per batch row: ensemble members and trajectories
are guided independently. For a Gaussian prior, a linear operator and an exact denoiser
the corrected mean is the exact :math:`\mathbb{E}[x \mid x_t, y]` once the solver has
converged (``tests/unit/test_guidance.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "OPERATORS",
    "BoundaryStripe",
    "Downscale",
    "FixedMask",
    "MMPSDenoiser",
    "ObservationOperator",
    "Subsample",
    "build_operator",
    "conjugate_gradient",
    "gmres",
]


# ------------------------------------------------------------------- observation operators


class ObservationOperator:
    r"""A linear map from states :math:`(B, C, T, *\mathrm{spatial})` (or any leading
    dimensions followed by ``spatial_dims`` spatial axes) to observations of the same
    leading dimensions and fewer spatial entries. Subclasses implement :meth:`__call__`.

    :param spatial_dims: the number of trailing spatial axes (2 or 3).
    """

    def __init__(self, spatial_dims: int = 2):
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def __call__(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def flat(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        """Observations flattened per batch row: ``(B, M)``."""
        return self(x).reshape(*x.shape[:batch_dims], -1)


class _CellFactorOperator(ObservationOperator):
    """An operator that keeps one value per ``factor`` cells along each spatial axis."""

    def __init__(self, factor: int, spatial_dims: int = 2):
        super().__init__(spatial_dims)
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor


class Subsample(_CellFactorOperator):
    r"""Every ``factor``-th cell along each spatial axis (the paper: ``x[..., ::32, ::32]``)."""

    def __call__(self, x: Tensor) -> Tensor:
        index = (Ellipsis, *([slice(None, None, self.factor)] * self.spatial_dims))
        return x[index]


class Downscale(_CellFactorOperator):
    r"""Mean over ``factor``-sized blocks of cells (the paper: 32×32 mean pooling)."""

    def __call__(self, x: Tensor) -> Tensor:
        spatial = x.shape[-self.spatial_dims :]
        if any(s % self.factor for s in spatial):
            raise ValueError(f"spatial shape {tuple(spatial)} is not divisible by factor {self.factor}")
        shape = list(x.shape[: -self.spatial_dims])
        for s in spatial:
            shape += [s // self.factor, self.factor]
        blocks = x.reshape(shape)
        return blocks.mean(dim=tuple(range(-2 * self.spatial_dims + 1, 0, 2)))


class FixedMask(ObservationOperator):
    r"""The cells where ``mask`` is ``True`` (a boolean tensor of the spatial shape)."""

    def __init__(self, mask: Tensor, spatial_dims: int | None = None):
        mask = torch.as_tensor(mask, dtype=torch.bool)
        super().__init__(mask.ndim if spatial_dims is None else spatial_dims)
        if mask.ndim != self.spatial_dims:
            raise ValueError(f"the mask has {mask.ndim} axes, expected {self.spatial_dims} spatial axes")
        self.mask = mask

    def __call__(self, x: Tensor) -> Tensor:
        spatial = tuple(x.shape[-self.spatial_dims :])
        if spatial != tuple(self.mask.shape):
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit states of spatial shape {spatial}"
            )
        return x[..., self.mask.to(x.device)]


class BoundaryStripe(FixedMask):
    r"""All cells within ``width`` of the domain's edge (the paper's TGC case: outside
    ``[4:60]³`` of 64³). The spatial shape is fixed at construction."""

    def __init__(self, width: int, shape: Sequence[int]):
        if width < 1 or any(2 * width >= s for s in shape):
            raise ValueError(f"width {width} must be >= 1 and leave an interior in shape {tuple(shape)}")
        mask = torch.ones(tuple(shape), dtype=torch.bool)
        mask[tuple(slice(width, s - width) for s in shape)] = False
        super().__init__(mask)
        self.width = width


#: Operators by name, for command lines: ``name -> (factor or width, spatial shape) -> operator``.
OPERATORS: dict[str, Callable[[int, Sequence[int]], ObservationOperator]] = {
    "subsample": lambda k, shape: Subsample(k, spatial_dims=len(shape)),
    "downscale": lambda k, shape: Downscale(k, spatial_dims=len(shape)),
    "boundary": lambda k, shape: BoundaryStripe(k, shape),
}


def build_operator(name: str, factor: int, spatial_shape: Sequence[int]) -> ObservationOperator:
    """The operator ``name`` (``subsample``, ``downscale``, ``boundary``) for states of
    ``spatial_shape``; ``factor`` is the stride, block size or stripe width."""
    if name not in OPERATORS:
        raise ValueError(f"unknown observation operator {name!r}: choose one of {', '.join(OPERATORS)}")
    return OPERATORS[name](int(factor), tuple(spatial_shape))


# ------------------------------------------------------------------------- Krylov solvers


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1, keepdim=True)


def gmres(operator: Callable[[Tensor], Tensor], b: Tensor, *, iterations: int = 1) -> Tensor:
    r"""Solves :math:`A u = b` per row of :math:`b` :math:`(B, M)` with ``iterations``
    steps of GMRES from :math:`u_0 = 0` (float64 internally; method.md §7: the reference).

    :math:`u_k = V_k y_k` minimises :math:`\lVert b - A u \rVert` over the Krylov space
    :math:`\mathcal{K}_k = \mathrm{span}(b, Ab, \dots, A^{k-1} b)`, built by Arnoldi.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    dtype = b.dtype
    b = b.double()
    batch, m = b.shape
    if m == 0:
        return b.to(dtype)
    beta = b.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(torch.float64).tiny ** 0.5
    basis = [b / beta.clamp_min(tiny)]
    hessenberg = b.new_zeros(batch, iterations + 1, iterations)
    k = 0
    for j in range(min(iterations, m)):
        w = operator(basis[j].to(dtype)).double()
        for i in range(j + 1):  # modified Gram-Schmidt
            h = _dot(w, basis[i])
            hessenberg[:, i, j] = h[:, 0]
            w = w - h * basis[i]
        norm = w.norm(dim=-1, keepdim=True)
        hessenberg[:, j + 1, j] = norm[:, 0]
        basis.append(w / norm.clamp_min(tiny))
        k = j + 1
    rhs = b.new_zeros(batch, k + 1, 1)
    rhs[:, 0, 0] = beta[:, 0]
    y = torch.linalg.lstsq(hessenberg[:, : k + 1, :k], rhs).solution  # (B, k, 1)
    u = (torch.stack(basis[:k], dim=-1) @ y)[..., 0]
    return u.to(dtype)


def conjugate_gradient(operator: Callable[[Tensor], Tensor], b: Tensor, *, iterations: int = 1) -> Tensor:
    r"""Solves :math:`A u = b` (:math:`A` symmetric positive definite) per row of
    :math:`b` :math:`(B, M)` with ``iterations`` conjugate-gradient steps from 0."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    dtype = b.dtype
    b = b.double()
    u = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = _dot(r, r)
    for _ in range(iterations):
        ap = operator(p.to(dtype)).double()
        step = rr / _dot(p, ap).clamp_min(1e-300)
        u = u + step * p
        r = r - step * ap
        rr_new = _dot(r, r)
        p = r + (rr_new / rr.clamp_min(1e-300)) * p
        rr = rr_new
    return u.to(dtype)


SOLVERS = {"gmres": gmres, "cg": conjugate_gradient}


# ------------------------------------------------------------------------------- MMPS


def _math_attention():
    """Attention on the MATH backend: the fused kernels have no double backward."""
    try:
        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()


class MMPSDenoiser:
    r"""Wraps a denoiser ``(x_t, t) -> μ`` into the MMPS-guided one (see the module doc).

    :param denoise: the unguided denoiser, ``(x_t, t) -> μ`` with :math:`t` of shape
        :math:`(B,)`, e.g. :meth:`ElucidatedDenoiser.bind(...)`.
    :param schedule: the noise schedule ``t -> (α_t, σ_t)``.
    :param observe: :math:`A`, from a sample :math:`(B, \dots)` to observations
        :math:`(B, M)` (flattened per row), differentiable twice (a decoder followed by a
        linear operator, for latent emulators).
    :param y: the observations :math:`(B, M)`.
    :param var_y: the observation variance assumed by the model (the paper: ``1e-2``
        for :math:`\sigma_y = 0.1`).
    :param iterations: Krylov iterations (the paper: 1; TGC: 2).
    :param solver: ``"gmres"`` (the reference) or ``"cg"``.
    :param weight: scales the observations and the operator; ``0`` switches guidance
        off (the result is exactly the unguided mean).
    """

    def __init__(
        self,
        denoise: Callable[[Tensor, Tensor], Tensor],
        schedule: Callable[[Tensor], tuple[Tensor, Tensor]],
        observe: Callable[[Tensor], Tensor],
        y: Tensor,
        *,
        var_y: float = 1e-2,
        iterations: int = 1,
        solver: str = "gmres",
        weight: float = 1.0,
    ):
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
        if var_y <= 0:
            raise ValueError(f"var_y must be > 0, got {var_y}")
        if y.ndim != 2:
            raise ValueError(f"observations must be flattened per row, (B, M); got shape {tuple(y.shape)}")
        self.denoise, self.schedule, self.observe = denoise, schedule, observe
        self.y, self.var_y, self.iterations, self.weight = y, var_y, iterations, weight
        self.solve = SOLVERS[solver]

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.weight == 0:
            return self.denoise(x_t, t)
        alpha, sigma = self.schedule(torch.as_tensor(t, dtype=torch.float64, device=x_t.device))
        gamma = (sigma**2 / alpha).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        gamma = gamma.expand(x_t.shape[0], *gamma.shape[1:])
        w = self.weight
        with torch.enable_grad(), _math_attention():
            x_t = x_t.detach().requires_grad_(True)
            x_hat = self.denoise(x_t, t)
            y_hat = w * self.observe(x_hat)  # depends on x_t through μ and A
            # A separate graph for J_A at x̂: J_A v = d/dv' <VJP(v'), v> (double backward).
            x_lin = x_hat.detach().requires_grad_(True)
            y_lin = w * self.observe(x_lin)
            probe = torch.zeros_like(y_lin, requires_grad=True)
            (vjp_lin,) = torch.autograd.grad(y_lin, x_lin, probe, create_graph=True)
        if self.y.shape != y_hat.shape:
            raise ValueError(
                f"observations have shape {tuple(self.y.shape)}, the operator gives {tuple(y_hat.shape)}"
            )

        def vjp(v: Tensor) -> Tensor:  # (∂A(x̂)/∂x_t)^T v = J_μ^T J_A^T v
            return torch.autograd.grad(y_hat, x_t, v.to(y_hat.dtype), retain_graph=True)[0]

        def jvp(v: Tensor) -> Tensor:  # J_A v at x̂
            return torch.autograd.grad(vjp_lin, probe, v.to(vjp_lin.dtype), retain_graph=True)[0]

        def covariance(v: Tensor) -> Tensor:  # Σ_y v = var_y v + J_A (γ J_μ^T J_A^T v)
            return self.var_y * v + jvp(gamma * vjp(v))

        residual = (w * self.y.to(y_hat.dtype) - y_hat).detach()
        u = self.solve(covariance, residual, iterations=self.iterations)
        return (x_hat + gamma * vjp(u)).detach()
