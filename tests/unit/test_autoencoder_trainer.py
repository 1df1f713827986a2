"""The autoencoder stage in this process (``workers=0``: no Ray Train, no cluster)."""

import json

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient
from wellfiles import make_tiny_dataset

from lolaray.platform.data import open_dataset
from lolaray.trainers import training_stage
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.loop import FaultInjection, LoopConfig, NonFiniteTrainingError
from lolaray.trainers.snapshots import load_autoencoder


@pytest.fixture
def tiny(tmp_path):
    return open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=6))


def config(**loop_kwargs):
    loop = {"optimizer": "adam", "lr": 1e-3, "epochs": 2, "steps_per_epoch": 4, **loop_kwargs}
    return AutoencoderConfig(
        preset="smoke", latent_channels=4, batch_size=4, valid_states=4, loop=LoopConfig(**loop)
    )


def test_trains_logs_and_reuses(tiny, local_stage, tmp_path, mlflow_uri, monkeypatch):
    threads = torch.get_num_threads()
    artifact = train_autoencoder(config(), tiny, local_stage)
    # A training in this process must leave its thread count alone.
    assert torch.get_num_threads() == threads
    manifest = artifact.manifest
    assert manifest["compression"] == pytest.approx(5 * 8 * 8 / (4 * 4 * 4))
    assert manifest["latent_shape"] == [4, 4, 4] and manifest["optimizer_steps"] == 8
    run = MlflowClient(mlflow_uri).get_run(manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "autoencoder"
    assert run.data.params["latent_channels"] == "4"
    for key in ("train/loss", "valid/loss", "train/grad_norm", "train/learning_rate", "train/samples_per_s"):
        assert key in run.data.metrics, key
    assert run.data.metrics["compression"] == pytest.approx(manifest["compression"])

    model, _standardizer = load_autoencoder(artifact)
    x = torch.randn(2, 5, 8, 8)

    logged = mlflow.pytorch.load_model(manifest["mlflow_model_uri"])
    with torch.no_grad():
        torch.testing.assert_close(logged.decode(logged.encode(x)), model.decode(model.encode(x)))
    assert json.loads((artifact.path / "config.json").read_text())["latent_channels"] == 4

    calls = []
    monkeypatch.setattr(training_stage, "fit_stage", lambda *a, **k: calls.append(1))
    again = train_autoencoder(config(), tiny, local_stage)
    assert again.id == artifact.id and calls == []


def test_nonfinite_steps_are_skipped_and_counted(tiny, local_stage, tmp_path, mlflow_uri):
    cfg = config(fault=FaultInjection(nonfinite_steps=(1, 5)), max_nonfinite_in_a_row=2)
    artifact = train_autoencoder(cfg, tiny, local_stage)
    assert artifact.manifest["skipped_steps"] == 2
    assert artifact.manifest["optimizer_steps"] == 8 - 2
    model, _ = load_autoencoder(artifact)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_in_a_row_fails_clearly_and_publishes_nothing(tiny, local_stage, tmp_path, mlflow_uri):
    cfg = config(fault=FaultInjection(nonfinite_steps=(4, 5, 6)), max_nonfinite_in_a_row=3)
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive steps had a non-finite loss"):
        train_autoencoder(cfg, tiny, local_stage)
    assert not list((tmp_path / "store" / "autoencoder").glob("*/manifest.json"))
    runs = MlflowClient(mlflow_uri).search_runs(["1"])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latent_channels": 0}, "latent_channels must be a positive integer"),
        ({"preset": "paper_3d"}, "preset 'paper_3d' is 3-D but"),
        ({"preset": "enormous"}, "unknown autoencoder preset 'enormous'"),
        ({"loop": LoopConfig(optimizer="sgd")}, "unknown optimizer 'sgd'"),
    ],
)
def test_bad_config_fails_before_any_worker(tiny, local_stage, tmp_path, kwargs, message, monkeypatch):
    monkeypatch.setattr(training_stage, "fit_stage", lambda *a, **k: pytest.fail("a worker started"))
    cfg = AutoencoderConfig(**{"preset": "smoke", "latent_channels": 4, **kwargs})
    with pytest.raises(ValueError, match=message):
        train_autoencoder(cfg, tiny, local_stage)
