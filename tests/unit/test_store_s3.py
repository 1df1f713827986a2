"""The artifact store on a real S3 API (moto's server on loopback): artifacts built on the
driver and on the store, networks loaded from the bucket, latent shards written and read
through the store's file system, scratch folders, and clear errors for a store that cannot
be used."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from s3server import s3_server

from lolaray.evaluation.split_ensemble import read_chunk, remove_scratch, scratch_folder, write_block
from lolaray.platform.artifacts import ArtifactStore, filesystem_for, open_artifact
from lolaray.platform.latent_cache import LatentCache, describe_shards, encode_latents
from lolaray.platform.preprocessing import Standardizer
from lolaray.trainers.autoencoder import AUTOENCODER_PRESETS, build_autoencoder
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.snapshots import load_autoencoder, load_emulator, save_autoencoder, save_emulator


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


def test_artifacts_built_on_the_driver_and_on_the_store_land_in_the_bucket(s3):
    store = ArtifactStore(f"s3://{s3.bucket}/store")
    store.check_writable()
    with store.build("thing", "thing-1", {"a": 1}) as folder:
        (folder / "x.txt").write_text("driver")
    with store.build_on_store("thing", "thing-2", {"b": 2}) as uri:
        assert uri.startswith(f"s3://{s3.bucket}/store/thing/.thing-2-")
        fs, path = filesystem_for(uri)
        with fs.open_output_stream(f"{path}/sub/y.txt") as f:
            f.write(b"worker")
    keys = set(s3.keys("store/thing/"))
    assert {"store/thing/thing-1/x.txt", "store/thing/thing-1/manifest.json"} <= keys
    assert {"store/thing/thing-2/sub/y.txt", "store/thing/thing-2/manifest.json"} <= keys
    assert not [k for k in keys if "/.thing-2-" in k]  # the staging folder is gone
    assert store.complete_ids("thing") == {"thing-1", "thing-2"}
    two = store.get("thing", "thing-2")
    assert two.manifest["b"] == 2 and store.read_text(two, "sub/y.txt") == "worker"
    assert open_artifact(two.uri).manifest == two.manifest
    with pytest.raises(ValueError, match="not on a local store"):
        _ = two.path


def test_a_failed_build_on_the_store_publishes_nothing(s3):
    store = ArtifactStore(f"s3://{s3.bucket}/failing")
    with pytest.raises(RuntimeError, match="boom"), store.build_on_store("thing", "thing-3") as uri:
        fs, path = filesystem_for(uri)
        with fs.open_output_stream(f"{path}/half.txt") as f:
            f.write(b"half")
        raise RuntimeError("boom")
    assert store.get("thing", "thing-3") is None
    assert [k for k in s3.keys("failing/") if not k.endswith("/")] == []  # folder markers only


def test_networks_load_from_the_bucket(s3):
    store = ArtifactStore(f"s3://{s3.bucket}/models")
    torch.manual_seed(0)
    autoencoder = build_autoencoder("smoke", pixel_channels=2, latent_channels=4).eval()
    kwargs = {**AUTOENCODER_PRESETS["smoke"], "pixel_channels": 2, "latent_channels": 4}
    standardizer = Standardizer(("a", "b"), ("none", "none"), (0.5, 1.0), (2.0, 3.0))
    config = EmulatorConfig(kind="solver", preset="smoke", window=3, stride=1)
    solver = build_emulator(config, (4, 2, 2), 3).eval()
    with store.build("autoencoder", "ae", {}) as folder:
        save_autoencoder(folder, autoencoder, kwargs, standardizer)
    with store.build("emulator", "em", {}) as folder:
        save_emulator(folder, solver, config, (4, 2, 2), 3)
    loaded, loaded_standardizer = load_autoencoder(store.get("autoencoder", "ae"))
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], autoencoder(x)[0])
    assert loaded_standardizer == standardizer
    emulator, loaded_config = load_emulator(f"s3://{s3.bucket}/models/emulator/em")
    assert loaded_config == config
    for a, b in zip(emulator.state_dict().values(), solver.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="has no file 'emulator.pt'"):
        load_emulator(f"s3://{s3.bucket}/models/emulator/missing")


def test_latent_shards_are_written_and_read_through_the_store(s3):
    store = ArtifactStore(f"s3://{s3.bucket}/latents")
    z = torch.randn(3, 4, 2, 2)  # (L, C, h, w)
    table = pa.table(
        {
            "trajectory_id": ["f:0:0"],
            "file": ["f"],
            "trajectory": [0],
            "copy": [0],
            "theta": [np.zeros(2, dtype=np.float32)],
            "length": [3],
            "latent": [encode_latents(z, "float32")],
        }
    )
    manifest = {"latent_shape": [4, 2, 2], "latent_dtype": "float32"}
    with store.build_on_store("latents", "latents-1", manifest) as uri:
        fs, path = filesystem_for(uri)
        pq.write_table(table, f"{path}/shards/part-0.parquet", filesystem=fs)
        manifest.update(describe_shards(fs, f"{path}/shards"))
    artifact = store.get("latents", "latents-1")
    assert artifact.manifest["rows"] == 1 and artifact.manifest["min_length"] == 3
    (row,) = LatentCache(artifact.uri, artifact.manifest).trajectories()  # checksums verified
    assert torch.equal(row["z"], z)


def test_split_ensemble_scratch_on_the_bucket(s3):
    folder = scratch_folder(f"s3://{s3.bucket}/scratch", "evaluation", "abc")
    members = np.arange(2 * 5 * 1 * 3, dtype=np.float32).reshape(2, 5, 1, 3)
    write_block(folder, (0, 0, 1), 0, members)
    np.testing.assert_array_equal(read_chunk(folder, (0, 0, 1), [0], range(2, 4)), members[:, 2:4])
    remove_scratch(folder)
    assert not [k for k in s3.keys("scratch/") if ".members-" in k]  # (folder markers may stay)


@pytest.mark.parametrize(
    ("problem", "root", "env", "message"),
    [
        ("missing bucket", "s3://no-such-bucket/store", {}, "the bucket 'no-such-bucket' does not exist"),
        ("no credentials", None, {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "access denied"),
        ("unreachable", None, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach http://127.0.0.1:9"),
    ],
)
def test_a_store_that_cannot_be_used_gets_a_clear_error(s3, monkeypatch, problem, root, env, message):
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    root = root or f"s3://{s3.bucket}/store"
    with pytest.raises(PermissionError, match=message) as error:
        ArtifactStore(root).check_writable()
    assert root in str(error.value), problem
    assert os.environ.get("AWS_ENDPOINT_URL") == env.get("AWS_ENDPOINT_URL", s3.endpoint)
