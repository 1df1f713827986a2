r"""What a study will cost, before it runs: ``python sweeps/compression.py --profile paper --plan``.

The plan builds every network of the study on PyTorch's ``meta`` device (shapes, no
storage: a 860 M-parameter transformer costs nothing to build) and runs one training step
of each through :class:`torch.utils.flop_counter.FlopCounterMode`, so its figures come
from the code that trains, not from a formula that could drift from it:

- **parameters** of each network;
- **FLOPs per training step** (forward + backward, at the configured batch per worker):
  the matrix products, convolutions and attention the counter knows (elementwise work is
  not counted, as usual for model FLOPs). Gradient checkpointing's recomputation is
  counted (it is executed);
- **activation memory**: bytes of the tensors autograd saves for the backward pass (weights
  excluded, each tensor once). On the meta device attention runs in its *math* form and
  saves its :math:`N \times N` scores, so that share is printed apart: flash and
  memory-efficient attention on a GPU keep only :math:`O(N)` of it;
- per stage, the **steps**, the **resources** it asks Ray for, and its total FLOPs:
  training :math:`S \cdot W \cdot F_\text{step}` plus a validation forward pass per epoch;
  encoding the states of each split; evaluation rollouts of ``trajectories × contexts ×
  members`` with ``sampler_steps`` denoiser calls per window, decoding included;
- **device-hours** :math:`= \sum F / (P \cdot u)` for a peak :math:`P` at an efficiency
  (utilisation) :math:`u`, and the **predicted wall time** of the whole study on one such
  device (:func:`predicted_wall_seconds`). By default :math:`P` is this machine's GEMM peak,
  measured once and cached (fp32 on a CPU, bf16 on a GPU:
  :func:`~lolaray.trainers.hardware.cached_gemm_peak`), at :data:`DEFAULT_EFFICIENCY`;
  ``--plan-peak-tflops 312`` gives an A100's dense bf16 (at 40 %, :data:`DEFAULT_UTILISATION`).

Nothing is run: no Ray, no data read (The Well's geometry comes from
:data:`WELL_GEOMETRY` when the data is not at hand). A misconfigured profile — attention
heads that do not divide the width, a patch size that does not divide the grid — fails
here, with the stage's own validation, before any worker starts. (A grid the autoencoder's
factor does not divide is padded, not refused: ``trainers/autoencoder.py``.)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lolaray.evaluation.rollout import rollout_steps
from lolaray.platform.data import DatasetInfo, locate_dataset, read_dataset_info
from lolaray.platform.dataset_spec_options import spec_from_args
from lolaray.platform.embedded import EMBEDDED_PRESETS
from lolaray.platform.session import TRAIN_DRIVER_RESOURCE
from lolaray.sweeps.chain import Profile
from lolaray.sweeps.graph import latent_chain, pixel_chain
from lolaray.sweeps.step_costs import NetworkCost, autoencoder_cost, emulator_cost
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, latent_geometry
from lolaray.trainers.hardware import cached_gemm_peak, gemm_peak_cache_path

__all__ = [
    "DEFAULT_EFFICIENCY",
    "DEFAULT_PEAK_TFLOPS",
    "DEFAULT_UTILISATION",
    "WELL_GEOMETRY",
    "StagePlan",
    "StudyPlan",
    "add_plan_arguments",
    "format_duration",
    "format_plan",
    "machine_gemm_peak",
    "plan_context_sweep",
    "plan_dataset",
    "plan_estimate",
    "plan_study",
    "predicted_wall_seconds",
    "print_plan",
    "sweep_prediction",
]

#: Dense bf16 peak of an A100 (the paper's GPUs), TFLOP/s.
DEFAULT_PEAK_TFLOPS = 312.0
#: Model-FLOPs utilisation assumed for the estimate at a given peak (``--plan-peak-tflops``).
DEFAULT_UTILISATION = 0.4
#: The fraction of this machine's measured GEMM peak the study's networks are assumed to
#: reach when ``--plan`` measures the peak. Measured on a 2-core Xeon (AVX-512, no AMX),
#: fp32: the demo's training steps on one thread reach 21–34 % of the one-thread GEMM peak
#: of 155 GFLOP/s (autoencoder ``small_r8``, batch 8 on 32²: 35 GFLOP/s; latent diffusion,
#: ``demo`` preset: 33; pixel solver, patch 8: 53). The demo study as a whole ran at
#: 25.7 GFLOP/s of the 2-thread peak of 310 (0.083: Ray, data, evaluation's uncounted work
#: and idle cores included), so the wall time predicted at 0.22 is the networks' work, about
#: 2.7 times shorter than that study took.
DEFAULT_EFFICIENCY = 0.22

_EULER = {
    "field_names": ("energy", "density", "pressure", "momentum_x", "momentum_y"),
    "vector_axis": (None, None, None, 0, 1),
    "spatial_dims": ("x", "y"),
    "parameter_names": ("gamma",),
}
#: The geometry of the paper's datasets of The Well (method.md §1), for plans made
#: without the data at hand: fields, grid, parameters, trajectory length.
WELL_GEOMETRY: dict[str, dict] = {
    "euler_multi_quadrants_openBC": {**_EULER, "resolution": (512, 512), "n_steps": 101},
    "euler_multi_quadrants_periodicBC": {**_EULER, "resolution": (512, 512), "n_steps": 101},
    "rayleigh_benard": {
        "field_names": ("buoyancy", "pressure", "velocity_x", "velocity_y"),
        "vector_axis": (None, None, 0, 1),
        "spatial_dims": ("x", "y"),
        "parameter_names": ("Rayleigh", "Prandtl"),
        "resolution": (512, 128),
        "n_steps": 200,
    },
    "turbulence_gravity_cooling": {
        "field_names": ("density", "pressure", "temperature", "velocity_x", "velocity_y", "velocity_z"),
        "vector_axis": (None, None, None, 0, 1, 2),
        "spatial_dims": ("x", "y", "z"),
        "parameter_names": ("rho0", "Z", "T0"),
        "resolution": (64, 64, 64),
        "n_steps": 50,
    },
}


# --------------------------------------------------------------------------------------------
# The study's stages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    """One stage execution of the study.

    :param name: ``c64/autoencoder``, ``c64/latents/train``, ``pixel/evaluation/solver``...
    :param kind: ``train``, ``encode`` or ``evaluate``.
    :param network: the network's name (a key of :attr:`StudyPlan.networks`).
    :param steps: training: optimizer steps; encoding: states; evaluation: network calls.
    :param batch: training: the global batch (per worker × workers); else the call's batch.
    :param resources: what the stage asks Ray for, in words.
    :param flops: total FLOPs, or ``None`` where a figure is unknown (trajectory counts of
        data not at hand).
    """

    name: str
    kind: str
    network: str
    steps: int | None
    batch: int
    resources: str
    flops: float | None
    devices: int = 1


@dataclass
class StudyPlan:
    """The stage graph, the networks and the estimate (:func:`format_plan` prints it)."""

    title: str
    dataset: str
    geometry: str
    networks: dict[str, NetworkCost] = field(default_factory=dict)
    stages: list[StagePlan] = field(default_factory=list)
    peak_tflops: float = DEFAULT_PEAK_TFLOPS
    utilisation: float = DEFAULT_UTILISATION
    notes: list[str] = field(default_factory=list)
    trial: str = "chain"
    #: Where the peak and the efficiency come from, in words (:func:`plan_estimate`).
    estimate_basis: str = ""

    def device_hours(self, stage: StagePlan) -> float | None:
        """Device-hours of a stage at the plan's peak and utilisation."""
        if stage.flops is None:
            return None
        return stage.flops / (self.peak_tflops * 1e12 * self.utilisation) / 3600

    @property
    def total_device_hours(self) -> float:
        return sum(h for h in map(self.device_hours, self.stages) if h is not None)


def predicted_wall_seconds(plan: StudyPlan, peak_tflops: float, efficiency: float) -> float:
    r"""The study's wall time on one device of peak ``peak_tflops`` (TFLOP/s) reaching the
    fraction ``efficiency`` of it, every stage one after another: :math:`\sum F / (P \cdot e)`
    seconds (stages of unknown FLOPs left out).

    :raises ValueError: a peak that is not positive or an efficiency outside ``(0, 1]``.
    """
    if peak_tflops <= 0 or not 0 < efficiency <= 1:
        raise ValueError(
            f"the peak must be > 0 and the efficiency in (0, 1], got {peak_tflops}, {efficiency}"
        )
    total = sum(stage.flops for stage in plan.stages if stage.flops is not None)
    return total / (peak_tflops * 1e12 * efficiency)


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"6 min 5 s"``, ``"38 min"``, ``"5 h 20 min"``, ``"12.5 days"``."""
    if seconds < 59.5:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 599.5:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest} min"
    return f"{seconds / 86400:,.1f} days"


def machine_gemm_peak() -> tuple[float, str]:
    """This machine's GEMM peak in FLOP/s and its description: bf16 on the GPU where torch
    sees one, else fp32 on torch's CPU threads; measured once per machine, torch version,
    threads and dtype (about a second), then read from
    :func:`~lolaray.trainers.hardware.gemm_peak_cache_path`."""
    import torch

    if torch.cuda.is_available():
        dtype, device, where = torch.bfloat16, "cuda", torch.cuda.get_device_name()
    else:
        threads = torch.get_num_threads()
        dtype, device, where = torch.float32, "cpu", f"{threads} thread{'s' if threads != 1 else ''}"
    flops, how = cached_gemm_peak(dtype, device)
    dtype_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return (
        flops,
        f"{dtype_name} GEMM peak {_si(flops, 'FLOP/s')} on {where}, {how} (cache: {gemm_peak_cache_path()})",
    )


def plan_estimate(
    peak_tflops: float | None = None,
    utilisation: float | None = None,
    *,
    measure: Callable[[], tuple[float, str]] | None = None,
) -> tuple[float, float, str]:
    """The peak (TFLOP/s) and efficiency of the plan's estimate, and where they come from.

    No peak given: this machine's (``measure``, default :func:`machine_gemm_peak`) at
    ``utilisation`` or :data:`DEFAULT_EFFICIENCY`. A peak given: that peak at ``utilisation``
    or :data:`DEFAULT_UTILISATION` (``--plan-peak-tflops 312``: an A100 at 40 %, as before).
    A measurement that fails falls back to :data:`DEFAULT_PEAK_TFLOPS` and says why.

    :returns: ``(peak_tflops, efficiency, basis in words)``.
    :raises ValueError: a given peak that is not positive or a utilisation outside ``(0, 1]``.
    """
    if (peak_tflops is not None and peak_tflops <= 0) or (
        utilisation is not None and not 0 < utilisation <= 1
    ):
        raise ValueError(f"utilisation must be in (0, 1] and the peak > 0, got {utilisation}, {peak_tflops}")
    if peak_tflops is not None:
        efficiency = DEFAULT_UTILISATION if utilisation is None else utilisation
        how = "assumed" if utilisation is None else "given"
        return (
            peak_tflops,
            efficiency,
            f"peak {_si(peak_tflops * 1e12, 'FLOP/s')} given; efficiency {efficiency:g} {how}",
        )
    efficiency = DEFAULT_EFFICIENCY if utilisation is None else utilisation
    how = "assumed (the demo networks' training steps on a CPU)" if utilisation is None else "given"
    try:
        flops, described = (measure or machine_gemm_peak)()
    except Exception as error:  # noqa: BLE001 -- a probe that cannot run must not cost the plan
        efficiency = DEFAULT_UTILISATION if utilisation is None else utilisation
        return (
            DEFAULT_PEAK_TFLOPS,
            efficiency,
            (
                f"this machine's GEMM peak could not be measured ({type(error).__name__}: {error}); "
                f"an A100's {DEFAULT_PEAK_TFLOPS:g} TFLOP/s assumed, efficiency {efficiency:g}"
            ),
        )
    return flops / 1e12, efficiency, f"this machine: {described}; efficiency {efficiency:g} {how}"


def plan_dataset(dataset: str, *, data_root: str | None = None) -> tuple[DatasetInfo, dict[str, int] | None]:
    """The geometry of ``dataset`` without generating or reading any field data.

    :returns: ``(info, trajectories per split or None when unknown)``. Embedded datasets
        come from their preset, a local folder from its file headers, The Well's datasets
        from :data:`WELL_GEOMETRY` (trajectory counts unknown) unless found under ``data_root``.
    :raises ValueError: an unknown dataset name.
    """
    name = str(dataset).partition(":")[0]
    if name in WELL_GEOMETRY and data_root is None:
        geometry = WELL_GEOMETRY[name]
        info = DatasetInfo(name=name, root="(The Well, not read)", splits={}, **geometry)
        return info, None
    kind, value = locate_dataset(dataset, data_root=data_root)
    if kind == "embedded":
        embedded, preset_name = value
        preset = EMBEDDED_PRESETS[preset_name]
        info = DatasetInfo(
            name=embedded,
            root=f"(embedded preset {preset_name!r}, not generated)",
            resolution=(preset.resolution, preset.resolution),
            n_steps=preset.n_snapshots,
            splits={},
            **_EULER,
        )
        files = len(preset.gammas) * len(preset.boundaries)
        return info, {split: files * count for split, count in preset.trajectories}
    info = read_dataset_info(value if "://" in str(value) else Path(value))
    return info, {split: sum(layout.n_trajectories) for split, layout in info.splits.items()}


def _known(info: DatasetInfo) -> str:
    """The known channels given beside each state, for the plan's geometry line."""
    if not info.n_known:
        return ""
    return f" (+ known {', '.join(info.known_names)}, given, not predicted)"


def _train_resources(workers: int, gpu: bool) -> str:
    worker = "{CPU: 1, GPU: 1}" if gpu else "{CPU: 1}"
    return f"{workers} worker(s) x {worker}" if workers else "in this process"


def _actor_resources(actors: int, gpu: bool) -> str:
    return f"{actors} actor(s) x {'{GPU: 1}' if gpu else '{CPU: 0.5}'}"


def _train_flops(cost: NetworkCost, loop, workers: int, valid: int) -> float:
    per_step = cost.train.flops * max(1, workers)
    validation = loop.epochs * valid * cost.forward.flops
    return float(per_step * loop.total_steps + validation)


def _evaluation_stage(
    name: str,
    cost: NetworkCost,
    ae: NetworkCost | None,
    *,
    contexts: Sequence[int],
    window: int,
    states: int,
    rollouts: int,
    members: int,
    calls: int,
    resources: str,
    actors: int,
    guidance: dict | None = None,
) -> StagePlan:
    r"""An evaluation: ``rollouts`` test trajectories of ``states`` states, once per context
    (context = overlap), ``members`` members and ``calls`` network calls (sampler steps) per
    generated window; latent emulators decode every member's states and encode + decode the
    truth once (the relative metrics).

    A guided call (MMPS through the decoder, :class:`~lolaray.trainers.guidance.MMPSDenoiser`)
    runs the denoiser :math:`D` with its graph, the observation :math:`A` (the decoder of the
    window's states) twice and a backward of :math:`A` kept for a double backward; each of
    the ``iterations`` Krylov steps applies a vector-Jacobian product through both and a
    Jacobian-vector product as a double backward of :math:`A`; one last vector-Jacobian
    product makes the correction. With a backward at twice a forward:
    :math:`(3 + 2i)\,D + (6 + 6i)\,A` forward costs for :math:`i` iterations."""
    windows = sum(rollout_steps(window=window, context=c, overlap=c, length=states) for c in contexts)
    per_call = cost.forward.flops
    if guidance is not None and ae is not None:
        iterations = int(guidance.get("iterations", 1))
        per_call = (3 + 2 * iterations) * cost.forward.flops + (6 + 6 * iterations) * window * ae.decode.flops
    flops = rollouts * windows * calls * members * per_call
    if ae is not None:
        flops += rollouts * len(contexts) * states * members * ae.decode.flops
        flops += rollouts * states * (ae.encode.flops + ae.decode.flops)
    return StagePlan(
        name=name,
        kind="evaluate",
        network=cost.name,
        steps=rollouts * windows * calls,
        batch=members,
        resources=resources,
        flops=float(flops),
        devices=actors,
    )


def plan_context_sweep(
    profile: Profile,
    info: DatasetInfo,
    latent_channels: Sequence[int],
    *,
    contexts: Sequence[int],
    steps: Sequence[int],
    trajectories: dict[str, int] | None = None,
    pixel: bool = True,
    gpu: bool = True,
    peak_tflops: float = DEFAULT_PEAK_TFLOPS,
    utilisation: float = DEFAULT_UTILISATION,
    title: str = "context sweep",
) -> StudyPlan:
    """The context sweep's plan (``sweeps/context.py``): one evaluation per (emulator, context,
    sampler steps) of the emulators a compression sweep of ``profile`` trains — nothing is
    trained. Without a store at hand, the emulators are the profile's, one per rate and kind
    (and the pixel solver); solvers do not depend on sampler steps.

    :raises ValueError: a context outside ``[1, window − 1]``, or a stage config its stage would reject.
    """
    emulator = dataclasses.replace(profile.emulator, space="latent")
    if not all(1 <= c < emulator.window for c in contexts) or min(steps) < 1:
        raise ValueError(
            f"contexts must lie in [1, {emulator.window - 1}] and steps be >= 1: {contexts}, {steps}"
        )
    plan = StudyPlan(
        title=title,
        dataset=info.name,
        geometry=f"{' x '.join(map(str, info.state_shape))} per state{_known(info)}, {info.n_steps} steps",
        peak_tflops=peak_tflops,
        utilisation=utilisation,
        trial="evaluation",
    )
    test = trajectories.get("test") if trajectories else None
    rollouts = profile.trajectories if test is None else min(profile.trajectories, test)
    states = (info.n_steps - 1) // emulator.stride + 1
    common = {
        "window": emulator.window,
        "states": states,
        "rollouts": rollouts,
        "resources": _actor_resources(profile.actors, gpu),
        "actors": profile.actors,
    }
    for channels in latent_channels:
        ae_config = dataclasses.replace(profile.autoencoder, latent_channels=int(channels))
        ae_config.validate(info)
        latent, rate = latent_geometry(ae_config, info)
        ae = autoencoder_cost(ae_config, info, name=f"autoencoder c{channels} (/{rate:g})")
        plan.networks[ae.name] = ae
        for kind in ("diffusion", "solver"):
            config = dataclasses.replace(emulator, kind=kind)
            config.validate(latent, info.n_steps)
            cost = emulator_cost(config, latent, info.theta_dim, name=f"{kind} c{channels}")
            plan.networks[cost.name] = cost
            for context in contexts:
                for k in steps if kind == "diffusion" else (1,):
                    members = profile.members if kind == "diffusion" else 1
                    label = f"c{channels}/{kind}/context {context}" + (
                        f"/{k} steps" if kind == "diffusion" else ""
                    )
                    plan.stages.append(
                        _evaluation_stage(
                            label, cost, ae, contexts=(context,), members=members, calls=k, **common
                        )
                    )
    if pixel:
        config = dataclasses.replace(profile.pixel_emulator, kind="solver", space="pixel")
        config.validate(info.conditioned_state_shape, info.n_steps)
        cost = emulator_cost(config, info.conditioned_state_shape, info.theta_dim, name="pixel solver")
        plan.networks[cost.name] = cost
        for context in contexts:
            plan.stages.append(
                _evaluation_stage(
                    f"pixel/solver/context {context}",
                    cost,
                    None,
                    contexts=(context,),
                    members=1,
                    calls=1,
                    **common,
                )
            )
    return plan


def plan_study(
    profile: Profile,
    info: DatasetInfo,
    latent_channels: Sequence[int],
    *,
    trajectories: dict[str, int] | None = None,
    pixel: bool = True,
    guidance: dict | None = None,
    gpu: bool = True,
    peak_tflops: float = DEFAULT_PEAK_TFLOPS,
    utilisation: float = DEFAULT_UTILISATION,
    title: str = "compression sweep",
) -> StudyPlan:
    """The compression study's plan: the stages of its graph (:mod:`lolaray.sweeps.graph`,
    what the chains run) with their cost -- per rate, autoencoder → latent caches →
    diffusion and solver → their evaluations (and the guided one with ``guidance``); and
    the pixel solver with its evaluation.

    Every stage config is validated first, as the stages do before their workers start.

    :param trajectories: per split, the trajectory count (``None``: unknown; encoding is left
        out of the estimate and evaluation uses the profile's trajectory count).
    :param guidance: the study's guidance setting (a guided call costs passes of the
        denoiser and of the decoder: :func:`_evaluation_stage`).
    :param gpu: print the resources of a GPU cluster (one GPU per worker and actor).
    :raises ValueError: a stage config that its stage would reject.
    """
    if not 0 < utilisation <= 1 or peak_tflops <= 0:
        raise ValueError(f"utilisation must be in (0, 1] and the peak > 0, got {utilisation}, {peak_tflops}")
    plan = StudyPlan(
        title=title,
        dataset=info.name,
        geometry=f"{' x '.join(map(str, info.state_shape))} per state{_known(info)}, {info.n_steps} steps, "
        f"theta of {info.theta_dim}",
        peak_tflops=peak_tflops,
        utilisation=utilisation,
    )
    workers = profile.workers
    test = trajectories.get("test") if trajectories else None
    if trajectories is None:
        plan.notes.append("trajectory counts unknown (data not read): latent encoding is not in the total")
    chains = [latent_chain(profile, int(c), guidance=guidance) for c in latent_channels]
    for graph in [*chains, *([pixel_chain(profile)] if pixel else [])]:
        costs: dict[str, NetworkCost] = {}  # stage name -> the network it trains
        latent = rate = None
        for node in graph.nodes:
            name = f"{graph.label}/{node.plan_name}"
            config = node.config
            if node.kind == "train" and isinstance(config, AutoencoderConfig):
                config.validate(info)
                latent, rate = latent_geometry(config, info)
                cost = autoencoder_cost(config, info, name=f"autoencoder c{graph.channels} (/{rate:g})")
                valid = config.valid_states
            elif node.kind == "train":
                shape = latent if config.space == "latent" else info.conditioned_state_shape
                config.validate(shape, info.n_steps)
                label = "pixel solver" if config.space == "pixel" else f"{config.kind} c{graph.channels}"
                cost = emulator_cost(config, shape, info.theta_dim, name=label)
                valid = config.valid_windows
            if node.kind == "train":
                costs[node.name] = plan.networks[cost.name] = cost
                plan.stages.append(
                    StagePlan(
                        name=name,
                        kind="train",
                        network=cost.name,
                        steps=config.loop.total_steps,
                        batch=config.batch_size * max(1, workers),
                        resources=_train_resources(workers, gpu),
                        flops=_train_flops(cost, config.loop, workers, valid),
                        devices=max(1, workers),
                    )
                )
            elif node.kind == "encode":
                ae = costs["autoencoder"]
                count = (
                    None
                    if trajectories is None
                    else trajectories.get(config.split, 0) * config.repeat * info.n_steps
                )
                plan.stages.append(
                    StagePlan(
                        name=name,
                        kind="encode",
                        network=ae.name,
                        steps=count,
                        batch=info.n_steps,
                        resources=_actor_resources(profile.actors, gpu),
                        flops=None if count is None else float(count * ae.encode.flops),
                        devices=profile.actors,
                    )
                )
            else:
                emulator = graph.node(node.upstream[0]).config
                plan.stages.append(
                    _evaluation_stage(
                        name,
                        costs[node.upstream[0]],
                        costs.get("autoencoder"),
                        contexts=config.contexts,
                        window=emulator.window,
                        states=(info.n_steps - 1) // emulator.stride + 1,  # a test trajectory at stride Δ
                        rollouts=config.trajectories if test is None else min(config.trajectories, test),
                        members=config.members,
                        calls=config.steps,
                        resources=_actor_resources(profile.actors, gpu),
                        actors=profile.actors,
                        guidance=config.guidance,
                    )
                )
    return plan


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    for scale, prefix in (
        (1e21, "Z"),
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f}"


def format_plan(plan: StudyPlan) -> str:
    """The plan as text: stage graph, networks, stages with resources and device-hours."""
    chains: dict[str, list[str]] = {}
    trains: set[str] = set()
    for stage in plan.stages:
        chain, _, rest = stage.name.partition("/")
        chains.setdefault(chain, []).append(rest)
        if stage.kind != "evaluate":
            trains.add(chain)
    lines = [
        f"Plan: {plan.title} on {plan.dataset} ({plan.geometry})",
        "",
        (
            f"Stage graph (one Ray Tune trial per {plan.trial}; each trial driver holds "
            f"{{CPU: 0, {TRAIN_DRIVER_RESOURCE}: 1}}):"
        ),
    ]
    for chain, names in chains.items():
        # A chain with training runs its stages in order; evaluations alone are independent trials.
        lines.append(f"  {chain}: " + (" -> " if chain in trains else ", ").join(names))
    lines += [
        "",
        "Networks (built on the meta device; FLOPs and saved activations of one training step per worker):",
        (
            f"  {'network':<30} {'parameters':>12} {'batch':>6} {'train FLOP/step':>16} {'fwd FLOP/sample':>16} "
            f"{'activations GiB':>16} {'of which attn':>14}"
        ),
    ]
    for cost in plan.networks.values():
        lines.append(
            f"  {cost.name:<30} {cost.parameters:>12,} {cost.train.batch:>6} {_si(cost.train.flops, 'FLOP'):>16} "
            f"{_si(cost.forward.flops, 'FLOP'):>16} {_gib(cost.train.activation_bytes):>16} "
            f"{_gib(cost.train.attention_bytes):>14}"
        )
    lines += [
        "",
        f"Stages (device-hours at {_si(plan.peak_tflops * 1e12, 'FLOP/s')} x {plan.utilisation:.0%} utilisation):",
        (
            f"  {'stage':<34} {'kind':<9} {'steps':>10} {'batch':>6} {'resources':<28} {'FLOPs':>12} {'device-h':>9} "
            f"{'wall-h':>7}"
        ),
    ]
    for stage in plan.stages:
        hours = plan.device_hours(stage)
        lines.append(
            f"  {stage.name:<34} {stage.kind:<9} {'n/a' if stage.steps is None else f'{stage.steps:,}':>10} "
            f"{stage.batch:>6} {stage.resources:<28} {_si(stage.flops):>12} "
            f"{'n/a' if hours is None else f'{hours:.3g}':>9} "
            f"{'n/a' if hours is None else f'{hours / stage.devices:.3g}':>7}"
        )
    peak = _si(plan.peak_tflops * 1e12, "FLOP/s")
    lines += [
        "",
        (
            f"Total: {_si(sum(s.flops or 0 for s in plan.stages), 'FLOP')}, "
            f"{plan.total_device_hours:,.4g} device-hours "
            f"({plan.total_device_hours / 24:,.3g} device-days) at {peak} and "
            f"{plan.utilisation:.0%} utilisation."
        ),
        (
            f"Predicted wall time: {format_duration(predicted_wall_seconds(plan, plan.peak_tflops, plan.utilisation))}"
            f" (every stage one after another on one device, at "
            f"{_si(plan.peak_tflops * 1e12 * plan.utilisation, 'FLOP/s')}: {peak} peak x {plan.utilisation:g})."
        ),
        *([f"  Peak and efficiency: {plan.estimate_basis}."] if plan.estimate_basis else []),
        (
            "  FLOPs: matrix products, convolutions and attention (elementwise work not counted); training"
            " = steps x workers x step + a validation pass per epoch."
        ),
        (
            "  Activations: tensors saved for backward at the batch per worker; attention counted in its math"
            " form (flash attention on a GPU keeps O(N) of it)."
        ),
        "  wall-h: device-hours / the stage's workers or actors; trials run side by side as the cluster allows.",
    ]
    lines += [f"  Note: {note}." for note in plan.notes]
    return "\n".join(lines)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """``--plan`` and the assumptions of its estimate."""
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the study's stage graph, network sizes, FLOPs, memory, resources and device-hours; run nothing",
    )
    parser.add_argument(
        "--plan-peak-tflops",
        "--peak-tflops",
        dest="plan_peak_tflops",
        type=float,
        default=None,
        help=(
            "device peak for --plan, TFLOP/s (default: this machine's GEMM peak, measured once and "
            f"cached; {DEFAULT_PEAK_TFLOPS:g}: an A100's dense bf16)"
        ),
    )
    parser.add_argument(
        "--plan-utilisation",
        "--utilisation",
        dest="plan_utilisation",
        type=float,
        default=None,
        help=(
            f"fraction of the peak the networks reach, for --plan (default {DEFAULT_EFFICIENCY:g} of this "
            f"machine's measured peak, {DEFAULT_UTILISATION:g} of a given --plan-peak-tflops)"
        ),
    )
    parser.add_argument(
        "--plan-device",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="--plan: the resources of a GPU or a CPU cluster (auto: GPU for the paper profile)",
    )


def print_plan(
    args: argparse.Namespace,
    profile: Profile,
    latent_channels: Sequence[int],
    *,
    profile_name: str,
    pixel: bool = True,
    contexts: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    guidance: dict | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """``--plan`` of a sweep's command line: validate, count, print; returns the exit status
    (0, or 2 for a configuration a stage would reject -- before any worker starts).

    :param contexts, steps: given, the context sweep's plan (:func:`plan_context_sweep`);
        else the compression study's (:func:`plan_study`, with its guided evaluations when
        ``guidance`` is given).
    """
    gpu = args.plan_device == "gpu" or (args.plan_device == "auto" and profile_name == "paper")
    try:
        info, trajectories = plan_dataset(args.dataset or profile.dataset, data_root=args.data_root)
        peak, efficiency, basis = plan_estimate(args.plan_peak_tflops, args.plan_utilisation)
        assumptions = {"gpu": gpu, "peak_tflops": peak, "utilisation": efficiency}
        profile = profile.for_dataset(spec_from_args(args, info))  # the stride and window it would train
        if contexts is None:
            plan = plan_study(
                profile,
                info,
                latent_channels,
                trajectories=trajectories,
                pixel=pixel,
                guidance=guidance,
                title=f"compression sweep, profile {profile_name}",
                **assumptions,
            )
        else:
            plan = plan_context_sweep(
                profile,
                info,
                latent_channels,
                contexts=contexts,
                steps=steps or [profile.sampler_steps],
                trajectories=trajectories,
                pixel=pixel,
                title=f"context sweep, profile {profile_name} (the emulators its compression sweep trains)",
                **assumptions,
            )
    except (ValueError, FileNotFoundError) as error:
        out(f"plan: error: the {profile_name} profile would fail: {error}")
        return 2
    plan.estimate_basis = basis
    out(format_plan(plan))
    return 0


def sweep_prediction(
    profile: Profile,
    info: DatasetInfo,
    latent_channels: Sequence[int],
    *,
    pixel: bool = True,
    guidance: dict | None = None,
    seeds: int = 1,
    elapsed_s: float | None = None,
    peak_tflops: float | None = None,
    utilisation: float | None = None,
) -> str:
    """For the end of a sweep: the wall time the plan predicts for the study just run (its
    :func:`plan_study` on the opened dataset, times ``seeds`` replicates, at
    :func:`plan_estimate`'s peak and efficiency) and, given ``elapsed_s``, the rate the
    study's counted FLOPs actually ran at. Never raises: an estimate that cannot be made
    says why.

    :param profile: the profile fitted to the dataset (``Profile.for_dataset``), as the sweep ran it.
    """
    try:
        trajectories = {split: sum(layout.n_trajectories) for split, layout in info.splits.items()} or None
        peak, efficiency, _ = plan_estimate(peak_tflops, utilisation)
        plan = plan_study(
            profile,
            info,
            latent_channels,
            trajectories=trajectories,
            pixel=pixel,
            guidance=guidance,
            peak_tflops=peak,
            utilisation=efficiency,
        )
        replicates = max(1, int(seeds))
        seconds = predicted_wall_seconds(plan, peak, efficiency) * replicates
        flops = replicates * sum(stage.flops for stage in plan.stages if stage.flops is not None)
    except Exception as error:  # noqa: BLE001 -- the sweep is done; its estimate must not fail it
        return f"no estimate from the plan: {type(error).__name__}: {error}"
    text = (
        f"the plan predicted {format_duration(seconds)}"
        + (f" for {replicates} seeds" if replicates > 1 else "")
        + f" at {_si(peak * 1e12 * efficiency, 'FLOP/s')}: {_si(peak * 1e12, 'FLOP/s')} peak x {efficiency:g}"
    )
    if elapsed_s:
        rate = flops / elapsed_s
        text += (
            f"; its {_si(flops, 'FLOP')} ran at {_si(rate, 'FLOP/s')}, {rate / (peak * 1e12):.2g} of the peak"
        )
    return text
