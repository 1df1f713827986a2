"""Integration tests share one embedded Ray cluster per session (ray.init costs 4-9 s), and
the two studies that each serve two test files (a study costs minutes on 2 cores):

* :func:`two_node_study`: the smoke study on the turbulence_gravity_cooling-like folder
  against a simulated 2-node cluster (the placement test of ``test_sweep.py`` and the
  TGC case of ``test_paper_datasets.py``);
* :func:`s3_study`: the smoke study on the rayleigh_benard-like folder with its store in
  an S3 bucket, killed and resumed (``test_s3_store.py`` and the RB case of
  ``test_paper_datasets.py``).
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import ray
from paper_like import paper_like_argv
from ray._private.utils import get_ray_address_file
from ray.cluster_utils import Cluster
from s3server import s3_server
from wellfiles import make_gravity_cooling_like, make_rayleigh_benard_like

from lolaray.platform.session import start_ray

STUDY = Path(__file__).parents[2] / "sweeps" / "compression.py"


@pytest.fixture(scope="session")
def ray_cluster():
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: unix-socket paths are length-limited
    resources = start_ray(num_cpus=4, object_store_memory=512 * 1024**2, temp_dir=temp_dir)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield resources
    ray.shutdown()


@pytest.fixture(scope="session")
def two_node_study(data_cache, tmp_path_factory):
    """``compression.py --address`` against a simulated 2-node cluster (ray.cluster_utils),
    on the turbulence_gravity_cooling-like folder (c8 and the pixel baseline, context 1):
    one trial driver slot per node, and a head with no CPU, as on a real cluster."""

    work = tmp_path_factory.mktemp("two-nodes")
    folder = make_gravity_cooling_like(work / "turbulence_gravity_cooling")
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: unix-socket paths are length-limited
    # Cluster() writes the head's address into Ray's default temp folder (/tmp/ray) whatever
    # temp_dir says, and fails on a fresh machine where nothing has created that folder yet.
    Path(get_ray_address_file(None)).parent.mkdir(parents=True, exist_ok=True)
    node = {"resources": {"train_driver": 1}, "object_store_memory": 256 * 1024**2}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node, "num_cpus": 0, "include_dashboard": False, "temp_dir": temp_dir},
    )
    try:
        worker_node = cluster.add_node(**node, num_cpus=4)
        cluster.wait_for_nodes()
        nodes = {n.node_id for n in cluster.list_all_nodes()}
        uri = f"sqlite:///{work / 'mlflow.db'}"
        argv = paper_like_argv("turbulence_gravity_cooling", folder)
        argv += ["--address", cluster.address, "--store", str(work / "store"), "--mlflow-uri", uri]
        done = subprocess.run(
            [sys.executable, str(STUDY), *argv, "--max-concurrent-trials", "2"],
            capture_output=True,
            check=False,
            text=True,
            timeout=900,
            cwd=work,
            env={**os.environ, "LOLARAY_DATA_DIR": str(data_cache)},
        )
    finally:
        cluster.shutdown()
    return SimpleNamespace(
        done=done,
        nodes=nodes,
        worker=worker_node.node_id,
        store=work / "store",
        uri=uri,
        experiment="turbulence_gravity_cooling",
        folder=folder,
    )


def _manifests(s3, stage: str) -> list[str]:
    return [k for k in s3.keys(f"store/{stage}/") if k.endswith("/manifest.json") and "/." not in k]


def _download(s3, prefix: str, folder: Path) -> None:
    """The bucket's objects under ``prefix`` into ``folder`` (same relative keys)."""
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for key in s3.keys(prefix):
        target = folder / key
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(s3.bucket, key, str(target))


@pytest.fixture(scope="session")
def s3_study(data_cache, tmp_path_factory):
    """The smoke study on the rayleigh_benard-like folder (c8, context 1; with a constant
    field and a time-varying scalar) with
    ``--store s3://…`` against moto's S3 server: killed by SIGKILL of its process group once
    the autoencoder and a latent cache are in the bucket, run again to completion
    (``resumed``), and once more (``again``). Also yields the bucket's keys and manifests,
    and a local copy of its complete artifacts (``store``; the server stops here)."""

    work = tmp_path_factory.mktemp("s3-study")
    # With a constant field and a time-varying scalar: known channels end to end (issue 16).
    folder = make_rayleigh_benard_like(work / "rayleigh_benard", constant=True)
    with s3_server() as s3:
        command = [sys.executable, str(STUDY), *paper_like_argv("rayleigh_benard", folder)]
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
        for stage in ("autoencoder", "emulator", "evaluation"):
            _download(s3, f"store/{stage}/", work / "bucket")
    return SimpleNamespace(
        work=work,
        runs=runs,
        store=work / "bucket" / "store",
        uri=f"sqlite:///{work / 'mlflow.db'}",
        experiment="rayleigh_benard",
        folder=folder,
    )


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
