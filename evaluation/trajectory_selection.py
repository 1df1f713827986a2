"""Which test trajectories an evaluation scores: a stratified draw that represents the data.

Drawing ``N`` test trajectories uniformly at random (or taking the first ``N``) can miss
whole parts of the data: on the embedded Euler data the first test trajectories all have
open boundaries and one gamma. A **stratum** is a set of trajectories with the same
boundary conditions and parameters — on The Well's layout, the trajectories of one file
(:func:`trajectory_strata`; files with the same label merge). :func:`stratified_trajectories`
draws ``N`` trajectories spread as evenly as possible over the strata:

1. **Quotas**, filled like water: every stratum gets ``q`` trajectories, or all of its own
   if it holds fewer, with ``q`` the largest level whose total does not exceed ``N``; the
   ``r`` slots left over (fewer than the strata holding more than ``q``) go one each to
   ``r`` of the strata holding more than ``q``, chosen by the spread rule (2.). Strata
   large enough thus get ``floor(N/S)`` or ``ceil(N/S)`` trajectories, and a short stratum's
   leftover slots go to the others.
2. **Spread rule** (which strata get the ``r`` extra slots; with ``N < S``, which strata are
   scored at all): a stratum's *class* is the first element of its label when the label is a
   tuple (the boundary conditions of :func:`trajectory_strata`), else the label itself. The
   classes are put in a random order, and the strata of each class in a random order; the
   eligible strata are then taken round-robin over the classes — the first stratum of every
   class, then the second of every class, and so on — so every class is represented before
   any class gets a second stratum.
3. **Members**: within a stratum its quota is drawn without replacement.

Every random draw comes, in this order (class order, strata order within each class, then
members stratum by stratum in order of first appearance), from one
``numpy.random.default_rng(seed)``: the same seed gives the same set.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lolaray.platform.data import DatasetInfo

__all__ = ["file_strata", "stratified_trajectories", "stratum_class", "trajectory_strata"]


def stratum_class(label: Hashable) -> Hashable:
    """The class of a stratum for the spread rule: the first element of a tuple label (the
    boundary conditions of :func:`trajectory_strata`), else the label itself."""
    return label[0] if isinstance(label, tuple) and label else label


def _quotas(sizes: list[int], count: int) -> tuple[list[int], list[int]]:
    """Water-filling: ``(base, eligible)`` — every stratum's ``min(size, q)`` for the largest
    ``q`` whose total is at most ``count``, and the strata holding more than ``q``."""
    level = 0
    while level < max(sizes) and sum(min(s, level + 1) for s in sizes) <= count:
        level += 1
    base = [min(s, level) for s in sizes]
    return base, [i for i, s in enumerate(sizes) if s > level]


def stratified_trajectories(strata: Sequence[Hashable], count: int, *, seed: int) -> list[int]:
    """Draw ``count`` distinct trajectories spread over strata (module docstring: quotas,
    spread rule, members).

    :param strata: the stratum label of every trajectory, in trajectory order (index ``i``
        is trajectory ``i``), e.g. :func:`trajectory_strata`'s ``("OPEN,OPEN", "gamma=1.4")``.
    :param count: how many to draw; all of them (in order) when there are not more.
    :param seed: seeds the one ``numpy.random.default_rng`` of every draw.
    :returns: the drawn trajectory indices, sorted.
    :raises ValueError: ``count < 1`` or no trajectories.
    """
    if count < 1:
        raise ValueError(f"need to draw at least one trajectory, got count={count}")
    if len(strata) == 0:
        raise ValueError("no trajectories to draw from: the strata are empty")
    if count >= len(strata):
        return list(range(len(strata)))
    members: dict[Hashable, list[int]] = {}
    for index, label in enumerate(strata):
        members.setdefault(label, []).append(index)
    labels = list(members)  # in order of first appearance
    rng = np.random.default_rng(seed)

    # Spread order: classes shuffled, the strata of each shuffled, then round-robin.
    classes: dict[Hashable, list[int]] = {}
    for position, label in enumerate(labels):
        classes.setdefault(stratum_class(label), []).append(position)
    keys = list(classes)
    groups = [classes[keys[k]] for k in rng.permutation(len(keys)).tolist()]
    groups = [[group[i] for i in rng.permutation(len(group)).tolist()] for group in groups]
    spread = [group[rank] for rank in range(max(map(len, groups))) for group in groups if rank < len(group)]

    base, eligible = _quotas([len(members[label]) for label in labels], count)
    extra = count - sum(base)
    eligible_set = set(eligible)
    for position in [p for p in spread if p in eligible_set][:extra]:
        base[position] += 1

    chosen: list[int] = []
    for label, quota in zip(labels, base):
        pool = members[label]
        chosen.extend(pool if quota == len(pool) else rng.choice(pool, size=quota, replace=False).tolist())
    return sorted(int(i) for i in chosen)


def file_strata(info: DatasetInfo, split: str = "test") -> list[tuple[str, str]]:
    """The stratum label of every file of ``split`` (sorted, as ``WellWindows`` indexes them):
    ``(boundary key, parameter key)``, e.g. ``("OPEN,OPEN", "gamma=1.4")``.

    The boundary key joins the file's boundary type per axis (:meth:`DatasetInfo.boundary_codes`)
    with commas; the parameter key joins ``name=value`` (value as ``%.6g``) of its parameters
    (one set per file: nothing varies within a file) with commas, ``""`` without parameters.

    :param info: the dataset.
    :param split: the split (default ``"test"``).
    """
    layout = info.splits[split]
    labels = []
    for file, boundary in enumerate(info.boundary_codes(split)):
        values = layout.parameter_values[file] if file < len(layout.parameter_values) else ()
        parameters = ",".join(f"{name}={float(v):.6g}" for name, v in zip(info.parameter_names, values))
        labels.append((",".join(boundary), parameters))
    return labels


def trajectory_strata(info: DatasetInfo, split: str = "test") -> list[tuple[str, str]]:
    """The stratum label (:func:`file_strata` of its file) of every item of
    ``WellWindows(info, split, length=None)``, in its order (file → trajectory → start, as
    :meth:`~lolaray.platform.data.WellWindows.locate`): its trajectories when all have the
    same length; a file of longer trajectories has several whole-length windows of each.

    :param info: the dataset.
    :param split: the split (default ``"test"``, the one an evaluation scores).
    """
    layout = info.splits[split]
    shortest = min(layout.n_steps)
    labels = file_strata(info, split)
    return [
        label
        for label, n_trajectories, n_steps in zip(labels, layout.n_trajectories, layout.n_steps)
        for _ in range(n_trajectories * (n_steps - shortest + 1))
    ]
