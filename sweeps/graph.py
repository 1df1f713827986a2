"""The study's stage graph, declared once: every stage a chain runs, in order, with its
config and its upstream stages.

:func:`latent_chain` and :func:`pixel_chain` build a chain's graph from a profile and the
study's options; :mod:`lolaray.sweeps.chain` runs it, :func:`~lolaray.sweeps.plan.plan_study`
costs it (so ``--plan`` and the schedule cannot miss a stage the study runs, such as a
guided evaluation) and the tests name its stages from it. Adding a stage or an option is
one edit here, plus how to run and cost a stage of a new kind.

For a latent channel count ``C``::

    autoencoder ──► latents/train, latents/valid, latents/test
                        ├─► diffusion ──► evaluation/diffusion [, evaluation/guided_diffusion]
                        └─► solver ──► evaluation/solver

and, once per study, ``pixel_solver ──► evaluation/pixel_solver``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lolaray.evaluation.evaluate import EvaluationConfig
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig
from lolaray.trainers.emulators import EmulatorConfig

if TYPE_CHECKING:  # chain.py imports this module: the profile is only a type here
    from lolaray.sweeps.chain import Profile

__all__ = [
    "CacheSettings",
    "ChainGraph",
    "StageNode",
    "latent_chain",
    "pixel_chain",
]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class CacheSettings:
    """A latent cache: the split encoded, ``repeat`` copies of each trajectory (copies 1…
    augmented with ``augment``, seeded by ``seed``)."""

    split: str
    repeat: int
    augment: bool | tuple[str, ...]
    seed: int


@dataclass(frozen=True)
class StageNode:
    """One stage of a chain.

    :param name: its name in the chain (``"autoencoder"``, ``"latents/train"``,
        ``"evaluation/guided_diffusion"``, ``"pixel_solver"``...): what the chain records as
        ran or reused and ``fail_at`` names.
    :param kind: ``"train"``, ``"encode"`` or ``"evaluate"``.
    :param config: an :class:`~lolaray.trainers.autoencoder_trainer.AutoencoderConfig` or
        :class:`~lolaray.trainers.emulators.EmulatorConfig` (train), a :class:`CacheSettings`
        (encode) or an :class:`~lolaray.evaluation.evaluate.EvaluationConfig` (evaluate; the study's scoring options join it when it runs).
    :param upstream: the names of the stages whose artifacts it takes.
    :param plan_name: its name in the plan and the schedule (``"solver"`` for the pixel
        solver: the plan prefixes it with the chain, ``pixel/solver``).
    """

    name: str
    kind: str
    config: Any
    upstream: tuple[str, ...] = ()
    plan_name: str = ""

    def __post_init__(self):
        if self.kind not in ("train", "encode", "evaluate"):
            raise ValueError(f"unknown stage kind {self.kind!r}")
        if not self.plan_name:
            object.__setattr__(self, "plan_name", self.name)


@dataclass(frozen=True)
class ChainGraph:
    """A chain's stages, in the order they run (every upstream before its stage).

    :param label: ``"c64"`` or ``"pixel"``; ``channels``: the latent channel count (``None``: pixel).
    """

    label: str
    channels: int | None
    nodes: tuple[StageNode, ...]

    def __post_init__(self):
        seen: set[str] = set()
        for node in self.nodes:
            missing = [name for name in node.upstream if name not in seen]
            if missing:
                raise ValueError(
                    f"stage {node.name!r} of chain {self.label} runs before its upstream {missing}"
                )
            seen.add(node.name)

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> StageNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"chain {self.label} has no stage {name!r} (stages: {', '.join(self.names)})")


def _seeded(config, seed: int):
    return dataclasses.replace(config, loop=dataclasses.replace(config.loop, seed=seed))


def latent_chain(
    profile: Profile, channels: int, *, seed: int = 0, guidance: dict | None = None
) -> ChainGraph:
    """The chain of one compression rate (the profile already fitted to its dataset,
    :meth:`~lolaray.sweeps.chain.Profile.for_dataset`); every stage seeded ``seed``.

    :param guidance: also evaluate the diffusion emulator guided by observations
        (``evaluation/guided_diffusion``).
    """
    autoencoder: AutoencoderConfig = dataclasses.replace(
        _seeded(profile.autoencoder, seed), latent_channels=int(channels)
    )
    nodes = [StageNode("autoencoder", "train", autoencoder)]
    for split in SPLITS:
        settings = CacheSettings(
            split=split,
            repeat=profile.repeat if split == "train" else 1,
            augment=profile.augment,
            seed=seed,
        )
        nodes.append(StageNode(f"latents/{split}", "encode", settings, upstream=("autoencoder",)))
    emulator: EmulatorConfig = _seeded(dataclasses.replace(profile.emulator, space="latent"), seed)
    for kind in ("diffusion", "solver"):
        config = dataclasses.replace(emulator, kind=kind)
        nodes.append(
            StageNode(kind, "train", config, upstream=("autoencoder", "latents/train", "latents/valid"))
        )
        diffusion = kind == "diffusion"
        evaluation = EvaluationConfig(
            contexts=tuple(profile.contexts),
            members=profile.members if diffusion else 1,
            trajectories=profile.trajectories,
            steps=profile.sampler_steps if diffusion else 1,
            seed=seed,
        )
        upstream = (kind, "autoencoder", "latents/test")
        nodes.append(StageNode(f"evaluation/{kind}", "evaluate", evaluation, upstream=upstream))
        if diffusion and guidance is not None:
            guided = dataclasses.replace(evaluation, guidance=dict(guidance))
            nodes.append(StageNode("evaluation/guided_diffusion", "evaluate", guided, upstream=upstream))
    return ChainGraph(label=f"c{int(channels)}", channels=int(channels), nodes=tuple(nodes))


def pixel_chain(profile: Profile, *, seed: int = 0) -> ChainGraph:
    """The pixel-space solver and its evaluation (once per study), seeded ``seed``."""
    config = _seeded(dataclasses.replace(profile.pixel_emulator, kind="solver", space="pixel"), seed)
    evaluation = EvaluationConfig(
        contexts=tuple(profile.contexts), members=1, trajectories=profile.trajectories, steps=1, seed=seed
    )
    return ChainGraph(
        label="pixel",
        channels=None,
        nodes=(
            StageNode("pixel_solver", "train", config, plan_name="solver"),
            StageNode(
                "evaluation/pixel_solver",
                "evaluate",
                evaluation,
                upstream=("pixel_solver",),
                plan_name="evaluation/solver",
            ),
        ),
    )
