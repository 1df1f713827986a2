"""The latent cache: Ray Data encoding into Arrow shards, manifest safety, streaming windows."""

import json

import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from wellfiles import make_tiny_dataset, write_tiny

from lolaray.platform.artifacts import ArtifactStore
from lolaray.platform.data import WellWindows, open_dataset, standardizer_for
from lolaray.platform.latent_cache import CorruptCacheError, build_latent_caches, window_dataset
from lolaray.platform.stages import ScalingSpec, StageContext
from lolaray.platform.well_format import compute_stats, write_stats
from lolaray.trainers import encoding
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, train_autoencoder
from lolaray.trainers.encoding import cache_latents, cache_latents_splits, open_cache
from lolaray.trainers.loop import LoopConfig
from lolaray.trainers.snapshots import load_autoencoder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny dataset (8x8, 11 steps) and a briefly trained smoke autoencoder (local mode)."""
    root = tmp_path_factory.mktemp("cache")
    info = open_dataset(make_tiny_dataset(root / "tiny", res=8, steps=11))
    context = StageContext.resolve(root / "store", f"sqlite:///{root / 'mlflow.db'}")
    config = AutoencoderConfig(
        preset="smoke",
        latent_channels=4,
        batch_size=4,
        valid_states=4,
        loop=LoopConfig(optimizer="adam", lr=1e-3, epochs=1, steps_per_epoch=2),
    )
    autoencoder = train_autoencoder(
        config, info, context.replace(scaling=ScalingSpec(workers=0)), log_model=False
    )
    return info, context, autoencoder


@pytest.mark.parametrize(
    ("split", "dtype", "tol"),
    [("valid", "float32", 1e-6), ("test", "float16", 2e-2), ("train", "bfloat16", 5e-2)],
)
def test_cached_latents_decode_like_direct_encoding(ray_cluster, setup, split, dtype, tol):
    info, context, autoencoder = setup
    artifact = cache_latents(
        autoencoder,
        info,
        split,
        context,
        dtype=dtype,
        repeat=2 if split == "train" else 1,
    )
    manifest = artifact.manifest
    assert manifest["latent_shape"] == [4, 4, 4] and manifest["latent_dtype"] == dtype
    trajectories = WellWindows(info, split, length=None, standardizer=standardizer_for(info))
    assert manifest["rows"] == len(trajectories) * manifest["repeat"]
    model, _ = load_autoencoder(autoencoder)
    rows = {r["trajectory_id"]: r for r in open_cache(artifact).trajectories()}
    assert len(rows) == manifest["rows"]
    for index in range(len(trajectories)):
        item = trajectories[index]
        name = trajectories.files[item["file"]].rsplit("/", 1)[-1]
        row = rows[f"{name}:{item['trajectory']}:0"]  # the unaugmented copy
        assert row["z"].shape == (11, 4, 4, 4)
        torch.testing.assert_close(row["theta"], item["theta"])
        with torch.no_grad():
            direct = model.decode(model.encode(item["x"].movedim(1, 0)))
            cached = model.decode(row["z"])
        torch.testing.assert_close(cached, direct, atol=tol, rtol=tol)
    if split == "train":  # augmented copies differ from copy 0 but keep theta's parameter
        augmented = [r for r in rows.values() if r["copy"] == 1]
        assert len(augmented) == len(trajectories)
        assert any(not torch.equal(a["z"], rows[a["trajectory_id"][:-1] + "0"]["z"]) for a in augmented)


def test_a_second_run_encodes_nothing(ray_cluster, setup, monkeypatch):
    info, context, autoencoder = setup
    first = cache_latents(autoencoder, info, "valid", context)
    monkeypatch.setattr(encoding, "build_latent_cache", lambda *a, **k: pytest.fail("encoded again"))
    assert cache_latents(autoencoder, info, "valid", context).id == first.id


def test_a_crash_mid_write_leaves_no_complete_cache(ray_cluster, setup, tmp_path):
    info, context, autoencoder = setup
    context = context.replace(store=ArtifactStore(tmp_path / "store"))
    with pytest.raises(Exception, match="injected encoder failure"):
        cache_latents(autoencoder, info, "test", context, encoder_kwargs={"fail_after_calls": 2})
    assert list((tmp_path / "store" / "latents").glob("*/manifest.json")) == []
    rebuilt = cache_latents(autoencoder, info, "test", context)
    assert rebuilt.manifest["rows"] == 4


def test_a_corrupted_shard_is_named(ray_cluster, setup):
    info, context, autoencoder = setup
    artifact = cache_latents(autoencoder, info, "valid", context)
    shard = artifact.path / "shards" / artifact.manifest["shards"][0]["file"]
    original = shard.read_bytes()
    try:
        shard.write_bytes(original[:-9] + bytes(9))
        with pytest.raises(CorruptCacheError, match=f"shard {shard.name} does not match its checksum"):
            open_cache(artifact)
    finally:
        shard.write_bytes(original)


def test_windows_stay_inside_trajectories(ray_cluster, setup):
    info, context, autoencoder = setup
    cache = open_cache(cache_latents(autoencoder, info, "valid", context))
    full = {r["trajectory_id"]: r["z"] for r in cache.trajectories()}
    rows = window_dataset(cache, length=3, stride=4, per_trajectory=3).take_all()
    assert len(rows) == 4 * 3
    for row in rows:
        z = torch.from_numpy(row["z"].copy())
        assert z.shape == (4, 3, 4, 4)
        expected = full[row["trajectory_id"]][row["start"] : row["start"] + 9 : 4].movedim(0, 1)
        torch.testing.assert_close(z, expected)
    with pytest.raises(ValueError, match="do not fit"):
        window_dataset(cache, length=4, stride=4)


def test_two_train_workers_see_disjoint_shards(ray_cluster, setup, tmp_path):
    def _consume(config):  # defined here so that it pickles by value: workers cannot import tests
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        seen = []
        for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=2, batch_format="numpy"):
            seen += [f"{t}@{s}" for t, s in zip(batch["trajectory_id"], batch["start"].tolist())]
            assert batch["z"].shape[1:] == (4, 3, 4, 4)
        with open(f"{config['out']}/rank{rank}.json", "w") as f:
            json.dump(seen, f)

    info, context, autoencoder = setup
    cache = open_cache(cache_latents(autoencoder, info, "train", context, repeat=2, dtype="bfloat16"))
    windows = window_dataset(cache, length=3, stride=4, per_trajectory=2)
    TorchTrainer(
        _consume,
        train_loop_config={"out": str(tmp_path)},
        datasets={"train": windows},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="consume"),
    ).fit()
    seen = [set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0]) + len(seen[1]) == cache.manifest["rows"] * 2


SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def distinct_splits(tmp_path_factory):
    """A tiny dataset like ``setup``'s whose splits differ: other fields (seeds), other
    trajectory counts (train 4, valid 3 in one file, test 2: batches of two straddle
    splits), so a row written to the wrong split shows."""
    root = tmp_path_factory.mktemp("distinct")
    files = {"train": (("periodic", 1.4, 2), ("open", 1.76, 2)), "valid": (("periodic", 1.4, 3),)}
    files["test"] = (("periodic", 1.4, 1), ("open", 1.76, 1))
    for s, split in enumerate(SPLITS):
        (root / "data" / split).mkdir(parents=True)
        for i, (bc, gamma, n_traj) in enumerate(files[split]):
            path = root / "data" / split / f"tiny_{bc}_{gamma}.hdf5"
            write_tiny(path, boundary=bc, gamma=gamma, seed=10 * s + i, res=8, steps=11, n_traj=n_traj)
    write_stats(compute_stats(sorted((root / "data" / "train").glob("*.hdf5"))), root / "stats.yaml")
    return open_dataset(root)


def _rows(artifact) -> list[dict]:
    """Every row of a cache's shards, every column, sorted by trajectory id."""
    cache = open_cache(artifact)  # verifies every shard against its manifest's checksum
    rows = [r for path in cache.shard_paths for r in pq.read_table(path).to_pylist()]
    return sorted(rows, key=lambda r: r["trajectory_id"])


def _count_jobs(monkeypatch) -> list[list[str]]:
    """The splits of each :func:`build_latent_caches` job that ``encoding`` runs from now on."""
    jobs = []

    def counted(folders, **kwargs):
        jobs.append(list(folders))
        return build_latent_caches(folders, **kwargs)

    monkeypatch.setattr(encoding, "build_latent_caches", counted)
    return jobs


def test_one_job_writes_the_caches_three_jobs_write(
    ray_cluster, setup, distinct_splits, tmp_path, monkeypatch
):
    """The caches of three splits written by one job are those of one job per split: same
    ids, same manifests, the same rows, column for column and latent byte for latent byte.

    Shard files are compared by their rows, not their bytes: a cache's files are named by
    its write's uuid and filled in the order the encoder actors finish, so not even two runs
    of ``cache_latents`` write the same bytes."""

    _, context, autoencoder = setup
    info = distinct_splits
    separate = context.replace(store=ArtifactStore(tmp_path / "separate"))
    together = context.replace(store=ArtifactStore(tmp_path / "together"))
    expected = {
        s: cache_latents(autoencoder, info, s, separate, repeat=2 if s == "train" else None) for s in SPLITS
    }
    jobs = _count_jobs(monkeypatch)
    caches = cache_latents_splits(autoencoder, info, SPLITS, together, repeat={"train": 2})
    assert jobs == [list(SPLITS)] and list(caches) == list(SPLITS)
    timing = {"created", "mlflow_run_id", "shards"}
    client = MlflowClient(context.tracking_uri)
    for split, rows in zip(SPLITS, (4 * 2, 3, 2)):
        ours, theirs = caches[split], expected[split]
        assert ours.id == theirs.id and ours.path.parent == tmp_path / "together" / "latents"
        assert {k: v for k, v in ours.manifest.items() if k not in timing} == {
            k: v for k, v in theirs.manifest.items() if k not in timing
        }
        assert ours.manifest["rows"] == rows
        ours_rows, their_rows = _rows(ours), _rows(theirs)
        assert [r["trajectory_id"] for r in ours_rows] == [r["trajectory_id"] for r in their_rows]
        assert ours_rows == their_rows
        schemas = {pq.read_schema(p) for p in open_cache(ours).shard_paths + open_cache(theirs).shard_paths}
        assert len(schemas) == 1 and "split" not in schemas.pop().names
        run = client.get_run(ours.manifest["mlflow_run_id"])  # each split its own finished run
        assert (
            run.info.status == "FINISHED"
            and run.info.run_name == f"latents-{split}-x{ours.manifest['compression']:g}"
        )
        assert run.data.tags["artifact_id"] == ours.id and run.data.metrics["cache/rows"] == rows
    latents = [{r["latent"] for r in _rows(caches[s])} for s in SPLITS]
    assert not (latents[0] & latents[1] or latents[0] & latents[2] or latents[1] & latents[2])


def test_the_shared_job_encodes_only_missing_caches_and_a_crash_publishes_none(
    ray_cluster, setup, tmp_path, monkeypatch
):
    """A stored cache stays out of the job; a crash of the job publishes none of its caches
    and fails each one's run; the caches are then built, and found the next time."""
    info, context, autoencoder = setup
    context = context.replace(store=ArtifactStore(tmp_path / "store"))
    valid = cache_latents(autoencoder, info, "valid", context)
    jobs = _count_jobs(monkeypatch)
    with pytest.raises(Exception, match="injected encoder failure"):
        cache_latents_splits(autoencoder, info, SPLITS, context, encoder_kwargs={"fail_after_calls": 2})
    assert [p.parent.name for p in (tmp_path / "store" / "latents").glob("*/manifest.json")] == [valid.id]
    client = MlflowClient(context.tracking_uri)
    failed = client.search_runs(
        [client.get_experiment_by_name(context.experiment).experiment_id],
        filter_string="tags.job_splits = 'train,test' and attributes.status = 'FAILED'",
    )
    assert sorted(r.info.run_name.split("-")[1] for r in failed) == ["test", "train"]
    caches = cache_latents_splits(autoencoder, info, SPLITS, context)
    assert jobs == [["train", "test"]] * 2
    assert caches["valid"].manifest == valid.manifest  # the stored cache, not a new one
    assert [caches[s].manifest["rows"] for s in SPLITS] == [4 * 4, 4, 4]  # train: 4 copies by default
    assert caches["test"].id == cache_latents(autoencoder, info, "test", context).id
    monkeypatch.setattr(encoding, "build_latent_caches", lambda *a, **k: pytest.fail("encoded again"))
    again = cache_latents_splits(autoencoder, info, SPLITS, context)
    assert {s: a.manifest for s, a in again.items()} == {s: a.manifest for s, a in caches.items()}
