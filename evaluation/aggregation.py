r"""Combining the rollout actors' statistics into the evaluation's metrics (the driver side).

The member blocks of each (trajectory, start, context) are combined in float64 in a fixed
order (:func:`_combine`), so the numbers do not depend on the number of actors; every metric
comes from :mod:`~lolaray.evaluation.metrics` per field and lead time
(:func:`_per_field_lead`), is averaged over fields (:func:`_field_mean`) and aggregated by
horizons, per context and over contexts (:func:`analyse`). :func:`rollout_truths` gives the
truths the split ensembles are scored against. Also the metric names (:data:`METRICS`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lolaray.evaluation.baselines import persistence_vrmse
from lolaray.evaluation.ensemble_statistics import EnsembleStatistics
from lolaray.evaluation.metrics import VRMSE_EPS, aggregate_by_horizon, horizon_slices
from lolaray.evaluation.rollout import lead_times, rollout_origin
from lolaray.evaluation.spectra import isotropic_power_spectrum
from lolaray.platform.data import DatasetInfo

__all__ = [
    "DEFAULT_SCORED_FIELD",
    "ENSEMBLE_METRICS",
    "METRICS",
    "REFERENCES",
    "analyse",
    "primary_key",
    "rollout_truths",
]

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
    "field_wasserstein",
    "crps",
    "coverage_50",
    "coverage_90",
)
#: The probabilistic scores (:func:`~lolaray.evaluation.metrics.ensemble_scores`) among :data:`METRICS`.
ENSEMBLE_METRICS = ("crps", "coverage_50", "coverage_90")
#: The references the metrics are taken against: the truth :math:`x` and, for latent
#: emulators, the auto-encoded truth :math:`D(E(x))`.
REFERENCES = ("absolute", "relative")
#: The field whose distribution is scored on its own — its sliced EMD (``semd``, 2-D) and its
#: 1-D Wasserstein distance (``field_wasserstein``) — when the dataset's spec names none:
#: Euler's density (paper Table 11). Rayleigh–Bénard's spec names ``velocity_y`` (Table 12).
DEFAULT_SCORED_FIELD = "density"


def _per_field_lead(
    sums: dict,
    truth: torch.Tensor,
    scores: dict,
    *,
    kind: str,
    spatial_dims: int,
    vrmse_eps: float,
    scored_field: int | None = None,
) -> dict[str, torch.Tensor]:
    """Metrics per lead time and field, ``metric → (L, C)`` (``semd`` and ``field_wasserstein``
    → ``(L,)``, of the one scored field), of one (trajectory, origin, context) against one
    reference.

    :param sums: :func:`_combine`'s statistics, the ``reference``'s distribution sums under
        ``"distances"``.
    :param truth: ``(C, L, *spatial)`` physical truth from the rollout's first state on.
    :param scores: that reference's :func:`~lolaray.evaluation.metrics.ensemble_scores`.
    :param scored_field: the channel of the field scored on its own (``None``: none).
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
    if scored_field is not None:
        out["field_wasserstein"] = out["wasserstein"][:, scored_field]
    if "semd" in sums["distances"]:
        out["semd"] = torch.from_numpy(sums["distances"]["semd"]) / k
    return out


def _field_mean(per_field: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Mean over fields of :func:`_per_field_lead`: ``metric → (L,)`` (the paper's convention;
    the one-field metrics as they are)."""
    return {name: (v if v.ndim == 1 else v.mean(dim=-1)).numpy() for name, v in per_field.items()}


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


def rollout_truths(
    results: dict, *, indices: list[int], starts: list[int], contexts: list[int], stride: int
) -> dict[tuple[int, int, int], dict[str, np.ndarray]]:
    """``(trajectory, origin, context) → reference → (L, C, *spatial)`` physical truth from
    each rollout's first state on, from the trajectories' primary results (the origin of
    start ``s`` and context ``c``: :func:`~lolaray.evaluation.rollout.rollout_origin`)."""
    truths = {}
    for t in indices:
        primary = results[primary_key(t, starts, contexts, stride)]
        full = {"absolute": primary["truth"]}
        if "truth_ae" in primary:
            full["relative"] = primary["truth_ae"]
        for s in starts:
            for c in contexts:
                origin = rollout_origin(s, c, stride)
                truths[(t, origin, c)] = {ref: np.moveaxis(u[:, origin:], 1, 0) for ref, u in full.items()}
    return truths


def _unit_row(method: str, rate: float, trajectory: int, start: int) -> dict:
    """The keys of a baseline's (or the reconstruction's) per-trajectory row: the truth is its
    reference, and it has no context length ("all")."""
    return {
        "method": method,
        "compression": rate,
        "reference": "absolute",
        "context": "all",
        "trajectory": trajectory,
        "start": start,
    }


def primary_key(
    trajectory: int, starts: list[int], contexts: list[int], stride: int
) -> tuple[int, int, int, int]:
    """The results key ``(trajectory, origin, context, first member)`` of a trajectory's
    primary item (first start, first context, first block), which also returns its truth."""
    return (trajectory, rollout_origin(starts[0], contexts[0], stride), contexts[0], 0)


def analyse(
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
    scored_field: str | None = None,
) -> tuple[dict, list[dict], list[dict], dict]:
    """Combines the actors' statistics in a fixed order (trajectory, start, context, block)
    into the summary, the per-horizon rows, the per-lead rows and the figures' data (which
    also holds the per-(field, lead) and per-trajectory tables and the rank histograms).
    ``split_scores``: the ensemble scores of split ensembles, by (trajectory, start, context);
    ``scored_field``: the field whose distribution is scored on its own (``None``: none)."""
    spatial_dims = info.n_spatial_dims
    field_names = list(info.field_names)
    scored = None if scored_field is None else field_names.index(scored_field)
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
    # Baselines and reconstruction per scored unit (trajectory, start), for the study's
    # bootstrap intervals: rows like the per-trajectory rows, method "persistence" / "autoencoder"
    # (``baselines.csv``; the evaluation adds "pca").
    unit_rows: list[dict] = []
    persistence_by_horizon: dict[str, list[float]] = {}
    snapshot = None
    for t in indices:
        primary = results[primary_key(t, starts, contexts, stride)]
        truth = torch.from_numpy(primary["truth"])
        full_truths = {"absolute": truth}
        if latent:
            full_truths["relative"] = torch.from_numpy(primary["truth_ae"])
            per_state = torch.from_numpy(np.asarray(primary["recon_vrmse"])).double().mean(-1)  # (T,)
            recon.append(float(per_state.mean()))
            # The paper's Table 6 "autoencoder" rows: reconstruction error by the state's
            # lead time from the initial state (state i of the trajectory has lead i).
            recon_row = _unit_row("autoencoder", rate, t, 0)
            for label, value in aggregate_by_horizon(
                per_state, torch.arange(per_state.numel()), horizons
            ).items():
                recon_by_horizon.setdefault(label, []).append(float(value))
                recon_row[f"vrmse/{label}"] = float(value)
            unit_rows.append(recon_row)
        for s in starts:
            # Persistence does not depend on the context length: every context length's
            # rollout starts from the same initial state s (rollout_origin).
            origin = rollout_origin(s, contexts[0], stride)
            rollout_truth = truth[:, origin:]
            leads = lead_times(rollout_truth.shape[1], contexts[0], stride)
            persisted = persistence_vrmse(rollout_truth, leads, spatial_dims=spatial_dims, eps=vrmse_eps)
            persistence_row = _unit_row("persistence", "-", t, s)  # no model, no ÷
            for label, value in aggregate_by_horizon(persisted, leads, horizons).items():
                persistence_by_horizon.setdefault(label, []).append(float(value))
                persistence_row[f"vrmse/{label}"] = float(value)
            unit_rows.append(persistence_row)
        for s in starts:
            for c in contexts:
                origin = rollout_origin(s, c, stride)
                truths = {ref: u[:, origin:] for ref, u in full_truths.items()}
                length = truths["absolute"].shape[1]
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
                    if ref == "absolute" and c == contexts[0] and s == starts[0]:
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
                        scored_field=scored,
                    )
                    metrics = _field_mean(fields)
                    slot = by_horizon.setdefault((ref, c), {})
                    trajectory_row = {
                        "method": method,
                        "compression": rate,
                        "reference": ref,
                        "context": c,
                        "trajectory": t,
                        "start": s,
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
                                if value.ndim == 2:  # per field (not the one scored field's)
                                    cell.setdefault(name, []).append(float(value[i, f]))
        key = primary_key(t, starts, contexts, stride)
        snapshot_item = results.get(key, {})
        if "member0" in snapshot_item and snapshot is None:
            snapshot = {
                "truth": primary["truth"][:, key[1] :],
                "member0": snapshot_item["member0"],
                "animated": snapshot_item["animated"],
                "mean": _combine([results[(*key[:3], b.start)] for b in blocks], "absolute")["moments"]
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
        "persistence_vrmse_by_horizon": {k: _nanmean(v) for k, v in persistence_by_horizon.items()},
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
        "baselines": unit_rows,
        "rank_histogram": rank_rows,
        "spectra": spectra,
        "snapshot": snapshot,
        "stride": stride,
        "field_names": info.field_names,
    }
    return summary, rows, per_lead_rows, figures_data
