"""Integration tests share one embedded Ray cluster per session (ray.init costs 4-9 s)."""

import tempfile

import pytest
import ray

from lolaray.platform.session import start_ray


@pytest.fixture(scope="session")
def ray_cluster():
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: unix-socket paths are length-limited
    resources = start_ray(num_cpus=4, object_store_memory=512 * 1024**2, temp_dir=temp_dir)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield resources
    ray.shutdown()


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
