"""Unit tests of the convolutional autoencoder (method.md §2) and the optimizer helpers."""

from __future__ import annotations

import io
import math
import statistics
import time

import heavyball
import heavyball.utils
import pytest
import torch

from lolaray.trainers.autoencoder import (
    AUTOENCODER_PRESETS,
    AutoEncoder,
    ChannelLayerNorm,
    DepthToSpace,
    SpaceToDepth,
    build_autoencoder,
    compression_rate,
    identity_init_,
    saturate,
    vmse_loss,
    vmse_per_field,
)
from lolaray.trainers.optim import OPTIMIZERS, build_optimizer, cosine_schedule


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These nets are tiny: threads buy nothing, and on a shared 2-core machine OpenMP
    # oversubscription made heavyball's many small kernels ~10x slower (measured). Restore after.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def smooth_field(*, batch: int, channels: int, size: int, spatial_dims: int = 2, amplitude: float = 1.0):
    """Low-frequency periodic sines, ``(batch, channels, size, ...)``, values in [-amplitude, amplitude]."""
    grid = torch.linspace(0.0, 2.0 * math.pi, size + 1)[:-1]
    axes = torch.meshgrid(*([grid] * spatial_dims), indexing="ij")
    samples = []
    for b in range(batch):
        fields = []
        for c in range(channels):
            f = torch.ones_like(axes[0])
            for a, coord in enumerate(axes):
                f = f * torch.cos((1 + (c + a) % 2) * coord + 0.7 * c + 0.4 * b + a)
            fields.append(amplitude * f)
        samples.append(torch.stack(fields))
    return torch.stack(samples)


def relative_error(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return ((x_hat - x).norm() / x.norm()).item()


# ------------------------------------------------------------------------------------------
# Shapes, presets, compression rates
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latent_channels", "rate"),
    # The paper's Euler rates: 64x64x5 fields, r=16, C_lat 16/4/1.
    [(16, 80.0), (4, 320.0), (1, 1280.0)],
)
def test_euler_compression_rates_r16(latent_channels, rate):
    model = build_autoencoder("small_r16", pixel_channels=5, latent_channels=latent_channels).eval()
    assert model.spatial_factor == 16
    assert model.latent_shape((5, 64, 64)) == (latent_channels, 4, 4)
    x = smooth_field(batch=1, channels=5, size=64)
    with torch.no_grad():
        x_hat, z = model(x)
    assert z.shape == (1, latent_channels, 4, 4)
    assert x_hat.shape == x.shape
    assert compression_rate(tuple(x.shape[1:]), tuple(z.shape[1:])) == rate


@pytest.mark.parametrize(
    ("preset", "pixel_channels", "pixel_shape", "latent_shape", "rate", "params"),
    [
        # Paper sizes, checked on the meta device (no memory, no compute): latent shapes,
        # compression 80 / 48 at C_lat=64, and parameter counts of method.md §2.
        ("paper", 5, (5, 512, 512), (64, 16, 16), 80.0, 3.13e8),
        ("paper_small", 5, (5, 512, 512), (64, 16, 16), 80.0, 7.9e7),
        ("paper_3d", 6, (6, 64, 64, 64), (64, 8, 8, 8), 48.0, 7.41e8),
    ],
)
def test_paper_presets_on_meta(preset, pixel_channels, pixel_shape, latent_shape, rate, params):
    with torch.device("meta"):
        model = build_autoencoder(preset, pixel_channels=pixel_channels, latent_channels=64)
        x_hat, z = model(torch.empty(2, *pixel_shape))
    assert model.latent_shape(pixel_shape) == latent_shape
    assert tuple(z.shape) == (2, *latent_shape)
    assert tuple(x_hat.shape) == (2, *pixel_shape)
    assert compression_rate(pixel_shape, latent_shape) == rate
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(params, rel=0.01)


@pytest.mark.parametrize(
    ("preset", "pixel_shape", "periodic"),
    [
        ("smoke", (5, 32, 32), False),
        ("smoke", (4, 16, 48), True),
        ("demo", (5, 32, 64), False),
        ("smoke_3d", (6, 8, 8, 16), False),
        ("smoke_3d", (2, 8, 4, 6), True),
    ],
)
def test_roundtrip_shapes(preset, pixel_shape, periodic):
    c = pixel_shape[0]
    model = build_autoencoder(preset, pixel_channels=c, latent_channels=3, periodic=periodic).eval()
    r = model.spatial_factor
    expected = (3, *(s // r for s in pixel_shape[1:]))
    assert model.latent_shape(pixel_shape) == expected
    x = torch.randn(2, *pixel_shape)
    with torch.no_grad():
        z = model.encode(x)
        x_hat = model.decode(z)
    assert tuple(z.shape) == (2, *expected)
    assert x_hat.shape == x.shape
    assert torch.isfinite(x_hat).all()


def test_preset_r_values():
    expected = {"paper": 32, "paper_small": 32, "paper_3d": 8, "smoke": 2, "smoke_3d": 2, "demo": 8}
    expected["small_r16"] = 16
    expected["small_r8"] = 8
    assert set(expected) == set(AUTOENCODER_PRESETS)
    for name, r in expected.items():
        with torch.device("meta"):
            model = build_autoencoder(name, pixel_channels=5, latent_channels=4)
        assert model.spatial_factor == r, name


# ------------------------------------------------------------------------------------------
# Saturation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e3, 1e8, 1e30])
def test_latent_strictly_inside_bound_for_huge_inputs(scale):
    model = build_autoencoder("smoke", pixel_channels=5, latent_channels=4).eval()
    x = scale * torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        z = model.encode(x)
        raw = model.encoder(x)
    assert torch.isfinite(z).all()
    assert raw.abs().max() > 5.0  # the saturation really had work to do
    assert (z.abs() < 5.0).all()


def test_saturate_formula_and_extremes():
    z = torch.tensor([-3.0, -0.5, 0.0, 0.1, 2.0, 7.0])
    expected = z / torch.sqrt(1 + z**2 / 25)
    torch.testing.assert_close(saturate(z, 5.0), expected)
    huge = torch.tensor([1e5, -1e20, 3e38, -3e38])
    out = saturate(huge, 5.0)
    assert torch.isfinite(out).all() and (out.abs() < 5.0).all()
    # without saturation, the latent is unbounded
    model = build_autoencoder("smoke", pixel_channels=5, latent_channels=4, saturation_bound=None).eval()
    with torch.no_grad():
        assert model.encode(1e3 * torch.randn(1, 5, 8, 8)).abs().max() > 5.0


# ------------------------------------------------------------------------------------------
# Identity initialisation
# ------------------------------------------------------------------------------------------


def _identity_io(model: AutoEncoder) -> AutoEncoder:
    """Make the stem/head identity too and zero every conv bias.

    Per method.md §2 the stem (C_pix -> h0) and head (h0 -> C_pix) convs keep PyTorch's
    default (random) init even with ``identity_init=True``, and all biases keep their default
    U(±1/sqrt(fan_in)) init: at init the model is therefore *not* close to the identity on
    pixels — it is head ∘ (near-identity trunk) ∘ stem plus a bias offset of ~0.1-0.4 relative
    error (measured). The identity claim concerns the weights of the trunk (down/up convs,
    latent in/out convs, ResBlocks), so the test makes the stem/head identity as well and
    removes the biases, then checks the whole encode/decode path.
    """
    identity_init_(model.encoder.stem)
    identity_init_(model.decoder.head)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d):
                module.bias.zero_()
    return model


@pytest.mark.parametrize(
    ("spatial_dims", "pixel_channels", "hidden", "size"),
    [
        (2, 5, (8, 24), 32),  # r=2: 5·4 = 20 pixel dofs per latent pixel
        (2, 5, (8, 24, 96), 32),  # r=4: 5·16 = 80
        (3, 2, (4, 16), 8),  # 3-D, r=2: 2·8 = 16
    ],
)
@pytest.mark.parametrize("periodic", [False, True])
def test_identity_init_roundtrip(spatial_dims, pixel_channels, hidden, size, periodic):
    # With identity init the stem tiles the C_pix pixel channels over h0, each space-to-depth
    # conv keeps its first C_out input channels (= all offsets of the first C_out/2^d channels),
    # the latent conv keeps the first C_lat channels, and the decoder's convs tile their input,
    # which after depth-to-space undoes the encoder's rearrangement for the kept channels.
    # The pixel channels survive iff every level keeps them: h_i >= C_pix·2^(d·i) and
    # C_lat >= C_pix·r^d. With fewer latent channels information is destroyed by construction,
    # so we pick C_lat = C_pix·r^d exactly (checked below by the negative case).
    r = 2 ** (len(hidden) - 1)
    latent_channels = pixel_channels * r**spatial_dims
    kw = {
        "pixel_channels": pixel_channels,
        "hidden_channels": hidden,
        "hidden_blocks": (1,) * len(hidden),
        "spatial_dims": spatial_dims,
        "dropout": 0.0,
        "periodic": periodic,
    }
    # Moderate amplitude: the saturation z/sqrt(1+z²/25) shrinks z=1 by 2%.
    x = smooth_field(batch=2, channels=pixel_channels, size=size, spatial_dims=spatial_dims)

    def roundtrip_error(**extra) -> float:
        torch.manual_seed(0)
        model = _identity_io(AutoEncoder(**kw, **extra)).eval()
        with torch.no_grad():
            return relative_error(model.decode(model.encode(x)), x)

    with_identity = roundtrip_error(latent_channels=latent_channels, identity_init=True)
    without_identity = roundtrip_error(latent_channels=latent_channels, identity_init=False)
    # Measured ≈0.02 vs ≈1.0.
    assert with_identity < 0.06
    assert without_identity > 0.5
    assert without_identity > 10 * with_identity
    # Negative control: a quarter of the needed latent channels drops 3/4 of the information.
    dropped = roundtrip_error(latent_channels=latent_channels // 4, identity_init=True)
    assert dropped > 0.5


def test_identity_init_pattern():
    for c_in, c_out in [(12, 5), (3, 8)]:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        default = conv.weight.detach().clone()
        identity_init_(conv)
        eye = conv.weight.detach() - 1e-2 * default
        expected = torch.zeros_like(eye)
        for o in range(c_out):
            expected[o, o % c_in, 1, 1] = 1.0
        torch.testing.assert_close(eye, expected)


def test_space_to_depth_channel_order():
    x = torch.randn(2, 3, 4, 6)
    y = SpaceToDepth(spatial_dims=2)(x)
    assert y.shape == (2, 12, 2, 3)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(y[:, c * 4 + i * 2 + j], x[:, c, i::2, j::2])
    torch.testing.assert_close(DepthToSpace(spatial_dims=2)(y), x)
    x3 = torch.randn(1, 2, 4, 2, 6)
    y3 = SpaceToDepth(spatial_dims=3)(x3)
    torch.testing.assert_close(y3[:, 1 * 8 + 1 * 4 + 0 * 2 + 1], x3[:, 1, 1::2, 0::2, 1::2])
    torch.testing.assert_close(DepthToSpace(spatial_dims=3)(y3), x3)


def test_channel_layer_norm_unbiased():
    x = torch.randn(2, 6, 3, 5)
    y = ChannelLayerNorm()(x)
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).sum(dim=1, keepdim=True) / (x.shape[1] - 1)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-5))


# ------------------------------------------------------------------------------------------
# Periodic padding
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spatial_dims", "preset"), [(2, "demo"), (3, "smoke_3d")])
def test_periodic_encoder_is_shift_equivariant(spatial_dims, preset):
    torch.manual_seed(0)
    size = 32 if spatial_dims == 2 else 8
    dims = tuple(range(2, 2 + spatial_dims))
    x = torch.randn(1, 3, *([size] * spatial_dims))

    def shift_error(periodic: bool) -> float:
        torch.manual_seed(0)
        model = build_autoencoder(preset, pixel_channels=3, latent_channels=4, periodic=periodic).eval()
        r = model.spatial_factor
        steps = (1, -2, 3)[:spatial_dims]  # latent-pixel shifts; pixel shifts are multiples of r
        with torch.no_grad():
            z = model.encode(x)
            z_shifted = model.encode(torch.roll(x, [s * r for s in steps], dims))
        return relative_error(z_shifted, torch.roll(z, list(steps), dims))

    assert shift_error(periodic=True) < 1e-5
    assert shift_error(periodic=False) > 1e-3  # zero padding breaks it at the borders


# ------------------------------------------------------------------------------------------
# Training: a tiny autoencoder overfits a handful of states
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "lr"), [("psgd", 3e-3), ("adam", 3e-3)])
def test_overfits_a_few_states(name, lr):
    torch.manual_seed(0)
    x = smooth_field(batch=4, channels=5, size=16) + 0.3 * torch.randn(4, 5, 16, 16)
    model = build_autoencoder("smoke", pixel_channels=5, latent_channels=8, dropout=0.0)
    optimizer = build_optimizer(model.parameters(), name=name, lr=lr)
    losses = []
    for _ in range(80):
        loss = vmse_loss(model(x)[0], x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Measured: psgd 1.03 -> ~0.04, adam 1.03 -> ~0.005 after 80 steps.
    assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])


# ------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------


def test_vmse_zero_for_identical_inputs():
    x = torch.randn(3, 4, 8, 8)
    assert vmse_loss(x, x).item() == 0.0
    assert vmse_loss(x, x, root=True).item() == 0.0


def test_vmse_known_value_and_root():
    # One sample, two fields of 4 pixels; unbiased variances 5/3 and 0.
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [2.0, 2.0, 2.0, 2.0]]])
    x_hat = x + torch.tensor([[[1.0], [0.5]]])
    per_field = vmse_per_field(x_hat, x, eps=1e-2)
    expected = torch.tensor([[1.0 / (5.0 / 3.0 + 1e-2), 0.25 / 1e-2]])
    torch.testing.assert_close(per_field, expected)
    torch.testing.assert_close(vmse_loss(x_hat, x), expected.mean())
    torch.testing.assert_close(vmse_loss(x_hat, x, root=True), expected.sqrt().mean())
    torch.testing.assert_close(vmse_per_field(x_hat, x, root=True), expected.sqrt())


def test_vmse_normalises_each_field_by_its_own_variance():
    # Scaling one field (both prediction and target) must not change the loss: VMSE is
    # scale-invariant per field once the variance dominates eps.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    x_hat = x + 0.1 * torch.randn_like(x)
    scale = torch.tensor([1.0, 100.0, 0.5]).view(1, 3, 1, 1)
    a = vmse_per_field(x_hat, x, eps=0.0)
    b = vmse_per_field(scale * x_hat, scale * x, eps=0.0)
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------
# Configuration errors
# ------------------------------------------------------------------------------------------

_SMALL = {"pixel_channels": 5, "hidden_channels": (8, 16), "hidden_blocks": (1, 1)}


@pytest.mark.parametrize("latent_channels", [0, -3])
def test_rejects_non_positive_latent_channels(latent_channels):
    with pytest.raises(ValueError, match="latent_channels"):
        AutoEncoder(latent_channels=latent_channels, **_SMALL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_channels": (), "hidden_blocks": ()}, "hidden_channels must not be empty"),
        ({"hidden_channels": (8, 16), "hidden_blocks": (1,)}, "one entry per level"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"saturation_bound": 0.0}, "saturation_bound"),
    ],
)
def test_rejects_bad_architecture(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoEncoder(**{**_SMALL, "latent_channels": 4, **kwargs})


def test_rejects_indivisible_resolution():
    model = build_autoencoder("small_r16", pixel_channels=5, latent_channels=4)
    with pytest.raises(ValueError, match=r"axis 1 \(W\) has size 40.*r=16"):
        model.encode(torch.randn(1, 5, 64, 40))
    with pytest.raises(ValueError, match=r"axis 0 \(H\) has size 24"):
        model.latent_shape((5, 24, 64))


def test_rejects_bad_input_rank_and_channels():
    model = build_autoencoder("smoke", pixel_channels=5, latent_channels=4)
    with pytest.raises(ValueError, match="4-D tensor"):
        model.encode(torch.randn(5, 16, 16))
    with pytest.raises(ValueError, match="expected 5 channels"):
        model.encode(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="expected 4 channels"):
        model.decode(torch.randn(1, 5, 8, 8))


def test_rejects_unknown_preset_and_optimizer():
    with pytest.raises(ValueError, match="unknown autoencoder preset 'huge'.*smoke"):
        build_autoencoder("huge", pixel_channels=5, latent_channels=4)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'.*psgd"):
        build_optimizer([torch.nn.Parameter(torch.zeros(3))], name="sgd", lr=1e-3)


# ------------------------------------------------------------------------------------------
# Optimizer helpers
# ------------------------------------------------------------------------------------------


def test_psgd_settings_step_time_and_state_dict():
    model = build_autoencoder("smoke", pixel_channels=5, latent_channels=4, dropout=0.0)
    optimizer = build_optimizer(model.parameters(), name="psgd", lr=1e-3)
    assert isinstance(optimizer, heavyball.PSGDKron)
    assert heavyball.utils.compile_mode is None  # CPU parameters -> eager heavyball
    group = optimizer.param_groups[0]
    assert group["beta"] == 0.9 and group["max_size_triangular"] == 4096
    assert group["delayed"] and group["cached"] and not group["merge_dims"]
    schedule = optimizer.precond_schedule
    assert schedule(1) == pytest.approx(0.999) and schedule(10_000) == pytest.approx(1 / 64)

    x = torch.randn(2, 5, 16, 16)
    times = []
    for _ in range(6):
        loss = vmse_loss(model(x)[0], x)
        optimizer.zero_grad()
        loss.backward()
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    # Measured ≈0.05 s uncompiled (a first compiled call takes minutes on CPU).
    assert statistics.median(times) < 1.0

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_optimizer(model.parameters(), name="psgd", lr=1e-3)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))


# The scheduler is stepped before the first optimizer step on purpose (to reach factor 0).
@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cosine_schedule_drives_every_optimizer(name):
    param = torch.nn.Parameter(torch.ones(4, 4))
    optimizer = build_optimizer([param], name=name, lr=0.1)
    scheduler = cosine_schedule(optimizer, total_steps=1)
    scheduler.step()  # factor (1 + cos(pi)) / 2 = 0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    before = param.detach().clone()
    param.grad = torch.ones_like(param)
    optimizer.step()
    torch.testing.assert_close(param.detach(), before)  # the optimizer honours the schedule


def test_cosine_schedule_values():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cosine_schedule(optimizer, total_steps=10)
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [(1 + math.cos(math.pi * s / 10)) / 2 for s in range(11)]
    assert lrs == pytest.approx(expected)

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = cosine_schedule(optimizer, total_steps=12, warmup_steps=4).lr_lambdas[0]
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(8) == pytest.approx(0.5) and factor(12) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(optimizer, total_steps=5, warmup_steps=5)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(optimizer, total_steps=0)
