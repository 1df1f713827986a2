"""Which checkpoint of a run a restart resumes from (trainers/checkpoints.py)."""

import io
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
import torch
from mlflow.tracking import MlflowClient

from lolaray.trainers.checkpoints import (
    COMPLETE_MARKER,
    STATE_FILE,
    checkpoint_dir_name,
    complete_checkpoints,
    mark_complete,
    newest_checkpoint,
    run_folder,
    run_uri,
)
from lolaray.trainers.loop import _RunLogger


@pytest.fixture
def run(tmp_path):
    filesystem, path = run_folder(run_uri(str(tmp_path / "train_runs"), "stage-abc"))
    filesystem.create_dir(path)
    return filesystem, path


def write_checkpoint(filesystem, run_path, epoch, *, marked=True):
    folder = f"{run_path}/{checkpoint_dir_name(epoch)}"
    filesystem.create_dir(folder)
    with filesystem.open_output_stream(f"{folder}/{STATE_FILE}") as out:
        buffer = io.BytesIO()
        torch.save({"epoch": epoch, "step": 3 * (epoch + 1)}, buffer)
        out.write(buffer.getvalue())
    if marked:
        mark_complete(filesystem, folder, epoch=epoch, step=3 * (epoch + 1))
    return folder


def ray_checkpoint(filesystem, folder):
    """What ``ray.train.get_checkpoint()`` hands back: a filesystem and a path on it."""
    return SimpleNamespace(filesystem=filesystem, path=folder)


def test_the_newest_marked_checkpoint_wins_over_an_older_one_ray_registered(run):
    filesystem, path = run
    registered = write_checkpoint(filesystem, path, 0)
    write_checkpoint(filesystem, path, 1)  # reported, but Ray lost its record of it
    chosen = newest_checkpoint(filesystem, path, ray_checkpoint=ray_checkpoint(filesystem, registered))
    assert (chosen.epoch, chosen.step) == (1, 6)
    assert chosen.read_state() == {"epoch": 1, "step": 6}


def test_an_unmarked_or_half_written_checkpoint_is_never_chosen(run):
    filesystem, path = run
    write_checkpoint(filesystem, path, 0)
    write_checkpoint(filesystem, path, 1, marked=False)  # died while uploading
    cut = write_checkpoint(filesystem, path, 2, marked=False)
    with filesystem.open_output_stream(f"{cut}/{COMPLETE_MARKER}") as out:
        out.write(b'{"epoch": 2, "st')  # died while writing the marker
    assert [c.epoch for c in complete_checkpoints(filesystem, path)] == [0]
    assert newest_checkpoint(filesystem, path).epoch == 0


def test_rays_checkpoint_wins_when_it_is_newer_than_every_marker(run):
    """Rank 0 died between report() and the marker: Ray registered it, so it is complete."""
    filesystem, path = run
    write_checkpoint(filesystem, path, 0)
    unmarked = write_checkpoint(filesystem, path, 1, marked=False)
    chosen = newest_checkpoint(filesystem, path, ray_checkpoint=ray_checkpoint(filesystem, unmarked))
    assert (chosen.path, chosen.epoch, chosen.step) == (unmarked, 1, None)


def test_a_run_without_checkpoints_starts_fresh(tmp_path):
    filesystem, path = run_folder(run_uri(str(tmp_path), "never-ran"))
    assert newest_checkpoint(filesystem, path) is None
    assert complete_checkpoints(filesystem, path) == []


def test_a_checkpoint_folder_of_another_layout_is_an_error(run):
    filesystem, path = run
    with pytest.raises(ValueError, match="epoch_<n>"):
        newest_checkpoint(filesystem, path, ray_checkpoint=ray_checkpoint(filesystem, f"{path}/checkpoint_3"))


def test_run_uri_is_absolute_for_a_relative_folder_and_kept_for_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_uri("store/_train_runs", "x") == f"{tmp_path}/store/_train_runs/x"
    assert run_uri("s3://bucket/store/", "x") == "s3://bucket/store/x"
    assert isinstance(run_folder(run_uri("store", "x"))[0], pafs.LocalFileSystem)


def test_a_restart_logs_the_resumed_epoch_once_when_the_dead_group_never_did(mlflow_uri):
    """The group can die after marking a checkpoint complete and before logging its epoch:
    the restart logs that epoch, and a second restart from the same checkpoint does not."""

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("catch-up")).info.run_id
    log = _RunLogger(run_id, mlflow_uri)
    epoch = {"train/optimizer_steps": 3, "train/loss": 0.5}
    log.catch_up(epoch, 3)
    log.catch_up(epoch, 3)
    log({"train/optimizer_steps": 6}, 6)
    assert [m.step for m in client.get_metric_history(run_id, "train/optimizer_steps")] == [3, 6]
    assert [m.value for m in client.get_metric_history(run_id, "train/loss")] == [0.5]
    _RunLogger(None, None).catch_up(epoch, 3)  # ranks other than 0: a no-op
