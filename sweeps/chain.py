"""The study's stage chain for one compression rate, and the profiles that size it.

For a latent channel count ``C``::

    autoencoder ──► latent caches (train ×repeat, valid, test)
                        ├─► diffusion ──► evaluation (contexts 1..3)
                        └─► neural solver ──► evaluation

and once per sweep the pixel-space solver and its evaluation (:func:`run_pixel_chain`).
Every stage is content-addressed (its artifact id hashes its config and upstream ids) and
returns a complete artifact without recomputing when one exists, so a chain that was
interrupted resumes where it stopped, and two sweeps that share an autoencoder train it
once. :class:`ChainResult` records which stages ran and which were reused.

This module is the building block of the Ray Tune sweep (``sweeps/compression.py``,
issue 7); it runs the stages in the calling process, each launching its own Ray Train /
Ray Data work.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lolaray.evaluation.evaluate import evaluate
from lolaray.platform.artifacts import Artifact, ArtifactStore
from lolaray.platform.data import DatasetInfo
from lolaray.platform.dataset_specs import DatasetSpec, DatasetSpecError
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.trainers.autoencoder import AUTOENCODER_PRESETS
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
        declared = AUTOENCODER_PRESETS.get(autoencoder.preset, {}).get("spatial_dims", spec.spatial_dims)
        if declared != spec.spatial_dims:
            counterpart = (
                f"{autoencoder.preset}_3d"
                if spec.spatial_dims == 3
                else autoencoder.preset.removesuffix("_3d")
            )
            if counterpart not in AUTOENCODER_PRESETS:
                raise DatasetSpecError(
                    f"the {autoencoder.preset!r} autoencoder is {declared}-D and {spec.name} is "
                    f"{spec.spatial_dims}-D, with no {counterpart!r} preset"
                )
            autoencoder = dataclasses.replace(autoencoder, preset=counterpart)
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


def _run_stage(
    result: ChainResult,
    name: str,
    store: ArtifactStore,
    stage: str,
    call: Callable[[], Artifact],
    fail_at: str | None = None,
) -> Artifact:
    """Run ``call`` and record whether it produced a new artifact or returned a stored one."""
    if name == fail_at:
        raise InjectedFailure(f"injected failure before stage {name!r}")
    before = store.complete_ids(stage)
    artifact = call()
    (result.reused if artifact.id in before else result.ran).append(name)
    result.artifacts[name] = artifact
    return artifact


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
    """Autoencoder → caches → diffusion and solver → their evaluations, for one rate.

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
        :class:`~lolaray.sweeps.schedule.Schedule`; a guided evaluation takes the unguided one's).
    :param in_process: train and roll out in this process, with no Ray Train worker group
        and no rollout actor (:func:`_chain_scaling`).
    """
    result = ChainResult()
    _stage = functools.partial(_run_stage, fail_at=fail_at)
    context = context.replace(scaling=_chain_scaling(profile, in_process=in_process))
    store = context.store
    ae_config = dataclasses.replace(
        profile.autoencoder,
        latent_channels=latent_channels,
        loop=dataclasses.replace(profile.autoencoder.loop, seed=seed),
    )
    progress(f"[c={latent_channels}] autoencoder")
    autoencoder = _stage(
        result,
        "autoencoder",
        store,
        "autoencoder",
        lambda: train_autoencoder(ae_config, dataset, _scheduled(context, threads, "autoencoder")),
    )
    # The three caches in one Ray Data job (one encoder pool, whose start is most of a small
    # split's time), each still a stage of its own: recorded, reused and failed at by name.
    splits = ("train", "valid", "test")
    names = [f"latents/{split}" for split in splits]
    stop = names.index(fail_at) if fail_at in names else len(splits)  # the caches before fail_at are built
    progress(f"[c={latent_channels}] latent caches ({', '.join(splits)})")
    before = store.complete_ids("latents")
    caches = (
        cache_latents_splits(
            autoencoder,
            dataset,
            splits[:stop],
            context,
            repeat={"train": profile.repeat},
            augment=profile.augment,
            seed=seed,
        )
        if stop
        else {}
    )
    for name, split in zip(names, caches):
        (result.reused if caches[split].id in before else result.ran).append(name)
        result.artifacts[name] = caches[split]
    if stop < len(splits):
        raise InjectedFailure(f"injected failure before stage {fail_at!r}")
    emulator_config = dataclasses.replace(
        profile.emulator, loop=dataclasses.replace(profile.emulator.loop, seed=seed)
    )
    for kind, stage in (("diffusion", train_diffusion), ("solver", train_solver)):
        progress(f"[c={latent_channels}] {kind}")
        emulator = _stage(
            result,
            kind,
            store,
            "emulator",
            lambda stage=stage, kind=kind: stage(
                emulator_config,
                autoencoder=autoencoder,
                train_cache=caches["train"],
                valid_cache=caches["valid"],
                context=_scheduled(context, threads, kind),
            ),
        )
        evaluations = [(kind, None)]
        if kind == "diffusion" and guidance is not None:
            evaluations.append(("guided_diffusion", guidance))
        for name, guide in evaluations:
            progress(f"[c={latent_channels}] evaluation ({name.replace('_', ' ')})")
            _stage(
                result,
                f"evaluation/{name}",
                store,
                "evaluation",
                lambda emulator=emulator, guide=guide, kind=kind: evaluate(
                    emulator,
                    autoencoder,
                    dataset,
                    _scheduled(context, threads, f"evaluation/{kind}"),
                    contexts=profile.contexts,
                    members=profile.members,
                    trajectories=profile.trajectories,
                    steps=profile.sampler_steps,
                    seed=seed,
                    guidance=guide,
                    **(scoring or {}),
                ),
            )
    return result


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
    """The pixel-space solver and its evaluation (once per sweep); ``fail_at``, ``scoring``,
    ``threads`` and ``in_process`` as in :func:`run_latent_chain` (stages ``"pixel_solver"`` and
    ``"evaluation/pixel_solver"``, scheduled as the plan's ``"solver"`` and ``"evaluation/solver"``)."""
    result = ChainResult()
    _stage = functools.partial(_run_stage, fail_at=fail_at)
    context = context.replace(scaling=_chain_scaling(profile, in_process=in_process))
    store = context.store
    config = dataclasses.replace(
        profile.pixel_emulator, loop=dataclasses.replace(profile.pixel_emulator.loop, seed=seed)
    )
    progress("[pixel] neural solver")
    solver = _stage(
        result,
        "pixel_solver",
        store,
        "emulator",
        lambda: train_pixel_solver(config, dataset, _scheduled(context, threads, "solver")),
    )
    progress("[pixel] evaluation")
    _stage(
        result,
        "evaluation/pixel_solver",
        store,
        "evaluation",
        lambda: evaluate(
            solver,
            None,
            dataset,
            _scheduled(context, threads, "evaluation/solver"),
            contexts=profile.contexts,
            members=1,
            trajectories=profile.trajectories,
            seed=seed,
            **(scoring or {}),
        ),
    )
    return result
