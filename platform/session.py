"""The Ray session: an embedded local Ray by default, or a running cluster.

On a laptop or CI box the platform starts Ray inside the process with more logical CPUs
than cores: Ray Data read tasks need free CPU slots beside 1-CPU train workers or actors,
and on a 2-core machine exact accounting starves them forever (ray.md §0.3). Tune trial
drivers hold the custom resource ``train_driver`` instead of CPUs (ray.md §2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket

import ray

__all__ = ["TRAIN_DRIVER_RESOURCE", "keep_freed_memory", "quiet_workers", "setup_process", "start_ray"]

TRAIN_DRIVER_RESOURCE = "train_driver"

# Settings that make Ray Train usable on a small machine (ray.md §0, §6). setdefault: the
# user's own environment wins.
_RAY_DEFAULT_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # ray.train.report otherwise blocks 2 s per call
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # prints in train functions would show twice
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(*, mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let glibc keep freed tensor memory in the process for reuse instead of unmapping it.

    PyTorch's CPU allocator caches nothing: every tensor above glibc's mmap threshold
    (adaptive, from 128 KiB) is a fresh ``mmap`` whose pages fault in on first touch,
    and freed memory at the top of the heap goes back to the OS. A batch of 8 ensemble
    members through the demo denoiser took up to 18,000 minor page faults (70 MB) and
    10–20 ms of system time per forward pass on 2 cores, varying from run to run with
    the heap's layout; with these settings, none once the heap has grown to its working
    size (``benchmarks/ensemble_rollout_throughput.py``). GPU tensors are unaffected
    (CUDA caches them).

    :param mmap_threshold: allocations below this come from the heap (glibc caps it at 32 MiB).
    :param trim_threshold: free memory at the top of the heap kept before returning it.
    :returns: whether the settings took (``False`` without glibc, e.g. on macOS, or with
        ``LOLARAY_KEEP_FREED_MEMORY=0``).
    """
    if os.environ.get("LOLARAY_KEEP_FREED_MEMORY", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    took_mmap = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    took_trim = mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return bool(took_mmap and took_trim)


def setup_process() -> None:
    """Ray's ``worker_process_setup_hook`` (and the driver's own setup): quiet logs and
    :func:`keep_freed_memory`."""
    quiet_workers()
    keep_freed_memory()


def quiet_workers() -> None:
    """Worker setup hook: silence the Train controller's placement-group cleaner warnings
    and the per-report INFO lines of Train workers.

    Without ``ray[default]`` the State API it polls every second is absent and it logs a
    warning each time (ray.md §1, fix B).
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
        logging.ERROR
    )
    # One INFO line per checkpoint and per report of every worker would bury the sweep's
    # own progress lines; MLflow has the metrics.
    for name in ("ray.train.v2._internal.execution.storage", "ray.train.v2._internal.execution.context"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Open a TCP connection to ``host:port`` (or ``ray://host:port``) first: ``ray.init``
    on an unreachable address retries for minutes before it gives up."""

    if address == "auto" or "://" in address and not address.startswith("ray://"):
        return  # "auto" reads the local node's cluster file; ray.init fails fast without one
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r}: expected host:port, 'auto' or ray://"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {error}") from error


def start_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    temp_dir: str | None = None,
) -> dict:
    """Connect to a Ray cluster (``address``) or start an embedded local one (``None``).

    :param address: ``None`` for an embedded local Ray, ``"auto"`` on a cluster node, or
        ``"ray://host:10001"`` / ``"host:6379"``.
    :param num_cpus: logical CPUs of the embedded Ray (default: three times the cores, at
        least 6: on 2 cores the demo's four chains — three rates and the pixel baseline — then
        run at once, 4 one-thread training workers with 2 logical CPUs left for the Ray Data
        tasks beside them, instead of a fourth chain waiting ~1,000 s and running alone).
    :returns: the cluster's resources.
    :raises ConnectionError: the address cannot be reached (with the address in the message).
    """

    for key, value in _RAY_DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return ray.cluster_resources()
    setup_hook = {"worker_process_setup_hook": "lolaray.platform.session.setup_process"}
    if address is None:
        cores = os.cpu_count() or 2
        ray.init(
            # "local": always a new embedded Ray. Without it ray.init() connects to whatever
            # /tmp/ray/ray_current_cluster names — a cluster another process started on this
            # machine, or a dead one whose file a killed run left behind — and then refuses
            # the num_cpus below ("When connecting to an existing cluster, ...").
            address="local",
            num_cpus=num_cpus or max(6, 3 * cores),
            resources={TRAIN_DRIVER_RESOURCE: 8},
            include_dashboard=False,
            object_store_memory=object_store_memory or 2 * 1024**3,
            _temp_dir=temp_dir,
            runtime_env=setup_hook,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    else:
        _check_reachable(address)
        try:
            ray.init(address=address, runtime_env=setup_hook, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as error:
            raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {error}") from error
    setup_process()
    return ray.cluster_resources()
