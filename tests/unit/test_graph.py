"""The study's stage graph (``sweeps/graph.py``): declared once, run by the chain in its order,
costed stage for stage by the plan -- the guided evaluations included."""

import pytest

from lolaray.platform.artifacts import Artifact
from lolaray.platform.stages import StageContext
from lolaray.sweeps import chain
from lolaray.sweeps.chain import PROFILES, InjectedFailure, run_latent_chain, run_pixel_chain
from lolaray.sweeps.graph import ChainGraph, StageNode, latent_chain, pixel_chain
from lolaray.sweeps.plan import plan_dataset, plan_study

GUIDANCE = {"operator": "downscale", "factor": 8, "sigma_y": 0.1, "iterations": 1, "solver": "gmres"}


def test_a_latent_chain_in_the_order_it_runs_and_its_guided_evaluation():
    profile = PROFILES["smoke"]
    names = ["autoencoder", "latents/train", "latents/valid", "latents/test", "diffusion"]
    names += ["evaluation/diffusion", "solver", "evaluation/solver"]
    assert latent_chain(profile, 4).names == names
    guided = latent_chain(profile, 4, guidance=GUIDANCE)
    assert guided.names == [*names[:6], "evaluation/guided_diffusion", *names[6:]]
    node = guided.node("evaluation/guided_diffusion")
    assert node.config.guidance == GUIDANCE and node.upstream[0] == "diffusion"
    assert guided.node("autoencoder").config.latent_channels == 4
    assert latent_chain(profile, 4, seed=3).node("solver").config.loop.seed == 3
    assert pixel_chain(profile).names == ["pixel_solver", "evaluation/pixel_solver"]
    assert pixel_chain(profile).node("pixel_solver").plan_name == "solver"


def test_a_stage_cannot_run_before_its_upstream():
    with pytest.raises(ValueError, match=r"stage 'b' of chain x runs before its upstream \['a'\]"):
        ChainGraph("x", None, (StageNode("b", "train", None, upstream=("a",)), StageNode("a", "train", None)))
    with pytest.raises(KeyError, match="chain c4 has no stage 'nope'"):
        latent_chain(PROFILES["smoke"], 4).node("nope")


@pytest.mark.parametrize("guidance", [None, GUIDANCE])
def test_the_plan_costs_every_stage_of_the_graph(guidance):
    info, trajectories = plan_dataset("euler_quadrants:smoke")
    profile = PROFILES["smoke"]
    plan = plan_study(profile, info, (4, 16), trajectories=trajectories, guidance=guidance)
    graphs = [latent_chain(profile, 4, guidance=guidance), latent_chain(profile, 16, guidance=guidance)]
    expected = [f"{g.label}/{n.plan_name}" for g in [*graphs, pixel_chain(profile)] for n in g.nodes]
    assert [stage.name for stage in plan.stages] == expected
    assert all(stage.flops and stage.flops > 0 for stage in plan.stages)


def test_a_guided_evaluation_costs_what_its_denoiser_and_decoder_passes_do():
    info, trajectories = plan_dataset("euler_quadrants:smoke")
    plan = plan_study(
        PROFILES["smoke"], info, (4,), trajectories=trajectories, guidance=GUIDANCE, pixel=False
    )
    stages = {stage.name: stage for stage in plan.stages}
    denoiser = plan.networks[stages["c4/diffusion"].network].forward.flops
    decoder = plan.networks[stages["c4/autoencoder"].network].decode.flops
    unguided, guided = stages["c4/evaluation/diffusion"], stages["c4/evaluation/guided_diffusion"]
    assert (guided.steps, guided.batch) == (unguided.steps, unguided.batch)
    # The same calls, each (3 + 2 i) denoiser and (6 + 6 i) decoder passes of the window's
    # states at i = 1 iteration, instead of one denoiser pass; the decoding of the members'
    # states after the rollout is the same in both.
    window = PROFILES["smoke"].emulator.window
    extra = guided.steps * guided.batch * (5 * denoiser + 12 * window * decoder - denoiser)
    assert guided.flops - unguided.flops == pytest.approx(extra, rel=1e-9)
    assert guided.flops > 5 * unguided.flops


class _Recorder:
    """The stage functions of the chain, recording their calls and returning fake artifacts."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(chain, "train_autoencoder", self._stage("autoencoder"))
        monkeypatch.setattr(chain, "train_diffusion", self._stage("emulator", "diffusion"))
        monkeypatch.setattr(chain, "train_solver", self._stage("emulator", "solver"))
        monkeypatch.setattr(chain, "train_pixel_solver", self._stage("emulator", "pixel_solver"))
        monkeypatch.setattr(chain, "evaluate", self._evaluate)
        monkeypatch.setattr(chain, "cache_latents_splits", self._caches)

    def _stage(self, store_stage, label=None):
        def call(config, *args, **kwargs):
            name = label or store_stage
            self.calls.append((name, config))
            return Artifact(store_stage, f"{name}-id", f"/fake/{name}")

        return call

    def _evaluate(self, emulator, autoencoder, dataset, context, config):
        name = f"evaluation/{emulator.id.removesuffix('-id')}" + ("/guided" if config.guidance else "")
        self.calls.append((name, config))
        return Artifact("evaluation", f"{name}-id", f"/fake/{name}")

    def _caches(self, autoencoder, dataset, splits, context, **keywords):
        self.calls.append(("latents", (splits, keywords)))
        return {split: Artifact("latents", f"latents-{split}", f"/fake/{split}") for split in splits}


@pytest.fixture
def context(tmp_path):
    return StageContext.resolve(tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_the_chain_runs_its_graph_in_order_with_the_graphs_configs(monkeypatch, context):
    recorder = _Recorder(monkeypatch)
    profile = PROFILES["smoke"]
    graph = latent_chain(profile, 4, seed=2, guidance=GUIDANCE)
    result = run_latent_chain(profile, None, 4, context, seed=2, guidance=GUIDANCE, progress=lambda _: None)
    assert result.ran == graph.names and result.reused == []
    names = [name for name, _ in recorder.calls]
    assert names == ["autoencoder", "latents", "diffusion", "evaluation/diffusion"] + [
        "evaluation/diffusion/guided",
        "solver",
        "evaluation/solver",
    ]
    calls = dict(recorder.calls)
    assert calls["autoencoder"] == graph.node("autoencoder").config
    assert calls["latents"] == (
        ("train", "valid", "test"),
        {"repeat": {"train": 2, "valid": 1, "test": 1}, "augment": True, "seed": 2},
    )
    assert calls["evaluation/diffusion/guided"].guidance == GUIDANCE
    assert calls["evaluation/solver"].members == 1 and calls["evaluation/diffusion"].members == 4

    recorder.calls.clear()
    result = run_pixel_chain(profile, None, context, progress=lambda _: None)
    assert result.ran == pixel_chain(profile).names
    assert [name for name, _ in recorder.calls] == ["pixel_solver", "evaluation/pixel_solver"]


@pytest.mark.parametrize(
    ("fail_at", "done"),
    [
        ("autoencoder", []),
        ("latents/valid", ["autoencoder", ("train",)]),
        ("diffusion", ["autoencoder", ("train", "valid", "test")]),
        (
            "evaluation/solver",
            ["autoencoder", ("train", "valid", "test"), "diffusion", "evaluation/diffusion", "solver"],
        ),
    ],
)
def test_an_injected_failure_stops_before_its_stage_with_the_ones_before_it_done(
    monkeypatch, context, fail_at, done
):
    recorder = _Recorder(monkeypatch)
    with pytest.raises(InjectedFailure, match=f"before stage '{fail_at}'"):
        run_latent_chain(PROFILES["smoke"], None, 4, context, fail_at=fail_at, progress=lambda _: None)
    assert [call[0] if name == "latents" else name for name, call in recorder.calls] == done
    with pytest.raises(ValueError, match="fail_at='nope' is no stage of chain c4"):
        run_latent_chain(PROFILES["smoke"], None, 4, context, fail_at="nope", progress=lambda _: None)
