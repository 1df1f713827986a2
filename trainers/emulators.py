"""What defines an emulator: its config and the network built from it (no training here).

:class:`EmulatorConfig` holds everything an emulator training is defined by (its artifact
id hashes all of it); :func:`build_emulator` makes the denoiser (method.md §5) or the
neural solver (§6) it describes for states of a given shape. Training stages
(:mod:`~lolaray.trainers.emulator_trainer`), evaluation and the planning tools build
networks from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lolaray.platform.augmentation import augmentation_setting
from lolaray.platform.preprocessing import ThetaStandardizer
from lolaray.trainers.diffusion import ElucidatedDenoiser
from lolaray.trainers.loop import ADDED_LATER, LoopConfig, StageConfig
from lolaray.trainers.optim import OPTIMIZERS
from lolaray.trainers.solver import NeuralSolver
from lolaray.trainers.transformer import EMULATOR_PRESETS, build_backbone

__all__ = ["KINDS", "EmulatorConfig", "build_emulator"]

KINDS = ("diffusion", "solver")


@dataclass(frozen=True)
class EmulatorConfig(StageConfig):
    """Everything that defines an emulator training (its artifact id hashes all of it).

    :param kind: ``diffusion`` or ``solver``. ``space``: ``latent`` or ``pixel``.
    :param preset: a key of :data:`~lolaray.trainers.transformer.EMULATOR_PRESETS`;
        ``architecture`` overrides its keywords (e.g. ``{"patch_size": 4}`` for pixels).
    :param window: states per window, ``n + 1`` (5 in the paper); ``stride``: Δ between them.
    :param max_context: largest context length the masks draw (default ``window − 1``).
    :param mask_distribution: ``paper`` (c ~ Poisson(2) truncated to [1, n], forward) or
        ``reference`` (1 + Poisson(1) mod n, 34 % backward).
    :param windows_per_trajectory: random windows drawn per cached trajectory per pass.
    :param log_parameters: the parameters that enter θ as logarithms before the label
        embedding standardizes it (``None``: the dataset's spec,
        :func:`~lolaray.platform.dataset_specs.resolve_spec`).
    :param augment: the augmentations of a pixel-space emulator's training windows (an
        :func:`~lolaray.platform.augmentation.augmentation_setting`: ``True`` every one the
        grid allows; the dataset spec's in a study). Latent emulators train on the latent
        cache, whose copies were augmented when it was encoded.
    :param loop: the optimization (the paper: AdamW, lr 1e-4, betas (0.9, 0.99), cosine, clip 1).
    """

    kind: str = "diffusion"
    space: str = "latent"
    preset: str = "demo"
    architecture: dict = field(default_factory=dict)
    window: int = 5
    stride: int = 4
    max_context: int | None = None
    mask_distribution: str = "paper"
    batch_size: int = 16
    windows_per_trajectory: int = 4
    valid_windows: int = 64
    log_parameters: tuple[str, ...] | None = None
    augment: bool | tuple[str, ...] = field(default=True, metadata=ADDED_LATER)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(optimizer="adamw", lr=1e-4))

    def __post_init__(self):
        if self.log_parameters is not None:  # a list after a JSON round trip
            object.__setattr__(self, "log_parameters", tuple(self.log_parameters))
        object.__setattr__(self, "augment", augmentation_setting(self.augment))

    def backbone_kwargs(self) -> dict:
        return {**EMULATOR_PRESETS.get(self.preset, {}), **self.architecture}

    def validate(self, state_shape: tuple[int, ...], n_steps: int) -> None:
        """Clear errors for a bad config, before any worker starts.

        :param state_shape: ``(C, *spatial)`` of one state in the emulator's space.
        :param n_steps: the shortest trajectory length available.
        """
        if self.kind not in KINDS:
            raise ValueError(f"unknown emulator kind {self.kind!r}; choose one of {KINDS}")
        if self.space not in ("latent", "pixel"):
            raise ValueError(f"space must be 'latent' or 'pixel', got {self.space!r}")
        if self.preset not in EMULATOR_PRESETS:
            raise ValueError(
                f"unknown emulator preset {self.preset!r}; choose one of {sorted(EMULATOR_PRESETS)}"
            )
        if self.loop.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.loop.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        if self.window < 2:
            raise ValueError(
                f"window length must be >= 2 (context + at least one new state), got {self.window}"
            )
        context = self.window - 1 if self.max_context is None else self.max_context
        if not 1 <= context < self.window:
            raise ValueError(
                f"context length {context} must be in [1, window length - 1] = [1, {self.window - 1}]"
            )
        if self.mask_distribution not in ("paper", "reference"):
            raise ValueError(
                f"mask_distribution must be 'paper' or 'reference', got {self.mask_distribution!r}"
            )
        span = (self.window - 1) * self.stride + 1
        if span > n_steps:
            raise ValueError(
                f"a window of {self.window} states at stride {self.stride} spans {span} steps, "
                f"longer than the trajectories ({n_steps} steps)"
            )
        kwargs = self.backbone_kwargs()
        width, heads = kwargs["hid_channels"], kwargs["attention_heads"]
        if width % heads:
            raise ValueError(f"attention heads ({heads}) must divide the width ({width})")
        patch = kwargs.get("patch_size", 1)
        patch = (
            (patch,) * (len(state_shape) - 1)
            if isinstance(patch, int)
            else tuple(patch)[-(len(state_shape) - 1) :]
        )
        for axis, (size, p) in enumerate(zip(state_shape[1:], patch)):
            if size % p:
                raise ValueError(
                    f"patch size {p} does not divide the grid: spatial axis {axis} has {size} cells"
                )


def build_emulator(
    config: EmulatorConfig,
    state_shape: tuple[int, ...],
    theta_dim: int,
    theta_standardizer: ThetaStandardizer | None = None,
) -> nn.Module:
    """The denoiser or solver for states of ``state_shape`` ``(C, *spatial)``, conditioned on
    θ of ``theta_dim`` entries standardized by ``theta_standardizer`` (default: raw θ)."""
    backbone = build_backbone(
        config.preset, in_channels=state_shape[0], spatial_dims=len(state_shape) - 1, **config.architecture
    )
    label = None if theta_standardizer is None else theta_standardizer.label_standardization()
    if label is not None and len(label["log"]) != theta_dim:
        raise ValueError(f"the θ standardizer covers {len(label['log'])} entries, θ has {theta_dim}")
    if config.kind == "diffusion":
        return ElucidatedDenoiser(backbone, label_features=theta_dim, label_standardization=label)
    return NeuralSolver(backbone, label_features=theta_dim, label_standardization=label)
