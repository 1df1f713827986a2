r"""The paper's six findings, tested on a study's own numbers, with confidence.

Every study ends with a findings table: for each finding of ``reference/paper-tables.md``,
the figures of this run that bear on it, their bootstrap intervals, and a verdict computed
from them — never written by hand. :func:`assess_findings` is a pure function of the study's
long-format rows **per scored unit** (a test trajectory and start state; the rows
:mod:`lolaray.evaluation.study` reads from each evaluation's ``per_trajectory.csv`` and
``baselines.csv``); :mod:`lolaray.evaluation.findings_table` writes the table out:

* ``{"method": "diffusion", "compression": 80, "context": "all", "horizon": "lead_1-20",
  "trajectory": 3, "start": 0, "reference": "absolute", "vrmse": 0.075, "spread_skill": 0.95}``
  — one unit's emulation error, averaged over the context lengths (Table 6), against the
  truth (``reference`` ``"absolute"``, the default) or against the auto-encoded truth
  :math:`D(E(x))` (``"relative"``);
* the same with an integer ``context`` (and optionally ``steps``) — one context length (Table 7);
* optionally ``replicate`` (the training seed, ``--seeds``): a unit's value is then the mean
  over its replicates;
* ``method`` ``"autoencoder"`` — the reconstruction error of the unit's states by horizon;
  ``"pca"`` — PCA with as many numbers as the latent of that ÷; ``"persistence"`` — the
  initial state repeated (:mod:`lolaray.evaluation.baselines`).

A row without ``trajectory`` is one unit of its own: a table of means has one unit, hence no
interval, and can show nothing. Methods are the study's labels: ``autoencoder``,
``diffusion`` and ``solver`` (latent space, ÷ > 1) and ``pixel solver``; other rows
(``guided diffusion``, ...) bear on no finding.

**Confidence.** Every figure is a statistic of the methods' means over the units scored by
all of them, and its interval is a paired percentile bootstrap over those units
(:func:`~lolaray.evaluation.bootstrap.bootstrap_means`, level :data:`LEVEL`: each end a
one-sided 95 % bound). A finding is ``shown`` only when the **conservative end** of every
interval it rests on clears its threshold; when the means clear it but an interval does not,
the verdict is ``not shown`` and says so. The thresholds, with :math:`h_1` the first horizon
and :math:`h_n` the last, a relative range :math:`(\max - \min)/\min` over the means compared:

1. *Reconstruction error grows clearly with the compression rate* — autoencoders at two
   rates or more; at every horizon each rate's reconstruction VRMSE over the previous rate's
   has its lower end above 1, and the highest rate's over the lowest's has its lower end at
   least :data:`CLEAR_GROWTH`. Why ×2: the paper's smallest growth, lowest to highest ÷, is
   ×2.2 (its Euler rows: ×5.5 to ×7.6), so the paper itself clears it; a lower bound at ×2
   is a growth no trajectory noise makes up.
2. *Diffusion emulation error barely moves with the compression rate* — latent diffusion at
   two rates or more; at every horizon the upper end of the relative range of its VRMSE over
   the rates is at most :data:`BARELY_MOVES_RATE`, and, where autoencoders are scored, at
   most :data:`RANGE_VS_RECONSTRUCTION` of the reconstruction's range. Why: the paper's
   largest range is 0.44 (TGC 1:10; Euler 0.33), while its reconstruction's is 4–7; "barely
   moves" means little beside how much the reconstruction moves.
3. *Diffusion emulators beat neural solvers at every rate, most at long lead times* — the
   rates with both; at every such rate the upper end of diffusion / solver at :math:`h_1` is
   at most :data:`DIFFUSION_AT_FIRST`, and the lower end of solver / diffusion at
   :math:`h_n` is at least :data:`SOLVER_AT_LAST`. Why: the paper's Euler ratios are 0.68–0.97
   at 1:20 (the two are close early) and 1.27–1.48 at 61:100 (the gap opens late).
4. *Latent emulators match or beat the pixel-space neural solver* — every latent emulator
   (diffusion and solver, every rate), at every horizon: the upper end of its VRMSE over
   the pixel solver's is at most :math:`1 +` :data:`MATCH_TOLERANCE`. Why: the paper's
   ratios are 0.36–0.99, all below 1; 5 % leaves room for "match".
5. *Diffusion ensembles have spread-skill ratios near 1 (slightly lower at high ÷)* — latent
   diffusion; at every rate and horizon the interval of the mean spread-skill ratio against
   the auto-encoded truth :math:`D(E(x))` (the paper's Figure 9: an ensemble of latent
   trajectories cannot spread over the autoencoder's own error) lies inside
   :data:`SPREAD_SKILL_BAND`. The ratio against the truth is reported beside it, not tested:
   the autoencoder's deterministic error caps it. Whether the ratio at the highest ÷ is
   below the lowest's (the parenthesis) is reported, not tested: the paper calls it slight.
6. *Context length (1–3) barely changes accuracy (Table 7)* — latent diffusion or solver
   at two context lengths or more (per ÷ and sampler steps); at every horizon the upper end
   of the relative range of VRMSE over the context lengths is at most
   :data:`BARELY_MOVES_CONTEXT`. Why: the paper's largest is 0.17 (Euler solver 1:20).

A finding whose data the run lacks (one rate only, no pixel baseline, one context length)
is ``not measured``.

**Guards.** A broken run must not "show" a finding by accident — an emulator that learned
nothing has a VRMSE that barely moves with anything — so a finding is ``shown`` only if
every model it speaks about has learned, judged on the means (a guard rejects broken runs;
it is not the claim): an emulator when its VRMSE over :math:`h_1` is at most
:data:`EMULATOR_VS_PERSISTENCE` × min(1, persistence's) — persistence scores 1.07–1.22 on the
demo, and the spatial mean is computed from the truth, so "below 1" admitted models that
learned nothing; an autoencoder when its reconstruction VRMSE over :math:`h_1` is at most
:data:`AUTOENCODER_VS_PCA` × that of PCA with as many numbers — a non-linear code no better
than the linear one has learned nothing about compression. Without the baselines' rows
(evaluations from before they existed) the guard is the spatial mean's: VRMSE below
:data:`LEARNED_VRMSE`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lolaray.evaluation import tables
from lolaray.evaluation.bootstrap import DEFAULT_LEVEL, MIN_UNITS, Interval, bootstrap_means

__all__ = [
    "AUTOENCODER_VS_PCA",
    "BARELY_MOVES_CONTEXT",
    "BARELY_MOVES_RATE",
    "CLEAR_GROWTH",
    "DIFFUSION_AT_FIRST",
    "EMULATOR_VS_PERSISTENCE",
    "FINDINGS",
    "LEARNED_VRMSE",
    "LEVEL",
    "MATCH_TOLERANCE",
    "NOT_MEASURED",
    "NOT_SHOWN",
    "RANGE_VS_RECONSTRUCTION",
    "SHOWN",
    "SOLVER_AT_LAST",
    "SPREAD_SKILL_BAND",
    "Finding",
    "UnitCells",
    "assess_findings",
]

SHOWN, NOT_SHOWN, NOT_MEASURED = "shown", "not shown", "not measured"

#: Two-sided level of every interval (each end a one-sided 95 % bound).
LEVEL = DEFAULT_LEVEL
#: Finding 1: the least lower end of reconstruction VRMSE, highest ÷ over lowest ÷.
CLEAR_GROWTH = 2.0
#: Finding 2: the largest upper end of the relative range of diffusion VRMSE over the rates.
BARELY_MOVES_RATE = 0.5
#: Finding 2: the largest upper end of that range over the reconstruction's range.
RANGE_VS_RECONSTRUCTION = 0.25
#: Finding 3: the largest upper end of diffusion / solver VRMSE at the first horizon.
DIFFUSION_AT_FIRST = 1.05
#: Finding 3: the least lower end of solver / diffusion VRMSE at the last horizon.
SOLVER_AT_LAST = 1.1
#: Finding 4: how much worse than the pixel solver a latent emulator may be and still "match".
MATCH_TOLERANCE = 0.05
#: Finding 5: the spread-skill ratios (against D(E(x))) counted as "near 1".
SPREAD_SKILL_BAND = (0.5, 1.5)
#: Finding 6: the largest upper end of the relative range of VRMSE over the context lengths.
BARELY_MOVES_CONTEXT = 0.25
#: Guard: an emulator has learned if its VRMSE over h1 is at most this × min(1, persistence's).
EMULATOR_VS_PERSISTENCE = 0.8
#: Guard: an autoencoder has learned if its VRMSE over h1 is at most this × PCA's of its size.
AUTOENCODER_VS_PCA = 0.9
#: Guard without baselines: the spatial mean's VRMSE (≈ 1).
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

_CI = f"{LEVEL:.0%} interval"
_TESTS = {
    1: f"every horizon: recon. VRMSE ratio to the previous ÷ > 1 and highest/lowest ÷ ≥ ×{CLEAR_GROWTH:g} "
    f"({_CI}'s lower end)",
    2: f"every horizon: diffusion VRMSE (max − min)/min over ÷ ≤ {BARELY_MOVES_RATE:.0%} and ≤ "
    f"{RANGE_VS_RECONSTRUCTION:g} × the reconstruction's ({_CI}'s upper end)",
    3: f"every ÷: diffusion/solver ≤ {DIFFUSION_AT_FIRST:g} at the first horizon (upper end), "
    f"solver/diffusion ≥ {SOLVER_AT_LAST:g} at the last (lower end)",
    4: f"every latent emulator, ÷ and horizon: VRMSE ≤ {1 + MATCH_TOLERANCE:g} × the pixel solver's "
    f"({_CI}'s upper end)",
    5: f"every ÷ and horizon: diffusion spread-skill against D(E(x)) in [{SPREAD_SKILL_BAND[0]:g}, "
    f"{SPREAD_SKILL_BAND[1]:g}] (whole {_CI})",
    6: f"every latent emulator and horizon: VRMSE (max − min)/min over contexts ≤ {BARELY_MOVES_CONTEXT:.0%} "
    f"({_CI}'s upper end)",
}

AUTOENCODER, DIFFUSION, SOLVER, PIXEL_SOLVER = "autoencoder", "diffusion", "solver", "pixel solver"
PCA, PERSISTENCE = "pca", "persistence"
_METHODS = (AUTOENCODER, DIFFUSION, SOLVER, PIXEL_SOLVER, PCA, PERSISTENCE)


@dataclass(frozen=True)
class Finding:
    """One row of the findings table.

    :ivar number: 1–6, as in ``paper-tables.md``.
    :ivar statement: the paper's finding.
    :ivar test: the criterion applied to this run.
    :ivar figures: this run's numbers that bear on it, with their intervals.
    :ivar verdict: :data:`SHOWN`, :data:`NOT_SHOWN` or :data:`NOT_MEASURED`.
    :ivar why: what decided the verdict (the first failing comparison, the missing data).
    """

    number: int
    statement: str
    test: str
    figures: str
    verdict: str
    why: str


# ------------------------------------------------------------------------------ the data

# A cell: per unit (trajectory, start), its values per horizon.
_Cell = dict[tuple, np.ndarray]


class UnitCells:
    """The study's per-unit rows as cells: ``(metric, reference, method, ÷, context, steps)``
    → unit → values per horizon (NaN where a horizon is missing).

    :param rows: long-format rows (the module's docstring).
    :param horizons: the horizons, in order.
    """

    def __init__(self, rows: Iterable[Mapping], horizons: Sequence[str]):
        self.horizons = tuple(horizons)
        column = {h: j for j, h in enumerate(self.horizons)}
        # key -> unit -> horizon index -> replicate -> value; a unit's value is the mean over
        # its replicates (--seeds), so the bootstrap resamples trajectories, not seeds.
        collected: dict[tuple, dict] = {}
        for row in rows:
            if row.get("method") not in _METHODS or row.get("horizon") not in column:
                continue
            unit = (row.get("trajectory", "-"), row.get("start", 0))
            for metric in ("vrmse", "spread_skill"):
                value = tables.finite_or_none(row.get(metric))
                if value is None:
                    continue
                key = (
                    metric,
                    row.get("reference", "absolute"),
                    row["method"],
                    _rate_of(row.get("compression")),
                    row.get("context", "all"),
                    row.get("steps", "-"),
                )
                slot = (
                    collected.setdefault(key, {}).setdefault(unit, {}).setdefault(column[row["horizon"]], {})
                )
                slot[row.get("replicate", 0)] = value
        self._cells: dict[tuple, _Cell] = {}
        for key, units in collected.items():
            for unit, by_horizon in units.items():
                values = np.full(len(self.horizons), np.nan)
                for j, replicates in by_horizon.items():
                    values[j] = np.mean(list(replicates.values()))
                self._cells.setdefault(key, {})[unit] = values

    def rates(self, method: str, *, metric: str = "vrmse", reference: str = "absolute") -> list[float]:
        """The rates at which ``method`` has a complete cell (context ``all``), ascending."""
        return sorted(
            {
                key[3]
                for key in self._cells
                if key[:3] == (metric, reference, method) and key[4] == "all" and self.get(*key)
            }
        )

    def get(self, metric, reference, method, rate, context="all", steps=None) -> _Cell:
        """The complete units of a cell (a value at every horizon); ``steps=None``: any."""
        found: _Cell = {}
        for key, cell in self._cells.items():
            if key[:5] == (metric, reference, method, rate, context) and steps in (None, key[5]):
                found.update({u: v for u, v in cell.items() if np.isfinite(v).all()})
        return found

    def cell_keys(self, metric: str = "vrmse", reference: str = "absolute") -> list[tuple]:
        """``(method, ÷, context, steps)`` of the cells of a metric."""
        return [key[2:] for key in self._cells if key[:2] == (metric, reference)]


#: The rate of rows without one (persistence: no model, no compression).
_NO_RATE = -1.0


def _rate_of(value) -> float:
    rate = tables.finite_or_none(value)
    return _NO_RATE if rate is None else rate


def _paired(cells: Sequence[_Cell]) -> list[np.ndarray]:
    """The cells' values on the units they share, ``(n, H)`` each, units in one order."""
    shared = set(cells[0])
    for cell in cells[1:]:
        shared &= set(cell)
    units = sorted(shared, key=str)
    return [np.stack([cell[u] for u in units]) if units else np.empty((0, 0)) for cell in cells]


def _interval(cells: Sequence[_Cell], statistic: Callable[..., np.ndarray]) -> Interval:
    samples = _paired(cells)
    if samples[0].shape[0] == 0:
        raise ValueError("no unit shared by the compared cells")
    return bootstrap_means(samples, statistic, level=LEVEL)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a / b


def _relative_range(*means: np.ndarray) -> np.ndarray:
    stacked = np.stack(means, axis=-2)  # (..., R, H)
    low = stacked.min(axis=-2)
    return (stacked.max(axis=-2) - low) / low


# -------------------------------------------------------------------------- formatting


def _rate(rate: float) -> str:
    return "÷" + tables.format_compression(rate)


def _rates(rates: Iterable[float]) -> str:
    return "÷" + "/".join(tables.format_compression(r).removesuffix(" (pixel)") for r in rates)


def _h(horizon: str) -> str:
    return tables.horizon_title(horizon)


def _by_horizon(interval: Interval, horizons: Sequence[str], digits: int = 3) -> str:
    return ", ".join(f"{_h(h)} {interval.text(j, digits)}" for j, h in enumerate(horizons))


def _finding(number: int, figures: str, verdict: str, why: str) -> Finding:
    return Finding(number, FINDINGS[number], _TESTS[number], figures, verdict, why)


def _no_interval(units: int) -> str:
    return f"no interval: {units} scored unit(s) shared by the methods compared, needs {MIN_UNITS}"


#: Failures listed in a verdict's reason before "and N more".
_LISTED = 4


def _first(failures: list[str]) -> list[str]:
    """The first :data:`_LISTED` failures, and how many more there are."""
    if len(failures) <= _LISTED:
        return failures
    return [*failures[:_LISTED], f"and {len(failures) - _LISTED} more"]


def _judge(
    number: int,
    figures: str,
    *,
    mean_failures: list[str],
    interval_failures: list[str],
    units: int,
    unlearned: list[str],
    shown: str,
) -> Finding:
    """The verdict: the means must hold, then the intervals, then every model must have learned."""
    mean_failures, interval_failures, unlearned = (
        _first(mean_failures),
        _first(interval_failures),
        _first(unlearned),
    )
    if mean_failures:
        return _finding(number, figures, NOT_SHOWN, "; ".join(mean_failures))
    if units < MIN_UNITS:
        return _finding(number, figures, NOT_SHOWN, "holds in the means; " + _no_interval(units))
    if interval_failures:
        return _finding(
            number,
            figures,
            NOT_SHOWN,
            "holds in the means, not with confidence: " + "; ".join(interval_failures),
        )
    if unlearned:
        return _finding(number, figures, NOT_SHOWN, "holds, but " + "; ".join(unlearned))
    return _finding(number, figures, SHOWN, shown)


# ---------------------------------------------------------------------------- guards


def _unlearned_emulators(cells: UnitCells, labelled: Mapping[str, _Cell]) -> list[str]:
    """The emulators whose mean VRMSE over h1 is above the persistence guard."""
    persistence = cells.get("vrmse", "absolute", PERSISTENCE, _NO_RATE)
    failed = []
    for label, cell in labelled.items():
        if not cell:
            continue
        if persistence:
            model, baseline = (a[:, 0].mean() for a in _paired([cell, persistence]))
            bound = EMULATOR_VS_PERSISTENCE * min(1.0, baseline)
            if not model <= bound:
                failed.append(
                    f"{label} not better than persistence ({model:.3f} > {EMULATOR_VS_PERSISTENCE:g} × "
                    f"min(1, {baseline:.3f}) over the first horizon)"
                )
        else:
            model = np.stack(list(cell.values()))[:, 0].mean()
            if not model < LEARNED_VRMSE:
                failed.append(f"{label} no better than the spatial mean (VRMSE ≥ {LEARNED_VRMSE:g} over h1)")
    return failed


def _unlearned_autoencoders(cells: UnitCells, rates: Sequence[float]) -> list[str]:
    failed = []
    for rate in rates:
        recon = cells.get("vrmse", "absolute", AUTOENCODER, rate)
        pca = cells.get("vrmse", "absolute", PCA, rate)
        if pca:
            model, baseline = (a[:, 0].mean() for a in _paired([recon, pca]))
            if not model <= AUTOENCODER_VS_PCA * baseline:
                failed.append(
                    f"autoencoder {_rate(rate)} not better than PCA of its size ({model:.3f} > "
                    f"{AUTOENCODER_VS_PCA:g} × {baseline:.3f} over the first horizon)"
                )
        else:
            model = np.stack(list(recon.values()))[:, 0].mean()
            if not model < LEARNED_VRMSE:
                failed.append(
                    f"autoencoder {_rate(rate)} no better than the spatial mean (VRMSE ≥ {LEARNED_VRMSE:g})"
                )
    return failed


# ---------------------------------------------------------------------------- findings


def _reconstruction_grows(cells: UnitCells) -> Finding:
    horizons = cells.horizons
    rates = [r for r in cells.rates(AUTOENCODER) if r > 1]
    if len(rates) < 2:
        return _finding(1, "—", NOT_MEASURED, f"autoencoders at {len(rates)} compression rate(s); needs 2")
    recon = [cells.get("vrmse", "absolute", AUTOENCODER, r) for r in rates]
    means = _interval(recon, lambda *m: np.stack(m, axis=-2))
    growth = _interval([recon[-1], recon[0]], _ratio)  # highest ÷ over lowest
    steps = [_interval([b, a], _ratio) for a, b in itertools.pairwise(recon)]
    figures = f"recon. VRMSE {_rates(rates)} — " + "; ".join(
        f"{_h(h)}: " + ", ".join(means.text((i, j)) for i in range(len(rates))) + f" (×{growth.text(j, 1)})"
        for j, h in enumerate(horizons)
    )
    mean_failures, interval_failures = [], []
    for j, h in enumerate(horizons):
        for (a, b), step in zip(itertools.pairwise(rates), steps):
            if not step.estimate[j] > 1:
                mean_failures.append(f"does not rise {_rate(a)}→{_rate(b)} at {_h(h)}")
            elif not step.low[j] > 1:
                interval_failures.append(f"{_rate(a)}→{_rate(b)} at {_h(h)} ×{step.text(j, 2)}")
        if not mean_failures and not growth.estimate[j] >= CLEAR_GROWTH:
            mean_failures.append(f"grows only ×{growth.estimate[j]:.2f} at {_h(h)}")
        elif not growth.low[j] >= CLEAR_GROWTH:
            interval_failures.append(f"growth ×{growth.text(j, 2)} at {_h(h)}")
    return _judge(
        1,
        figures,
        mean_failures=mean_failures,
        interval_failures=interval_failures,
        units=growth.units,
        unlearned=_unlearned_autoencoders(cells, rates),
        shown=f"rises with ÷ at every horizon, ≥ ×{np.min(growth.low):.1f} lowest→highest",
    )


def _diffusion_flat_in_rate(cells: UnitCells) -> Finding:
    horizons = cells.horizons
    rates = [r for r in cells.rates(DIFFUSION) if r > 1]
    if len(rates) < 2:
        return _finding(
            2, "—", NOT_MEASURED, f"latent diffusion at {len(rates)} compression rate(s); needs 2"
        )
    diffusion = [cells.get("vrmse", "absolute", DIFFUSION, r) for r in rates]
    spread = _interval(diffusion, _relative_range)
    figures = f"diffusion VRMSE range over {_rates(rates)} — " + _by_horizon(spread, horizons, 2)
    recon_rates = [r for r in rates if cells.get("vrmse", "absolute", AUTOENCODER, r)]
    versus = None
    if len(recon_rates) >= 2:
        recon = [cells.get("vrmse", "absolute", AUTOENCODER, r) for r in recon_rates]
        k = len(recon_rates)
        subset = [cells.get("vrmse", "absolute", DIFFUSION, r) for r in recon_rates]
        versus = _interval([*subset, *recon], lambda *m: _relative_range(*m[:k]) / _relative_range(*m[k:]))
        figures += "; over the reconstruction's range — " + _by_horizon(versus, horizons, 2)
    mean_failures, interval_failures = [], []
    for j, h in enumerate(horizons):
        if not spread.estimate[j] <= BARELY_MOVES_RATE:
            mean_failures.append(f"moves {spread.estimate[j]:.0%} at {_h(h)}")
        elif not spread.high[j] <= BARELY_MOVES_RATE:
            interval_failures.append(f"range up to {spread.high[j]:.0%} at {_h(h)}")
        if versus is None:
            continue
        if not versus.estimate[j] <= RANGE_VS_RECONSTRUCTION:
            mean_failures.append(f"moves {versus.estimate[j]:.2f} × the reconstruction's range at {_h(h)}")
        elif not versus.high[j] <= RANGE_VS_RECONSTRUCTION:
            interval_failures.append(f"up to {versus.high[j]:.2f} × the reconstruction's range at {_h(h)}")
    return _judge(
        2,
        figures,
        mean_failures=mean_failures,
        interval_failures=interval_failures,
        units=spread.units,
        unlearned=_unlearned_emulators(cells, {f"diffusion {_rate(r)}": c for r, c in zip(rates, diffusion)}),
        shown=f"moves ≤ {np.max(spread.high):.0%} over ÷ at every horizon",
    )


def _diffusion_beats_solver(cells: UnitCells) -> Finding:
    horizons = cells.horizons
    rates = [r for r in cells.rates(DIFFUSION) if r > 1 and r in cells.rates(SOLVER)]
    if not rates:
        return _finding(3, "—", NOT_MEASURED, "no compression rate with both a latent diffusion and solver")
    parts, mean_failures, interval_failures, units = [], [], [], []
    labelled = {}
    for rate in rates:
        diffusion = cells.get("vrmse", "absolute", DIFFUSION, rate)
        solver = cells.get("vrmse", "absolute", SOLVER, rate)
        labelled[f"diffusion {_rate(rate)}"] = diffusion
        ratio = _interval([solver, diffusion], _ratio)  # solver / diffusion, by horizon
        first = _interval([diffusion, solver], lambda d, s: d[..., 0] / s[..., 0])
        units.append(ratio.units)
        parts.append(f"{_rate(rate)}: " + ", ".join(ratio.text(j, 2) for j in range(len(horizons))))
        if not first.estimate <= DIFFUSION_AT_FIRST:
            mean_failures.append(
                f"diffusion {first.estimate:.2f} × the solver at {_rate(rate)}, {_h(horizons[0])}"
            )
        elif not first.high <= DIFFUSION_AT_FIRST:
            interval_failures.append(
                f"diffusion/solver up to {first.high:.2f} at {_rate(rate)}, {_h(horizons[0])}"
            )
        if not ratio.estimate[-1] >= SOLVER_AT_LAST:
            mean_failures.append(
                f"solver only {ratio.estimate[-1]:.2f} × diffusion at {_rate(rate)}, {_h(horizons[-1])}"
            )
        elif not ratio.low[-1] >= SOLVER_AT_LAST:
            interval_failures.append(
                f"solver/diffusion {ratio.text(-1, 2)} at {_rate(rate)}, {_h(horizons[-1])}"
            )
    figures = "solver / diffusion VRMSE by horizon — " + "; ".join(parts)
    return _judge(
        3,
        figures,
        mean_failures=mean_failures,
        interval_failures=interval_failures,
        units=min(units),
        unlearned=_unlearned_emulators(cells, labelled),
        shown="diffusion within 5 % early and the solver ≥ 10 % behind at the last horizon, every ÷",
    )


def _latent_matches_pixel(cells: UnitCells) -> Finding:
    horizons = cells.horizons
    pixel_rates = cells.rates(PIXEL_SOLVER)
    latent = {
        f"{method} {_rate(rate)}": cells.get("vrmse", "absolute", method, rate)
        for method in (DIFFUSION, SOLVER)
        for rate in cells.rates(method)
        if rate > 1
    }
    if not pixel_rates or not latent:
        return _finding(
            4, "—", NOT_MEASURED, "no pixel-space solver" if not pixel_rates else "no latent emulator"
        )
    pixel = cells.get("vrmse", "absolute", PIXEL_SOLVER, pixel_rates[0])
    ratios = {label: _interval([cell, pixel], _ratio) for label, cell in latent.items()}
    figures = "latent / pixel solver VRMSE — " + "; ".join(
        f"{label}: " + ", ".join(r.text(j, 2) for j in range(len(horizons))) for label, r in ratios.items()
    )
    bound = 1 + MATCH_TOLERANCE
    mean_failures = [
        f"{label} ×{r.estimate[j]:.2f} at {_h(h)}"
        for label, r in ratios.items()
        for j, h in enumerate(horizons)
        if not r.estimate[j] <= bound
    ]
    interval_failures = [
        f"{label} up to ×{r.high[j]:.2f} at {_h(h)}"
        for label, r in ratios.items()
        for j, h in enumerate(horizons)
        if not r.high[j] <= bound
    ]
    if mean_failures:
        mean_failures = ["worse than the pixel solver: " + ", ".join(mean_failures)]
    worst = max(float(np.max(r.high)) for r in ratios.values())
    return _judge(
        4,
        figures,
        mean_failures=mean_failures,
        interval_failures=interval_failures,
        units=min(r.units for r in ratios.values()),
        unlearned=_unlearned_emulators(cells, latent),
        shown=f"worst upper end ×{worst:.2f}",
    )


def _spread_skill_near_one(cells: UnitCells) -> Finding:
    horizons = cells.horizons
    rates = [r for r in cells.rates(DIFFUSION, metric="spread_skill", reference="relative") if r > 1]
    if not rates:
        return _finding(
            5, "—", NOT_MEASURED, "no spread-skill ratio of a latent diffusion ensemble against D(E(x))"
        )
    low, high = SPREAD_SKILL_BAND
    relative = {
        r: _interval([cells.get("spread_skill", "relative", DIFFUSION, r)], lambda m: m) for r in rates
    }
    absolute = {
        r: _interval([cell], lambda m: m)
        for r in rates
        if (cell := cells.get("spread_skill", "absolute", DIFFUSION, r))
    }
    figures = "diffusion spread-skill against D(E(x)) by horizon — " + "; ".join(
        f"{_rate(r)}: " + ", ".join(i.text(j, 2) for j in range(len(horizons))) for r, i in relative.items()
    )
    if absolute:
        figures += "; against the truth — " + "; ".join(
            f"{_rate(r)}: " + ", ".join(f"{v:.2f}" for v in i.estimate) for r, i in absolute.items()
        )
    if len(rates) >= 2:
        first, last = (float(np.mean(relative[r].estimate)) for r in (rates[0], rates[-1]))
        trend = "lower" if last < first else "not lower"
        figures += (
            f"; mean {_rate(rates[-1])} {last:.2f} vs {_rate(rates[0])} {first:.2f} ({trend} at high ÷)"
        )
    mean_failures = [
        f"{i.estimate[j]:.2f} at {_rate(r)}, {_h(h)}"
        for r, i in relative.items()
        for j, h in enumerate(horizons)
        if not low <= i.estimate[j] <= high
    ]
    if mean_failures:
        mean_failures = [f"outside [{low:g}, {high:g}]: " + ", ".join(mean_failures)]
    interval_failures = [
        f"{i.text(j, 2)} at {_rate(r)}, {_h(h)}"
        for r, i in relative.items()
        for j, h in enumerate(horizons)
        if not (low <= i.low[j] and i.high[j] <= high)
    ]
    if interval_failures:
        interval_failures = [f"interval leaves [{low:g}, {high:g}]: " + ", ".join(interval_failures)]
    errors = {f"diffusion {_rate(r)}": cells.get("vrmse", "absolute", DIFFUSION, r) for r in rates}
    return _judge(
        5,
        figures,
        mean_failures=mean_failures,
        interval_failures=interval_failures,
        units=min(i.units for i in relative.values()),
        unlearned=_unlearned_emulators(cells, errors),
        shown=f"every interval in [{low:g}, {high:g}]",
    )


def _context_barely_matters(cells: UnitCells) -> Finding:
    horizons = cells.horizons
    groups: dict[tuple, dict] = {}
    for method, rate, context, steps in cells.cell_keys():
        if method in (DIFFUSION, SOLVER) and rate > 1 and context != "all":
            cell = cells.get("vrmse", "absolute", method, rate, context, steps)
            if cell:
                groups.setdefault((method, rate, steps), {})[context] = cell
    groups = {key: by_context for key, by_context in groups.items() if len(by_context) >= 2}
    if not groups:
        return _finding(6, "—", NOT_MEASURED, "no latent emulator evaluated at 2 context lengths or more")
    several_steps = len({steps for _, _, steps in groups}) > 1
    contexts = sorted({c for by_context in groups.values() for c in by_context}, key=float)
    parts, mean_failures, interval_failures, units, labelled = [], [], [], [], {}
    for (method, rate, steps), by_context in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))
    ):
        name = f"{method} {_rate(rate)}" + (f" ({steps} steps)" if several_steps and steps != "-" else "")
        ordered = [by_context[c] for c in sorted(by_context, key=float)]
        spread = _interval(ordered, _relative_range)
        units.append(spread.units)
        parts.append(
            f"{name}: "
            + ", ".join(f"{spread.estimate[j]:.0%} [≤{spread.high[j]:.0%}]" for j in range(len(horizons)))
        )
        for j, h in enumerate(horizons):
            if not spread.estimate[j] <= BARELY_MOVES_CONTEXT:
                mean_failures.append(f"{name} moves {spread.estimate[j]:.0%} at {_h(h)}")
            elif not spread.high[j] <= BARELY_MOVES_CONTEXT:
                interval_failures.append(f"{name} up to {spread.high[j]:.0%} at {_h(h)}")
        labelled.update({f"{name} c={c}": cell for c, cell in by_context.items()})
    figures = f"VRMSE range over contexts {', '.join(map(str, contexts))}, by horizon — " + "; ".join(parts)
    return _judge(
        6,
        figures,
        mean_failures=mean_failures,
        interval_failures=interval_failures,
        units=min(units),
        unlearned=_unlearned_emulators(cells, labelled),
        shown="every range's upper end within the bound",
    )


# ------------------------------------------------------------------------------- entry


def assess_findings(rows: Iterable[Mapping], *, horizons: Sequence[str] | None = None) -> list[Finding]:
    """Test the paper's six findings on a study's per-unit rows (see the module's docstring).

    :param rows: long-format rows with ``method``, ``compression``, ``horizon``, the metrics
        ``vrmse`` (and ``spread_skill`` for diffusion), the unit (``trajectory``, ``start``),
        optionally ``reference`` (default ``"absolute"``), ``context`` (default ``"all"``)
        and ``steps``.
    :param horizons: the lead-time horizons, in order (default: those present, by start).
    :returns: six :class:`Finding`, numbered 1–6.
    """
    kept = [row for row in rows if row.get("method") in _METHODS]
    if horizons is None:
        present = {str(r["horizon"]) for r in kept if "horizon" in r}
        horizons = sorted(present, key=tables.horizon_sort_key)
    horizons = tuple(horizons)
    if not horizons:
        return [_finding(n, "—", NOT_MEASURED, "no results") for n in FINDINGS]
    cells = UnitCells(kept, horizons)
    return [
        _reconstruction_grows(cells),
        _diffusion_flat_in_rate(cells),
        _diffusion_beats_solver(cells),
        _latent_matches_pixel(cells),
        _spread_skill_near_one(cells),
        _context_barely_matters(cells),
    ]
