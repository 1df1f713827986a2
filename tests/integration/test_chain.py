"""The per-rate stage chain on the smoke profile: it runs end to end, and an interrupted
chain started again runs only the stages that are missing."""

import pytest
from stages import LATENT_STAGES

from lolaray.sweeps import chain
from lolaray.sweeps.chain import PROFILES, run_latent_chain


def test_an_interrupted_chain_resumes_with_the_missing_stages(
    ray_cluster, smoke_dataset, local_stage, monkeypatch
):
    profile = PROFILES["smoke"]
    real_evaluate = chain.evaluate

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("injected: the sweep was killed during the first evaluation")

    monkeypatch.setattr(chain, "evaluate", crash)
    with pytest.raises(KeyboardInterrupt):
        run_latent_chain(profile, smoke_dataset, 4, local_stage, progress=lambda _: None)
    monkeypatch.setattr(chain, "evaluate", real_evaluate)

    resumed = run_latent_chain(profile, smoke_dataset, 4, local_stage, progress=lambda _: None)
    assert resumed.reused == ["autoencoder", "latents/train", "latents/valid", "latents/test", "diffusion"]
    assert resumed.ran == ["evaluation/diffusion", "solver", "evaluation/solver"]
    evaluation = resumed.artifacts["evaluation/diffusion"]
    assert (evaluation.path / "report.html").is_file() and (evaluation.path / "metrics.csv").is_file()
    assert resumed.artifacts["autoencoder"].manifest["compression"] == pytest.approx(
        5 * 32 * 32 / (4 * 4 * 4)
    )

    again = run_latent_chain(profile, smoke_dataset, 4, local_stage, progress=lambda _: None)
    assert again.ran == [] and again.reused == LATENT_STAGES
    assert {k: a.id for k, a in again.artifacts.items()} == {k: a.id for k, a in resumed.artifacts.items()}
