r"""What one step of a network costs, counted on PyTorch's ``meta`` device.

:func:`count_step` builds a network on the ``meta`` device (shapes, no storage) and runs one
call of it — with its backward pass, for a training step — through
:class:`torch.utils.flop_counter.FlopCounterMode`, while a saved-tensors hook records what
autograd keeps for the backward pass. :func:`autoencoder_cost` and :func:`emulator_cost`
count the study's networks with their stages' own losses, so the figures come from the
code that trains. The study's plan (:mod:`lolaray.sweeps.plan`), the dry run and the MFU
benchmark build on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lolaray.platform.data import DatasetInfo
from lolaray.trainers.autoencoder import AutoEncoder
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, latent_geometry
from lolaray.trainers.emulator_trainer import Objective
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.transformer import count_parameters

__all__ = ["NetworkCost", "StepCost", "autoencoder_cost", "count_step", "emulator_cost"]


@dataclass(frozen=True)
class StepCost:
    """One call of a network at a batch.

    :param batch: samples in the call.
    :param flops: floating-point operations counted (a multiply-add is 2).
    :param activation_bytes: tensors saved for backward (0 without backward), attention scores included.
    :param attention_bytes: the part of ``activation_bytes`` that is :math:`N \\times N` attention scores.
    """

    batch: int
    flops: int
    activation_bytes: int = 0
    attention_bytes: int = 0


def count_step(
    build: Callable[[], nn.Module],
    run: Callable[[nn.Module], torch.Tensor],
    *,
    batch: int,
    backward: bool = True,
    tokens: int | None = None,
) -> tuple[int, StepCost]:
    """Build ``build()`` on the meta device and count one call of ``run(module)``.

    :param build: makes the network (called under ``torch.device("meta")``).
    :param run: returns the loss (``backward=True``: its backward pass is counted too) or the
        output; it must create its inputs on the module's device (``meta``).
    :param batch: the batch ``run`` uses (recorded in the cost).
    :param tokens: the sequence length :math:`N`, to tell saved :math:`N \\times N` attention
        scores apart.
    :returns: ``(trainable parameters, cost)``.
    """
    with torch.device("meta"):
        module = build()
    parameters = count_parameters(module)
    weights = {id(p) for p in module.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in weights:
            saved[id(base)] = base  # kept alive, so ids stay unique while counting
        return tensor

    with FlopCounterMode(display=False) as counter:
        if backward:
            module.train()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = run(module)
            loss.backward()
        else:
            module.eval()
            with torch.no_grad():
                run(module)
    nbytes = [(t, t.numel() * t.element_size()) for t in saved.values()]
    attention = sum(b for t, b in nbytes if tokens and t.ndim >= 2 and t.shape[-1] == t.shape[-2] == tokens)
    return parameters, StepCost(
        batch=batch,
        flops=int(counter.get_total_flops()),
        activation_bytes=sum(b for _, b in nbytes),
        attention_bytes=attention,
    )


@dataclass(frozen=True)
class NetworkCost:
    """A network of the study and what its calls cost.

    :param name: e.g. ``"autoencoder c64"``, ``"diffusion c64"``, ``"pixel solver"``.
    :param parameters: trainable parameters.
    :param train: one training step at the batch per worker (forward + backward of the loss).
    :param forward: one forward pass per sample, without gradient (validation, sampling).
    :param encode, decode: autoencoders only: one state through the encoder / decoder.
    :param tokens: emulators: tokens per window.
    """

    name: str
    parameters: int
    train: StepCost
    forward: StepCost
    encode: StepCost | None = None
    decode: StepCost | None = None
    tokens: int | None = None


def autoencoder_cost(
    config: AutoencoderConfig, info: DatasetInfo, *, name: str = "autoencoder", batch: int | None = None
) -> NetworkCost:
    """Count the autoencoder of ``config`` on states of ``info`` (training step: VMSE loss of
    ``batch`` states, default the config's batch per worker)."""
    batch = config.batch_size if batch is None else batch
    kwargs = config.model_kwargs(info)
    shape = info.state_shape

    def build():
        return AutoEncoder(**kwargs)

    def known(rows: int):  # the known channels the encoder reads beside a state
        if not info.n_known:
            return None
        return torch.randn(rows, info.n_known, *info.resolution, device="meta")

    def train(model):
        x = torch.randn(batch, *shape, device="meta")
        x_hat, _ = model(x, known(batch))
        return config.reconstruction_loss(x_hat, x)

    parameters, step = count_step(build, train, batch=batch)
    _, forward = count_step(
        build, lambda m: m(torch.randn(1, *shape, device="meta"), known(1)), batch=1, backward=False
    )
    _, encode = count_step(
        build, lambda m: m.encode(torch.randn(1, *shape, device="meta"), known(1)), batch=1, backward=False
    )
    latent, _ = latent_geometry(config, info)
    _, decode = count_step(
        build, lambda m: m.decode(torch.randn(1, *latent, device="meta")), batch=1, backward=False
    )
    return NetworkCost(name, parameters, step, forward, encode=encode, decode=decode)


def emulator_cost(
    config: EmulatorConfig,
    state_shape: Sequence[int],
    theta_dim: int,
    *,
    name: str | None = None,
    batch: int | None = None,
) -> NetworkCost:
    """Count the denoiser or solver of ``config`` on windows of states ``state_shape``
    ``(C, *spatial)`` (training step: the stage's objective on ``batch`` windows, default the
    config's batch per worker; the context mask's draw does not change the cost)."""
    batch = config.batch_size if batch is None else batch
    state_shape = tuple(state_shape)
    window = (state_shape[0], config.window, *state_shape[1:])

    def build():
        return Objective(build_emulator(config, state_shape, theta_dim))

    def inputs(n):
        mask = torch.zeros(n, config.window, dtype=torch.bool, device="meta")
        return torch.randn(n, *window, device="meta"), torch.randn(n, theta_dim, device="meta"), mask

    def forward(objective, n=1):
        x, theta, mask = inputs(n)
        emulator = objective.emulator
        if config.kind == "diffusion":
            return emulator(x, torch.rand(n, device="meta"), theta, mask, x)
        return emulator(x, mask, theta)

    with torch.device("meta"):
        probe = build_emulator(config, state_shape, theta_dim)
    tokens = math.prod(probe.backbone.token_grid(window[1:]))
    parameters, step = count_step(build, lambda m: m(*inputs(batch)), batch=batch, tokens=tokens)
    _, once = count_step(build, forward, batch=1, backward=False, tokens=tokens)
    label = name or f"{config.kind} ({config.space})"
    return NetworkCost(label, parameters, step, once, tokens=tokens)
