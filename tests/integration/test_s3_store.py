"""The smoke study with ``--store s3://…`` against a real S3 API on loopback (moto's server):
every artifact lands in the bucket, a run killed mid-way (SIGKILL of the study's process
group, once the autoencoder and a latent cache are in the bucket) resumes from the bucket, and a third run reuses
every stage."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3server import s3_server

STUDY = Path(__file__).parents[2] / "sweeps" / "compression.py"


def _stages(stdout: str) -> dict[str, tuple[int, int]]:
    """``trial → (stages ran, stages reused)`` from the study's closing lines."""
    return {
        m[1]: (int(m[2]), int(m[3]))
        for m in re.finditer(r"\[lolaray\] (\w+): ran (\d+) stage\(s\), reused (\d+)", stdout)
    }


def _manifests(s3, stage: str) -> list[str]:
    return [k for k in s3.keys(f"store/{stage}/") if k.endswith("/manifest.json") and "/." not in k]


@pytest.fixture(scope="module")
def s3_study(data_cache, smoke_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("s3-study")
    with s3_server() as s3:
        # One context: what is tested is where artifacts land, not the contexts' scores.
        command = [
            sys.executable,
            str(STUDY),
            "--profile",
            "smoke",
            "--latent-channels",
            "4",
            "--contexts",
            "1",
        ]
        command += ["--store", f"s3://{s3.bucket}/store", "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}"]
        env = {**os.environ, "LOLARAY_DATA_DIR": str(data_cache), **s3.env}
        runs = {}
        with open(work / "killed.log", "w") as log:
            killed = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env, start_new_session=True
            )
            deadline = time.monotonic() + 900
            while not _manifests(s3, "latents") and killed.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
            assert killed.poll() is None, "the study ended before a latent cache was in the bucket"
            os.killpg(killed.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
            killed.wait(timeout=60)
        runs["killed_with"] = {s: len(_manifests(s3, s)) for s in ("autoencoder", "latents", "emulator")}
        for name in ("resumed", "again"):
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=1200, cwd=work, env=env, check=False
            )
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
            runs[name] = done.stdout
        runs["keys"] = s3.keys("store/")
        runs["manifests"] = {
            s: _manifests(s3, s) for s in ("autoencoder", "latents", "emulator", "evaluation", "study")
        }
        yield work, runs


def test_every_artifact_lands_in_the_bucket(s3_study):
    work, runs = s3_study
    manifests = runs["manifests"]
    # one rate: its autoencoder, 3 latent caches, 2 latent emulators + the pixel solver, their
    # evaluations, and the study report
    assert {s: len(v) for s, v in manifests.items()} == {
        "autoencoder": 1,
        "latents": 3,
        "emulator": 3,
        "evaluation": 3,
        "study": 1,
    }
    keys = set(runs["keys"])
    (study,) = manifests["study"]
    assert study.replace("manifest.json", "study.html") in keys
    (autoencoder,) = manifests["autoencoder"]
    assert autoencoder.replace("manifest.json", "autoencoder.pt") in keys
    assert any(k.startswith("store/_train_runs/") for k in keys)  # Ray Train's storage_path too
    for latents in manifests["latents"]:
        assert any(k.startswith(latents.replace("manifest.json", "shards/")) for k in keys)
    assert not (work / "lolaray-store").exists()  # nothing went to a local default store
    assert f"study report: s3://lolaray/{study.replace('/manifest.json', '')}/study.html" in runs["again"]


def test_a_killed_study_resumes_from_the_bucket(s3_study):
    _, runs = s3_study
    before = runs["killed_with"]
    assert before["autoencoder"] == 1 and before["latents"] >= 1
    stages = _stages(runs["resumed"])
    assert set(stages) == {"c4", "pixel"}
    reused = sum(r for _, r in stages.values())
    # what the killed run finished is reused, not rebuilt: the autoencoder, its caches
    # and any emulator (the pixel solver runs beside them)
    assert reused >= sum(before.values()), (before, stages)
    assert sum(n for n, _ in stages.values()) + reused == 10  # 8 stages at ÷c4 + 2 pixel


def test_a_second_run_reuses_every_stage(s3_study):
    _, runs = s3_study
    assert _stages(runs["again"]) == {"c4": (0, 8), "pixel": (0, 2)}
    assert "Table 6 analogue" in runs["again"]
