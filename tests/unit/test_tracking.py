"""MLflow run creation: nesting keeps a stage's run in its parent's experiment."""

import multiprocessing
import time

from mlflow.tracking import MlflowClient

from lolaray.platform.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    create_run,
    ensure_experiment,
    model_requirements,
)


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


def _open_fresh_store_at(uri: str, start: float, name: str) -> str:
    """In a fresh process: wait for the shared start time, then open the store as a study does."""

    time.sleep(max(0.0, start - time.time()))
    return ensure_experiment(name, uri=uri)


def test_studies_started_together_on_a_fresh_database_both_open_it(tmp_path):
    """Issue 17: two processes creating the default SQLite store at once both ran MLflow's
    schema migration and the second failed (``duplicate column name: step``)."""

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8.0  # after every process has imported MLflow
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        ids = pool.starmap(_open_fresh_store_at, [(uri, start, f"study-{k}") for k in range(3)])
    client = MlflowClient(uri)
    assert sorted(e.name for e in client.search_experiments() if e.name.startswith("study-")) == [
        "study-0",
        "study-1",
        "study-2",
    ]
    assert len(set(ids)) == 3


def test_logged_models_name_their_requirements():
    """Given to ``log_model``, so MLflow does not load each model in a fresh process to infer them."""
    requirements = model_requirements()
    names = [r.split("==")[0] for r in requirements]
    assert names[:3] == ["torch", "numpy", "einops"] and "lolaray" in names
    assert all("+" not in r for r in requirements)  # no local label such as +cpu
    assert model_requirements(("torch", "no-such-package-here")) == [requirements[0]]
