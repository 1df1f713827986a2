"""Shared test setup: quiet, offline-friendly Ray settings and small datasets."""

import os

# Before any Ray import: no auth token for the throwaway local clusters, short Train
# health checks (report() would block 2 s each), no usage stats (ray.md §6).
for _key, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
}.items():
    os.environ.setdefault(_key, _value)

import pytest
from browser import Chromium, _chromium_executable

from lolaray.platform.data import open_dataset
from lolaray.platform.embedded import ensure_embedded_dataset
from lolaray.platform.stages import ScalingSpec, StageContext


@pytest.fixture
def mlflow_uri(tmp_path):
    """An MLflow record (SQLite) in this test's folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def local_stage(tmp_path, mlflow_uri):
    """A stage context for this test: its store in the test's folder, its record in
    :func:`mlflow_uri`, training and rollouts in this process (no Ray Train, no actors)."""

    return StageContext.resolve(
        tmp_path / "store", mlflow_uri, scaling=ScalingSpec(workers=0, local_rollouts=True)
    )


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """A private dataset cache folder for the whole test session."""
    path = tmp_path_factory.mktemp("lolaray-data")
    os.environ["LOLARAY_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def smoke_dataset(data_cache):
    """The embedded dataset at the smoke preset, generated once per session (in-process)."""

    ensure_embedded_dataset(
        "euler_quadrants", "smoke", cache_dir=data_cache, parallel="local", progress=False
    )
    return open_dataset("euler_quadrants:smoke", cache_dir=data_cache)


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session (see ``tests/browser.py``)."""

    browser = Chromium(_chromium_executable())
    try:
        browser.send("Browser.getVersion", timeout=60)
        yield browser
    finally:
        browser.close()
