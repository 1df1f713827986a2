"""The study's chains -- the stages of one compression rate, and the pixel baseline -- run
from their stage graph, and the profiles that size them.

The graph (:mod:`lolaray.sweeps.graph`) declares each chain's stages, configs and upstream
once; for a latent channel count ``C``::

    autoencoder ──► latent caches (train ×repeat, valid, test)
                        ├─► diffusion ──► evaluation (contexts 1..3) [, guided evaluation]
                        └─► neural solver ──► evaluation

and once per sweep the pixel-space solver and its evaluation (:func:`run_pixel_chain`).
Every stage is content-addressed (its artifact id hashes its config and upstream ids) and
returns a complete artifact without recomputing when one exists, so a chain that was
interrupted resumes where it stopped, and two sweeps that share an autoencoder train it
once. :class:`ChainResult` records which stages ran and which were reused.

This module is the building block of the Ray Tune sweep (``sweeps/compression.py``,
issue 7); it runs the stages in the calling process, each launching its own Ray Train /
Ray Data work (or, on one machine, training and rolling out in this process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lolaray.evaluation.evaluate import evaluate
from lolaray.platform.artifacts import Artifact
from lolaray.platform.data import DatasetInfo
from lolaray.platform.dataset_specs import DatasetSpec, DatasetSpecError
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.sweeps.graph import ChainGraph, StageNode, latent_chain, pixel_chain
from lolaray.trainers.autoencoder import AUTOENCODER_PRESETS, preset_for_dims
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.emulator_trainer import train_diffusion, train_pixel_solver, train_solver
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.encoding import cache_latents_splits
from lolaray.trainers.loop import LoopConfig

__all__ = ["PROFILES", "ChainResult", "InjectedFailure", "Profile", "run_latent_chain", "run_pixel_chain"]


@dataclass(frozen=True)
class Profile:
    """Sizes of everything in a study.

    :param dataset: the default dataset (an embedded name with preset, or a name of The Well).
    :param latent_channels: the compression rates to sweep, as latent channel counts.
    :param autoencoder, emulator, pixel_emulator: stage configs (``latent_channels`` of the
        autoencoder is replaced per rate).
    :param contexts, members, trajectories, sampler_steps: the evaluation.
    :param repeat: augmented copies per train trajectory in the latent cache.
    :param augment: the augmentations of the autoencoder's states, the latent cache's copies
        and the pixel solver's windows (the dataset spec's, set by :meth:`for_dataset`).
    :param workers: Ray Train workers per training stage; ``actors``: encoder / rollout actors.
    :param compression_rates: given, the study derives its latent channel counts from these
        rates on its dataset instead of taking ``latent_channels``
        (:func:`~lolaray.sweeps.compression_rates.latent_channels_for_rates`); ``"spec"``: the
        dataset spec's rates (the paper's). ``--latent-channels`` and ``--compression-rates``
        override it.
    """

    dataset: str
    latent_channels: tuple[int, ...]
    autoencoder: AutoencoderConfig
    emulator: EmulatorConfig
    pixel_emulator: EmulatorConfig
    contexts: tuple[int, ...] = (1, 2, 3)
    members: int = 16
    trajectories: int = 64
    sampler_steps: int = 16
    repeat: int = 4
    augment: bool | tuple[str, ...] = True
    workers: int = 1
    actors: int = 1
    #: Draw the scored test trajectories stratified with this seed (``None``: the first N).
    trajectory_seed: int | None = None
    compression_rates: tuple[float, ...] | str | None = None

    def for_dataset(self, spec: DatasetSpec) -> Profile:
        """This profile with the dataset's window, stride and log parameters in both
        emulators, its augmentations in every stage that trains on augmented data, only the
        context lengths such a window holds (at least one state to
        predict), and on a 3-D dataset the 3-D counterpart of a 2-D autoencoder preset
        (``paper`` → ``paper_3d``, the reference's TGC autoencoder)."""
        contexts = tuple(c for c in self.contexts if c <= spec.window - 1)
        if not contexts:
            raise DatasetSpecError(
                f"a window of {spec.window} states holds none of the context lengths {list(self.contexts)}: "
                f"pass --window {max(self.contexts) + 1} or --contexts 1"
            )
        autoencoder = self.autoencoder
        preset = preset_for_dims(autoencoder.preset, spec.spatial_dims)
        if preset is None:
            declared = AUTOENCODER_PRESETS[autoencoder.preset]["spatial_dims"]
            raise DatasetSpecError(
                f"the {autoencoder.preset!r} autoencoder is {declared}-D and {spec.name} is "
                f"{spec.spatial_dims}-D, with no counterpart preset"
            )
        autoencoder = dataclasses.replace(autoencoder, preset=preset)
        return dataclasses.replace(
            self,
            autoencoder=dataclasses.replace(autoencoder, augment=spec.augment),
            emulator=dataclasses.replace(
                self.emulator, window=spec.window, stride=spec.stride, log_parameters=spec.log_parameters
            ),
            pixel_emulator=dataclasses.replace(
                self.pixel_emulator,
                window=spec.window,
                stride=spec.stride,
                log_parameters=spec.log_parameters,
                augment=spec.augment,
            ),
            contexts=contexts,
            augment=spec.augment,
            # Without augmentations the cache's copies of a trajectory would all be the same.
            repeat=self.repeat if spec.augment is not False else 1,
        )

    def scoring(self, given: dict | None = None) -> dict:
        """The evaluations' scoring keywords: the profile's trajectory draw under ``given``
        (the command line's; its ``None`` values do not count)."""
        ours = {} if self.trajectory_seed is None else {"trajectory_seed": self.trajectory_seed}
        return {**ours, **{key: value for key, value in (given or {}).items() if value is not None}}

    def scaling(self) -> ScalingSpec:
        """What each stage of the profile's chain asks Ray for."""
        return ScalingSpec(workers=self.workers, actors=self.actors)


def _loop(optimizer: str, lr: float, epochs: int, steps: int, warmup: int = 0) -> LoopConfig:
    return LoopConfig(optimizer=optimizer, lr=lr, epochs=epochs, steps_per_epoch=steps, warmup_steps=warmup)


PROFILES: dict[str, Profile] = {
    # Minutes on 2 CPU cores: tests and CI. 32² states, r = 8 → 4×4 latents (÷80 and ÷20).
    "smoke": Profile(
        dataset="euler_quadrants:smoke",
        latent_channels=(4, 16),
        autoencoder=AutoencoderConfig(
            preset="demo", batch_size=8, valid_states=16, loop=_loop("adam", 1e-3, 2, 16)
        ),
        emulator=EmulatorConfig(
            preset="smoke", batch_size=8, valid_windows=16, loop=_loop("adamw", 1e-3, 2, 16)
        ),
        pixel_emulator=EmulatorConfig(
            preset="smoke",
            architecture={"patch_size": 4},
            batch_size=8,
            valid_windows=16,
            loop=_loop("adamw", 1e-3, 2, 16),
        ),
        members=4,
        trajectories=2,
        sampler_steps=8,
        repeat=2,
    ),
    # Under half an hour on 2 CPU cores, dataset included, in the paper's regime at 32²:
    # r = 8 → 4×4 latents with the paper's 64 / 16 / 4 channels, ÷5 / ÷20 / ÷80 (issue 28).
    # Fronts are lines, so a state's information grows with its side N, not N²: the paper's
    # ÷80/320/1280 on 512² keep 0.26-0.65 latent numbers per front cell at ÷1280, which a 32²
    # state reaches near ÷80, and its ÷320/÷1280 (16 and 4 numbers) lie below the 12 degrees of
    # freedom of this data's initial states (benchmarks/choose_rates.py: two-NN dimension 12.4;
    # PCA-k over 1:20 0.127 / 0.300 / 0.518 at these rates, a growth of ×4, the paper's ×5.5).
    # Adam at lr 1e-3 with 100 warm-up steps and the cosine decay beat a flat 3e-4 (issue 15:
    # 0.49 vs 0.56 at 1500 steps); PSGD cost 4.5× more per step on one CPU thread. No dropout:
    # with a few thousand steps the networks underfit, they do not overfit.
    "demo": Profile(
        dataset="euler_quadrants:demo",
        latent_channels=(64, 16, 4),
        compression_rates=(5, 20, 80),
        autoencoder=AutoencoderConfig(
            preset="small_r8",
            architecture={"dropout": 0.0},
            batch_size=8,
            valid_states=32,
            loss_eps=1.0,
            loop=_loop("adam", 1e-3, 8, 300, warmup=100),
        ),
        # Latent emulators: 2×2 patches of the 4×4 latents make 4 tokens per state, 20 per
        # window (patch 1: 80 tokens, 4× the FLOPs: 65 of the study's TFLOP instead of 16). The
        # pixel solver's 8×8 patches make 16 tokens per 32² state (4×4 patches made 64 and cost
        # 1.5 s per step of 16 among the other trials: 27 minutes for 1200 steps).
        emulator=EmulatorConfig(
            preset="demo",
            architecture={"dropout": 0.0, "patch_size": 2},
            batch_size=16,
            valid_windows=32,
            loop=_loop("adamw", 5e-4, 8, 200, warmup=100),
        ),
        pixel_emulator=EmulatorConfig(
            preset="demo",
            architecture={"patch_size": 8, "dropout": 0.0},
            batch_size=16,
            valid_windows=32,
            loop=_loop("adamw", 5e-4, 8, 200, warmup=100),
        ),
        # 10 test trajectories drawn stratified over the 10 (γ, boundary) files: every stratum once.
        members=8,
        trajectories=10,
        trajectory_seed=0,
        sampler_steps=16,
        repeat=1,
    ),
    # The paper's hyper-parameters (Tables 3 and 5) for a GPU cluster and The Well's Euler.
    "paper": Profile(
        dataset="euler_multi_quadrants_openBC",
        latent_channels=(64, 16, 4),
        autoencoder=AutoencoderConfig(
            preset="paper", batch_size=8, valid_states=4096, loop=_loop("psgd", 1e-5, 1024, 256)
        ),
        emulator=EmulatorConfig(
            preset="paper", batch_size=32, valid_windows=4096, loop=_loop("adamw", 1e-4, 4096, 64)
        ),
        pixel_emulator=EmulatorConfig(
            preset="paper_pixel", batch_size=16, valid_windows=4096, loop=_loop("adamw", 1e-4, 4096, 64)
        ),
        # The paper's 64 test trajectories drawn with seed 0 (its eval.py: random.seed(0)),
        # here stratified over the test files so every (parameters, boundary) file is scored.
        trajectories=64,
        trajectory_seed=0,
        workers=8,
        actors=8,
    ),
}


class InjectedFailure(RuntimeError):
    """Raised by ``fail_at``: a deliberate crash before a stage, to rehearse resuming."""


@dataclass
class ChainResult:
    """The artifacts of a chain and, per stage execution, whether it ran or was reused."""

    artifacts: dict[str, Artifact] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def _chain_scaling(profile: Profile, *, in_process: bool) -> ScalingSpec:
    """The profile's scaling; ``in_process`` trains in the calling process (``workers=0``)
    where the profile asks for one worker, and rolls out there where it asks for one actor
    (``local_rollouts``): what a study does on one machine, where starting a Ray Train worker
    group (11-17 s on 2 cores, measured) or a rollout actor (5-10 s) costs more than a
    smoke stage's work, and the worker would run on the same cores anyway."""
    scaling = profile.scaling()
    if in_process and scaling.workers == 1:
        scaling = dataclasses.replace(scaling, workers=0)
    if in_process and scaling.actors == 1:
        scaling = dataclasses.replace(scaling, local_rollouts=True)
    return scaling


def _scheduled(context: StageContext, threads: Mapping[str, int] | None, stage: str) -> StageContext:
    """``context`` with the study schedule's torch threads for ``stage`` (a stage name of the
    plan: ``"autoencoder"``, ``"evaluation/solver"``; unchanged without a schedule)."""
    if not threads or stage not in threads:
        return context
    return context.replace(scaling=dataclasses.replace(context.scaling, threads=threads[stage]))


def run_latent_chain(
    profile: Profile,
    dataset: DatasetInfo,
    latent_channels: int,
    context: StageContext,
    *,
    seed: int = 0,
    progress: Callable[[str], None] = print,
    fail_at: str | None = None,
    guidance: dict | None = None,
    scoring: dict | None = None,
    threads: Mapping[str, int] | None = None,
    in_process: bool = False,
) -> ChainResult:
    """The chain of one rate (:func:`~lolaray.sweeps.graph.latent_chain`): autoencoder →
    caches → diffusion and solver → their evaluations.

    :param context: the study's store, MLflow record and parent run; the profile sets its
        scaling (:meth:`Profile.scaling`).
    :param guidance: also evaluate the diffusion emulator guided by observations
        (stage ``evaluation/guided_diffusion``; keys of
        :func:`~lolaray.evaluation.guidance_options.guidance_config`).
    :param scoring: the evaluations' start states, trajectory selection seed and VRMSE
        convention (:func:`~lolaray.evaluation.scoring_options.scoring_from_args`).
    :param fail_at: a stage name (``"autoencoder"``, ``"latents/train"``, ``"diffusion"``,
        ``"evaluation/solver"``, ...) before which to raise :class:`InjectedFailure`.
    :param threads: stage name → torch threads of its workers and actors (the study's
        :class:`~lolaray.sweeps.schedule.Schedule`, keyed by the stages' plan names).
    :param in_process: train and roll out in this process, with no Ray Train worker group
        and no rollout actor (:func:`_chain_scaling`).
    """
    graph = latent_chain(profile, latent_channels, seed=seed, guidance=guidance)
    return _run_graph(
        graph,
        profile,
        dataset,
        context,
        progress=progress,
        fail_at=fail_at,
        scoring=scoring,
        threads=threads,
        in_process=in_process,
    )


def run_pixel_chain(
    profile: Profile,
    dataset: DatasetInfo,
    context: StageContext,
    *,
    seed: int = 0,
    progress: Callable[[str], None] = print,
    fail_at: str | None = None,
    scoring: dict | None = None,
    threads: Mapping[str, int] | None = None,
    in_process: bool = False,
) -> ChainResult:
    """The pixel-space solver and its evaluation (:func:`~lolaray.sweeps.graph.pixel_chain`,
    once per sweep); the keywords as in :func:`run_latent_chain` (stages ``"pixel_solver"``
    and ``"evaluation/pixel_solver"``, scheduled as the plan's ``"solver"`` and
    ``"evaluation/solver"``)."""
    graph = pixel_chain(profile, seed=seed)
    return _run_graph(
        graph,
        profile,
        dataset,
        context,
        progress=progress,
        fail_at=fail_at,
        scoring=scoring,
        threads=threads,
        in_process=in_process,
    )


def _run_graph(
    graph: ChainGraph,
    profile: Profile,
    dataset: DatasetInfo,
    context: StageContext,
    *,
    progress: Callable[[str], None],
    fail_at: str | None,
    scoring: dict | None,
    threads: Mapping[str, int] | None,
    in_process: bool,
) -> ChainResult:
    """Run ``graph``'s stages in order, each from its upstream stages' artifacts; a stage
    whose artifact exists is reused. The latent caches of a chain are built together, in
    one Ray Data job (one encoder pool, whose start is most of a small split's time), each
    still a stage of its own: recorded, reused and failed at by name."""
    if fail_at is not None and fail_at not in graph.names:
        raise ValueError(f"fail_at={fail_at!r} is no stage of chain {graph.label} ({', '.join(graph.names)})")
    result = ChainResult()
    context = context.replace(scaling=_chain_scaling(profile, in_process=in_process))
    store = context.store
    tag = "[pixel]" if graph.channels is None else f"[c={graph.channels}]"
    artifacts = result.artifacts
    nodes = list(graph.nodes)
    while nodes:
        node = nodes.pop(0)
        stage_context = _scheduled(context, threads, node.plan_name)
        if node.kind == "encode":  # this cache and the ones that follow it, in one job
            group = [node]
            while nodes and nodes[0].kind == "encode":
                group.append(nodes.pop(0))
            _build_caches(group, artifacts["autoencoder"], dataset, context, result, fail_at, progress, tag)
            continue
        if node.name == fail_at:
            raise InjectedFailure(f"injected failure before stage {node.name!r}")
        progress(f"{tag} {_describe(node)}")
        call = _stage_call(node, artifacts, dataset, stage_context, scoring)
        before = store.complete_ids(_store_stage(node))
        artifact = call()
        (result.reused if artifact.id in before else result.ran).append(node.name)
        artifacts[node.name] = artifact
    return result


def _store_stage(node: StageNode) -> str:
    """The artifact store's stage of ``node``'s artifacts."""
    if node.kind == "train":
        return "autoencoder" if isinstance(node.config, AutoencoderConfig) else "emulator"
    return {"encode": "latents", "evaluate": "evaluation"}[node.kind]


def _describe(node: StageNode) -> str:
    if node.name == "pixel_solver":
        return "neural solver"
    if node.kind == "evaluate":
        return (
            "evaluation"
            if node.name == "evaluation/pixel_solver"
            else (f"evaluation ({node.name.removeprefix('evaluation/').replace('_', ' ')})")
        )
    return node.name


def _stage_call(
    node: StageNode, artifacts: dict, dataset: DatasetInfo, context: StageContext, scoring: dict | None
) -> Callable[[], Artifact]:
    """The call that runs (or reuses) ``node`` on its upstream artifacts."""
    config = node.config
    if node.kind == "evaluate":
        emulator = artifacts[node.upstream[0]]
        autoencoder = artifacts.get("autoencoder") if "autoencoder" in node.upstream else None
        return lambda: evaluate(emulator, autoencoder, dataset, context, config.with_scoring(scoring))
    if isinstance(config, AutoencoderConfig):
        return lambda: train_autoencoder(config, dataset, context)
    if config.space == "pixel":
        return lambda: train_pixel_solver(config, dataset, context)
    train = train_diffusion if config.kind == "diffusion" else train_solver
    return lambda: train(
        config,
        autoencoder=artifacts["autoencoder"],
        train_cache=artifacts["latents/train"],
        valid_cache=artifacts["latents/valid"],
        context=context,
    )


def _build_caches(
    nodes: list[StageNode],
    autoencoder: Artifact,
    dataset: DatasetInfo,
    context: StageContext,
    result: ChainResult,
    fail_at: str | None,
    progress: Callable[[str], None],
    tag: str,
) -> None:
    """The latent caches of ``nodes`` in one job; those before ``fail_at`` only, then the
    injected failure."""
    names = [node.name for node in nodes]
    stop = names.index(fail_at) if fail_at in names else len(nodes)  # the caches before fail_at are built
    splits = [node.config.split for node in nodes]
    progress(f"{tag} latent caches ({', '.join(splits)})")
    first = nodes[0].config
    before = context.store.complete_ids("latents")
    caches = (
        cache_latents_splits(
            autoencoder,
            dataset,
            tuple(splits[:stop]),
            context,
            repeat={node.config.split: node.config.repeat for node in nodes},
            augment=first.augment,
            seed=first.seed,
        )
        if stop
        else {}
    )
    for name, split in zip(names, caches):
        (result.reused if caches[split].id in before else result.ran).append(name)
        result.artifacts[name] = caches[split]
    if stop < len(nodes):
        raise InjectedFailure(f"injected failure before stage {fail_at!r}")
