"""Emulator stages: config validation before any worker, and the pixel solver in local mode."""

import mlflow.pytorch
import pytest
import torch
from wellfiles import make_tiny_dataset

from lolaray.platform.data import open_dataset
from lolaray.trainers import training_stage
from lolaray.trainers.emulator_trainer import train_pixel_solver
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_emulator
from lolaray.trainers.solver import NeuralSolver


@pytest.fixture
def tiny(tmp_path):
    return open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=11))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 1}, "window length must be >= 2"),
        ({"window": 3, "max_context": 3}, "context length 3 must be in \\[1, window length - 1\\]"),
        ({"architecture": {"attention_heads": 3}}, "attention heads \\(3\\) must divide the width \\(64\\)"),
        (
            {"architecture": {"patch_size": 3}},
            "patch size 3 does not divide the grid: spatial axis 0 has 8 cells",
        ),
        ({"window": 4, "stride": 4}, "spans 13 steps, longer than the trajectories \\(11 steps\\)"),
        ({"preset": "giant"}, "unknown emulator preset 'giant'"),
    ],
)
def test_bad_config_fails_before_training(tiny, local_stage, kwargs, message, monkeypatch):
    monkeypatch.setattr(training_stage, "fit_stage", lambda *a, **k: pytest.fail("training started"))
    config = EmulatorConfig(**{"preset": "smoke", "window": 3, "stride": 2, **kwargs})
    with pytest.raises(ValueError, match=message):
        train_pixel_solver(config, tiny, local_stage)


def test_pixel_solver_trains_in_local_mode(tiny, local_stage):
    config = EmulatorConfig(
        preset="smoke",
        architecture={"patch_size": 2},
        window=3,
        stride=2,
        batch_size=4,
        valid_windows=8,
        loop=LoopConfig(optimizer="adamw", lr=1e-3, epochs=2, steps_per_epoch=3),
    )
    artifact = train_pixel_solver(config, tiny, local_stage)
    manifest = artifact.manifest
    assert manifest["kind"] == "solver" and manifest["space"] == "pixel" and manifest["compression"] == 1
    assert manifest["optimizer_steps"] == 6 and manifest["state_shape"] == [5, 8, 8]
    solver, loaded = load_emulator(artifact)
    assert isinstance(solver, NeuralSolver) and loaded.window == 3 and loaded.space == "pixel"

    logged = mlflow.pytorch.load_model(manifest["mlflow_model_uri"])
    x, mask, theta = torch.randn(2, 5, 3, 8, 8), torch.tensor([[True, False, False]] * 2), torch.randn(2, 5)
    torch.testing.assert_close(logged.predict(x, mask, theta), solver.predict(x, mask, theta))
