r"""Batched 2-D compressible Euler finite-volume solver in torch.

Solves the Euler equations of an ideal gas on a uniform Cartesian grid,

.. math::

    \partial_t U + \partial_x F(U) + \partial_y G(U) = 0,\qquad
    U = \begin{pmatrix}\rho\\ \rho u\\ \rho v\\ E\end{pmatrix},\;
    F = \begin{pmatrix}\rho u\\ \rho u^2 + p\\ \rho u v\\ u (E + p)\end{pmatrix},\;
    G = \begin{pmatrix}\rho v\\ \rho u v\\ \rho v^2 + p\\ v (E + p)\end{pmatrix},

with :math:`E = p/(\gamma - 1) + \rho (u^2 + v^2)/2`, for many trajectories at once: every
tensor carries a leading batch axis ``B`` and each trajectory has its own :math:`\gamma`
and its own time step. Fields are ``(B, Nx, Ny)`` with axis 1 = x and axis 2 = y (The
Well's "ij" indexing). Everything runs on the device of the input tensors.

Scheme (unsplit MUSCL-Hancock, Toro ch. 14, second order in space and time):

1. limited slopes of the primitive variables :math:`W = (\rho, u, v, p)` along each axis,
   :math:`\Delta_x W_i = \phi(W_i - W_{i-1}, W_{i+1} - W_i)` with the monotonized-central
   (``"mc"``) or ``"minmod"`` limiter;
2. half-step predictor in primitive form,
   :math:`\bar W = W - \tfrac{\Delta t}{2}\,(A(W)\,\Delta_x W/\Delta x + B(W)\,\Delta_y W/\Delta y)`;
3. face states :math:`\bar W \pm \Delta W / 2`; a cell one of whose four face states has
   non-positive density or pressure falls back to first order (its faces get the cell average
   :math:`W`): one test per cell instead of per face, cheap and robust;
4. HLLC fluxes (Toro ch. 10) with Einfeldt/Batten wave-speed bounds, and the conservative
   update :math:`U^{n+1} = U^n - \tfrac{\Delta t}{\Delta x}(F_{i+1/2} - F_{i-1/2})
   - \tfrac{\Delta t}{\Delta y}(G_{j+1/2} - G_{j-1/2})`.

The y-direction reuses the x-direction code with the velocity components swapped (normal,
tangential), which also makes the scheme exactly symmetric under :math:`x \leftrightarrow y`.

Time steps are per trajectory, :math:`\Delta t_b = C \min_{cells}\min(\Delta x/(|u|+c),
\Delta y/(|v|+c))`, clipped to land exactly on every snapshot time; a trajectory that has
stored its last snapshot leaves the working batch. Boundaries use two ghost layers: periodic
wrap, or zero-gradient extrapolation ("open", Clawpack's ``extrap``). With the default
:math:`C = 0.4` each direction's Courant number is at most 0.4; the scheme becomes unstable
near :math:`C \approx 0.8` on strong quadrant problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FIELDS",
    "LIMITERS",
    "conserved_to_primitive",
    "primitive_to_conserved",
    "simulate",
    "sod_exact_star_state",
]

#: Keys of the dict returned by :func:`simulate`, each ``(B, T, Nx, Ny)``.
FIELDS = ("density", "momentum_x", "momentum_y", "energy", "pressure")
#: Slope limiters known to :func:`simulate`.
LIMITERS = ("mc", "minmod")
# Two ghost layers: the slope of the first ghost cell needs the second one.
_GHOSTS = 2


# --------------------------------------------------------------------------- conversions


def _gamma_for(gamma: Tensor | float, field: Tensor) -> Tensor:
    """``gamma`` as a tensor that broadcasts against ``field`` (``(B,)`` -> ``(B, 1, ..., 1)``)."""
    gamma = torch.as_tensor(gamma, dtype=field.dtype, device=field.device)
    if gamma.ndim == 1:
        gamma = gamma.view(-1, *([1] * (field.ndim - 1)))
    return gamma


def primitive_to_conserved(rho: Tensor, u: Tensor, v: Tensor, p: Tensor, gamma: Tensor | float) -> Tensor:
    r"""Conserved variables :math:`U = (\rho, \rho u, \rho v, E)`, :math:`E = p/(\gamma-1) + \rho(u^2+v^2)/2`.

    :param rho, u, v, p: ``(B, Nx, Ny)`` density, velocities and pressure.
    :param gamma: ``(B,)`` adiabatic index per trajectory, or a number.
    :returns: ``(B, 4, Nx, Ny)``.
    """
    gamma = _gamma_for(gamma, rho)
    energy = p / (gamma - 1) + 0.5 * rho * (u * u + v * v)
    return torch.stack([rho, rho * u, rho * v, energy], dim=1)


def conserved_to_primitive(U: Tensor, gamma: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Primitive variables from :math:`U = (\rho, \rho u, \rho v, E)`.

    :math:`u = (\rho u)/\rho`, :math:`v = (\rho v)/\rho`, :math:`p = (\gamma - 1)(E - \rho(u^2+v^2)/2)`.

    :param U: ``(B, 4, Nx, Ny)``.
    :param gamma: ``(B,)`` adiabatic index per trajectory, or a number.
    :returns: ``(rho, u, v, p)``, each ``(B, Nx, Ny)``.
    """
    rho, mom_x, mom_y, energy = U.unbind(dim=1)
    gamma = _gamma_for(gamma, rho)
    u = mom_x / rho
    v = mom_y / rho
    p = (gamma - 1) * (energy - 0.5 * (mom_x * u + mom_y * v))
    return rho, u, v, p


def _primitive_stack(U: Tensor, gamma_minus_1: Tensor) -> Tensor:
    """``(B, 4, Nx, Ny)`` primitives ``(rho, u, v, p)`` from conserved ``U``; ``gamma_minus_1`` is ``(B, 1, 1)``."""
    rho, mom_x, mom_y, energy = U.unbind(dim=1)
    u = mom_x / rho
    v = mom_y / rho
    kinetic = 0.5 * (mom_x * u + mom_y * v)
    return torch.stack([rho, u, v, (energy - kinetic) * gamma_minus_1], dim=1)


# --------------------------------------------------------------------------- scheme pieces


def _half_slopes(diff_left: Tensor, diff_right: Tensor, limiter: str) -> Tensor:
    r"""Half of the limited slope, :math:`\phi(a, b)/2`, from the one-sided differences ``a`` and ``b``.

    With :math:`[l, h] = [\min(\max(a, b), 0),\ \max(\min(a, b), 0)]` (both 0 unless ``a`` and
    ``b`` share a sign, when one of them is the smaller-magnitude difference):
    minmod :math:`\phi = l + h`; monotonized central
    :math:`\phi = \operatorname{minmod}((a+b)/2,\ 2\operatorname{minmod}(a, b))`, i.e.
    :math:`\phi/2 = \operatorname{clamp}((a + b)/4, l, h)`. Halves are what the face
    extrapolation and the predictor need, so the factor 1/2 costs nothing here.
    """
    upper = torch.minimum(diff_left, diff_right).clamp_(min=0)
    lower = torch.maximum(diff_left, diff_right).clamp_(max=0)
    if limiter == "minmod":
        return upper.add_(lower).mul_(0.5)
    return torch.clamp((diff_left + diff_right).mul_(0.25), lower, upper)


def _primitive_rates(u_n, u_t, rho, inv_rho, gamma_p, d_rho, d_un, d_ut, d_p):
    r"""The product :math:`A(W)\,\Delta W` of the primitive-form Jacobian along the normal ``n``.

    From :math:`W_t + A(W) W_n = 0` with :math:`W = (\rho, u_n, u_t, p)`:
    :math:`A\Delta W = (u_n \Delta\rho + \rho\Delta u_n,\; u_n\Delta u_n + \Delta p/\rho,\;
    u_n \Delta u_t,\; u_n \Delta p + \gamma p \Delta u_n)`, returned in that order
    (rho, normal, tangential, p).
    """
    return (
        u_n * d_rho + rho * d_un,
        u_n * d_un + d_p * inv_rho,
        u_n * d_ut,
        u_n * d_p + gamma_p * d_un,
    )


def _hllc_flux(rho_l, un_l, ut_l, p_l, rho_r, un_r, ut_r, p_r, gamma, inv_gamma_minus_1):
    r"""HLLC numerical flux (Toro §10.4) through faces with normal velocity ``un`` and tangential ``ut``.

    Wave-speed bounds: Einfeldt's Roe-averaged HLLE speeds :math:`\bar u \mp \bar d`, widened by
    the one-sided speeds :math:`u_L - c_L`, :math:`u_R + c_R` (Batten et al. 1997), which keeps
    the first-order scheme positive. Contact speed

    .. math:: S_* = \frac{p_R - p_L + m_L u_L - m_R u_R}{m_L - m_R},\quad m_K = \rho_K (S_K - u_K).

    The flux is :math:`F_K + S_K^{\pm}(U_{*K} - U_K)` with ``K = L`` if :math:`S_* \ge 0` else
    ``R``, :math:`S_L^- = \min(S_L, 0)`, :math:`S_R^+ = \max(S_R, 0)` and
    :math:`U_{*K} = \frac{m_K}{S_K - S_*}\,(1,\ S_*,\ u_{t,K},\ E_K/\rho_K + (S_* - u_K)(S_* + p_K/m_K))`:
    this single formula covers all four HLLC cases, so only one side's flux is evaluated.

    All arguments broadcast (face arrays ``(B, ...)`` and ``(B, 1, 1)`` gammas).
    :returns: flux components ``(mass, normal momentum, tangential momentum, energy)``.
    """
    # addcmul(a, b, c) = a + b * c in one pass: this function is ~half of the step's memory traffic.
    c2_l = gamma * p_l / rho_l
    c2_r = gamma * p_r / rho_r
    root_l = torch.sqrt(rho_l)
    weight_l = root_l / (root_l + torch.sqrt(rho_r))  # Roe weight of the left state
    weight_r = 1 - weight_l
    jump_u = un_r - un_l
    u_avg = torch.addcmul(un_l, weight_r, jump_u)
    # Einfeldt: d^2 = w_L c_L^2 + w_R c_R^2 + w_L w_R (u_R - u_L)^2 / 2
    d2 = torch.addcmul(c2_l, weight_r, c2_r - c2_l)
    d_avg = torch.sqrt(torch.addcmul(d2, weight_l * weight_r, jump_u * jump_u, value=0.5))
    s_l = torch.minimum(un_l - torch.sqrt(c2_l), u_avg - d_avg)
    s_r = torch.maximum(un_r + torch.sqrt(c2_r), u_avg + d_avg)

    m_l = rho_l * (s_l - un_l)  # < 0
    m_r = rho_r * (s_r - un_r)  # > 0
    momentum_jump = torch.addcmul(torch.addcmul(p_r - p_l, m_l, un_l), m_r, un_r, value=-1)
    s_star = momentum_jump / (m_l - m_r)

    left = s_star >= 0
    rho_k = torch.where(left, rho_l, rho_r)
    un_k = torch.where(left, un_l, un_r)
    ut_k = torch.where(left, ut_l, ut_r)
    p_k = torch.where(left, p_l, p_r)
    m_k = torch.where(left, m_l, m_r)
    s_k = torch.where(left, s_l, s_r)
    # S_L^- on the left, S_R^+ on the right: s_k itself where it points away from the face.
    s_out = torch.where(left ^ (s_k > 0), s_k, 0.0)

    mass_k = rho_k * un_k
    energy_k = torch.addcmul(p_k * inv_gamma_minus_1, mass_k, un_k, value=0.5)
    energy_k = torch.addcmul(energy_k, rho_k * ut_k, ut_k, value=0.5)
    # s_k == s_star only where s_out == 0, so the guard never changes a flux.
    gap = s_k - s_star
    rho_star = m_k / torch.where(gap == 0, 1.0, gap)
    energy_star = rho_star * torch.addcmul(energy_k / rho_k, s_star - un_k, s_star + p_k / m_k)

    f_mass = torch.addcmul(mass_k, s_out, rho_star - rho_k)
    return (
        f_mass,
        torch.addcmul(torch.addcmul(p_k, mass_k, un_k), s_out, rho_star * s_star - mass_k),
        f_mass * ut_k,
        torch.addcmul(un_k * (energy_k + p_k), s_out, energy_star - energy_k),
    )


def _muscl_hancock_step(
    U: Tensor,
    W: Tensor,
    gamma: Tensor,
    inv_gamma_minus_1: Tensor,
    dt_dx: Tensor,
    dt_dy: Tensor,
    pad_mode: str,
    limiter: str,
) -> Tensor:
    """One unsplit MUSCL-Hancock step; returns the new ``(B, 4, Nx, Ny)`` conserved state.

    :param U, W: conserved and primitive ``(B, 4, Nx, Ny)`` states at the old time.
    :param gamma, inv_gamma_minus_1: ``(B, 1, 1)``.
    :param dt_dx, dt_dy: ``(B, 1, 1)`` values of ``dt / dx`` and ``dt / dy``.
    """
    g = _GHOSTS
    padded = F.pad(W, (g, g, g, g), mode=pad_mode)  # (B, 4, Nx + 4, Ny + 4)
    # Work on cells -1..N along both axes: (B, 4, Nx + 2, Ny + 2); the corners are never used.
    centre = padded[:, :, 1:-1, 1:-1]
    diff_x = torch.diff(padded[:, :, :, 1:-1], dim=2)
    diff_y = torch.diff(padded[:, :, 1:-1, :], dim=3)
    half_x = _half_slopes(diff_x[:, :, :-1], diff_x[:, :, 1:], limiter)
    half_y = _half_slopes(diff_y[..., :-1], diff_y[..., 1:], limiter)

    # Half-step predictor W - dt/2 (A dW/dx + B dW/dy) = W - (dt/dx) A (dW/2) - (dt/dy) B (dW/2).
    # The y rates are the x rates with (u, v) swapped (normal velocity first); every sum is
    # written (x term + y term) so the scheme stays bit-for-bit symmetric under x <-> y.
    rho, u, v, p = centre.unbind(dim=1)
    inv_rho = 1 / rho
    gamma_p = gamma * p
    hx, hy = half_x.unbind(dim=1), half_y.unbind(dim=1)
    rate_x = _primitive_rates(u, v, rho, inv_rho, gamma_p, hx[0], hx[1], hx[2], hx[3])
    rate_y = _primitive_rates(v, u, rho, inv_rho, gamma_p, hy[0], hy[2], hy[1], hy[3])
    # Plain (out=-free) tensor code throughout, so that torch.compile can fuse the whole step.
    W_half = torch.stack(
        [
            centre[:, component] - (dt_dx * rate_x[x_rate] + dt_dy * rate_y[y_rate])
            for component, x_rate, y_rate in ((0, 0, 0), (1, 1, 2), (2, 2, 1), (3, 3, 3))
        ],
        dim=1,
    )

    # Positivity: a face value is W_half ± half slope, so all four faces of a cell are positive
    # iff rho and p exceed their half-slope magnitudes. Elsewhere the cell falls back to first
    # order (W_half = W, no slopes); NaN compares False and falls back too.
    abs_x, abs_y = half_x[:, ::3].abs(), half_y[:, ::3].abs()  # density and pressure
    margin = (W_half[:, ::3] - torch.maximum(abs_x, abs_y)).amin(dim=1)
    positive = margin > 0
    # Skipping the masks when every cell is fine saves ~4% in eager mode; a compiled graph
    # always applies them (a data-dependent branch would break the graph).
    if torch.compiler.is_compiling() or not positive.all():
        positive = positive.unsqueeze(1)
        W_half = torch.where(positive, W_half, centre)
        half_x = half_x * positive
        half_y = half_y * positive

    # x faces: between cells -1..Nx along x, interior cells along y -> (B, Nx + 1, Ny).
    left = (W_half[:, :, :-1, 1:-1] + half_x[:, :, :-1, 1:-1]).unbind(dim=1)
    right = (W_half[:, :, 1:, 1:-1] - half_x[:, :, 1:, 1:-1]).unbind(dim=1)
    mass, normal, tangential, energy = _hllc_flux(*left, *right, gamma, inv_gamma_minus_1)
    flux_x = torch.stack([mass, normal, tangential, energy], dim=1)
    # y faces -> (B, Nx, Ny + 1): the same solver with v as the normal velocity.
    (rho_b, u_b, v_b, p_b) = (W_half[:, :, 1:-1, :-1] + half_y[:, :, 1:-1, :-1]).unbind(dim=1)
    (rho_a, u_a, v_a, p_a) = (W_half[:, :, 1:-1, 1:] - half_y[:, :, 1:-1, 1:]).unbind(dim=1)
    mass, normal, tangential, energy = _hllc_flux(
        rho_b, v_b, u_b, p_b, rho_a, v_a, u_a, p_a, gamma, inv_gamma_minus_1
    )
    flux_y = torch.stack([mass, tangential, normal, energy], dim=1)  # back to (rho, rho u, rho v, E)

    dt_dx, dt_dy = dt_dx.unsqueeze(1), dt_dy.unsqueeze(1)
    return U - (dt_dx * torch.diff(flux_x, dim=2) + dt_dy * torch.diff(flux_y, dim=3))


def _advance(
    U: Tensor, W: Tensor, gamma: Tensor, dt: Tensor, dx: float, dy: float, pad_mode: str, limiter: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One time step plus what the driver needs next (the part that :func:`torch.compile` fuses).

    :param U, W: ``(B, 4, Nx, Ny)`` conserved and primitive states.
    :param gamma, dt: ``(B, 1, 1)`` adiabatic indices and time steps.
    :returns: the new ``U`` and ``W``, their ``(B,)`` maximal signal rates (see
        :func:`_max_signal_rate`) and a ``(B,)`` bool: density and pressure positive, rates finite.
    """
    U = _muscl_hancock_step(U, W, gamma, 1 / (gamma - 1), dt / dx, dt / dy, pad_mode, limiter)
    W = _primitive_stack(U, gamma - 1)
    max_rate = _max_signal_rate(W, gamma, dx, dy)
    # NaN fails every comparison; Inf in u, v or p makes the rate infinite.
    healthy = (W[:, ::3].amin(dim=(2, 3)) > 0).all(dim=1) & torch.isfinite(max_rate)
    return U, W, max_rate, healthy


def _max_signal_rate(W: Tensor, gamma: Tensor, dx: float, dy: float) -> Tensor:
    r""":math:`\max_{cells} \max((|u| + c)/\Delta x, (|v| + c)/\Delta y)` per trajectory, ``(B,)``.

    The CFL step is :math:`\Delta t = C / \text{rate}`, i.e. :math:`C \min(\Delta x/(|u|+c), \Delta y/(|v|+c))`.
    """
    rho, u, v, p = W.unbind(dim=1)
    sound = torch.sqrt(gamma * p / rho)
    rate_x = (u.abs() + sound).amax(dim=(1, 2)) / dx
    rate_y = (v.abs() + sound).amax(dim=(1, 2)) / dy
    return torch.maximum(rate_x, rate_y)


_COMPILED_ADVANCE: Callable | None = None


def _compiled_advance() -> Callable:
    """:func:`_advance` compiled once per process.

    Dynamic shapes, because the working batch shrinks as trajectories finish; torch still
    specialises a batch of one, and each (boundary, limiter) pair, into its own graph.
    """
    global _COMPILED_ADVANCE
    if _COMPILED_ADVANCE is None:
        _COMPILED_ADVANCE = torch.compile(_advance, dynamic=True)
    return _COMPILED_ADVANCE


# --------------------------------------------------------------------------- driver


def _check_inputs(rho, u, v, p, gamma, snapshot_times, dx, dy, cfl, limiter) -> tuple[Tensor, Tensor]:
    """Validate the arguments of :func:`simulate`; returns ``(gamma (B,), snapshot_times float64 (T,))``."""
    fields = {"rho": rho, "u": u, "v": v, "p": p}
    for name, field in fields.items():
        if not isinstance(field, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(field).__name__}")
    if rho.ndim != 3:
        raise ValueError(f"rho must be (B, Nx, Ny), got shape {tuple(rho.shape)}")
    for name, field in fields.items():
        if field.shape != rho.shape:
            raise ValueError(f"{name} has shape {tuple(field.shape)}, expected {tuple(rho.shape)} like rho")
        if field.dtype != rho.dtype or field.device != rho.device:
            raise ValueError(f"{name} is {field.dtype} on {field.device}; rho is {rho.dtype} on {rho.device}")
        if not torch.isfinite(field).all():
            raise ValueError(f"{name} has NaN or Inf values")
    if not rho.is_floating_point():
        raise ValueError(f"fields must be floating point, got {rho.dtype}")
    batch, nx, ny = rho.shape
    if batch < 1 or nx < 2 or ny < 2:
        raise ValueError(f"need at least one trajectory and 2 cells per axis, got shape {tuple(rho.shape)}")
    for name, field in (("density", rho), ("pressure", p)):
        bad = (field <= 0).flatten(1).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"initial {name} must be positive; non-positive values in trajectories {bad}")

    gamma = torch.as_tensor(gamma, dtype=rho.dtype, device=rho.device)
    if gamma.ndim == 0:
        gamma = gamma.expand(batch)
    if gamma.shape != (batch,):
        raise ValueError(f"gamma must have shape ({batch},) (one per trajectory), got {tuple(gamma.shape)}")
    if not (torch.isfinite(gamma).all() and (gamma > 1).all()):
        raise ValueError(f"gamma must be finite and > 1, got {gamma.tolist()}")

    times = torch.as_tensor(snapshot_times, dtype=torch.float64).cpu()
    if times.ndim != 1 or times.numel() < 1:
        raise ValueError(f"snapshot_times must be a non-empty 1-D sequence, got shape {tuple(times.shape)}")
    if not torch.isfinite(times).all() or times[0].item() != 0.0:
        raise ValueError(f"snapshot_times must be finite and start at 0.0, got {times[:3].tolist()}...")
    if (torch.diff(times) <= 0).any():
        raise ValueError("snapshot_times must be strictly increasing")

    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        raise ValueError(f"dx and dy must be positive, got dx={dx}, dy={dy}")
    if not 0 < cfl <= 1:
        raise ValueError(f"cfl must be in (0, 1], got {cfl}")
    if limiter not in LIMITERS:
        raise ValueError(f"unknown limiter {limiter!r}; known: {', '.join(LIMITERS)}")
    return gamma, times


def simulate(
    rho: Tensor,
    u: Tensor,
    v: Tensor,
    p: Tensor,
    gamma: Tensor,
    *,
    periodic: bool,
    snapshot_times: Sequence[float] | Tensor,
    dx: float,
    dy: float,
    cfl: float = 0.4,
    limiter: str = "mc",
    max_steps: int | None = None,
    progress: Callable[[float], None] | None = None,
    compile: bool = False,
    stats: dict | None = None,
) -> dict[str, Tensor]:
    r"""Advance a batch of 2-D Euler problems and return their states at ``snapshot_times``.

    Scheme: unsplit MUSCL-Hancock with HLLC fluxes (see the module docstring). Each trajectory
    ``b`` takes its own CFL step :math:`\Delta t_b = C \min(\Delta x/\max(|u|+c), \Delta y/\max(|v|+c))`,
    clipped so that it lands exactly on each snapshot time; a trajectory that has stored its
    last snapshot leaves the working batch, so no work is spent waiting.

    :param rho, u, v, p: ``(B, Nx, Ny)`` initial density, velocities and pressure (axis 1 = x).
        Float32 or float64; the computation uses their dtype and device.
    :param gamma: ``(B,)`` adiabatic index of each trajectory (``> 1``).
    :param periodic: periodic boundaries on both axes; otherwise open (zero-gradient
        extrapolation into the ghost cells, Clawpack's ``"extrap"``).
    :param snapshot_times: ``(T,)`` strictly increasing times starting at ``0.0`` (snapshot 0
        is the initial state).
    :param dx, dy: cell sizes along x and y.
    :param cfl: Courant number ``C`` in ``(0, 1]``; this unsplit scheme is stable up to about 0.6.
    :param limiter: ``"mc"`` (monotonized central) or ``"minmod"``.
    :param max_steps: raise :class:`RuntimeError` if the slowest trajectory needs more steps.
    :param progress: called after every step with the smallest time reached in the batch.
    :param compile: run the step through :func:`torch.compile`, which fuses its ~350
        element-wise passes into a few kernels: about 2x faster per step on CPU, after a
        one-off compilation of 10-70 s (cached on disk by torch; a batch that shrinks to a
        single trajectory compiles a second graph). Worth it for long runs, and on GPUs,
        where eager mode is bound by kernel launches. Agrees with eager mode to round-off.
    :param stats: if given, receives ``"steps"``: a ``(B,)`` int64 tensor, the number of time
        steps each trajectory took (for throughput figures: cells x steps / wall time).
    :returns: ``{"density", "momentum_x", "momentum_y", "energy", "pressure"}``, each
        ``(B, T, Nx, Ny)`` in the dtype and on the device of ``rho``.
    :raises ValueError: bad shapes, dtypes, non-positive initial density or pressure, bad times.
    :raises FloatingPointError: a trajectory develops NaN/Inf or non-positive density/pressure.
    """
    gamma, times = _check_inputs(rho, u, v, p, gamma, snapshot_times, dx, dy, cfl, limiter)
    batch, nx, ny = rho.shape
    n_snapshots = times.numel()
    device = rho.device
    # Allocated outside inference mode so that callers get ordinary tensors.
    out = {name: torch.empty(batch, n_snapshots, nx, ny, dtype=rho.dtype, device=device) for name in FIELDS}
    pad_mode = "circular" if periodic else "replicate"
    advance = _compiled_advance() if compile else _advance
    times_on_device = times.to(device)

    with torch.inference_mode():
        # A copy made here is an inference tensor like everything derived from it later (one
        # kind of tensor keeps torch.compile from recompiling).
        gamma = gamma.view(batch, 1, 1).clone()
        U = primitive_to_conserved(rho, u, v, p, gamma)
        W = _primitive_stack(U, gamma - 1)
        max_rate = _max_signal_rate(W, gamma, dx, dy)
        ids = torch.arange(batch, device=device)  # maps the working batch back to the input batch
        _store(out, U, W, ids, torch.zeros(batch, dtype=torch.long, device=device))
        # Per-trajectory clocks (float64 so that many small steps add up exactly enough) and
        # the index of the next snapshot each trajectory is heading for.
        t = torch.zeros(batch, dtype=torch.float64, device=device)
        next_snapshot = torch.ones(batch, dtype=torch.long, device=device)
        # Every trajectory still in the working batch steps in every iteration, so the number of
        # steps of a trajectory is the iteration in which it finishes.
        steps_taken = torch.zeros(batch, dtype=torch.long, device=device)
        steps = 0
        while n_snapshots > 1 and ids.numel() > 0:
            if max_steps is not None and steps >= max_steps:
                raise RuntimeError(
                    f"simulate: max_steps={max_steps} reached at t={t.min().item():.6g} "
                    f"before the last snapshot time {times[-1].item():.6g}"
                )
            target = times_on_device[next_snapshot]
            dt_cfl = cfl / max_rate.double()
            reached = dt_cfl >= target - t
            dt = torch.where(reached, target - t, dt_cfl)
            U, W, max_rate, healthy = advance(
                U, W, gamma, dt.to(U.dtype).view(-1, 1, 1), dx, dy, pad_mode, limiter
            )
            t = torch.where(reached, target, t + dt)  # land exactly on the snapshot time
            steps += 1

            # One host sync per step for both questions.
            any_sick, any_reached = torch.stack([~healthy.all(), reached.any()]).tolist()
            if any_sick:
                sick = ids[~healthy].tolist()
                raise FloatingPointError(
                    f"Euler solver broke down in trajectory {sick[0]} (all: {sick}) at step {steps}, "
                    f"t={t[~healthy][0].item():.6g}: density or pressure became non-positive or "
                    f"non-finite; try a smaller cfl or limiter='minmod'"
                )
            if any_reached:
                _store(out, U[reached], W[reached], ids[reached], next_snapshot[reached])
                next_snapshot = next_snapshot + reached.long()
                running = next_snapshot < n_snapshots
                if not running.all():  # finished trajectories leave the working batch
                    steps_taken[ids[~running]] = steps
                    ids, U, W, gamma, max_rate, t, next_snapshot = (
                        x[running] for x in (ids, U, W, gamma, max_rate, t, next_snapshot)
                    )
            if progress is not None:
                progress(t.min().item() if ids.numel() else times[-1].item())
    if stats is not None:
        stats["steps"] = steps_taken.cpu()
    return out


def _store(out: dict[str, Tensor], U: Tensor, W: Tensor, ids: Tensor, snapshot: Tensor) -> None:
    """Write the states ``U``/``W`` of trajectories ``ids`` as their snapshot number ``snapshot``."""
    for name, field in zip(FIELDS, (U[:, 0], U[:, 1], U[:, 2], U[:, 3], W[:, 3]), strict=True):
        out[name][ids, snapshot] = field


# --------------------------------------------------------------------------- exact Riemann solution


def sod_exact_star_state(
    rho_l: float, u_l: float, p_l: float, rho_r: float, u_r: float, p_r: float, gamma: float
) -> tuple[float, float, float, float]:
    r"""Star state of the exact 1-D Riemann problem (Toro ch. 4, Newton iteration on :math:`p_*`).

    Solves :math:`f_L(p) + f_R(p) + u_R - u_L = 0` with
    :math:`f_K = (p - p_K)\sqrt{A_K/(p + B_K)}` for a shock (:math:`p > p_K`,
    :math:`A_K = 2/((\gamma+1)\rho_K)`, :math:`B_K = p_K(\gamma-1)/(\gamma+1)`) and
    :math:`f_K = \frac{2 c_K}{\gamma-1}\big((p/p_K)^{(\gamma-1)/(2\gamma)} - 1\big)` for a
    rarefaction; :math:`u_* = (u_L + u_R)/2 + (f_R(p_*) - f_L(p_*))/2`.

    :returns: ``(p_star, u_star, rho_star_left, rho_star_right)`` (densities on each side of the contact).
    :raises ValueError: non-positive input states or a vacuum-generating problem.
    """
    if min(rho_l, p_l, rho_r, p_r) <= 0 or gamma <= 1:
        raise ValueError("densities and pressures must be positive and gamma > 1")
    c_l = math.sqrt(gamma * p_l / rho_l)
    c_r = math.sqrt(gamma * p_r / rho_r)
    if u_r - u_l >= 2 * (c_l + c_r) / (gamma - 1):
        raise ValueError("the Riemann problem generates vacuum; there is no star state")

    def pressure_function(p, rho_k, p_k, c_k):
        """``(f_K(p), f_K'(p))``."""
        if p > p_k:
            a = 2 / ((gamma + 1) * rho_k)
            b = (gamma - 1) / (gamma + 1) * p_k
            root = math.sqrt(a / (p + b))
            return (p - p_k) * root, root * (1 - (p - p_k) / (2 * (b + p)))
        ratio = p / p_k
        value = 2 * c_k / (gamma - 1) * (ratio ** ((gamma - 1) / (2 * gamma)) - 1)
        return value, ratio ** (-(gamma + 1) / (2 * gamma)) / (rho_k * c_k)

    # Primitive-variable (PVRS) guess, Toro eq. 4.47.
    p_star = max(1e-10, 0.5 * (p_l + p_r) - 0.125 * (u_r - u_l) * (rho_l + rho_r) * (c_l + c_r))
    for _ in range(100):
        f_l, df_l = pressure_function(p_star, rho_l, p_l, c_l)
        f_r, df_r = pressure_function(p_star, rho_r, p_r, c_r)
        p_new = max(1e-12, p_star - (f_l + f_r + u_r - u_l) / (df_l + df_r))
        converged = 2 * abs(p_new - p_star) / (p_new + p_star) < 1e-14
        p_star = p_new
        if converged:
            break
    f_l, _ = pressure_function(p_star, rho_l, p_l, c_l)
    f_r, _ = pressure_function(p_star, rho_r, p_r, c_r)
    u_star = 0.5 * (u_l + u_r) + 0.5 * (f_r - f_l)

    def star_density(rho_k, p_k):
        ratio = p_star / p_k
        if ratio > 1:  # shock (Toro eq. 4.50/4.57)
            g = (gamma - 1) / (gamma + 1)
            return rho_k * (ratio + g) / (g * ratio + 1)
        return rho_k * ratio ** (1 / gamma)  # rarefaction: isentropic

    return p_star, u_star, star_density(rho_l, p_l), star_density(rho_r, p_r)
