r"""Spatio-temporal transformer backbone of the emulators (method.md §4).

The backbone maps a window :math:`x \in \mathbb{R}^{B \times C \times T \times H \times W [\times Z]}`
(channels-first, time treated as one more token axis) and a conditioning tensor
:math:`b` (the context mask, broadcast over channels) to a window of the same grid,

.. math:: y = f(x, b, m)

where :math:`m \in \mathbb{R}^{B \times M}` is the modulation vector (diffusion time
and/or physical parameters, built by the wrappers in :mod:`lolaray.trainers.diffusion`
and :mod:`lolaray.trainers.solver`).

Pipeline: patchify (:math:`(1, 1, 1)` for latents, :math:`(1, p, p[, p])` for pixels)
:math:`\to` ``in_proj`` :math:`\to` + absolute sine position embedding :math:`\to`
``hid_blocks`` × :class:`TransformerBlock` :math:`\to` ``out_proj`` :math:`\to`
unpatchify. Every block mixes the un-positioned input embedding (``skip``) back in
through a gated residual (the reference code's "value residual").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "EMULATOR_PRESETS",
    "LabelEmbedding",
    "LearnedRoPE",
    "MultiheadSelfAttention",
    "SineEncoding",
    "SpatioTemporalTransformer",
    "TransformerBlock",
    "build_backbone",
    "count_parameters",
]

_AXIS_NAMES = ("time", "height", "width", "depth")

#: Named backbone configurations. Values are keyword arguments of
#: :class:`SpatioTemporalTransformer` (channels and ``spatial_dims`` come from the data).
#:
#: * ``paper``: latent emulator of the paper (Table 5; ``vit_large``), ≈2.2e8 parameters
#:   at 64 latent channels.
#: * ``paper_pixel``: pixel-space neural solver baseline (``vit_pixel``), patch
#:   :math:`1 \times 16 \times 16`, gradient checkpointing, ≈8.6e8 parameters.
#: * ``smoke``: tiny, for unit tests and pipeline checks (seconds on a CPU).
#: * ``demo``: small, trains in minutes on a CPU on demo-sized latents.
EMULATOR_PRESETS: dict[str, dict] = {
    "paper": {
        "hid_channels": 1024,
        "hid_blocks": 16,
        "attention_heads": 8,
        "mod_features": 256,
        "ffn_factor": 4,
        "dropout": 0.05,
        "patch_size": 1,
    },
    "paper_pixel": {
        "hid_channels": 2048,
        "hid_blocks": 16,
        "attention_heads": 16,
        "mod_features": 256,
        "ffn_factor": 4,
        "dropout": 0.05,
        "patch_size": 16,
        "checkpointing": True,
    },
    "smoke": {
        "hid_channels": 64,
        "hid_blocks": 2,
        "attention_heads": 4,
        "mod_features": 64,
        "ffn_factor": 4,
        "dropout": 0.0,
        "patch_size": 1,
    },
    "demo": {
        "hid_channels": 128,
        "hid_blocks": 4,
        "attention_heads": 4,
        "mod_features": 128,
        "ffn_factor": 4,
        "dropout": 0.05,
        "patch_size": 1,
    },
}


def count_parameters(module: nn.Module) -> int:
    r"""Returns the number of trainable parameters of :py:`module`."""

    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class SineEncoding(nn.Module):
    r"""Sinusoidal encoding of scalars.

    .. math:: e(x) = [\sin(\omega_0 x), \dots, \sin(\omega_{K-1} x),
                      \cos(\omega_0 x), \dots, \cos(\omega_{K-1} x)]

    with :math:`K = D / 2` and :math:`\omega_k = \omega^{-k / (K - 1)}`, so the
    frequencies span :math:`[1/\omega, 1]` geometrically.

    Arguments:
        features: The number of output features :math:`D` (even, at least 4).
        omega: The maximum period :math:`\omega`.

    Shapes:
        x: :math:`(*)`; returns :math:`(*, D)`, always float32 (the encoding of large
        arguments, e.g. :math:`c_\text{noise} \approx 70`, needs the precision).
    """

    def __init__(self, features: int, *, omega: float = 1e3):
        super().__init__()

        if features % 2 != 0 or features < 4:
            raise ValueError(f"SineEncoding needs an even number of features >= 4, got {features}")

        half = features // 2
        freqs = omega ** (-torch.arange(half, dtype=torch.float64) / (half - 1))
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()[..., None] * self.freqs
        return torch.cat((x.sin(), x.cos()), dim=-1)


class LabelEmbedding(nn.Sequential):
    r"""Embedding of the conditioning vector :math:`\theta` (physical parameters and
    boundary-condition codes), ``Linear(|θ| → M) → SiLU → Linear(M → M)`` applied to the
    standardized vector

    .. math:: \tilde\theta_i = (T_i(\theta_i) - \mu_i) / \sigma_i, \quad
        T_i = \ln \text{ where } \ell_i \text{ else the identity,}

    so that a Rayleigh number of :math:`10^8` enters the first ``Linear`` as a number of
    order one. :math:`\ell, \mu, \sigma` are buffers (saved with the weights, never
    trained), fitted on the train split by
    :func:`~lolaray.platform.preprocessing.fit_theta_standardizer`; by default the
    identity (:math:`\ell = 0, \mu = 0, \sigma = 1`), the paper's raw :math:`\theta`.

    Arguments:
        label_features: :math:`|\theta|`.
        mod_features: :math:`M`.
        log: :math:`\ell`, which entries enter as their natural logarithm, :math:`(|\theta|,)`.
        mean, std: :math:`\mu, \sigma`, :math:`(|\theta|,)`, of the transformed entries.

    Shapes:
        label: :math:`(B, |\theta|)` in physical units; returns :math:`(B, M)`.
    """

    def __init__(
        self,
        label_features: int,
        mod_features: int,
        *,
        log: Sequence[bool] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__(
            nn.Linear(label_features, mod_features),
            nn.SiLU(),
            nn.Linear(mod_features, mod_features),
        )

        def vector(values, default):
            values = [default] * label_features if values is None else list(values)
            if len(values) != label_features:
                raise ValueError(f"expected {label_features} standardization entries, got {len(values)}")
            return values

        log, mean, std = vector(log, False), vector(mean, 0.0), vector(std, 1.0)
        if min(std, default=1.0) <= 0:
            raise ValueError(f"standard deviations must be positive, got {std}")
        self.register_buffer("theta_log", torch.tensor(log, dtype=torch.bool))
        self.register_buffer("theta_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("theta_std", torch.tensor(std, dtype=torch.float32))

    def standardize(self, label: Tensor) -> Tensor:
        r"""Returns :math:`\tilde\theta`, :math:`(B, |\theta|)` float32."""

        label = label.float()
        # ln of a non-positive entry would be NaN; where() evaluates both branches, so clamp.
        logged = torch.where(self.theta_log, label.clamp_min(torch.finfo(label.dtype).tiny).log(), label)
        return (logged - self.theta_mean) / self.theta_std

    def forward(self, label: Tensor) -> Tensor:
        return super().forward(self.standardize(label))


def _layer_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    # Non-affine LayerNorm in float32: bf16 statistics over ~1e3 channels are too coarse.
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def _rms_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    # Non-affine RMSNorm (QK-norm), float32 output on purpose: RoPE follows in float32.
    # F.rms_norm is one fused kernel on GPU (on CPU torch still runs the composite ops).
    return F.rms_norm(x.float(), x.shape[-1:], eps=eps)


class LearnedRoPE(nn.Module):
    r"""Learned mixed-axis rotary position embedding.

    Each token has :math:`N` coordinates :math:`p \in \mathbb{R}^N` (time and space
    grid indices). A learned matrix :math:`\Theta \in \mathbb{R}^{N \times D/2}` gives
    one angle per channel pair, :math:`\phi = p \Theta \in \mathbb{R}^{D/2}`, so a
    frequency may mix axes. The angles are split into heads as contiguous blocks of
    :math:`D / (2H)`; channels :math:`(2i, 2i+1)` of a head are rotated by
    :math:`\phi_i` (a complex multiplication). Since rotations compose,
    :math:`\langle R(\phi(p)) q, R(\phi(p')) k \rangle` only depends on :math:`p' - p`.

    Initialisation: :math:`\Theta_{:,k} = 100^{-u_k} v_k` with :math:`u_k \sim
    \mathcal{U}(0, 1)` and :math:`v_k` a uniformly random unit vector of
    :math:`\mathbb{R}^N`.

    Arguments:
        axes: The number of coordinates :math:`N`.
        channels: The attention width :math:`D` (all heads together).
        heads: The number of heads :math:`H`; :math:`D / H` must be even.
    """

    def __init__(self, axes: int, channels: int, heads: int):
        super().__init__()

        if channels % (2 * heads) != 0:
            raise ValueError(f"RoPE needs an even head dimension: width {channels} / {heads} heads")

        self.heads = heads
        pairs = channels // 2

        u = torch.rand(pairs)
        v = torch.randn(axes, pairs)
        v = v / v.norm(dim=0, keepdim=True)
        self.theta = nn.Parameter(100.0 ** (-u) * v)

    def angles(self, coords: Tensor) -> Tensor:
        r"""Returns the rotation angles :math:`(H, L, D / 2H)` of coordinates :math:`(L, N)`."""

        phi = coords.float() @ self.theta.float()  # (L, D/2)
        return rearrange(phi, "L (H K) -> H L K", H=self.heads)

    def forward(self, x: Tensor, coords: Tensor) -> Tensor:
        r"""Rotates :math:`x` of shape :math:`(*, H, L, D/H)` (float32 out) at the
        coordinates :math:`(L, N)`."""

        phi = self.angles(coords)
        # Channel pairs as complex numbers: the rotation is one complex product
        # (one pass over x instead of six elementwise ops and a stack).
        rotation = torch.polar(torch.ones_like(phi), phi)
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
        return torch.view_as_real(pairs * rotation).flatten(-2)


class MultiheadSelfAttention(nn.Module):
    r"""Full multi-head self-attention with QK-norm and learned mixed-axis RoPE.

    .. math:: q, k, v = x W_{qkv}, \quad
              \tilde{q} = R(\phi)\,\mathrm{RMS}(q), \quad \tilde{k} = R(\phi)\,\mathrm{RMS}(k),
              \quad y = \mathrm{softmax}(\tilde{q} \tilde{k}^\top / \sqrt{d_h})\, v\, W_o

    ``qkv`` has no bias, RMSNorm has no affine parameters (eps 1e-5) and is applied
    per head before RoPE, there is no attention dropout.

    Arguments:
        channels: The width :math:`D`.
        heads: The number of heads :math:`H`.
        axes: The number of token coordinates :math:`N` (RoPE).

    Shapes:
        x: :math:`(B, L, D)`; coords: :math:`(L, N)`; returns :math:`(B, L, D)`.
    """

    def __init__(self, channels: int, heads: int, axes: int):
        super().__init__()

        if channels % heads != 0:
            raise ValueError(f"attention_heads ({heads}) must divide hid_channels ({channels})")

        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.rope = LearnedRoPE(axes, channels, heads)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, coords: Tensor) -> Tensor:
        qkv = rearrange(self.qkv(x), "B L (n H C) -> n B H L C", n=3, H=self.heads)

        # q and k normalised and rotated together: half the kernel calls.
        qk = self.rope(_rms_norm(qkv[:2]), coords).to(qkv.dtype)
        q, k, v = qk[0], qk[1], qkv[2]

        y = F.scaled_dot_product_attention(q, k, v)
        y = rearrange(y, "B H L C -> B L (H C)")

        return self.out(y)


class TransformerBlock(nn.Module):
    r"""Modulated transformer block with a gated residual from the input embedding.

    .. math::
        (a, b, c, d) &= W_2\, \mathrm{SiLU}(W_1 m) \\
        y &= (1 + a) \odot \mathrm{LN}(x) + b \\
        y &= \mathrm{FFN}(y + \mathrm{MSA}(y)) \\
        x' &= (x + c \odot y) / \sqrt{1 + c^2} \\
        x'' &= (x' + d \odot s) / \sqrt{1 + d^2}

    where :math:`s` is the un-positioned input embedding (``skip``). The divisions keep
    the residual stream at unit scale whatever the gates. :math:`W_2` is scaled by
    1e-2 at init so every block starts close to the identity.

    Arguments:
        channels: The width :math:`D`.
        mod_features: The modulation size :math:`M`.
        heads: The number of attention heads.
        axes: The number of token coordinates (RoPE).
        ffn_factor: The FFN hidden width factor.
        dropout: The FFN dropout rate.

    Shapes:
        x, skip: :math:`(B, L, D)`; mod: :math:`(B, M)`; coords: :math:`(L, N)`.
    """

    def __init__(
        self,
        channels: int,
        mod_features: int,
        *,
        heads: int,
        axes: int,
        ffn_factor: int = 4,
        dropout: float = 0.05,
    ):
        super().__init__()

        self.modulation = nn.Sequential(
            nn.Linear(mod_features, mod_features),
            nn.SiLU(),
            nn.Linear(mod_features, 4 * channels),
        )
        with torch.no_grad():
            self.modulation[-1].weight.mul_(1e-2)

        self.attn = MultiheadSelfAttention(channels, heads, axes)
        self.ffn = nn.Sequential(
            nn.Linear(channels, ffn_factor * channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_factor * channels, channels),
        )

    def forward(self, x: Tensor, mod: Tensor, coords: Tensor, skip: Tensor) -> Tensor:
        a, b, c, d = self.modulation(mod).unsqueeze(-2).chunk(4, dim=-1)

        y = torch.addcmul(b, _layer_norm(x), 1 + a)
        y = y + self.attn(y, coords)
        y = self.ffn(y)

        # Gates in float32, cast to the residual stream's dtype (float32 under autocast).
        x = torch.addcmul(x, c, y) * torch.rsqrt(1 + c.float().square()).to(x.dtype)
        x = torch.addcmul(x, d, skip) * torch.rsqrt(1 + d.float().square()).to(x.dtype)

        return x


def _as_patch(patch_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    # An int p means (1, p, ..., p): time is never patched unless asked explicitly.
    if isinstance(patch_size, int):
        return (1,) + (patch_size,) * spatial_dims
    patch = tuple(int(p) for p in patch_size)
    if len(patch) == spatial_dims:
        patch = (1, *patch)
    if len(patch) != spatial_dims + 1 or min(patch) < 1:
        raise ValueError(
            f"patch_size must be an int or {spatial_dims} (space) or {spatial_dims + 1} "
            f"(time + space) positive ints, got {patch_size}"
        )
    return patch


class SpatioTemporalTransformer(nn.Module):
    r"""Transformer over the time and space axes of a window (method.md §4).

    Arguments:
        in_channels: The number of input channels :math:`C`.
        out_channels: The number of output channels (default :math:`C`).
        cond_channels: The number of conditioning channels (the context mask,
            broadcast over :math:`C`, so usually :math:`C`); 0 for none.
        mod_features: The modulation size :math:`M`.
        hid_channels: The token width :math:`D`.
        hid_blocks: The number of blocks.
        attention_heads: The number of heads; must divide :math:`D` (with an even
            head dimension, for RoPE).
        ffn_factor: The FFN hidden width factor.
        dropout: The FFN dropout rate.
        patch_size: An int :math:`p` for a :math:`(1, p, \dots, p)` patch or a tuple
            over (time, space) or space.
        spatial_dims: The number of spatial axes (2 or 3).
        checkpointing: Whether to recompute the blocks in the backward pass (pixel
            models).

    Shapes:
        x: :math:`(B, C, T, H, W)` or :math:`(B, C, T, H, W, Z)`.
        mod: :math:`(B, M)`.
        cond: broadcastable to :math:`(B, C_\text{cond}, T, H, W[, Z])` (e.g. a mask
            :math:`(B, 1, T, 1, 1)`).
        returns: :math:`(B, C_\text{out}, T, H, W[, Z])`, in the dtype of :math:`x`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        cond_channels: int = 0,
        mod_features: int = 256,
        hid_channels: int = 1024,
        hid_blocks: int = 16,
        attention_heads: int = 8,
        ffn_factor: int = 4,
        dropout: float = 0.05,
        patch_size: int | Sequence[int] = 1,
        spatial_dims: int = 2,
        checkpointing: bool = False,
    ):
        super().__init__()

        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if hid_channels % attention_heads != 0:
            raise ValueError(f"attention_heads ({attention_heads}) must divide hid_channels ({hid_channels})")
        if (hid_channels // attention_heads) % 2 != 0:
            raise ValueError(
                f"the head dimension hid_channels / attention_heads = "
                f"{hid_channels // attention_heads} must be even (RoPE rotates channel pairs)"
            )
        if hid_channels % 2 != 0:
            raise ValueError(f"hid_channels must be even, got {hid_channels}")

        out_channels = in_channels if out_channels is None else out_channels

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.cond_channels = cond_channels
        self.mod_features = mod_features
        self.hid_channels = hid_channels
        self.spatial_dims = spatial_dims
        self.patch = _as_patch(patch_size, spatial_dims)
        self.checkpointing = checkpointing

        axes = spatial_dims + 1
        volume = math.prod(self.patch)

        self.in_proj = nn.Linear(volume * (in_channels + cond_channels), hid_channels)
        self.pos_encoding = SineEncoding(hid_channels)
        self.pos_proj = nn.Linear(axes * hid_channels, hid_channels)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    hid_channels,
                    mod_features,
                    heads=attention_heads,
                    axes=axes,
                    ffn_factor=ffn_factor,
                    dropout=dropout,
                )
                for _ in range(hid_blocks)
            ]
        )
        self.out_proj = nn.Linear(hid_channels, volume * out_channels)

    def token_grid(self, shape: Sequence[int]) -> tuple[int, ...]:
        r"""Returns the token grid :math:`(T/p_t, H/p_h, \dots)` of a window grid
        :math:`(T, H, \dots)`, or raises a :class:`ValueError` naming the axis that the
        patch does not divide."""

        grid = []
        for name, size, p in zip(_AXIS_NAMES[: len(self.patch)], shape, self.patch, strict=True):
            if size % p != 0:
                raise ValueError(f"patch size {p} does not divide the {name} axis of size {size}")
            grid.append(size // p)
        return tuple(grid)

    def coordinates(self, grid: Sequence[int], device: torch.device | None = None) -> Tensor:
        r"""Returns the integer token coordinates :math:`(L, N)` (float32) of a grid."""

        axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flatten(0, -2)

    def _patchify(self, x: Tensor) -> Tensor:
        names = "t h w z"[: 2 * (self.spatial_dims + 1) - 1].split()
        src = "B C " + " ".join(f"({n} p{n})" for n in names)
        dst = "B (" + " ".join(names) + ") (" + " ".join(f"p{n}" for n in names) + " C)"
        sizes = {f"p{n}": p for n, p in zip(names, self.patch, strict=True)}
        return rearrange(x, f"{src} -> {dst}", **sizes)

    def _unpatchify(self, x: Tensor, grid: Sequence[int]) -> Tensor:
        names = "t h w z"[: 2 * (self.spatial_dims + 1) - 1].split()
        src = "B (" + " ".join(names) + ") (" + " ".join(f"p{n}" for n in names) + " C)"
        dst = "B C " + " ".join(f"({n} p{n})" for n in names)
        sizes = {f"p{n}": p for n, p in zip(names, self.patch, strict=True)}
        sizes.update({n: g for n, g in zip(names, grid, strict=True)})
        return rearrange(x, f"{src} -> {dst}", **sizes)

    def forward(self, x: Tensor, mod: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.ndim != self.spatial_dims + 3:
            raise ValueError(
                f"expected a window of rank {self.spatial_dims + 3} (B, C, T, "
                f"{', '.join(('H', 'W', 'Z')[: self.spatial_dims])}), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        if mod.shape != (x.shape[0], self.mod_features):
            raise ValueError(
                f"expected a modulation of shape {(x.shape[0], self.mod_features)}, got {tuple(mod.shape)}"
            )

        grid = self.token_grid(x.shape[2:])

        if self.cond_channels > 0:
            if cond is None:
                raise ValueError("this backbone expects a conditioning tensor (cond_channels > 0)")
            target = (x.shape[0], self.cond_channels, *x.shape[2:])
            try:
                cond = cond.to(x.dtype).expand(target)
            except RuntimeError:
                raise ValueError(
                    f"conditioning of shape {tuple(cond.shape)} does not broadcast to {target}"
                ) from None
            x_in = torch.cat((x, cond), dim=1)
        else:
            x_in = x

        # The residual stream stays in the input dtype (float32 under autocast) and
        # only the Linear layers run in the autocast dtype.
        tokens = self.in_proj(self._patchify(x_in)).to(x.dtype)
        coords = self.coordinates(grid, device=x.device)

        skip = tokens
        pos = self.pos_encoding(coords).flatten(-2)  # (L, N·D)
        h = tokens + self.pos_proj(pos).to(x.dtype)

        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, mod, coords, skip, use_reentrant=False)
            else:
                h = block(h, mod, coords, skip)

        y = self.out_proj(h).to(x.dtype)
        return self._unpatchify(y, grid)


def build_backbone(
    preset: str = "smoke",
    *,
    in_channels: int,
    out_channels: int | None = None,
    cond_channels: int | None = None,
    spatial_dims: int = 2,
    **overrides,
) -> SpatioTemporalTransformer:
    r"""Builds a :class:`SpatioTemporalTransformer` from :data:`EMULATOR_PRESETS`.

    Arguments:
        preset: A key of :data:`EMULATOR_PRESETS`.
        in_channels: The number of data channels :math:`C`.
        out_channels: The number of output channels (default :math:`C`).
        cond_channels: The number of mask channels (default :math:`C`, the mask
            broadcast over channels as in the reference).
        spatial_dims: 2 or 3.
        overrides: Keyword arguments that replace the preset's.
    """

    if preset not in EMULATOR_PRESETS:
        raise ValueError(f"unknown emulator preset {preset!r}, expected one of {sorted(EMULATOR_PRESETS)}")

    kwargs = {**EMULATOR_PRESETS[preset], **overrides}
    return SpatioTemporalTransformer(
        in_channels=in_channels,
        out_channels=out_channels,
        cond_channels=in_channels if cond_channels is None else cond_channels,
        spatial_dims=spatial_dims,
        **kwargs,
    )
