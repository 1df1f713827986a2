r"""A study's results per scored unit, and its tables with bootstrap intervals.

Each evaluation writes its metrics per scored unit — a test trajectory and start state —
by horizon (``per_trajectory.csv``: the model, per context length and reference;
``baselines.csv``: persistence, PCA of the latent's size and the reconstruction). The study
turns them into long-format rows, one per (method, ÷, reference, context, unit, horizon)
(:func:`study_unit_rows`), from which :func:`interval_table` tabulates each cell as its
mean over units with a paired bootstrap interval and the median beside it, so a reader sees
at once whether two cells differ by more than the scored set's noise — and one collapsing
trajectory cannot decide a table unseen (the median does not follow it).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lolaray.evaluation import tables
from lolaray.evaluation.bootstrap import DEFAULT_LEVEL, bootstrap_means

__all__ = ["IntervalTable", "interval_table", "long_unit_rows", "study_unit_rows"]

_UNIT_KEYS = ("method", "compression", "reference", "context", "trajectory", "start")


def long_unit_rows(rows: Iterable[Mapping], horizons: Sequence[str], *, steps=None) -> list[dict]:
    """Per-trajectory rows (``vrmse/lead_1-20`` columns) as long rows (``horizon``, ``vrmse``),
    with each unit's mean over the context lengths added as context ``"all"`` (per method,
    ÷ and reference), as Table 6 averages them.

    :param steps: the evaluation's sampler steps (``None`` for solvers), kept as ``steps``.
    """
    long, by_unit = [], {}
    for row in rows:
        keys = {k: row.get(k) for k in _UNIT_KEYS}
        if tables.finite_or_none(keys["compression"]) is None:  # persistence: no model, no ÷
            keys["compression"] = "-"
        for horizon in horizons:
            values = {
                metric: row.get(f"{metric}/{horizon}")
                for metric in ("vrmse", "spread_skill")
                if tables.finite_or_none(row.get(f"{metric}/{horizon}")) is not None
            }
            if not values:
                continue
            long.append({**keys, "horizon": horizon, "steps": "-" if steps is None else steps, **values})
            if keys["context"] != "all":
                slot = by_unit.setdefault((*(keys[k] for k in _UNIT_KEYS if k != "context"), horizon), {})
                for metric, value in values.items():
                    slot.setdefault(metric, []).append(float(value))
    for (method, rate, reference, trajectory, start, horizon), values in by_unit.items():
        long.append(
            {
                "method": method,
                "compression": rate,
                "reference": reference,
                "context": "all",
                "trajectory": trajectory,
                "start": start,
                "horizon": horizon,
                "steps": "-" if steps is None else steps,
                **{metric: float(np.mean(v)) for metric, v in values.items()},
            }
        )
    return long


def study_unit_rows(evaluations: Sequence, horizons: Sequence[str]) -> list[dict]:
    """Every evaluation's per-unit rows, long (:func:`long_unit_rows`), the baselines' and
    reconstructions' once each (evaluations of one autoencoder share them). Each row's
    ``replicate`` is its evaluation's seed (``--seeds``: replicate ``i`` of a chain is seeded
    ``S + i`` in every stage)."""
    rows, seen = [], set()
    for e in evaluations:
        replicate = e.summary.get("config", {}).get("seed", 0)
        rows += [
            {**r, "replicate": replicate}
            for r in long_unit_rows(e.per_trajectory or [], horizons, steps=e.steps)
        ]
        for row in long_unit_rows(e.baselines or [], horizons):
            key = (
                row["method"],
                str(row["compression"]),
                replicate,
                row["trajectory"],
                row["start"],
                row["horizon"],
            )
            if key not in seen:
                seen.add(key)
                rows.append({**row, "replicate": replicate})
    return rows


@dataclass(frozen=True)
class IntervalTable:
    """A metric per (method, ÷) × horizon: mean over units, its bootstrap interval, the median.

    :ivar rows: ``(key values, [(mean, low, high, median, units, seed_sd) per column])``;
        ``seed_sd`` is the standard deviation over the replicates' means (NaN with one).
    """

    metric: str
    row_keys: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple
    level: float = DEFAULT_LEVEL

    def to_csv(self) -> str:
        """One line per cell: keys, horizon, mean, low, high, median, units."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*self.row_keys, "horizon", "mean", "low", "high", "median", "units", "seed_sd"])
        for keys, cells in self.rows:
            for column, cell in zip(self.columns, cells):
                writer.writerow([*keys, column, *(f"{v:.6g}" for v in cell[:4]), cell[4], f"{cell[5]:.6g}"])
        return buffer.getvalue()

    def _body(self) -> tuple[list[str], list[list[str]]]:
        header = [tables.HEADERS.get(k, k) for k in self.row_keys] + [
            tables.horizon_title(c) for c in self.columns
        ]
        body = []
        for keys, cells in self.rows:
            texts = []
            for mean, low, high, median, _, seed_sd in cells:
                if not np.isfinite(mean):
                    texts.append("—")
                    continue
                text = f"{mean:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite(low) else f"{mean:.3f}"
                text += f" med {median:.3f}"
                texts.append(text + (f" ±{seed_sd:.3f} seeds" if np.isfinite(seed_sd) else ""))
            body.append(
                [
                    tables.format_compression(v) if k == "compression" else str(v)
                    for k, v in zip(self.row_keys, keys)
                ]
                + texts
            )
        return header, body

    def to_text(self) -> str:
        """An aligned pipe table: ``mean [low, high] med median`` per cell."""
        header, body = self._body()
        widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        units = sorted({c[4] for _, cells in self.rows for c in cells})
        note = (
            f"mean over {'/'.join(map(str, units))} scored units [{self.level:.0%} paired bootstrap interval], "
            "median; ±: standard deviation over seeds (--seeds)"
        )
        return "\n".join([line(header), rule, *(line(r) for r in body), "", note])

    def to_html(self, *, caption: str | None = None) -> str:
        """An HTML table of the same cells."""
        header, body = self._body()
        parts = ['<table class="metric-table">']
        if caption:
            parts.append(f"<caption>{html.escape(caption)}</caption>")
        parts.append(
            "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
        )
        for r in body:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        parts.append("</tbody></table>")
        return "".join(parts)

    def __str__(self) -> str:
        return self.to_text()


def interval_table(
    rows: Iterable[Mapping],
    *,
    metric: str = "vrmse",
    reference: str = "absolute",
    horizons: Sequence[str],
    order: Sequence[str] = (),
    methods: Sequence[str] | None = None,
    seed: int = 0,
) -> IntervalTable:
    """Per (method, ÷), context ``all``: each horizon's mean over units, its bootstrap
    interval (:func:`~lolaray.evaluation.bootstrap.bootstrap_means`) and the median — a
    unit's value the mean over its replicates — and the spread of the replicates' means.

    :param methods: the methods to keep (default: all).
    :param order: the methods' row order (others follow, by first appearance).
    """
    # (method, ÷) -> horizon -> unit -> replicate -> value
    cells: dict[tuple, dict[str, dict[tuple, dict]]] = {}
    for row in rows:
        if row.get("reference", "absolute") != reference or row.get("context", "all") != "all":
            continue
        if methods is not None and row["method"] not in methods:
            continue
        value = tables.finite_or_none(row.get(metric))
        if value is None:
            continue
        unit = (row.get("trajectory"), row.get("start"))
        by_unit = cells.setdefault((row["method"], row["compression"]), {}).setdefault(row["horizon"], {})
        by_unit.setdefault(unit, {})[row.get("replicate", 0)] = value
    rank = {m: i for i, m in enumerate(order)}
    first = {key[0]: i for i, key in reversed(list(enumerate(cells)))}
    ordered = sorted(
        cells,
        key=lambda k: (rank.get(k[0], len(rank) + first[k[0]]), tables.natural_sort_key(k[1])),
    )
    table_rows = []
    for key in ordered:
        out = []
        for horizon in horizons:
            by_unit = cells[key].get(horizon, {})
            if not by_unit:
                out.append((np.nan, np.nan, np.nan, np.nan, 0, np.nan))
                continue
            values = np.asarray([np.mean(list(r.values())) for r in by_unit.values()])
            interval = bootstrap_means([values], lambda m: m, seed=seed)
            replicates = sorted({rep for r in by_unit.values() for rep in r}, key=str)
            seed_means = [np.mean([r[rep] for r in by_unit.values() if rep in r]) for rep in replicates]
            seed_sd = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else np.nan
            out.append(
                (
                    float(interval.estimate),
                    float(interval.low),
                    float(interval.high),
                    float(np.median(values)),
                    values.size,
                    seed_sd,
                )
            )
        table_rows.append((key, tuple(out)))
    return IntervalTable(metric, ("method", "compression"), tuple(horizons), tuple(table_rows))
