"""MLflow run creation: nesting keeps a stage's run in its parent's experiment."""

from mlflow.tracking import MlflowClient

from lolaray.platform.tracking import create_run


def test_a_nested_run_goes_to_its_parents_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = create_run("my-sweep", run_name="sweep", uri=uri)
    child = create_run("lolaray", run_name="stage", uri=uri, parent_run_id=parent, params={"a": {"b": 1}})
    client = MlflowClient(uri)
    parent_run, child_run = client.get_run(parent), client.get_run(child)
    assert child_run.info.experiment_id == parent_run.info.experiment_id
    assert child_run.data.tags["mlflow.parentRunId"] == parent and child_run.data.params == {"a.b": "1"}
    assert client.get_experiment_by_name("lolaray") is None  # nothing created elsewhere
    alone = create_run("lolaray", run_name="alone", uri=uri)
    assert client.get_run(alone).info.experiment_id == client.get_experiment_by_name("lolaray").experiment_id


def test_experiments_are_model_training_experiments(tmp_path):
    from lolaray.platform.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    created = ensure_experiment("fresh", uri=uri)
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert EXPERIMENT_KIND == "custom_model_development"
    # An experiment made without a kind gets one; a chosen kind is respected.
    bare = client.create_experiment("bare")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert ensure_experiment("bare", uri=uri) == bare and ensure_experiment("chosen", uri=uri) == chosen
    assert client.get_experiment(bare).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
