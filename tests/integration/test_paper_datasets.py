"""The smoke study on tiny folders in The Well's layout that mimic the paper's other two
datasets (``tests/wellfiles.py``): rayleigh_benard (non-square grid, x periodic / y WALL,
ln Ra and ln Pr in θ) and turbulence_gravity_cooling (3-D, log-transformed fields, Δ = 1).
Each runs ``compression.py`` as a user would, with the paper's settings picked by the
dataset's name and only the horizons (and RB's start state) shortened to fit the tiny
trajectories (``tests/paper_like.py``). The RB-like folder also carries a time-invariant
field (``depth``) and a time-varying scalar (``forcing``): the study conditions every
network on them, and no prediction or metric holds them (issue 16, point 3, end to end).

A study costs minutes, so each is one that another test runs anyway (``conftest.py``):
the RB study is the one ``test_s3_store.py`` kills and resumes with its store in an S3
bucket (checked here on a copy of the bucket's artifacts), the TGC study the one
``test_sweep.py`` places on a simulated 2-node cluster."""

import csv
import math

import pytest
from mlflow.tracking import MlflowClient
from paper_like import PAPER_LIKE

from lolaray.platform.artifacts import ArtifactStore
from lolaray.platform.data import open_dataset

CASES = {
    # fixture (conftest.py), latent grid
    "rayleigh_benard": ("s3_study", (2, 1)),
    "turbulence_gravity_cooling": ("two_node_study", (1, 1, 1)),
}


def _artifacts(store: ArtifactStore, stage: str) -> list:
    return [store.get(stage, i) for i in sorted(store.complete_ids(stage))]


@pytest.mark.parametrize("name", list(CASES))
def test_the_smoke_study_runs_on_the_papers_other_datasets(request, name):
    fixture, latent_grid = CASES[name]
    study = request.getfixturevalue(fixture)
    if name == "turbulence_gravity_cooling":
        assert study.done.returncode == 0, study.done.stdout[-4000:] + study.done.stderr[-4000:]
    overrides = PAPER_LIKE[name]
    store, uri = ArtifactStore(study.store), study.uri

    known = ["depth", "forcing"] if name == "rayleigh_benard" else []
    (autoencoder,) = _artifacts(store, "autoencoder")
    # The latent state: the code, then the known channels pooled to its grid.
    assert tuple(autoencoder.manifest["latent_shape"]) == (8 + len(known), *latent_grid)
    assert (
        autoencoder.manifest.get("constant_fields", []) + autoencoder.manifest.get("varying_scalars", [])
        == known
    )
    emulators = {a.manifest["space"] + "/" + a.manifest["kind"]: a for a in _artifacts(store, "emulator")}
    for emulator in emulators.values():
        assert emulator.manifest.get("known_channels", 0) == len(known), emulator.id
    pixel = "--no-pixel" not in overrides
    assert set(emulators) == {"latent/diffusion", "latent/solver", *(["pixel/solver"] if pixel else [])}
    # θ enters standardized, ln of the paper's log parameters (found in the folder's spelling).
    theta = emulators["latent/diffusion"].manifest["theta_standardizer"]
    logged = {n for n, log in zip(theta["parameter_names"], theta["log"]) if log}
    assert logged == ({"Rayleigh", "Prandtl"} if name == "rayleigh_benard" else {"rho0", "T0"})

    evaluations = _artifacts(store, "evaluation")
    assert len(evaluations) == 2 + pixel
    horizons = {f"lead_{h.replace(':', '-')}" for h in next(a for a in overrides if ":" in a).split(",")}
    for evaluation in evaluations:
        rows = list(csv.DictReader((evaluation.path / "metrics.csv").read_text().splitlines()))
        assert {row["horizon"] for row in rows} == horizons, evaluation.id
        # Only the predicted fields are scored; a known channel is never a prediction.
        per_field = list(csv.DictReader((evaluation.path / "per_field_lead.csv").read_text().splitlines()))
        assert {row["field"] for row in per_field} == set(open_dataset(study.folder).field_names)
        assert not {row["field"] for row in per_field} & set(known), evaluation.id
        for row in rows:
            for metric in ("vrmse", "nrmse", "psrmse_low", "wasserstein", "crps"):
                assert math.isfinite(float(row[metric])) and float(row[metric]) > 0, (evaluation.id, row)
        assert (evaluation.path / "power_spectra.html").exists()
    # The dataset's settings are on the study's parent run (each run's, where it was resumed).
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study.experiment)
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep'")
    assert parents and [p.info.status for p in parents].count("FINISHED") >= 1
    for parent in parents:
        params = parent.data.params
        assert params["dataset_spec.name"] == name and params["dataset_spec.source"] == "paper + overrides"
        assert params["dataset_spec.stride"] == ("4" if name == "rayleigh_benard" else "1")
