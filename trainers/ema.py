r"""Exponential moving average of a network's weights (the snapshot a training ships).

After every optimizer step :math:`t = 1, 2, \dots`,

.. math:: \bar\phi \leftarrow \beta_t \bar\phi + (1 - \beta_t)\, \phi, \qquad
    \beta_t = \min\!\left(\beta, \frac{1 + t}{10 + t}\right),

the warm-up of :math:`\beta_t` keeping the average from being dominated by the random
initialisation in short runs (at :math:`\beta = 0.999`, :math:`\beta_t` reaches
:math:`\beta` after ~9 000 steps; after 100 steps it averages over the last ~10). Floating
buffers are averaged like parameters; integer buffers are copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    r"""The running average :math:`\bar\phi` of ``model``'s weights.

    :param model: the network being trained (its ``state_dict`` keys are the average's).
    :param decay: :math:`\beta \in (0, 1)`.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        r""":math:`\beta_t` of the next update."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (after an optimizer step)."""
        beta = self.current_decay()
        for key, value in model.state_dict().items():
            average = self.average[key]
            if average.is_floating_point():
                average.lerp_(value.detach().to(average.dtype), 1.0 - beta)
            else:
                average.copy_(value)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[None]:
        """Within the block ``model`` holds the averaged weights (e.g. for validation)."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(trained)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for key, value in state["average"].items():
            self.average[key].copy_(value)
