r"""One optimizer step, the unit every training path shares.

:class:`TrainingStep` is what :func:`~lolaray.trainers.loop.run_training` calls for each
batch, and what the benchmarks (``benchmarks/mfu.py``, ``benchmarks/ae_train_throughput.py``),
the paper-scale dry run (:mod:`lolaray.sweeps.dry_run`) and the overfit tests time or
train with -- so they measure the code that trains. One step, top to bottom:

1. the loss of the batch, :math:`\ell = L(f_\theta, b)`, under the precision's autocast;
2. :math:`\nabla_\theta \ell` (after DDP's all-reduce when the model is wrapped in it);
3. its norm :math:`g = \lVert \nabla_\theta \ell \rVert_2`, clipped to ``grad_clip``;
4. if :math:`g` is not finite the step is skipped (gradients dropped, nothing updated):
   every rank sees the same reduced norm, so every rank skips together;
5. else the optimizer's update, the learning-rate schedule's step and the weight average's.

Hooks see each batch before its loss and may replace the loss: fault injection for the
tests of the recovery paths (:func:`fault_hooks`), never a branch of the step itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["FaultInjection", "StepHook", "StepOutcome", "TrainingStep", "fault_hooks"]

#: ``loss(model, batch, device) -> (scalar loss, samples)``: a network's objective on a batch.
Loss = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, int]]


@dataclass(frozen=True)
class FaultInjection:
    """Failures injected on purpose, for tests of the recovery paths.

    :param kill_rank, kill_at_steps: the worker of rank ``kill_rank`` exits abruptly when it
        is about to take each optimizer step of ``kill_at_steps`` — once each: a marker file
        ``lolaray-fault-<step>`` in ``marker_dir`` records that it happened, so the
        restarted group runs through.
    :param nonfinite_steps: batch iterations (counted from 0 over the whole run, skipped
        ones included) whose loss is replaced by NaN.
    """

    kill_rank: int | None = None
    kill_at_steps: tuple[int, ...] = ()
    marker_dir: str | None = None
    nonfinite_steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class StepOutcome:
    """What one :class:`TrainingStep` did.

    :param loss: the batch's loss (before the update).
    :param grad_norm: the gradient's norm before clipping.
    :param samples: the batch's samples.
    :param taken: whether the optimizer stepped (``False``: a non-finite gradient, skipped).
    """

    loss: float
    grad_norm: float
    samples: int
    taken: bool


class StepHook(Protocol):
    """Sees every batch of a training: ``(step, iteration, loss) -> loss``, where ``step``
    counts optimizer steps taken and ``iteration`` batches (skipped ones included)."""

    def __call__(self, step: int, iteration: int, loss: torch.Tensor) -> torch.Tensor: ...


class TrainingStep:
    """One optimizer step of ``model`` on a batch (the module docstring lists what it does).

    :param model: the network (possibly wrapped by DDP; its parameters are clipped).
    :param optimizer: its optimizer; ``scheduler``: a per-step learning-rate schedule, or ``None``.
    :param loss: ``loss(model, batch, device) -> (loss, samples)``.
    :param device: where batches go (the loss moves them).
    :param grad_clip: the largest gradient norm applied.
    :param autocast: a context manager factory for the forward pass (the precision's).
    :param average: a :class:`~lolaray.trainers.ema.WeightAverage` updated after each step.
    :param hooks: :class:`StepHook` s, in order.
    :param step, iteration: the counts so far (a resumed training's).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        loss: Loss,
        device: torch.device | str = "cpu",
        scheduler=None,
        grad_clip: float = 1.0,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        average=None,
        hooks: Sequence[StepHook] = (),
        step: int = 0,
        iteration: int = 0,
    ):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loss, self.device, self.grad_clip = loss, torch.device(device), grad_clip
        self.autocast, self.average, self.hooks = autocast, average, tuple(hooks)
        self.step, self.iteration = step, iteration
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, batch: Any) -> StepOutcome:
        with self.autocast():
            loss, samples = self.loss(self.model, batch, self.device)
        for hook in self.hooks:
            loss = hook(self.step, self.iteration, loss)
        self.iteration += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutcome(float(loss.detach()), grad_norm, samples, taken=False)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.average is not None:
            self.average.update(getattr(self.model, "module", self.model))
        self.step += 1
        return StepOutcome(float(loss.detach()), grad_norm, samples, taken=True)


def fault_hooks(fault: FaultInjection, *, rank: int) -> list[StepHook]:
    """The :class:`StepHook` s that inject ``fault`` on this ``rank`` (none for no fault)."""
    hooks: list[StepHook] = []
    if fault.kill_at_steps and rank == fault.kill_rank:
        folder = fault.marker_dir or tempfile.gettempdir()

        def kill(step: int, iteration: int, loss: torch.Tensor) -> torch.Tensor:
            if step in fault.kill_at_steps:
                marker = os.path.join(folder, f"lolaray-fault-{step}")
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    os._exit(17)  # an abrupt worker death, as a lost node would look
            return loss

        hooks.append(kill)
    if fault.nonfinite_steps:

        def nonfinite(step: int, iteration: int, loss: torch.Tensor) -> torch.Tensor:
            return loss * float("nan") if iteration in fault.nonfinite_steps else loss

        hooks.append(nonfinite)
    return hooks
