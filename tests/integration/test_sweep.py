"""The compression sweep end to end on the smoke profile (2 rates, both emulators, the
pixel baseline, evaluations at context 1): Ray Tune trials, the MLflow layout, resuming
after a crash, and the context sweep on the trained emulators. The resumed sweep is also
the test of the per-rate stage chain resuming with only its missing stages (a stage chain
test of its own cost two more minutes of suite time for the same property).

The sweep evaluates at one context length (``--contexts 1``), as the other compression
studies of this module do, so that they reproduce (two studies at once) or reuse (guidance)
its evaluations instead of scoring three contexts each: scoring several context lengths is
tested by the context sweep here and in ``test_evaluate.py``."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from browser import assert_page_ok
from mlflow.tracking import MlflowClient
from stages import LATENT_STAGES, PIXEL_STAGES

from lolaray.evaluation.study import load_evaluations
from lolaray.platform.artifacts import ArtifactStore
from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.compression import SweepFailed, main, run_compression_sweep
from lolaray.sweeps.context import find_emulators, run_context_sweep
from lolaray.trainers.snapshots import load_autoencoder, load_emulator

STUDY = Path(__file__).parents[2] / "sweeps" / "compression.py"
# The smoke profile at one context length: what `compression.py --profile smoke --contexts 1`
# runs, so the studies below that pass `--contexts 1` reuse (or reproduce) its evaluations.
SMOKE = dataclasses.replace(PROFILES["smoke"], contexts=(1,))


def _children(client, experiment_id, parent_id):
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000)


def _artifact_paths(client, run_id, path=None):
    paths = []
    for item in client.list_artifacts(run_id, path):
        paths += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return paths


@pytest.fixture(scope="module")
def swept(ray_cluster, smoke_dataset, tmp_path_factory):
    """A smoke sweep (evaluations at context 1) killed before one stage (injected), then run
    again to completion."""
    root = tmp_path_factory.mktemp("sweep")
    store, uri = ArtifactStore(root / "store"), f"sqlite:///{root / 'mlflow.db'}"
    # Threads pinned: the studies below that must reproduce these artifacts bit for bit run a
    # chain alone, which the schedule would give both cores (sweeps/schedule.py).
    kwargs = {"store": store, "mlflow_uri": uri, "profile_name": "smoke", "verbose": 0, "max_concurrent": 2}
    kwargs["worker_threads"] = 1
    with pytest.raises(SweepFailed) as failed:
        run_compression_sweep(
            SMOKE,
            smoke_dataset,
            [4, 16],
            retries=0,
            fail_at={"c16": "evaluation/solver"},
            **kwargs,
        )
    resumed = run_compression_sweep(SMOKE, smoke_dataset, [4, 16], **kwargs)
    return {"first": failed.value.outcome, "resumed": resumed, "store": store, "uri": uri}


def test_a_killed_sweep_resumes_with_only_the_missing_stages(swept):
    first, resumed = swept["first"], swept["resumed"]
    assert set(first.errors) == {"c16"} and "InjectedFailure" in first.errors["c16"]
    assert first.ran == {"c4": LATENT_STAGES, "pixel": PIXEL_STAGES}
    assert resumed.errors == {}
    assert resumed.ran == {"c4": [], "c16": ["evaluation/solver"], "pixel": []}
    assert resumed.reused["c16"] == LATENT_STAGES[:-1]
    assert resumed.reused["c4"] == LATENT_STAGES and resumed.reused["pixel"] == PIXEL_STAGES


def test_the_sweep_logs_nested_runs_uniform_metrics_models_and_the_study(swept):
    client = MlflowClient(swept["uri"])
    experiment = client.get_experiment_by_name("lolaray")
    parents = client.search_runs(
        [experiment.experiment_id], "tags.stage = 'sweep'", order_by=["start_time ASC"]
    )
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    first, resumed = parents

    stages = [c.data.tags["stage"] for c in _children(client, experiment.experiment_id, first.info.run_id)]
    # 2 autoencoders, 5 emulators, 2x3 latent caches, 4 evaluations (the 5th was killed).
    assert sorted(stages) == sorted(
        ["autoencoder"] * 2 + ["emulator"] * 5 + ["latents"] * 6 + ["evaluation"] * 4
    )
    again = _children(client, experiment.experiment_id, resumed.info.run_id)
    assert [(r.data.tags["stage"], r.data.tags["emulator"], r.data.tags["compression"]) for r in again] == [
        ("evaluation", "solver", "20")
    ]
    # reused artifacts are linked on the new parent run, with the run that made them
    tags = resumed.data.tags
    assert (
        tags["reused/c16/autoencoder"].startswith("autoencoder-")
        and "(run " in tags["reused/c16/autoencoder"]
    )
    assert {k for k in tags if k.startswith("reused/c4/")} == {f"reused/c4/{s}" for s in LATENT_STAGES}

    # every evaluation run carries the same metric names, so the compare view lines them up
    evaluations = client.search_runs([experiment.experiment_id], "tags.stage = 'evaluation'")
    assert len(evaluations) == 5
    for run in evaluations:
        for name in ("vrmse/lead_1-20", "vrmse/lead_61-100", "spread_skill/lead_21-60", "infer_ms_per_state"):
            assert name in run.data.metrics, (name, run.data.tags)
        if run.data.tags["space"] == "latent":
            assert "recon_vrmse" in run.data.metrics and "recon_vrmse/lead_1-20" in run.data.metrics
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert len(models) == 2 + 5  # autoencoders and emulators

    paths = _artifact_paths(client, resumed.info.run_id)
    assert {"study/study.html", "study/study_vrmse.csv", "study/study_context.csv"} <= set(paths)


def test_the_study_table_has_the_rows_of_table_6(swept):
    table = swept["resumed"].tables["vrmse"]
    keys = [key for key, _ in table.rows]
    # The baselines are rows too: PCA of each latent's size, and persistence (no model, no ÷).
    assert keys == [
        ("autoencoder", 20.0),
        ("autoencoder", 80.0),
        ("pca", 20.0),
        ("pca", 80.0),
        ("diffusion", 20.0),
        ("diffusion", 80.0),
        ("solver", 20.0),
        ("solver", 80.0),
        ("pixel solver", 1.0),
        ("persistence", "-"),
    ]
    assert table.columns == ("lead_1-20", "lead_21-60", "lead_61-100")
    for _, values in table.rows:
        assert all(v > 0 for v in values)
    # reconstruction error grows with the compression rate (the paper's first finding), and
    # so does that of PCA with as many numbers as each latent
    for method in ("autoencoder", "pca"):
        assert table.cell(method, 80.0, column="lead_1-20") > table.cell(method, 20.0, column="lead_1-20")
    # every cell again with its bootstrap interval over the scored trajectories
    intervals = swept["resumed"].intervals["vrmse_intervals"]
    assert [key for key, _ in intervals.rows] == keys


def test_the_study_report_opens_in_a_browser(swept, chromium, tmp_path):
    page = swept["resumed"].study.path / "study.html"
    # VRMSE vs lead, reconstruction vs compression, spread-skill, coverage, high-band spectral error
    result = chromium.load(page, expected_figures=5)
    assert_page_ok(result, expected_figures=5)
    (tmp_path / "study.png").write_bytes(result.screenshot)


def test_two_studies_at_once_on_a_fresh_folder_equal_the_resumed_sweep(swept, data_cache, tmp_path):
    """Two ``compression.py`` studies (c16 only, context 1) started at once in a fresh folder,
    as a new user would: the default store and MLflow database do not exist yet (issue 17).
    Both finish; each shared artifact is published once, complete, nothing half-written
    beside it; and these uninterrupted runs give the artifacts (same ids, same weights) and
    metrics of the sweep that was killed before its last stage and resumed."""
    command = [sys.executable, str(STUDY), "--profile", "smoke", "--latent-channels", "16", "--no-pixel"]
    command += ["--contexts", "1", "--worker-threads", "1"]  # the swept fixture's evaluations and threads
    # The defaults, not a database an earlier test left in MLFLOW_TRACKING_URI (MLflow's
    # set_tracking_uri exports it to the environment of the process that logged a model).
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOLARAY_DATA_DIR"] = str(data_cache)
    logs = [tmp_path / f"study-{i}.log" for i in range(2)]
    studies = []
    for log in logs:
        with open(log, "w") as out:
            studies.append(
                subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
            )
    codes = [study.wait(timeout=1200) for study in studies]
    assert codes == [0, 0], "\n\n".join(log.read_text()[-4000:] for log in logs)

    store = ArtifactStore(tmp_path / "lolaray-store")
    for stage, count in (("autoencoder", 1), ("latents", 3), ("emulator", 2), ("evaluation", 2)):
        assert len(store.complete_ids(stage)) == count, stage
        entries = list((tmp_path / "lolaray-store" / stage).iterdir())
        assert not [e.name for e in entries if e.name.startswith(".")], f"{stage}: staging left behind"
        assert all((e / "manifest.json").is_file() for e in entries), f"{stage}: an artifact without manifest"
    for stage in ("autoencoder", "latents", "emulator", "evaluation"):
        for artifact_id in store.complete_ids(stage):
            ours, theirs = store.get(stage, artifact_id), swept["store"].get(stage, artifact_id)
            assert theirs is not None, f"{artifact_id}: the same artifact id is expected in the resumed store"
            if stage in ("autoencoder", "emulator"):  # the same trained weights
                load = load_autoencoder if stage == "autoencoder" else load_emulator
                weights = [load(a)[0].state_dict() for a in (ours, theirs)]
                assert weights[0].keys() == weights[1].keys(), artifact_id
                for name, value in weights[0].items():
                    assert torch.equal(value, weights[1][name]), f"{artifact_id}: {name} differs"
            elif stage == "evaluation":
                assert (ours.path / "metrics.csv").read_text() == (theirs.path / "metrics.csv").read_text()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lolaray")
    studies = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep'")
    assert [run.info.status for run in studies] == ["FINISHED", "FINISHED"]


def test_the_context_sweep_evaluates_trained_emulators_without_training(swept, smoke_dataset):
    store = swept["store"]
    trained = {s: store.complete_ids(s) for s in ("autoencoder", "emulator", "latents")}
    emulators = [
        pair for pair in find_emulators(store, smoke_dataset) if pair[0].manifest["compression"] == 20
    ]
    assert sorted(e.manifest["kind"] for e, _ in emulators) == ["diffusion", "solver"]
    study, tables, _reused, _ = run_context_sweep(
        PROFILES["smoke"],
        smoke_dataset,
        emulators,
        contexts=[1, 2],
        steps=[4],
        store=store,
        mlflow_uri=swept["uri"],
        profile_name="smoke",
        verbose=0,
        max_concurrent=2,
    )
    assert {s: store.complete_ids(s) for s in trained} == trained  # nothing retrained
    keys = [key for key, _ in tables["context"].rows]
    assert keys == [
        ("diffusion", 20.0, 1, 4),
        ("diffusion", 20.0, 2, 4),
        ("solver", 20.0, 1, "-"),
        ("solver", 20.0, 2, "-"),
    ]
    assert (study.path / "study.html").is_file()


def test_the_sweep_places_trials_and_training_workers_on_two_nodes(two_node_study):
    """`compression.py --address` against a simulated 2-node cluster (ray.cluster_utils):
    one trial driver slot per node, so the two trials (c8, pixel) run one per node; the
    head has no CPU (as on a real cluster), so every training stage runs on the worker
    node — placement by resources, not by which node Ray happened to pick first.

    The study is the ``two_node_study`` fixture of ``conftest.py``, on the
    turbulence_gravity_cooling-like folder, whose artifacts ``test_paper_datasets.py``
    checks too (one study for both files)."""

    study = two_node_study
    assert len(study.nodes) == 2
    done = study.done
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Table 6 analogue" in done.stdout and "pixel solver" in done.stdout

    client = MlflowClient(study.uri)
    experiment = client.get_experiment_by_name(study.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep'")
    placement = {k: json.loads(v) for k, v in parent.data.tags.items() if k.startswith("nodes/")}
    assert set(placement) == {"nodes/c8", "nodes/pixel"}
    trial_nodes = {p["trial"] for p in placement.values()}
    train_nodes = {n for p in placement.values() for n in p["train"]}
    assert trial_nodes == study.nodes, placement
    assert train_nodes == {study.worker}, placement


def test_the_sweep_with_guidance_keeps_guided_rollouts_closer_to_the_truth(swept, chromium, tmp_path):
    """``compression.py --guidance downscale`` on the trained sweep (Figure 6): it reuses
    the models and their unguided evaluations at the requested context (the sweep's), adds
    the guided one, and the guided rollouts have lower VRMSE at long lead times than the
    unguided ones from the same seeds; both sit side by side in MLflow and in the study's
    snapshot grid."""

    store = swept["store"]
    argv = ["--profile", "smoke", "--latent-channels", "16", "--no-pixel", "--contexts", "1"]
    argv += ["--guidance", "downscale", "--store", store.root, "--mlflow-uri", swept["uri"]]
    assert main([*argv, "--experiment", "guided"]) == 0

    client = MlflowClient(swept["uri"])
    experiment = client.get_experiment_by_name("guided")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep'")
    assert float(parent.data.params["guidance.var_y"]) == pytest.approx(0.01)
    assert parent.data.params["contexts"] == "[1]"
    reused = {k.split("/", 2)[2] for k in parent.data.tags if k.startswith("reused/c16/")}
    # Nothing is retrained, and the unguided evaluations at c=1 are the swept fixture's; the
    # guided evaluation is new.
    assert {"autoencoder", "latents/train", "latents/valid", "latents/test", "diffusion", "solver"} <= reused
    assert {"evaluation/diffusion", "evaluation/solver"} <= reused
    assert "evaluation/guided_diffusion" not in reused
    runs = _children(client, experiment.experiment_id, parent.info.run_id)
    assert {r.data.tags["stage"] for r in runs} == {"evaluation"}
    (guided_run,) = [r for r in runs if r.data.tags["guided"] == "yes"]
    assert "vrmse/lead_61-100" in guided_run.data.metrics

    # The study on the parent run: guided beside unguided in the Table 6 analogue ...
    table = Path(client.download_artifacts(parent.info.run_id, "study/study_vrmse.csv", str(tmp_path)))
    rows = {
        (r["method"], r["compression"] if r["method"] == "persistence" else float(r["compression"])): r
        for r in csv.DictReader(table.read_text().splitlines())
    }
    # (with the baselines: PCA of the latent's size, and persistence, which has no ÷)
    assert {"autoencoder", "pca", "diffusion", "guided diffusion", "solver", "persistence"} == {
        m for m, _ in rows
    }
    assert ("persistence", "-") in rows
    late = {m: float(rows[(m, 20.0)]["lead_61-100"]) for m in ("diffusion", "guided diffusion")}
    print("VRMSE at lead 61-100:", late)
    assert late["guided diffusion"] < late["diffusion"]

    # ... and the Figure 6 grid: truth, unguided and guided member 0.
    study = Path(client.download_artifacts(parent.info.run_id, "study/study.html", str(tmp_path)))
    assert "Guided vs unguided diffusion" in study.read_text()
    # VRMSE, reconstruction, spread-skill, coverage, high-band spectral error, and the guided grid
    result = chromium.load(study, expected_figures=6)
    assert_page_ok(result, expected_figures=6)
    (tmp_path / "guided.png").write_bytes(result.screenshot)
    guided = store.get("evaluation", guided_run.data.tags["artifact_id"])
    (evaluation,) = load_evaluations(store, [guided])
    assert evaluation.snapshot["truth"].shape == evaluation.snapshot["member0"].shape
