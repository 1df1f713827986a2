"""What of a stage's config enters its artifact id (:meth:`StageConfig.identity`), and that the
ids of artifacts already stored stand."""

import dataclasses

import pytest

from lolaray.platform.artifacts import artifact_id
from lolaray.sweeps.chain import PROFILES
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig
from lolaray.trainers.emulators import EmulatorConfig
from lolaray.trainers.loop import FaultInjection, LoopConfig

CONFIGS = [AutoencoderConfig(), EmulatorConfig(), EmulatorConfig(kind="solver", space="pixel")]


def _id(config) -> str:
    return artifact_id("stage", {"config": config.identity()})


def _changed(value):
    """Another value of the same kind (validation bypassed: only the id is under test)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return (*value, value[-1] if value else "flip")
    if isinstance(value, dict):
        return {**value, "other": 1}
    if value is None:
        return 0.5
    raise TypeError(type(value))


def _with(config, **values):
    copy = dataclasses.replace(config)
    for name, value in values.items():
        object.__setattr__(copy, name, value)
    return copy


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_a_rehearsed_failure_trains_the_same_artifact(config):
    fault = FaultInjection(kill_rank=0, kill_at_steps=(3,), marker_dir="/tmp/x", nonfinite_steps=(1, 2))
    faulty = dataclasses.replace(config, loop=dataclasses.replace(config.loop, fault=fault))
    assert _id(faulty) == _id(config)
    assert faulty.to_dict()["loop"]["fault"]["kill_at_steps"] == (3,)  # the worker still gets it


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_field_that_changes_the_training_changes_the_id(config):
    for field in dataclasses.fields(config):
        if field.name != "loop":
            changed = _with(config, **{field.name: _changed(getattr(config, field.name))})
            assert _id(changed) != _id(config), field.name
    for field in dataclasses.fields(LoopConfig):
        if field.name != "fault":
            loop = _with(config.loop, **{field.name: _changed(getattr(config.loop, field.name))})
            assert _id(dataclasses.replace(config, loop=loop)) != _id(config), f"loop.{field.name}"


def test_a_field_added_later_enters_the_id_only_away_from_its_default():
    config = EmulatorConfig(kind="solver", space="pixel")
    assert "augment" not in config.identity() and "augment" in _with(config, augment=()).identity()


def test_the_ids_of_stored_artifacts_stand():
    """The ids these configs have had since the exponential moving average was added (issue
    30 moved the serialization; a change here retrains every stored artifact)."""
    demo = PROFILES["demo"]
    assert _id(AutoencoderConfig()) == "stage-ef33a95ff05b"
    assert _id(EmulatorConfig()) == "stage-702941d542dc"
    assert _id(demo.autoencoder) == "stage-86f56231c5f2"
    assert _id(demo.pixel_emulator) == "stage-18c430bb4a75"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_to_dict_round_trips(config):
    assert type(config).from_dict(config.to_dict()) == config
