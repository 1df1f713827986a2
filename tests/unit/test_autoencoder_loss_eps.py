"""The autoencoder stage's VMSE ε reaches the loss (issue 15: the demo profile raises it)."""

import pytest
import torch

from lolaray.sweeps.chain import PROFILES
from lolaray.trainers.autoencoder import AutoEncoder, vmse_loss
from lolaray.trainers.autoencoder_trainer import AutoencoderConfig, AutoencoderTask


def _task(config: AutoencoderConfig) -> AutoencoderTask:
    task = AutoencoderTask.__new__(AutoencoderTask)  # no Ray Train context needed for the loss
    task.config = config
    return task


@pytest.mark.parametrize("eps", [1e-2, 1.0])
def test_task_loss_uses_the_configured_eps(eps):
    torch.manual_seed(0)
    model = AutoEncoder(
        pixel_channels=2, latent_channels=4, hidden_channels=(4, 8), hidden_blocks=(0, 0)
    ).eval()
    # One near-uniform field (variance 1e-4): the case where ε decides the weight.
    x = torch.randn(3, 2, 1, 8, 8) * torch.tensor([1.0, 1e-2]).view(1, 2, 1, 1, 1)
    loss, n = _task(AutoencoderConfig(loss_eps=eps)).loss(model, {"x": x}, torch.device("cpu"))
    with torch.no_grad():
        expected = vmse_loss(model(x[:, :, 0])[0], x[:, :, 0], eps=eps)
    assert n == 3
    torch.testing.assert_close(loss.detach(), expected)
    other = vmse_loss(model(x[:, :, 0])[0], x[:, :, 0], eps=1.0 if eps != 1.0 else 1e-2)
    assert not torch.allclose(loss.detach(), other.detach())


def test_default_is_the_papers_and_the_demo_profile_evens_the_weights():
    assert AutoencoderConfig().loss_eps == 1e-2
    assert PROFILES["paper"].autoencoder.loss_eps == 1e-2
    assert PROFILES["demo"].autoencoder.loss_eps == 1.0
