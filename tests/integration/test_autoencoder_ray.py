"""The autoencoder stage on real Ray Train workers (2 CPU workers, gloo)."""

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient
from wellfiles import make_tiny_dataset

from lolaray.platform.data import open_dataset
from lolaray.platform.stages import ScalingSpec
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.loop import FaultInjection, LoopConfig
from lolaray.trainers.snapshots import load_autoencoder

TWO_WORKERS = ScalingSpec(workers=2, cpus_per_worker=1, max_failures=2)


@pytest.fixture
def tiny(tmp_path):
    return open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=6, n_traj=2))


def config(**loop):
    return AutoencoderConfig(
        preset="smoke",
        latent_channels=4,
        batch_size=2,
        valid_states=4,
        loop=LoopConfig(**{"optimizer": "psgd", "lr": 1e-3, "epochs": 3, "steps_per_epoch": 3, **loop}),
    )


def test_two_workers_log_to_mlflow_and_the_model_reloads(ray_cluster, tiny, local_stage, mlflow_uri):
    artifact = train_autoencoder(config(), tiny, local_stage.replace(scaling=TWO_WORKERS))
    assert artifact.manifest["optimizer_steps"] == 9
    client = MlflowClient(mlflow_uri)
    run = client.get_run(artifact.manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/loss")] == [3, 6, 9]
    model, _ = load_autoencoder(artifact)
    logged = mlflow.pytorch.load_model(artifact.manifest["mlflow_model_uri"])
    x = torch.randn(3, 5, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(logged(x)[0], model(x)[0])


@pytest.mark.parametrize("kill_rank", [1, 0])
def test_a_killed_worker_resumes_from_the_checkpoint_reported_just_before(
    ray_cluster, tiny, local_stage, tmp_path, mlflow_uri, kill_rank
):
    """Checkpoints close epochs at steps 3, 6, 9, 12. The worker dies at the very next step
    after the first one (3), one step after the second (7) and two after the third (11):
    each time before Ray Train's controller may have polled the dead worker's report, which
    is what lost the checkpoint before (trainers/checkpoints.py). Every restart must resume
    from the checkpoint reported just before the death."""

    kills = (3, 7, 11)
    fault = FaultInjection(kill_rank=kill_rank, kill_at_steps=kills, marker_dir=str(tmp_path))
    scaling = ScalingSpec(workers=2, cpus_per_worker=1, max_failures=len(kills))
    artifact = train_autoencoder(config(fault=fault, epochs=4), tiny, local_stage.replace(scaling=scaling))
    assert all((tmp_path / f"lolaray-fault-{step}").exists() for step in kills)  # every fault fired
    assert artifact.manifest["resumed_from_steps"] == [3, 6, 9]
    assert artifact.manifest["optimizer_steps"] == 12  # the same total as an uninterrupted run
    history = MlflowClient(mlflow_uri).get_metric_history(
        artifact.manifest["mlflow_run_id"], "train/optimizer_steps"
    )
    values = [m.value for m in sorted(history, key=lambda m: (m.timestamp, m.value))]
    assert values == [3, 6, 9, 12]  # logged once each, never going back
