"""The one training-loop core every trainer shares, in a Ray Train worker or in this process.

A trainer supplies a :class:`TrainingTask` — the network, this worker's batches and the
loss — and :func:`run_training` does the rest, identically for autoencoders, diffusion
models and neural solvers:

- rank, device, data shard and checkpoints from its runtime (:mod:`lolaray.trainers.runtime`:
  a Ray Train worker -- CUDA + NCCL on a cluster, CPU + gloo here, DDP when there are
  several workers -- or this process, with no Ray Train), optional bf16 autocast (GPU *and* CPU: AMX makes it pay on CPU too);
- optimizer (:func:`~lolaray.trainers.optim.build_optimizer`) and a per-step cosine schedule;
- each batch one :class:`~lolaray.trainers.step.TrainingStep` (forward, backward, clip at
  ``grad_clip``, update; the step the benchmarks and the dry run time too); a step whose
  (pre-clip) gradient norm is not finite is skipped and counted, and the run stops with
  :class:`NonFiniteTrainingError` after ``max_nonfinite_in_a_row`` of them. The norm is
  taken after DDP's all-reduce, so every rank takes the same decision;
- per epoch: validation loss, metrics averaged over ranks, one full-state checkpoint
  (a ``ray.train.report`` in a worker) (model, optimizer, scheduler, step, epoch, every rank's RNG
  states) — reports are per epoch because each one blocks about a health-check interval;
- resume: when Ray Train restarts a failed worker group (``FailureConfig``) or reruns a
  run of the same name, training continues from the newest complete checkpoint at the
  same step -- the platform's choice, not only Ray's (:mod:`lolaray.trainers.checkpoints`:
  Ray can lose the record of a checkpoint reported just before a worker died); epoch
  metrics reach MLflow only once their checkpoint is safe, so the history never goes back;
- MLflow: rank 0 logs the epoch metrics into a run created by the driver.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lolaray.trainers.ema import WeightAverage
from lolaray.trainers.hardware import (
    autocast_context,
    compile_backbones,
    compile_enabled,
    measure_bf16_speedup,
    resolve_precision,
)
from lolaray.trainers.optim import build_optimizer, cosine_schedule
from lolaray.trainers.runtime import TrainingRuntime, current_runtime
from lolaray.trainers.step import FaultInjection, TrainingStep, fault_hooks

__all__ = [
    "ADDED_LATER",
    "FaultInjection",
    "LoopConfig",
    "NonFiniteTrainingError",
    "StageConfig",
    "TrainingTask",
    "endless_batches",
    "run_training",
    "trained_weights",
]


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass(frozen=True)
class LoopConfig:
    """Optimization settings shared by every trainer.

    :param epochs: number of epochs; ``steps_per_epoch``: batch iterations per epoch per worker.
    :param optimizer: ``psgd``, ``adam`` or ``adamw``; ``lr``, ``weight_decay``, ``betas`` as usual.
    :param warmup_steps: linear warm-up before the cosine decay (over all optimizer steps).
    :param grad_clip: max gradient norm; ``max_nonfinite_in_a_row``: stop after this many skips in a row.
    :param precision: ``fp32``, ``bf16`` (autocast) or ``auto``: bf16 on CUDA and on AMX-BF16 CPUs
        where a probe measured it faster, else fp32 (:func:`~lolaray.trainers.hardware.resolve_precision`).
    :param seed: base seed; rank ``r`` seeds with ``seed + r``.
    :param ema_decay: keep an exponential moving average of the weights with this decay
        (:class:`~lolaray.trainers.ema.WeightAverage`): validation runs on it and it is the
        trained network a stage ships. ``None``: the last weights.
    """

    epochs: int = 10
    steps_per_epoch: int = 100
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_nonfinite_in_a_row: int = 10
    precision: str = "auto"
    seed: int = 0
    fault: FaultInjection = field(default_factory=FaultInjection)
    ema_decay: float | None = None

    def __post_init__(self):
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(
                f"epochs and steps_per_epoch must be >= 1, got {self.epochs}, {self.steps_per_epoch}"
            )
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")
        if self.lr <= 0 or self.grad_clip <= 0 or self.max_nonfinite_in_a_row < 1:
            raise ValueError("lr and grad_clip must be > 0 and max_nonfinite_in_a_row >= 1")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1) or be None, got {self.ema_decay}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        """Every field, JSON-safe (what a worker receives and a checkpoint records); what of
        it enters an artifact id is :meth:`StageConfig.identity`'s choice."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoopConfig:
        """Inverse of :meth:`to_dict` (JSON round trips turn tuples into lists)."""
        d = dict(d)
        d["fault"] = FaultInjection(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d.get("fault", {}).items()}
        )
        d["betas"] = tuple(d.get("betas", (0.9, 0.99)))
        return cls(**d)


#: ``field(metadata=ADDED_LATER)``: a stage-config field added after artifacts were stored
#: with that config, left out of :meth:`StageConfig.to_dict` (and so of the artifact id)
#: while it holds its default, which must be what those artifacts did.
ADDED_LATER = {"omitted_at_default": True}


class StageConfig:
    """Mixin for frozen stage-config dataclasses holding a ``loop: LoopConfig``: the one
    serialization of a stage's config -- :meth:`to_dict` / :meth:`from_dict` (what workers
    receive and artifacts store) and :meth:`identity` (what enters the artifact id)."""

    def to_dict(self) -> dict:
        """Every field, JSON-safe, but an :data:`ADDED_LATER` field at its default."""
        d = asdict(self)
        for f in fields(self):
            if f.metadata.get("omitted_at_default") and d[f.name] == f.default:
                del d[f.name]
        d["loop"] = self.loop.to_dict()
        return d

    def identity(self) -> dict:
        """What of this config enters its artifact's id
        (:func:`~lolaray.platform.artifacts.artifact_id`): every field that can change the
        trained network, which is :meth:`to_dict` less the loop's fault injection (a
        rehearsed failure resumes to the same weights; it is recorded as the default, as
        it always was, so the ids of stored artifacts stand). An :data:`ADDED_LATER` field
        at its default is left out, as those artifacts were trained without it. (Injected
        non-finite steps do change the weights: they are for the tests, in scratch stores.)"""
        d = self.to_dict()
        d["loop"]["fault"] = asdict(FaultInjection())
        return d

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        loop = LoopConfig.from_dict(d.pop("loop", {}))
        return cls(**d, loop=loop)


class TrainingTask(Protocol):
    """What a trainer specialises. Built inside each worker (HDF5 handles are not pickled)."""

    def build_model(self) -> nn.Module:
        """The network, on CPU, freshly initialised (seeded by the loop)."""

    def train_batches(self, epoch: int) -> Iterator[Any]:
        """This worker's share of the training batches for ``epoch`` (may be endless)."""

    def valid_batches(self) -> Iterable[Any]:
        """This worker's share of the validation batches (the same every epoch)."""

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        """The scalar loss of ``batch`` and its number of samples."""


def endless_batches(
    dataset, *, batch_size: int, epoch: int, seed: int, rank: int, world: int
) -> Iterator[Any]:
    """This rank's disjoint share of ``dataset`` in shuffled batches, pass after pass, forever.

    An epoch is a number of steps, not a pass over the data: the sampler is re-seeded per
    (epoch, pass) so every rank draws the same permutation and keeps its own part of it.
    """

    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    loader = DataLoader(dataset, batch_size=min(batch_size, len(sampler)), sampler=sampler, drop_last=True)
    passes = 0
    while True:
        sampler.set_epoch(epoch * 10_000 + passes)
        yield from loader
        passes += 1


def _all_reduce_mean(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world).tolist()


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _gather_rng_states(world: int) -> list[dict]:
    if world == 1:
        return [_rng_state()]

    states: list = [None] * world
    dist.all_gather_object(states, _rng_state())
    return states


class _RunLogger:
    """Logs epoch metrics into the driver's MLflow run (rank 0 only); a no-op without a run."""

    def __init__(self, run_id: str | None, tracking_uri: str | None):
        self.run_id = run_id
        self.client = None if run_id is None else MlflowClient(tracking_uri)

    def __call__(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(v)
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def catch_up(self, metrics: dict | None, step: int) -> None:
        """Log a resumed checkpoint's epoch ``metrics`` unless the run already holds ``step``.

        Rank 0 logs an epoch only after marking its checkpoint complete; a worker group torn
        down between the two leaves a checkpoint the restart resumes from whose metrics were
        never logged. Checking the history keeps each epoch logged exactly once.
        """
        if self.client is None or not metrics:
            return
        history = self.client.get_metric_history(self.run_id, "train/optimizer_steps")
        if all(m.step != step for m in history):
            self(metrics, step)


def trained_weights(state: dict) -> dict:
    """The weights a stage ships from a training state (:func:`~lolaray.trainers.checkpoints.read_state`): the
    moving average when :attr:`LoopConfig.ema_decay` was set, else the last weights."""
    return state["ema"]["average"] if state.get("ema") else state["model"]


def run_training(
    task: TrainingTask,
    loop: LoopConfig,
    *,
    mlflow_run_id: str | None = None,
    tracking_uri: str | None = None,
    run_storage: str | None = None,
    runtime: TrainingRuntime | None = None,
) -> dict:
    """Train ``task``; returns a summary (in a ``TorchTrainer``, rank 0's is ``Result.return_value``).

    ``runtime`` says where it runs (:mod:`lolaray.trainers.runtime`; default
    :func:`~lolaray.trainers.runtime.current_runtime`: the process's, inside
    :func:`~lolaray.trainers.runtime.in_process`, else this Ray Train worker's).
    ``run_storage`` is the run's folder or URI (``<storage_path>/<name>``, what
    :func:`~lolaray.trainers.launch.fit_stage` passes as ``worker_config["run_storage"]``):
    each checkpoint is marked complete there, and a restart resumes from the newest one.
    The summary has ``status`` = ``"finished"`` or ``"nonfinite"`` (with ``message``); the
    driver turns the latter into :class:`NonFiniteTrainingError` — raising in the worker
    would make ``FailureConfig`` retry a deterministic failure.
    """

    runtime = runtime or current_runtime()
    rank, world, device = runtime.rank, runtime.world, runtime.device
    torch.manual_seed(loop.seed + rank)
    np.random.seed((loop.seed + rank) % 2**32)
    random.seed(loop.seed + rank)

    model = task.build_model()
    if compile_enabled(device.type):  # opt-in ($LOLARAY_TORCH_COMPILE=1), CUDA only
        compile_backbones(model)
    model = runtime.prepare_model(model)
    core = getattr(model, "module", model)
    optimizer = build_optimizer(
        core.parameters(), name=loop.optimizer, lr=loop.lr, weight_decay=loop.weight_decay, betas=loop.betas
    )
    scheduler = cosine_schedule(optimizer, loop.total_steps, loop.warmup_steps)
    precision = resolve_precision(
        loop.precision, device.type, measured_speedup=lambda: measure_bf16_speedup(core)
    )
    autocast = autocast_context(precision, device.type)
    ema = WeightAverage(core, loop.ema_decay) if loop.ema_decay is not None else None

    start_epoch, step, iteration, skipped_total, resumes = 0, 0, 0, 0, []
    state = runtime.state_to_resume(run_storage)
    if state is not None:
        core.load_state_dict(state["model"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        iteration, skipped_total = state["iteration"], state["skipped_total"]
        resumes = [*state.get("resumes", []), step]
        if len(state["rng"]) == world:
            _set_rng_state(state["rng"][rank])

    log = _RunLogger(mlflow_run_id if rank == 0 else None, tracking_uri)
    if state is not None:
        log.catch_up(state.get("metrics"), step)
        log({"train/resumed_from_step": step}, step)
    train_step = TrainingStep(
        model,
        optimizer,
        loss=task.loss,
        device=device,
        scheduler=scheduler,
        grad_clip=loop.grad_clip,
        autocast=autocast,
        average=ema,
        hooks=fault_hooks(loop.fault, rank=rank),
        step=step,
        iteration=iteration,
    )
    nonfinite_in_a_row = 0
    first_step_at = None
    summary = {
        "status": "finished",
        "resumed_from_step": step if state is not None else None,
        # Every restart of this run so far, oldest first: where each one resumed.
        "resumed_from_steps": resumes,
        # Where rank 0 ran: the sweep records it, and the multi-node test checks placement.
        "node_id": runtime.node_id,
    }

    for epoch in range(start_epoch, loop.epochs):
        model.train()
        began = time.perf_counter()
        losses, norms, samples = [], [], 0
        batches = task.train_batches(epoch)
        for _ in range(loop.steps_per_epoch):
            batch = next(batches)
            first_step_at = first_step_at or time.time()
            outcome = train_step(batch)
            if not outcome.taken:
                skipped_total += 1
                nonfinite_in_a_row += 1
                if nonfinite_in_a_row >= loop.max_nonfinite_in_a_row:
                    summary.update(
                        status="nonfinite",
                        message=(
                            f"{nonfinite_in_a_row} consecutive steps had a non-finite loss or gradient "
                            f"(at optimizer step {train_step.step}, epoch {epoch}); stopping. Lower the "
                            "learning rate, check the data for NaN/Inf, or raise max_nonfinite_in_a_row."
                        ),
                        step=train_step.step,
                        skipped_total=skipped_total,
                    )
                    return summary
                continue
            nonfinite_in_a_row = 0
            losses.append(outcome.loss)
            norms.append(outcome.grad_norm)
            samples += outcome.samples
        step, iteration = train_step.step, train_step.iteration

        elapsed = time.perf_counter() - began
        model.eval()
        valid_losses, valid_n = 0.0, 0
        with (
            torch.no_grad(),
            autocast(),
            ema.swapped_into(core) if ema is not None else contextlib.nullcontext(),
        ):
            for batch in task.valid_batches():
                loss, n = task.loss(model, batch, device)
                valid_losses += float(loss) * n
                valid_n += n
        train_loss = float(np.mean(losses)) if losses else float("nan")
        reduced = _all_reduce_mean(
            [
                train_loss,
                valid_losses / max(valid_n, 1),
                float(np.mean(norms)) if norms else float("nan"),
                samples / max(elapsed, 1e-9),
            ],
            device,
            world,
        )
        metrics = {
            "train/loss": reduced[0],
            "valid/loss": reduced[1],
            "train/grad_norm": reduced[2],
            "train/samples_per_s": reduced[3] * world,
            "train/learning_rate": scheduler.get_last_lr()[0],
            "train/optimizer_steps": step,
            "train/skipped_steps": skipped_total,
            "epoch": epoch,
        }
        rng_states = _gather_rng_states(world)
        if any(not torch.isfinite(p).all() for p in core.parameters()):
            raise FloatingPointError(f"non-finite weights after epoch {epoch}; refusing to checkpoint them")
        state = None
        if rank == 0:
            state = {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "step": step,
                "iteration": iteration,
                "skipped_total": skipped_total,
                "resumes": resumes,
                "rng": rng_states,
                "loop": loop.to_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "metrics": metrics,  # logged by a restart if this process dies before logging them
            }
        runtime.keep_checkpoint(state, metrics, epoch=epoch, step=step, run_storage=run_storage)
        # Logged once the checkpoint is safe: a restart never resumes from before a logged
        # step, so the run's metric history never goes back.
        log(metrics, step)
    summary.update(step=step, skipped_total=skipped_total, epochs=loop.epochs, first_step_at=first_step_at)
    return summary
