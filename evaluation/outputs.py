r"""The outputs of an evaluation: its files and its MLflow metrics.

:func:`write_outputs` writes ``metrics.csv``, ``per_lead.csv``, ``per_field_lead.csv`` (per
field and lead), ``per_trajectory.csv`` (per trajectory, start and context, by horizon),
:data:`BASELINES_FILE` (persistence, PCA and the reconstruction on the same trajectories),
``rank_histogram.csv``, ``summary.json``, ``table.txt``, the snapshot excerpt
:data:`SNAPSHOT_FILE`, :data:`ANIMATION_FILE` (truth, ensemble mean, members; one frame per
state), figure HTML files (plotly.js from its CDN) and one self-contained ``report.html``
(plotly.js inlined once, the GIF inlined, opens offline). :func:`log_mlflow` logs the files
and the metrics, under uniform names (``vrmse/lead_1-20``, ``crps/lead_1-20``,
``coverage_90/lead_1-20``, ``psrmse/high/lead_1-20``, ``context_1/…``, ``relative/…``,
``recon_vrmse``, ``baseline/persistence/vrmse/lead_1-20``, ``baseline/pca/vrmse/…``,
``infer_ms_per_state``, ``sampler_steps``), to the evaluation's MLflow run.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric

from lolaray.evaluation import figures, report, tables
from lolaray.evaluation.aggregation import DEFAULT_SCORED_FIELD, METRICS
from lolaray.evaluation.animation import animation_html, write_rollout_animation
from lolaray.evaluation.rollout import lead_times

__all__ = ["ANIMATION_FILE", "BASELINES_FILE", "SNAPSHOT_FILE", "log_mlflow", "write_outputs"]

#: Evaluation artifact file with a few snapshots of member 0 and the truth (see ``_snapshot_excerpt``).
SNAPSHOT_FILE = "snapshot.npz"
#: Evaluation artifact file: per scored trajectory and start, the VRMSE by horizon of the
#: baselines (``persistence``, ``pca`` of the latent's size) and of the reconstruction
#: (``autoencoder``), on the same scored set as the model.
BASELINES_FILE = "baselines.csv"
#: Evaluation artifact file: truth, ensemble mean and a few members of trajectory 0 over the rollout.
ANIMATION_FILE = "rollout.gif"


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
    for baseline in ("persistence", "pca"):
        for horizon, value in (summary.get(f"{baseline}_vrmse_by_horizon") or {}).items():
            if value is not None and math.isfinite(value):
                metrics[f"baseline/{baseline}/vrmse/{horizon}"] = value
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


def write_outputs(
    folder: Path,
    summary: dict,
    rows: list[dict],
    per_lead: list[dict],
    data: dict,
    *,
    method: str,
    rate: float,
) -> list[Path]:
    """Writes an evaluation's files into ``folder``, and returns their paths.

    :param summary, rows, per_lead, data: :func:`~lolaray.evaluation.aggregation.analyse`'s
        summary (with the stage's ``config``), per-horizon rows, per-lead rows and figures' data.
    :param method, rate: the method label and compression rate shown in figures and titles.
    """
    folder = Path(folder)
    _write_csv(folder / "metrics.csv", rows)
    _write_csv(folder / "per_lead.csv", per_lead)
    _write_csv(folder / "per_field_lead.csv", data.get("per_field", []))
    _write_csv(folder / "per_trajectory.csv", data.get("per_trajectory", []))
    _write_csv(folder / BASELINES_FILE, data.get("baselines", []))
    _write_csv(folder / "rank_histogram.csv", data.get("rank_histogram", []))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    table_rows = [r for r in rows if r["reference"] == "absolute" and r["context"] == "all"]
    metric_tables = [
        tables.metric_table(table_rows, metric=m, columns=summary["horizons"])
        for m in METRICS
        if m not in ("spread", "skill")  # their ratio stands for them in the text table
    ]
    (folder / "table.txt").write_text(
        "\n\n".join(f"## {t.metric}\n\n{t.to_text()}" for t in metric_tables) + "\n"
    )

    absolute = [r for r in per_lead if r["reference"] == "absolute"]
    plots = {
        "vrmse_vs_lead": figures.metric_vs_lead_figure(absolute, metric="vrmse", title="VRMSE vs lead time"),
        "spread_skill_vs_lead": figures.spread_skill_figure(absolute),
        "crps_vs_lead": figures.metric_vs_lead_figure(
            absolute, metric="crps", title="Fair CRPS vs lead time"
        ),
    }
    if summary["config"]["members"] > 1:
        plots["coverage_vs_lead"] = figures.coverage_figure(absolute)
        ranks = [r for r in data.get("rank_histogram", []) if r["reference"] == "absolute"]
        plots["rank_histogram"] = figures.rank_histogram_figure(ranks)
    spectra = data["spectra"]
    names = list(data["field_names"])
    scored = summary["config"].get("wasserstein_field", DEFAULT_SCORED_FIELD)
    field = names.index(scored) if scored in names else 0
    if spectra["truth"]:
        emulated = {f"{method} ÷{tables.format_compression(rate)}": np.mean(spectra["emulated"], 0)[field]}
        if spectra["truth_ae"]:
            emulated["autoencoder D(E(x))"] = np.mean(spectra["truth_ae"], 0)[field]
        plots["power_spectra"] = figures.power_spectrum_figure(
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
        plots["snapshots"] = figures.snapshot_grid_figure(
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
            BASELINES_FILE,
            "rank_histogram.csv",
            "summary.json",
            "table.txt",
        )
    ]
    files += [folder / SNAPSHOT_FILE] if (folder / SNAPSHOT_FILE).exists() else []
    files += [animation] if animation is not None else []
    for name, fig in plots.items():
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
        report.Section("Tables (absolute, averaged over contexts)", metric_tables),
        report.Section("Figures", list(plots.values())),
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
            f"Evaluation: {method} ÷{tables.format_compression(rate)}",
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


def log_mlflow(client, run_id: str, summary: dict, files: list[Path]) -> None:
    """Logs the summary's metrics (uniform names, finite values only) and ``files`` to MLflow run ``run_id``."""

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in _mlflow_metrics(summary).items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for path in files:
        client.log_artifact(run_id, str(path))
