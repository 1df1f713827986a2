"""The study's headline figures, as flat MLflow metrics for the sweep's parent run.

The runs table of ``mlflow ui`` shows a run's metrics as columns; the parent run of a sweep
has no stage of its own, so without these it shows none. Here every evaluation contributes
its overall scores (absolute reference, averaged over contexts) under one name per
(method, compression rate, metric, horizon)::

    diffusion/x64/vrmse/lead_1-20        solver/x64/crps/lead_61-100
    pixel_solver/x1/infer_ms_per_state   diffusion/x64/coverage_90/lead_21-60

and, per method and metric-horizon, the compression rate that scored best
(``best_compression/diffusion/vrmse/lead_61-100``), so the first page answers "which
compression rate won". Metric parts keep the evaluation's shared names
(``psrmse/high``, ``spread_skill``, ...).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlflow.entities import Metric

from lolaray.evaluation.tables import finite_or_none

__all__ = ["HEADLINE_METRICS", "headline_metrics", "log_headline_metrics"]

#: The per-horizon metrics put on the parent run, and whether lower is better.
HEADLINE_METRICS = {
    "vrmse": True,
    "crps": True,
    "spread_skill": None,  # ideal 1: no "best"
    "coverage_90": None,  # ideal 0.9: no "best"
    "psrmse_high": True,
}


def _slug(text: str) -> str:
    """An MLflow-safe name part: letters, digits, ``_``, ``-`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text).strip()) or "unnamed"


def _shared_name(metric: str) -> str:
    return metric.replace("psrmse_", "psrmse/")


def headline_metrics(evaluations: Iterable[Any]) -> dict[str, float]:
    """The headline metrics of the study's evaluations.

    :param evaluations: objects with ``summary`` (an evaluation's ``summary.json``) and
        ``rows`` (its ``metrics.csv`` rows), e.g. :class:`~lolaray.evaluation.study.Evaluation`.
    :returns: metric name → value, finite values only.
    """
    metrics: dict[str, float] = {}
    # (method, metric, horizon) -> [(value, compression rate)]
    candidates: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for evaluation in evaluations:
        summary: Mapping = evaluation.summary
        method, rate = _slug(summary["method"]), float(summary["compression"])
        prefix = f"{method}/x{rate:g}"
        for row in evaluation.rows:
            if row.get("reference") != "absolute" or str(row.get("context")) != "all":
                continue
            for name, lower_is_better in HEADLINE_METRICS.items():
                value = finite_or_none(row.get(name))
                if value is None:
                    continue
                metrics[f"{prefix}/{_shared_name(name)}/{row['horizon']}"] = value
                if lower_is_better:
                    candidates.setdefault((method, name, row["horizon"]), []).append((value, rate))
        for name in ("infer_ms_per_state", "recon_vrmse"):
            if (value := finite_or_none(summary.get(name))) is not None:
                metrics[f"{prefix}/{name}"] = value
    for (method, name, horizon), scored in candidates.items():
        if len({rate for _, rate in scored}) > 1:
            metrics[f"best_compression/{method}/{_shared_name(name)}/{horizon}"] = min(scored)[1]
    return metrics


def log_headline_metrics(client, run_id: str, evaluations: Sequence[Any]) -> dict[str, float]:
    """Log :func:`headline_metrics` on ``run_id`` (batches of 1000, the REST limit); returns them."""

    metrics = headline_metrics(evaluations)
    now = int(time.time() * 1000)
    entries = [Metric(name, value, now, 0) for name, value in metrics.items()]
    for start in range(0, len(entries), 1000):
        client.log_batch(run_id, metrics=entries[start : start + 1000])
    return metrics
