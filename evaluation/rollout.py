r"""Autoregressive rollouts of emulators (method.md §7).

An *emulator step* (:data:`~lolaray.evaluation.emulator_steps.EmulatorStep`) completes a
window whose known entries hold the context; :mod:`lolaray.evaluation.emulator_steps`
adapts the diffusion emulators and the neural solvers to it.

:func:`rollout` chains steps: step 0 conditions on the :math:`c` given states and
keeps the whole window; every further step takes the last :math:`o` generated states
as context and appends the :math:`n + 1 - o` new ones, until :math:`L` states:

.. math::
    L_0 = n + 1, \qquad L_{k+1} = L_k + (n + 1 - o), \qquad
    \#\text{steps} = 1 + \Big\lceil \frac{\max(L - n - 1, 0)}{n + 1 - o} \Big\rceil

(Euler: :math:`n + 1 = 5`, :math:`o = 1`, :math:`L = 26` → 7 steps.)

**Ensembles.** The :math:`K` members of an ensemble are batched along :math:`B`: the
caller repeats the initial states and :math:`\theta` :math:`K` times (e.g.
``initial.expand(K, ...)``) and passes one generator per member
(:func:`member_generators`). A batched sampler would draw the noise of all rows from one
stream, so that member :math:`k`'s noise would depend on the batch it lands in;
instead each row's noise is drawn from its own generator and the rows are stacked, and
member :math:`k`'s trajectory is the same whether it is computed alone or with others.
:func:`ensemble_rollout` does all of this for one trajectory, in blocks of at most
``max_batch`` members (:func:`split_members`).

**Seeds.** Every random draw in evaluation derives from (seed, trajectory index, start
step, member) through :func:`member_seed`, so results do not depend on how the work is
split across Ray actors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lolaray.evaluation.emulator_steps import EmulatorStep, Generators, inference
from lolaray.trainers.diffusion import context_mask, known_channel_mask

__all__ = [
    "decode_in_chunks",
    "ensemble_rollout",
    "lead_times",
    "member_generators",
    "member_seed",
    "rollout",
    "rollout_origin",
    "rollout_steps",
    "split_members",
]

# ------------------------------------------------------------------------------- seeds


def member_seed(seed: int, trajectory: int, start: int, member: int) -> int:
    r"""Returns a stable 63-bit seed for one ensemble member of one rollout.

    .. math:: \mathrm{int}\big(\mathrm{sha256}(\texttt{"seed,trajectory,start,member"})_{0:8}\big)
        \bmod 2^{63}

    A cryptographic hash (not Python's salted :func:`hash`) so the value is the same
    in every process, on every machine, and nearby tuples give unrelated streams.

    Arguments:
        seed: The evaluation seed.
        trajectory: The trajectory index in the split.
        start: The start step of the rollout.
        member: The ensemble member index :math:`k`.
    """

    key = f"{int(seed)},{int(trajectory)},{int(start)},{int(member)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 2**63


def member_generators(
    seed: int,
    trajectory: int,
    start: int,
    members: int | Sequence[int],
    *,
    device: torch.device | str = "cpu",
) -> list[torch.Generator]:
    r"""Returns one freshly seeded generator per member (:func:`member_seed`).

    Arguments:
        seed, trajectory, start: See :func:`member_seed`.
        members: A count :math:`K` (members :math:`0, \dots, K-1`) or explicit member
            indices (e.g. a block of :func:`split_members`).
        device: The generators' device (noise is drawn there, then moved to the data).
    """

    indices = range(members) if isinstance(members, int) else members
    return [
        torch.Generator(device=device).manual_seed(member_seed(seed, trajectory, start, k)) for k in indices
    ]


def split_members(members: int, max_batch: int) -> list[range]:
    r"""Splits members :math:`0, \dots, K-1` into consecutive blocks of at most
    :py:`max_batch` (so a large ensemble runs in several batches instead of running
    out of memory); each member is in exactly one block.

    >>> split_members(5, 2)
    [range(0, 2), range(2, 4), range(4, 5)]
    """

    if members < 1:
        raise ValueError(f"need at least one ensemble member, got {members}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return [range(i, min(i + max_batch, members)) for i in range(0, members, max_batch)]


# ----------------------------------------------------------------------------- rollout


def _check_rollout(*, window: int, context: int, overlap: int, length: int) -> None:
    if window < 2:
        raise ValueError(f"window must hold at least 2 states (context + target), got {window}")
    if not 1 <= context < window:
        raise ValueError(f"context must be in [1, window - 1] = [1, {window - 1}], got {context}")
    if not 1 <= overlap < window:
        raise ValueError(f"overlap must be in [1, window - 1] = [1, {window - 1}], got {overlap}")
    if length < context:
        raise ValueError(f"length ({length}) must be >= context ({context}): the context is part of it")


def rollout_steps(*, window: int, context: int, overlap: int, length: int) -> int:
    r"""Returns the number of emulator calls of :func:`rollout`,
    :math:`1 + \lceil \max(L - n - 1, 0) / (n + 1 - o) \rceil` (0 if :math:`L = c`)."""

    _check_rollout(window=window, context=context, overlap=overlap, length=length)
    if length == context:
        return 0
    return 1 + math.ceil(max(length - window, 0) / (window - overlap))


def rollout(
    step: EmulatorStep,
    initial: Tensor,
    theta: Tensor | None = None,
    *,
    window: int,
    context: int,
    overlap: int,
    length: int,
    generator: Generators = None,
    known: Tensor | None = None,
) -> Tensor:
    r"""Autoregressive rollout of :math:`L` states from :math:`c` given ones.

    Step 0 completes a window of :math:`n + 1` states whose first :math:`c` are the
    given context and keeps all of them (the regenerated context is replaced by the
    given states, exactly). Each further step completes a window whose first :math:`o`
    states are the last :math:`o` states produced so far and appends its last
    :math:`n + 1 - o` states. The output is cut to :math:`L` states.

    Ensemble members are batched along :math:`B` by the caller (see the module
    docstring), with one generator per row for batch-independent noise.

    Arguments:
        step: The emulator step (:func:`diffusion_step`, :func:`solver_step`, ...).
        initial: The first :math:`c` states :math:`(B, C, c, *\mathrm{spatial})`.
        theta: The conditioning :math:`(B, |\theta|)` or ``None``.
        window: The window length :math:`n + 1`.
        context: The context length :math:`1 \leq c < n + 1` (must equal
            ``initial.shape[2]``).
        overlap: The context length :math:`1 \leq o < n + 1` of later steps.
        length: The number of states :math:`L \geq c` to return (context included).
        generator: Passed to every step (one, one per row, or ``None``); a generator
            is consumed step after step, so the whole rollout is one stream per row.
        known: The last :math:`K` channels of every state are known ones (constant
            fields, time-varying scalars): their values for the :math:`L` states,
            :math:`(B, K, L', *\mathrm{spatial})` with :math:`L' \geq L`. Each window
            takes them from there at every time (the last one repeated past :math:`L'`),
            its mask marks them known
            (:func:`~lolaray.trainers.diffusion.known_channel_mask`), and the step
            returns them unchanged.

    Returns:
        The trajectory :math:`(B, C, L, *\mathrm{spatial})`, whose first :math:`c`
        states are :py:`initial`.
    """

    _check_rollout(window=window, context=context, overlap=overlap, length=length)
    if initial.ndim < 4:
        raise ValueError(
            f"initial must be (B, C, c, *spatial) with at least one spatial axis, got {tuple(initial.shape)}"
        )
    if initial.shape[2] != context:
        raise ValueError(f"initial holds {initial.shape[2]} states on dim 2 but context = {context}")
    if theta is not None and theta.shape[0] != initial.shape[0]:
        raise ValueError(f"theta has batch {theta.shape[0]} but initial has batch {initial.shape[0]}")
    if known is not None and (
        known.shape[0] != initial.shape[0] or known.shape[2] < length or known.shape[1] >= initial.shape[1]
    ):
        raise ValueError(
            f"known must be (B, K, L', *spatial) with B = {initial.shape[0]}, K < {initial.shape[1]} "
            f"channels and L' >= {length} states, got {tuple(known.shape)}"
        )
    if length == context:
        return initial.clone()

    batch, channels, _, *spatial = initial.shape

    def complete(known_states: Tensor, start: int) -> Tensor:
        # Unknown entries start at zero; the step must not read them (the samplers
        # overwrite them with noise, the solver multiplies them by the mask).
        j = known_states.shape[2]
        win = initial.new_zeros(batch, channels, window, *spatial)
        win[:, :, :j] = known_states
        mask = context_mask(batch, window, j, device=initial.device)
        if known is not None:
            given = known[:, :, start : start + window]
            pad = window - given.shape[2]  # a last window past the L' states: repeat the last
            given = torch.cat([given, given[:, :, -1:].expand(-1, -1, pad, *spatial)], 2) if pad else given
            win[:, -known.shape[1] :] = given
            mask = known_channel_mask(mask, win, known.shape[1])
        if getattr(step, "takes_start", False):  # guided steps need the window's place in time
            out = step(win, mask, theta, generator, start=start)
        else:
            out = step(win, mask, theta, generator)
        if out.shape != win.shape:
            raise ValueError(
                f"the emulator step returned shape {tuple(out.shape)}, expected {tuple(win.shape)}"
            )
        return out

    first = complete(initial, 0)
    # Keep the regenerated context slots but with the given states, exactly.
    states = [initial, first[:, :, context:]]
    produced = window

    while produced < length:
        states.append(complete(_last_states(states, overlap), produced - overlap)[:, :, overlap:])
        produced += window - overlap

    return torch.cat(states, dim=2)[:, :, :length]


def _last_states(states: list[Tensor], count: int) -> Tensor:
    # The last `count` states of the pieces produced so far (a piece may be shorter
    # than the overlap, e.g. one new state per step with o = n), without
    # concatenating the whole trajectory at every step.
    tail, have = [], 0
    for piece in reversed(states):
        tail.append(piece[:, :, max(piece.shape[2] - (count - have), 0) :])
        have += tail[-1].shape[2]
        if have == count:
            break
    return torch.cat(tail[::-1], dim=2)


def lead_times(length: int, context: int, stride: int) -> Tensor:
    r"""Returns the lead time, in simulation steps, of each state of a rollout,
    :math:`(t - c + 1)\,\Delta` for :math:`t = 0, \dots, L - 1` (int64, :math:`(L,)`).

    The last context state has lead 0, earlier context states negative leads; generated
    states have leads :math:`\Delta, 2\Delta, \dots`.

    Arguments:
        length: The number of states :math:`L`.
        context: The context length :math:`c`.
        stride: The time stride :math:`\Delta` between states.
    """

    if length < 0 or context < 1 or stride < 1:
        raise ValueError(f"need length >= 0, context >= 1, stride >= 1, got {length}, {context}, {stride}")
    return (torch.arange(length, dtype=torch.int64) - context + 1) * stride


def rollout_origin(start: int, context: int, stride: int) -> int:
    r"""Returns the index, in the strided trajectory :math:`x_{0}, x_{\Delta}, \dots`, of
    the first context state of the rollout whose initial state (its last context state)
    is simulation step :math:`s`: the :math:`c` context states are
    :math:`s - (c - 1)\Delta, \dots, s`, moved forward to begin at the trajectory's first
    state when :math:`s < (c - 1)\Delta` (the reference's ``x[max(0, s − (c−1)Δ)::Δ]``).
    Every context length thus predicts from the same initial state.

    Arguments:
        start: The initial state's simulation step :math:`s`, a multiple of :math:`\Delta`.
        context: The context length :math:`c`.
        stride: The time stride :math:`\Delta` between states.
    """

    if start < 0 or context < 1 or stride < 1:
        raise ValueError(f"need start >= 0, context >= 1, stride >= 1, got {start}, {context}, {stride}")
    if start % stride:
        raise ValueError(
            f"start state {start} is not a multiple of the stride {stride}: a rollout's states lie on "
            "the strided trajectory"
        )
    return max(0, start // stride - (context - 1))


def ensemble_rollout(
    step: EmulatorStep,
    initial: Tensor,
    theta: Tensor | None = None,
    *,
    members: int,
    seed: int,
    trajectory: int,
    start: int,
    window: int,
    context: int,
    overlap: int,
    length: int,
    max_batch: int | None = None,
    known: Tensor | None = None,
) -> Tensor:
    r"""Rolls out :math:`K` ensemble members of one trajectory, in blocks of at most
    :py:`max_batch` members, member :math:`k` seeded by
    :func:`member_seed` (seed, trajectory, start, k).

    Arguments:
        step: The emulator step.
        initial: The context of one trajectory :math:`(1, C, c, *\mathrm{spatial})`.
        theta: Its conditioning :math:`(1, |\theta|)` or ``None``.
        members: The ensemble size :math:`K`.
        seed, trajectory, start: See :func:`member_seed`.
        window, context, overlap, length: See :func:`rollout`.
        known: The known channels of the trajectory, :math:`(1, K, L', *\mathrm{spatial})`
            (see :func:`rollout`).
        max_batch: The most members per batch (default: all at once).

    Returns:
        The members :math:`(K, C, L, *\mathrm{spatial})`.
    """

    if initial.ndim < 4 or initial.shape[0] != 1:
        raise ValueError(
            f"ensemble_rollout takes one trajectory: initial must be (1, C, c, *spatial), "
            f"got {tuple(initial.shape)}"
        )
    if theta is not None and (theta.ndim != 2 or theta.shape[0] != 1):
        raise ValueError(
            f"ensemble_rollout takes one trajectory: theta must be (1, D), got {tuple(theta.shape)}"
        )
    initial = initial[0]
    theta = None if theta is None else theta[0]

    blocks = []
    for block in split_members(members, members if max_batch is None else max_batch):
        n = len(block)
        blocks.append(
            rollout(
                step,
                initial.expand(n, *initial.shape),
                None if theta is None else theta.expand(n, *theta.shape),
                window=window,
                context=context,
                overlap=overlap,
                length=length,
                generator=member_generators(seed, trajectory, start, block, device="cpu"),
                known=None if known is None else known.expand(n, *known.shape[1:]),
            )
        )
    return torch.cat(blocks, dim=0)


# ---------------------------------------------------------------------------- decoding


def decode_in_chunks(autoencoder: nn.Module, z: Tensor, chunk: int = 4) -> Tensor:
    r"""Decodes a latent trajectory state by state, :py:`chunk` time steps at a time
    (memory: the decoder's activations scale with the number of states per call).

    .. math:: (B, C_\text{lat}, T, h, w[, z]) \to (B, C, T, H, W[, Z])

    Runs :py:`autoencoder.decode` in eval mode without gradients (no latent noise,
    as the reference's ``decode(noisy=False)``).

    Arguments:
        autoencoder: Any module with ``decode((N, C_lat, h, w[, z])) -> (N, C, H, W[, Z])``.
        z: The latent trajectory, time on dim 2.
        chunk: The number of time steps per decoder call (reference: 4 for Euler, 16 for TGC).
    """

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if z.ndim < 4:
        raise ValueError(f"expected a latent trajectory (B, C_lat, T, *spatial), got shape {tuple(z.shape)}")

    batch, _, steps = z.shape[:3]
    # (B, C, T, ...) -> (B, T, C, ...): states become rows of the decoder's batch.
    states = z.movedim(2, 1)
    out = []
    with inference(autoencoder):
        for i in range(0, steps, chunk):
            part = states[:, i : i + chunk]
            x = autoencoder.decode(part.flatten(0, 1))
            out.append(x.unflatten(0, (batch, part.shape[1])))
    return torch.cat(out, dim=1).movedim(1, 2)
