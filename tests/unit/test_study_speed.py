"""The study-speed benchmark's arithmetic and its mapping of stage runs to the plan
(``benchmarks/study_speed.py``, issue 29), on hand-made runs: no Ray, no MLflow."""

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lolaray.sweeps.plan import StagePlan

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "study_speed.py"
sys.path.insert(0, str(_PATH.parent))  # as when run as a script: it imports mfu.py beside it
_SPEC = importlib.util.spec_from_file_location("benchmark_study_speed", _PATH)
study_speed = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = study_speed  # its dataclasses look their module up by name
_SPEC.loader.exec_module(study_speed)

RATES = {"80": 4, "20": 16}


def run(name, start, end, *, status="FINISHED", **tags):
    """A stand-in for an MLflow ``Run``: times in seconds, given as MLflow's milliseconds."""
    params = tags.pop("params", {})
    return SimpleNamespace(
        info=SimpleNamespace(
            run_id=f"id-{name}",
            run_name=name,
            status=status,
            start_time=None if start is None else int(start * 1000),
            end_time=None if end is None else int(end * 1000),
        ),
        data=SimpleNamespace(tags=tags, params=params),
    )


def name_of(tags, params=None, base_seed=0):
    return study_speed.plan_stage_name(tags, params or {}, RATES, base_seed=base_seed)


def test_every_stage_of_a_chain_maps_to_its_plan_name():
    assert (
        name_of({"stage": "autoencoder", "compression": "80"}, {"latent_channels": "4"}) == "c4/autoencoder"
    )
    assert (
        name_of(
            {"stage": "latents", "compression": "20", "job_splits": "train,valid,test"}, {"split": "valid"}
        )
        == "c16/latents/train+valid+test"
    )
    # A cache built alone (cache_latents): its own split.
    assert name_of({"stage": "latents", "compression": "20"}, {"split": "test"}) == "c16/latents/test"
    emulator = {"stage": "emulator", "space": "latent", "compression": "80"}
    assert name_of({**emulator, "emulator": "diffusion"}) == "c4/diffusion"
    assert name_of({**emulator, "emulator": "solver"}) == "c4/solver"
    evaluation = {"stage": "evaluation", "space": "latent", "compression": "20", "guided": "no"}
    assert name_of({**evaluation, "emulator": "diffusion"}) == "c16/evaluation/diffusion"
    assert (
        name_of({**evaluation, "emulator": "diffusion", "guided": "yes"}) == "c16/evaluation/guided_diffusion"
    )
    pixel = {"space": "pixel", "compression": "1", "emulator": "solver"}
    assert name_of({"stage": "emulator", **pixel}) == "pixel/solver"
    assert name_of({"stage": "evaluation", **pixel}) == "pixel/evaluation/solver"


def test_the_autoencoder_maps_by_its_channels_even_at_an_unknown_rate():
    assert (
        name_of({"stage": "autoencoder", "compression": "7"}, {"latent_channels": "64"}) == "c64/autoencoder"
    )


def test_runs_outside_the_plan_map_to_nothing():
    assert name_of({"stage": "sweep"}) is None
    assert name_of({}) is None
    assert name_of({"stage": "emulator", "space": "latent", "compression": "5", "emulator": "solver"}) is None
    assert name_of({"stage": "evaluation", "space": "latent", "compression": "80"}) is None  # no kind


def test_replicates_are_told_apart_by_their_seed():
    tags = {"stage": "emulator", "space": "latent", "compression": "80", "emulator": "solver"}
    assert name_of(tags, {"loop.seed": "3"}, base_seed=3) == "c4/solver"
    assert name_of(tags, {"loop.seed": "4"}, base_seed=3) == "c4-r1/solver"
    evaluation = {"stage": "evaluation", "space": "pixel", "emulator": "solver"}
    assert name_of(evaluation, {"seed": "2"}) == "pixel-r2/evaluation/solver"


def test_union_seconds_counts_overlaps_once_and_adds_gaps():
    assert study_speed.union_seconds([]) == 0
    assert study_speed.union_seconds([(0, 10), (1, 9), (2, 11)]) == 11
    assert study_speed.union_seconds([(20, 25), (0, 10)]) == 15
    assert study_speed.union_seconds([(0, 10), (10, 12)]) == 12


def test_stage_times_joins_a_jobs_caches_and_skips_unfinished_and_foreign_runs():
    caches = {"stage": "latents", "compression": "80", "job_splits": "train,valid,test"}
    runs = [
        run("ae", 100, 160, stage="autoencoder", compression="80", params={"latent_channels": "4"}),
        # One Ray Data job: the three runs open one after another and close in reverse.
        run("train", 160.0, 190.0, **caches, params={"split": "train"}),
        run("valid", 160.2, 189.9, **caches, params={"split": "valid"}),
        run("test", 160.4, 189.8, **caches, params={"split": "test"}),
        # A failed try and its retry: both took wall time.
        run("solver-1", 200, 210, status="FAILED", stage="emulator", space="latent", compression="80",
            emulator="solver"),
        run("solver-2", 215, 245, stage="emulator", space="latent", compression="80", emulator="solver"),
        run("diffusion", 250, None, status="RUNNING", stage="emulator", space="latent", compression="80",
            emulator="diffusion"),
        run("other", 0, 1, stage="something"),
    ]  # fmt: skip
    times = study_speed.stage_times(runs, RATES)
    assert list(times) == ["c4/autoencoder", "c4/latents/train+valid+test", "c4/solver"]
    assert times["c4/autoencoder"] == pytest.approx(60)
    assert times["c4/latents/train+valid+test"] == pytest.approx(30)
    assert times["c4/solver"] == pytest.approx(40)
    left = study_speed.unmapped_runs(runs, RATES)
    assert len(left) == 2
    assert any("diffusion" in text and "not finished" in text for text in left)
    assert any("other" in text and "no stage of the plan" in text for text in left)


def stage(name, kind, network, flops):
    return StagePlan(name=name, kind=kind, network=network, steps=1, batch=1, resources="", flops=flops)


PLAN = {
    s.name: s
    for s in [
        stage("c4/autoencoder", "train", "ae c4", 6e9),
        stage("c4/latents/train", "encode", "ae c4", 2e9),
        stage("c4/latents/valid", "encode", "ae c4", 1e9),
        stage("c4/latents/test", "encode", "ae c4", 1e9),
        stage("c4/solver", "train", "solver c4", 8e9),
        stage("c4/evaluation/solver", "evaluate", "solver c4", 4e9),
        stage("pixel/solver", "train", "pixel solver", None),
    ]
}


def test_stage_flops_sums_a_joined_row_and_drops_the_replicate():
    assert study_speed.stage_flops("c4/autoencoder", PLAN) == 6e9
    assert study_speed.stage_flops("c4/latents/train+valid+test", PLAN) == 4e9
    assert study_speed.stage_flops("c4-r2/latents/train+valid", PLAN) == 3e9
    assert study_speed.stage_flops("c4/evaluation/guided_diffusion", PLAN) is None
    assert study_speed.stage_flops("pixel/solver", PLAN) is None  # unknown in the plan


def test_fixed_cost_is_wall_minus_work_at_the_alone_rate():
    costs = study_speed.fixed_costs(
        {"a": 10.0, "b": 5.0, "c": 3.0, "d": 1.0},
        {"a": 4e9, "b": 1e9, "c": None, "d": 1e9},
        {"a": 1e9, "b": 2e9, "c": 1e9},  # d: no rate (not a training stage)
    )
    assert costs == {"a": (4.0, 6.0), "b": (0.5, 4.5)}


def test_study_ratio_spreads_the_work_on_the_cores():
    ideal, ratio = study_speed.study_ratio(30.0, {"a": 4e9, "b": 2e9, "c": None}, {"a": 1e9, "b": 2e9}, 2)
    assert ideal == pytest.approx((4 + 1) / 2)
    assert ratio == pytest.approx(12)
    assert study_speed.study_ratio(1.0, {}, {}, 2) == (0, math.inf)


def speeds():
    NetworkSpeed = study_speed.NetworkSpeed
    return {
        "ae c4": NetworkSpeed("ae c4", 8, 1e8, 0.1),  # 1 GFLOP/s
        "solver c4": NetworkSpeed("solver c4", 8, 4e8, 0.2),  # 2 GFLOP/s
    }


def test_stage_rows_give_training_stages_a_fixed_cost_and_the_others_a_rate():
    seconds = {"c4/autoencoder": 10.0, "c4/latents/train+valid+test": 8.0, "c4/solver": 6.0,
               "c4/evaluation/solver": 4.0}  # fmt: skip
    threads = {"c4": {"autoencoder": 1, "latents/train": 2, "solver": 1}}
    rows = {r.name: r for r in study_speed.stage_rows(seconds, PLAN, speeds(), threads)}
    ae = rows["c4/autoencoder"]
    assert (ae.kind, ae.threads, ae.work, ae.fixed) == ("train", 1, pytest.approx(6.0), pytest.approx(4.0))
    solver = rows["c4/solver"]
    assert (solver.work, solver.fixed) == (pytest.approx(4.0), pytest.approx(2.0))
    caches = rows["c4/latents/train+valid+test"]
    assert (caches.kind, caches.threads, caches.fixed) == ("encode", 2, None)
    assert caches.rate == pytest.approx(4e9 / 8)
    assert rows["c4/evaluation/solver"].threads is None


def test_a_stage_of_several_workers_works_at_their_summed_rate():
    plan = {"c4/solver": StagePlan("c4/solver", "train", "solver c4", 1, 8, "", 8e9, devices=4)}
    (row,) = study_speed.stage_rows({"c4/solver": 3.0}, plan, speeds())
    assert (row.work, row.fixed) == (pytest.approx(1.0), pytest.approx(2.0))  # 8 GFLOP at 4 x 2 GFLOP/s


def test_format_report_prints_the_four_parts():
    seconds = {"c4/autoencoder": 10.0, "c4/solver": 6.0, "c4/evaluation/solver": 4.0}
    rows = study_speed.stage_rows(seconds, PLAN, speeds())
    report = study_speed.StudySpeed(
        run_id="abc",
        title="a study",
        wall=40.0,
        cores=2,
        threads=1,
        peak_cores=30e9,
        peak_threads=10e9,
        networks=list(speeds().values()),
        rows=rows,
        plan_flops=22e9,
        not_run=["c4/latents/train"],
        unmapped=["x (stage='y'): no stage of the plan"],
        first_start=3.0,
        last_end=2.0,
    )
    text = study_speed.format_report(report)
    assert "1. Wall time: 40.0 s" in text and "began 3.0 s in" in text
    # 18 GFLOP ran in 40 s: 0.45 GFLOP/s, 1.5 % of 30 GFLOP/s.
    assert "18 GFLOP (of the plan's 22 GFLOP) / 40.0 s = 450 MFLOP/s, 1.5%" in text
    assert "10.0%" in text and "20.0%" in text  # the steps alone: 1 and 2 of 10 GFLOP/s
    # Fixed costs 4 and 2 s; ideal (6 + 4 + 2) s of work / 2 cores = 6 s; 40 / 6 = 6.7x.
    assert "Median fixed cost of the 2 training stages: 3.0 s" in text
    assert "= 40.0 s / 6.0 s = 6.7x" in text
    assert "c4/latents/train" in text and "no stage of the plan" in text


def test_study_inputs_read_the_parent_runs_params():
    params = {
        "profile": "smoke",
        "dataset": "euler_quadrants",
        "latent_channels": "[4, 16]",
        "pixel_baseline": "false",
        "contexts": "[1]",
        "seed": "2",
        "seeds": "1",
        "dataset_spec.window": "5",
        "dataset_spec.stride": "4",
        "dataset_spec.horizons": "[[1, 20], [21, 60]]",
        "dataset_spec.log_parameters": "[]",
    }
    inputs = study_speed.study_inputs(params)
    assert (inputs.profile, inputs.dataset, inputs.latent_channels) == ("smoke", "euler_quadrants", (4, 16))
    assert (inputs.pixel, inputs.contexts, inputs.seed) == (False, (1,), 2)
    assert inputs.spec_overrides == {"stride": 4, "window": 5}  # what changes the FLOPs
    assert study_speed.study_inputs(params, profile="demo").profile == "demo"
    assert inputs.autoencoder_preset is None
    chosen = study_speed.study_inputs(params, autoencoder_presets=["smoke", "smoke"])
    assert chosen.autoencoder_preset == "smoke"
    assert study_speed.study_inputs(params, autoencoder_presets=["a", "b"]).autoencoder_preset is None
    with pytest.raises(ValueError, match="latent_channels"):
        study_speed.study_inputs({"profile": "smoke", "dataset": "x"})


def test_the_smoke_plan_and_its_rates_come_from_the_run_params():
    inputs = study_speed.study_inputs(
        {"profile": "smoke", "dataset": "euler_quadrants", "latent_channels": "[4, 16]",
         "pixel_baseline": "true", "contexts": "[1]"}
    )  # fmt: skip
    plan, profile, info = study_speed.plan_for_study(inputs)
    assert profile.contexts == (1,)
    assert study_speed.channels_by_rate(profile, info, inputs.latent_channels) == {"80": 4, "20": 16}
    names = [s.name for s in plan.stages]
    assert "c4/latents/train" in names and "pixel/evaluation/solver" in names
    assert all(s.flops is not None for s in plan.stages)  # the embedded preset's trajectory counts


def test_a_busy_machine_is_named_when_the_wall_clock_ran_slower_than_cpu_time():
    NetworkSpeed = study_speed.NetworkSpeed
    busy = [NetworkSpeed("ae c4", 8, 1e8, 0.1, wall_seconds=0.25)]
    report = study_speed.StudySpeed(
        run_id="abc", title="t", wall=10.0, cores=2, threads=1, peak_cores=1e10, peak_threads=5e9,
        networks=busy, rows=[], plan_flops=0.0, load=7.5,
    )  # fmt: skip
    text = study_speed.format_report(report)
    assert "2.50x longer by the wall clock" in text and "load average 7.5 on 2 cores" in text
    quiet = dataclasses.replace(report, networks=[NetworkSpeed("ae c4", 8, 1e8, 0.1, wall_seconds=0.102)])
    assert "machine was busy" not in study_speed.format_report(quiet)
