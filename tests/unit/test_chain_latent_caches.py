"""A chain builds the three latent caches of its rate in one job (issue 29), and still
reports, reuses and fails at each as a stage of its own (``sweeps/chain.py``).

The stages are stand-ins that publish a tiny artifact each: what is tested is the chain's
bookkeeping, not the stages (``tests/integration/test_latent_cache.py`` tests the job)."""

import pytest
from stages import LATENT_STAGES

from lolaray.platform.artifacts import artifact_id
from lolaray.platform.stages import StageContext
from lolaray.sweeps import chain
from lolaray.sweeps.chain import PROFILES, InjectedFailure, run_latent_chain


class _Jobs(list):
    """The splits of each cache job, and the chain's context."""

    context: StageContext


@pytest.fixture
def jobs(tmp_path, monkeypatch):
    """Stand-in stages, and the splits of each latent-cache job the chain asks for."""
    context = StageContext.resolve(tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store, jobs = context.store, _Jobs()

    def publish(stage, key):
        aid = artifact_id(stage, {"key": key})
        if (done := store.get(stage, aid)) is None:
            with store.build(stage, aid, {"key": key}):
                pass
            done = store.get(stage, aid)
        return done

    def caches(autoencoder, dataset, splits, context, *, repeat, augment, seed):
        assert repeat["train"] == PROFILES["smoke"].repeat and seed == 3
        assert repeat.get("valid", 1) == repeat.get("test", 1) == 1
        jobs.append(tuple(splits))
        return {split: publish("latents", split) for split in splits}

    monkeypatch.setattr(chain, "train_autoencoder", lambda *a, **k: publish("autoencoder", "ae"))
    monkeypatch.setattr(chain, "cache_latents_splits", caches)
    monkeypatch.setattr(chain, "train_diffusion", lambda *a, **k: publish("emulator", "diffusion"))
    monkeypatch.setattr(chain, "train_solver", lambda *a, **k: publish("emulator", "solver"))
    monkeypatch.setattr(chain, "evaluate", lambda emulator, *a, **k: publish("evaluation", emulator.id))
    jobs.context = context
    return jobs


@pytest.fixture
def run(jobs):
    def run(**kwargs):
        lines = []
        result = run_latent_chain(
            PROFILES["smoke"], None, 4, jobs.context, seed=3, progress=lines.append, **kwargs
        )
        return result, lines

    return run


def test_the_three_caches_are_one_job_and_three_stages(jobs, run):
    result, lines = run()
    assert jobs == [("train", "valid", "test")]
    assert [line for line in lines if "latent" in line] == ["[c=4] latent caches (train, valid, test)"]
    assert result.ran == LATENT_STAGES and result.reused == []
    assert [result.artifacts[f"latents/{s}"].manifest["key"] for s in ("train", "valid", "test")] == [
        "train",
        "valid",
        "test",
    ]
    again, _ = run()
    assert again.reused == LATENT_STAGES and again.ran == []


@pytest.mark.parametrize("stage", ["latents/train", "latents/valid", "latents/test"])
def test_fail_at_a_cache_builds_the_caches_before_it(jobs, run, stage):
    with pytest.raises(InjectedFailure, match=stage):
        run(fail_at=stage)
    before = ("train", "valid", "test")[: ["latents/train", "latents/valid", "latents/test"].index(stage)]
    assert jobs == ([before] if before else [])
    result, _ = run()
    assert result.reused == ["autoencoder", *(f"latents/{s}" for s in before)]
    assert result.ran == [name for name in LATENT_STAGES if name not in result.reused]
