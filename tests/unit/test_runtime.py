"""The training loop in this process (:class:`~lolaray.trainers.runtime.InProcessRuntime`):
checkpoints in the run's storage as a Ray Train worker group keeps them, and an exact resume."""

import dataclasses

import pytest
import torch
from torch import nn

from lolaray.platform.stages import ScalingSpec
from lolaray.sweeps.chain import PROFILES, _chain_scaling
from lolaray.trainers.checkpoints import complete_checkpoints, run_folder
from lolaray.trainers.launch import fit_stage
from lolaray.trainers.loop import LoopConfig, run_training
from lolaray.trainers.runtime import InProcessRuntime, current_runtime, in_process
from lolaray.trainers.training_stage import TrainingRecord


class NoisyRegression:
    """y = 3x + noise, batches drawn from torch's global generator: a resume is exact only
    if the loop restores the RNG state with the weights and the optimizer."""

    def build_model(self) -> nn.Module:
        return nn.Linear(4, 1)

    def train_batches(self, epoch: int):
        while True:
            x = torch.randn(8, 4)
            yield x, 3 * x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(8, 1)

    def valid_batches(self):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(16, 4, generator=generator)
        yield x, 3 * x.sum(dim=1, keepdim=True)

    def loss(self, model, batch, device):
        x, y = batch
        return nn.functional.mse_loss(model(x.to(device)), y.to(device)), x.shape[0]


LOOP = LoopConfig(optimizer="adam", lr=1e-2, epochs=5, steps_per_epoch=3, seed=7)


def test_checkpoints_are_marked_in_the_run_storage_and_the_oldest_removed(tmp_path):
    run = str(tmp_path / "run")
    summary = run_training(NoisyRegression(), LOOP, run_storage=run, runtime=InProcessRuntime())
    assert summary["status"] == "finished" and summary["step"] == 15 and summary["resumed_from_step"] is None
    kept = complete_checkpoints(*run_folder(run))
    assert [(c.epoch, c.step) for c in kept] == [(3, 12), (4, 15)]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["epoch_00003", "epoch_00004"]


def test_a_rerun_resumes_from_the_newest_complete_checkpoint_exactly(tmp_path):
    run = tmp_path / "run"
    run_training(NoisyRegression(), LOOP, run_storage=str(run), runtime=InProcessRuntime())
    uninterrupted = complete_checkpoints(*run_folder(str(run)))[-1].read_state()
    # As if the process died during the last epoch: its checkpoint was never marked.
    (run / "epoch_00004" / "lolaray-complete.json").unlink()

    summary = run_training(NoisyRegression(), LOOP, run_storage=str(run), runtime=InProcessRuntime())
    assert summary["resumed_from_step"] == 12 and summary["step"] == 15
    resumed = complete_checkpoints(*run_folder(str(run)))[-1].read_state()
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name


def test_without_storage_the_newest_state_stays_in_memory():
    runtime = InProcessRuntime()
    run_training(NoisyRegression(), LOOP, runtime=runtime)
    assert runtime.last_state["epoch"] == 4 and runtime.last_state["step"] == 15


def test_the_process_runtime_is_current_only_inside_its_block():
    runtime = InProcessRuntime({"train": [1, 2]})
    with in_process(runtime):
        assert current_runtime() is runtime
        assert current_runtime().dataset("train") == [1, 2]
        with pytest.raises(
            KeyError, match=r"no dataset 'valid' was given to this training \(given: \['train'\]\)"
        ):
            current_runtime().dataset("valid")
    with pytest.raises(RuntimeError):  # outside: a Ray Train worker's, and this is none
        current_runtime()


def _worker(config: dict) -> dict:
    torch.set_num_threads(config["threads"])
    return run_training(NoisyRegression(), LOOP, run_storage=config["run_storage"])


def test_fit_stage_in_process_reads_the_final_state_and_restores_the_callers_threads(tmp_path):
    before = torch.get_num_threads()
    threads = 1 if before > 1 else 2
    summary, state = fit_stage(
        _worker, {}, name="run", storage_path=str(tmp_path), scaling=ScalingSpec(workers=0, threads=threads)
    )
    assert torch.get_num_threads() == before
    assert summary["step"] == 15 and state["epoch"] == 4 and state["step"] == 15


@pytest.mark.parametrize(
    ("workers", "actors", "in_process", "expected"),
    [(1, 1, True, (0, True)), (1, 1, False, (1, False)), (2, 3, True, (2, False))],
)
def test_a_study_on_one_machine_trains_and_rolls_out_a_one_worker_profile_in_process(
    workers, actors, in_process, expected
):
    profile = dataclasses.replace(PROFILES["smoke"], workers=workers, actors=actors)
    scaling = _chain_scaling(profile, in_process=in_process)
    assert (scaling.workers, scaling.local_rollouts) == expected


def test_the_training_record_of_a_manifest_round_trips():
    record = TrainingRecord.from_training(
        {"resumed_from_step": 8, "node_id": "n1"}, {"step": 12, "skipped_total": 1, "resumes": [4, 8]}
    )
    manifest = {"compression": 5.0, **record.to_dict()}
    assert TrainingRecord.of(manifest) == record
    assert record.optimizer_steps == 12 and record.resumed_from_steps == [4, 8]
