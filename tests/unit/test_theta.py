"""θ standardized from the train split inside the emulators' label embedding, and nowhere else."""

import math

import numpy as np
import pytest
import torch
from wellfiles import make_tiny_dataset

from lolaray.platform.data import WellWindows, open_dataset, theta_standardizer_for
from lolaray.platform.preprocessing import ThetaStandardizer, fit_theta_standardizer
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.snapshots import EMULATOR_FILE, load_emulator, save_emulator
from lolaray.trainers.transformer import LabelEmbedding

RB_LIKE = ThetaStandardizer(
    parameter_names=("rayleigh", "prandtl"),
    log=(True, False),
    mean=(math.log(1e8), 2.0),
    std=(1.5, 0.5),
    boundary_codes=4,
)


def test_fitted_statistics_are_those_of_the_logged_train_parameters():
    values = np.array([[1e6, 1.0, 3.0], [1e8, 1.0, 5.0], [1e10, 1.0, 7.0]])
    fitted = fit_theta_standardizer(
        values, parameter_names=("ra", "pr", "gamma"), log_parameters=("ra",), boundary_codes=4
    )
    assert fitted.log == (True, False, False)
    np.testing.assert_allclose(fitted.mean, (math.log(1e8), 1.0, 5.0))
    np.testing.assert_allclose(fitted.std, (math.log(100) * math.sqrt(2 / 3), 1.0, math.sqrt(8 / 3)))
    # pr is constant over the split: std 1, so it enters as 0 rather than dividing by zero.
    theta = torch.tensor([[1e8, 1.0, 5.0, 2, 2, 0, 0]])
    embedding = LabelEmbedding(7, 4, **fitted.label_standardization())
    torch.testing.assert_close(embedding.standardize(theta), torch.tensor([[0.0, 0.0, 0.0, 2, 2, 0, 0]]))
    assert ThetaStandardizer.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(ValueError, match="'pr' takes values <= 0"):
        fit_theta_standardizer(
            [[1.0, 0.0, 1.0]], parameter_names=("ra", "pr", "gamma"), log_parameters=("pr",), boundary_codes=4
        )
    with pytest.raises(ValueError, match=r"\['mach'\] are not parameters"):
        fit_theta_standardizer(
            values, parameter_names=("ra", "pr", "gamma"), log_parameters=("mach",), boundary_codes=4
        )


def test_the_train_splits_trajectories_weigh_each_file(tmp_path):
    info = open_dataset(make_tiny_dataset(tmp_path / "tiny", res=8, steps=6, n_traj=3))
    fitted = theta_standardizer_for(info, ())
    # Two train files of 3 trajectories each, gamma 1.4 and 1.76.
    np.testing.assert_allclose(fitted.mean, (1.58,), rtol=1e-6)
    np.testing.assert_allclose(fitted.std, (0.18,), rtol=1e-5)
    assert fitted.boundary_codes == 4
    # The data keep θ in physical units: raw gamma, then the boundary codes (the first
    # file in sorted order is the open one).
    theta = WellWindows(info, "train", length=1)[0]["theta"]
    assert theta[0].item() == pytest.approx(1.76) and theta[1:].tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("kind", ["diffusion", "solver"])
def test_the_label_embedding_sees_standardized_theta(kind, tmp_path):
    config = EmulatorConfig(kind=kind, preset="smoke", log_parameters=("rayleigh",))
    emulator = build_emulator(config, (4, 4, 4), 6, RB_LIKE)
    seen = []
    emulator.label_embedding[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    theta = torch.tensor([[1e8 * math.e**1.5, 2.5, 2, 2, 0, 0]])
    window, mask = torch.randn(1, 4, 5, 4, 4), torch.zeros(1, 5, dtype=torch.bool)
    mask[:, 0] = True
    with torch.no_grad():
        if kind == "diffusion":
            emulator(window, torch.full((1,), 0.5), theta, mask, window)
        else:
            emulator(window, mask, theta)
    torch.testing.assert_close(seen[0], torch.tensor([[1.0, 1.0, 2, 2, 0, 0]]))

    # The snapshot keeps the standardization; an older one (raw θ) still loads, as raw θ.
    save_emulator(tmp_path, emulator, config, (4, 4, 4), 6, RB_LIKE)
    loaded, _ = load_emulator(str(tmp_path))
    torch.testing.assert_close(loaded.label_embedding.standardize(theta), seen[0])
    snapshot = torch.load(tmp_path / EMULATOR_FILE, weights_only=False)
    for key in ("theta_log", "theta_mean", "theta_std"):
        del snapshot["state_dict"][f"label_embedding.{key}"]
    snapshot["theta_standardizer"] = None
    torch.save(snapshot, tmp_path / EMULATOR_FILE)
    old, _ = load_emulator(str(tmp_path))
    torch.testing.assert_close(old.label_embedding.standardize(theta), theta)


def test_a_standardizer_of_another_theta_is_refused():
    with pytest.raises(ValueError, match="covers 6 entries, θ has 7"):
        build_emulator(EmulatorConfig(preset="smoke"), (4, 4, 4), 7, RB_LIKE)
