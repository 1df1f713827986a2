r"""The study report: many evaluations side by side (the paper's Tables 6–7, Figures 3 and 5).

A sweep evaluates one emulator per (method, compression rate) — and, for the context
sweep, per (context length, sampler steps). This module reads those evaluation
artifacts back from the store and writes one report over all of them:

* ``study_vrmse.csv`` / ``.txt`` — Table 6: mean VRMSE per lead-time horizon, rows
  (method, ÷), with the autoencoder's reconstruction error by horizon as the
  ``autoencoder`` rows;
* ``study_context.csv`` / ``.txt`` — Table 7: VRMSE per horizon, rows (method, ÷,
  context length[, sampler steps]);
* more tables (spread-skill, high-band spectral error, VRMSE against the auto-encoded
  states, cost per state) and figures (metric against lead time per method and rate,
  reconstruction error against the compression rate);
* for each guided evaluation beside its unguided one (same emulator, seeds and
  trajectory), a grid of snapshots — truth, unguided member 0, guided member 0 — as in
  the paper's Figure 6;
* ``study_findings.csv`` / ``.txt`` — the paper's six findings, each with this study's
  figures and whether they show it (:mod:`lolaray.evaluation.findings`);
* ``study.html``: everything in one self-contained page, the findings first.

Every row is averaged over test trajectories, fields and (for Table 6) context lengths,
exactly as in each evaluation's own ``metrics.csv``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lolaray.evaluation import figures, report, tables
from lolaray.evaluation import findings as paper_findings
from lolaray.evaluation.animation import animation_html
from lolaray.evaluation.findings_table import findings_csv, findings_html, findings_text
from lolaray.evaluation.outputs import BASELINES_FILE
from lolaray.evaluation.study_units import interval_table, study_unit_rows
from lolaray.platform.artifacts import Artifact, ArtifactStore

__all__ = ["Evaluation", "StudyReport", "load_evaluations", "write_study_report"]

#: Caption of the findings table in ``study.html``.
FINDINGS_CAPTION = "The paper's six findings (reference/paper-tables.md), tested on this study's numbers"

#: Row order of the tables (the paper's: autoencoder, diffusion, then the solvers).
METHOD_ORDER = (
    "autoencoder",
    "pca",
    "diffusion",
    "guided diffusion",
    "solver",
    "pixel solver",
    "persistence",
)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation artifact read back: its summary, table rows and per-lead rows."""

    artifact: Artifact
    summary: dict
    rows: list[dict]
    per_lead: list[dict]
    #: ``snapshot.npz`` of the evaluation (``truth``, ``member0`` :math:`(K, H, W)`,
    #: ``leads``, ``context``, ``field``); ``None`` for 3-D data or older artifacts.
    snapshot: dict | None = None
    #: ``rollout.gif`` of the evaluation (truth, ensemble mean, members); ``None`` for 3-D
    #: data or older artifacts.
    animation: bytes | None = None
    #: ``per_trajectory.csv``: the model's metrics per scored unit (trajectory, start), context
    #: and reference, by horizon (``vrmse/lead_1-20``, ...).
    per_trajectory: list[dict] | None = None
    #: ``baselines.csv``: persistence, PCA of the latent's size and the reconstruction per unit.
    baselines: list[dict] | None = None

    @property
    def steps(self) -> int | None:
        """Sampler steps (``None`` for deterministic solvers)."""
        return self.summary.get("config", {}).get("steps")


def _parse(value: str) -> Any:
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _read_csv(text: str) -> list[dict]:
    return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def load_evaluations(store: ArtifactStore, artifacts: Sequence[Artifact]) -> list[Evaluation]:
    """Read the summaries and CSVs of evaluation ``artifacts`` (local or remote store).

    :raises ValueError: an artifact is not an evaluation.
    """
    evaluations = []
    for artifact in artifacts:
        if artifact.stage != "evaluation":
            raise ValueError(f"{artifact.id} is a {artifact.stage} artifact, not an evaluation")
        evaluations.append(
            Evaluation(
                artifact=artifact,
                summary=json.loads(store.read_text(artifact, "summary.json")),
                rows=_read_csv(store.read_text(artifact, "metrics.csv")),
                per_lead=_read_csv(store.read_text(artifact, "per_lead.csv")),
                snapshot=_read_snapshot(store, artifact),
                animation=_read_animation(store, artifact),
                per_trajectory=_read_optional_csv(store, artifact, "per_trajectory.csv"),
                baselines=_read_optional_csv(store, artifact, BASELINES_FILE),
            )
        )
    return evaluations


def _read_optional_csv(store: ArtifactStore, artifact: Artifact, name: str) -> list[dict]:
    try:
        return _read_csv(store.read_text(artifact, name))
    except (FileNotFoundError, OSError):  # written before the file existed
        return []


def _read_animation(store: ArtifactStore, artifact: Artifact) -> bytes | None:
    try:
        return store.read_bytes(artifact, "rollout.gif")
    except (FileNotFoundError, OSError):  # 3-D data, or written before animations existed
        return None


def _read_snapshot(store: ArtifactStore, artifact: Artifact) -> dict | None:
    try:
        blob = store.read_bytes(artifact, "snapshot.npz")
    except (FileNotFoundError, OSError):  # 3-D data, or written before snapshots were kept
        return None
    with np.load(io.BytesIO(blob)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _guided_snapshot_figures(evaluations: Sequence[Evaluation]) -> list:
    """The Figure 6 analogue: per guided evaluation with snapshots, the truth, the unguided
    member 0 and the guided member 0 of the same emulator (same seeds, same trajectory)."""
    plots = []
    for guided in evaluations:
        guidance = guided.summary.get("config", {}).get("guidance")
        if not guidance or guided.snapshot is None:
            continue
        twins = [
            e
            for e in evaluations
            if e.snapshot is not None
            and not e.summary.get("config", {}).get("guidance")
            and e.summary.get("emulator") == guided.summary.get("emulator")
            and np.array_equal(e.snapshot["leads"], guided.snapshot["leads"])
        ]
        if not twins:
            continue
        plain, snap = twins[0].snapshot, guided.snapshot
        rate = tables.format_compression(guided.summary["compression"])
        plots.append(
            figures.snapshot_grid_figure(
                snap["truth"],
                {"diffusion": plain["member0"], "guided diffusion": snap["member0"]},
                leads=snap["leads"].tolist(),
                columns=range(len(snap["leads"])),
                field=str(snap["field"]),
                title=f"Guided vs unguided diffusion ÷{rate}, member 0, trajectory 0, c={int(snap['context'])}"
                f" (observations: {guidance['operator']} ×{guidance['factor']}, σ_y={guidance['sigma_y']:g})",
            )
        )
    return plots


@dataclass(frozen=True)
class StudyReport:
    """What :func:`write_study_report` wrote: the files and the tables (``print`` them)."""

    files: list[Path]
    tables: dict[str, tables.MetricTable]
    #: The same with intervals and medians, per scored unit (``vrmse_intervals``, ...).
    intervals: dict = field(default_factory=dict)
    #: The paper's six findings tested on this study's numbers (``print(findings_text(...))``).
    findings: list[paper_findings.Finding] = field(default_factory=list)


def _animations(evaluations: Sequence[Evaluation]) -> list:
    """Each evaluation's ``rollout.gif`` (truth, ensemble mean, members), inlined; evaluations
    written before animations existed are skipped."""
    items = []
    for e in evaluations:
        if e.animation is None:
            continue
        label = f"{e.summary['method']} ÷{tables.format_compression(e.summary['compression'])}"
        items.append(report.RawHTML(animation_html(e.animation, caption=label)))
    return items or ["no rollout animations (evaluations of 3-D data or from an older lolaray)"]


def _autoencoder_rows(evaluations: Sequence[Evaluation]) -> list[dict]:
    seen, rows = set(), []
    for e in evaluations:
        by_horizon = e.summary.get("recon_vrmse_by_horizon")
        autoencoder = e.summary.get("autoencoder")
        if not by_horizon or autoencoder in seen:
            continue
        seen.add(autoencoder)
        for horizon, value in by_horizon.items():
            rows.append(
                {
                    "method": "autoencoder",
                    "compression": e.summary["compression"],
                    "horizon": horizon,
                    "vrmse": value,
                }
            )
    return rows


def _with_steps(evaluation: Evaluation, rows: list[dict]) -> list[dict]:
    steps = evaluation.steps
    return [{**r, "steps": steps if steps is not None else "-"} for r in rows]


def write_study_report(
    evaluations: Sequence[Evaluation],
    folder: str | Path,
    *,
    title: str = "Study",
    description: str | None = None,
    by_steps: bool = False,
) -> StudyReport:
    """Write the study's tables, figures and ``study.html`` into ``folder``.

    :param evaluations: from :func:`load_evaluations`; at least one.
    :param title, description: the HTML report's heading and introduction.
    :param by_steps: add the sampler steps to the rows of the context table (the context
        sweep varies them).
    :returns: the files written (CSV, text, HTML) and the tables.
    """
    if not evaluations:
        raise ValueError("a study report needs at least one evaluation")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    horizons = list(evaluations[0].summary["horizons"])

    rows = [r for e in evaluations for r in _with_steps(e, e.rows)]
    overall = [r for r in rows if r["reference"] == "absolute" and r["context"] == "all"]
    per_context = [r for r in rows if r["reference"] == "absolute" and r["context"] != "all"]
    relative = [r for r in rows if r["reference"] == "relative" and r["context"] == "all"]
    recon = _autoencoder_rows(evaluations)
    # Per scored unit (trajectory, start): the findings' and the intervals' data; the
    # baselines (persistence, PCA of each latent's size) as rows of Table 6.
    units = study_unit_rows(evaluations, horizons)
    baselines = [
        r
        for r in units
        if r["method"] in ("pca", "persistence") and r["reference"] == "absolute" and r["context"] == "all"
    ]
    # Lead-time curves at each evaluation's shortest context (the paper's Figure 5 setting).
    per_lead = [
        r
        for e in evaluations
        for r in e.per_lead
        if r["reference"] == "absolute" and r["context"] == min(e.summary["config"]["contexts"])
    ]
    cost = [
        {
            "method": e.summary["method"],
            "compression": e.summary["compression"],
            "quantity": "ms/state",
            "value": e.summary["infer_ms_per_state"],
        }
        for e in evaluations
    ]

    table = lambda rows, metric, **kw: tables.metric_table(
        rows, metric=metric, columns=kw.pop("columns", horizons), order=METHOD_ORDER, **kw
    )
    context_keys = ("method", "compression", "context", *(("steps",) if by_steps else ()))
    metric_tables = {
        "vrmse": table(recon + overall + baselines, "vrmse"),
        "context": table(per_context, "vrmse", row_keys=context_keys),
        "spread_skill": table([r for r in overall if r["method"] == "diffusion"], "spread_skill"),
        "crps": table(overall, "crps"),
        "coverage_90": table([r for r in overall if r["method"] == "diffusion"], "coverage_90"),
        "psrmse_high": table(overall, "psrmse_high"),
        "spread_skill_relative": table([r for r in relative if r["method"] == "diffusion"], "spread_skill"),
        "relative_vrmse": table(relative, "vrmse"),
        "cost": table(cost, "value", column_key="quantity", columns=["ms/state"]),
    }
    captions = {
        "vrmse": "Table 6 analogue: mean VRMSE by lead-time horizon (autoencoder rows: reconstruction)",
        "context": "Table 7 analogue: VRMSE by context length",
        "spread_skill": "Spread-skill ratio of the diffusion ensembles against the truth x (ideal 1)",
        "spread_skill_relative": "Spread-skill ratio of the diffusion ensembles against D(E(x)), "
        "the paper's Figure 9 (ideal 1; finding 5 tests it)",
        "crps": "Fair CRPS by lead-time horizon (deterministic solvers: the MAE)",
        "coverage_90": "Coverage of the diffusion ensembles' central 90 % interval (ideal 0.9; 50 %: per-lead figure)",
        "psrmse_high": "Power-spectrum RMSE, high frequencies",
        "relative_vrmse": "VRMSE against the auto-encoded states D(E(x)) (emulation error alone)",
        "cost": "Inference time per state (rollout + decoding, per member)",
    }

    interval_tables = {
        "vrmse_intervals": interval_table(units, horizons=horizons, order=METHOD_ORDER),
        "spread_skill_intervals": interval_table(
            [r for r in units if r["method"] == "diffusion"], metric="spread_skill", horizons=horizons
        ),
        "spread_skill_relative_intervals": interval_table(
            [r for r in units if r["method"] == "diffusion"],
            metric="spread_skill",
            reference="relative",
            horizons=horizons,
        ),
    }
    captions |= {
        "vrmse_intervals": "Table 6 with confidence: VRMSE mean over the scored trajectories, "
        "its paired bootstrap interval, and the median",
        "spread_skill_intervals": "Diffusion spread-skill against the truth, with intervals",
        "spread_skill_relative_intervals": "Diffusion spread-skill against D(E(x)), with intervals",
    }
    files: list[Path] = []
    for name, t in {**metric_tables, **interval_tables}.items():
        (folder / f"study_{name}.csv").write_text(t.to_csv())
        (folder / f"study_{name}.txt").write_text(f"{captions[name]}\n\n{t.to_text()}\n")
        files += [folder / f"study_{name}.csv", folder / f"study_{name}.txt"]

    plots = [
        figures.metric_vs_lead_figure(per_lead, metric="vrmse", title="VRMSE vs lead time", log_y=True),
        figures.spread_skill_figure([r for r in per_lead if r["method"] == "diffusion"]),
        figures.coverage_figure([r for r in per_lead if r["method"] == "diffusion"]),
        figures.metric_vs_lead_figure(
            per_lead, metric="psrmse_high", title="Power-spectrum RMSE (high band) vs lead time", log_y=True
        ),
    ]
    if recon:
        plots.insert(1, figures.reconstruction_figure(recon))
    plots += _guided_snapshot_figures(evaluations)
    # The six findings, from the per-unit rows behind the tables, with intervals.
    findings = paper_findings.assess_findings(units, horizons=horizons)
    (folder / "study_findings.csv").write_text(findings_csv(findings))
    (folder / "study_findings.txt").write_text(
        f"The paper's findings, tested on this study\n\n{findings_text(findings)}\n"
    )
    files += [folder / "study_findings.csv", folder / "study_findings.txt"]
    sections = [
        report.Section(
            "Findings",
            [report.RawHTML(findings_html(findings, caption=FINDINGS_CAPTION))],
        ),
        report.Section(
            "Tables",
            [
                report.RawHTML(t.to_html(caption=captions[name]))
                for name, t in {**metric_tables, **interval_tables}.items()
            ],
        ),
        report.Section("Figures", plots),
        report.Section("Rollouts", _animations(evaluations)),
        report.Section(
            "Evaluations",
            [
                f"{e.summary['method']} ÷{tables.format_compression(e.summary['compression'])}"
                f" (steps {e.steps}): {e.artifact.uri}"
                for e in evaluations
            ],
        ),
    ]
    files.append(report.write_html_report(folder / "study.html", title, sections, description=description))
    return StudyReport(files=files, tables=metric_tables, findings=findings, intervals=interval_tables)
