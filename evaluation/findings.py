r"""The paper's six findings, tested on a study's own numbers.

Every study ends with a findings table: for each finding of ``reference/paper-tables.md``,
the figures of this run that bear on it and a verdict computed from them — never written
by hand. :func:`assess_findings` is a pure function of the study's long-format result rows
(the rows :mod:`lolaray.evaluation.study` tabulates); :mod:`lolaray.evaluation.findings_table`
writes the table out (CSV, text, HTML, MLflow):

* ``{"method": "autoencoder", "compression": 80, "horizon": "lead_1-20", "vrmse": 0.011}``
  — reconstruction error by lead-time horizon (Table 6's autoencoder rows);
* ``{"method": "diffusion", "compression": 80, "context": "all", "horizon": "lead_1-20",
  "vrmse": 0.075, "spread_skill": 0.95}`` — emulation error averaged over the context
  lengths (Table 6);
* the same with an integer ``context`` (and optionally ``steps``) — one context length
  (Table 7).

A missing ``context`` means ``"all"``. Repeated keys are averaged exactly as in the study's
tables (:func:`~lolaray.evaluation.tables.metric_table`). Methods are the study's labels:
``autoencoder``, ``diffusion`` and ``solver`` (latent space, ÷ > 1) and ``pixel solver``;
other rows (``guided diffusion``, ...) bear on no finding and are ignored.

The tests, with :math:`h_1` the first horizon, :math:`h_n` the last, and a relative range
:math:`(\max - \min) / \min` taken over the values compared:

1. *Reconstruction error grows clearly with the compression rate* — autoencoders at two
   rates or more; at every horizon the reconstruction VRMSE rises strictly from each rate
   to the next, and at the highest rate it is at least :data:`CLEAR_GROWTH` times that at
   the lowest. (The paper: ×2.2 to ×7.6 from the lowest to the highest ÷, all datasets.)
2. *Diffusion emulation error barely moves with the compression rate* — latent diffusion
   at two rates or more; at every horizon the relative range of its VRMSE over the rates
   is at most :data:`BARELY_MOVES_RATE`. (The paper: at most 0.44, TGC 1:10; Euler 0.33.)
   The reconstruction error's range is shown beside it for contrast.
3. *Diffusion emulators beat neural solvers at every rate, most at long lead times* — the
   rates with both a latent diffusion and a latent solver; at every such rate and horizon
   the diffusion VRMSE is below the solver's, and the gap (solver − diffusion) at
   :math:`h_n` is the largest of that rate's gaps. (The paper: true at every rate of the
   three datasets.)
4. *Latent emulators match or beat the pixel-space neural solver* — a pixel solver and at
   least one latent emulator; every latent emulator (diffusion and solver, every rate),
   at every horizon, has a VRMSE at most :math:`1 +` :data:`MATCH_TOLERANCE` times the
   pixel solver's. (The paper, Euler: ratios 0.36–0.99.)
5. *Diffusion ensembles have spread-skill ratios near 1 (slightly lower at high ÷)* —
   latent diffusion with spread-skill ratios; at every rate and horizon the ratio lies in
   :data:`SPREAD_SKILL_BAND` (the band issue 15 sets for the default study). Whether the
   mean ratio at the highest ÷ is below that at the lowest (the parenthesis) is reported
   in the figures, not tested: the paper calls it slight.
6. *Context length (1–3) barely changes accuracy (Table 7)* — latent diffusion or solver
   evaluated at two context lengths or more (per ÷ and sampler steps); for each, at every
   horizon, the relative range of its VRMSE over the context lengths is at most
   :data:`BARELY_MOVES_CONTEXT`. (The paper: at most 0.17, Euler solver 1:20.)

A finding whose data the run lacks (one rate only, no pixel baseline, one context length)
is ``not measured``. A broken run must not "show" a finding by accident — an emulator that
learned nothing has a VRMSE that barely moves with anything — so a finding is ``shown``
only if every model it speaks about also beats the spatial mean of the truth over
:math:`h_1` (VRMSE below :data:`LEARNED_VRMSE`; predicting the spatial mean scores
:math:`\approx 1`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lolaray.evaluation import tables

__all__ = [
    "BARELY_MOVES_CONTEXT",
    "BARELY_MOVES_RATE",
    "CLEAR_GROWTH",
    "FINDINGS",
    "LEARNED_VRMSE",
    "MATCH_TOLERANCE",
    "NOT_MEASURED",
    "NOT_SHOWN",
    "SHOWN",
    "SPREAD_SKILL_BAND",
    "Finding",
    "assess_findings",
]

SHOWN, NOT_SHOWN, NOT_MEASURED = "shown", "not shown", "not measured"

#: Finding 1: the least ratio of reconstruction VRMSE, highest ÷ over lowest ÷, at every horizon.
CLEAR_GROWTH = 1.5
#: Finding 2: the largest relative range of diffusion VRMSE over the compression rates.
BARELY_MOVES_RATE = 0.5
#: Finding 4: how much worse than the pixel solver a latent emulator may be and still "match".
MATCH_TOLERANCE = 0.05
#: Finding 5: the spread-skill ratios counted as "near 1".
SPREAD_SKILL_BAND = (0.5, 1.5)
#: Finding 6: the largest relative range of VRMSE over the context lengths.
BARELY_MOVES_CONTEXT = 0.25
#: A model "learned" if its VRMSE over the first horizon is below this (the spatial mean's ≈ 1).
LEARNED_VRMSE = 1.0

#: The paper's six findings (``reference/paper-tables.md``), in its words.
FINDINGS = {
    1: "Reconstruction error grows clearly with the compression rate.",
    2: "Diffusion emulation error barely moves with the compression rate.",
    3: "Diffusion emulators beat neural solvers at every rate, most at long lead times.",
    4: "Latent emulators match or beat the pixel-space neural solver.",
    5: "Diffusion ensembles have spread-skill ratios near 1 (slightly lower at high ÷).",
    6: "Context length (1–3) barely changes accuracy (Table 7).",
}

_TESTS = {
    1: f"at every horizon, recon. VRMSE rises strictly with ÷ and by ≥ ×{CLEAR_GROWTH:g} lowest→highest ÷",
    2: f"at every horizon, diffusion VRMSE (max − min)/min over ÷ ≤ {BARELY_MOVES_RATE:.0%}",
    3: "at every ÷ and horizon, diffusion VRMSE < solver VRMSE, the gap largest at the last horizon",
    4: f"every latent emulator, ÷ and horizon: VRMSE ≤ {1 + MATCH_TOLERANCE:g} × the pixel solver's",
    5: f"every ÷ and horizon: diffusion spread-skill in [{SPREAD_SKILL_BAND[0]:g}, {SPREAD_SKILL_BAND[1]:g}]",
    6: f"every latent emulator and horizon: VRMSE (max − min)/min over contexts ≤ {BARELY_MOVES_CONTEXT:.0%}",
}

AUTOENCODER, DIFFUSION, SOLVER, PIXEL_SOLVER = "autoencoder", "diffusion", "solver", "pixel solver"
_METHODS = (AUTOENCODER, DIFFUSION, SOLVER, PIXEL_SOLVER)


@dataclass(frozen=True)
class Finding:
    """One row of the findings table.

    :ivar number: 1–6, as in ``paper-tables.md``.
    :ivar statement: the paper's finding.
    :ivar test: the criterion applied to this run.
    :ivar figures: this run's numbers that bear on it.
    :ivar verdict: :data:`SHOWN`, :data:`NOT_SHOWN` or :data:`NOT_MEASURED`.
    :ivar why: what decided the verdict (the first failing comparison, the missing data).
    """

    number: int
    statement: str
    test: str
    figures: str
    verdict: str
    why: str


# ----------------------------------------------------------------------------- helpers

# (method, compression) -> one value per horizon; NaN where the run has no value.
_Cells = dict[tuple[str, float], tuple[float, ...]]


def _cells(table: tables.MetricTable) -> _Cells:
    return {(str(keys[0]), float(keys[1])): cells for keys, cells in table.rows}


def _complete(cells: _Cells, method: str, *, latent: bool | None = None) -> dict[float, tuple[float, ...]]:
    """Rate → values of ``method``, for the rows with a value at every horizon, by rate."""
    found = {
        rate: values
        for (m, rate), values in cells.items()
        if m == method and all(math.isfinite(v) for v in values) and (latent is None or (rate > 1) == latent)
    }
    return dict(sorted(found.items()))


def _relative_range(values: Sequence[float]) -> float:
    low = min(values)
    return (max(values) - low) / low if low > 0 else math.inf


def _rate(rate: float) -> str:
    return "÷" + tables.format_compression(rate)


def _rates(rates: Iterable[float]) -> str:
    return "÷" + "/".join(tables.format_compression(r).removesuffix(" (pixel)") for r in rates)


def _values(values: Iterable[float], digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _unlearned(labelled: Mapping[str, tuple[float, ...]]) -> list[str]:
    """The labels whose VRMSE over the first horizon is no better than the spatial mean."""
    return [label for label, values in labelled.items() if not values[0] < LEARNED_VRMSE]


def _finding(number: int, figures: str, verdict: str, why: str) -> Finding:
    return Finding(number, FINDINGS[number], _TESTS[number], figures, verdict, why)


def _judge(number: int, figures: str, failures: list[str], unlearned: list[str], shown: str) -> Finding:
    if failures:
        return _finding(number, figures, NOT_SHOWN, "; ".join(failures))
    if unlearned:
        return _finding(
            number,
            figures,
            NOT_SHOWN,
            f"holds, but {', '.join(unlearned)} no better than the spatial mean "
            f"(VRMSE ≥ {LEARNED_VRMSE:g} over the first horizon)",
        )
    return _finding(number, figures, SHOWN, shown)


# ---------------------------------------------------------------------------- findings


def _reconstruction_grows(vrmse: _Cells, horizons: Sequence[str]) -> Finding:
    recon = _complete(vrmse, AUTOENCODER)
    if len(recon) < 2:
        return _finding(1, "—", NOT_MEASURED, f"autoencoders at {len(recon)} compression rate(s); needs 2")
    rates = list(recon)
    parts, failures = [], []
    for j, horizon in enumerate(horizons):
        column = [recon[r][j] for r in rates]
        growth = column[-1] / column[0] if column[0] > 0 else math.inf
        parts.append(f"{tables.horizon_title(horizon)}: {_values(column)} (×{growth:.1f})")
        falls = [
            f"{_rate(a)}→{_rate(b)}" for a, b, va, vb in zip(rates, rates[1:], column, column[1:]) if vb <= va
        ]
        if falls:
            failures.append(f"does not rise {', '.join(falls)} at {tables.horizon_title(horizon)}")
        elif growth < CLEAR_GROWTH:
            failures.append(f"grows only ×{growth:.2f} at {tables.horizon_title(horizon)}")
    figures = f"recon. VRMSE {_rates(rates)} — " + "; ".join(parts)
    unlearned = _unlearned({f"autoencoder {_rate(r)}": v for r, v in recon.items()})
    return _judge(1, figures, failures, unlearned, "rises with ÷ at every horizon")


def _diffusion_flat_in_rate(vrmse: _Cells, horizons: Sequence[str]) -> Finding:
    diffusion = _complete(vrmse, DIFFUSION, latent=True)
    if len(diffusion) < 2:
        return _finding(
            2, "—", NOT_MEASURED, f"latent diffusion at {len(diffusion)} compression rate(s); needs 2"
        )
    rates = list(diffusion)
    ranges = [_relative_range([diffusion[r][j] for r in rates]) for j in range(len(horizons))]
    figures = f"diffusion VRMSE {_rates(rates)} — " + "; ".join(
        f"{tables.horizon_title(h)}: {_values(diffusion[r][j] for r in rates)} (range {ranges[j]:.0%})"
        for j, h in enumerate(horizons)
    )
    recon = _complete(vrmse, AUTOENCODER)
    if len(recon) >= 2:
        figures += "; recon. range " + ", ".join(
            f"{_relative_range([v[j] for v in recon.values()]):.0%}" for j in range(len(horizons))
        )
    failures = [
        f"moves {r:.0%} at {tables.horizon_title(h)}"
        for h, r in zip(horizons, ranges)
        if not r <= BARELY_MOVES_RATE
    ]
    unlearned = _unlearned({f"diffusion {_rate(r)}": v for r, v in diffusion.items()})
    return _judge(2, figures, failures, unlearned, f"moves ≤ {max(ranges):.0%} over ÷ at every horizon")


def _diffusion_beats_solver(vrmse: _Cells, horizons: Sequence[str]) -> Finding:
    diffusion = _complete(vrmse, DIFFUSION, latent=True)
    solver = _complete(vrmse, SOLVER, latent=True)
    rates = [r for r in diffusion if r in solver]
    if not rates:
        return _finding(3, "—", NOT_MEASURED, "no compression rate with both a latent diffusion and solver")
    parts, failures = [], []
    for rate in rates:
        gaps = [s - d for s, d in zip(solver[rate], diffusion[rate])]
        parts.append(f"{_rate(rate)}: " + ", ".join(f"{g:+.3f}" for g in gaps))
        behind = [tables.horizon_title(h) for h, g in zip(horizons, gaps) if not g > 0]
        if behind:
            failures.append(f"diffusion not below the solver at {_rate(rate)}, {', '.join(behind)}")
        elif gaps[-1] < max(gaps):
            failures.append(f"at {_rate(rate)} the gap is largest before the last horizon")
    figures = "solver − diffusion VRMSE by horizon — " + "; ".join(parts)
    unlearned = _unlearned({f"diffusion {_rate(r)}": diffusion[r] for r in rates})
    return _judge(3, figures, failures, unlearned, "diffusion ahead at every ÷ and horizon, most at the last")


def _latent_matches_pixel(vrmse: _Cells, horizons: Sequence[str]) -> Finding:
    pixel = _complete(vrmse, PIXEL_SOLVER)
    latent = {
        f"{method} {_rate(rate)}": values
        for method in (DIFFUSION, SOLVER)
        for rate, values in _complete(vrmse, method, latent=True).items()
    }
    if not pixel or not latent:
        missing = "no pixel-space solver" if not pixel else "no latent emulator"
        return _finding(4, "—", NOT_MEASURED, missing)
    baseline = next(iter(pixel.values()))
    ratios = {label: [v / b for v, b in zip(values, baseline)] for label, values in latent.items()}
    figures = f"pixel solver VRMSE {_values(baseline)}; latent / pixel — " + "; ".join(
        f"{label}: {_values(r, 2)}" for label, r in ratios.items()
    )
    failures = [
        f"{label} ×{r:.2f} at {tables.horizon_title(h)}"
        for label, values in ratios.items()
        for h, r in zip(horizons, values)
        if not r <= 1 + MATCH_TOLERANCE
    ]
    if failures:
        failures = ["worse than the pixel solver: " + ", ".join(failures)]
    worst = max(max(r) for r in ratios.values())
    return _judge(4, figures, failures, _unlearned(latent), f"worst ratio ×{worst:.2f}")


def _spread_skill_near_one(spread: _Cells, vrmse: _Cells, horizons: Sequence[str]) -> Finding:
    diffusion = _complete(spread, DIFFUSION, latent=True)
    if not diffusion:
        return _finding(5, "—", NOT_MEASURED, "no spread-skill ratio of a latent diffusion ensemble")
    low, high = SPREAD_SKILL_BAND
    figures = "diffusion spread-skill by horizon — " + "; ".join(
        f"{_rate(rate)}: {_values(values, 2)}" for rate, values in diffusion.items()
    )
    if len(diffusion) >= 2:
        rates = list(diffusion)
        first, last = (sum(diffusion[r]) / len(horizons) for r in (rates[0], rates[-1]))
        trend = "lower" if last < first else "not lower"
        figures += (
            f"; mean {_rate(rates[-1])} {last:.2f} vs {_rate(rates[0])} {first:.2f} ({trend} at high ÷)"
        )
    failures = [
        f"{v:.2f} at {_rate(rate)}, {tables.horizon_title(h)}"
        for rate, values in diffusion.items()
        for h, v in zip(horizons, values)
        if not low <= v <= high
    ]
    if failures:
        failures = [f"outside [{low:g}, {high:g}]: " + ", ".join(failures)]
    errors = _complete(vrmse, DIFFUSION, latent=True)
    unlearned = _unlearned({f"diffusion {_rate(r)}": errors[r] for r in diffusion if r in errors})
    return _judge(5, figures, failures, unlearned, f"all in [{low:g}, {high:g}]")


def _context_barely_matters(rows: list[dict], horizons: Sequence[str]) -> Finding:
    per_context = [r for r in rows if r["context"] != "all" and r["method"] in (DIFFUSION, SOLVER)]
    table = tables.metric_table(
        per_context,
        metric="vrmse",
        row_keys=("method", "compression", "steps", "context"),
        columns=horizons,
        order=_METHODS,
    )
    groups: dict[tuple, dict] = {}
    for (method, rate, steps, context), values in table.rows:
        if float(rate) > 1 and all(math.isfinite(v) for v in values):
            groups.setdefault((method, float(rate), steps), {})[context] = values
    groups = {key: by_context for key, by_context in groups.items() if len(by_context) >= 2}
    if not groups:
        return _finding(6, "—", NOT_MEASURED, "no latent emulator evaluated at 2 context lengths or more")
    several_steps = len({steps for _, _, steps in groups}) > 1

    def label(method: str, rate: float, steps) -> str:
        return f"{method} {_rate(rate)}" + (f" ({steps} steps)" if several_steps and steps != "-" else "")

    contexts = sorted({c for by_context in groups.values() for c in by_context}, key=float)
    parts, failures, unlearned = [], [], {}
    for (method, rate, steps), by_context in groups.items():
        name = label(method, rate, steps)
        ranges = [_relative_range([v[j] for v in by_context.values()]) for j in range(len(horizons))]
        parts.append(f"{name}: " + ", ".join(f"{r:.0%}" for r in ranges))
        failures += [
            f"{name} moves {r:.0%} at {tables.horizon_title(h)}"
            for h, r in zip(horizons, ranges)
            if not r <= BARELY_MOVES_CONTEXT
        ]
        unlearned.update({f"{name} c={c}": v for c, v in by_context.items()})
    figures = f"VRMSE range over contexts {', '.join(map(str, contexts))}, by horizon — " + "; ".join(parts)
    return _judge(6, figures, failures, _unlearned(unlearned), "every range within the bound")


# ------------------------------------------------------------------------------- entry


def assess_findings(rows: Iterable[Mapping], *, horizons: Sequence[str] | None = None) -> list[Finding]:
    """Test the paper's six findings on a study's result rows (see the module's docstring).

    :param rows: long-format rows with ``method``, ``compression``, ``horizon``, the
        metrics ``vrmse`` (and ``spread_skill`` for diffusion), optionally ``context``
        (default ``"all"``) and ``steps``.
    :param horizons: the lead-time horizons, in order (default: those present, by start).
    :returns: six :class:`Finding`, numbered 1–6.
    """
    kept = [
        {**row, "context": row.get("context", "all"), "steps": row.get("steps", "-")}
        for row in rows
        if row.get("method") in _METHODS
    ]
    if horizons is None:
        horizons = tables.metric_table(kept, metric="vrmse").columns if kept else ()
    horizons = tuple(horizons)
    if not horizons:
        return [_finding(n, "—", NOT_MEASURED, "no results") for n in FINDINGS]
    overall = [r for r in kept if r["context"] == "all"]
    vrmse = _cells(tables.metric_table(overall, metric="vrmse", columns=horizons, order=_METHODS))
    spread = _cells(tables.metric_table(overall, metric="spread_skill", columns=horizons, order=_METHODS))
    return [
        _reconstruction_grows(vrmse, horizons),
        _diffusion_flat_in_rate(vrmse, horizons),
        _diffusion_beats_solver(vrmse, horizons),
        _latent_matches_pixel(vrmse, horizons),
        _spread_skill_near_one(spread, vrmse, horizons),
        _context_barely_matters(kept, horizons),
    ]
