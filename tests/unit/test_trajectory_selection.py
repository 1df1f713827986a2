"""Tests of lolaray.evaluation.trajectory_selection: the stratified draw of the scored test
trajectories (boundary conditions × parameters) and the strata of a dataset's test files."""

from collections import Counter
from pathlib import Path

import pytest
from wellfiles import make_tiny_dataset, write_tiny

from lolaray.evaluation.evaluate import _resolve_trajectories
from lolaray.evaluation.trajectory_selection import (
    file_strata,
    stratified_trajectories,
    stratum_class,
    trajectory_strata,
)
from lolaray.platform.data import WellWindows, open_dataset

SEEDS = range(25)


def _labels(sizes: dict) -> list:
    """Stratum labels, stratum after stratum, ``sizes[label]`` trajectories each."""
    return [label for label, n in sizes.items() for _ in range(n)]


def _per_stratum(strata, chosen) -> Counter:
    return Counter(strata[i] for i in chosen)


def _check_draw(strata, chosen, count):
    assert chosen == sorted(set(chosen)) and len(chosen) == count
    assert all(0 <= i < len(strata) for i in chosen)


def test_every_stratum_is_covered_when_count_reaches_the_strata():
    sizes = {("OPEN", "g=1"): 7, ("OPEN", "g=2"): 3, ("PERIODIC", "g=1"): 9, ("PERIODIC", "g=2"): 4}
    strata = _labels(sizes)
    for count in range(len(sizes), 3 * len(sizes)):
        for seed in SEEDS:
            chosen = stratified_trajectories(strata, count, seed=seed)
            _check_draw(strata, chosen, count)
            assert set(_per_stratum(strata, chosen)) == set(sizes), (count, seed)


def test_allocation_is_balanced_when_strata_are_big_enough():
    # Interleaved labels: strata need not be contiguous.
    strata = [("OPEN" if i % 2 else "PERIODIC", f"gamma={i % 3}") for i in range(60)]  # 6 strata of 10
    for count in range(1, 61):
        for seed in range(5):
            chosen = stratified_trajectories(strata, count, seed=seed)
            _check_draw(strata, chosen, count)
            per = _per_stratum(strata, chosen)
            counts = [per.get(label, 0) for label in set(strata)]
            assert max(counts) - min(counts) <= 1, (count, seed, per)
            assert min(counts) == count // 6 and max(counts) == -(-count // 6)


def test_short_strata_give_their_slots_to_the_others():
    sizes = {("A", "1"): 1, ("A", "2"): 2, ("B", "1"): 10, ("B", "2"): 10}
    strata = _labels(sizes)
    for count, big in ((12, {4, 5}), (20, {8, 9}), (7, {2})):
        for seed in SEEDS:
            chosen = stratified_trajectories(strata, count, seed=seed)
            _check_draw(strata, chosen, count)
            per = _per_stratum(strata, chosen)
            assert per[("A", "1")] == 1 and per[("A", "2")] == 2, (count, seed, per)
            assert {per[("B", "1")], per[("B", "2")]} <= big, (count, seed, per)
    # Five slots: level 1 for all (4), the fifth to one of the strata holding more than 1.
    for seed in SEEDS:
        per = _per_stratum(strata, stratified_trajectories(strata, 5, seed=seed))
        assert per[("A", "1")] == 1 and sorted(per.values()) == [1, 1, 1, 2], (seed, per)


def test_fewer_slots_than_strata_spread_over_boundary_classes():
    # Class OPEN has three strata, PERIODIC one, WALL two: 6 strata, 3 classes.
    sizes = {
        ("OPEN", "g=1"): 4,
        ("OPEN", "g=2"): 4,
        ("OPEN", "g=3"): 4,
        ("PERIODIC", "g=1"): 4,
        ("WALL", "g=1"): 4,
        ("WALL", "g=2"): 4,
    }
    strata = _labels(sizes)
    seen_first, seen_strata = set(), set()
    for seed in SEEDS:
        for count in (1, 2, 3):
            chosen = stratified_trajectories(strata, count, seed=seed)
            _check_draw(strata, chosen, count)
            labels = [strata[i] for i in chosen]
            classes = [stratum_class(label) for label in labels]
            assert len(set(labels)) == count and len(set(classes)) == count, (seed, labels)
            if count == 1:
                seen_first.add(classes[0])
            seen_strata.update(labels)
        # Four or five slots: all three classes, no stratum twice, no class a third time
        # before WALL has its second.
        for count in (4, 5):
            labels = [strata[i] for i in stratified_trajectories(strata, count, seed=seed)]
            per_class = Counter(stratum_class(label) for label in labels)
            assert len(set(labels)) == count and set(per_class) == {"OPEN", "PERIODIC", "WALL"}
            assert per_class["OPEN"] <= 2 or per_class["WALL"] == 2, (count, seed, labels)
    # The class order and the strata within a class are drawn, not fixed.
    assert seen_first == {"OPEN", "PERIODIC", "WALL"}
    assert seen_strata == set(sizes)


def test_plain_labels_are_their_own_class():
    strata = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    for seed in SEEDS:
        chosen = stratified_trajectories(strata, 3, seed=seed)
        assert {strata[i] for i in chosen} == {"a", "b", "c"}
    assert stratum_class("a") == "a" and stratum_class(("OPEN,OPEN", "gamma=1.4")) == "OPEN,OPEN"


def test_a_fixed_seed_gives_the_same_draw_and_the_seed_matters():
    strata = _labels({("OPEN", "g=1"): 12, ("OPEN", "g=2"): 12, ("PERIODIC", "g=1"): 12})
    first = stratified_trajectories(strata, 7, seed=3)
    assert stratified_trajectories(list(strata), 7, seed=3) == first
    draws = {tuple(stratified_trajectories(strata, 7, seed=seed)) for seed in SEEDS}
    assert len(draws) > len(SEEDS) // 2
    # Within a stratum the members are drawn too: a single stratum is a uniform draw.
    members = {i for seed in SEEDS for i in stratified_trajectories(["x"] * 12, 2, seed=seed)}
    assert len(members) > 6


def test_all_trajectories_when_count_covers_them_and_clear_errors():
    strata = ["a", "b", "b"]
    assert stratified_trajectories(strata, 3, seed=0) == [0, 1, 2]
    assert stratified_trajectories(strata, 10, seed=5) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one"):
        stratified_trajectories(strata, 0, seed=0)
    with pytest.raises(ValueError, match="empty"):
        stratified_trajectories([], 2, seed=0)


def _file_label(path: str) -> tuple[str, str]:
    """The expected label from an embedded file's name, ``euler_quadrants_<bc>BC_gamma_<g>.hdf5``."""
    boundary, gamma = Path(path).stem.removeprefix("euler_quadrants_").split("BC_gamma_")
    return (f"{boundary.upper()},{boundary.upper()}", f"gamma={float(gamma):g}")


def test_strata_of_the_embedded_test_files(smoke_dataset):
    info = smoke_dataset
    files = info.splits["test"].files
    expected = [_file_label(f) for f in files]
    assert file_strata(info, "test") == expected
    assert ("OPEN,OPEN", "gamma=1.4") in expected and ("PERIODIC,PERIODIC", "gamma=1.597") in expected
    windows = WellWindows(info, "test", length=None)
    strata = trajectory_strata(info)
    assert len(strata) == len(windows)
    assert strata == [expected[windows.locate(i)[0]] for i in range(len(windows))]
    # Two scored trajectories out of four files: one open, one periodic, whatever the seed.
    for seed in SEEDS:
        chosen = _resolve_trajectories(2, len(windows), selection_seed=seed, strata=strata)
        assert {stratum_class(strata[i]) for i in chosen} == {"OPEN,OPEN", "PERIODIC,PERIODIC"}


def test_files_with_one_label_merge_and_strata_follow_the_windows(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny", n_traj=2)
    # A second periodic gamma=1.4 file with longer trajectories: the same stratum, and two
    # whole-length windows per trajectory in WellWindows(length=None).
    write_tiny(root / "data" / "test" / "tiny_periodic_1.4_more.hdf5", n_traj=3, steps=12, seed=7)
    info = open_dataset(root)
    assert sorted(set(file_strata(info))) == [("OPEN,OPEN", "gamma=1.76"), ("PERIODIC,PERIODIC", "gamma=1.4")]
    windows = WellWindows(info, "test", length=None)
    strata = trajectory_strata(info)
    labels = file_strata(info)
    assert len(strata) == len(windows) == 2 + 2 + 3 * 2
    assert strata == [labels[windows.locate(i)[0]] for i in range(len(windows))]
    assert Counter(strata) == {("OPEN,OPEN", "gamma=1.76"): 2, ("PERIODIC,PERIODIC", "gamma=1.4"): 8}
    for seed in SEEDS:
        per = _per_stratum(strata, stratified_trajectories(strata, 4, seed=seed))
        assert list(per.values()) == [2, 2], per  # two strata, not three files


def test_resolve_trajectories_draws_stratified_with_a_seed():
    strata = _labels({("OPEN", "g=1"): 4, ("OPEN", "g=2"): 4, ("PERIODIC", "g=1"): 4, ("PERIODIC", "g=2"): 4})
    for seed in SEEDS:
        chosen = _resolve_trajectories(4, 16, selection_seed=seed, strata=strata)
        assert chosen == stratified_trajectories(strata, 4, seed=seed)
        assert set(_per_stratum(strata, chosen).values()) == {1}
    assert _resolve_trajectories(3, 16, selection_seed=1) == stratified_trajectories([0] * 16, 3, seed=1)
    assert _resolve_trajectories(30, 16, selection_seed=1, strata=strata) == list(range(16))
    # No seed: the first N; explicit indices as they are.
    assert _resolve_trajectories(4, 16, strata=strata) == [0, 1, 2, 3]
    assert _resolve_trajectories([5, 2, 5], 16) == [2, 5]
    with pytest.raises(ValueError, match="stratum labels"):
        _resolve_trajectories(4, 16, selection_seed=0, strata=strata[:-1])
    with pytest.raises(ValueError, match="pass a count"):
        _resolve_trajectories([1, 2], 16, selection_seed=0)
