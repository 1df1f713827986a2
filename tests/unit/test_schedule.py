"""The study's schedule (``sweeps/schedule.py``) on hand-made chains of known cost."""

import pytest

from lolaray.sweeps.plan import StagePlan
from lolaray.sweeps.schedule import ChainCost, chain_costs, schedule_chains


def _chain(label, *flops):
    return ChainCost(label, tuple((f"stage{i}", float(f)) for i, f in enumerate(flops)))


def _schedule(chains, *, cores, slots):
    return schedule_chains(chains, cores=cores, slots=slots, fixed_seconds=0.0)


def test_the_longest_chain_starts_first_and_ties_keep_their_order():
    chains = [_chain("pixel", 30), _chain("c4", 50, 10), _chain("c16", 20, 40), _chain("c64", 100)]
    schedule = _schedule(chains, cores=2, slots=1)
    assert schedule.order == ("c64", "c4", "c16", "pixel")  # 100, 60, 60 (c4 listed first), 30
    starts = {s.chain: s.start for s in schedule.stages if s.stage == "stage0"}
    # One slot: one chain after another, each alone on both cores (100 s of work in 50 s).
    assert starts == {"c64": 0.0, "c4": 50.0, "c16": 80.0, "pixel": 110.0}
    assert all(t == 2 for stages in schedule.threads.values() for t in stages.values())


def test_no_chain_waits_while_a_core_could_take_it():
    # 5 chains, 2 cores, 2 slots: a chain starts exactly when another ends, never later.
    chains = [_chain(f"c{i}", 10 * (i + 1), 5) for i in range(5)]
    schedule = _schedule(chains, cores=2, slots=2)
    ends = sorted(max(s.end for s in schedule.stages if s.chain == c.label) for c in chains)
    first = sorted(s.start for s in schedule.stages if s.stage == "stage0")
    assert first[:2] == [0.0, 0.0]
    assert first[2:] == pytest.approx(ends[:3])
    # Every moment until the last chain starts, both cores work (the sum of threads >= cores).
    for moment in first:
        busy = sum(s.threads for s in schedule.stages if s.start <= moment < s.end)
        assert busy >= 2, moment


def test_a_stage_takes_the_cores_the_other_chains_leave_free():
    # 2 cores, a long chain beside a short one: both start on one thread each; once the short
    # chain is done, the long chain's next stage takes both cores.
    chains = [_chain("long", 100, 100, 40), _chain("short", 30)]
    schedule = _schedule(chains, cores=2, slots=4)
    assert schedule.threads == {"long": {"stage0": 1, "stage1": 2, "stage2": 2}, "short": {"stage0": 1}}
    stages = {(s.chain, s.stage): s for s in schedule.stages}
    # 100 s of work on one core; then 100 on two (50 s); then 40 on two (20 s).
    assert stages[("long", "stage0")].end == pytest.approx(100.0)
    assert stages[("long", "stage1")].end == pytest.approx(150.0)
    assert schedule.seconds == pytest.approx(170.0)


def test_more_chains_than_cores_share_them_one_thread_each():
    chains = [_chain(f"c{i}", 60, 60) for i in range(4)]
    schedule = _schedule(chains, cores=2, slots=4)
    assert all(t == 1 for stages in schedule.threads.values() for t in stages.values())
    assert schedule.seconds == pytest.approx(4 * 120 / 2)  # 480 s of work on 2 cores


def test_the_schedule_is_the_same_on_every_run():
    chains = [_chain("a", 70, 20, 5), _chain("b", 40, 40), _chain("c", 90), _chain("d", 10, 10, 10)]
    runs = [schedule_chains(chains, cores=2, slots=3) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_chain_costs_group_the_plan_by_chain_and_replicates_cost_the_same():
    plan = [
        StagePlan("c4/autoencoder", "train", "ae", 10, 8, "", 50.0),
        StagePlan("c4/latents/train", "encode", "ae", 10, 8, "", None),
        StagePlan("c4/evaluation/diffusion", "evaluate", "dm", 10, 8, "", 20.0),
        StagePlan("pixel/solver", "train", "px", 10, 8, "", 70.0),
    ]
    rates = {"train": 10.0, "encode": 1.0, "evaluate": 2.0}
    chains = chain_costs(plan, ["c4", "c4-r1", "pixel"], rates=rates)
    assert [c.label for c in chains] == ["c4", "c4-r1", "pixel"]
    expected = (("autoencoder", 5.0), ("latents/train", 0.0), ("evaluation/diffusion", 10.0))
    assert chains[0].stages == chains[1].stages == expected
    assert chains[2].seconds == 7.0
    with pytest.raises(KeyError, match="c16"):
        chain_costs(plan, ["c16"], rates=rates)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="cores"):
        schedule_chains([_chain("a", 1)], cores=0, slots=1)
    with pytest.raises(ValueError, match="unique"):
        schedule_chains([_chain("a", 1), _chain("a", 2)], cores=2, slots=1)
