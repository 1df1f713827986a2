r"""Evaluate an emulator on the test split: the stage ``evaluate(emulator, autoencoder, dataset)``.

Reads top to bottom (method.md §7, §8, §11):

1. **Validation** on the driver, before any Ray work (latent emulator without
   autoencoder, mismatched latent shapes, bad context lengths or ensemble sizes).
2. **Work items** ``(trajectory, start state s, context c, member block)`` (blocks from
   :func:`~lolaray.evaluation.rollout.split_members`) go through
   ``ray.data.from_items → map_batches(RolloutActor, ActorPoolStrategy)``
   (:mod:`~lolaray.evaluation.rollout_actor`). Per item an actor rolls out its block of
   members from the true states ``s .. s+c-1``, member ``k`` seeded by (seed, trajectory,
   s, k) whatever the split, and returns **sufficient statistics** of the block, its size
   and the rollout wall time. When the block is the whole ensemble the actor also scores
   it (fair CRPS, coverage, rank histogram); otherwise it writes the block's members to a
   scratch folder on the store, and a second Ray Data pass scores the joined blocks one
   chunk of lead times at a time (:mod:`~lolaray.evaluation.split_ensemble`). The
   "primary" item of each trajectory also returns the truth, :math:`u_{ae}` and the
   autoencoder reconstruction error, and, for the first trajectory, the snapshot and
   animation members.
3. **Driver** (:mod:`~lolaray.evaluation.aggregation`): blocks are combined in float64 in
   a fixed order (trajectory, start, context, block start), so the numbers do not depend
   on the number of actors; every metric comes from :mod:`~lolaray.evaluation.metrics`
   per field and lead time, then averaged over fields and aggregated by horizons, per
   context and over contexts.
4. **Outputs** (:mod:`~lolaray.evaluation.outputs`): CSV tables, ``summary.json``,
   ``table.txt``, ``rollout.gif``, figures and one self-contained ``report.html``; an
   MLflow run with uniform metric names (``vrmse/lead_1-20``, ``context_1/…``,
   ``recon_vrmse``, ``infer_ms_per_state``, ``sampler_steps``) and the scoring options
   (``starts``, ``trajectory_selection``, ``vrmse_convention``) as params.

Neural solvers are deterministic: they are rolled out with one member (all members
would be equal), so their spread and spread-skill ratio are 0 (the notebooks' convention),
their CRPS is their MAE and their coverage is undefined (NaN, not logged).

Command line::

    python -m lolaray.evaluation.evaluate --emulator <dir> [--autoencoder <dir>] \
        --dataset euler_quadrants:smoke --contexts 1 2 3 --members 16 --trajectories 8 --actors 2 \
        [--starts 0 10] [--trajectory-seed 0] [--vrmse-convention lola|well]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lolaray.evaluation.aggregation import DEFAULT_SCORED_FIELD, analyse, rollout_truths
from lolaray.evaluation.baselines import latent_numbers, pca_baseline
from lolaray.evaluation.guidance_options import add_guidance_arguments, guidance_config, guidance_from_args
from lolaray.evaluation.metrics import VRMSE_EPS
from lolaray.evaluation.outputs import log_mlflow, write_outputs
from lolaray.evaluation.rollout import rollout_origin, split_members
from lolaray.evaluation.rollout_actor import run_rollouts
from lolaray.evaluation.scoring_options import add_scoring_arguments, scoring_from_args
from lolaray.evaluation.split_ensemble import remove_scratch, score_split_ensembles, scratch_folder
from lolaray.evaluation.trajectory_selection import stratified_trajectories, trajectory_strata
from lolaray.platform.artifacts import Artifact, open_artifact
from lolaray.platform.data import DatasetInfo, WellWindows, open_dataset, standardizer_for
from lolaray.platform.dataset_spec_options import add_dataset_spec_arguments, spec_from_args
from lolaray.platform.dataset_specs import DatasetSpecError
from lolaray.platform.session import start_ray
from lolaray.platform.stages import StageContext, StageOutput, add_stage_arguments, run_stage
from lolaray.platform.tracking import StageRun
from lolaray.trainers.guidance import build_operator
from lolaray.trainers.snapshots import load_autoencoder

__all__ = ["EvaluationConfig", "evaluate", "main"]

STAGE = "evaluation"
#: Euler-like horizons in simulation steps (paper Table 6: 1:20, 21:60, 61:100).
DEFAULT_HORIZONS = ((1, 20), (21, 60), (61, 100))


# ------------------------------------------------------------------------------ stage


def _method_label(manifest: dict) -> str:
    kind = manifest.get("kind", "emulator")
    return f"pixel {kind}" if manifest.get("space") == "pixel" else kind


def _resolve_trajectories(
    trajectories: int | Sequence[int],
    available: int,
    *,
    selection_seed: int | None = None,
    strata: Sequence[Hashable] | None = None,
) -> list[int]:
    """The test trajectories to evaluate, sorted: explicit indices, the first ``N``, or ``N``
    drawn with ``selection_seed`` stratified over ``strata``
    (:func:`~lolaray.evaluation.trajectory_selection.stratified_trajectories`: as evenly as
    possible over the strata, every boundary class before any gets a second stratum).

    :param trajectories: a count ``N`` or explicit indices.
    :param available: the number of test trajectories.
    :param selection_seed: draw the ``N`` with this seed; ``None``: the first ``N``.
    :param strata: the stratum label of each of the ``available`` trajectories
        (:func:`~lolaray.evaluation.trajectory_selection.trajectory_strata`); ``None``: one
        stratum (a uniform draw).
    """
    if isinstance(trajectories, int):
        if trajectories < 1:
            raise ValueError(f"trajectories must be >= 1, got {trajectories}")
        count = min(trajectories, available)
        if selection_seed is None:
            return list(range(count))
        strata = [0] * available if strata is None else list(strata)
        if len(strata) != available:
            raise ValueError(f"{len(strata)} stratum labels for {available} test trajectories")
        return stratified_trajectories(strata, count, seed=int(selection_seed))
    if selection_seed is not None:
        raise ValueError("a trajectory selection seed draws N trajectories: pass a count, not indices")
    indices = sorted({int(i) for i in trajectories})
    if not indices:
        raise ValueError("need at least one test trajectory")
    bad = [i for i in indices if not 0 <= i < available]
    if bad:
        raise ValueError(f"trajectory indices {bad} out of range: the test split holds {available}")
    return indices


@dataclass(frozen=True)
class EvaluationConfig:
    """What an evaluation computes: every setting of :func:`evaluate` but the artifacts it
    scores and where it runs. Sequences become tuples; the evaluation checks the values
    against the emulator and the data before any Ray work.

    :param contexts: context lengths ``c`` (``o = c``), each in ``[1, window − 1]``.
    :param members: ensemble size ``K`` (solvers: 1, they are deterministic).
    :param trajectories: the first ``N`` test trajectories, or explicit indices.
    :param seed, sampler, steps: the sampling (member ``k`` of the rollout from start ``s``
        seeded by (seed, trajectory, s, k)).
    :param trajectory_seed: draw the ``N`` test trajectories with this seed, stratified over
        the test files' boundary conditions × parameters
        (:func:`~lolaray.evaluation.trajectory_selection.stratified_trajectories`), instead
        of taking the first ``N``; ``None``: the first ``N``.
    :param starts: rollout initial states, in simulation steps (multiples of Δ): each
        rollout's last context state, its leads counted from there, its ``c`` context
        states the ones before it at stride Δ (moved forward to begin at the trajectory's
        first state when there are not enough:
        :func:`~lolaray.evaluation.rollout.rollout_origin`). Default ``(0,)``. Every
        (trajectory, start) is one more sample of every metric.
    :param vrmse_convention: the ε on the spatial variance of VRMSE (and on the energy of
        NRMSE): ``"lola"`` (1e-6, the paper's code) or ``"well"`` (1e-7, The Well's benchmark).
    :param horizons: inclusive lead-time horizons in simulation steps (default Euler-like).
    :param max_batch: members per batch. Neither it nor the actor pool changes the results
        (nor the artifact id).
    :param guidance: MMPS guidance of a diffusion emulator by noisy observations of the
        true test states (:func:`~lolaray.evaluation.guidance_options.guidance_config`:
        ``operator``, ``factor``, ``sigma_y``, ``var_y``, ``iterations``, ``solver``);
        ``None`` = unguided.
    :param wasserstein_field: the field whose distribution is also scored on its own — its 1-D
        Wasserstein distance (``field_wasserstein``) and, in 2-D, its sliced EMD (``semd``) —
        the dataset spec's (paper Tables 11–13: Euler density, Rayleigh–Bénard ``velocity_y``,
        gravity cooling density); ``None``: density where the data has it.
    """

    contexts: tuple[int, ...] = (1, 2, 3)
    members: int = 16
    trajectories: int | tuple[int, ...] = 8
    seed: int = 0
    trajectory_seed: int | None = None
    starts: tuple[int, ...] | None = None
    vrmse_convention: str = "lola"
    sampler: str = "ab3"
    steps: int = 16
    horizons: tuple[tuple[int, int], ...] | None = None
    max_batch: int = 8
    guidance: dict | None = None
    wasserstein_field: str | None = None

    def __post_init__(self):
        def tupled(value):
            return value if value is None or isinstance(value, int) else tuple(value)

        object.__setattr__(self, "contexts", tuple(self.contexts))
        object.__setattr__(self, "trajectories", tupled(self.trajectories))
        object.__setattr__(self, "starts", tupled(self.starts))
        if self.horizons is not None:
            object.__setattr__(self, "horizons", tuple(tuple(h) for h in self.horizons))

    def with_scoring(self, scoring: Mapping[str, Any] | None) -> EvaluationConfig:
        """This config with a study's scoring options (``starts``, ``trajectory_seed``,
        ``vrmse_convention``, ``horizons``, ``wasserstein_field``) where they are given
        (``None`` values leave this config's)."""
        given = {key: value for key, value in (scoring or {}).items() if value is not None}
        return dataclasses.replace(self, **given)


def evaluate(
    emulator: Artifact,
    autoencoder: Artifact | None,
    dataset: DatasetInfo | str,
    context: StageContext | None = None,
    config: EvaluationConfig | None = None,
) -> Artifact:
    """Evaluate (or reuse the evaluation of) ``emulator`` on the test split of ``dataset``.

    :param emulator: an emulator artifact (latent or pixel, diffusion or solver).
    :param autoencoder: its autoencoder artifact (required for latent emulators).
    :param context: store, MLflow record and scaling (default: :meth:`StageContext.default`);
        its ``scaling.actors`` and ``scaling.actor_gpus`` size the rollout actor pool
        (``scaling.local_rollouts``: none, the rollouts run in this process).
    :param config: what to compute (default: :class:`EvaluationConfig`'s defaults).
    :returns: the evaluation artifact (``metrics.csv``, ``summary.json``, ``table.txt``,
        ``report.html``, figures).
    """
    config = config or EvaluationConfig()
    contexts, members, trajectories, seed = config.contexts, config.members, config.trajectories, config.seed
    trajectory_seed, starts, vrmse_convention = config.trajectory_seed, config.starts, config.vrmse_convention
    sampler, steps, horizons, max_batch = config.sampler, config.steps, config.horizons, config.max_batch
    guidance, wasserstein_field = config.guidance, config.wasserstein_field
    context = context or StageContext.default()
    actors = 0 if context.scaling.local_rollouts else context.scaling.actors
    info = dataset if isinstance(dataset, DatasetInfo) else open_dataset(dataset)
    manifest = emulator.manifest
    kind, space = manifest.get("kind"), manifest.get("space", "latent")
    window, stride = int(manifest["window"]), int(manifest["stride"])
    state_shape = list(manifest["state_shape"])

    # 1. validation, before any Ray work
    if space == "latent":
        if autoencoder is None:
            raise ValueError(f"emulator {emulator.id} works in latent space: pass its autoencoder artifact")
        if list(autoencoder.manifest["latent_shape"]) != state_shape:
            raise ValueError(
                f"emulator {emulator.id} and autoencoder {autoencoder.id} have different latent shapes: "
                f"{tuple(state_shape)} vs {tuple(autoencoder.manifest['latent_shape'])}"
            )
    else:
        autoencoder = None  # pixel emulators read standardized pixels directly
        # A pixel emulator's states end with the dataset's constant fields.
        expected = list(info.conditioned_state_shape)
        if state_shape != expected:
            raise ValueError(
                f"pixel emulator {emulator.id} has state shape {tuple(state_shape)}, "
                f"the dataset {tuple(expected)}"
            )
    if int(manifest["theta_dim"]) != info.theta_dim:
        raise ValueError(f"emulator theta_dim {manifest['theta_dim']} != dataset theta_dim {info.theta_dim}")
    contexts = sorted({int(c) for c in contexts})
    if not contexts or any(not 1 <= c <= window - 1 for c in contexts):
        raise ValueError(f"contexts {contexts} must lie in [1, window - 1] = [1, {window - 1}]")
    if members < 1:
        raise ValueError(f"need at least one ensemble member, got {members}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if kind == "solver":
        members = 1
    horizons = tuple(tuple(int(v) for v in h) for h in (horizons or DEFAULT_HORIZONS))
    if vrmse_convention not in VRMSE_EPS:
        raise ValueError(
            f"unknown VRMSE convention {vrmse_convention!r}: choose one of {', '.join(VRMSE_EPS)}"
        )
    if wasserstein_field is not None and wasserstein_field not in info.field_names:
        raise ValueError(
            f"the scored field {wasserstein_field!r} is not a field of {info.name} "
            f"({', '.join(info.field_names)})"
        )
    scored_field = wasserstein_field or (
        DEFAULT_SCORED_FIELD if DEFAULT_SCORED_FIELD in info.field_names else None
    )
    starts = sorted({int(s) for s in (starts if starts is not None else (0,))})
    if not starts or starts[0] < 0:
        raise ValueError(f"rollout start states {starts} must be >= 0")
    if any(s % stride for s in starts):
        raise ValueError(
            f"--starts {' '.join(map(str, starts))}: start states are simulation steps on the strided "
            f"trajectory, multiples of the stride {stride}"
        )

    if autoencoder is not None:
        _, standardizer = load_autoencoder(autoencoder)
    else:
        standardizer = standardizer_for(info)
    test = WellWindows(info, "test", length=None, standardizer=standardizer)
    indices = _resolve_trajectories(
        trajectories,
        len(test),
        selection_seed=trajectory_seed,
        strata=trajectory_strata(info, "test") if trajectory_seed is not None else None,
    )
    n_states = test.length
    length = (n_states - 1) // stride + 1
    if max(starts[-1] // stride, max(contexts) - 1) + 1 >= length:
        raise ValueError(
            f"test trajectories give {length} states at stride {stride} (steps 0..{(length - 1) * stride}): "
            f"nothing left to predict after start state {starts[-1]} with contexts {contexts}; "
            "pass smaller --starts"
        )

    identity = {
        "contexts": contexts,
        "members": members,
        "trajectories": indices,
        "seed": seed,
        "sampler": sampler if kind == "diffusion" else None,
        "steps": steps if kind == "diffusion" else None,
        "horizons": [list(h) for h in horizons],
    }
    # Recorded only when not the default, so the ids of earlier evaluations stay valid (under
    # a new key: starts used to be strided indices of the first context state).
    if starts != [0]:
        identity["initial_states"] = starts
    if trajectory_seed is not None:
        identity["trajectory_seed"] = int(trajectory_seed)
    if vrmse_convention != "lola":
        identity["vrmse_convention"] = vrmse_convention
    if scored_field not in (DEFAULT_SCORED_FIELD, None):
        identity["wasserstein_field"] = scored_field
    if guidance is not None:
        if kind != "diffusion":
            raise ValueError(f"guidance needs a diffusion emulator; {emulator.id} is a {kind}")
        guidance = guidance_config(**guidance)
        build_operator(guidance["operator"], guidance["factor"], info.resolution)(
            torch.zeros(1, *info.resolution)
        )  # fails now, with a clear message, if the operator does not fit the grid
        identity["guidance"] = guidance  # only when guided: unguided ids stay as they were
    upstream = [emulator.id, autoencoder.id if autoencoder is not None else "", info.fingerprint()]
    # 2. work items -> actors
    blocks = split_members(members, max_batch)
    items = [
        {
            "trajectory": t,
            "origin": rollout_origin(s, c, stride),
            "context": c,
            "start": b.start,
            "stop": b.stop,
            "members": members,
            "primary": s == starts[0] and c == contexts[0] and b.start == 0,
            "snapshot": t == indices[0] and s == starts[0] and c == contexts[0],
        }
        for t in indices
        for s in starts
        for c in contexts
        for b in blocks
    ]
    rate = float(manifest.get("compression", 1))
    method = _method_label(manifest) if guidance is None else f"guided {_method_label(manifest)}"

    def build(run: StageRun, aid: str) -> StageOutput:
        # A split ensemble's blocks wait on the store to be scored together (module docstring, 2.).
        scratch = scratch_folder(context.store.root, STAGE, aid) if len(blocks) > 1 else None
        try:
            results = run_rollouts(
                items,
                {
                    "emulator_dir": str(emulator.uri),
                    "autoencoder_dir": str(autoencoder.uri) if autoencoder is not None else None,
                    "info": info,
                    "standardizer": standardizer.to_dict(),
                    "seed": seed,
                    "sampler": sampler,
                    "steps": steps,
                    "guidance": guidance,
                    "vrmse_eps": VRMSE_EPS[vrmse_convention],
                    "scratch": scratch,
                    "scored_field": scored_field,
                    "threads": context.scaling.threads,
                },
                actors=actors,
                actor_gpus=context.scaling.resolved_actor_gpus(),
            )
            split_scores = {}
            if scratch is not None:
                split_scores = score_split_ensembles(
                    scratch,
                    rollout_truths(results, indices=indices, starts=starts, contexts=contexts, stride=stride),
                    starts=[b.start for b in blocks],
                    members=members,
                    spatial_dims=info.n_spatial_dims,
                )
        finally:
            if scratch is not None:
                remove_scratch(scratch)
        # 3. combine in a fixed order
        summary, rows, per_lead_rows, figures_data = analyse(
            results,
            split_scores,
            indices=indices,
            contexts=contexts,
            starts=starts,
            blocks=blocks,
            kind=kind,
            method=method,
            rate=rate,
            stride=stride,
            horizons=horizons,
            info=info,
            latent=autoencoder is not None,
            vrmse_eps=VRMSE_EPS[vrmse_convention],
            steps=steps if kind == "diffusion" else None,
            scored_field=scored_field,
        )
        if autoencoder is not None:
            # The best linear code of the latent's size, on the same trajectories (a finding
            # about compression should not rest on an autoencoder no better than it).
            pca_rows, pca_by_horizon, components = pca_baseline(
                info,
                standardizer,
                indices,
                components=latent_numbers(autoencoder.manifest),
                horizons=horizons,
                rate=rate,
                eps=VRMSE_EPS[vrmse_convention],
            )
            figures_data["baselines"] += pca_rows
            summary.update(pca_vrmse_by_horizon=pca_by_horizon, pca_components=components)
        summary.update(
            config=identity, emulator=emulator.id, autoencoder=autoencoder.id if autoencoder else None
        )

        def write(folder: Path, _: dict) -> None:
            files = write_outputs(
                folder, summary, rows, per_lead_rows, figures_data, method=method, rate=rate
            )
            log_mlflow(run.client, run.run_id, summary, files)

        out_manifest = {
            "emulator": emulator.id,
            "autoencoder": autoencoder.id if autoencoder is not None else None,
            "dataset": info.name,
            "dataset_fingerprint": info.fingerprint(),
            "kind": kind,
            "space": space,
            "compression": rate,
            **identity,
        }
        return StageOutput(manifest=out_manifest, write=write)

    return run_stage(
        context,
        STAGE,
        config=identity,
        upstream=upstream,
        run_name=f"eval-{method.replace(' ', '-')}-x{rate:g}",
        build=build,
        tags={
            "emulator": str(kind),
            "space": str(space),
            "compression": f"{rate:g}",
            "emulator_id": emulator.id,
            "guided": "yes" if guidance is not None else "no",
        },
        params={
            **identity,
            "starts": starts,
            "trajectory_selection": (
                "first" if trajectory_seed is None else f"stratified, seed {trajectory_seed}"
            ),
            "vrmse_convention": vrmse_convention,
            "vrmse_eps": VRMSE_EPS[vrmse_convention],
            "actors": actors,
            "max_batch": max_batch,
            "dataset": info.name,
        },
    )


# ------------------------------------------------------------------------ command line


def main(argv=None) -> Artifact:
    parser = argparse.ArgumentParser(description="Evaluate an emulator on the test split (Ray Data actors).")
    add_stage_arguments(parser, dataset_default="euler_quadrants:demo", scaling="actors")
    parser.add_argument("--emulator", required=True, help="an emulator artifact: its folder or URI")
    parser.add_argument(
        "--autoencoder", default=None, help="its autoencoder artifact, folder or URI (latent emulators)"
    )
    parser.add_argument("--contexts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--sampler", default="ab3")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--parent-run-id", default=None)
    add_guidance_arguments(parser, what="guide a diffusion emulator")
    add_scoring_arguments(parser)
    add_dataset_spec_arguments(parser, windows=False)
    args = parser.parse_args(argv)
    try:
        guidance_from_args(args)  # the options checked before Ray starts; completed from the spec below
        scoring = scoring_from_args(args)
    except ValueError as error:
        parser.error(str(error))

    start_ray(args.address)
    info = open_dataset(args.dataset, data_root=args.data_root)
    try:
        spec = spec_from_args(args, info)
        guidance = guidance_from_args(args, spec.guidance)
    except (DatasetSpecError, ValueError) as error:
        parser.error(str(error))
    config = EvaluationConfig(
        contexts=args.contexts,
        members=args.members,
        trajectories=args.trajectories,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        max_batch=args.max_batch,
        guidance=guidance,
    ).with_scoring({**spec.scoring(), **scoring})
    artifact = evaluate(
        open_artifact(args.emulator),
        open_artifact(args.autoencoder) if args.autoencoder else None,
        info,
        context := StageContext.from_args(args),
        config,
    )
    print(f"[lolaray] evaluation {artifact.id} at {artifact.uri}")
    print(context.store.read_text(artifact, "table.txt"))
    return artifact


if __name__ == "__main__":
    main()
