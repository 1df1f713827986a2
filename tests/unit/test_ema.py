"""The moving average of the weights: its formula, its swap for validation, and the stage
shipping it."""

import pytest
import torch
from torch import nn
from wellfiles import make_tiny_dataset

from lolaray.platform.data import open_dataset
from lolaray.trainers.ema import WeightAverage
from lolaray.trainers.emulator_trainer import train_pixel_solver
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.loop import LoopConfig, trained_weights
from lolaray.trainers.snapshots import load_emulator


def test_the_average_follows_the_warmed_up_decay():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    expected = 0.0
    for t in range(1, 40):
        with torch.no_grad():
            model.weight.fill_(float(t))
        beta = min(0.9, (1 + t) / (10 + t))
        assert average.current_decay() == pytest.approx(beta)
        average.update(model)
        expected = beta * expected + (1 - beta) * t
        assert average.average["weight"].item() == pytest.approx(expected)
    with average.swapped_into(model):
        assert model.weight.item() == pytest.approx(expected)
    assert model.weight.item() == 39.0  # the trained weights are back
    restored = WeightAverage(model, decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 39 and restored.average["weight"].item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="decay must lie in"):
        WeightAverage(model, decay=1.0)


def test_off_by_default_and_serialized():
    assert LoopConfig().ema_decay is None
    assert LoopConfig.from_dict(LoopConfig(ema_decay=0.99).to_dict()).ema_decay == 0.99
    assert trained_weights({"model": 1, "ema": None}) == 1
    assert trained_weights({"model": 1, "ema": {"average": 2}}) == 2
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        LoopConfig(ema_decay=0.0)


def test_the_stage_ships_the_average(tmp_path, local_stage):
    tiny = open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=11))
    trained = {}
    for decay in (None, 0.9):
        config = EmulatorConfig(
            preset="smoke",
            architecture={"patch_size": 2},
            window=3,
            stride=2,
            batch_size=4,
            valid_windows=8,
            loop=LoopConfig(optimizer="adamw", lr=1e-2, epochs=2, steps_per_epoch=4, ema_decay=decay),
        )
        trained[decay], _ = load_emulator(train_pixel_solver(config, tiny, local_stage))
    last, averaged = (dict(trained[d].named_parameters()) for d in (None, 0.9))
    # Same seed and batches: the network shipped with EMA on is not the last weights.
    assert any(not torch.equal(last[k], averaged[k]) for k in last)
