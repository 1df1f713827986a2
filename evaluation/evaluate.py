r"""Evaluate an emulator on the test split: the stage ``evaluate(emulator, autoencoder, dataset)``.

Reads top to bottom (method.md §7, §8, §11):

1. **Validation** on the driver, before any Ray work (latent emulator without
   autoencoder, mismatched latent shapes, bad context lengths or ensemble sizes).
2. **Work items** ``(trajectory, context c, member block)`` (blocks from
   :func:`~lolaray.evaluation.rollout.split_members`) go through
   ``ray.data.from_items → map_batches(RolloutActor, ActorPoolStrategy)``. An actor loads
   the autoencoder, the emulator and the standardizer once; per item it rolls out its
   block of members from the first ``c`` true states (encoded for latent emulators), member
   ``k`` seeded by (seed, trajectory, 0, k) whatever the split, decodes in chunks, returns
   to physical units, and returns **sufficient statistics** of the block (per-field sums
   :math:`\sum_k v_k`, :math:`\sum_k v_k^2`, :math:`\sum_k` member power spectra, and the
   per-member SEMD / Wasserstein sums against the truth :math:`u = x` and the auto-encoded
   truth :math:`u_{ae} = D(E(x))`), the block size and the rollout wall time (decoding
   included), never the member fields themselves. The "primary" item of each trajectory
   (first context, block of member 0) also returns the truth, :math:`u_{ae}`, the
   autoencoder reconstruction error of every state of the trajectory (computed in the
   actor) and, for the first trajectory, member 0's trajectory (snapshot figure).
3. **Driver**: blocks are summed in float64 in a fixed order (trajectory, context,
   block start), so the numbers do not depend on the number of actors; ensemble mean,
   VRMSE, NRMSE, spread / skill, spectral band errors, SEMD and Wasserstein per lead
   time, aggregated by horizons, per context and over contexts.
4. **Outputs**: ``metrics.csv``, ``per_lead.csv``, ``summary.json``, ``table.txt``,
   figure HTML files (plotly.js from its CDN) and one self-contained ``report.html``
   (plotly.js inlined once, opens offline); an MLflow run with uniform
   metric names (``vrmse/lead_1-20``, ``psrmse/high/lead_1-20``, ``context_1/…``,
   ``recon_vrmse``, ``infer_ms_per_state``).

Neural solvers are deterministic: they are rolled out with one member (all members
would be equal), so their spread and spread-skill ratio are 0 (the notebooks' convention).

Command line::

    python -m lolaray.evaluation.evaluate --emulator <dir> [--autoencoder <dir>] \
        --dataset euler_quadrants:smoke --contexts 1 2 3 --members 16 --trajectories 8 --actors 2
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
from lolaray.evaluation.guidance_options import add_guidance_arguments, guidance_config, guidance_from_args
from lolaray.evaluation.metrics import (
    RATIO_OFFSET,
    SPECTRAL_EPS,
    aggregate_by_horizon,
    band_edges,
    isotropic_power_spectrum,
    nrmse,
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
)
REFERENCES = ("absolute", "relative")
#: The field whose sliced EMD is reported (paper Table 11: Euler density).
SEMD_FIELD = "density"
#: Evaluation artifact file with a few snapshots of member 0 and the truth (see ``_snapshot_excerpt``).
SNAPSHOT_FILE = "snapshot.npz"


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
        self.guidance = guidance
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
        return vrmse(v, u, spatial_dims=self.spatial_dims).numpy()

    def _block(self, trajectory: int, context: int, start: int, stop: int) -> tuple[torch.Tensor, float]:
        """Members ``start..stop-1``: physical fields ``(K, C, L, *spatial)`` float64, seconds."""
        data = self._trajectory(trajectory)
        length = data["strided"].shape[1]
        block = range(start, stop)
        n = len(block)
        began = time.perf_counter()
        if self.autoencoder is not None:
            initial = data["z"][:, :context]
        else:
            initial = data["strided"][:, :context].to(self.device)
        theta = data["theta"].to(self.device)
        step = self.step if self.guidance is None else self._guided_step(trajectory, data, n)
        states = rollout(
            step,
            initial.expand(n, *initial.shape).contiguous(),
            theta.expand(n, *theta.shape).contiguous(),
            window=self.config.window,
            context=context,
            overlap=context,
            length=length,
            generator=member_generators(self.seed, trajectory, 0, block, device="cpu"),
        )
        if self.autoencoder is not None:
            states = decode_in_chunks(self.autoencoder, states, self.chunk)
        members = self.standardizer.inverse(states.double().cpu(), channel_dim=1)
        return members, time.perf_counter() - began

    def _guided_step(self, trajectory: int, data: dict, members: int):
        """The MMPS-guided step of one trajectory: observations of its standardized truth,
        with noise σ_y drawn once per (seed, trajectory) — the same for every member."""
        g = self.guidance
        strided = data["strided"][None].to(self.device)  # (1, C, L, *spatial)
        operator = build_operator(g["operator"], g["factor"], strided.shape[3:])
        observations = observe_states(operator, strided)
        noise_seed = member_seed(self.seed, trajectory, 0, -1)  # member -1: the observation
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
        trajectory, context = int(item["trajectory"]), int(item["context"])
        members, seconds = self._block(trajectory, context, int(item["start"]), int(item["stop"]))
        data = self._trajectory(trajectory)
        _, spectra = isotropic_power_spectrum(members, spatial_dims=self.spatial_dims)
        result: dict[str, Any] = {
            "count": members.shape[0],
            "seconds": seconds,
            "sum_v": members.sum(0).numpy(),
            "sum_v2": members.square().sum(0).numpy(),
            "sum_spectra": spectra.sum(0).numpy(),
            "absolute": self._stats(members, data["truth"]),
        }
        if self.autoencoder is not None:
            result["relative"] = self._stats(members, data["truth_ae"])
        if item["primary"]:
            result["truth"] = data["truth"].numpy()
            if self.autoencoder is not None:
                result["truth_ae"] = data["truth_ae"].numpy()
                result["recon_vrmse"] = self._reconstruction(data["x"])
        if item["snapshot"] and int(item["start"]) == 0:
            result["member0"] = members[0].float().numpy()
        return result

    def __call__(self, batch: dict) -> dict:
        keys, results = [], []
        for i in range(len(batch["trajectory"])):
            item = {k: batch[k][i] for k in batch}
            keys.append(f"{int(item['trajectory'])}/{int(item['context'])}/{int(item['start'])}")
            results.append(pickle.dumps(self.evaluate_item(item)))
        return {"key": np.asarray(keys), "result": np.asarray(results, dtype=object)}


def _run_pipeline(
    items: list[dict], actor_kwargs: dict, *, actors: int, actor_gpus: float | None
) -> dict[tuple[int, int, int], dict]:
    """Runs the work items through the actor pool; ``(trajectory, context, start)`` → stats."""
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
        trajectory, context, start = (int(s) for s in str(row["key"]).split("/"))
        out[(trajectory, context, start)] = pickle.loads(row["result"])
    if len(out) != len(items):
        raise RuntimeError(f"the rollout pipeline returned {len(out)} results for {len(items)} work items")
    return out


# ----------------------------------------------------------------------------- driver


def _per_lead(
    sums: dict, truth: torch.Tensor, *, kind: str, spatial_dims: int, reference: str
) -> dict[str, np.ndarray]:
    """Metrics per lead time (mean over fields) from the combined statistics of one
    (trajectory, context): ``metric → (L,)``."""
    k = sums["count"]
    mean = torch.from_numpy(sums["sum_v"]) / k  # (C, L, ...)
    second = torch.from_numpy(sums["sum_v2"]) / k
    u = truth.movedim(1, 0)  # (L, C, ...)
    v = mean.movedim(1, 0)
    axes = tuple(range(-spatial_dims, 0))
    out = {
        "vrmse": vrmse(v, u, spatial_dims=spatial_dims),
        "nrmse": nrmse(v, u, spatial_dims=spatial_dims),
    }
    skill = (u - v).square().mean(dim=axes).sqrt()
    if k > 1:
        deviation = (second - mean.square()).clamp_min(0).movedim(1, 0).mean(dim=axes)
        spread = ((k + 1) / (k - 1) * deviation).sqrt()
        ratio = (spread + RATIO_OFFSET) / (skill + RATIO_OFFSET)
    else:
        spread = torch.zeros_like(skill)
        ratio = torch.zeros_like(skill)
    if kind == "solver":
        ratio = torch.zeros_like(skill)
    out.update(spread=spread, skill=skill, spread_skill=ratio)

    wavenumbers, p_u = isotropic_power_spectrum(truth, spatial_dims=spatial_dims)  # (C, L, B)
    p_v = torch.from_numpy(sums["sum_spectra"]) / k
    error = (1 - (p_v + SPECTRAL_EPS) / (p_u + SPECTRAL_EPS)).square()
    e0, e1, e2, e3 = band_edges(wavenumbers[0].item())
    for name, (lo, hi) in {"low": (e0, e1), "mid": (e1, e2), "high": (e2, e3)}.items():
        inside = (wavenumbers >= lo) & (wavenumbers <= hi)
        out[f"psrmse_{name}"] = error[..., inside].mean(dim=-1).sqrt().movedim(1, 0)  # (L, C)

    out["wasserstein"] = torch.from_numpy(sums[reference]["wasserstein"]) / k  # (L, C)
    result = {name: value.mean(dim=-1).numpy() for name, value in out.items()}
    if "semd" in sums[reference]:
        result["semd"] = (torch.from_numpy(sums[reference]["semd"]) / k).numpy()
    return result


def _combine(blocks: list[dict]) -> dict:
    """Sums the statistics of the blocks of one (trajectory, context), in the given order (float64)."""
    total: dict[str, Any] = {"count": 0, "seconds": 0.0}
    for b in blocks:
        total["count"] += b["count"]
        total["seconds"] += b["seconds"]
        for name in ("sum_v", "sum_v2", "sum_spectra"):
            total[name] = (
                b[name].astype(np.float64) + total[name] if name in total else b[name].astype(np.float64)
            )
        for ref in REFERENCES:
            if ref not in b:
                continue
            dst = total.setdefault(ref, {})
            for name, value in b[ref].items():
                dst[name] = dst[name] + value if name in dst else value.astype(np.float64)
    return total


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def _method_label(manifest: dict) -> str:
    kind = manifest.get("kind", "emulator")
    return f"pixel {kind}" if manifest.get("space") == "pixel" else kind


def _resolve_trajectories(trajectories: int | Sequence[int], available: int) -> list[int]:
    if isinstance(trajectories, int):
        if trajectories < 1:
            raise ValueError(f"trajectories must be >= 1, got {trajectories}")
        return list(range(min(trajectories, available)))
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
    :param seed, sampler, steps: the sampling (member ``k`` seeded by (seed, trajectory, 0, k)).
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

    if autoencoder is not None:
        from lolaray.trainers.autoencoder_trainer import load_autoencoder

        _, standardizer = load_autoencoder(autoencoder)
    else:
        standardizer = standardizer_for(info)
    test = WellWindows(info, "test", length=None, standardizer=standardizer)
    indices = _resolve_trajectories(trajectories, len(test))
    n_states = test.length
    length = (n_states - 1) // stride + 1
    if length <= max(contexts):
        raise ValueError(
            f"test trajectories give {length} states at stride {stride}: too short for {contexts}"
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
            "context": c,
            "start": b.start,
            "stop": b.stop,
            "primary": c == contexts[0] and b.start == 0,
            "snapshot": t == indices[0] and c == contexts[0],
        }
        for t in indices
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
        params={**config, "actors": actors, "max_batch": max_batch, "dataset": info.name},
    ) as run:
        run_id, client = run.run_id, run.client
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
            },
            actors=actors,
            actor_gpus=actor_gpus,
        )
        # 3. combine in a fixed order
        summary, rows, per_lead_rows, figures_data = _analyse(
            results,
            indices=indices,
            contexts=contexts,
            blocks=blocks,
            kind=kind,
            method=method,
            rate=rate,
            stride=stride,
            horizons=horizons,
            info=info,
            latent=autoencoder is not None,
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


def _actor_gpus(actor_gpus: float | None) -> float:
    if actor_gpus is not None:
        return float(actor_gpus)
    import ray

    if not ray.is_initialized():  # Ray Data will start a local cluster on this machine
        return 1.0 if torch.cuda.is_available() else 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _analyse(
    results: dict,
    *,
    indices: list[int],
    contexts: list[int],
    blocks: list[range],
    kind: str,
    method: str,
    rate: float,
    stride: int,
    horizons: tuple,
    info: DatasetInfo,
    latent: bool,
) -> tuple[dict, list[dict], list[dict], dict]:
    spatial_dims = info.n_spatial_dims
    references = REFERENCES if latent else REFERENCES[:1]
    # (reference, context) -> metric -> horizon -> [value per trajectory]
    by_horizon: dict[tuple[str, int], dict[str, dict[str, list]]] = {}
    per_lead_rows: list[dict] = []
    spectra: dict[str, list] = {"truth": [], "emulated": [], "truth_ae": []}
    seconds, states = 0.0, 0
    recon: list[float] = []
    recon_by_horizon: dict[str, list[float]] = {}
    snapshot = None
    for t in indices:
        primary = results[(t, contexts[0], 0)]
        truth = torch.from_numpy(primary["truth"])
        truths = {"absolute": truth}
        if latent:
            truths["relative"] = torch.from_numpy(primary["truth_ae"])
            per_state = torch.from_numpy(np.asarray(primary["recon_vrmse"])).double().mean(-1)  # (T,)
            recon.append(float(per_state.mean()))
            # The paper's Table 6 "autoencoder" rows: reconstruction error by the state's
            # lead time from the initial state (state i of the trajectory has lead i).
            for label, value in aggregate_by_horizon(
                per_state, torch.arange(per_state.numel()), horizons
            ).items():
                recon_by_horizon.setdefault(label, []).append(float(value))
        for c in contexts:
            sums = _combine([results[(t, c, b.start)] for b in blocks])
            seconds += sums["seconds"]
            length = truth.shape[1]
            states += sums["count"] * length
            leads = lead_times(length, c, stride)
            generated = leads > 0
            if c == contexts[0]:
                k, p_u = isotropic_power_spectrum(truth, spatial_dims=spatial_dims)
                spectra["k"] = k.numpy()
                spectra["truth"].append(p_u[:, generated].mean(1).numpy())
                spectra["emulated"].append(
                    (sums["sum_spectra"] / sums["count"])[:, generated.numpy()].mean(1)
                )
                if latent:
                    _, p_ae = isotropic_power_spectrum(truths["relative"], spatial_dims=spatial_dims)
                    spectra["truth_ae"].append(p_ae[:, generated].mean(1).numpy())
            for ref in references:
                metrics = _per_lead(sums, truths[ref], kind=kind, spatial_dims=spatial_dims, reference=ref)
                slot = by_horizon.setdefault((ref, c), {})
                for name, values in metrics.items():
                    for label, value in aggregate_by_horizon(
                        torch.from_numpy(values), leads, horizons
                    ).items():
                        slot.setdefault(name, {}).setdefault(label, []).append(float(value))
                for i, lead in enumerate(leads.tolist()):
                    if lead <= 0:
                        continue
                    per_lead_rows.append(
                        {
                            "method": method,
                            "compression": rate,
                            "reference": ref,
                            "context": c,
                            "trajectory": t,
                            "lead": lead,
                            **{name: float(v[i]) for name, v in metrics.items()},
                        }
                    )
        if "member0" in results.get((t, contexts[0], 0), {}) and snapshot is None:
            snapshot = {"truth": primary["truth"], "member0": primary["member0"], "context": contexts[0]}

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
        "infer_ms_per_state": 1e3 * seconds / max(states, 1),
        "states_generated": states,
        "metrics": {
            f"{r['reference']}/context_{r['context']}/{name}/{r['horizon']}": r[name]
            for r in rows
            for name in METRICS
        },
    }
    figures_data = {
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
        )
    ]
    (folder / "table.txt").write_text("\n\n".join(f"## {t.metric}\n\n{t.to_text()}" for t in tables) + "\n")

    absolute = [r for r in per_lead if r["reference"] == "absolute"]
    figures = {
        "vrmse_vs_lead": report.metric_vs_lead_figure(absolute, metric="vrmse", title="VRMSE vs lead time"),
        "spread_skill_vs_lead": report.spread_skill_figure(absolute),
    }
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
    files = [folder / "metrics.csv", folder / "per_lead.csv", folder / "summary.json", folder / "table.txt"]
    files += [folder / SNAPSHOT_FILE] if (folder / SNAPSHOT_FILE).exists() else []
    for name, fig in figures.items():
        # plotly.js from its CDN: each inlined copy weighs ~4.8 MB, and report.html already
        # holds every figure with plotly.js inlined once (the offline, self-contained view).
        fig.write_html(folder / f"{name}.html", include_plotlyjs="cdn", include_mathjax=False)
        files.append(folder / f"{name}.html")

    lines = [
        f"time per state: {summary['infer_ms_per_state']:.3f} ms",
        f"autoencoder reconstruction VRMSE: {summary['recon_vrmse']:.4f}"
        if summary.get("recon_vrmse") is not None
        else "pixel-space emulator: no autoencoder",
    ]
    sections = [
        report.Section("Summary", lines),
        report.Section("Tables (absolute, averaged over contexts)", tables),
        report.Section("Figures", list(figures.values())),
    ]
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
    args = parser.parse_args(argv)
    try:
        guidance = guidance_from_args(args)
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
    )
    print(f"[lolaray] evaluation {artifact.id} at {artifact.uri}")
    print((Path(artifact.uri) / "table.txt").read_text())
    return artifact


if __name__ == "__main__":
    main()
