"""The stage runner: id → reuse → child run → build → publish, the same for every stage."""

import importlib

import pytest
from mlflow.tracking import MlflowClient

from lolaray.platform.artifacts import artifact_id
from lolaray.platform.stages import StageContext, StageOutput, run_stage
from lolaray.platform.tracking import create_run


@pytest.fixture
def context(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = create_run("stages", run_name="study", uri=uri)
    return StageContext.resolve(tmp_path / "store", uri, experiment="stages", parent_run_id=parent)


@pytest.mark.parametrize("on_store", [False, True])
def test_a_stage_is_built_once_then_reused(context, on_store):
    calls = []

    def build(run, aid):
        calls.append(aid)

        def write(folder, manifest):
            with open(f"{folder}/out.txt", "w") as f:
                f.write("built")
            manifest["written"] = True

        return StageOutput(manifest={"answer": 42}, write=write, on_store=on_store)

    kwargs = {"config": {"x": 1}, "upstream": ["up-1"], "run_name": "thing", "tags": {"kind": "k"}}
    first = run_stage(context, "thing", build=build, **kwargs)
    again = run_stage(context, "thing", build=build, **kwargs)
    assert first.id == again.id == artifact_id("thing", {"x": 1}, ["up-1"]) and len(calls) == 1
    assert first.manifest["answer"] == 42 and first.manifest["written"] is True
    assert context.store.read_text(first, "out.txt") == "built"
    run = MlflowClient(context.tracking_uri).get_run(first.manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "thing" and run.data.tags["artifact_id"] == first.id
    assert run.data.tags["kind"] == "k" and run.data.tags["mlflow.parentRunId"] == context.parent_run_id


def test_a_failing_stage_publishes_nothing_and_its_run_is_failed(context):
    runs = []

    def build(run, aid):
        runs.append(run.run_id)

        def write(folder, manifest):
            (folder / "half.txt").write_text("half")
            raise RuntimeError("disk full")

        return StageOutput(manifest={}, write=write)

    with pytest.raises(RuntimeError, match="disk full"):
        run_stage(context, "thing", config={"x": 2}, run_name="thing", build=build)
    assert context.store.get("thing", artifact_id("thing", {"x": 2})) is None
    assert context.store.complete_ids("thing") == set()
    assert MlflowClient(context.tracking_uri).get_run(runs[0]).info.status == "FAILED"


@pytest.mark.parametrize(
    "module",
    [
        "lolaray.trainers.autoencoder_trainer",
        "lolaray.trainers.encoding",
        "lolaray.trainers.emulator_trainer",
        "lolaray.evaluation.evaluate",
        "lolaray.sweeps.compression",
        "lolaray.sweeps.context",
    ],
)
def test_every_stage_and_sweep_takes_the_shared_options(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    for option in (
        "--dataset",
        "--data-root",
        "--address",
        "--mlflow-uri",
        "--store",
        "--experiment",
        "--seed",
    ):
        assert option in usage, (module, option)
