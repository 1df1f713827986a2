"""Latent emulators trained on Ray Train workers from the latent cache's Ray Data stream."""

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient
from wellfiles import make_tiny_dataset

from lolaray.platform.data import open_dataset
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.trainers import training_stage
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.diffusion import ElucidatedDenoiser
from lolaray.trainers.emulator_trainer import train_diffusion, train_solver
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.encoding import cache_latents
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_emulator


@pytest.fixture(scope="module")
def caches(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("emulators")
    info = open_dataset(make_tiny_dataset(root / "tiny", res=8, steps=11))
    context = StageContext.resolve(root / "store", f"sqlite:///{root / 'mlflow.db'}")
    config = AutoencoderConfig(
        preset="smoke",
        latent_channels=4,
        batch_size=4,
        valid_states=4,
        loop=LoopConfig(optimizer="adam", lr=1e-3, epochs=1, steps_per_epoch=2),
    )
    autoencoder = train_autoencoder(
        config, info, context.replace(scaling=ScalingSpec(workers=0)), log_model=False
    )
    train = cache_latents(autoencoder, info, "train", context, repeat=2)
    valid = cache_latents(autoencoder, info, "valid", context)
    return {"autoencoder": autoencoder, "train_cache": train, "valid_cache": valid}, context


def emulator_config():
    return EmulatorConfig(
        preset="smoke",
        window=3,
        stride=4,
        batch_size=4,
        valid_windows=8,
        loop=LoopConfig(optimizer="adamw", lr=1e-3, epochs=2, steps_per_epoch=3),
    )


def test_diffusion_on_two_workers_from_the_cache_stream(caches, ray_cluster):
    artifacts, context = caches
    artifact = train_diffusion(
        emulator_config(),
        **artifacts,
        context=context.replace(scaling=ScalingSpec(workers=2, cpus_per_worker=0.5)),
    )
    manifest = artifact.manifest
    assert manifest["kind"] == "diffusion" and manifest["state_shape"] == [4, 4, 4]
    assert manifest["optimizer_steps"] == 6 and manifest["autoencoder"] == artifacts["autoencoder"].id
    run = MlflowClient(context.tracking_uri).get_run(manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "valid/loss" in run.data.metrics
    denoiser, _ = load_emulator(artifact)
    logged = mlflow.pytorch.load_model(manifest["mlflow_model_uri"])
    assert isinstance(denoiser, ElucidatedDenoiser)
    x, t, theta = torch.randn(2, 4, 3, 4, 4), torch.tensor([0.3, 0.7]), torch.randn(2, 5)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with torch.no_grad():
        torch.testing.assert_close(logged(x, t, theta, mask, x), denoiser(x, t, theta, mask, x))


def test_solver_from_the_cache_stream_and_reuse(caches, ray_cluster, monkeypatch):
    artifacts, context = caches
    artifact = train_solver(
        emulator_config(),
        **artifacts,
        context=context.replace(scaling=ScalingSpec(workers=1, cpus_per_worker=0.5)),
    )
    assert artifact.manifest["kind"] == "solver" and artifact.manifest["optimizer_steps"] == 6

    monkeypatch.setattr(training_stage, "fit_stage", lambda *a, **k: pytest.fail("retrained"))
    again = train_solver(emulator_config(), **artifacts, context=context)
    assert again.id == artifact.id
