r"""Emulator steps: the adapters that turn trained emulators into the callables that
:func:`lolaray.evaluation.rollout.rollout` chains (method.md §7).

An *emulator step* is any callable

.. code-block:: python

    step(window, mask, theta, generator) -> window

that completes a window :math:`(B, C, n+1, *\mathrm{spatial})` whose known entries
(the time mask :math:`(B, n+1)`, ``True`` = known, or a
:func:`~lolaray.trainers.diffusion.known_channel_mask` when the states carry constant
fields) hold the context; the returned
window has the same shape and **equals the input on the known entries**. ``theta`` is
the conditioning :math:`(B, |\theta|)` (or ``None``) and ``generator`` a
:class:`torch.Generator`, a sequence of :math:`B` generators (one per batch row) or
``None`` (global RNG).

- :func:`diffusion_step` samples the window with the probability-flow ODE;
- :func:`guided_diffusion_step` does so guided by observations of the truth (MMPS);
- :func:`solver_step` calls a neural solver once, deterministically.

Each row's noise is drawn from its own generator (:func:`standard_normal`), so an ensemble
member's trajectory does not depend on the batch it is computed in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lolaray.trainers.diffusion import ElucidatedDenoiser, Schedule, time_mask
from lolaray.trainers.guidance import MMPSDenoiser
from lolaray.trainers.samplers import sample
from lolaray.trainers.solver import NeuralSolver

__all__ = [
    "EmulatorStep",
    "Generators",
    "diffusion_step",
    "guided_diffusion_step",
    "inference",
    "observe_states",
    "solver_step",
    "standard_normal",
]

#: One generator for the whole batch, one per batch row, or ``None`` (global RNG).
Generators = torch.Generator | Sequence[torch.Generator] | None

#: ``step(window, mask, theta, generator) -> window``, see the module docstring.
EmulatorStep = Callable[[Tensor, Tensor, Tensor | None, Generators], Tensor]


def standard_normal(shape: Sequence[int], generator: Generators, *, like: Tensor) -> Tensor:
    r"""Standard normal noise of ``shape`` with ``like``'s dtype and device.

    With a sequence of generators, row :math:`b` draws from generator :math:`b` only (on
    that generator's device), so a member's noise does not depend on the other rows of the
    batch it lands in.
    """
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        device = like.device if generator is None else generator.device
        noise = torch.randn(shape, generator=generator, dtype=like.dtype, device=device)
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} (one per row)")
        noise = torch.stack(
            [torch.randn(shape[1:], generator=g, dtype=like.dtype, device=g.device) for g in generator]
        )
    return noise.to(like.device)


@contextlib.contextmanager
def inference(module: nn.Module) -> Iterator[None]:
    """Runs ``module`` in eval mode without autograd: rollouts are inference, whatever mode
    the caller left the module in (it is restored afterwards)."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(training)


# ---------------------------------------------------------------------------- adapters


def observe_states(operator: Callable[[Tensor], Tensor], states: Tensor) -> Tensor:
    r"""Observations per state, flattened: :math:`(B, C, L, *\mathrm{spatial})` →
    :math:`(B, L, M)` with :math:`M` the entries one state gives (the layout
    :func:`guided_diffusion_step` slices by time)."""

    obs = operator(states)  # (B, C, L, *obs)
    return obs.movedim(2, 1).flatten(2)


def diffusion_step(
    denoiser: ElucidatedDenoiser,
    schedule: Schedule | None = None,
    *,
    sampler: str = "ab3",
    steps: int = 16,
) -> EmulatorStep:
    r"""Adapts a diffusion emulator: each call samples the window from
    :math:`p(x \mid \text{context}, \theta)` with the probability-flow ODE
    (:func:`lolaray.trainers.samplers.sample`, deterministic given the noise).

    The initial noise :math:`\varepsilon \sim \mathcal{N}(0, I)` of shape
    :math:`(B, C, n+1, *\mathrm{spatial})` is drawn from the passed generator(s), row
    :math:`b` from generator :math:`b` when a sequence is given, so a rollout is
    reproducible and member-wise independent of batching.

    Arguments:
        denoiser: The denoiser (evaluated in eval mode, without gradients).
        schedule: The sampling schedule (default: the denoiser's own).
        sampler: ``"ab<order>"`` (paper: ``"ab3"``), ``"euler"`` or ``"heun"``.
        steps: The number of sampler steps :math:`K` (paper: 16).
    """

    schedule = denoiser.schedule if schedule is None else schedule

    def step(window: Tensor, mask: Tensor, theta: Tensor | None, generator: Generators) -> Tensor:
        noise = standard_normal(window.shape, generator, like=window)
        with inference(denoiser):
            return sample(
                denoiser.bind(theta, mask, window),
                schedule,
                kind=sampler,
                steps=steps,
                noise=noise,
                mask=mask,
                context=window,
            )

    return step


def guided_diffusion_step(
    denoiser: ElucidatedDenoiser,
    observations: Tensor,
    operator: Callable[[Tensor], Tensor],
    *,
    decoder: Callable[[Tensor], Tensor] | None = None,
    var_y: float = 1e-2,
    iterations: int = 1,
    solver: str = "gmres",
    weight: float = 1.0,
    schedule: Schedule | None = None,
    sampler: str = "ab3",
    steps: int = 16,
) -> EmulatorStep:
    r"""A diffusion step guided by observations of the true states (MMPS, method.md §7).

    For the window starting at trajectory state :math:`i` with :math:`j` known states,
    the states being generated are :math:`i + j, \dots, i + n`; their observations
    :math:`y_i` guide the sampler through :math:`A_i(z) = \mathcal{A}(D(z_{j:}))`
    (:class:`~lolaray.trainers.guidance.MMPSDenoiser`). The rollout passes :math:`i`
    (``start``); a window past the observed states is sampled unguided.

    Arguments:
        denoiser: The diffusion emulator.
        observations: :math:`(B, L_y, M)` from :func:`observe_states` of the (noisy)
            standardized truth, one row per batch row (repeat them for ensemble members).
        operator: :math:`\mathcal{A}` on standardized pixel states.
        decoder: Latent → standardized pixel states, per state ``(N, C_lat, *s) → (N, C, *S)``
            (``None``: a pixel-space emulator).
        var_y, iterations, solver, weight: See :class:`~lolaray.trainers.guidance.MMPSDenoiser`.
        schedule, sampler, steps: As :func:`diffusion_step`.
    """

    schedule = denoiser.schedule if schedule is None else schedule

    def observe_window(z: Tensor) -> Tensor:
        # (B, C_lat, T, *s) -> standardized pixels (B, C, T, *S) -> (B, T·M)
        if decoder is not None:
            b, c, t = z.shape[:3]
            flat = z.movedim(2, 1).reshape(b * t, c, *z.shape[3:])
            x = decoder(flat.to(torch.float32)).to(z.dtype)
            z = x.reshape(b, t, *x.shape[1:]).movedim(1, 2)
        return observe_states(operator, z).flatten(1)

    def step(
        window: Tensor, mask: Tensor, theta: Tensor | None, generator: Generators, *, start: int
    ) -> Tensor:
        known = int(time_mask(mask)[0].sum())
        y = observations[:, start + known : start + window.shape[2]].to(window.device)
        noise = standard_normal(window.shape, generator, like=window)
        with inference(denoiser):
            denoise = denoiser.bind(theta, mask, window)
            if y.shape[1] > 0:
                generated = known + y.shape[1]
                denoise = MMPSDenoiser(
                    denoise,
                    schedule,
                    lambda z: observe_window(z[:, :, known:generated]),
                    y.reshape(y.shape[0], -1).to(window.dtype),
                    var_y=var_y,
                    iterations=iterations,
                    solver=solver,
                    weight=weight,
                )
            return sample(
                denoise, schedule, kind=sampler, steps=steps, noise=noise, mask=mask, context=window
            )

    step.takes_start = True
    return step


def solver_step(solver: NeuralSolver) -> EmulatorStep:
    r"""Adapts a neural solver: one deterministic call
    :meth:`~lolaray.trainers.solver.NeuralSolver.predict` per window (the generator is
    ignored; known entries come back equal to the context)."""

    def step(window: Tensor, mask: Tensor, theta: Tensor | None, generator: Generators) -> Tensor:
        with inference(solver):
            return solver.predict(window, mask, theta)

    return step
