"""The evaluation stage on untrained tiny networks: sharding independence, input checks,
MLflow names and artifacts, solver conventions, artifact reuse."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from browser import assert_page_ok
from mlflow.tracking import MlflowClient
from PIL import Image
from wellfiles import make_tiny_dataset

from lolaray.evaluation import evaluate as evaluate_module
from lolaray.evaluation import split_ensemble
from lolaray.evaluation.baselines import latent_numbers
from lolaray.evaluation.evaluate import EvaluationConfig, evaluate
from lolaray.platform.artifacts import ArtifactStore
from lolaray.platform.data import open_dataset, standardizer_for
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.trainers.autoencoder import AUTOENCODER_PRESETS, build_autoencoder
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.snapshots import save_autoencoder, save_emulator


def _save_autoencoder(store, info):
    torch.manual_seed(0)
    kwargs = {**AUTOENCODER_PRESETS["smoke"], "pixel_channels": info.n_fields, "latent_channels": 4}
    model = build_autoencoder("smoke", pixel_channels=info.n_fields, latent_channels=4).eval()
    with torch.no_grad():
        latent_shape = list(model.encode(torch.zeros(1, *info.state_shape)).shape[1:])
    rate = torch.Size(info.state_shape).numel() / torch.Size(latent_shape).numel()
    manifest = {"latent_shape": latent_shape, "compression": rate, "pixel_shape": list(info.state_shape)}
    with store.build("autoencoder", "autoencoder-test", manifest) as folder:
        save_autoencoder(folder, model, kwargs, standardizer_for(info))
    return store.get("autoencoder", "autoencoder-test")


def _save_emulator(store, name, kind, state_shape, theta_dim, *, space="latent", compression=5.0):
    torch.manual_seed(1)
    config = EmulatorConfig(kind=kind, space=space, preset="smoke", window=3, stride=2)
    model = build_emulator(config, tuple(state_shape), theta_dim)
    manifest = {
        "kind": kind,
        "space": space,
        "state_shape": list(state_shape),
        "theta_dim": theta_dim,
        "window": 3,
        "stride": 2,
        "compression": compression,
        "autoencoder": "autoencoder-test",
    }
    with store.build("emulator", name, manifest) as folder:
        save_emulator(folder, model, config, tuple(state_shape), theta_dim)
    return store.get("emulator", name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("evaluate")
    info = open_dataset(make_tiny_dataset(root / "tiny", res=8, steps=11))
    store = ArtifactStore(root / "store")
    autoencoder = _save_autoencoder(store, info)
    latent = autoencoder.manifest["latent_shape"]
    emulators = {
        "diffusion": _save_emulator(store, "emulator-diffusion", "diffusion", latent, info.theta_dim),
        "solver": _save_emulator(store, "emulator-solver", "solver", latent, info.theta_dim),
    }
    return info, StageContext.resolve(store, f"sqlite:///{root / 'mlflow.db'}"), autoencoder, emulators


def _csv_rows(artifact, name="metrics.csv"):
    with open(f"{artifact.uri}/{name}") as f:
        return list(csv.DictReader(f))


def test_one_two_and_no_actors_give_identical_metrics(setup, tmp_path):
    info, context, autoencoder, emulators = setup
    common = {
        "contexts": (1, 2),
        "members": 4,
        "max_batch": 2,
        "trajectories": 2,
        "steps": 3,
    }
    one = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context.replace(store=ArtifactStore(tmp_path / "a")),
        EvaluationConfig(**common),
    )
    two = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context.replace(store=ArtifactStore(tmp_path / "b"), scaling=ScalingSpec(actors=2)),
        EvaluationConfig(**common),
    )
    # No actor: the rollouts in this process (a study on one machine), at an actor's 1 thread.
    local = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context.replace(
            store=ArtifactStore(tmp_path / "c"), scaling=ScalingSpec(local_rollouts=True, threads=1)
        ),
        EvaluationConfig(**common),
    )
    assert one.id == two.id == local.id  # actors and max_batch are not part of the id
    rows_one, rows_two = _csv_rows(one), _csv_rows(two)
    assert rows_one == rows_two == _csv_rows(local) and len(rows_one) > 0
    first = next(r for r in rows_one if r["horizon"] == "lead_1-20" and r["reference"] == "absolute")
    assert float(first["vrmse"]) > 0 and float(first["spread"]) > 0


def test_mismatched_latent_shapes_fail_before_any_ray_work(setup, monkeypatch):
    info, context, autoencoder, _ = setup
    wrong = _save_emulator(context.store, "emulator-wrong", "diffusion", [8, 2, 2], info.theta_dim)

    def no_ray(*args, **kwargs):
        raise AssertionError("the pipeline must not run")

    monkeypatch.setattr(evaluate_module, "run_rollouts", no_ray)
    with pytest.raises(ValueError, match="different latent shapes"):
        evaluate(wrong, autoencoder, info, context)
    with pytest.raises(ValueError, match="autoencoder"):
        evaluate(wrong, None, info, context)
    good = setup[3]["diffusion"]
    with pytest.raises(ValueError, match="window - 1"):
        evaluate(good, autoencoder, info, context, EvaluationConfig(contexts=(3,)))
    with pytest.raises(ValueError, match="at least one"):
        evaluate(good, autoencoder, info, context, EvaluationConfig(contexts=(1,), members=0))


def test_diffusion_run_logs_metrics_artifacts_and_is_reused(setup, monkeypatch, chromium):
    info, context, autoencoder, emulators = setup
    artifact = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context.replace(scaling=ScalingSpec(actors=2)),
        EvaluationConfig(
            contexts=(1, 2), members=5, max_batch=2, trajectories=1, steps=3
        ),  # 3 blocks: 2 + 2 + 1
    )
    folder = artifact.path
    for name in (
        "metrics.csv",
        "per_field_lead.csv",
        "per_trajectory.csv",
        "rank_histogram.csv",
        "summary.json",
        "table.txt",
        "report.html",
        "snapshots.html",
        "snapshot.npz",
        "rollout.gif",
        "coverage_vs_lead.html",
        "rank_histogram.html",
    ):
        assert (folder / name).exists(), name
    # The animation opens and holds one frame per state of the rollout (context included).
    states = (info.n_steps - 1) // 2 + 1  # stride 2
    with Image.open(folder / "rollout.gif") as gif:
        frames = gif.n_frames
    with np.load(folder / "snapshot.npz") as snap:
        assert frames == states
        assert frames == int(snap["leads"][-1]) // 2 + int(snap["context"])  # leads at stride 2
    assert "data:image/gif;base64," in (folder / "report.html").read_text()
    # A few states of member 0 and the truth, small, for study reports (guided beside unguided).
    with np.load(folder / "snapshot.npz") as snap:
        assert snap["truth"].shape == snap["member0"].shape and snap["truth"].shape[0] == len(snap["leads"])
        assert (
            (np.diff(snap["leads"]) > 0).all()
            and snap["leads"][0] >= 0
            and str(snap["field"]) in info.field_names
        )
    html = (folder / "report.html").read_text()
    figures = html.count('class="plotly-graph-div"')
    assert figures >= 4 and html.count("<script") >= 1
    # The stage's own report opens offline in headless Chromium: no console error, every figure drawn.
    result = chromium.load(folder / "report.html", expected_figures=figures)
    (folder / "report.png").write_bytes(result.screenshot)
    assert_page_ok(result, expected_figures=figures)
    assert "| method" in (folder / "table.txt").read_text()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["infer_ms_per_state"] > 0 and summary["recon_vrmse"] > 0
    # Scoring leaves the truth as it found it: against the truth and against D(E(x)), the
    # emulator's errors are of the same size, and the generated states are counted as an int
    # (an in-place update of a view of the truth once made the first thousands of times the second).
    assert isinstance(summary["states_generated"], int) and summary["states_generated"] > 0
    scored = [
        (
            summary["metrics"][f"absolute/context_all/vrmse/{h}"],
            summary["metrics"][f"relative/context_all/vrmse/{h}"],
        )
        for h in summary["horizons"]
    ]
    scored = [(a, r) for a, r in scored if math.isfinite(a)]  # a horizon these short rollouts reach
    assert scored and all(0 < a < 3 * r + 3 for a, r in scored), scored

    client = MlflowClient(context.tracking_uri)
    run = client.get_run(artifact.manifest["mlflow_run_id"])
    assert run.data.tags["stage"] == "evaluation" and run.data.tags["emulator"] == "diffusion"
    assert run.data.tags["artifact_id"] == artifact.id
    for name in (
        "vrmse/lead_1-20",
        "nrmse/lead_1-20",
        "spread_skill/lead_1-20",
        "psrmse/high/lead_1-20",
        "psrmse/low/lead_1-20",
        "semd/lead_1-20",
        "wasserstein/lead_1-20",
        "field_wasserstein/lead_1-20",
        "context_1/vrmse/lead_1-20",
        "context_2/vrmse/lead_1-20",
        "relative/vrmse/lead_1-20",
        "recon_vrmse",
        "infer_ms_per_state",
        "crps/lead_1-20",
        "coverage_50/lead_1-20",
        "coverage_90/lead_1-20",
        "context_1/crps/lead_1-20",
        "relative/crps/lead_1-20",
    ):
        assert name in run.data.metrics, name
    assert 0 <= run.data.metrics["coverage_90/lead_1-20"] <= 1
    assert (
        run.data.params["vrmse_convention"] == "lola" and run.data.params["trajectory_selection"] == "first"
    )
    assert run.data.params["starts"] == "[0]"
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "report.html", "rollout.gif", "per_field_lead.csv", "per_trajectory.csv"} <= logged

    def fail(*args, **kwargs):
        raise AssertionError("a complete artifact must be reused")

    monkeypatch.setattr(evaluate_module, "run_rollouts", fail)
    again = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context,
        EvaluationConfig(contexts=(2, 1), members=5, max_batch=4, trajectories=1, steps=3),
    )
    assert again.id == artifact.id


def test_the_scored_field_is_the_one_the_spec_names(setup):
    """``wasserstein_field`` (the dataset spec's) picks the field scored on its own: its
    ``field_wasserstein`` per lead is that field's column of the per-field Wasserstein
    distances, it is recorded in the id, and a field the data lacks is refused before Ray."""
    info, context, autoencoder, emulators = setup
    options = {"contexts": (1,), "members": 2, "trajectories": 1, "steps": 2}
    with pytest.raises(ValueError, match="the scored field 'vorticity' is not a field of tiny_euler"):
        evaluate(
            emulators["diffusion"],
            autoencoder,
            info,
            context,
            EvaluationConfig(wasserstein_field="vorticity", **options),
        )
    default = evaluate(emulators["diffusion"], autoencoder, info, context, EvaluationConfig(**options))
    pressure = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context,
        EvaluationConfig(wasserstein_field="pressure", **options),
    )
    assert pressure.id != default.id
    assert (
        evaluate(
            emulators["diffusion"],
            autoencoder,
            info,
            context,
            EvaluationConfig(wasserstein_field="density", **options),
        ).id
        == default.id
    )
    for artifact, field in ((default, "density"), (pressure, "pressure")):
        per_field = {
            (r["reference"], r["lead"]): float(r["wasserstein"])
            for r in _csv_rows(artifact, "per_field_lead.csv")
            if r["field"] == field
        }
        per_lead = _csv_rows(artifact, "per_lead.csv")
        assert per_lead and all(
            float(r["field_wasserstein"]) == pytest.approx(per_field[(r["reference"], r["lead"])], rel=1e-9)
            for r in per_lead
        )
        assert all(math.isfinite(float(r["semd"])) for r in per_lead)


def _number(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _numeric_rows(path):
    with open(path) as f:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_scores_do_not_depend_on_member_blocks_and_options_are_recorded(setup, tmp_path, monkeypatch):
    info, context, autoencoder, emulators = setup
    common = {
        "contexts": (1,),
        "members": 4,
        "trajectories": 2,
        "trajectory_seed": 3,
        "starts": (0, 2),  # simulation steps, on the stride-2 grid
        "vrmse_convention": "well",
        "steps": 3,
    }
    # One block of 4 members (scored in the actor) vs 4 blocks of 1, spilled to the store
    # and scored by a second pass one lead time at a time (a chunk budget of 1 byte).
    whole = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context.replace(store=ArtifactStore(tmp_path / "a")),
        EvaluationConfig(max_batch=4, **common),
    )
    monkeypatch.setattr(split_ensemble, "DEFAULT_CHUNK_BYTES", 1)
    passes = []
    score_split = evaluate_module.score_split_ensembles
    monkeypatch.setattr(
        evaluate_module, "score_split_ensembles", lambda *a, **k: passes.append(a[0]) or score_split(*a, **k)
    )
    split = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context.replace(store=ArtifactStore(tmp_path / "b")),
        EvaluationConfig(max_batch=1, **common),
    )
    assert len(passes) == 1 and passes[0].startswith(str(tmp_path / "b"))  # scored from the store
    assert not list((tmp_path / "b" / "evaluation").glob(".members-*"))  # and the scratch is gone
    for name in ("metrics.csv", "per_field_lead.csv", "per_trajectory.csv", "rank_histogram.csv"):
        rows_whole, rows_split = _numeric_rows(whole.path / name), _numeric_rows(split.path / name)
        assert len(rows_whole) == len(rows_split) > 0
        for a, b in zip(rows_whole, rows_split, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], float):
                    # Float32 networks give members equal to ~1e-7 whatever the batch size;
                    # the scores themselves are combined exactly.
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9, nan_ok=True), (name, key)
    trajectories = whole.manifest["trajectories"]
    assert len(trajectories) == 2 and trajectories == sorted(trajectories)
    per_trajectory = _numeric_rows(whole.path / "per_trajectory.csv")
    assert {(r["trajectory"], r["start"]) for r in per_trajectory if r["reference"] == "absolute"} == {
        (float(t), float(s)) for t in trajectories for s in (0, 2)
    }
    # The baselines on the same units: persistence per (trajectory, start), PCA of the
    # latent's size and the reconstruction per trajectory, each by horizon.
    baselines = _numeric_rows(whole.path / "baselines.csv")
    by_method = {
        m: {(r["trajectory"], r["start"]) for r in baselines if r["method"] == m}
        for m in ("persistence", "pca", "autoencoder")
    }
    assert by_method["persistence"] == {(float(t), float(s)) for t in trajectories for s in (0, 2)}
    assert by_method["pca"] == by_method["autoencoder"] == {(float(t), 0.0) for t in trajectories}
    assert all(math.isfinite(r["vrmse/lead_1-20"]) for r in baselines)
    summary = json.loads((whole.path / "summary.json").read_text())
    # As many components as the latent holds numbers, or every train state where there are fewer.
    train_states = sum(
        n * t for n, t in zip(info.splits["train"].n_trajectories, info.splits["train"].n_steps)
    )
    assert summary["pca_components"] == min(latent_numbers(autoencoder.manifest), train_states)
    assert set(summary["persistence_vrmse_by_horizon"]) == set(summary["horizons"])
    fields = {r["field"] for r in _numeric_rows(whole.path / "per_field_lead.csv")}
    assert fields == set(info.field_names)
    params = MlflowClient(context.tracking_uri).get_run(whole.manifest["mlflow_run_id"]).data.params
    assert params["vrmse_convention"] == "well" and params["vrmse_eps"] == "1e-07"
    assert params["starts"] == "[0, 2]" and params["trajectory_selection"] == "stratified, seed 3"
    # The options are part of the artifact's identity; the defaults leave ids unchanged.
    assert whole.manifest["vrmse_convention"] == "well" and whole.manifest["initial_states"] == [0, 2]


def test_guided_rollouts_from_a_later_start_state(setup):
    info, context, autoencoder, emulators = setup
    artifact = evaluate(
        emulators["diffusion"],
        autoencoder,
        info,
        context,
        EvaluationConfig(
            contexts=(1,),
            members=2,
            trajectories=1,
            starts=(0, 4),
            steps=2,
            guidance={"operator": "subsample", "factor": 2, "sigma_y": 0.1},
        ),
    )
    rows = _numeric_rows(artifact.path / "per_trajectory.csv")
    assert sorted(r["start"] for r in rows if r["reference"] == "absolute") == [0.0, 4.0]
    # The later start has fewer generated states, hence fewer per-lead rows.
    per_lead = _numeric_rows(artifact.path / "per_lead.csv")
    leads = {s: {r["lead"] for r in per_lead if r["start"] == s} for s in (0.0, 4.0)}
    assert leads[4.0] < leads[0.0] and all(math.isfinite(r["crps"]) for r in per_lead)


def test_solver_has_zero_spread_skill(setup):
    info, context, autoencoder, emulators = setup
    artifact = evaluate(
        emulators["solver"],
        autoencoder,
        info,
        context,
        EvaluationConfig(contexts=(1,), members=4, trajectories=2),
    )
    rows = _csv_rows(artifact)
    assert rows and all(float(r["spread_skill"]) == 0 for r in rows if r["horizon"] == "lead_1-20")
    assert artifact.manifest["members"] == 1


def test_pixel_solver_runs_without_autoencoder(setup):
    info, context, _, _ = setup
    pixel = _save_emulator(
        context.store,
        "emulator-pixel",
        "solver",
        list(info.state_shape),
        info.theta_dim,
        space="pixel",
        compression=1,
    )
    artifact = evaluate(
        pixel, None, info, context, EvaluationConfig(contexts=(1, 2), members=3, trajectories=1)
    )
    rows = _csv_rows(artifact)
    assert {r["reference"] for r in rows} == {"absolute"}
    assert {r["method"] for r in rows} == {"pixel solver"}
    summary = json.loads((artifact.path / "summary.json").read_text())
    assert summary["recon_vrmse"] is None and summary["infer_ms_per_state"] > 0
