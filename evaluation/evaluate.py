r"""Evaluate an emulator on the test split: the stage ``evaluate(emulator, autoencoder, dataset)``.

Reads top to bottom (method.md §7, §8, §11):

1. **Validation** on the driver, before any Ray work (latent emulator without
   autoencoder, mismatched latent shapes, bad context lengths or ensemble sizes).
2. **Work items** ``(trajectory, start state s, context c, member block)`` (blocks from
   :func:`~lolaray.evaluation.rollout.split_members`) go through
   ``ray.data.from_items → map_batches(RolloutActor, ActorPoolStrategy)``. An actor loads
   the autoencoder, the emulator and the standardizer once; per item it rolls out its
   block of members from the true states ``s .. s+c-1`` (encoded for latent emulators),
   member ``k`` seeded by (seed, trajectory, s, k) whatever the split, decodes in chunks,
   returns to physical units, and returns **sufficient statistics** of the block
   (:class:`~lolaray.evaluation.metrics.EnsembleStatistics`: :math:`K`, :math:`\sum_k v_k`,
   :math:`\sum_k v_k^2`, :math:`\sum_k` member power spectra; and the per-member SEMD /
   Wasserstein sums against the truth :math:`u = x` and the auto-encoded truth
   :math:`u_{ae} = D(E(x))`), the block size and the rollout wall time (decoding included,
   device synchronized, the actor's first rollout flagged as warm-up). When the block is
   the whole ensemble the actor also scores it (fair CRPS, coverage, rank histogram:
   :func:`~lolaray.evaluation.metrics.ensemble_scores`); otherwise it writes the block's
   members to a scratch folder on the store, and a second Ray Data pass scores the joined
   blocks one chunk of lead times at a time (:mod:`~lolaray.evaluation.split_ensemble`:
   those scores need all members at a point at once, but no process holds more than a
   chunk). The
   "primary" item of each trajectory (first start, first context, block of member 0) also
   returns the truth, :math:`u_{ae}`, the autoencoder reconstruction error of every state
   of the trajectory (computed in the actor) and, for the first trajectory, member 0's
   trajectory (snapshot figure) and the first members (animation).
3. **Driver**: blocks are combined in float64 in a fixed order (trajectory, start,
   context, block start), so the numbers do not depend on the number of actors; every
   metric comes from :mod:`~lolaray.evaluation.metrics` (the accumulator's VRMSE, NRMSE,
   spread / skill and spectral band errors; CRPS, coverage; SEMD and Wasserstein) per
   field and lead time, then averaged over fields and aggregated by horizons, per context
   and over contexts.
4. **Outputs**: ``metrics.csv``, ``per_lead.csv``, ``per_field_lead.csv`` (per field and
   lead), ``per_trajectory.csv`` (per trajectory, start and context, by horizon),
   ``rank_histogram.csv``, ``summary.json``, ``table.txt``, ``rollout.gif`` (truth,
   ensemble mean, members; one frame per state), figure HTML files (plotly.js from its
   CDN) and one self-contained ``report.html`` (plotly.js inlined once, the GIF inlined,
   opens offline); an MLflow run with uniform metric names (``vrmse/lead_1-20``,
   ``crps/lead_1-20``, ``coverage_90/lead_1-20``, ``psrmse/high/lead_1-20``,
   ``context_1/…``, ``recon_vrmse``, ``infer_ms_per_state``, ``sampler_steps``) and the
   scoring options (``starts``, ``trajectory_selection``, ``vrmse_convention``) as params.

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
import csv
import json
import math
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lolaray.evaluation import report
from lolaray.evaluation.animation import animation_html, write_rollout_animation
from lolaray.evaluation.guidance_options import add_guidance_arguments, guidance_config, guidance_from_args
from lolaray.evaluation.metrics import (
    VRMSE_EPS,
    EnsembleStatistics,
    aggregate_by_horizon,
    ensemble_scores,
    horizon_slices,
    isotropic_power_spectrum,
    sliced_emd,
    vrmse,
    wasserstein_1d,
)
from lolaray.evaluation.rollout import (
    decode_in_chunks,
    diffusion_step,
    guided_diffusion_step,
    lead_times,
    member_generators,
    member_seed,
    observe_states,
    rollout,
    solver_step,
    split_members,
)
from lolaray.evaluation.scoring_options import add_scoring_arguments, scoring_from_args
from lolaray.evaluation.split_ensemble import (
    remove_scratch,
    score_split_ensembles,
    scratch_folder,
    write_block,
)
from lolaray.platform.artifacts import Artifact, ArtifactStore, artifact_id
from lolaray.platform.data import DatasetInfo, WellWindows, open_dataset, standardizer_for
from lolaray.platform.tracking import stage_run, tracking_uri
from lolaray.trainers.guidance import build_operator

__all__ = ["RolloutActor", "evaluate", "main"]

STAGE = "evaluation"
#: Euler-like horizons in simulation steps (paper Table 6: 1:20, 21:60, 61:100).
DEFAULT_HORIZONS = ((1, 20), (21, 60), (61, 100))
#: The per-lead metrics (averaged over fields), in CSV column order.
METRICS = (
    "vrmse",
    "nrmse",
    "spread",
    "skill",
    "spread_skill",
    "psrmse_low",
    "psrmse_mid",
    "psrmse_high",
    "semd",
    "wasserstein",
    "crps",
    "coverage_50",
    "coverage_90",
)
#: The probabilistic scores (:func:`~lolaray.evaluation.metrics.ensemble_scores`) among :data:`METRICS`.
ENSEMBLE_METRICS = ("crps", "coverage_50", "coverage_90")
REFERENCES = ("absolute", "relative")
#: The field whose sliced EMD is reported (paper Table 11: Euler density).
SEMD_FIELD = "density"
#: Evaluation artifact file with a few snapshots of member 0 and the truth (see ``_snapshot_excerpt``).
SNAPSHOT_FILE = "snapshot.npz"
#: Evaluation artifact file: truth, ensemble mean and a few members of trajectory 0 over the rollout.
ANIMATION_FILE = "rollout.gif"
#: Members shown in the animation (and returned by the actor for it).
ANIMATED_MEMBERS = 3


# ------------------------------------------------------------------------------ actor


def _encode_states(model, states: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(C, L, *spatial)`` standardized states → latents ``(C_lat, L, *latent)``."""
    rows = states.movedim(1, 0)  # (L, C, ...)
    with torch.no_grad():
        z = torch.cat([model.encode(rows[i : i + chunk]) for i in range(0, rows.shape[0], chunk)])
    return z.movedim(0, 1)


class RolloutActor:
    """Ray Data actor: rolls out blocks of ensemble members and returns their statistics.

    Built once per actor with the artifact folders; called with batches of one work item
    (``trajectory``, ``context``, ``start`` and ``stop`` of the member block, ``primary``,
    ``snapshot``). Returns ``{"key": ..., "result": pickled dict of numpy arrays}``.
    """

    def __init__(
        self,
        *,
        emulator_dir: str,
        autoencoder_dir: str | None,
        info: DatasetInfo,
        standardizer: dict,
        seed: int,
        sampler: str,
        steps: int,
        chunk: int = 4,
        guidance: dict | None = None,
        vrmse_eps: float = VRMSE_EPS["lola"],
        scratch: str | None = None,
    ):
        from lolaray.platform.preprocessing import Standardizer
        from lolaray.trainers.autoencoder_trainer import load_autoencoder
        from lolaray.trainers.emulator_trainer import load_emulator

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.emulator, self.config = load_emulator(emulator_dir)
        self.emulator.to(self.device)
        self.autoencoder = None
        if autoencoder_dir is not None:
            self.autoencoder, _ = load_autoencoder(autoencoder_dir)
            self.autoencoder.to(self.device)
        self.standardizer = Standardizer.from_dict(standardizer)
        self.windows = WellWindows(info, "test", length=None, standardizer=self.standardizer)
        self.field_names = list(info.field_names)
        self.spatial_dims = info.n_spatial_dims
        self.seed, self.chunk = seed, chunk
        self.vrmse_eps = vrmse_eps
        self.guidance = guidance
        self.scratch = scratch  # where the blocks of a split ensemble go to be scored
        # The first rollout of an actor pays for lazy initialisation (kernels, allocator,
        # compilation): its time is flagged as warm-up and left out of the time per state.
        self._warm = False
        self.sampler, self.steps = sampler, steps
        if self.config.kind == "diffusion":
            self.step = diffusion_step(self.emulator, sampler=sampler, steps=steps)
        else:
            self.step = solver_step(self.emulator)
        self._cache: tuple[int, dict] | None = None

    def _trajectory(self, index: int) -> dict:
        # Consecutive items usually share a trajectory: keep the last one.
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        item = self.windows[index]
        x = item["x"]  # (C, T, *spatial), standardized
        stride = self.config.stride
        strided = x[:, ::stride].contiguous()
        data = {"x": x, "strided": strided, "theta": item["theta"]}
        data["truth"] = self.standardizer.inverse(strided.double(), channel_dim=0)
        if self.autoencoder is not None:
            z = _encode_states(self.autoencoder, strided.to(self.device), self.chunk)
            data["z"] = z
            u_ae = decode_in_chunks(self.autoencoder, z[None], self.chunk)[0].cpu()
            data["truth_ae"] = self.standardizer.inverse(u_ae.double(), channel_dim=0)
        self._cache = (index, data)
        return data

    def _reconstruction(self, x: torch.Tensor) -> np.ndarray:
        """VRMSE of D(E(x)) against x, physical units, every state: ``(T, C)``."""
        z = _encode_states(self.autoencoder, x.to(self.device), self.chunk)
        x_ae = decode_in_chunks(self.autoencoder, z[None], self.chunk)[0].cpu()
        u = self.standardizer.inverse(x.double(), channel_dim=0).movedim(1, 0)
        v = self.standardizer.inverse(x_ae.double(), channel_dim=0).movedim(1, 0)
        return vrmse(v, u, spatial_dims=self.spatial_dims, eps=self.vrmse_eps).numpy()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _block(
        self, trajectory: int, origin: int, context: int, start: int, stop: int
    ) -> tuple[torch.Tensor, float]:
        """Members ``start..stop-1`` of the rollout whose first context state is state
        ``origin`` of the (strided) trajectory: physical fields ``(K, C, L - origin, *spatial)``
        float64, and the seconds taken (device synchronized, decoding included)."""
        data = self._trajectory(trajectory)
        length = data["strided"].shape[1] - origin
        block = range(start, stop)
        n = len(block)
        self._synchronize()
        began = time.perf_counter()
        if self.autoencoder is not None:
            initial = data["z"][:, origin : origin + context]
        else:
            initial = data["strided"][:, origin : origin + context].to(self.device)
        theta = data["theta"].to(self.device)
        step = self.step if self.guidance is None else self._guided_step(trajectory, origin, data, n)
        states = rollout(
            step,
            initial.expand(n, *initial.shape).contiguous(),
            theta.expand(n, *theta.shape).contiguous(),
            window=self.config.window,
            context=context,
            overlap=context,
            length=length,
            generator=member_generators(self.seed, trajectory, origin, block, device="cpu"),
        )
        if self.autoencoder is not None:
            states = decode_in_chunks(self.autoencoder, states, self.chunk)
        self._synchronize()
        seconds = time.perf_counter() - began
        members = self.standardizer.inverse(states.double().cpu(), channel_dim=1)
        return members, seconds

    def _guided_step(self, trajectory: int, origin: int, data: dict, members: int):
        """The MMPS-guided step of one rollout: observations of its standardized truth from
        state ``origin`` on, with noise σ_y drawn once per (seed, trajectory, origin) — the
        same for every member (origin 0 draws the noise it always did)."""
        g = self.guidance
        strided = data["strided"][None, :, origin:].to(self.device)  # (1, C, L - origin, *spatial)
        operator = build_operator(g["operator"], g["factor"], strided.shape[3:])
        observations = observe_states(operator, strided)
        noise_seed = member_seed(self.seed, trajectory, origin, -1)  # member -1: the observation
        noise = torch.randn(
            observations.shape, generator=torch.Generator().manual_seed(noise_seed), dtype=observations.dtype
        )
        observations = observations + g["sigma_y"] * noise.to(observations.device)
        return guided_diffusion_step(
            self.emulator,
            observations.expand(members, *observations.shape[1:]),
            operator,
            decoder=None if self.autoencoder is None else self.autoencoder.decode,
            var_y=g["var_y"],
            iterations=g["iterations"],
            solver=g["solver"],
            sampler=self.sampler,
            steps=self.steps,
        )

    def _stats(self, members: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
        """SEMD and Wasserstein sums of the members against one reference."""
        k = members.shape[0]
        out = {}
        # (K, C, L, ...) -> (K, L, C, ...): metrics take channels just before space.
        v, u = members.movedim(2, 1), truth.movedim(1, 0)
        out["wasserstein"] = (wasserstein_1d(v, u, spatial_dims=self.spatial_dims) * k).numpy()
        if SEMD_FIELD in self.field_names and self.spatial_dims == 2:
            d = self.field_names.index(SEMD_FIELD)
            out["semd"] = (sliced_emd(members[:, d], truth[d], seed=self.seed) * k).numpy()
        return out

    def evaluate_item(self, item: dict) -> dict[str, Any]:
        trajectory, context, origin = int(item["trajectory"]), int(item["context"]), int(item["origin"])
        start, stop = int(item["start"]), int(item["stop"])
        members, seconds = self._block(trajectory, origin, context, start, stop)
        warmup, self._warm = not self._warm, True
        data = self._trajectory(trajectory)
        truths = {"absolute": data["truth"][:, origin:]}
        if self.autoencoder is not None:
            truths["relative"] = data["truth_ae"][:, origin:]
        # Metrics take (..., C, *spatial): members (K, L, C, ...), truths (L, C, ...).
        by_lead = members.movedim(2, 1)
        result: dict[str, Any] = {
            "count": members.shape[0],
            "seconds": seconds,
            "warmup": warmup,
            "moments": EnsembleStatistics(spatial_dims=self.spatial_dims).add(by_lead).to_dict(),
        }
        for ref, truth in truths.items():
            result[ref] = self._stats(members, truth)
        if start == 0 and stop == int(item["members"]):
            # The whole ensemble is here: score it now; otherwise the driver joins the blocks.
            result["scores"] = {
                ref: _numpy(ensemble_scores(by_lead, truth.movedim(1, 0), spatial_dims=self.spatial_dims))
                for ref, truth in truths.items()
            }
        else:
            write_block(self.scratch, (trajectory, origin, context), start, by_lead.numpy())
        if item["primary"]:
            result["truth"] = data["truth"].numpy()
            if self.autoencoder is not None:
                result["truth_ae"] = data["truth_ae"].numpy()
                result["recon_vrmse"] = self._reconstruction(data["x"])
        if item["snapshot"] and start == 0:
            result["member0"] = members[0].float().numpy()
            result["animated"] = members[:ANIMATED_MEMBERS].float().numpy()
        return result

    def __call__(self, batch: dict) -> dict:
        keys, results = [], []
        for i in range(len(batch["trajectory"])):
            item = {k: batch[k][i] for k in batch}
            keys.append(_item_key(item))
            results.append(pickle.dumps(self.evaluate_item(item)))
        return {"key": np.asarray(keys), "result": np.asarray(results, dtype=object)}


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in tensors.items()}


def _item_key(item: dict) -> str:
    """``"trajectory/origin/context/start"`` of a work item (``start``: its first member)."""
    return "/".join(str(int(item[k])) for k in ("trajectory", "origin", "context", "start"))


def _run_pipeline(
    items: list[dict], actor_kwargs: dict, *, actors: int, actor_gpus: float | None
) -> dict[tuple[int, int, int, int], dict]:
    """Runs the work items through the actor pool; ``(trajectory, origin, context, start)`` → stats."""
    import ray.data

    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        RolloutActor,
        fn_constructor_kwargs=actor_kwargs,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=actor_gpus or None,
        num_cpus=None if actor_gpus else 0.5,
    )
    out = {}
    for row in ds.take_all():
        out[tuple(int(s) for s in str(row["key"]).split("/"))] = pickle.loads(row["result"])
    if len(out) != len(items):
        raise RuntimeError(f"the rollout pipeline returned {len(out)} results for {len(items)} work items")
    return out


# ----------------------------------------------------------------------------- driver


def _per_field_lead(
    sums: dict, truth: torch.Tensor, scores: dict, *, kind: str, spatial_dims: int, vrmse_eps: float
) -> dict[str, torch.Tensor]:
    """Metrics per lead time and field, ``metric → (L, C)`` (``semd`` → ``(L,)``, its one
    field), of one (trajectory, origin, context) against one reference.

    :param sums: :func:`_combine`'s statistics, the ``reference``'s distribution sums under
        ``"distances"``.
    :param truth: ``(C, L, *spatial)`` physical truth from the rollout's first state on.
    :param scores: that reference's :func:`~lolaray.evaluation.metrics.ensemble_scores`.
    """
    moments: EnsembleStatistics = sums["moments"]
    k = moments.count
    u = truth.movedim(1, 0)  # (L, C, ...)
    spread, skill, ratio = moments.spread_skill(u)
    if kind == "solver":  # deterministic: no spread, ratio 0 by convention
        ratio = torch.zeros_like(skill)
    out = {
        "vrmse": moments.vrmse(u, eps=vrmse_eps),
        "nrmse": moments.nrmse(u, eps=vrmse_eps),
        "spread": spread,
        "skill": skill,
        "spread_skill": ratio,
        **{f"psrmse_{band}": value for band, value in moments.spectral_rmse(u).items()},
        "wasserstein": torch.from_numpy(sums["distances"]["wasserstein"]) / k,
    }
    out.update({name: torch.from_numpy(scores[name]) for name in ENSEMBLE_METRICS})
    if "semd" in sums["distances"]:
        out["semd"] = torch.from_numpy(sums["distances"]["semd"]) / k
    return out


def _field_mean(per_field: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Mean over fields of :func:`_per_field_lead`: ``metric → (L,)`` (the paper's convention)."""
    return {name: (v if name == "semd" else v.mean(dim=-1)).numpy() for name, v in per_field.items()}


def _combine(blocks: list[dict], reference: str) -> dict:
    """Sums the statistics of the member blocks of one (trajectory, origin, context), in the
    given order (float64): ``count``, ``seconds`` (and ``timed_seconds``, ``timed_count``
    without the actors' warm-up rollouts), ``moments`` and ``distances`` of ``reference``."""
    moments = None
    total: dict[str, Any] = {"count": 0, "seconds": 0.0, "timed_seconds": 0.0, "timed_count": 0}
    distances: dict[str, np.ndarray] = {}
    for b in blocks:
        total["count"] += b["count"]
        total["seconds"] += b["seconds"]
        if not b.get("warmup", False):
            total["timed_seconds"] += b["seconds"]
            total["timed_count"] += b["count"]
        block = EnsembleStatistics.from_dict(b["moments"])
        moments = block if moments is None else moments.merge(block)
        for name, value in b[reference].items():
            distances[name] = distances[name] + value if name in distances else value.astype(np.float64)
    total.update(moments=moments, distances=distances)
    return total


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def _method_label(manifest: dict) -> str:
    kind = manifest.get("kind", "emulator")
    return f"pixel {kind}" if manifest.get("space") == "pixel" else kind


def _resolve_trajectories(
    trajectories: int | Sequence[int], available: int, *, selection_seed: int | None = None
) -> list[int]:
    """The test trajectories to evaluate, sorted: explicit indices, the first ``N``, or ``N``
    drawn without replacement by ``numpy.random.default_rng(selection_seed)`` (the paper
    draws its test trajectories with a fixed seed)."""
    if isinstance(trajectories, int):
        if trajectories < 1:
            raise ValueError(f"trajectories must be >= 1, got {trajectories}")
        count = min(trajectories, available)
        if selection_seed is None:
            return list(range(count))
        drawn = np.random.default_rng(selection_seed).choice(available, size=count, replace=False)
        return sorted(int(i) for i in drawn)
    if selection_seed is not None:
        raise ValueError("a trajectory selection seed draws N trajectories: pass a count, not indices")
    indices = sorted({int(i) for i in trajectories})
    if not indices:
        raise ValueError("need at least one test trajectory")
    bad = [i for i in indices if not 0 <= i < available]
    if bad:
        raise ValueError(f"trajectory indices {bad} out of range: the test split holds {available}")
    return indices


def evaluate(
    emulator: Artifact,
    autoencoder: Artifact | None,
    dataset: DatasetInfo | str,
    *,
    contexts: Sequence[int] = (1, 2, 3),
    members: int = 16,
    trajectories: int | Sequence[int] = 8,
    seed: int = 0,
    trajectory_seed: int | None = None,
    starts: Sequence[int] = (0,),
    vrmse_convention: str = "lola",
    sampler: str = "ab3",
    steps: int = 16,
    horizons: Sequence[tuple[int, int]] | None = None,
    actors: int = 1,
    max_batch: int = 8,
    actor_gpus: float | None = None,
    guidance: dict | None = None,
    store: ArtifactStore | str = "lolaray-store",
    mlflow_uri: str | None = None,
    experiment: str = "lolaray",
    parent_run_id: str | None = None,
) -> Artifact:
    """Evaluate (or reuse the evaluation of) ``emulator`` on the test split of ``dataset``.

    :param emulator: an emulator artifact (latent or pixel, diffusion or solver).
    :param autoencoder: its autoencoder artifact (required for latent emulators).
    :param contexts: context lengths ``c`` (``o = c``), each in ``[1, window − 1]``.
    :param members: ensemble size ``K`` (solvers: 1, they are deterministic).
    :param trajectories: the first ``N`` test trajectories, or explicit indices.
    :param trajectory_seed: draw the ``N`` test trajectories at random with this seed
        instead of taking the first ``N`` (as the paper does); ``None``: the first ``N``.
    :param starts: rollout start states: the index, in the strided trajectory, of the
        first context state of each rollout (default ``(0,)``: the trajectory's start).
        Every (trajectory, start) is one more sample of every metric.
    :param vrmse_convention: the ε on the spatial variance of VRMSE (and on the energy of
        NRMSE): ``"lola"`` (1e-6, the paper's code) or ``"well"`` (1e-7, The Well's benchmark).
    :param seed, sampler, steps: the sampling (member ``k`` of the rollout from start ``s``
        seeded by (seed, trajectory, s, k)).
    :param horizons: inclusive lead-time horizons in simulation steps (default Euler-like).
    :param guidance: MMPS guidance of a diffusion emulator by noisy observations of the
        true test states (:func:`~lolaray.evaluation.guidance_options.guidance_config`: ``operator``, ``factor``, ``sigma_y``,
        ``var_y``, ``iterations``, ``solver``); ``None`` = unguided.
    :param actors, max_batch, actor_gpus: the actor pool and the members per batch; they
        do not change the results (nor the artifact id).
    :returns: the evaluation artifact (``metrics.csv``, ``summary.json``, ``table.txt``,
        ``report.html``, figures).
    """
    store = store if isinstance(store, ArtifactStore) else ArtifactStore(store)
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
        if state_shape != list(info.state_shape):
            raise ValueError(
                f"pixel emulator {emulator.id} has state shape {tuple(state_shape)}, "
                f"the dataset {tuple(info.state_shape)}"
            )
    if int(manifest["theta_dim"]) != info.theta_dim:
        raise ValueError(f"emulator theta_dim {manifest['theta_dim']} != dataset theta_dim {info.theta_dim}")
    contexts = sorted({int(c) for c in contexts})
    if not contexts or any(not 1 <= c <= window - 1 for c in contexts):
        raise ValueError(f"contexts {contexts} must lie in [1, window - 1] = [1, {window - 1}]")
    if members < 1:
        raise ValueError(f"need at least one ensemble member, got {members}")
    if max_batch < 1 or actors < 1:
        raise ValueError(f"max_batch and actors must be >= 1, got {max_batch}, {actors}")
    if kind == "solver":
        members = 1
    horizons = tuple(tuple(int(v) for v in h) for h in (horizons or DEFAULT_HORIZONS))
    if vrmse_convention not in VRMSE_EPS:
        raise ValueError(
            f"unknown VRMSE convention {vrmse_convention!r}: choose one of {', '.join(VRMSE_EPS)}"
        )
    starts = sorted({int(s) for s in starts})
    if not starts or starts[0] < 0:
        raise ValueError(f"rollout start states {starts} must be >= 0")

    if autoencoder is not None:
        from lolaray.trainers.autoencoder_trainer import load_autoencoder

        _, standardizer = load_autoencoder(autoencoder)
    else:
        standardizer = standardizer_for(info)
    test = WellWindows(info, "test", length=None, standardizer=standardizer)
    indices = _resolve_trajectories(trajectories, len(test), selection_seed=trajectory_seed)
    n_states = test.length
    length = (n_states - 1) // stride + 1
    if length - starts[-1] <= max(contexts):
        raise ValueError(
            f"test trajectories give {length} states at stride {stride}: too short for contexts "
            f"{contexts} from start state {starts[-1]}"
        )

    config = {
        "contexts": contexts,
        "members": members,
        "trajectories": indices,
        "seed": seed,
        "sampler": sampler if kind == "diffusion" else None,
        "steps": steps if kind == "diffusion" else None,
        "horizons": [list(h) for h in horizons],
    }
    # Recorded only when not the default, so the ids of earlier evaluations stay valid.
    if starts != [0]:
        config["starts"] = starts
    if trajectory_seed is not None:
        config["trajectory_seed"] = int(trajectory_seed)
    if vrmse_convention != "lola":
        config["vrmse_convention"] = vrmse_convention
    if guidance is not None:
        if kind != "diffusion":
            raise ValueError(f"guidance needs a diffusion emulator; {emulator.id} is a {kind}")
        guidance = guidance_config(**guidance)
        build_operator(guidance["operator"], guidance["factor"], info.resolution)(
            torch.zeros(1, *info.resolution)
        )  # fails now, with a clear message, if the operator does not fit the grid
        config["guidance"] = guidance  # only when guided: unguided ids stay as they were
    upstream = [emulator.id, autoencoder.id if autoencoder is not None else "", info.fingerprint()]
    aid = artifact_id(STAGE, config, upstream)
    if (existing := store.get(STAGE, aid)) is not None:
        return existing

    # 2. work items -> actors
    blocks = split_members(members, max_batch)
    items = [
        {
            "trajectory": t,
            "origin": s,
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
    actor_gpus = _actor_gpus(actor_gpus)
    uri = tracking_uri(mlflow_uri)
    rate = float(manifest.get("compression", 1))
    method = _method_label(manifest) if guidance is None else f"guided {_method_label(manifest)}"
    with stage_run(
        experiment,
        run_name=f"eval-{method.replace(' ', '-')}-x{rate:g}",
        uri=uri,
        parent_run_id=parent_run_id,
        tags={
            "stage": STAGE,
            "emulator": str(kind),
            "space": str(space),
            "compression": f"{rate:g}",
            "artifact_id": aid,
            "emulator_id": emulator.id,
            "guided": "yes" if guidance is not None else "no",
        },
        params={
            **config,
            "starts": starts,
            "trajectory_selection": "first" if trajectory_seed is None else f"seed {trajectory_seed}",
            "vrmse_convention": vrmse_convention,
            "vrmse_eps": VRMSE_EPS[vrmse_convention],
            "actors": actors,
            "max_batch": max_batch,
            "dataset": info.name,
        },
    ) as run:
        run_id, client = run.run_id, run.client
        # A split ensemble's blocks wait on the store to be scored together (module docstring, 2.).
        scratch = scratch_folder(store.root, STAGE, aid) if len(blocks) > 1 else None
        try:
            results = _run_pipeline(
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
                },
                actors=actors,
                actor_gpus=actor_gpus,
            )
            split_scores = {}
            if scratch is not None:
                split_scores = score_split_ensembles(
                    scratch,
                    _rollout_truths(results, indices=indices, starts=starts, contexts=contexts),
                    starts=[b.start for b in blocks],
                    members=members,
                    spatial_dims=info.n_spatial_dims,
                )
        finally:
            if scratch is not None:
                remove_scratch(scratch)
        # 3. combine in a fixed order
        summary, rows, per_lead_rows, figures_data = _analyse(
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
        )
        summary.update(
            config=config, emulator=emulator.id, autoencoder=autoencoder.id if autoencoder else None
        )
        out_manifest = {
            "emulator": emulator.id,
            "autoencoder": autoencoder.id if autoencoder is not None else None,
            "dataset": info.name,
            "dataset_fingerprint": info.fingerprint(),
            "kind": kind,
            "space": space,
            "compression": rate,
            "mlflow_run_id": run_id,
            **config,
        }
        with store.build(STAGE, aid, out_manifest) as folder:
            files = _write_outputs(
                folder, summary, rows, per_lead_rows, figures_data, method=method, rate=rate
            )
            _log_mlflow(client, run_id, summary, files)
    return store.get(STAGE, aid)


def _rollout_truths(
    results: dict, *, indices: list[int], starts: list[int], contexts: list[int]
) -> dict[tuple[int, int, int], dict[str, np.ndarray]]:
    """``(trajectory, start, context) → reference → (L, C, *spatial)`` physical truth from
    each rollout's first state on, from the trajectories' primary results."""
    truths = {}
    for t in indices:
        primary = results[(t, starts[0], contexts[0], 0)]
        full = {"absolute": primary["truth"]}
        if "truth_ae" in primary:
            full["relative"] = primary["truth_ae"]
        for origin in starts:
            by_reference = {ref: np.moveaxis(u[:, origin:], 1, 0) for ref, u in full.items()}
            for c in contexts:
                truths[(t, origin, c)] = by_reference
    return truths


def _actor_gpus(actor_gpus: float | None) -> float:
    if actor_gpus is not None:
        return float(actor_gpus)
    import ray

    if not ray.is_initialized():  # Ray Data will start a local cluster on this machine
        return 1.0 if torch.cuda.is_available() else 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _analyse(
    results: dict,
    split_scores: dict,
    *,
    indices: list[int],
    contexts: list[int],
    starts: list[int],
    blocks: list[range],
    kind: str,
    method: str,
    rate: float,
    stride: int,
    horizons: tuple,
    info: DatasetInfo,
    latent: bool,
    vrmse_eps: float = VRMSE_EPS["lola"],
    steps: int | None = None,
) -> tuple[dict, list[dict], list[dict], dict]:
    """Combines the actors' statistics in a fixed order (trajectory, start, context, block)
    into the summary, the per-horizon rows, the per-lead rows and the figures' data (which
    also holds the per-(field, lead) and per-trajectory tables and the rank histograms).
    ``split_scores``: the ensemble scores of split ensembles, by (trajectory, start, context)."""
    spatial_dims = info.n_spatial_dims
    field_names = list(info.field_names)
    references = REFERENCES if latent else REFERENCES[:1]
    # (reference, context) -> metric -> horizon -> [value per trajectory and start]
    by_horizon: dict[tuple[str, int], dict[str, dict[str, list]]] = {}
    per_lead_rows: list[dict] = []
    per_trajectory_rows: list[dict] = []
    # (reference, context, lead, field) -> metric -> [value per trajectory and start]
    per_field: dict[tuple, dict[str, list]] = {}
    # (reference, context, horizon) -> (C, K + 1) rank counts
    ranks: dict[tuple, np.ndarray] = {}
    spectra: dict[str, list] = {"truth": [], "emulated": [], "truth_ae": []}
    seconds, states, timed_seconds, timed_states = 0.0, 0, 0.0, 0
    recon: list[float] = []
    recon_by_horizon: dict[str, list[float]] = {}
    snapshot = None
    for t in indices:
        primary = results[(t, starts[0], contexts[0], 0)]
        truth = torch.from_numpy(primary["truth"])
        full_truths = {"absolute": truth}
        if latent:
            full_truths["relative"] = torch.from_numpy(primary["truth_ae"])
            per_state = torch.from_numpy(np.asarray(primary["recon_vrmse"])).double().mean(-1)  # (T,)
            recon.append(float(per_state.mean()))
            # The paper's Table 6 "autoencoder" rows: reconstruction error by the state's
            # lead time from the initial state (state i of the trajectory has lead i).
            for label, value in aggregate_by_horizon(
                per_state, torch.arange(per_state.numel()), horizons
            ).items():
                recon_by_horizon.setdefault(label, []).append(float(value))
        for origin in starts:
            truths = {ref: u[:, origin:] for ref, u in full_truths.items()}
            length = truths["absolute"].shape[1]
            for c in contexts:
                group = [results[(t, origin, c, b.start)] for b in blocks]
                scores = group[0]["scores"] if len(blocks) == 1 else split_scores[(t, origin, c)]
                leads = lead_times(length, c, stride)
                generated = leads > 0
                for ref in references:
                    sums = _combine(group, ref)
                    if ref == "absolute":
                        seconds += sums["seconds"]
                        timed_seconds += sums["timed_seconds"]
                        # Time per state: per member and per *generated* state.
                        states += sums["count"] * int(generated.sum())
                        timed_states += sums["timed_count"] * int(generated.sum())
                    if ref == "absolute" and c == contexts[0] and origin == starts[0]:
                        k, p_u = isotropic_power_spectrum(truths[ref], spatial_dims=spatial_dims)
                        spectra["k"] = k.numpy()
                        spectra["truth"].append(p_u[:, generated].mean(1).numpy())
                        emulated = sums["moments"].sum_spectra / sums["count"]  # (L, C, B)
                        spectra["emulated"].append(emulated[generated].mean(0).numpy())
                        if latent:
                            _, p_ae = isotropic_power_spectrum(truths["relative"], spatial_dims=spatial_dims)
                            spectra["truth_ae"].append(p_ae[:, generated].mean(1).numpy())
                    fields = _per_field_lead(
                        sums,
                        truths[ref],
                        scores[ref],
                        kind=kind,
                        spatial_dims=spatial_dims,
                        vrmse_eps=vrmse_eps,
                    )
                    metrics = _field_mean(fields)
                    slot = by_horizon.setdefault((ref, c), {})
                    trajectory_row = {
                        "method": method,
                        "compression": rate,
                        "reference": ref,
                        "context": c,
                        "trajectory": t,
                        "start": origin,
                    }
                    for name, values in metrics.items():
                        for label, value in aggregate_by_horizon(
                            torch.from_numpy(values), leads, horizons
                        ).items():
                            slot.setdefault(name, {}).setdefault(label, []).append(float(value))
                            trajectory_row[f"{name}/{label}"] = float(value)
                    per_trajectory_rows.append(trajectory_row)
                    rank_counts = torch.from_numpy(scores[ref]["rank_histogram"])  # (L, C, K + 1)
                    for label, positions in horizon_slices(leads, horizons).items():
                        counts = rank_counts[positions].sum(0).numpy()
                        key = (ref, c, label)
                        ranks[key] = counts if key not in ranks else ranks[key] + counts
                    for i, lead in enumerate(leads.tolist()):
                        if lead <= 0:
                            continue
                        per_lead_rows.append(
                            {
                                **{k: v for k, v in trajectory_row.items() if "/" not in k},
                                "lead": lead,
                                **{name: float(v[i]) for name, v in metrics.items()},
                            }
                        )
                        for f, field in enumerate(field_names):
                            cell = per_field.setdefault((ref, c, lead, field), {})
                            for name, value in fields.items():
                                if name != "semd":
                                    cell.setdefault(name, []).append(float(value[i, f]))
        snapshot_item = results.get((t, starts[0], contexts[0], 0), {})
        if "member0" in snapshot_item and snapshot is None:
            snapshot = {
                "truth": primary["truth"][:, starts[0] :],
                "member0": snapshot_item["member0"],
                "animated": snapshot_item["animated"],
                "mean": _combine([results[(t, starts[0], contexts[0], b.start)] for b in blocks], "absolute")[
                    "moments"
                ]
                .mean()
                .movedim(1, 0)
                .float()
                .numpy(),  # (C, L, *spatial), like the truth
                "context": contexts[0],
                "start": starts[0],
                "trajectory": t,
            }

    labels = [f"lead_{a}-{b}" for a, b in horizons]
    rows: list[dict] = []
    for ref in references:
        for c in [*contexts, "all"]:
            for label in labels:
                row = {
                    "method": method,
                    "compression": rate,
                    "context": c,
                    "horizon": label,
                    "reference": ref,
                }
                for name in METRICS:
                    if c == "all":
                        per_context = [
                            _nanmean(by_horizon[(ref, cc)].get(name, {}).get(label, [])) for cc in contexts
                        ]
                        row[name] = _nanmean(per_context)
                    else:
                        row[name] = _nanmean(by_horizon[(ref, c)].get(name, {}).get(label, []))
                rows.append(row)

    summary = {
        "method": method,
        "kind": kind,
        "compression": rate,
        "horizons": labels,
        "recon_vrmse": _nanmean(recon) if latent else None,
        "recon_vrmse_by_horizon": {k: _nanmean(v) for k, v in recon_by_horizon.items()} if latent else None,
        "infer_seconds": seconds,
        # Per member and generated state, device synchronized, each actor's first (warm-up)
        # rollout left out unless it was the only one.
        "infer_ms_per_state": 1e3
        * (timed_seconds / timed_states if timed_states else seconds / max(states, 1)),
        "infer_warmup_excluded": bool(timed_states),
        "sampler_steps": steps,
        "states_generated": states,
        "metrics": {
            f"{r['reference']}/context_{r['context']}/{name}/{r['horizon']}": r[name]
            for r in rows
            for name in METRICS
        },
    }
    per_field_rows = [
        {
            "method": method,
            "compression": rate,
            "reference": ref,
            "context": c,
            "lead": lead,
            "field": field,
            **{name: _nanmean(values) for name, values in cell.items()},
        }
        for (ref, c, lead, field), cell in per_field.items()
    ]
    rank_rows = [
        {
            "reference": ref,
            "context": c,
            "horizon": label,
            "field": field_names[f],
            "rank": r,
            "count": float(n),
        }
        for (ref, c, label), counts in ranks.items()
        for f in range(counts.shape[0])
        for r, n in enumerate(counts[f])
    ]
    figures_data = {
        "per_field": per_field_rows,
        "per_trajectory": per_trajectory_rows,
        "rank_histogram": rank_rows,
        "spectra": spectra,
        "snapshot": snapshot,
        "stride": stride,
        "field_names": info.field_names,
    }
    return summary, rows, per_lead_rows, figures_data


def _mlflow_name(name: str) -> str:
    return name.replace("psrmse_", "psrmse/")


def _mlflow_metrics(summary: dict) -> dict[str, float]:
    metrics = {}
    for key, value in summary["metrics"].items():
        ref, context, name, horizon = key.split("/")
        if value is None or not math.isfinite(value):
            continue
        prefix = "" if ref == "absolute" else "relative/"
        if context == "context_all":
            metrics[f"{prefix}{_mlflow_name(name)}/{horizon}"] = value
        else:
            metrics[f"{prefix}{context}/{_mlflow_name(name)}/{horizon}"] = value
    if summary.get("recon_vrmse") is not None and math.isfinite(summary["recon_vrmse"]):
        metrics["recon_vrmse"] = summary["recon_vrmse"]
    for horizon, value in (summary.get("recon_vrmse_by_horizon") or {}).items():
        if math.isfinite(value):
            metrics[f"recon_vrmse/{horizon}"] = value
    metrics["infer_ms_per_state"] = summary["infer_ms_per_state"]
    if summary.get("sampler_steps"):  # beside the time per state: diffusion cost grows with it
        metrics["sampler_steps"] = float(summary["sampler_steps"])
    return metrics


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def _write_outputs(
    folder: Path,
    summary: dict,
    rows: list[dict],
    per_lead: list[dict],
    data: dict,
    *,
    method: str,
    rate: float,
) -> list[Path]:
    folder = Path(folder)
    _write_csv(folder / "metrics.csv", rows)
    _write_csv(folder / "per_lead.csv", per_lead)
    _write_csv(folder / "per_field_lead.csv", data.get("per_field", []))
    _write_csv(folder / "per_trajectory.csv", data.get("per_trajectory", []))
    _write_csv(folder / "rank_histogram.csv", data.get("rank_histogram", []))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    table_rows = [r for r in rows if r["reference"] == "absolute" and r["context"] == "all"]
    tables = [
        report.metric_table(table_rows, metric=m, columns=summary["horizons"])
        for m in (
            "vrmse",
            "nrmse",
            "spread_skill",
            "psrmse_low",
            "psrmse_mid",
            "psrmse_high",
            "semd",
            "wasserstein",
            "crps",
            "coverage_50",
            "coverage_90",
        )
    ]
    (folder / "table.txt").write_text("\n\n".join(f"## {t.metric}\n\n{t.to_text()}" for t in tables) + "\n")

    absolute = [r for r in per_lead if r["reference"] == "absolute"]
    figures = {
        "vrmse_vs_lead": report.metric_vs_lead_figure(absolute, metric="vrmse", title="VRMSE vs lead time"),
        "spread_skill_vs_lead": report.spread_skill_figure(absolute),
        "crps_vs_lead": report.metric_vs_lead_figure(absolute, metric="crps", title="Fair CRPS vs lead time"),
    }
    if summary["config"]["members"] > 1:
        figures["coverage_vs_lead"] = report.coverage_figure(absolute)
        ranks = [r for r in data.get("rank_histogram", []) if r["reference"] == "absolute"]
        figures["rank_histogram"] = report.rank_histogram_figure(ranks)
    spectra = data["spectra"]
    names = list(data["field_names"])
    field = names.index(SEMD_FIELD) if SEMD_FIELD in names else 0
    if spectra["truth"]:
        emulated = {f"{method} ÷{report.format_compression(rate)}": np.mean(spectra["emulated"], 0)[field]}
        if spectra["truth_ae"]:
            emulated["autoencoder D(E(x))"] = np.mean(spectra["truth_ae"], 0)[field]
        figures["power_spectra"] = report.power_spectrum_figure(
            spectra["k"],
            np.mean(spectra["truth"], 0)[field],
            emulated,
            title=f"Isotropic power spectrum of {names[field]} (mean over lead > 0)",
        )
    snapshot = data["snapshot"]
    if snapshot is not None and snapshot["truth"].ndim == 4:
        # A few states of one field, kept small, so a study can put evaluations' snapshots
        # side by side (the guided/unguided panel) without re-running rollouts.
        np.savez_compressed(
            folder / SNAPSHOT_FILE, **_snapshot_excerpt(snapshot, names[field], field, data["stride"])
        )
        length = snapshot["truth"].shape[1]
        figures["snapshots"] = report.snapshot_grid_figure(
            snapshot["truth"][field],
            {"member 0": snapshot["member0"][field]},
            leads=lead_times(length, snapshot["context"], data["stride"]).tolist(),
            field=names[field],
            title=f"{names[field]}: member 0 vs ground truth (trajectory 0, c={snapshot['context']})",
        )
    animation = None
    if snapshot is not None and snapshot["truth"].ndim in (4, 5):
        animation = _write_animation(folder / ANIMATION_FILE, snapshot, names[field], field, data["stride"])
    files = [
        folder / name
        for name in (
            "metrics.csv",
            "per_lead.csv",
            "per_field_lead.csv",
            "per_trajectory.csv",
            "rank_histogram.csv",
            "summary.json",
            "table.txt",
        )
    ]
    files += [folder / SNAPSHOT_FILE] if (folder / SNAPSHOT_FILE).exists() else []
    files += [animation] if animation is not None else []
    for name, fig in figures.items():
        # plotly.js from its CDN: each inlined copy weighs ~4.8 MB, and report.html already
        # holds every figure with plotly.js inlined once (the offline, self-contained view).
        fig.write_html(folder / f"{name}.html", include_plotlyjs="cdn", include_mathjax=False)
        files.append(folder / f"{name}.html")

    lines = [
        f"time per state: {summary['infer_ms_per_state']:.3f} ms per member and generated state"
        + (f", {summary['sampler_steps']} sampler steps" if summary.get("sampler_steps") else "")
        + (
            "" if summary.get("infer_warmup_excluded", True) else " (warm-up included: one rollout per actor)"
        ),
        f"autoencoder reconstruction VRMSE: {summary['recon_vrmse']:.4f}"
        if summary.get("recon_vrmse") is not None
        else "pixel-space emulator: no autoencoder",
    ]
    sections = [
        report.Section("Summary", lines),
        report.Section("Tables (absolute, averaged over contexts)", tables),
        report.Section("Figures", list(figures.values())),
    ]
    if animation is not None:
        sections.append(
            report.Section(
                "Rollout",
                [
                    report.RawHTML(
                        animation_html(animation, caption=_animation_caption(snapshot, names[field]))
                    )
                ],
            )
        )
    files.append(
        report.write_html_report(
            folder / "report.html",
            f"Evaluation: {method} ÷{report.format_compression(rate)}",
            sections,
            description=f"contexts {summary['config']['contexts']}, members {summary['config']['members']}, "
            f"trajectories {summary['config']['trajectories']}",
        )
    )
    return files


def _animation_caption(snapshot: dict, field_name: str) -> str:
    return (
        f"{field_name}: truth, ensemble mean and members of trajectory {snapshot['trajectory']} "
        f"(start state {snapshot['start']}, c={snapshot['context']}), one frame per state"
    )


def _write_animation(path: Path, snapshot: dict, field_name: str, field: int, stride: int) -> Path:
    """The GIF of truth, ensemble mean and the first members of one rollout, one field, one
    frame per state (context states included), strided to at most 128 pixels per axis."""
    truth = snapshot["truth"][field]  # (T, *spatial)
    step = max(1, math.ceil(max(truth.shape[1:]) / 128))
    thin = (slice(None),) + (slice(None, None, step),) * (truth.ndim - 1)
    panels = {"truth": truth[thin], "ensemble mean": snapshot["mean"][field][thin]}
    for k, member in enumerate(snapshot["animated"]):
        panels[f"member {k}"] = member[field][thin]
    leads = lead_times(truth.shape[0], snapshot["context"], stride).tolist()
    return write_rollout_animation(path, panels, leads=leads)


def _snapshot_excerpt(snapshot: dict, field_name: str, field: int, stride: int, *, states: int = 8) -> dict:
    """Member 0 and the truth of trajectory 0 at ``states`` evenly spaced lead times >= 0,
    one field, strided down to at most 128 pixels per axis (the ``snapshot.npz`` arrays)."""
    truth, member = snapshot["truth"][field], snapshot["member0"][field]  # (T, H, W)
    leads = lead_times(truth.shape[0], snapshot["context"], stride).numpy()
    valid = np.flatnonzero(leads >= 0)
    picks = np.unique(valid[np.round(np.linspace(0, len(valid) - 1, min(states, len(valid)))).astype(int)])
    step = max(1, math.ceil(max(truth.shape[1:]) / 128))
    return {
        "truth": truth[picks, ::step, ::step].astype(np.float32),
        "member0": member[picks, ::step, ::step].astype(np.float32),
        "leads": leads[picks],
        "context": np.int64(snapshot["context"]),
        "field": np.str_(field_name),
    }


def _log_mlflow(client, run_id: str, summary: dict, files: list[Path]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in _mlflow_metrics(summary).items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for path in files:
        client.log_artifact(run_id, str(path))


# ------------------------------------------------------------------------ command line


def _artifact_from_folder(folder: str) -> Artifact:
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return Artifact(
        stage=manifest["stage"], id=manifest["id"], uri=str(Path(folder).resolve()), manifest=manifest
    )


def main(argv=None) -> Artifact:
    parser = argparse.ArgumentParser(description="Evaluate an emulator on the test split (Ray Data actors).")
    parser.add_argument("--emulator", required=True, help="emulator artifact folder")
    parser.add_argument("--autoencoder", default=None, help="autoencoder artifact folder (latent emulators)")
    parser.add_argument("--dataset", default="euler_quadrants:demo")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="ab3")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--actor-gpus", type=float, default=None)
    parser.add_argument("--store", default="lolaray-store")
    parser.add_argument("--mlflow-uri", default=None)
    parser.add_argument("--parent-run-id", default=None)
    parser.add_argument("--address", default=None)
    add_guidance_arguments(parser, what="guide a diffusion emulator")
    add_scoring_arguments(parser)
    args = parser.parse_args(argv)
    try:
        guidance = guidance_from_args(args)
        scoring = scoring_from_args(args)
    except ValueError as error:
        parser.error(str(error))

    from lolaray.platform.session import start_ray

    start_ray(args.address)
    artifact = evaluate(
        _artifact_from_folder(args.emulator),
        _artifact_from_folder(args.autoencoder) if args.autoencoder else None,
        open_dataset(args.dataset, data_root=args.data_root),
        contexts=args.contexts,
        members=args.members,
        trajectories=args.trajectories,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        actors=args.actors,
        max_batch=args.max_batch,
        actor_gpus=args.actor_gpus,
        store=args.store,
        mlflow_uri=args.mlflow_uri,
        parent_run_id=args.parent_run_id,
        guidance=guidance,
        **scoring,
    )
    print(f"[lolaray] evaluation {artifact.id} at {artifact.uri}")
    print((Path(artifact.uri) / "table.txt").read_text())
    return artifact


if __name__ == "__main__":
    main()
