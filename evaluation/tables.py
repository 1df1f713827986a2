r"""Metric tables of an evaluation or a study, as in the paper's Table 6.

:func:`metric_table` averages long-format metric rows into the paper's layout (methods ×
compression rates down, lead-time horizons across) and a :class:`MetricTable` renders it
as CSV, as an aligned text table and as an HTML table. :func:`horizon_title` and
:func:`format_compression` are the labels every table and figure shares.

Rows are plain dicts, e.g. ``{"method": "diffusion", "compression": 80, "horizon":
"lead_1-20", "vrmse": 0.07}``; repeated keys (several trajectories, fields or context
lengths) are averaged, NaN and missing values ignored.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "HEADERS",
    "MetricTable",
    "as_array",
    "finite_or_none",
    "format_compression",
    "horizon_sort_key",
    "horizon_title",
    "metric_table",
    "nan_mean",
    "natural_sort_key",
]

#: Column headers shown instead of row keys (the paper writes the compression rate ÷).
HEADERS = {"method": "method", "compression": "÷"}

# -------------------------------------------------------------------------- utilities


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, not a number, NaN or infinite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def nan_mean(values: Iterable[Any]) -> float:
    """The mean of the finite values (:func:`finite_or_none`); NaN when there are none."""
    kept = [v for v in (finite_or_none(x) for x in values) if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


def natural_sort_key(value: Any) -> tuple:
    """Numbers sort numerically and before strings (``"80" < "320" < "1280" < "pixel"``)."""
    v = finite_or_none(value)
    return (0, v, "") if v is not None else (1, 0.0, str(value))


def horizon_sort_key(label: str) -> tuple:
    """``"lead_21-60"`` sorts by 21; labels without a number come after the others."""
    match = re.search(r"(-?\d+)", str(label))
    return (0, int(match.group(1))) if match else (1, 0)


def horizon_title(label: str) -> str:
    """``"lead_21-60"`` → ``"21:60"`` (the paper's column titles); other labels unchanged."""

    match = re.fullmatch(r"lead_(-?\d+)-(-?\d+)", str(label))
    return f"{match.group(1)}:{match.group(2)}" if match else str(label)


def format_compression(value: Any) -> str:
    """``80.0`` → ``"80"``, ``1`` → ``"1 (pixel)"`` (a pixel-space model), strings unchanged."""

    v = finite_or_none(value)
    if v is None:
        return str(value)
    text = str(int(v)) if v == int(v) else f"{v:.3g}"
    return f"{text} (pixel)" if v == 1 else text


def _format_key(key: str, value: Any) -> str:
    return format_compression(value) if key == "compression" else str(value)


def as_array(x: Any) -> np.ndarray:
    """A numpy array of a tensor (any device, with or without grad), a list or an array."""
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
        columns = sorted(seen_columns, key=lambda c: (horizon_sort_key(c), seen_columns.index(c)))
    columns = tuple(str(c) for c in columns)

    rank = {v: i for i, v in enumerate(order)} if order is not None else {}

    def sort_key(key: tuple) -> tuple:
        head = (0, rank[key[0]]) if key[0] in rank else (1, first_seen[key[0]])
        return (head, *(natural_sort_key(v) for v in key[1:]))

    table_rows, counts = [], []
    for key in sorted(groups, key=sort_key):
        cells = groups[key]
        table_rows.append((key, tuple(nan_mean(cells.get(c, ())) for c in columns)))
        counts.append(tuple(sum(finite_or_none(v) is not None for v in cells.get(c, ())) for c in columns))

    return MetricTable(
        metric=metric, row_keys=row_keys, columns=columns, rows=tuple(table_rows), counts=tuple(counts)
    )
