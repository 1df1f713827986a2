"""cluster.yaml validates against the Ray autoscaler's schema shipped in the ray package."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]


def schema():
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid():
    config = load()
    jsonschema.validate(config, schema())
    validate_config(prepare_config(copy.deepcopy(config)))  # provider defaults + cross-field checks
    assert config["available_node_types"][config["head_node_type"]]["resources"]["train_driver"] >= 1
    assert any("mlflow server" in c for c in config["head_start_ray_commands"])
    assert any("pip install" in c and "lolaray" in c for c in config["setup_commands"])


@pytest.mark.parametrize("mutate", ["typo", "missing_resources"])
def test_the_schema_check_catches_mistakes(mutate):
    config = load()
    if mutate == "typo":
        config["max_worker"] = config.pop("max_workers")
    else:
        del config["available_node_types"]["gpu_a10g"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema())
