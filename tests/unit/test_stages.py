"""The stage runner: id → reuse → child run → build → publish, the same for every stage."""

import argparse
import importlib

import pytest
from mlflow.tracking import MlflowClient

from lolaray.platform import stages
from lolaray.platform.artifacts import artifact_id
from lolaray.platform.stages import ScalingSpec, StageContext, StageOutput, add_stage_arguments, run_stage
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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": -1}, "workers must be >= 0"),
        ({"cpus_per_worker": 0}, "cpus_per_worker must be > 0"),
        ({"actors": 0}, "actors must be >= 1"),
        ({"actor_gpus": -0.5}, "actor_gpus must be >= 0"),
    ],
)
def test_scaling_rejects_impossible_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScalingSpec(**kwargs)


def test_actor_gpus_follow_the_hardware_unless_given(monkeypatch):
    monkeypatch.setattr(stages.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(stages.torch.cuda, "is_available", lambda: True)
    assert ScalingSpec().resolved_actor_gpus() == 1.0
    assert ScalingSpec(actor_gpus=0.25).resolved_actor_gpus() == 0.25
    monkeypatch.setattr(stages.torch.cuda, "is_available", lambda: False)
    assert ScalingSpec().resolved_actor_gpus() == 0.0
    monkeypatch.setattr(stages.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(stages.ray, "cluster_resources", lambda: {"CPU": 8, "GPU": 2})
    assert ScalingSpec().resolved_actor_gpus() == 1.0
    assert ScalingSpec().resolved_use_gpu() and not ScalingSpec(use_gpu=False).resolved_use_gpu()


@pytest.mark.parametrize(
    ("scaling", "argv", "expected"),
    [
        (None, [], ScalingSpec()),
        ("workers", ["--workers", "3"], ScalingSpec(workers=3)),
        ("actors", ["--actors", "4", "--actor-gpus", "0.5"], ScalingSpec(actors=4, actor_gpus=0.5)),
    ],
)
def test_a_command_line_gives_the_stage_context(tmp_path, scaling, argv, expected):
    parser = argparse.ArgumentParser()
    add_stage_arguments(parser, dataset_default="euler_quadrants:smoke", scaling=scaling)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    args = parser.parse_args(
        ["--store", str(tmp_path / "s"), "--mlflow-uri", uri, "--experiment", "e", *argv]
    )
    context = StageContext.from_args(args)
    assert context.scaling == expected and context.tracking_uri == uri and context.experiment == "e"
    assert context.store.root == str(tmp_path / "s") and context.parent_run_id is None
    assert context.replace(parent_run_id="p").parent_run_id == "p" and context.parent_run_id is None


def test_an_unknown_scaling_kind_is_refused():
    with pytest.raises(ValueError, match="scaling must be 'workers', 'actors' or None"):
        add_stage_arguments(argparse.ArgumentParser(), dataset_default=None, scaling="nodes")
