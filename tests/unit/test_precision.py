"""The hardware switches: precision, torch.compile, fused AdamW, NCCL settings, worker threads.

Each is a pure function of the device, the CPU flags (stubbed here) or measured timings, so
the GPU branches are checked on a CPU machine too.
"""

import pytest
import torch
from torch import nn

from lolaray.trainers.hardware import (
    BF16_MIN_SPEEDUP,
    COMPILE_ENV,
    autocast_context,
    compile_backbones,
    compile_enabled,
    cpu_flags,
    measure_bf16_speedup,
    process_group_settings,
    resolve_precision,
    use_fused_adam,
    worker_threads,
)
from lolaray.trainers.optim import build_optimizer
from lolaray.trainers.transformer import build_backbone

AMX = {"fpu", "avx512f", "amx_tile", "amx_bf16", "amx_int8"}
NO_AMX = {"fpu", "avx2", "avx512f", "avx512_bf16"}  # bf16 instructions, but no AMX tiles


def _never_called():
    raise AssertionError("the probe must not run here")


def test_auto_precision_is_bf16_on_cuda_without_any_probe():
    assert resolve_precision("auto", "cuda", flags=set(), measured_speedup=_never_called) == "bf16"


def test_auto_precision_on_cpu_without_amx_is_fp32_and_never_probes():
    assert resolve_precision("auto", "cpu", flags=NO_AMX, measured_speedup=_never_called) == "fp32"
    assert resolve_precision("auto", "cpu", flags=set(), measured_speedup=_never_called) == "fp32"


def test_auto_precision_on_amx_cpu_follows_the_measurement():
    assert resolve_precision("auto", "cpu", flags=AMX, measured_speedup=2.5) == "bf16"
    assert resolve_precision("auto", "cpu", flags=AMX, measured_speedup=lambda: 1.6) == "bf16"
    # AMX present but bf16 measured slower (small networks: the casts cost more than AMX saves).
    assert resolve_precision("auto", "cpu", flags=AMX, measured_speedup=0.7) == "fp32"
    assert resolve_precision("auto", "cpu", flags=AMX, measured_speedup=BF16_MIN_SPEEDUP - 0.01) == "fp32"
    # Not measured: the flag alone decides.
    assert resolve_precision("auto", "cpu", flags=AMX) == "bf16"


def test_explicit_precisions_are_kept_and_unknown_ones_rejected():
    for device in ("cpu", "cuda"):
        assert resolve_precision("fp32", device, flags=AMX, measured_speedup=_never_called) == "fp32"
        assert resolve_precision("bf16", device, flags=set(), measured_speedup=_never_called) == "bf16"
    assert resolve_precision("auto", "mps", flags=AMX, measured_speedup=_never_called) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cuda")


def test_cpu_flags_are_read_from_a_cpuinfo_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu sse amx_bf16 amx_tile\nbugs\t: none\n")
    assert {"amx_bf16", "amx_tile", "fpu"} <= cpu_flags(str(path))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_autocast_context_matches_the_precision():
    with autocast_context("bf16", "cpu")():
        assert torch.is_autocast_enabled("cpu")
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with autocast_context("fp32", "cpu")():
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_probe_measures_a_positive_speedup_from_the_models_layers():
    model = nn.Sequential(nn.Linear(64, 128), nn.Conv2d(3, 8, 3))
    assert measure_bf16_speedup(model, rows=256, repeats=1, trials=1, min_weight=0) > 0
    assert measure_bf16_speedup(nn.ReLU(), min_weight=0) == 1.0  # nothing to measure


def test_small_networks_are_not_probed_so_their_precision_cannot_flip_between_runs():
    smoke = build_backbone("smoke", in_channels=4)  # 64 wide: its largest weight is 256 x 64
    assert measure_bf16_speedup(smoke) == 1.0
    assert (
        resolve_precision("auto", "cpu", flags=AMX, measured_speedup=lambda: measure_bf16_speedup(smoke))
        == "fp32"
    )


def test_compile_is_opt_in_and_cuda_only():
    assert not compile_enabled("cuda", environ={})
    assert compile_enabled("cuda", environ={COMPILE_ENV: "1"})
    assert not compile_enabled("cpu", environ={COMPILE_ENV: "1"})
    assert not compile_enabled("cpu", requested=True)
    assert compile_enabled("cuda", requested=True, environ={COMPILE_ENV: "0"})
    assert not compile_enabled("cuda", requested=False, environ={COMPILE_ENV: "1"})


def test_compile_backbones_compiles_in_place_and_keeps_the_state_dict_keys():
    model = nn.ModuleDict({"backbone": build_backbone("smoke", in_channels=2), "head": nn.Linear(2, 2)})
    keys = list(model.state_dict())
    assert compile_backbones(model) == 1  # lazy: nothing is compiled until the first call
    assert list(model.state_dict()) == keys
    assert compile_backbones(nn.Linear(2, 2)) == 0


def test_fused_adam_only_when_every_parameter_is_on_cuda():
    assert use_fused_adam(["cuda", "cuda"])
    assert not use_fused_adam(["cuda", "cpu"])
    assert not use_fused_adam(["cpu"])
    assert not use_fused_adam([])
    optimizer = build_optimizer(nn.Linear(3, 3).parameters(), name="adamw", lr=1e-3)
    assert not optimizer.defaults["fused"]


def test_process_group_times_out_in_minutes_on_gpu_and_keeps_rays_defaults_on_cpu():
    cpu = process_group_settings(use_gpu=False, environ={COMPILE_ENV: "1"})
    assert cpu.timeout_s == 1800 and cpu.env_vars == {}
    gpu = process_group_settings(use_gpu=True, environ={})
    assert gpu.timeout_s <= 300
    assert gpu.env_vars["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    compiled = process_group_settings(use_gpu=True, compiled=True, environ={COMPILE_ENV: "1"})
    assert gpu.timeout_s < compiled.timeout_s <= 900
    assert compiled.env_vars[COMPILE_ENV] == "1"  # the workers make the driver's choice
    user = process_group_settings(use_gpu=True, environ={"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"})
    assert user.env_vars["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "0"  # the user's value wins


def test_a_worker_takes_the_free_cores():
    assert worker_threads(1.0, cores=2, concurrent_workers=1) == 2  # alone: every core
    assert worker_threads(1.0, cores=16, concurrent_workers=4) == 4  # four trials: a quarter each
    assert worker_threads(1.0, cores=2, concurrent_workers=3) == 1  # more trials than cores
    assert worker_threads(4.0, cores=16, concurrent_workers=8) == 4  # never below the reservation
    assert worker_threads(32.0, cores=16, concurrent_workers=1) == 16  # never above the cores
