"""Overfit checks of the whole chain, scored by the evaluation stage's own code (issue 15).

An autoencoder is overfit on the 13 states of one test trajectory of a tiny embedded Euler
dataset and a latent neural solver on that trajectory's latent windows; both are saved in
the artifact layout the stages write, loaded back by
:class:`~lolaray.evaluation.rollout_actor.RolloutActor` (which reads the test split, standardizes,
encodes, rolls out, decodes and returns to physical units exactly as in a study), and its
outputs are checked:

* the reconstruction VRMSE in physical units (the actor's ``recon_vrmse``) is below 0.01;
* the actor's "truth" is the raw physical data of the file (de-standardization is right),
  and an independent recomputation from the raw data gives the same VRMSE;
* the solver's rollout through :func:`~lolaray.evaluation.rollout.rollout` tracks the truth,
  far better than persistence (repeating the initial state).

If any link were wrong (standardization, the inverse transform, encode/decode, the rollout's
windowing or the metric), a network trained to near-zero loss would still score badly here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lolaray.evaluation.ensemble_statistics import EnsembleStatistics
from lolaray.evaluation.metrics import vrmse
from lolaray.evaluation.rollout_actor import RolloutActor
from lolaray.platform.data import WellWindows, open_dataset, standardizer_for
from lolaray.platform.embedded import EmbeddedPreset, generate_dataset
from lolaray.trainers.autoencoder import AUTOENCODER_PRESETS, AutoEncoder, vmse_loss
from lolaray.trainers.diffusion import context_mask
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.optim import build_optimizer, cosine_schedule
from lolaray.trainers.snapshots import load_autoencoder, save_autoencoder, save_emulator
from lolaray.trainers.solver import solver_loss
from lolaray.trainers.step import TrainingStep

# 16² states, 13 snapshots: the whole chain trains in well under a minute on 2 cores.
TINY = EmbeddedPreset(
    resolution=16,
    gammas=(1.4,),
    boundaries=("periodic",),
    trajectories=(("train", 1), ("valid", 1), ("test", 1)),
    n_snapshots=13,
)
# r = 2 and C_lat = 20: 20×8×8 latents for 5×16×16 states (÷1), so the overfit is limited
# by optimization only, not by the bottleneck.
AE_KWARGS = {
    **AUTOENCODER_PRESETS["smoke"],
    "hidden_blocks": (0, 0),
    "dropout": 0.0,
    "pixel_channels": 5,
    "latent_channels": 20,
}
WINDOW = 3


def _train(model, loss_fn, *, optimizer: str, lr: float, steps: int) -> float:
    """Full-batch training with a cosine schedule and clip 1: the training loop's step."""
    opt = build_optimizer(model.parameters(), name=optimizer, lr=lr)
    train_step = TrainingStep(
        model, opt, loss=lambda _m, _batch, _device: (loss_fn(), 1), scheduler=cosine_schedule(opt, steps)
    )
    model.train()
    for _ in range(steps):
        outcome = train_step(None)
    model.eval()
    return outcome.loss


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    root = tmp_path_factory.mktemp("overfit") / "tiny"
    generate_dataset(TINY, root, parallel="local", progress=False)
    info = open_dataset(str(root))
    standardizer = standardizer_for(info)
    item = WellWindows(info, "test", length=None, standardizer=standardizer)[0]
    states = item["x"].movedim(1, 0).contiguous()  # (T, C, H, W), standardized

    # The autoencoder, with the paper's optimizer: Adam plateaus near VRMSE 0.03-0.05 here
    # (the fields' per-sample variances differ by 100x: an ill-conditioned VMSE).
    autoencoder = AutoEncoder(**AE_KWARGS)
    ae_loss = _train(
        autoencoder, lambda: vmse_loss(autoencoder(states)[0], states), optimizer="psgd", lr=2e-3, steps=400
    )
    ae_dir = root.parent / "autoencoder"
    ae_dir.mkdir()
    save_autoencoder(ae_dir, autoencoder, AE_KWARGS, standardizer)

    # The latent solver on every window of the trajectory's latents, context 1 as rolled out.
    loaded, _ = load_autoencoder(ae_dir)
    with torch.no_grad():
        z = loaded.encode(states).movedim(0, 1)  # (C_lat, T, h, w)
    windows = torch.stack([z[:, t : t + WINDOW] for t in range(z.shape[1] - WINDOW + 1)])
    theta = item["theta"].expand(windows.shape[0], -1)
    config = EmulatorConfig(kind="solver", preset="smoke", window=WINDOW, stride=1)
    state_shape = tuple(z.shape[:1] + z.shape[2:])
    solver = build_emulator(config, state_shape, theta.shape[1])
    mask = context_mask(windows.shape[0], WINDOW, 1)
    solver_final = _train(
        solver, lambda: solver_loss(solver, windows, theta, mask), optimizer="adamw", lr=3e-3, steps=400
    )
    solver_dir = root.parent / "solver"
    solver_dir.mkdir()
    save_emulator(solver_dir, solver, config, state_shape, theta.shape[1])

    actor = RolloutActor(
        emulator_dir=str(solver_dir),
        autoencoder_dir=str(ae_dir),
        info=info,
        standardizer=standardizer.to_dict(),
        seed=0,
        sampler="ab3",
        steps=4,
    )
    result = actor.evaluate_item(
        {
            "trajectory": 0,
            "origin": 0,
            "context": 1,
            "start": 0,
            "stop": 1,
            "members": 1,
            "primary": True,
            "snapshot": False,
        }
    )
    raw = WellWindows(info, "test", length=None)[0]["x"].double()  # (C, T, H, W), physical
    torch.set_num_threads(threads)
    return {
        "result": result,
        "raw": raw,
        "ae_loss": ae_loss,
        "solver_loss": solver_final,
        "decoded": actor.autoencoder,
        "states": states,
        "standardizer": standardizer,
    }


def test_autoencoder_overfit_reconstruction_in_physical_units(chain):
    result, raw = chain["result"], chain["raw"]
    # The evaluation's truth is the file's physical data: de-standardization inverts exactly.
    np.testing.assert_allclose(result["truth"], raw.numpy(), rtol=1e-5, atol=1e-6)
    recon = np.asarray(result["recon_vrmse"])  # (T, C), what the study's recon_vrmse averages
    assert recon.shape == (raw.shape[1], raw.shape[0])
    assert recon.mean() < 0.01, f"reconstruction VRMSE {recon.mean():.4f} (per field {recon.mean(0)})"
    # The same number from the raw data and an independent decode + inverse.
    with torch.no_grad():
        x_hat = chain["decoded"](chain["states"])[0].double()
    physical = chain["standardizer"].inverse(x_hat, channel_dim=1)  # (T, C, H, W)
    independent = vrmse(physical, raw.movedim(1, 0), spatial_dims=2).numpy()
    np.testing.assert_allclose(recon, independent, rtol=1e-4, atol=1e-7)


def test_untrained_autoencoder_fails_the_reconstruction_target(chain):
    """The target is not met by construction: a fresh network scores far above it."""
    fresh = AutoEncoder(**AE_KWARGS).eval()
    with torch.no_grad():
        x_hat = fresh(chain["states"])[0].double()
    physical = chain["standardizer"].inverse(x_hat, channel_dim=1)
    score = vrmse(physical, chain["raw"].movedim(1, 0), spatial_dims=2).mean()
    assert score > 0.3


def test_latent_solver_overfit_rolls_out_through_the_evaluation_code(chain):
    result, raw = chain["result"], chain["raw"]
    assert result["count"] == 1
    # The driver's own statistics of the block: ensemble mean (L, C, H, W) in physical units.
    moments = EnsembleStatistics.from_dict(result["moments"])
    truth = torch.from_numpy(result["truth"]).movedim(1, 0)  # (L, C, H, W)
    mean = moments.mean()
    assert mean.shape == truth.shape == raw.movedim(1, 0).shape
    # State 0 is the given context: the rollout returns its latent exactly, so it decodes to
    # the auto-encoded truth D(E(x_0)).
    truth_ae = torch.from_numpy(result["truth_ae"]).movedim(1, 0)
    torch.testing.assert_close(mean[0], truth_ae[0].to(mean.dtype), rtol=1e-4, atol=1e-5)
    emulated = moments.vrmse(truth).mean(-1)[1:]  # per lead 1..12, averaged over fields
    persistence = vrmse(truth[:1].expand_as(truth), truth, spatial_dims=2).mean(-1)[1:]
    assert float(emulated.mean()) < 0.1, f"rollout VRMSE per lead {emulated.numpy().round(3)}"
    assert float(emulated.mean()) < 0.25 * float(persistence.mean())
