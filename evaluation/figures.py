r"""Plotly figures of an evaluation or a study.

Each function returns a :class:`plotly.graph_objects.Figure`: a metric against lead time
(:func:`metric_vs_lead_figure`, :func:`spread_skill_figure`), the ensemble's interval
coverage and rank histogram (:func:`coverage_figure`, :func:`rank_histogram_figure`), the
reconstruction error against the compression rate (:func:`reconstruction_figure`), power
spectra (:func:`power_spectrum_figure`) and emulated snapshots beside the ground truth
(:func:`snapshot_grid_figure`, as the paper's Figure 4). Rows are the long-format dicts of
:mod:`~lolaray.evaluation.tables`, e.g. ``{"method": "diffusion", "compression": 80,
"lead": 12, "vrmse": 0.05}``; a method keeps its line dash and a rate its colour in every
figure of a report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lolaray.evaluation.tables import (
    as_array,
    finite_or_none,
    format_compression,
    horizon_sort_key,
    horizon_title,
    nan_mean,
    natural_sort_key,
)

__all__ = [
    "coverage_figure",
    "metric_vs_lead_figure",
    "power_spectrum_figure",
    "rank_histogram_figure",
    "reconstruction_figure",
    "snapshot_grid_figure",
    "spread_skill_figure",
]

#: Line dashes per method in the lead-time figures (the paper: solid diffusion, dashed solver).
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")

#: Colours per compression rate, shared by every figure of a report.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


# ----------------------------------------------------------------------------- figures


def _curves(
    rows: Iterable[Mapping[str, Any]], *, metric: str, x_key: str, series_keys: Sequence[str]
) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    # (series key values) -> (sorted x, mean metric at each x).
    acc: dict[tuple, dict[float, list]] = {}
    for row in rows:
        if metric not in row or x_key not in row:
            continue
        key = tuple(row.get(k) for k in series_keys)
        acc.setdefault(key, {}).setdefault(float(row[x_key]), []).append(row[metric])
    curves = {}
    for key, by_x in acc.items():
        xs = sorted(by_x)
        curves[key] = (np.asarray(xs), np.asarray([nan_mean(by_x[x]) for x in xs]))
    return curves


def _style_maps(curves: Mapping[tuple, Any]) -> tuple[dict, dict]:
    methods = list(dict.fromkeys(k[0] for k in curves))
    rates = sorted({k[1] for k in curves}, key=natural_sort_key)
    dash = {m: _DASHES[i % len(_DASHES)] for i, m in enumerate(methods)}
    colour = {r: _COLOURS[i % len(_COLOURS)] for i, r in enumerate(rates)}
    return dash, colour


def _layout(fig: go.Figure, *, title: str | None, x: str, y: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        template="plotly_white",
        legend={"title": None},
        margin={"l": 60, "r": 20, "t": 60 if title else 30, "b": 50},
    )
    return fig


def metric_vs_lead_figure(
    rows: Iterable[Mapping[str, Any]],
    *,
    metric: str = "vrmse",
    lead_key: str = "lead",
    title: str | None = None,
    y_title: str | None = None,
    log_y: bool = False,
    min_lead: float = 1,
) -> go.Figure:
    r"""A metric against lead time, one line per (method, compression rate): colour =
    compression rate, dash = method (as the paper's Figure 5).

    Arguments:
        rows: Dicts with ``method``, ``compression``, the lead time and the metric
            (averaged over repeated keys).
        metric: The metric to plot.
        lead_key: The lead-time key (simulation steps).
        title, y_title: Figure and y-axis titles.
        log_y: A logarithmic y axis.
        min_lead: Leads below are dropped (the paper drops lead 0, the initial state).
    """

    rows = [r for r in rows if finite_or_none(r.get(lead_key)) is not None and float(r[lead_key]) >= min_lead]
    curves = _curves(rows, metric=metric, x_key=lead_key, series_keys=("method", "compression"))
    dash, colour = _style_maps(curves)

    fig = go.Figure()
    for (method, rate), (x, y) in sorted(
        curves.items(), key=lambda kv: (natural_sort_key(kv[0][1]), str(kv[0][0]))
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=f"{method} ÷{format_compression(rate)}",
                line={"color": colour[rate], "dash": dash[method]},
                marker={"size": 4},
            )
        )
    _layout(fig, title=title, x="lead time (simulation steps)", y=y_title or metric)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def spread_skill_figure(
    rows: Iterable[Mapping[str, Any]],
    *,
    metric: str = "spread_skill",
    lead_key: str = "lead",
    title: str | None = "Spread-skill ratio",
) -> go.Figure:
    r"""The spread-skill ratio against lead time per (method, compression rate), with
    the ideal ratio 1 as a reference line (a calibrated ensemble has spread ≈ skill)."""

    fig = metric_vs_lead_figure(rows, metric=metric, lead_key=lead_key, title=title, y_title="spread / skill")
    fig.add_hline(y=1.0, line={"color": "black", "width": 1, "dash": "dot"}, annotation_text="ideal")
    return fig


def coverage_figure(
    rows: Iterable[Mapping[str, Any]],
    *,
    lead_key: str = "lead",
    levels: Sequence[float] = (0.5, 0.9),
    title: str | None = "Coverage of the central intervals",
) -> go.Figure:
    r"""Coverage of the ensembles' central 50 % and 90 % intervals against lead time per
    (method, compression rate), solid for 50 %, dashed for 90 %, with the nominal
    fractions as reference lines: below them the ensemble is over-confident."""

    rows = [r for r in rows if finite_or_none(r.get(lead_key)) is not None and float(r[lead_key]) >= 1]
    fig = go.Figure()
    rates = sorted({r.get("compression") for r in rows}, key=natural_sort_key)
    colour = {rate: _COLOURS[i % len(_COLOURS)] for i, rate in enumerate(rates)}
    for level, dash in zip(levels, _DASHES, strict=False):
        name = f"coverage_{round(100 * level)}"
        curves = _curves(rows, metric=name, x_key=lead_key, series_keys=("method", "compression"))
        for (method, rate), (x, y) in sorted(
            curves.items(), key=lambda kv: (natural_sort_key(kv[0][1]), str(kv[0][0]))
        ):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=f"{method} ÷{format_compression(rate)} ({round(100 * level)} %)",
                    line={"color": colour[rate], "dash": dash},
                    marker={"size": 4},
                )
            )
        fig.add_hline(
            y=level, line={"color": "black", "width": 1, "dash": "dot"}, annotation_text=f"{level:.0%}"
        )
    _layout(fig, title=title, x="lead time (simulation steps)", y="fraction of points covered")
    fig.update_yaxes(range=[0, 1])
    return fig


def rank_histogram_figure(
    rows: Iterable[Mapping[str, Any]],
    *,
    series_key: str = "horizon",
    title: str | None = "Rank histogram of the truth among the members",
) -> go.Figure:
    r"""Rank histograms, one bar series per ``series_key`` value (e.g. per horizon): the
    frequency of each rank :math:`0..K` times :math:`K + 1`, so a calibrated ensemble is flat
    at 1, an over-confident one U-shaped, an under-confident one dome-shaped.

    Arguments:
        rows: Dicts with ``rank``, ``count`` and ``series_key`` (counts are summed over
            repeated keys: fields, contexts, trajectories).
    """

    totals: dict[Any, dict[int, float]] = {}
    for row in rows:
        by_rank = totals.setdefault(row[series_key], {})
        by_rank[int(row["rank"])] = by_rank.get(int(row["rank"]), 0.0) + float(row["count"])
    fig = go.Figure()
    for name in sorted(totals, key=horizon_sort_key if series_key == "horizon" else natural_sort_key):
        ranks = sorted(totals[name])
        counts = np.asarray([totals[name][r] for r in ranks])
        frequency = counts / max(counts.sum(), 1.0) * len(ranks)
        label = horizon_title(name) if series_key == "horizon" else str(name)
        fig.add_trace(go.Bar(x=ranks, y=frequency, name=label))
    fig.add_hline(y=1.0, line={"color": "black", "width": 1, "dash": "dot"}, annotation_text="flat")
    _layout(fig, title=title, x="rank of the truth (members below it)", y="frequency × (K + 1)")
    fig.update_layout(barmode="group")
    return fig


def reconstruction_figure(
    rows: Iterable[Mapping[str, Any]],
    *,
    metric: str = "vrmse",
    compression_key: str = "compression",
    horizon_key: str = "horizon",
    title: str | None = "Autoencoder reconstruction error",
) -> go.Figure:
    r"""Reconstruction error against the compression rate (log axis), one line per
    horizon (the paper's Figure 3: the error grows with the compression rate).

    Arguments:
        rows: Dicts with the compression rate, the horizon label and the metric.
        metric: The metric (e.g. ``"vrmse"`` of :math:`D(E(x))` against :math:`x`).
        compression_key, horizon_key: Their keys.
        title: The figure title.
    """

    curves = _curves(rows, metric=metric, x_key=compression_key, series_keys=(horizon_key,))
    fig = go.Figure()
    for (label,), (x, y) in sorted(curves.items(), key=lambda kv: horizon_sort_key(kv[0][0])):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"lead {horizon_title(label)}"))
    rates = sorted({float(v) for _, (x, _) in curves.items() for v in x})
    _layout(fig, title=title, x="compression rate ÷", y=metric)
    fig.update_xaxes(type="log", tickvals=rates, ticktext=[format_compression(r) for r in rates])
    return fig


def power_spectrum_figure(
    wavenumbers: Any,
    truth: Any | None,
    emulated: Mapping[str, Any],
    *,
    title: str | None = "Isotropic power spectrum",
) -> go.Figure:
    r"""Isotropic power spectra on log-log axes: the ground truth (black) and each
    emulator (or reconstruction).

    Arguments:
        wavenumbers: The radial wavenumbers :math:`k` :math:`(N_k,)` (cycles per pixel).
        truth: The true spectrum :math:`(N_k,)`, or ``None``.
        emulated: Label → spectrum :math:`(N_k,)` (e.g. the ensemble-mean spectrum).
        title: The figure title.
    """

    k = as_array(wavenumbers).reshape(-1)
    fig = go.Figure()
    series = ([("ground truth", truth)] if truth is not None else []) + list(emulated.items())
    for i, (label, spectrum) in enumerate(series):
        p = as_array(spectrum).reshape(-1)
        if p.shape != k.shape:
            raise ValueError(f"spectrum {label!r} has {p.size} values for {k.size} wavenumbers")
        # Log axes: drop the non-positive entries rather than let them break the scale.
        keep = (k > 0) & (p > 0)
        is_truth = truth is not None and i == 0
        fig.add_trace(
            go.Scatter(
                x=k[keep],
                y=p[keep],
                mode="lines",
                name=label,
                # The truth is thick and listed first but drawn last, so it stays visible.
                line={"color": "black", "width": 2.5} if is_truth else {"width": 1.5},
                legendrank=1 if is_truth else 1000 + i,
            )
        )
    if truth is not None:
        fig.data = (*fig.data[1:], fig.data[0])
    _layout(fig, title=title, x="wavenumber |k| (cycles / pixel)", y="power")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def snapshot_grid_figure(
    truth: Any,
    emulated: Mapping[str, Any],
    *,
    leads: Sequence[float],
    columns: Sequence[int] | None = None,
    field: str = "",
    colorscale: str = "RdBu_r",
    max_size: int = 128,
    title: str | None = None,
) -> go.Figure:
    r"""Emulated snapshots beside the ground truth at a few lead times (the paper's
    Figure 4): one row per trajectory (ground truth first), one column per lead time,
    all on the colour scale of the ground truth.

    Arguments:
        truth: One field of the true trajectory :math:`(T, H, W)`.
        emulated: Label → the same field of an emulated trajectory :math:`(T, H, W)`
            (e.g. one ensemble member, or a reconstruction).
        leads: The lead time of each of the :math:`T` states (:func:`lead_times`).
        columns: The time indices shown (default: 4 evenly spaced states with lead ≥ 0).
        field: The field name (colour-bar title).
        colorscale: A plotly colour scale.
        max_size: Larger images are strided down to at most this many pixels per axis
            (keeps the HTML small; the report is for looking, not measuring).
        title: The figure title.
    """

    truth = as_array(truth)
    if truth.ndim != 3:
        raise ValueError(f"truth must be one field over time (T, H, W), got shape {truth.shape}")
    panels = {"ground truth": truth}
    for label, x in emulated.items():
        x = as_array(x)
        if x.shape != truth.shape:
            raise ValueError(f"{label!r} has shape {x.shape}, the ground truth {truth.shape}")
        panels[label] = x
    leads = list(leads)
    if len(leads) != truth.shape[0]:
        raise ValueError(f"{len(leads)} lead times for {truth.shape[0]} states")

    if columns is None:
        valid = [t for t, lead in enumerate(leads) if lead >= 0]
        picks = np.linspace(0, len(valid) - 1, num=min(4, len(valid)))
        columns = list(dict.fromkeys(valid[round(float(p))] for p in picks))
    columns = list(columns)

    stride = max(1, math.ceil(max(truth.shape[1:]) / max_size))
    finite = truth[np.isfinite(truth)]
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)

    fig = make_subplots(
        rows=len(panels),
        cols=len(columns),
        row_titles=list(panels),
        column_titles=[f"lead {leads[t]:g}" for t in columns],
        horizontal_spacing=0.01,
        vertical_spacing=0.02,
    )
    for i, (_label, x) in enumerate(panels.items()):
        for j, t in enumerate(columns):
            fig.add_trace(
                go.Heatmap(
                    z=x[t, ::stride, ::stride],
                    zmin=zmin,
                    zmax=zmax,
                    colorscale=colorscale,
                    showscale=(i == 0 and j == 0),
                    colorbar={"title": {"text": field}} if field else None,
                ),
                row=i + 1,
                col=j + 1,
            )
    # Image orientation (row 0 on top), square pixels, no ticks.
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, autorange="reversed", constrain="domain")
    for r in range(len(panels)):
        for c in range(len(columns)):
            n = r * len(columns) + c + 1
            fig.update_yaxes(scaleanchor=f"x{'' if n == 1 else n}", row=r + 1, col=c + 1)
    fig.update_layout(
        title=title,
        height=max(260, 170 * len(panels) + 80),
        template="plotly_white",
        margin={"l": 20, "r": 20, "t": 70 if title else 40, "b": 20},
    )
    return fig
