"""``--plan``: FLOPs equal a hand count, paper-size parameter counts equal method.md, and a
misconfigured paper profile fails before anything runs. Everything is counted on the meta
device, so the paper-size networks cost nothing here."""

import dataclasses
import math

import pytest

from lolaray.sweeps import compression, context
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.dry_run import within_stated_digits
from lolaray.sweeps.plan import WELL_GEOMETRY, plan_context_sweep, plan_dataset, plan_study
from lolaray.sweeps.step_costs import autoencoder_cost, emulator_cost
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.transformer import EMULATOR_PRESETS


@pytest.fixture(autouse=True)
def _no_gemm_probe(monkeypatch):
    """--plan's default peak is this machine's, measured and cached in the user's data cache:
    here a fixed figure, neither measured nor written."""
    monkeypatch.setattr(
        "lolaray.sweeps.plan.machine_gemm_peak",
        lambda: (3.1e11, "fp32 GEMM peak 310 GFLOP/s (fixed for the tests)"),
    )


def _linear(rows, fan_in, fan_out):
    return 2 * rows * fan_in * fan_out


def _hand_count(kind, *, B, C, T, H, W, theta):
    """Forward FLOPs of the emulator on windows (B, C, T, H, W), and the FLOPs of the layers
    whose input needs no gradient (their backward computes the weight gradient only)."""
    p = EMULATOR_PRESETS["smoke"]
    D, M, F, K = p["hid_channels"], p["mod_features"], p["ffn_factor"], p["hid_blocks"]
    L, axes = T * H * W, 3  # patch 1: one token per latent pixel; coordinates (t, h, w)
    first_layers = _linear(B * L, 2 * C, D)  # in_proj on [x, mask]
    first_layers += _linear(L, axes * D, D)  # pos_proj on the sine features of the coordinates
    first_layers += _linear(B, theta, M)  # label embedding, first layer
    forward = _linear(B, M, M)  # label embedding, second layer
    if kind == "diffusion":
        first_layers += _linear(B, M, M)  # time embedding, first layer (on sine features of c_noise)
        forward += _linear(B, M, M)
    rope = K * _linear(L, axes, D // 2)  # angles = coords @ Theta per block
    first_layers += rope
    for _ in range(K):
        forward += _linear(B, M, M) + _linear(B, M, 4 * D)  # modulation (a, b, c, d)
        forward += _linear(B * L, D, 3 * D)  # qkv
        forward += 2 * 2 * B * L * L * D  # q k^T and attention @ v, all heads together
        forward += _linear(B * L, D, D)  # attention output
        forward += _linear(B * L, D, F * D) + _linear(B * L, F * D, D)  # FFN
    forward += _linear(B * L, D, C)  # out_proj
    return forward + first_layers, first_layers


@pytest.mark.parametrize("kind", ["diffusion", "solver"])
def test_plan_flops_equal_a_hand_count_for_the_smoke_emulator(kind):
    C, H, W, theta, B = 4, 4, 4, 5, 3
    config = EmulatorConfig(kind=kind, preset="smoke", batch_size=B)
    cost = emulator_cost(config, (C, H, W), theta)
    forward, first_layers = _hand_count(kind, B=B, C=C, T=config.window, H=H, W=W, theta=theta)
    # Backward: gradient of input and of weight for every matrix product (2x the forward),
    # except that the first layers' inputs need none.
    assert cost.train.flops == forward + 2 * forward - first_layers
    single, _ = _hand_count(kind, B=1, C=C, T=config.window, H=H, W=W, theta=theta)
    assert cost.forward.flops == single
    assert cost.tokens == config.window * H * W


def test_plan_flops_equal_a_hand_count_for_a_convolution():
    # A one-level autoencoder without blocks: stem conv, latent conv; decoder: input conv, output conv.
    config = AutoencoderConfig(
        preset="smoke",
        latent_channels=3,
        batch_size=2,
        architecture={"hidden_channels": (8,), "hidden_blocks": (0,)},
    )
    info, _ = plan_dataset("euler_quadrants:smoke")
    cost = autoencoder_cost(config, info)
    pixels, C = 32 * 32, info.n_fields

    def conv(c_in, c_out, batch):
        return 2 * batch * pixels * c_in * c_out * 9

    layers = [(C, 8), (8, 3), (3, 8), (8, C)]
    forward = sum(conv(a, b, 2) for a, b in layers)
    assert cost.train.flops == 3 * forward - conv(C, 8, 2)  # the stem's input needs no gradient
    assert cost.encode.flops == conv(C, 8, 1) + conv(8, 3, 1)
    assert cost.decode.flops == conv(3, 8, 1) + conv(8, C, 1)


def test_stage_totals_are_steps_times_workers_times_step_plus_validation():
    profile = PROFILES["smoke"]
    info, trajectories = plan_dataset(profile.dataset)
    plan = plan_study(profile, info, (4,), trajectories=trajectories, pixel=False)
    ae = plan.networks[next(n for n in plan.networks if n.startswith("autoencoder"))]
    stage = next(s for s in plan.stages if s.name == "c4/autoencoder")
    loop = profile.autoencoder.loop
    expected = (
        loop.total_steps * ae.train.flops + loop.epochs * profile.autoencoder.valid_states * ae.forward.flops
    )
    assert stage.flops == expected
    assert stage.steps == loop.total_steps
    train_cache = next(s for s in plan.stages if s.name == "c4/latents/train")
    assert train_cache.steps == trajectories["train"] * profile.repeat * info.n_steps
    assert plan.device_hours(stage) == pytest.approx(expected / (312e12 * 0.4) / 3600)
    assert [s.name for s in plan.stages] == [
        "c4/autoencoder",
        "c4/latents/train",
        "c4/latents/valid",
        "c4/latents/test",
        "c4/diffusion",
        "c4/evaluation/diffusion",
        "c4/solver",
        "c4/evaluation/solver",
    ]


def test_evaluation_calls_follow_the_rollout_windows():
    # Euler at stride 4: 26 states; context = overlap c adds 5 - c states a window: 7, 8, 12 windows.
    profile = PROFILES["paper"]
    info, _ = plan_dataset(profile.dataset)
    plan = plan_study(profile, info, (64,), pixel=False)
    stage = next(s for s in plan.stages if s.name == "c64/evaluation/diffusion")
    assert stage.steps == profile.trajectories * (7 + 8 + 12) * profile.sampler_steps


# method.md §2 and §4, §10: the reference's parameter counts.
PAPER_COUNTS = [
    ("autoencoder", "paper", "euler_multi_quadrants_openBC", 3.13e8),
    ("autoencoder", "paper_small", "euler_multi_quadrants_openBC", 7.9e7),
    ("autoencoder", "paper_3d", "turbulence_gravity_cooling", 7.41e8),
    ("denoiser", "paper", "euler_multi_quadrants_openBC", 2.23e8),
    ("pixel solver", "paper_pixel", "euler_multi_quadrants_openBC", 8.6e8),
]


@pytest.mark.parametrize("network,preset,dataset,stated", PAPER_COUNTS)
def test_paper_size_parameter_counts_equal_method_md(network, preset, dataset, stated):
    info, _ = plan_dataset(dataset)
    if network == "autoencoder":
        cost = autoencoder_cost(AutoencoderConfig(preset=preset, latent_channels=64, batch_size=1), info)
    else:
        kind, space = ("diffusion", "latent") if network == "denoiser" else ("solver", "pixel")
        shape = (64, 16, 16) if space == "latent" else info.state_shape
        cost = emulator_cost(
            EmulatorConfig(kind=kind, space=space, preset=preset, batch_size=1), shape, info.theta_dim
        )
    assert within_stated_digits(cost.parameters, stated), (network, cost.parameters, stated)


def test_the_count_check_can_fail():
    assert within_stated_digits(313_098_629, 3.13e8)
    assert not within_stated_digits(313_600_000, 3.13e8)
    assert not within_stated_digits(222_888_256, 2.2e8 * 1.05)


def test_paper_plan_covers_every_stage_in_seconds():
    profile = PROFILES["paper"]
    info, trajectories = plan_dataset(profile.dataset)
    assert info.state_shape == (5, *WELL_GEOMETRY["euler_multi_quadrants_openBC"]["resolution"])
    plan = plan_study(profile, info, profile.latent_channels, trajectories=trajectories)
    assert len(plan.stages) == 3 * 8 + 2
    assert plan.total_device_hours > 100  # GPU-days, as the paper's training took
    assert all(s.flops is None for s in plan.stages if s.kind == "encode")  # trajectory counts unknown


def _misconfigured(**changes):
    paper = PROFILES["paper"]
    emulator = dataclasses.replace(paper.emulator, **changes.get("emulator", {}))
    pixel = dataclasses.replace(paper.pixel_emulator, **changes.get("pixel", {}))
    return dataclasses.replace(paper, emulator=emulator, pixel_emulator=pixel)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"emulator": {"architecture": {"attention_heads": 7}}}, "heads"),
        ({"pixel": {"architecture": {"patch_size": 24}}}, "patch"),
    ],
)
def test_a_misconfigured_paper_profile_fails_in_plan_before_any_worker(monkeypatch, capsys, changes, message):
    monkeypatch.setitem(compression.PROFILES, "paper", _misconfigured(**changes))

    def no_ray(*args, **kwargs):
        raise AssertionError("--plan must not start Ray")

    # Both doors into Ray are closed (the test session may already hold an embedded Ray, so
    # ray.is_initialized() says nothing about this call).
    monkeypatch.setattr("lolaray.platform.session.start_ray", no_ray)
    monkeypatch.setattr("ray.init", no_ray)
    assert compression.main(["--profile", "paper", "--plan"]) == 2
    out = capsys.readouterr().out
    assert "would fail" in out and message in out


def test_a_grid_the_autoencoder_factor_does_not_divide_is_padded_and_the_patch_refused_in_plan():
    profile = PROFILES["paper"]
    info, _ = plan_dataset("rayleigh_benard")
    info = dataclasses.replace(info, resolution=(512, 100))  # 100 is not a multiple of r = 32
    # The autoencoder pads 100 to 128 (4 latent cells); the pixel solver's 16-cell patches
    # cannot tile 100 cells, and the plan says so before any worker starts.
    with pytest.raises(ValueError, match="patch size 16 does not divide the grid"):
        plan_study(profile, info, (64,))


def test_the_paper_plan_prints_from_the_command_line(capsys):
    assert compression.main(["--profile", "paper", "--plan", "--no-pixel", "--latent-channels", "64"]) == 0
    out = capsys.readouterr().out
    assert "222,888,256" in out and "313,098,629" in out  # c64 denoiser and autoencoder
    assert "8 worker(s) x {CPU: 1, GPU: 1}" in out
    assert "device-hours" in out


def test_plan_rejects_a_bad_utilisation():
    profile = dataclasses.replace(
        PROFILES["smoke"], autoencoder=dataclasses.replace(PROFILES["smoke"].autoencoder, loop=LoopConfig())
    )
    info, _ = plan_dataset(profile.dataset)
    with pytest.raises(ValueError, match="utilisation"):
        plan_study(profile, info, (4,), utilisation=1.5)


def test_context_sweep_plan_counts_one_evaluation_per_emulator_context_and_steps(capsys):
    profile = PROFILES["smoke"]
    info, trajectories = plan_dataset(profile.dataset)
    plan = plan_context_sweep(profile, info, (4,), contexts=(1, 2), steps=(4, 8), trajectories=trajectories)
    names = [s.name for s in plan.stages]
    assert names == [
        "c4/diffusion/context 1/4 steps",
        "c4/diffusion/context 1/8 steps",
        "c4/diffusion/context 2/4 steps",
        "c4/diffusion/context 2/8 steps",
        "c4/solver/context 1",
        "c4/solver/context 2",
        "pixel/solver/context 1",
        "pixel/solver/context 2",
    ]
    assert all(s.kind == "evaluate" for s in plan.stages)
    rollouts, states = trajectories["test"], (info.n_steps - 1) // profile.emulator.stride + 1
    windows = 1 + math.ceil((states - 5) / (5 - 2))
    assert plan.stages[3].steps == min(profile.trajectories, rollouts) * windows * 8
    with pytest.raises(ValueError, match="contexts"):
        plan_context_sweep(profile, info, (4,), contexts=(5,), steps=(4,))
    assert context.main(["--profile", "smoke", "--plan", "--contexts", "1", "--steps", "4"]) == 0
    assert "one Ray Tune trial per evaluation" in capsys.readouterr().out
