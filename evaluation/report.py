r"""Tables, plotly figures and a self-contained HTML report of an evaluation.

* :func:`metric_table` averages long-format metric rows into the layout of the paper's
  Table 6 (methods × compression rates down, lead-time horizons across) and renders it
  as CSV, as an aligned text table and as an HTML table.
* The figure functions return :class:`plotly.graph_objects.Figure` objects: a metric
  against lead time (:func:`metric_vs_lead_figure`, :func:`spread_skill_figure`), the
  reconstruction error against the compression rate (:func:`reconstruction_figure`),
  power spectra (:func:`power_spectrum_figure`) and emulated snapshots beside the ground
  truth (:func:`snapshot_grid_figure`, as the paper's Figure 4).
* :func:`write_html_report` writes one HTML file holding headings, tables and figures,
  with plotly.js inlined once: it opens offline (no CDN) and can be logged as a single
  MLflow artifact.

Rows are plain dicts, e.g. ``{"method": "diffusion", "compression": 80, "horizon":
"lead_1-20", "vrmse": 0.07}`` or ``{"method": "diffusion", "compression": 80, "lead":
12, "vrmse": 0.05}``; repeated keys (several trajectories, fields or context lengths)
are averaged, NaN and missing values ignored.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

__all__ = [
    "MetricTable",
    "RawHTML",
    "Section",
    "coverage_figure",
    "format_compression",
    "horizon_title",
    "metric_table",
    "metric_vs_lead_figure",
    "power_spectrum_figure",
    "rank_histogram_figure",
    "reconstruction_figure",
    "snapshot_grid_figure",
    "spread_skill_figure",
    "write_figure_html",
    "write_html_report",
]

#: Column headers shown instead of row keys (the paper writes the compression rate ÷).
HEADERS = {"method": "method", "compression": "÷"}

#: Line dashes per method in the lead-time figures (the paper: solid diffusion, dashed solver).
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")

#: Colours per compression rate, shared by every figure of a report.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


# -------------------------------------------------------------------------- utilities


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _mean(values: Iterable[Any]) -> float:
    kept = [v for v in (_finite(x) for x in values) if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


def _natural_key(value: Any) -> tuple:
    # Numbers sort numerically and before strings ("80" < "320" < "1280" < "pixel").
    v = _finite(value)
    return (0, v, "") if v is not None else (1, 0.0, str(value))


def _horizon_key(label: str) -> tuple:
    # "lead_21-60" sorts by 21; unparsable labels keep their order after the others.
    match = re.search(r"(-?\d+)", str(label))
    return (0, int(match.group(1))) if match else (1, 0)


def horizon_title(label: str) -> str:
    """``"lead_21-60"`` → ``"21:60"`` (the paper's column titles); other labels unchanged."""

    match = re.fullmatch(r"lead_(-?\d+)-(-?\d+)", str(label))
    return f"{match.group(1)}:{match.group(2)}" if match else str(label)


def format_compression(value: Any) -> str:
    """``80.0`` → ``"80"``, ``1`` → ``"1 (pixel)"`` (a pixel-space model), strings unchanged."""

    v = _finite(value)
    if v is None:
        return str(value)
    text = str(int(v)) if v == int(v) else f"{v:.3g}"
    return f"{text} (pixel)" if v == 1 else text


def _format_key(key: str, value: Any) -> str:
    return format_compression(value) if key == "compression" else str(value)


def _array(x: Any) -> np.ndarray:
    # Tensors (any device, with or without grad), lists and arrays alike.
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class MetricTable:
    r"""A metric averaged per (row key values) × column, e.g. methods × compression
    rates down and lead-time horizons across (paper Table 6).

    Attributes:
        metric: The metric name (e.g. ``"vrmse"``).
        row_keys: The names of the row keys (e.g. ``("method", "compression")``).
        columns: The column labels (e.g. ``("lead_1-20", "lead_21-60", "lead_61-100")``).
        rows: One ``(key values, cell values)`` pair per table row; a cell is NaN when no
            input row had a finite value for it.
        counts: The number of finite values averaged into each cell (same layout).
    """

    metric: str
    row_keys: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple[tuple[tuple[Any, ...], tuple[float, ...]], ...]
    counts: tuple[tuple[int, ...], ...] = field(default=())

    def cell(self, *keys: Any, column: str) -> float:
        """Returns the value at the row with the given key values and the column."""

        j = self.columns.index(column)
        for values, cells in self.rows:
            if tuple(str(v) for v in values) == tuple(str(k) for k in keys):
                return cells[j]
        raise KeyError(f"no row {keys!r} in the {self.metric} table")

    def to_csv(self, *, digits: int = 6) -> str:
        """CSV with the raw key values and column labels; empty cells for NaN."""

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*self.row_keys, *self.columns])
        for values, cells in self.rows:
            writer.writerow([*values, *("" if math.isnan(c) else f"{c:.{digits}g}" for c in cells)])
        return buffer.getvalue()

    def _display(self, digits: int) -> tuple[list[str], list[list[str]]]:
        header = [HEADERS.get(k, k) for k in self.row_keys] + [horizon_title(c) for c in self.columns]
        body = [
            [_format_key(k, v) for k, v in zip(self.row_keys, values)]
            + ["—" if math.isnan(c) else f"{c:.{digits}f}" for c in cells]
            for values, cells in self.rows
        ]
        return header, body

    def to_text(self, *, digits: int = 3) -> str:
        """An aligned pipe table (valid Markdown), in the layout of paper-tables.md."""

        header, body = self._display(digits)
        widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]
        n_keys = len(self.row_keys)

        def line(cells: Sequence[str]) -> str:
            # Keys left-aligned, numbers right-aligned (decimal points line up).
            padded = [c.ljust(w) if j < n_keys else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))]
            return "| " + " | ".join(padded) + " |"

        rule = "|" + "|".join(
            ("-" * (w + 1) + ":") if j >= n_keys else "-" * (w + 2) for j, w in enumerate(widths)
        )
        return "\n".join([line(header), rule + "|", *(line(r) for r in body)])

    def to_html(self, *, digits: int = 3, caption: str | None = None) -> str:
        """An HTML ``<table>`` (escaped), with an optional caption."""

        header, body = self._display(digits)
        n_keys = len(self.row_keys)
        parts = ['<table class="metric-table">']
        if caption:
            parts.append(f"<caption>{html.escape(caption)}</caption>")
        parts.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>")
        parts.append("<tbody>")
        for r in body:
            cells = [
                f'<td class="{"key" if j < n_keys else "num"}">{html.escape(c)}</td>' for j, c in enumerate(r)
            ]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
        return "".join(parts)

    def __str__(self) -> str:
        return self.to_text()


def metric_table(
    rows: Iterable[Mapping[str, Any]],
    *,
    metric: str = "vrmse",
    row_keys: Sequence[str] = ("method", "compression"),
    column_key: str = "horizon",
    columns: Sequence[str] | None = None,
    order: Sequence[Any] | None = None,
) -> MetricTable:
    r"""Averages long-format rows into a table (paper Table 6 layout).

    .. code-block:: text

        | method        | ÷         |  1:20 | 21:60 | 61:100 |
        | diffusion     | 80        | 0.075 | 0.199 |  0.395 |

    Arguments:
        rows: Dicts holding the row keys, the column key and the metric; rows without
            the metric, or with a non-finite value, are ignored; repeated keys averaged.
        metric: The metric to tabulate.
        row_keys: The keys that identify a table row.
        column_key: The key whose values become the columns (default: the horizon).
        columns: The columns, in order (default: those present, by the first number in
            their label, e.g. ``lead_1-20`` before ``lead_21-60``).
        order: The order of the first row key's values (default: first appearance;
            values not listed follow). Later row keys sort naturally (numbers
            numerically).

    Returns:
        The :class:`MetricTable`; ``print(table)`` shows the text layout,
        ``table.to_csv()`` gives the CSV.
    """

    row_keys = tuple(row_keys)
    if not row_keys:
        raise ValueError("need at least one row key")

    groups: dict[tuple, dict[str, list]] = {}
    seen_columns: list[str] = []
    first_seen: dict[Any, int] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (*row_keys, column_key) if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks the key(s) {missing}: {dict(row)!r}")
        if metric not in row:
            continue
        key = tuple(row[k] for k in row_keys)
        column = str(row[column_key])
        if column not in seen_columns:
            seen_columns.append(column)
        first_seen.setdefault(key[0], len(first_seen))
        groups.setdefault(key, {}).setdefault(column, []).append(row[metric])

    if columns is None:
        columns = sorted(seen_columns, key=lambda c: (_horizon_key(c), seen_columns.index(c)))
    columns = tuple(str(c) for c in columns)

    rank = {v: i for i, v in enumerate(order)} if order is not None else {}

    def sort_key(key: tuple) -> tuple:
        head = (0, rank[key[0]]) if key[0] in rank else (1, first_seen[key[0]])
        return (head, *(_natural_key(v) for v in key[1:]))

    table_rows, counts = [], []
    for key in sorted(groups, key=sort_key):
        cells = groups[key]
        table_rows.append((key, tuple(_mean(cells.get(c, ())) for c in columns)))
        counts.append(tuple(sum(_finite(v) is not None for v in cells.get(c, ())) for c in columns))

    return MetricTable(
        metric=metric, row_keys=row_keys, columns=columns, rows=tuple(table_rows), counts=tuple(counts)
    )


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
        curves[key] = (np.asarray(xs), np.asarray([_mean(by_x[x]) for x in xs]))
    return curves


def _style_maps(curves: Mapping[tuple, Any]) -> tuple[dict, dict]:
    methods = list(dict.fromkeys(k[0] for k in curves))
    rates = sorted({k[1] for k in curves}, key=_natural_key)
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

    rows = [r for r in rows if _finite(r.get(lead_key)) is not None and float(r[lead_key]) >= min_lead]
    curves = _curves(rows, metric=metric, x_key=lead_key, series_keys=("method", "compression"))
    dash, colour = _style_maps(curves)

    fig = go.Figure()
    for (method, rate), (x, y) in sorted(
        curves.items(), key=lambda kv: (_natural_key(kv[0][1]), str(kv[0][0]))
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

    rows = [r for r in rows if _finite(r.get(lead_key)) is not None and float(r[lead_key]) >= 1]
    fig = go.Figure()
    rates = sorted({r.get("compression") for r in rows}, key=_natural_key)
    colour = {rate: _COLOURS[i % len(_COLOURS)] for i, rate in enumerate(rates)}
    for level, dash in zip(levels, _DASHES, strict=False):
        name = f"coverage_{round(100 * level)}"
        curves = _curves(rows, metric=name, x_key=lead_key, series_keys=("method", "compression"))
        for (method, rate), (x, y) in sorted(
            curves.items(), key=lambda kv: (_natural_key(kv[0][1]), str(kv[0][0]))
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
    for name in sorted(totals, key=_horizon_key if series_key == "horizon" else _natural_key):
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
    for (label,), (x, y) in sorted(curves.items(), key=lambda kv: _horizon_key(kv[0][0])):
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

    k = _array(wavenumbers).reshape(-1)
    fig = go.Figure()
    series = ([("ground truth", truth)] if truth is not None else []) + list(emulated.items())
    for i, (label, spectrum) in enumerate(series):
        p = _array(spectrum).reshape(-1)
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

    truth = _array(truth)
    if truth.ndim != 3:
        raise ValueError(f"truth must be one field over time (T, H, W), got shape {truth.shape}")
    panels = {"ground truth": truth}
    for label, x in emulated.items():
        x = _array(x)
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


# ------------------------------------------------------------------------------ report


class RawHTML(str):
    """A snippet of HTML inserted into a report as is (not escaped)."""


@dataclass
class Section:
    """A report section: a heading and its items, in order.

    Items: a ``str`` (a paragraph, escaped), a :class:`RawHTML` snippet, a
    :class:`MetricTable` (an HTML table captioned with its metric) or a plotly figure.
    """

    heading: str
    items: Sequence[Any] = ()


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #eee; }
nav ul { columns: 2; }
table.metric-table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
table.metric-table caption { text-align: left; font-weight: 600; padding: .3rem 0; }
table.metric-table th, table.metric-table td { border: 1px solid #ccc; padding: .25rem .6rem; }
table.metric-table th { background: #f4f4f4; }
table.metric-table td.num { text-align: right; }
.figure { margin: 1rem 0; }
"""


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _figure_div(fig: go.Figure, *, div_id: str, include_plotlyjs: bool) -> str:
    height = fig.layout.height or 450
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=include_plotlyjs,
        include_mathjax=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


def _atomic_write(path: Path, text: str) -> None:
    # Write beside the target, then rename: a reader never sees a half-written report.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp creates the file 0600; a report is meant to be read by others.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_html_report(
    path: str | os.PathLike,
    title: str,
    sections: Sequence[Section | tuple[str, Sequence[Any]]],
    *,
    description: str | None = None,
) -> Path:
    r"""Writes one self-contained HTML report: a title, a table of contents, then each
    section's heading and items (paragraphs, tables, figures).

    plotly.js is inlined once, before the first figure, and every later figure reuses
    it, so the file opens without network access (no CDN) and stays one artifact.

    Arguments:
        path: The output file (written atomically; parent folders are created).
        title: The report title.
        sections: :class:`Section` objects or ``(heading, items)`` pairs.
        description: An optional introductory paragraph.

    Returns:
        The path written.
    """

    path = Path(path)
    used: set[str] = set()
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if description:
        body.append(f"<p>{html.escape(description)}</p>")

    sections = [s if isinstance(s, Section) else Section(*s) for s in sections]
    anchors = [_slug(s.heading, used) for s in sections]
    if sections:
        links = "".join(
            f'<li><a href="#{a}">{html.escape(s.heading)}</a></li>' for s, a in zip(sections, anchors)
        )
        body.append(f"<nav><ul>{links}</ul></nav>")

    figures = 0
    for section, anchor in zip(sections, anchors):
        body.append(f'<h2 id="{anchor}">{html.escape(section.heading)}</h2>')
        for item in section.items:
            if isinstance(item, go.Figure):
                div = _figure_div(item, div_id=f"figure-{figures}", include_plotlyjs=figures == 0)
                body.append(f'<div class="figure">{div}</div>')
                figures += 1
            elif isinstance(item, MetricTable):
                body.append(item.to_html(caption=item.metric))
            elif isinstance(item, RawHTML):
                body.append(str(item))
            elif isinstance(item, str):
                body.append(f"<p>{html.escape(item)}</p>")
            else:
                raise TypeError(
                    f"section {section.heading!r}: cannot render an item of type {type(item).__name__} "
                    "(expected str, RawHTML, MetricTable or plotly Figure)"
                )

    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    _atomic_write(path, document)
    return path


def write_figure_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Writes one figure as a self-contained HTML file (plotly.js inlined; an MLflow
    figure artifact)."""

    path = Path(path)
    _atomic_write(path, pio.to_html(fig, full_html=True, include_plotlyjs=True, include_mathjax=False))
    return path
