"""``--plan`` in the units of the machine it runs on: the study's predicted wall time from a
peak and an efficiency, this machine's GEMM peak measured once and then read from its cache,
and the end-of-sweep line that sets the plan's prediction beside the measured time."""

import json
import os

import pytest
import torch

from lolaray.sweeps import compression
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.plan import (
    DEFAULT_EFFICIENCY,
    DEFAULT_PEAK_TFLOPS,
    DEFAULT_UTILISATION,
    StagePlan,
    StudyPlan,
    format_duration,
    format_plan,
    plan_dataset,
    plan_estimate,
    plan_study,
    predicted_wall_seconds,
    sweep_prediction,
)
from lolaray.trainers import hardware


def _hand_made_plan() -> StudyPlan:
    """1.125 PFLOP in known stages, one stage of unknown FLOPs (left out of every total)."""
    stages = [
        StagePlan("a/autoencoder", "train", "net", 100, 8, "1 worker(s) x {CPU: 1}", 1e15),
        StagePlan("a/latents/train", "encode", "net", None, 101, "1 actor(s) x {CPU: 0.5}", None),
        StagePlan("a/evaluation/solver", "evaluate", "net", 10, 1, "1 actor(s) x {CPU: 0.5}", 1.25e14),
    ]
    return StudyPlan(
        title="hand-made", dataset="d", geometry="g", stages=stages, peak_tflops=0.5, utilisation=0.25
    )


def test_the_plans_wall_time_estimate_from_a_given_peak_and_efficiency():
    plan = _hand_made_plan()
    # 0.5 TFLOP/s x 0.25 = 125 GFLOP/s; 1.125e15 FLOP / 1.25e11 FLOP/s = 9,000 s exactly.
    assert predicted_wall_seconds(plan, 0.5, 0.25) == 9000.0
    assert predicted_wall_seconds(plan, 1.0, 0.5) == 2250.0
    assert plan.total_device_hours == pytest.approx(9000.0 / 3600)
    text = format_plan(plan)
    assert "Predicted wall time: 2 h 30 min" in text
    assert "at 125 GFLOP/s: 500 GFLOP/s peak x 0.25" in text
    assert "Stages (device-hours at 500 GFLOP/s x 25% utilisation)" in text
    for peak, efficiency in ((0.0, 0.2), (1.0, 0.0), (1.0, 1.5)):
        with pytest.raises(ValueError, match="efficiency"):
            predicted_wall_seconds(plan, peak, efficiency)


@pytest.mark.parametrize(
    "seconds,text",
    [
        (3.5, "3.5 s"),
        (42, "42 s"),
        (365, "6 min 5 s"),
        (38 * 60 + 10, "38 min"),
        (9000, "2 h 30 min"),
        (3 * 86400, "3.0 days"),
    ],
)
def test_durations_read_in_the_largest_useful_unit(seconds, text):
    assert format_duration(seconds) == text


def _counting_probe(calls: list, figures=(3.1e11, 3.1e11)):
    def probe(dtype, device, threads=None, **kwargs):
        calls.append((dtype, str(device), threads))
        return figures

    return probe


@pytest.fixture
def quiet(monkeypatch):
    """A machine at rest, whatever the tests beside this one are doing."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


def test_the_machine_peak_is_measured_once_then_read_from_its_cache(tmp_path, monkeypatch, quiet):
    calls = []
    monkeypatch.setattr(hardware, "measure_gemm_peak", _counting_probe(calls))
    path = tmp_path / "hardware" / "gemm_peaks.json"
    assert hardware.cached_gemm_peak(torch.float32, "cpu", 2, path=path) == (3.1e11, "measured now")
    assert hardware.cached_gemm_peak(torch.float32, "cpu", 2, path=path) == (3.1e11, "measured earlier")
    assert calls == [(torch.float32, "cpu", 2)]
    key = hardware.gemm_peak_key(torch.float32, "cpu", 2)
    assert json.loads(path.read_text())[key]["flops_per_s"] == 3.1e11
    for part in (hardware.cpu_model(), f"torch {torch.__version__}", "2 threads", "float32"):
        assert part in key
    # Another thread count or dtype is another figure; an unreadable file is measured over.
    hardware.cached_gemm_peak(torch.float32, "cpu", 1, path=path)
    hardware.cached_gemm_peak(torch.bfloat16, "cpu", 2, path=path)
    assert len(calls) == 3 and len(json.loads(path.read_text())) == 3
    path.write_text("{not json")
    assert hardware.cached_gemm_peak(torch.float32, "cpu", 2, path=path)[1] == "measured now"
    assert len(calls) == 4 and key in json.loads(path.read_text())


def test_a_probe_on_a_busy_machine_is_not_kept(tmp_path, monkeypatch, quiet):
    calls = []
    # Wall time 5x the CPU time: other processes had the cores.
    monkeypatch.setattr(hardware, "measure_gemm_peak", _counting_probe(calls, (0.6e11, 3.0e11)))
    path = tmp_path / "gemm_peaks.json"
    flops, how = hardware.cached_gemm_peak(torch.float32, "cpu", 2, path=path)
    assert flops == 3.0e11 and "busy" in how and not path.exists()
    hardware.cached_gemm_peak(torch.float32, "cpu", 2, path=path)
    assert len(calls) == 2
    # Figures that agree, but measured at a load above the threshold: not kept either.
    monkeypatch.setattr(hardware, "measure_gemm_peak", _counting_probe(calls, (3.0e11, 3.1e11)))
    monkeypatch.setattr(os, "getloadavg", lambda: (6.8, 2.7, 2.3))
    flops, how = hardware.cached_gemm_peak(torch.float32, "cpu", 2, path=path, busy_load=1.5)
    assert flops == 3.1e11 and "load 6.8" in how and not path.exists()
    assert hardware.cached_gemm_peak(torch.float32, "cpu", 2, path=path, busy_load=7.0)[1] == "measured now"
    assert path.exists()


def test_the_gemm_probe_measures_and_restores_the_threads():
    threads = torch.get_num_threads()
    wall, by_cpu_time = hardware.measure_gemm_peak(torch.float32, "cpu", 1, n=64, repeats=2)
    assert wall > 0 and by_cpu_time > 0
    assert torch.get_num_threads() == threads


def test_the_estimate_s_peak_and_efficiency_and_their_fallbacks():
    def measure():
        return 3.1e11, "fp32 GEMM peak 310 GFLOP/s on 2 threads, measured now"

    peak, efficiency, basis = plan_estimate(measure=measure)
    assert (peak, efficiency) == (0.31, DEFAULT_EFFICIENCY)
    assert basis.startswith("this machine: fp32 GEMM peak 310 GFLOP/s") and "0.22 assumed" in basis
    assert plan_estimate(None, 0.5, measure=measure)[:2] == (0.31, 0.5)
    # A given peak is not measured: the A100 figure of old.
    assert plan_estimate(312.0, measure=None)[:2] == (312.0, DEFAULT_UTILISATION)

    def broken():
        raise RuntimeError("no BLAS")

    peak, efficiency, basis = plan_estimate(measure=broken)
    assert (peak, efficiency) == (DEFAULT_PEAK_TFLOPS, DEFAULT_UTILISATION) and "no BLAS" in basis
    with pytest.raises(ValueError, match="utilisation"):
        plan_estimate(None, 1.5, measure=measure)


def test_plan_prints_this_machine_s_measured_peak_and_the_predicted_wall_time(
    tmp_path, monkeypatch, capsys, quiet
):
    monkeypatch.setenv("LOLARAY_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []
    monkeypatch.setattr(hardware, "measure_gemm_peak", _counting_probe(calls))
    threads = torch.get_num_threads()
    for how in ("measured now", "measured earlier"):
        assert compression.main(["--profile", "smoke", "--plan", "--no-pixel", "--latent-channels", "4"]) == 0
        out = capsys.readouterr().out
        assert (
            f"this machine: fp32 GEMM peak 310 GFLOP/s on {threads} thread{'s' if threads != 1 else ''}, {how}"
        ) in out
        assert "efficiency 0.22 assumed" in out
        assert "Predicted wall time: " in out and "at 68.2 GFLOP/s: 310 GFLOP/s peak x 0.22" in out
    assert len(calls) == 1 and (tmp_path / "hardware" / "gemm_peaks.json").is_file()
    # The A100 figure when asked for, without a probe.
    assert (
        compression.main(
            ["--profile", "smoke", "--plan", "--no-pixel", "--latent-channels", "4", "--peak-tflops", "312"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "at 312 TFLOP/s and 40% utilisation" in out
        and "peak 312 TFLOP/s given; efficiency 0.4 assumed" in out
    )
    assert (
        compression.main(
            ["--profile", "smoke", "--plan", "--no-pixel", "--latent-channels", "4", "--utilisation", "0.5"]
        )
        == 0
    )
    assert "efficiency 0.5 given" in capsys.readouterr().out
    assert len(calls) == 1


def test_the_end_of_sweep_line_states_the_plan_s_prediction_and_never_raises():
    profile = PROFILES["smoke"]
    info, _ = plan_dataset(profile.dataset)
    text = sweep_prediction(
        profile, info, (4,), pixel=False, seeds=2, elapsed_s=100.0, peak_tflops=0.5, utilisation=0.25
    )
    plan = plan_study(profile, info, (4,), pixel=False)
    expected = 2 * predicted_wall_seconds(plan, 0.5, 0.25)
    assert text.startswith(
        f"the plan predicted {format_duration(expected)} for 2 seeds at 125 GFLOP/s: 500 GFLOP/s peak x 0.25; its "
    )
    assert "of the peak" in text
    failed = sweep_prediction(profile, None, (4,), peak_tflops=0.5, utilisation=0.25)
    assert failed.startswith("no estimate from the plan: AttributeError")
