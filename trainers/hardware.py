r"""Speed switches chosen from the hardware: precision, ``torch.compile``, fused AdamW, NCCL, threads.

Every choice is a pure function of the device, the CPU's flags or measured timings, so a
test can check it on any machine (the GPU branches included) by passing the inputs:

- :func:`resolve_precision`: ``"auto"`` means bf16 autocast on CUDA, and on a CPU whose
  flags include ``amx_bf16`` (Intel AMX, read from ``/proc/cpuinfo`` at run time) *when a
  short probe measured bf16 faster* (:func:`measure_bf16_speedup`, GEMMs of the model's own
  layer shapes); fp32 everywhere else. Without AMX, bf16 on a CPU is emulated and slower.
  For networks as small as the demo's, the casts that autocast inserts cost more than the
  AMX GEMMs save, which is what the probe finds;
- :func:`compile_enabled` / :func:`compile_backbones`: ``torch.compile`` of the emulators'
  transformer backbones, on CUDA only and only when asked (``LOLARAY_TORCH_COMPILE=1``):
  it cannot be tested on this project's CPU machines, and on CPU it costs minutes of
  compilation for small networks;
- :func:`use_fused_adam`: ``torch.optim.AdamW(fused=True)`` (one kernel per step) when every
  parameter lives on CUDA;
- :func:`process_group_settings`: on GPU workers a process-group timeout of 5 minutes (15
  with ``torch.compile``, whose first step can take minutes longer on one rank than on
  another) instead of Ray's 30, with ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` so that a
  collective waiting for a lost node aborts the worker and ``FailureConfig`` restarts the
  group from its last checkpoint. CPU (gloo) workers keep Ray's defaults;
- :func:`worker_threads`: a CPU worker takes all the cores when it trains alone, its share
  of them when several trainings run side by side.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lolaray.platform.embedded import data_cache_dir
from lolaray.trainers.transformer import SpatioTemporalTransformer

__all__ = [
    "BF16_MIN_SPEEDUP",
    "COMPILE_ENV",
    "PROBE_MIN_WEIGHT",
    "ProcessGroupSettings",
    "autocast_context",
    "cached_gemm_peak",
    "compile_backbones",
    "compile_enabled",
    "cpu_flags",
    "cpu_model",
    "gemm_peak_cache_path",
    "gemm_peak_key",
    "measure_bf16_speedup",
    "measure_gemm_peak",
    "process_group_settings",
    "resolve_precision",
    "use_fused_adam",
    "worker_threads",
]

#: bf16 is chosen on an AMX CPU only when the probe measured at least this speed-up; the
#: margin keeps timing noise from flipping the choice between runs.
BF16_MIN_SPEEDUP = 1.2
#: Layers smaller than this (weight elements) are not probed: bf16 cannot reliably pay there.
PROBE_MIN_WEIGHT = 1024 * 1024
#: Opt-in switch for ``torch.compile`` of the emulator backbones (CUDA only).
COMPILE_ENV = "LOLARAY_TORCH_COMPILE"
PRECISIONS = ("fp32", "bf16", "auto")


@functools.lru_cache(maxsize=4)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (``amx_bf16``, ``avx512_bf16``, ...) from the first ``flags`` line
    of ``path``; empty where there is no such file (macOS, Windows)."""
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(
    requested: str,
    device_type: str,
    *,
    flags: Iterable[str] | None = None,
    measured_speedup: float | Callable[[], float] | None = None,
) -> str:
    r"""The precision a training runs in: ``"fp32"`` or ``"bf16"`` (autocast).

    :param requested: ``"fp32"`` and ``"bf16"`` are returned as they are; ``"auto"`` chooses.
    :param device_type: ``torch.device.type`` of the worker (``"cuda"``, ``"cpu"``, ...).
    :param flags: the CPU's flags (default: :func:`cpu_flags` of this machine).
    :param measured_speedup: :math:`t_\text{fp32} / t_\text{bf16}` of the model's GEMMs, or a
        callable that measures it (called only on an AMX CPU); ``None``: not measured, the
        AMX flag alone decides.
    :raises ValueError: for an unknown ``requested``.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    if device_type == "cuda":
        return "bf16"
    if device_type != "cpu":
        return "fp32"
    if "amx_bf16" not in (cpu_flags() if flags is None else frozenset(flags)):
        return "fp32"
    speedup = measured_speedup() if callable(measured_speedup) else measured_speedup
    if speedup is not None and speedup < BF16_MIN_SPEEDUP:
        return "fp32"
    return "bf16"


def autocast_context(precision: str, device_type: str) -> Callable[[], object]:
    """A factory of the context a step runs in: ``torch.autocast(bf16)`` or a no-op."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext


def _gemm_shapes(model: nn.Module, layers: int) -> list[tuple[int, int]]:
    """``(in, out)`` of the ``layers`` largest distinct Linear / Conv weights (a conv as the
    GEMM of its im2col form: ``in = C_in · prod(kernel)``)."""
    shapes = set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            shapes.add((module.in_features, module.out_features))
        elif isinstance(module, nn.modules.conv._ConvNd):
            shapes.add(
                (module.in_channels // module.groups * math.prod(module.kernel_size), module.out_channels)
            )
    return sorted(shapes, key=lambda s: s[0] * s[1], reverse=True)[:layers]


def measure_bf16_speedup(
    model: nn.Module,
    *,
    rows: int = 2048,
    layers: int = 4,
    repeats: int = 3,
    trials: int = 3,
    min_weight: int = PROBE_MIN_WEIGHT,
) -> float:
    r"""A short probe (a fraction of a second to a few seconds): :math:`t_\text{fp32} /
    t_\text{bf16}` of the GEMMs ``(rows × in) @ (in × out)`` of the model's largest layers, fp32
    against CPU autocast (which casts input and weight on every call, as it does in training);
    the median of ``trials`` measurements.

    A model whose largest weight has fewer than ``min_weight`` elements gets ``1.0`` without
    measuring: for layers that small the measured speed-up is a coin flip around 1 (0.3 for
    the smoke networks; 1.0–1.8 between repeats for the 128-wide demo networks on 2 shared
    cores), and a precision that flips between runs would make seeded runs irreproducible.
    Paper-width layers (1024 × 4096) measured 3.8–4.7x here.

    :param model: the network (its parameters are read, not changed).
    :param rows: the GEMMs' ``M`` (tokens or pixels per step).
    :returns: the speed-up of bf16 (``> 1``: bf16 is faster); ``1.0`` for a model without
        Linear or Conv layers or below ``min_weight``.
    """
    shapes = _gemm_shapes(model, layers)
    if not shapes or max(k * n for k, n in shapes) < min_weight:
        return 1.0
    generator = torch.Generator().manual_seed(0)
    operands = [
        (torch.randn(rows, k, generator=generator), torch.randn(n, k, generator=generator)) for k, n in shapes
    ]

    def best_time(bf16: bool) -> float:
        best = math.inf
        for _ in range(repeats + 1):  # the first pass warms up (allocation, AMX tile config)
            began = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.no_grad():
                for x, w in operands:
                    torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - began)
        return best

    speedups = sorted(best_time(False) / max(best_time(True), 1e-9) for _ in range(trials))
    return speedups[len(speedups) // 2]


def compile_enabled(
    device_type: str, *, requested: bool | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether to ``torch.compile`` the emulator backbones: only on CUDA, and only when asked
    (``requested``, else ``$LOLARAY_TORCH_COMPILE`` in ``1/true/yes``)."""
    if requested is None:
        value = (os.environ if environ is None else environ).get(COMPILE_ENV, "")
        requested = value.strip().lower() in ("1", "true", "yes")
    return bool(requested) and device_type == "cuda"


def compile_backbones(model: nn.Module, **compile_kwargs) -> int:
    """Compile, in place, every emulator transformer backbone inside ``model``.

    In place (``nn.Module.compile``) so that the module tree and its ``state_dict`` keys stay
    what they are (checkpoints load either way), and before DDP wraps it (as the reference
    does: compile, then DDP). Returns how many backbones were compiled (0 for autoencoders).
    """

    backbones = [m for m in model.modules() if isinstance(m, SpatioTemporalTransformer)]
    for backbone in backbones:
        backbone.compile(**compile_kwargs)
    return len(backbones)


def use_fused_adam(device_types: Iterable[str]) -> bool:
    """Fused Adam / AdamW (one kernel per step) when every parameter is on CUDA."""
    types = set(device_types)
    return bool(types) and types == {"cuda"}


@dataclass(frozen=True)
class ProcessGroupSettings:
    """How the workers' process group is set up.

    :param timeout_s: ``TorchConfig(timeout_s=...)``: how long a collective waits for a peer.
    :param env_vars: environment of the Ray Train worker actors (``RunConfig.worker_runtime_env``).
    """

    timeout_s: int
    env_vars: dict[str, str] = field(default_factory=dict)


# Ray's TorchConfig default: a lost node is noticed after 30 minutes.
_RAY_DEFAULT_TIMEOUT_S = 1800
_NCCL_TIMEOUT_S = 300
_NCCL_COMPILE_TIMEOUT_S = 900


def process_group_settings(
    *, use_gpu: bool, compiled: bool = False, environ: Mapping[str, str] | None = None
) -> ProcessGroupSettings:
    """The process-group timeout and NCCL environment of a training stage.

    GPU (NCCL): 300 s (900 s with ``torch.compile``: ranks finish compiling minutes apart)
    and ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` (a timed-out collective aborts the worker
    instead of hanging it), ``NCCL_DEBUG=WARN``; ``$LOLARAY_TORCH_COMPILE`` travels along so
    that the workers make the driver's choice. A user's own value of any of them wins.
    CPU (gloo): Ray's defaults (1800 s, no variables): a CPU step can take minutes.
    """
    environ = os.environ if environ is None else environ
    if not use_gpu:
        return ProcessGroupSettings(timeout_s=_RAY_DEFAULT_TIMEOUT_S)
    env = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_DEBUG": "WARN"}
    if COMPILE_ENV in environ:
        env[COMPILE_ENV] = environ[COMPILE_ENV]
    env.update({k: environ[k] for k in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_DEBUG") if k in environ})
    return ProcessGroupSettings(
        timeout_s=_NCCL_COMPILE_TIMEOUT_S if compiled else _NCCL_TIMEOUT_S, env_vars=env
    )


def worker_threads(cpus_per_worker: float, *, cores: int, concurrent_workers: int) -> int:
    """Torch threads of a CPU training worker: its reserved CPUs, or its share of the cores
    when fewer workers than cores are training, whichever is more (never above ``cores``).

    :param cpus_per_worker: the logical CPUs the worker reserves from Ray.
    :param cores: the machine's cores (``os.cpu_count()``).
    :param concurrent_workers: training workers running at once on the machine, this
        stage's included (trials × workers per stage).
    """
    share = cores // max(1, concurrent_workers)
    return max(1, min(cores, max(int(cpus_per_worker), share)))


def measure_gemm_peak(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    *,
    n: int | None = None,
    repeats: int = 5,
    budget_s: float | None = None,
) -> tuple[float, float]:
    r"""The GEMM peak of this machine in ``dtype``: FLOP/s of the best of ``repeats`` ``n × n``
    products (:math:`2 n^3` FLOPs each, after one warm-up product), the ceiling any network
    step can reach in that dtype.

    :param device: ``"cpu"`` or a CUDA device (synchronized around each product).
    :param threads: torch's CPU threads during the probe (restored after); default: as set.
    :param n: the products' size (default 2048 on a CPU, about 0.1 s a product on 2 cores;
        8192 on CUDA, where smaller products do not fill the GPU).
    :param budget_s: stop repeating once this many seconds have passed (at least one timed
        product); ``None``: all ``repeats``.
    :returns: ``(by wall time, by CPU time)``: the second counts the process's CPU seconds
        spread on torch's threads (what the cores deliver when they are ours alone; on a
        shared machine the wall-time figure also counts the others' work). On CUDA only
        the first means anything.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)

        def synchronize() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        best, best_cpu = math.inf, math.inf
        started = time.perf_counter()
        for i in range(repeats + 1):
            synchronize()
            began, cpu = time.perf_counter(), time.process_time()
            torch.mm(a, b)
            synchronize()
            if i:  # the first product warms up (allocation, kernel selection)
                best = min(best, time.perf_counter() - began)
                best_cpu = min(best_cpu, (time.process_time() - cpu) / torch.get_num_threads())
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    break
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / max(best, 1e-9), 2 * n**3 / max(best_cpu, 1e-9)


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``; elsewhere
    :func:`platform.processor` or the architecture)."""
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def gemm_peak_key(dtype: torch.dtype, device: str | torch.device, threads: int) -> str:
    """What a cached GEMM peak is valid for: the CPU's model (the GPU's name on CUDA), the
    torch version, the threads (CPU) and the dtype."""
    device = torch.device(device)
    dtype_name = str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        return f"cuda | {torch.cuda.get_device_name(device)} | torch {torch.__version__} | {dtype_name}"
    return f"{device.type} | {cpu_model()} | torch {torch.__version__} | {threads} threads | {dtype_name}"


def gemm_peak_cache_path() -> Path:
    """The cache of measured GEMM peaks: ``gemm_peaks.json`` in ``hardware/`` under the
    platform's data cache (``$LOLARAY_DATA_DIR``, else ``~/.cache/lolaray/datasets``)."""
    return data_cache_dir() / "hardware" / "gemm_peaks.json"


def cached_gemm_peak(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    *,
    path: str | Path | None = None,
    budget_s: float = 1.0,
    busy_ratio: float = 0.8,
    busy_load: float | None = None,
) -> tuple[float, str]:
    """This machine's GEMM peak in ``dtype`` (:func:`measure_gemm_peak`, about a second),
    measured once per :func:`gemm_peak_key` and kept in a small JSON file (default
    :func:`gemm_peak_cache_path`; delete it to measure again); an unreadable file is
    measured over, an unwritable one only not kept.

    On a CPU, a probe that did not have the cores to itself is not kept, so that a busy
    moment does not become the machine's figure for good: one whose wall-time figure falls
    below ``busy_ratio`` of its CPU-time figure, or that began at a 1-minute load average
    above ``busy_load`` (default half the cores + 0.5). Its larger figure is returned (on 2
    shared cores under others' tests, load 6–19, the wall-time figure read 6–150 GFLOP/s
    and the CPU-time one 115–290, against 300–315 for both quiet).

    :param threads: torch's CPU threads (default: as set now); ignored on CUDA.
    :returns: ``(FLOP/s, how)``: ``"measured earlier"`` (from the file), ``"measured now"``
        or ``"measured now on a busy machine, by CPU time, not kept"``.
    """
    import json

    device = torch.device(device)
    threads = int(threads or torch.get_num_threads())
    path = Path(path) if path is not None else gemm_peak_cache_path()
    key = gemm_peak_key(dtype, device, threads)
    try:
        peaks = json.loads(path.read_text())
        if not isinstance(peaks, dict):
            peaks = {}
    except (OSError, ValueError):
        peaks = {}
    record = peaks.get(key)
    flops = record.get("flops_per_s") if isinstance(record, dict) else None
    if isinstance(flops, (int, float)) and flops > 0:
        return float(flops), "measured earlier"
    cpu = device.type == "cpu"
    try:
        load = os.getloadavg()[0] if cpu else 0.0
    except (AttributeError, OSError):  # no load average (Windows)
        load = 0.0
    cores = os.cpu_count() or 1
    busy_load = 0.5 * cores + 0.5 if busy_load is None else busy_load
    flops, by_cpu_time = measure_gemm_peak(dtype, device, threads if cpu else None, budget_s=budget_s)
    if cpu and (flops < busy_ratio * by_cpu_time or load > busy_load):
        how = f"measured now on a busy machine (load {load:.1f}, {cores} cores), not kept"
        return max(flops, by_cpu_time), how
    peaks[key] = {"flops_per_s": flops, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(peaks, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return flops, "measured now"
