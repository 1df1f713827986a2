r"""Convolutional autoencoder of method.md §2 (2-D and 3-D, channels-first).

The encoder maps a state :math:`x \in \mathbb{R}^{C_{pix} \times H \times W [\times Z]}` to a latent
:math:`z \in (-B, B)^{C_{lat} \times H/r \times W/r [\times Z/r]}` with spatial factor
:math:`r = 2^{L-1}` for ``L = len(hidden_channels)`` levels; the decoder maps it back.

Architecture (``d`` = ``spatial_dims``, every conv has kernel ``k``, padding ``k // 2``, bias):

* **Encoder**: stem conv :math:`C_{pix} \to h_0` (default init); for each level ``i``: if
  ``i > 0`` space-to-depth by 2 per axis (:math:`h_{i-1} \to 2^d h_{i-1}` channels) and conv
  :math:`2^d h_{i-1} \to h_i` (identity init), then ``hidden_blocks[i]`` :class:`ResBlock`\ s;
  finally conv :math:`h_{L-1} \to C_{lat}` (identity init) and the saturation
  :math:`z \mapsto z / \sqrt{1 + z^2 / B^2}`.
* **Decoder** (mirror): conv :math:`C_{lat} \to h_{L-1}` (identity init); for each level ``i``
  from the deepest: ResBlocks, then if ``i > 0`` conv :math:`h_i \to 2^d h_{i-1}` (identity init)
  and depth-to-space; finally conv :math:`h_0 \to C_{pix}` (default init).

Identity init (switchable): :math:`W \leftarrow 10^{-2} W_{default} + E` with
:math:`E[o, o \bmod C_{in}, \text{centre}] = 1`; biases keep PyTorch's default init.

Loss: :func:`vmse_loss` (variance-normalised MSE; ``root=True`` gives the reference code's
square-rooted variant).

**Known channels** (``known_channels`` :math:`K > 0`): what is known about a state without
being predicted — time-invariant fields (a bathymetry, an obstacle mask) and time-varying
scalars broadcast over space. The encoder reads them beside the state,
:math:`z = E([x, k])`, and the latent state carries them average-pooled to the latent grid,
:math:`\tilde z = [z, \mathrm{pool}_r(k)]` with :math:`C_{lat} + K` channels; the decoder
reads the whole latent state, :math:`\hat x = D(\tilde z)`, so it is told :math:`k` rather
than made to remember it. Emulators treat the last :math:`K` channels of a latent state as
always known (:func:`lolaray.trainers.diffusion.known_channel_mask`).

**Grids r does not divide** (``pixel_grid`` given, e.g. The Well's 192×128×66): the encoder
first pads the end of each axis up to the next multiple of ``r`` — wrapping around on a
periodic axis, mirroring (without repeating the edge cell) on another — and the decoder's
output is cropped back to the grid, so the latent grid is :math:`\lceil s / r \rceil` per
axis and reconstructions (and every loss on them) have the state's shape. The known channels
are padded the same way before they are pooled. On a grid ``r`` divides nothing is padded:
the network and its outputs are those of an autoencoder built without ``pixel_grid``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "AUTOENCODER_PRESETS",
    "GRID_PADDINGS",
    "AutoEncoder",
    "ChannelLayerNorm",
    "Decoder",
    "DepthToSpace",
    "Encoder",
    "ResBlock",
    "SpaceToDepth",
    "build_autoencoder",
    "compression_rate",
    "identity_init_",
    "pad_axis",
    "pool_to_latent",
    "preset_for_dims",
    "saturate",
    "spatial_factor",
    "vmse_loss",
    "vmse_per_field",
]

_AXIS_NAMES = ("H", "W", "Z")

#: How :class:`AutoEncoder` pads an axis of a ``pixel_grid`` that ``r`` does not divide:
#: ``circular`` (a periodic axis), ``reflect`` (any other) or ``replicate`` (repeat the last cell).
GRID_PADDINGS = ("circular", "reflect", "replicate")


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _conv(
    in_channels: int, out_channels: int, *, spatial_dims: int, kernel_size: int, periodic: bool
) -> nn.Module:
    """A ``kernel_size`` conv with "same" padding; circular padding when ``periodic``."""
    cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return cls(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        padding_mode="circular" if periodic else "zeros",
    )


@torch.no_grad()
def identity_init_(conv: nn.Module, *, scale: float = 1e-2) -> nn.Module:
    r"""Re-initialise ``conv`` in place as a near-identity map (method.md §2).

    With the conv's current (default) weight :math:`W \in \mathbb{R}^{C_{out} \times C_{in}
    \times k^d}`, set :math:`W \leftarrow \text{scale} \cdot W + E` where
    :math:`E[o, o \bmod C_{in}, \text{centre}] = 1` and zero elsewhere. For
    :math:`C_{out} \le C_{in}` output ``o`` copies input ``o``; for :math:`C_{out} > C_{in}` the
    input is tiled (output ``o`` copies input ``o mod C_in``). The bias is left untouched.

    :param conv: a ``nn.Conv2d`` / ``nn.Conv3d`` with odd kernel size.
    :param scale: factor applied to the existing weight.
    :returns: ``conv`` (for chaining).
    """
    weight = conv.weight
    out_channels, in_channels, *kernel = weight.shape
    eye = torch.zeros_like(weight)
    centre = tuple(k // 2 for k in kernel)
    outputs = torch.arange(out_channels, device=weight.device)
    eye[(outputs, outputs % in_channels, *centre)] = 1.0
    weight.mul_(scale).add_(eye)
    return conv


class ChannelLayerNorm(nn.Module):
    r"""LayerNorm over the channel axis only, per pixel, without affine parameters.

    .. math:: y = (x - \mu_c) / \sqrt{\sigma_c^2 + \epsilon}

    where :math:`\mu_c, \sigma^2_c` are the mean and the **unbiased** variance over the channel
    dim (dim 1) at each pixel, as the reference implementation computes them.

    Shapes: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(self, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=1)
        return (x - mean) * torch.rsqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ResBlock(nn.Module):
    r"""Residual conv block.

    .. math:: y = x + \mathrm{Conv}_2(\mathrm{Drop}_p(\mathrm{SiLU}(\mathrm{Conv}_1(\mathrm{LN}(x)))))

    The last conv's weight is scaled by ``1e-2`` at init (its bias is not), so a fresh block is
    close to the identity. Shapes: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(
        self, channels: int, *, spatial_dims: int, kernel_size: int, dropout: float, periodic: bool
    ) -> None:
        super().__init__()
        conv_kw = {"spatial_dims": spatial_dims, "kernel_size": kernel_size, "periodic": periodic}
        self.norm = ChannelLayerNorm(eps=1e-5)
        self.conv1 = _conv(channels, channels, **conv_kw)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(channels, channels, **conv_kw)
        with torch.no_grad():
            self.conv2.weight.mul_(1e-2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.dropout(self.act(self.conv1(self.norm(x)))))
        return x + y


class SpaceToDepth(nn.Module):
    r"""Fold each :math:`2^d` block of pixels into channels (factor 2 per axis).

    Channel order ``(C, offsets)``: new channel :math:`= c \cdot 2^d + \text{offset}` with the
    offset enumerated row-major over the axes. Shapes: ``(B, C, H, W[, Z]) ->
    (B, C·2^d, H/2, W/2[, Z/2])``.
    """

    def __init__(self, *, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial_dims == 2:
            return rearrange(x, "b c (h i) (w j) -> b (c i j) h w", i=2, j=2)
        return rearrange(x, "b c (h i) (w j) (z k) -> b (c i j k) h w z", i=2, j=2, k=2)


class DepthToSpace(nn.Module):
    r"""Inverse of :class:`SpaceToDepth`: ``(B, C·2^d, H, W[, Z]) -> (B, C, 2H, 2W[, 2Z])``."""

    def __init__(self, *, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial_dims == 2:
            return rearrange(x, "b (c i j) h w -> b c (h i) (w j)", i=2, j=2)
        return rearrange(x, "b (c i j k) h w z -> b c (h i) (w j) (z k)", i=2, j=2, k=2)


def saturate(z: Tensor, bound: float) -> Tensor:
    r"""Soft clip :math:`z \mapsto z / \sqrt{1 + z^2 / B^2}` into the open interval :math:`(-B, B)`.

    Computed as :math:`B \cdot u / \mathrm{hypot}(1, u)` with :math:`u = z / B`, which does not
    overflow for huge :math:`|z|` (the naive :math:`z^2` would give ``inf`` and then 0). In
    floating point the exact result rounds to :math:`\pm B` once :math:`|z| \gtrsim 10^4` (fp32);
    it is then clamped to the largest representable value below :math:`B`, so the latent stays
    strictly inside the interval (the clamp only touches values whose true gradient is < 1e-7).
    """
    u = z / bound
    out = bound * u / torch.hypot(torch.ones_like(u), u)
    inner = torch.nextafter(
        torch.tensor(bound, dtype=out.dtype, device=out.device),
        torch.tensor(0.0, dtype=out.dtype, device=out.device),
    )
    return torch.clamp(out, -inner, inner)


# --------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    r"""Convolutional encoder: ``(B, C_pix, H, W[, Z]) -> (B, C_lat, H/r, W/r[, Z/r])``.

    Returns the **unsaturated** conv output; :meth:`AutoEncoder.encode` applies the saturation.
    Sub-modules: ``stem`` (conv :math:`C_{pix} \to h_0`), ``levels[i]`` (``down`` =
    space-to-depth + conv for ``i > 0``, then ``blocks``), ``out`` (conv :math:`h_{L-1} \to C_{lat}`).
    """

    def __init__(
        self,
        *,
        pixel_channels: int,
        latent_channels: int,
        hidden_channels: Sequence[int],
        hidden_blocks: Sequence[int],
        spatial_dims: int,
        dropout: float,
        identity_init: bool,
        periodic: bool,
        kernel_size: int,
        known_channels: int = 0,
    ) -> None:
        super().__init__()
        conv_kw = {"spatial_dims": spatial_dims, "kernel_size": kernel_size, "periodic": periodic}
        fold = 2**spatial_dims
        self.stem = _conv(pixel_channels + known_channels, hidden_channels[0], **conv_kw)
        self.levels = nn.ModuleList()
        for i, (channels, blocks) in enumerate(zip(hidden_channels, hidden_blocks, strict=True)):
            level = nn.Module()
            if i > 0:
                conv = _conv(hidden_channels[i - 1] * fold, channels, **conv_kw)
                if identity_init:
                    identity_init_(conv)
                level.down = nn.Sequential(SpaceToDepth(spatial_dims=spatial_dims), conv)
            else:
                level.down = nn.Identity()
            level.blocks = nn.Sequential(
                *(ResBlock(channels, dropout=dropout, **conv_kw) for _ in range(blocks))
            )
            self.levels.append(level)
        self.out = _conv(hidden_channels[-1], latent_channels, **conv_kw)
        if identity_init:
            identity_init_(self.out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for level in self.levels:
            h = level.blocks(level.down(h))
        return self.out(h)


class Decoder(nn.Module):
    r"""Convolutional decoder: ``(B, C_lat, h, w[, z]) -> (B, C_pix, h·r, w·r[, z·r])``.

    Sub-modules: ``inp`` (conv :math:`C_{lat} \to h_{L-1}`), ``levels[i]`` (``blocks``, then
    ``up`` = conv :math:`h_i \to 2^d h_{i-1}` + depth-to-space for ``i > 0``), ``head`` (conv
    :math:`h_0 \to C_{pix}`). ``levels`` is indexed like the encoder's (level 0 = full resolution)
    and run from the deepest level.
    """

    def __init__(
        self,
        *,
        pixel_channels: int,
        latent_channels: int,
        hidden_channels: Sequence[int],
        hidden_blocks: Sequence[int],
        spatial_dims: int,
        dropout: float,
        identity_init: bool,
        periodic: bool,
        kernel_size: int,
        known_channels: int = 0,
    ) -> None:
        super().__init__()
        conv_kw = {"spatial_dims": spatial_dims, "kernel_size": kernel_size, "periodic": periodic}
        fold = 2**spatial_dims
        self.inp = _conv(latent_channels + known_channels, hidden_channels[-1], **conv_kw)
        if identity_init:
            identity_init_(self.inp)
        self.levels = nn.ModuleList()
        for i, (channels, blocks) in enumerate(zip(hidden_channels, hidden_blocks, strict=True)):
            level = nn.Module()
            level.blocks = nn.Sequential(
                *(ResBlock(channels, dropout=dropout, **conv_kw) for _ in range(blocks))
            )
            if i > 0:
                conv = _conv(channels, hidden_channels[i - 1] * fold, **conv_kw)
                if identity_init:
                    identity_init_(conv)
                level.up = nn.Sequential(conv, DepthToSpace(spatial_dims=spatial_dims))
            else:
                level.up = nn.Identity()
            self.levels.append(level)
        self.head = _conv(hidden_channels[0], pixel_channels, **conv_kw)

    def forward(self, z: Tensor) -> Tensor:
        h = self.inp(z)
        for level in reversed(self.levels):
            h = level.up(level.blocks(h))
        return self.head(h)


# --------------------------------------------------------------------------------------------
# Autoencoder
# --------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class AutoEncoder(nn.Module):
    r"""Convolutional autoencoder of method.md §2 for 2-D or 3-D states.

    :param pixel_channels: :math:`C_{pix}`, channels (fields) of a state.
    :param latent_channels: :math:`C_{lat}`, channels of the latent.
    :param hidden_channels: :math:`(h_0, \dots, h_{L-1})`, widths per level; the spatial factor is
        :math:`r = 2^{L-1}`.
    :param hidden_blocks: ResBlocks per level (same length as ``hidden_channels``; 0 allowed).
    :param spatial_dims: 2 or 3 (``Conv2d`` / ``Conv3d``).
    :param dropout: dropout probability inside the ResBlocks.
    :param identity_init: near-identity init of the down/up convs, the encoder-output conv and
        the decoder-input conv (the stem and head convs always keep the default init).
    :param periodic: circular instead of zero padding in every conv (translation-equivariant on
        a torus for shifts that are multiples of ``r``).
    :param saturation_bound: :math:`B` of the latent saturation; ``None`` disables it.
    :param kernel_size: odd conv kernel size.
    :param known_channels: :math:`K`, known channels read beside each state and carried,
        pooled, as the last :math:`K` channels of the latent state (module docstring).
    :param pixel_grid: ``(H, W[, Z])``, the only grid this network then encodes; one that ``r``
        does not divide is padded at the end of each axis up to the next multiple of ``r``
        before encoding, and decodings are cropped back to it (module docstring). ``None``:
        any grid ``r`` divides, nothing padded.
    :param grid_padding: per axis of ``pixel_grid``, one of :data:`GRID_PADDINGS`
        (``circular`` for a periodic axis, ``reflect`` for another); default ``circular`` on
        every axis when ``periodic``, else ``reflect``. A reflection needs fewer padded cells
        than the axis has; an axis with no more cells than it pads is padded ``replicate``
        instead (:attr:`padding_modes`).

    Shapes: ``encode: (B, C_pix, H, W[, Z]) [, (B, K, H, W[, Z])] -> (B, C_lat + K, ⌈H/r⌉, ⌈W/r⌉[, ⌈Z/r⌉])``,
    ``decode: (B, C_lat + K, h, w[, z]) -> (B, C_pix, h·r, w·r[, z·r])`` (cropped to
    ``pixel_grid`` when it is padded), ``forward(x[, known]) -> (x_hat, z)``.
    """

    # Class-level defaults: a network pickled before these attributes existed (an MLflow
    # model logged with ``serialization_format="pickle"``) unpickles without them.
    pixel_grid: tuple[int, ...] | None = None
    grid_padding: tuple[str, ...] | None = None
    padding_modes: tuple[str, ...] = ()
    grid_pad: tuple[int, ...] = ()

    def __init__(
        self,
        *,
        pixel_channels: int,
        latent_channels: int,
        hidden_channels: Sequence[int],
        hidden_blocks: Sequence[int],
        spatial_dims: int = 2,
        dropout: float = 0.05,
        identity_init: bool = True,
        periodic: bool = False,
        saturation_bound: float | None = 5.0,
        kernel_size: int = 3,
        known_channels: int = 0,
        pixel_grid: Sequence[int] | None = None,
        grid_padding: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("pixel_channels", pixel_channels)
        if isinstance(known_channels, bool) or not isinstance(known_channels, int) or known_channels < 0:
            raise ValueError(f"known_channels must be a non-negative integer, got {known_channels!r}")
        _check_positive_int("latent_channels", latent_channels)
        hidden_channels = tuple(hidden_channels)
        hidden_blocks = tuple(hidden_blocks)
        if not hidden_channels:
            raise ValueError("hidden_channels must not be empty (one entry per level)")
        if len(hidden_blocks) != len(hidden_channels):
            raise ValueError(
                f"hidden_blocks must have one entry per level: got {len(hidden_blocks)} entries for "
                f"{len(hidden_channels)} hidden_channels"
            )
        for i, c in enumerate(hidden_channels):
            _check_positive_int(f"hidden_channels[{i}]", c)
        for i, n in enumerate(hidden_blocks):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"hidden_blocks[{i}] must be a non-negative integer, got {n!r}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size!r}")
        if saturation_bound is not None and not saturation_bound > 0:
            raise ValueError(f"saturation_bound must be positive or None, got {saturation_bound!r}")

        self.pixel_channels = pixel_channels
        self.latent_channels = latent_channels
        self.hidden_channels = hidden_channels
        self.hidden_blocks = hidden_blocks
        self.spatial_dims = spatial_dims
        self.periodic = periodic
        self.saturation_bound = saturation_bound
        self.known_channels = known_channels
        self._set_grid(pixel_grid, grid_padding)

        kw = {
            "known_channels": known_channels,
            "pixel_channels": pixel_channels,
            "latent_channels": latent_channels,
            "hidden_channels": hidden_channels,
            "hidden_blocks": hidden_blocks,
            "spatial_dims": spatial_dims,
            "dropout": dropout,
            "identity_init": identity_init,
            "periodic": periodic,
            "kernel_size": kernel_size,
        }
        self.encoder = Encoder(**kw)
        self.decoder = Decoder(**kw)

    # -- geometry -----------------------------------------------------------------------------

    @property
    def spatial_factor(self) -> int:
        """:math:`r = 2^{L-1}`, the down-sampling factor per spatial axis (:func:`spatial_factor`)."""
        return spatial_factor(self.hidden_channels)

    def _set_grid(self, pixel_grid: Sequence[int] | None, grid_padding: Sequence[str] | None) -> None:
        """Checks and records ``pixel_grid`` / ``grid_padding`` and what they pad per axis."""
        if pixel_grid is None:
            if grid_padding is not None:
                raise ValueError("grid_padding needs a pixel_grid: the grid whose axes it pads")
            return
        grid = tuple(pixel_grid)
        if len(grid) != self.spatial_dims:
            raise ValueError(f"pixel_grid must have {self.spatial_dims} sizes (one per axis), got {grid}")
        for axis, size in enumerate(grid):
            _check_positive_int(f"pixel_grid[{axis}]", size)
        default = "circular" if self.periodic else "reflect"
        modes = (default,) * len(grid) if grid_padding is None else tuple(grid_padding)
        if len(modes) != len(grid) or any(mode not in GRID_PADDINGS for mode in modes):
            raise ValueError(
                f"grid_padding must give one of {list(GRID_PADDINGS)} per axis of {grid}, got {modes}"
            )
        r = self.spatial_factor
        pads = tuple(-size % r for size in grid)
        self.pixel_grid = grid
        self.grid_padding = modes
        self.grid_pad = pads
        # A reflection mirrors the cells before the last one, so it pads at most size - 1 cells:
        # an axis that needs more (3 cells with r = 8 pad 5) repeats its last cell instead.
        self.padding_modes = tuple(
            "replicate" if mode == "reflect" and pad >= size else mode
            for mode, pad, size in zip(modes, pads, grid)
        )

    @property
    def latent_grid(self) -> tuple[int, ...] | None:
        r""":math:`\lceil s / r \rceil` per axis of ``pixel_grid`` (``None`` without one)."""
        if self.pixel_grid is None:
            return None
        return tuple(-(-size // self.spatial_factor) for size in self.pixel_grid)

    def _check_spatial(self, spatial: Sequence[int], *, what: str) -> None:
        if self.pixel_grid is not None:
            if tuple(spatial) != self.pixel_grid:
                raise ValueError(
                    f"{what}: grid {tuple(spatial)}, but this autoencoder was built for the grid "
                    f"{self.pixel_grid} (pixel_grid)"
                )
            return
        r = self.spatial_factor
        for axis, size in enumerate(spatial):
            if size % r != 0:
                raise ValueError(
                    f"{what}: spatial axis {axis} ({_AXIS_NAMES[axis]}) has size {size}, which is not "
                    f"divisible by the spatial factor r={r} (build the autoencoder with pixel_grid to pad it)"
                )

    def latent_shape(self, pixel_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-sample latent shape for a per-sample pixel shape.

        :param pixel_shape: ``(C_pix, H, W[, Z])`` (no batch axis).
        :returns: ``(C_lat + K, ⌈H/r⌉, ⌈W/r⌉[, ⌈Z/r⌉])`` (``K`` constant channels; the
            division is exact unless ``pixel_grid`` is padded).
        """
        pixel_shape = tuple(int(s) for s in pixel_shape)
        if len(pixel_shape) != self.spatial_dims + 1:
            raise ValueError(
                f"pixel_shape must be (C_pix, {', '.join(_AXIS_NAMES[: self.spatial_dims])}), "
                f"got {pixel_shape}"
            )
        if pixel_shape[0] != self.pixel_channels:
            raise ValueError(f"pixel_shape has {pixel_shape[0]} channels, expected {self.pixel_channels}")
        self._check_spatial(pixel_shape[1:], what="pixel_shape")
        r = self.spatial_factor
        return (self.latent_channels + self.known_channels, *(-(-s // r) for s in pixel_shape[1:]))

    def _check_input(self, x: Tensor, *, channels: int, name: str, check_grid: bool) -> None:
        expected_ndim = self.spatial_dims + 2
        if x.ndim != expected_ndim:
            axes = ", ".join(("B", name, *_AXIS_NAMES[: self.spatial_dims]))
            raise ValueError(
                f"expected a {expected_ndim}-D tensor ({axes}) for spatial_dims={self.spatial_dims}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != channels:
            raise ValueError(f"expected {channels} channels ({name}) on dim 1, got shape {tuple(x.shape)}")
        if check_grid:
            self._check_spatial(tuple(x.shape[2:]), what="input")

    # -- maps ---------------------------------------------------------------------------------

    def _pad_grid(self, fields: Tensor) -> Tensor:
        """``fields`` on ``pixel_grid`` padded up to multiples of ``r`` (as is when none is needed)."""
        for axis, (pad, mode) in enumerate(zip(self.grid_pad, self.padding_modes)):
            if pad:
                fields = pad_axis(fields, 2 + axis, pad, mode)
        return fields

    def encode(self, x: Tensor, known: Tensor | None = None) -> Tensor:
        """``(B, C_pix, H, W[, Z])`` and its known channels ``(B, K, H, W[, Z])`` (``None`` when
        ``K = 0``) ``-> (B, C_lat + K, ⌈H/r⌉, ⌈W/r⌉[, ⌈Z/r⌉])``: the code, saturated into
        ``(-B, B)``, then the known channels average-pooled to the latent grid (both from the
        padded grid when ``pixel_grid`` is padded)."""
        self._check_input(x, channels=self.pixel_channels, name="C_pix", check_grid=True)
        if self.known_channels == 0:
            if known is not None and known.shape[1] > 0:
                raise ValueError(f"this autoencoder has no known channels, got {tuple(known.shape)}")
            inputs = x
        else:
            expected = (x.shape[0], self.known_channels, *x.shape[2:])
            if known is None or tuple(known.shape) != expected:
                raise ValueError(
                    f"expected known channels of shape {expected}, got {None if known is None else tuple(known.shape)}"
                )
            inputs = torch.cat([x, known.to(x.dtype)], dim=1)
        if any(self.grid_pad):
            # State and known channels padded together: the pooled known channels below are
            # then averages over the same padded cells the encoder reads.
            inputs = self._pad_grid(inputs)
            known = inputs[:, self.pixel_channels :] if self.known_channels else None
        z = self.encoder(inputs)
        if self.saturation_bound is not None:
            z = saturate(z, self.saturation_bound)
        if self.known_channels:
            z = torch.cat([z, pool_to_latent(known.to(z.dtype), self.spatial_factor)], dim=1)
        return z

    def decode(self, z: Tensor) -> Tensor:
        """``(B, C_lat + K, h, w[, z]) -> (B, C_pix, h·r, w·r[, z·r])``, cropped to ``pixel_grid``
        when it is padded (a latent then must be on its :attr:`latent_grid`)."""
        self._check_input(
            z, channels=self.latent_channels + self.known_channels, name="C_lat + K", check_grid=False
        )
        if self.pixel_grid is not None and tuple(z.shape[2:]) != self.latent_grid:
            raise ValueError(
                f"expected a latent on the grid {self.latent_grid} (that of pixel_grid {self.pixel_grid}), "
                f"got shape {tuple(z.shape)}"
            )
        x_hat = self.decoder(z)
        if any(self.grid_pad):
            x_hat = x_hat[(..., *(slice(0, size) for size in self.pixel_grid))]
        return x_hat

    def forward(self, x: Tensor, known: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(x_hat, z)`` with ``z = encode(x, known)`` and ``x_hat = decode(z)``."""
        z = self.encode(x, known)
        return self.decode(z), z


def pad_axis(fields: Tensor, dim: int, pad: int, mode: str) -> Tensor:
    r"""``fields`` with ``pad`` cells appended at the end of axis ``dim``.

    For an axis of ``n`` cells, appended cell ``n + j`` holds cell ``(n + j) mod n`` (``circular``:
    wraps any number of times), ``n - 2 - j`` (``reflect``: about the last cell, which is not
    repeated, as ``torch.nn.functional.pad``; needs ``pad < n``) or ``n - 1`` (``replicate``).
    An index gather rather than ``nn.functional.pad``: that pads every trailing axis with one
    mode and refuses a circular pad longer than the axis.

    :param fields: ``(..., n, ...)``.
    :param mode: one of :data:`GRID_PADDINGS`.
    """
    size = fields.shape[dim]
    tail = range(size, size + pad)
    if mode == "circular":
        index = [i % size for i in tail]
    elif mode == "reflect":
        if pad >= size:
            raise ValueError(f"a reflection pads at most {size - 1} cells of an axis of {size}, asked {pad}")
        index = [2 * (size - 1) - i for i in tail]
    elif mode == "replicate":
        index = [size - 1] * pad
    else:
        raise ValueError(f"unknown padding {mode!r}; choose one of {list(GRID_PADDINGS)}")
    index = torch.tensor(index, dtype=torch.long, device=fields.device)
    return torch.cat([fields, fields.index_select(dim, index)], dim=dim)


def pool_to_latent(fields: Tensor, factor: int) -> Tensor:
    r"""Average-pools ``(B, K, H, W[, Z])`` by ``factor`` per spatial axis, the known
    channels' values on the latent grid ``(B, K, H/r, W/r[, Z/r])``."""
    if factor == 1:
        return fields
    pool = nn.functional.avg_pool3d if fields.ndim == 5 else nn.functional.avg_pool2d
    return pool(fields, factor)


def compression_rate(pixel_shape: Sequence[int], latent_shape: Sequence[int]) -> float:
    r"""Per-sample compression rate :math:`\mathrm{numel}(x) / \mathrm{numel}(z)`.

    :param pixel_shape: per-sample state shape, e.g. ``(5, 64, 64)``.
    :param latent_shape: per-sample latent shape, e.g. ``(16, 4, 4)``.
    :returns: e.g. ``80.0`` for the two shapes above.
    """
    num_x, num_z = math.prod(pixel_shape), math.prod(latent_shape)
    if num_x <= 0 or num_z <= 0:
        raise ValueError(
            f"shapes must have positive sizes, got {tuple(pixel_shape)} and {tuple(latent_shape)}"
        )
    return num_x / num_z


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

#: Keyword arguments of :class:`AutoEncoder` (without ``pixel_channels`` / ``latent_channels``).
#: ``paper`` / ``paper_small`` / ``paper_3d`` are the reference configs ``dcae_f32c64_large`` /
#: ``dcae_f32c64_small`` / ``dcae_3d_f8c64_large``; the others are small CPU presets. A preset
#: without ``spatial_dims`` takes the data's (the paper's are 2-D or 3-D by design).
AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # r=32; ≈3.13e8 parameters at C_pix=5, C_lat=64.
    "paper": {
        "hidden_channels": (64, 128, 256, 512, 768, 1024),
        "hidden_blocks": (3,) * 6,
        "spatial_dims": 2,
    },
    # r=32; ≈7.9e7 parameters.
    "paper_small": {
        "hidden_channels": (32, 64, 128, 256, 384, 512),
        "hidden_blocks": (3,) * 6,
        "spatial_dims": 2,
    },
    # 3-D, r=8; ≈7.4e8 parameters at C_pix=6, C_lat=64.
    "paper_3d": {"hidden_channels": (64, 256, 512, 1024), "hidden_blocks": (3,) * 4, "spatial_dims": 3},
    # Tiny, r=2: unit tests and wiring checks (seconds on a CPU).
    "smoke": {"hidden_channels": (16, 32), "hidden_blocks": (1, 1)},
    "smoke_3d": {"hidden_channels": (8, 16), "hidden_blocks": (1, 1), "spatial_dims": 3},
    # r=8: a CPU demo on 32²–64² states (a few minutes of training on 2 cores).
    "demo": {"hidden_channels": (32, 64, 128, 128), "hidden_blocks": (1, 1, 1, 1)},
    # r=16 (e.g. 64×64 -> 4×4, the paper's Euler compression rates at C_lat 16/4/1).
    "small_r16": {"hidden_channels": (16, 32, 64, 128, 128), "hidden_blocks": (1, 1, 1, 1, 1)},
    # The demo's (issue 28): r = 8, 4×4 latents of a 32² state, the cost per step of small_r16.
    "small_r8": {"hidden_channels": (16, 32, 64, 128), "hidden_blocks": (1, 1, 1, 1)},
}


def build_autoencoder(
    preset: str, *, pixel_channels: int, latent_channels: int, **overrides: Any
) -> AutoEncoder:
    """Build an :class:`AutoEncoder` from a named preset of :data:`AUTOENCODER_PRESETS`.

    :param preset: preset name.
    :param pixel_channels: :math:`C_{pix}`.
    :param latent_channels: :math:`C_{lat}`.
    :param overrides: any other :class:`AutoEncoder` keyword (replaces the preset's value).
    :raises ValueError: for an unknown preset.
    """
    if preset not in AUTOENCODER_PRESETS:
        raise ValueError(
            f"unknown autoencoder preset {preset!r}; choose one of {sorted(AUTOENCODER_PRESETS)}"
        )
    kwargs: Mapping[str, Any] = {**AUTOENCODER_PRESETS[preset], **overrides}
    return AutoEncoder(pixel_channels=pixel_channels, latent_channels=latent_channels, **kwargs)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def vmse_per_field(x_hat: Tensor, x: Tensor, *, eps: float = 1e-2, root: bool = False) -> Tensor:
    r"""Variance-normalised MSE per sample and field.

    .. math:: \ell_{bc} = \frac{\operatorname{mean}_p (x_{bcp} - \hat x_{bcp})^2}
                               {\operatorname{Var}_p(x_{bc}) + \epsilon}

    over all pixels ``p`` of sample ``b``, channel ``c`` (unbiased variance of the *target*);
    ``root=True`` returns :math:`\sqrt{\ell_{bc}}` (the reference code's VRMSE variant).

    :param x_hat: prediction ``(B, C, *spatial)``.
    :param x: target, same shape.
    :returns: ``(B, C)``.
    """
    if x_hat.shape != x.shape:
        raise ValueError(
            f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}"
        )
    if x.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) tensors, got shape {tuple(x.shape)}")
    x_flat = x.flatten(2)
    mse = (x_flat - x_hat.flatten(2)).square().mean(dim=-1)
    var = x_flat.var(dim=-1, correction=1)
    loss = mse / (var + eps)
    return loss.sqrt() if root else loss


def vmse_loss(x_hat: Tensor, x: Tensor, *, eps: float = 1e-2, root: bool = False) -> Tensor:
    r"""Mean over ``(b, c)`` of :func:`vmse_per_field` — the paper's AE loss (VMSE, ``root=False``)
    or the reference code's VRMSE (``root=True``). Returns a scalar tensor."""
    return vmse_per_field(x_hat, x, eps=eps, root=root).mean()


def spatial_factor(hidden_channels: Sequence[int]) -> int:
    """:math:`r = 2^{L-1}`: the down-sampling factor per spatial axis of an autoencoder with
    ``L = len(hidden_channels)`` levels (each level after the first halves every axis)."""
    return 2 ** (len(hidden_channels) - 1)


def preset_for_dims(preset: str, spatial_dims: int) -> str | None:
    """The preset of ``preset``'s architecture for data of ``spatial_dims`` axes: itself when
    it is of that dimension (or of none), its counterpart (``paper`` ↔ ``paper_3d``) where
    one exists, else ``None``."""
    declared = AUTOENCODER_PRESETS.get(preset, {}).get("spatial_dims", spatial_dims)
    if declared == spatial_dims:
        return preset
    counterpart = f"{preset}_3d" if spatial_dims == 3 else preset.removesuffix("_3d")
    return counterpart if counterpart in AUTOENCODER_PRESETS else None
