r"""Optimizers and the cosine learning-rate schedule (method.md §2, §5, §10, §11).

* ``"psgd"``: heavyball's Kronecker-factored PSGD, configured like the paper's autoencoder runs.
  The reference used heavyball 1.4.3's ``ForeachCachedDelayedPSGDKron(beta=0.9,
  preconditioner_update_probability=p(n), max_size_triangular=4096, merge_dims=False)`` with
  :math:`p(n) = \max(1/64, 0.999^n)`. heavyball 3.x removed that class; its migration guide maps
  it to ``PSGDKron(..., delayed=True)`` (caching is a constructor flag; in 3.2.1 its class default
  is ``cached=False``, so it is set explicitly here). The schedule is expressed with heavyball's
  own picklable ``precond_update_prob_schedule(max_prob=1, min_prob=1/64, decay=0.999,
  flat_start=0)``, which evaluates exactly :math:`\max(1/64, 0.999^n)`; heavyball 3 updates the
  preconditioner on a deterministic accumulation of these probabilities (its stochastic mode was
  removed).
* ``"adam"`` / ``"adamw"``: ``torch.optim.Adam`` / ``AdamW`` with the reference's emulator betas
  ``(0.9, 0.99)`` unless given; ``fused=True`` when every parameter is on CUDA
  (:func:`~lolaray.trainers.hardware.use_fused_adam`).

heavyball and ``torch.compile``: heavyball compiles parts of its step with ``torch.compile``
(global ``heavyball.utils.compile_mode``, read at call time). On CPU that fails or takes minutes
for the first step, so :func:`build_optimizer` sets ``heavyball.utils.compile_mode = None``
(eager) when no parameter lives on a CUDA device, and ``"default"`` (the reference's setting)
otherwise. This is process-global state: the last PSGD optimizer built decides it for every
heavyball optimizer in the process (pass ``torch_compile=`` to force it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import heavyball
import heavyball.utils
import torch
from torch.optim.lr_scheduler import LambdaLR

from lolaray.trainers.hardware import use_fused_adam

__all__ = ["OPTIMIZERS", "build_optimizer", "cosine_schedule", "psgd_update_probability"]

#: Names accepted by :func:`build_optimizer`.
OPTIMIZERS = ("psgd", "adam", "adamw")

# Betas of the reference's ``configs/optim/adamw.yaml`` (emulators): (0.9, 0.99).
_DEFAULT_ADAM_BETAS = (0.9, 0.99)
# PSGD momentum of the reference's ``configs/optim/psgd.yaml``.
_DEFAULT_PSGD_BETA = 0.9


def psgd_update_probability():
    r"""Preconditioner update probability :math:`p(n) = \max(1/64, 0.999^n)` of the reference.

    Returned as heavyball's ``functools.partial`` (not a lambda) because heavyball pickles the
    schedule into the optimizer's ``state_dict``.
    """

    return heavyball.utils.precond_update_prob_schedule(
        max_prob=1.0, min_prob=1.0 / 64, decay=0.999, flat_start=0
    )


def _parameters(params: Iterable[Any]) -> tuple[list[Any], list[torch.Tensor]]:
    """Materialise ``params`` (tensors or param-group dicts) and list the tensors they hold."""
    items = list(params)
    tensors: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, dict):
            group = item["params"]
            tensors.extend([group] if isinstance(group, torch.Tensor) else list(group))
        else:
            tensors.append(item)
    if not tensors:
        raise ValueError("build_optimizer got an empty parameter list")
    return items, tensors


def build_optimizer(
    params: Iterable[Any],
    *,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] | None = None,
    torch_compile: bool | None = None,
    **kw: Any,
) -> torch.optim.Optimizer:
    r"""Build an optimizer by name.

    :param params: parameters or param-group dicts (as for any ``torch.optim`` optimizer).
    :param name: ``"psgd"``, ``"adam"`` or ``"adamw"``.
    :param lr: learning rate (paper: 1e-5 for the AE with PSGD, 1e-4 for emulators with Adam).
    :param weight_decay: weight decay (0 in the paper).
    :param betas: Adam ``(β1, β2)``, default ``(0.9, 0.99)``; for PSGD only ``β1`` is used, as the
        momentum ``beta`` (default 0.9).
    :param torch_compile: PSGD only — whether heavyball may ``torch.compile`` its step; ``None`` means
        "only if a parameter is on CUDA" (see the module docstring).
    :param kw: extra keyword arguments for the optimizer class (for PSGD they override the
        reference settings, e.g. ``preconditioner_update_probability=...``).
    :raises ValueError: for an unknown ``name`` or an empty parameter list.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
    items, tensors = _parameters(params)

    if key in ("adam", "adamw"):
        cls = torch.optim.Adam if key == "adam" else torch.optim.AdamW
        # One fused kernel per step on CUDA; the default (foreach) implementation elsewhere.
        if "fused" not in kw and use_fused_adam(t.device.type for t in tensors):
            kw = {**kw, "fused": True}
        return cls(items, lr=lr, weight_decay=weight_decay, betas=betas or _DEFAULT_ADAM_BETAS, **kw)

    if torch_compile is None:
        torch_compile = any(t.device.type == "cuda" for t in tensors)
    heavyball.utils.compile_mode = "default" if torch_compile else None
    settings: dict[str, Any] = {
        "beta": betas[0] if betas is not None else _DEFAULT_PSGD_BETA,
        "weight_decay": weight_decay,
        "preconditioner_update_probability": psgd_update_probability(),
        "max_size_triangular": 4096,
        "merge_dims": False,
        "delayed": True,
        "cached": True,
        # heavyball 3 clears p.grad inside step() by default; keep torch's semantics so trainers
        # can treat every optimizer alike (e.g. inspect gradients after stepping).
        "consume_grad": False,
    }
    settings.update(kw)
    return heavyball.PSGDKron(items, lr=lr, **settings)


@dataclass(frozen=True)
class _CosineFactor:
    """Picklable LR factor (LambdaLR stores callable objects' ``__dict__`` in its state)."""

    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    r"""Cosine decay of the learning rate to zero, after an optional linear warmup.

    Factor applied to the base LR after ``s`` calls of ``scheduler.step()``:

    .. math::

        f(s) = \begin{cases} (s + 1) / W & s < W \\
               \tfrac12 \bigl(1 + \cos(\pi \min(1, (s - W) / (S - W)))\bigr) & s \ge W \end{cases}

    With ``W = 0`` this is the reference's :math:`(1 + \cos(\pi s / S)) / 2`. The unit of ``s`` is
    whatever the caller steps it by (the reference steps per epoch, with ``S`` = epochs).

    :param optimizer: the optimizer whose LR is scheduled.
    :param total_steps: :math:`S > 0`, steps until the factor reaches 0.
    :param warmup_steps: :math:`W \in [0, S)`.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
    return LambdaLR(optimizer, _CosineFactor(total_steps=total_steps, warmup_steps=warmup_steps))
