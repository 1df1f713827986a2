"""Symmetry augmentations of channels-first states that keep vector fields consistent.

For a state ``x`` of shape ``(C, T, *spatial)`` whose channel ``c`` is either a scalar or
the component of a vector field along spatial axis ``vector_axis[c]``:

- **flip** of axis ``a``: ``x ↦ x(…, −s_a, …)``; components along ``a`` change sign; the
  two boundary conditions of ``a`` swap.
- **permute** by ``π`` (square grids only): new axis ``i`` is old axis ``π(i)``; the
  component along new axis ``i`` is the old component along ``π(i)``; BC rows follow.
- **roll** of an axis whose two boundaries are both periodic: a uniform integer shift.

Each is a symmetry of the (isotropic) Euler equations, so an augmented trajectory is
again a solution. The draw is shared by every time step of the item, as in The Well.

A stage names the augmentations it applies by an *augmentation setting*
(:func:`augmentation_setting`): ``True`` for all three (each where the grid allows it),
``False`` for none, or the tuple of names of a subset, in :data:`AUGMENTATIONS` order. A
dataset's spec chooses them (``platform/dataset_specs.py``, ``--augmentations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["AUGMENTATIONS", "Augmentation", "augmentation_setting", "flip_axis", "permute_axes", "roll_axis"]

PERIODIC = 2
#: The augmentations of The Well, in the order settings list them.
AUGMENTATIONS = ("flip", "permute", "roll")


def augmentation_setting(names: Sequence[str] | bool) -> bool | tuple[str, ...]:
    """The canonical setting of a set of augmentation names: ``True`` for all of
    :data:`AUGMENTATIONS`, ``False`` for none, else the names in :data:`AUGMENTATIONS` order
    (so two spellings of one set give one artifact id).

    :raises ValueError: an unknown name.
    """
    if isinstance(names, bool):
        return names
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}"
        )
    chosen = tuple(name for name in AUGMENTATIONS if name in names)
    return True if chosen == AUGMENTATIONS else (chosen or False)


def flip_axis(
    x: torch.Tensor, bc: torch.Tensor, axis: int, vector_axis: Sequence[int | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror spatial ``axis`` of ``x (C, T, *spatial)``; negate the components along it; swap its BCs."""
    x = x.flip(2 + axis)
    sign = torch.tensor([-1.0 if a == axis else 1.0 for a in vector_axis], dtype=x.dtype, device=x.device)
    x = x * sign.view(-1, *([1] * (x.ndim - 1)))
    bc = bc.clone()
    bc[axis] = bc[axis].flip(0)
    return x, bc


def permute_axes(
    x: torch.Tensor, bc: torch.Tensor, perm: Sequence[int], vector_axis: Sequence[int | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder the spatial axes of ``x (C, T, *spatial)``: new axis ``i`` = old axis ``perm[i]``."""
    perm = list(perm)
    x = x.permute(0, 1, *(2 + p for p in perm))
    # The channel holding the component along new axis i is the old channel along perm[i].
    channel_of_axis = {a: c for c, a in enumerate(vector_axis) if a is not None}
    source = list(range(len(vector_axis)))
    for c, a in enumerate(vector_axis):
        if a is not None:
            source[c] = channel_of_axis[perm[a]]
    return x[source], bc[perm]


def roll_axis(x: torch.Tensor, axis: int, shift: int) -> torch.Tensor:
    """Periodic shift of spatial ``axis`` of ``x (C, T, *spatial)`` by ``shift`` cells."""
    return x.roll(shift, dims=2 + axis)


@dataclass
class Augmentation:
    """Random flips, axis permutations (square grids) and periodic rolls, as in The Well.

    :param vector_axis: per channel, the spatial axis a vector component points along, else ``None``.
    :param flip: flip each axis independently with probability 1/2.
    :param permute: apply a uniformly random axis permutation (identity included) when the grid is square.
    :param roll: shift each axis whose two boundaries are periodic by a uniform number of cells.
    """

    vector_axis: Sequence[int | None]
    flip: bool = True
    permute: bool = True
    roll: bool = True

    @classmethod
    def from_setting(
        cls, vector_axis: Sequence[int | None], setting: bool | Sequence[str]
    ) -> Augmentation | None:
        """The augmentation an :func:`augmentation_setting` names (``None`` for none)."""
        setting = augmentation_setting(setting)
        if setting is False:
            return None
        names = AUGMENTATIONS if setting is True else setting
        return cls(vector_axis, **{name: name in names for name in AUGMENTATIONS})

    def __call__(
        self, x: torch.Tensor, bc: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``x (C, T, *spatial)`` and its boundary codes ``bc (n_dims, 2)``."""
        n_dims = x.ndim - 2
        if bc.shape != (n_dims, 2):
            raise ValueError(f"boundary conditions must have shape ({n_dims}, 2), got {tuple(bc.shape)}")
        if self.flip:
            for axis in range(n_dims):
                if torch.rand((), generator=generator) < 0.5:
                    x, bc = flip_axis(x, bc, axis, self.vector_axis)
        if self.permute and len(set(x.shape[2:])) == 1 and n_dims > 1:
            perm = torch.randperm(n_dims, generator=generator).tolist()
            x, bc = permute_axes(x, bc, perm, self.vector_axis)
        if self.roll:
            for axis in range(n_dims):
                if bool((bc[axis] == PERIODIC).all()):
                    shift = int(torch.randint(x.shape[2 + axis], (), generator=generator))
                    x = roll_axis(x, axis, shift)
        return x, bc
