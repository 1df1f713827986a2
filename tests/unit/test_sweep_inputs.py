"""Bad input to the sweeps: each a clear error (exit status 2) before any work starts."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wellfiles import make_tiny_dataset

from lolaray.sweeps import compression, context
from lolaray.sweeps.sweep import SweepInputError, check_mlflow, default_concurrency

REPO = Path(__file__).resolve().parents[2]


def _run(main, argv, capsys, tmp_path):
    """Run ``main`` from ``tmp_path``; returns (status, stderr). Nothing may be created
    besides what the arguments point at: no store, no MLflow database, no Ray."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        status = main(argv)
    finally:
        os.chdir(cwd)
    return status, capsys.readouterr().err


@pytest.fixture
def ok_args(tmp_path):
    return [
        "--profile",
        "smoke",
        "--store",
        str(tmp_path / "store"),
        "--mlflow-uri",
        f"sqlite:///{tmp_path}/m.db",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
        (["--dataset", "euler_quadrants:huge"], "unknown preset 'huge'"),
        (["--dataset", "euler_multi_quadrants_openBC"], "pass its base path with data_root/--data-root"),
        (["--latent-channels"], "the latent channel list is empty"),
        (["--latent-channels", "4", "0"], "latent channel counts must be >= 1"),
        (["--mlflow-uri", "http://127.0.0.1:9"], "cannot reach the MLflow server at http://127.0.0.1:9"),
        (
            ["--mlflow-uri", "sqlite:////no/such/folder/mlflow.db"],
            "the folder /no/such/folder does not exist",
        ),
        # /sys refuses new entries even to root, unlike a chmod-ed folder.
        (["--store", "/sys/lolaray-store"], "artifact store /sys/lolaray-store"),
        (["--max-concurrent-trials", "0"], "--max-concurrent-trials must be >= 1"),
        (["--contexts", "1", "5"], "context lengths must lie in [1, 4], got [1, 5]"),
        (["--guidance", "downscale", "--guidance-factor", "0"], "need factor >= 1"),
        (["--guidance", "subsample", "--sigma-y", "0"], "var_y must be > 0"),
    ],
)
def test_compression_sweep_rejects_bad_input_before_work(argv, message, ok_args, capsys, tmp_path):
    status, err = _run(compression.main, ok_args + argv, capsys, tmp_path)
    assert status == 2
    assert "compression.py: error:" in err and message in err
    assert not (tmp_path / "store" / "_tune").exists() and not list((tmp_path / "store").glob("autoencoder*"))


def test_context_sweep_rejects_bad_input_before_work(ok_args, capsys, tmp_path):
    status, err = _run(context.main, ok_args + ["--contexts", "0"], capsys, tmp_path)
    assert status == 2 and "contexts and steps must be >= 1" in err
    status, err = _run(context.main, ok_args + ["--dataset", "nope"], capsys, tmp_path)
    assert status == 2 and "unknown dataset 'nope'" in err


def test_an_unreachable_ray_address_is_a_clear_error(tmp_path):
    # A fresh process: the test session may already hold an embedded Ray.
    began = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "compression.py"),
            "--profile",
            "smoke",
            "--address",
            "127.0.0.1:1",
        ]
        + ["--store", str(tmp_path / "store"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in done.stderr
    assert not list((tmp_path / "store").glob("autoencoder*"))
    print(f"unreachable address reported in {time.perf_counter() - began:.1f} s")


def test_check_mlflow_accepts_a_local_store(tmp_path):
    check_mlflow(f"sqlite:///{tmp_path}/ok.db")
    with pytest.raises(SweepInputError, match="cannot reach"):
        check_mlflow("http://127.0.0.1:9", timeout=2)


@pytest.mark.parametrize(
    "resources, workers, expected",
    [({"CPU": 4}, 1, 3), ({"CPU": 16}, 1, 12), ({"CPU": 64, "GPU": 8}, 2, 4), ({"CPU": 1}, 1, 1)],
)
def test_default_concurrency(resources, workers, expected):
    assert default_concurrency(resources, workers) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--stride", "4"],
            "spans 17 steps, longer than its shortest trajectory (12 steps); pass --stride 2",
        ),
        (["--window", "13"], "pass --window 12 --stride 1"),
        (["--horizons", "1:8,4:10"], "--horizons must be increasing, non-overlapping"),
        (["--starts", "-1"], "--starts must be >= 0"),
    ],
)
def test_a_folder_that_cannot_hold_the_window_is_refused_before_work(
    argv, message, ok_args, capsys, tmp_path
):
    """An unseen folder of 12 snapshots (the 3-D folder of issue 16 was this short): its
    inferred stride fits, an override that does not names the option to change."""
    folder = make_tiny_dataset(tmp_path / "short", res=8, steps=12)
    status, err = _run(compression.main, ok_args + ["--dataset", str(folder), *argv], capsys, tmp_path)
    assert status == 2 and "compression.py: error:" in err and message in err, err
    assert not (tmp_path / "store").exists() and not (tmp_path / "m.db").exists()
