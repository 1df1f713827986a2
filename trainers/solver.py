r"""Deterministic neural solver (method.md §6).

The neural solver is the emulator's deterministic baseline: the same backbone
predicts the whole window from its known entries in a single call,

.. math:: \hat{x} = f_\phi(x \odot b,\; b,\; \mathrm{LabelEmb}(\theta))

trained with :math:`\operatorname{mean}\big((x - \hat{x})^2\big)` over all entries
(known ones included), without noise or preconditioning.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .diffusion import expand_mask
from .transformer import LabelEmbedding

__all__ = ["NeuralSolver", "solver_loss"]


class NeuralSolver(nn.Module):
    r"""Neural solver :math:`f_\phi(x \odot b, b, \theta)`.

    Arguments:
        backbone: A :class:`~lolaray.trainers.transformer.SpatioTemporalTransformer`
            with ``cond_channels`` = :math:`C` (or 1).
        label_features: The size :math:`|\theta|` of the conditioning vector (0 for
            none, then the modulation is a zero vector and the blocks' modulation
            reduces to learned constants).
        label_standardization: ``log``, ``mean`` and ``std`` of
            :class:`~lolaray.trainers.transformer.LabelEmbedding` (default: raw :math:`\theta`).
    """

    def __init__(
        self, backbone: nn.Module, *, label_features: int = 0, label_standardization: Mapping | None = None
    ):
        super().__init__()

        self.backbone = backbone
        self.label_features = label_features
        self.label_embedding = (
            LabelEmbedding(label_features, backbone.mod_features, **(label_standardization or {}))
            if label_features > 0
            else None
        )

    def modulation(self, label: Tensor | None, batch: int, like: Tensor) -> Tensor:
        r"""Returns :math:`m = \mathrm{LabelEmb}(\theta)`, :math:`(B, M)`."""

        if self.label_embedding is None:
            return like.new_zeros(batch, self.backbone.mod_features)
        if label is None or label.shape != (batch, self.label_features):
            raise ValueError(
                f"expected a label of shape {(batch, self.label_features)}, "
                f"got {None if label is None else tuple(label.shape)}"
            )
        return self.label_embedding(label.to(like.dtype))

    def forward(self, x: Tensor, mask: Tensor, label: Tensor | None = None) -> Tensor:
        r"""Returns the predicted window :math:`f_\phi(x \odot b, b, \theta)`.

        Arguments:
            x: The window :math:`(B, C, T, H, W[, Z])`; only known entries are read.
            mask: The known entries, :math:`(B, T)` or broadcastable to :math:`x`.
            label: The conditioning vectors :math:`(B, |\theta|)`.

        Returns:
            The prediction, shape of :math:`x` (raw network output everywhere).
        """

        known = expand_mask(mask, x)
        cond = known if getattr(self.backbone, "cond_channels", x.shape[1]) == x.shape[1] else known[:, :1]
        mod = self.modulation(label, x.shape[0], x)
        # x·b: zero (not garbage) at unknown entries, so the network cannot peek.
        return self.backbone(x * known, mod, cond).to(x.dtype)

    @torch.no_grad()
    def predict(self, context: Tensor, mask: Tensor, label: Tensor | None = None) -> Tensor:
        r"""Returns the prediction with the known entries set exactly to the context
        (for rollouts; no gradient)."""

        known = expand_mask(mask, context)
        return torch.where(known, context, self(context, mask, label))


def solver_loss(
    solver: NeuralSolver,
    x: Tensor,
    label: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Returns :math:`\operatorname{mean}\big((x - f_\phi(x \odot b, b, \theta))^2\big)`
    over all entries of the windows :math:`x` (known ones included).

    Arguments:
        solver: The neural solver.
        x: The windows :math:`(B, C, T, H, W[, Z])`.
        label: The conditioning vectors :math:`(B, |\theta|)`.
        mask: The known entries, :math:`(B, T)` or broadcastable to :math:`x` (required).
    """

    if mask is None:
        raise ValueError("the neural solver needs a context mask")
    return (solver(x, mask, label).float() - x.float()).square().mean()
