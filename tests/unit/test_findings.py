"""Unit tests of evaluation/findings.py: the paper's six findings tested on hand-made results.

The base set is the paper's own Euler numbers (Table 6, Table 7, spread-skill near 1),
which must show every finding; each perturbation then breaks exactly one finding, a
mixed set shows some and not others, a broken run (the issue-15 demo before the fix)
shows none, and missing data reads ``not measured``. The last test writes a study report
from hand-made evaluations and reads the findings table back out of ``study.html``.
"""

from __future__ import annotations

import copy
import csv
import io
import re

import numpy as np
import pytest

from lolaray.evaluation.findings import (
    FINDINGS,
    NOT_MEASURED,
    NOT_SHOWN,
    SHOWN,
    assess_findings,
)
from lolaray.evaluation.findings_table import (
    findings_csv,
    findings_html,
    findings_metrics,
    findings_text,
    log_findings,
)
from lolaray.evaluation.study import Evaluation, write_study_report
from lolaray.platform.artifacts import Artifact

HORIZONS = ("lead_1-20", "lead_21-60", "lead_61-100")

#: The paper's Table 6 (Euler): (method, ÷) -> VRMSE per horizon.
TABLE_6 = {
    ("autoencoder", 80): (0.011, 0.014, 0.020),
    ("autoencoder", 320): (0.023, 0.041, 0.061),
    ("autoencoder", 1280): (0.060, 0.107, 0.144),
    ("diffusion", 80): (0.075, 0.199, 0.395),
    ("diffusion", 320): (0.070, 0.192, 0.371),
    ("diffusion", 1280): (0.093, 0.217, 0.400),
    ("pixel solver", 1): (0.138, 0.397, 1.102),
    ("solver", 80): (0.077, 0.232, 0.500),
    ("solver", 320): (0.080, 0.232, 0.476),
    ("solver", 1280): (0.137, 0.314, 0.592),
}
#: The paper's Table 7 (Euler), put at ÷320: (method, context) -> VRMSE per horizon.
TABLE_7 = {
    ("diffusion", 1): (0.085, 0.204, 0.393),
    ("diffusion", 2): (0.074, 0.200, 0.383),
    ("diffusion", 3): (0.078, 0.203, 0.389),
    ("solver", 1): (0.108, 0.266, 0.526),
    ("solver", 2): (0.092, 0.253, 0.513),
    ("solver", 3): (0.094, 0.260, 0.529),
}
#: Diffusion spread-skill per ÷ (near 1, slightly lower at high ÷, as the paper's Figure 5).
SPREAD_SKILL = {80: (0.98, 0.97, 0.96), 320: (0.95, 0.94, 0.93), 1280: (0.91, 0.90, 0.88)}


#: Persistence by horizon (well above the paper's emulators, so the guard passes).
PERSISTENCE = (0.5, 0.8, 1.2)
#: PCA of each latent's size, relative to the reconstruction (the autoencoders beat it).
PCA_FACTOR = 1.5
UNITS = 8


def _rows(
    table_6=TABLE_6,
    table_7=TABLE_7,
    spread_skill=SPREAD_SKILL,
    *,
    units=UNITS,
    difficulty=0.05,
    jitter=0.01,
    persistence=PERSISTENCE,
    pca_factor=PCA_FACTOR,
    seed=0,
) -> list[dict]:
    """Per-unit long-format rows as the study builds them: each value of the tables times a
    trajectory's difficulty (shared by every method: the pairing) and a small jitter of its
    own, normalized so that the mean over units is the table's value."""
    rng = np.random.default_rng(seed)
    hard = np.exp(difficulty * rng.standard_normal(units))
    rows = []

    def add(method, rate, values, *, context="all", reference="absolute", metric="vrmse", scale=hard):
        noise = scale * np.exp(jitter * rng.standard_normal(units))
        noise = noise / noise.mean()  # the mean over units is the table's value
        for u in range(units):
            for horizon, value in zip(HORIZONS, values):
                rows.append(
                    {
                        "method": method,
                        "compression": rate,
                        "context": context,
                        "reference": reference,
                        "trajectory": u,
                        "start": 0,
                        "horizon": horizon,
                        metric: value * noise[u],
                    }
                )

    for (method, rate), values in table_6.items():
        add(method, rate, values)
        if method == "autoencoder" and pca_factor is not None:
            add("pca", rate, [v * pca_factor for v in values])
        if method == "diffusion" and rate in spread_skill:
            # Spread-skill against D(E(x)) (finding 5's) and against the truth (reported).
            add(
                method,
                rate,
                spread_skill[rate],
                metric="spread_skill",
                reference="relative",
                scale=np.ones(units),
            )
            add(
                method,
                rate,
                [0.8 * v for v in spread_skill[rate]],
                metric="spread_skill",
                scale=np.ones(units),
            )
    for (method, context), values in table_7.items():
        add(method, 320, values, context=context)
    if persistence is not None:
        add("persistence", None, persistence)
    return rows


def _verdicts(findings) -> dict[int, str]:
    return {f.number: f.verdict for f in findings}


def _with(table: dict, key, values) -> dict:
    changed = copy.deepcopy(table)
    changed[key] = values
    return changed


# ------------------------------------------------------------------------------ verdicts


def test_the_papers_own_numbers_show_all_six_findings():
    findings = assess_findings(_rows(), horizons=HORIZONS)
    assert [f.number for f in findings] == [1, 2, 3, 4, 5, 6]
    assert [f.statement for f in findings] == list(FINDINGS.values())
    assert _verdicts(findings) == dict.fromkeys(range(1, 7), SHOWN), [(f.number, f.why) for f in findings]
    # The figures are this run's numbers, formatted.
    assert (
        "1:20: 0.011 [0.011, 0.011], 0.023 [0.023, 0.023], 0.060 [0.059, 0.061] (×5.5 ["
        in findings[0].figures
    )
    assert (
        "1:20 0.33 [" in findings[1].figures
        and "over the reconstruction's range — 1:20 0.07" in findings[1].figures
    )
    assert "÷80: 1.03 [" in findings[2].figures
    assert (
        "(lower at high ÷)" in findings[4].figures and "against the truth — ÷80: 0.78" in findings[4].figures
    )
    assert "diffusion ÷320: 15% [" in findings[5].figures
    # Horizons default to those present, ordered by their start.
    assert _verdicts(assess_findings(list(reversed(_rows())))) == _verdicts(findings)


PERTURBATIONS = {
    # Reconstruction falls from ÷320 to ÷1280 at 21:60 (the broken demo: it fell).
    1: {"table_6": _with(TABLE_6, ("autoencoder", 1280), (0.060, 0.040, 0.144))},
    # Diffusion at ÷80 much better than at the other rates: the error moves with ÷.
    2: {"table_6": _with(TABLE_6, ("diffusion", 80), (0.045, 0.119, 0.237))},
    # The solver beats diffusion at ÷320 over 61:100.
    3: {"table_6": _with(TABLE_6, ("solver", 320), (0.080, 0.232, 0.360))},
    # The pixel solver beats the latent emulators over 1:20 by more than the tolerance.
    4: {"table_6": _with(TABLE_6, ("pixel solver", 1), (0.070, 0.397, 1.102))},
    # An under-dispersed ensemble at ÷1280, 61:100.
    5: {"spread_skill": _with(SPREAD_SKILL, 1280, (0.91, 0.90, 0.40))},
    # Context 1 much worse than 2 and 3 over 1:20.
    6: {"table_7": _with(TABLE_7, ("diffusion", 1), (0.120, 0.204, 0.393))},
}


@pytest.mark.parametrize("broken", sorted(PERTURBATIONS))
def test_each_perturbation_breaks_exactly_its_finding(broken):
    findings = assess_findings(_rows(**PERTURBATIONS[broken]), horizons=HORIZONS)
    expected = {n: NOT_SHOWN if n == broken else SHOWN for n in range(1, 7)}
    assert _verdicts(findings) == expected, [(f.number, f.why) for f in findings]
    assert findings[broken - 1].why  # says what failed


def test_finding_3_needs_the_gap_at_the_last_horizon_and_finding_1_clear_growth():
    # Diffusion still ahead everywhere at ÷80, but only 5 % at 61:100.
    rows = _rows(table_6=_with(TABLE_6, ("solver", 80), (0.077, 0.232, 0.415)))
    finding = assess_findings(rows, horizons=HORIZONS)[2]
    assert finding.verdict == NOT_SHOWN and "solver only 1.05 × diffusion at ÷80, 61:100" in finding.why
    # Reconstruction rises at every step, but only ×1.2 over the whole range: not "clearly".
    flat = {k: v for k, v in TABLE_6.items() if k[0] != "autoencoder"}
    flat |= {("autoencoder", 80): (0.10, 0.10, 0.10), ("autoencoder", 1280): (0.12, 0.12, 0.12)}
    finding = assess_findings(_rows(table_6=flat), horizons=HORIZONS)[0]
    assert finding.verdict == NOT_SHOWN and "only ×1.20" in finding.why


def test_a_mixed_run_shows_some_findings_and_not_others():
    table_6 = {
        # Reconstruction grows clearly: finding 1 holds.
        ("autoencoder", 80): (0.02, 0.03, 0.04),
        ("autoencoder", 1280): (0.08, 0.10, 0.12),
        # Diffusion degrades a lot with ÷: finding 2 does not hold ...
        ("diffusion", 80): (0.10, 0.20, 0.30),
        ("diffusion", 1280): (0.30, 0.50, 0.70),
        # ... and the solver beats it at ÷1280: finding 3 does not hold.
        ("solver", 80): (0.12, 0.25, 0.40),
        ("solver", 1280): (0.25, 0.45, 0.65),
        # Every latent emulator beats the pixel solver: finding 4 holds.
        ("pixel solver", 1): (0.40, 0.80, 1.20),
    }
    spread = {80: (1.0, 0.9, 0.8), 1280: (0.7, 0.6, 0.55)}  # finding 5 holds
    table_7 = {("diffusion", 1): (0.10, 0.20, 0.30), ("diffusion", 2): (0.20, 0.20, 0.30)}  # 6 fails
    findings = assess_findings(_rows(table_6, table_7, spread), horizons=HORIZONS)
    assert _verdicts(findings) == {
        1: SHOWN,
        2: NOT_SHOWN,
        3: NOT_SHOWN,
        4: SHOWN,
        5: SHOWN,
        6: NOT_SHOWN,
    }, [(f.number, f.why) for f in findings]
    assert "moves 200% at 1:20" in findings[1].why, findings[1].why
    assert "÷1280" in findings[2].why
    assert "diffusion ÷320 moves 100% at 1:20" in findings[5].why


def test_a_run_whose_models_learned_nothing_shows_no_finding():
    # The issue-15 demo before the fix: reconstruction above 1 and falling with ÷,
    # emulators at VRMSE 1.4–1.6 everywhere (flat in ÷ and context only because they
    # learned nothing), spread-skill 0.13–0.35.
    table_6 = {
        ("autoencoder", 80): (1.28, 2.5, 3.9),
        ("autoencoder", 320): (1.20, 2.4, 3.7),
        ("autoencoder", 1280): (1.13, 2.3, 3.6),
        ("diffusion", 80): (1.40, 1.45, 1.50),
        ("diffusion", 320): (1.42, 1.44, 1.49),
        ("diffusion", 1280): (1.41, 1.46, 1.48),
        ("solver", 80): (1.50, 1.55, 1.61),
        ("solver", 320): (1.52, 1.54, 1.60),
        ("solver", 1280): (1.51, 1.56, 1.62),
        ("pixel solver", 1): (1.55, 1.60, 1.70),
    }
    spread = {80: (0.35, 0.3, 0.2), 320: (0.3, 0.2, 0.15), 1280: (0.2, 0.15, 0.13)}
    table_7 = {("diffusion", c): (1.40, 1.45, 1.50) for c in (1, 2, 3)}
    # Persistence scores 1.07-1.22 on this data; PCA of each latent's size as well as the
    # autoencoders (the issue-28 demo: PCA-4 1.109, the ÷1280 autoencoder 1.110).
    findings = assess_findings(
        _rows(table_6, table_7, spread, persistence=(1.07, 1.15, 1.22), pca_factor=1.0), horizons=HORIZONS
    )
    assert _verdicts(findings) == dict.fromkeys(range(1, 7), NOT_SHOWN)
    # Finding 6 holds on the numbers alone; the guard refuses it.
    assert "not better than persistence" in findings[5].why, findings[5].why
    # Without baselines, the guard falls back to the spatial mean's VRMSE.
    bare = assess_findings(
        _rows(table_6, table_7, spread, persistence=None, pca_factor=None), horizons=HORIZONS
    )
    assert "no better than the spatial mean" in bare[1].why


def test_an_autoencoder_no_better_than_pca_of_its_size_shows_no_compression_finding():
    findings = assess_findings(_rows(pca_factor=1.05), horizons=HORIZONS)
    assert findings[0].verdict == NOT_SHOWN
    assert "autoencoder ÷80 not better than PCA of its size" in findings[0].why


def test_a_pattern_in_the_means_is_not_shown_without_the_interval():
    # Finding 3 at ÷80: the solver 1.2 × diffusion at 61:100 in the means (the threshold is
    # 1.1), but each trajectory's values scatter by ~40 % on their own (no pairing helps):
    # the interval's lower end falls below 1.1.
    rows = _rows(table_6=_with(TABLE_6, ("solver", 80), (0.077, 0.232, 0.474)), jitter=0.4)
    finding = assess_findings(rows, horizons=HORIZONS)[2]
    assert finding.verdict == NOT_SHOWN and "not with confidence" in finding.why, finding.why
    assert "solver/diffusion 1.20 [" in finding.why and "at ÷80, 61:100" in finding.why
    # The same means with trajectories that scatter little: shown.
    steady = assess_findings(
        _rows(table_6=_with(TABLE_6, ("solver", 80), (0.077, 0.232, 0.474)), jitter=0.01), horizons=HORIZONS
    )[2]
    assert steady.verdict == SHOWN, steady.why
    # A trajectory difficulty shared by both methods cancels in the paired ratio.
    paired = assess_findings(
        _rows(table_6=_with(TABLE_6, ("solver", 80), (0.077, 0.232, 0.474)), difficulty=0.6, jitter=0.01),
        horizons=HORIZONS,
    )[2]
    assert paired.verdict == SHOWN, paired.why


def test_means_alone_show_nothing():
    # One unit (a table of means): no interval, so no finding is shown.
    findings = assess_findings(_rows(units=1), horizons=HORIZONS)
    assert _verdicts(findings) == dict.fromkeys(range(1, 7), NOT_SHOWN)
    assert all("no interval: 1 scored unit(s)" in f.why for f in findings), [f.why for f in findings]


def test_missing_data_is_not_measured():
    one_rate = {k: v for k, v in TABLE_6.items() if k[1] in (1, 80)}
    findings = assess_findings(_rows(one_rate, table_7={}), horizons=HORIZONS)
    # One rate: no trend in ÷ (1, 2); no context sweep (6); the rest is measurable.
    assert _verdicts(findings) == {
        1: NOT_MEASURED,
        2: NOT_MEASURED,
        3: SHOWN,
        4: SHOWN,
        5: SHOWN,
        6: NOT_MEASURED,
    }
    assert "needs 2" in findings[0].why
    no_pixel = {k: v for k, v in TABLE_6.items() if k[0] != "pixel solver"}
    assert assess_findings(_rows(no_pixel), horizons=HORIZONS)[3].verdict == NOT_MEASURED
    no_spread = assess_findings(_rows(spread_skill={}), horizons=HORIZONS)[4]
    assert no_spread.verdict == NOT_MEASURED
    assert _verdicts(assess_findings([])) == dict.fromkeys(range(1, 7), NOT_MEASURED)
    # Guided diffusion bears on no finding.
    guided = [{**r, "method": "guided diffusion"} for r in _rows() if r["method"] == "diffusion"]
    assert _verdicts(assess_findings(guided, horizons=HORIZONS)) == dict.fromkeys(range(1, 7), NOT_MEASURED)


# ------------------------------------------------------------------------------- outputs


class _FakeClient:
    def __init__(self):
        self.metrics, self.tags = {}, {}

    def log_metric(self, run_id, key, value):
        self.metrics[key] = value

    def set_tag(self, run_id, key, value):
        self.tags[key] = value


def test_the_table_as_csv_text_html_and_mlflow():
    findings = assess_findings(_rows(**PERTURBATIONS[3], table_7={}), horizons=HORIZONS)
    verdicts = _verdicts(findings)
    assert verdicts[3] == NOT_SHOWN and verdicts[6] == NOT_MEASURED

    parsed = list(csv.DictReader(io.StringIO(findings_csv(findings))))
    assert [int(r["finding"]) for r in parsed] == [1, 2, 3, 4, 5, 6]
    assert [r["verdict"] for r in parsed] == [verdicts[n] for n in range(1, 7)]
    assert parsed[2]["figures"] == findings[2].figures and parsed[2]["test"] == findings[2].test

    text = findings_text(findings).splitlines()
    assert len(text) == 2 + 6 and text[0].startswith("| # | finding (paper)")
    assert "| not shown " in text[2 + 2] and "| not measured " in text[2 + 5]

    page = findings_html(findings, caption="Findings <this run>")
    assert "Findings &lt;this run&gt;" in page
    assert re.findall(r'data-verdict="([^"]+)"', page) == [verdicts[n] for n in range(1, 7)]

    assert findings_metrics(findings) == {
        "finding/1_shown": 1.0,
        "finding/2_shown": 1.0,
        "finding/3_shown": 0.0,
        "finding/4_shown": 1.0,
        "finding/5_shown": 1.0,
    }
    client = _FakeClient()
    log_findings(client, "run", findings)
    assert client.metrics == findings_metrics(findings)
    assert client.tags["finding/3"] == NOT_SHOWN and client.tags["finding/6"] == NOT_MEASURED
    assert client.tags["findings/shown"] == "4 of 5 measured"


# -------------------------------------------------------------------------- study report


def _evaluation(method: str, rate: float, tmp_path) -> Evaluation:
    """A hand-made evaluation of the paper's numbers, as :func:`load_evaluations` reads it."""
    kind = method.removeprefix("pixel ")
    recon = dict(zip(HORIZONS, TABLE_6[("autoencoder", rate)])) if rate > 1 else None
    rows, per_lead = [], []
    for context in (1, 2, "all"):
        # Context 1 a little worse, as in Table 7; "all" the Table 6 value.
        scale = {1: 1.05, 2: 0.98, "all": 1.0}[context]
        for horizon, value in zip(HORIZONS, TABLE_6[(method, rate)]):
            row = {
                "method": method,
                "compression": rate,
                "context": context,
                "horizon": horizon,
                "reference": "absolute",
                "vrmse": value * scale,
                "psrmse_high": value,
                "spread_skill": SPREAD_SKILL[rate][HORIZONS.index(horizon)] if kind == "diffusion" else 0.0,
            }
            rows.append(row)
    for lead in (4, 40, 80):
        per_lead.append(
            {
                "method": method,
                "compression": rate,
                "reference": "absolute",
                "context": 1,
                "lead": lead,
                "vrmse": 0.1 * lead / 40,
                "psrmse_high": 0.1,
                "spread_skill": 0.9 if kind == "diffusion" else 0.0,
            }
        )
    summary = {
        "method": method,
        "kind": kind,
        "compression": rate,
        "horizons": list(HORIZONS),
        "config": {"contexts": [1, 2], "steps": 8 if kind == "diffusion" else None},
        "recon_vrmse_by_horizon": recon,
        "autoencoder": f"ae{rate:g}" if recon else None,
        "emulator": f"{method}{rate:g}",
        "infer_ms_per_state": 1.0,
    }
    # Per scored unit: the model (both references, each context) and the baselines.
    rng = np.random.default_rng(int(rate))
    hard = np.exp(0.05 * rng.standard_normal(UNITS))
    hard /= hard.mean()
    per_trajectory, baselines = [], []
    for u in range(UNITS):
        for context in (1, 2):
            for reference in ("absolute", "relative"):
                row = {"method": method, "compression": rate, "reference": reference, "context": context}
                row |= {"trajectory": u, "start": 0}
                for j, horizon in enumerate(HORIZONS):
                    row[f"vrmse/{horizon}"] = (
                        TABLE_6[(method, rate)][j] * {1: 1.05, 2: 0.95}[context] * hard[u]
                    )
                    spread = SPREAD_SKILL[rate][j] if kind == "diffusion" else 0.0
                    row[f"spread_skill/{horizon}"] = spread if reference == "relative" else 0.8 * spread
                per_trajectory.append(row)
        persistence = {f"vrmse/{h}": v for h, v in zip(HORIZONS, PERSISTENCE)}
        baselines.append(
            {"method": "persistence", "compression": "", "reference": "absolute", "context": "all"}
        )
        baselines[-1] |= {"trajectory": u, "start": 0, **persistence}
        if recon:
            for name, factor in (("autoencoder", 1.0), ("pca", PCA_FACTOR)):
                values = {f"vrmse/{h}": v * factor * hard[u] for h, v in recon.items()}
                baselines.append(
                    {"method": name, "compression": rate, "reference": "absolute", "context": "all"}
                )
                baselines[-1] |= {"trajectory": u, "start": 0, **values}
    artifact = Artifact("evaluation", f"{method}-{rate:g}", str(tmp_path / f"{method}-{rate:g}"))
    return Evaluation(
        artifact=artifact,
        summary=summary,
        rows=rows,
        per_lead=per_lead,
        per_trajectory=per_trajectory,
        baselines=baselines,
    )


def test_the_study_report_holds_the_findings_table(tmp_path):
    evaluations = [
        _evaluation(method, rate, tmp_path)
        for method, rate in TABLE_6
        if method != "autoencoder"  # reconstruction comes with the latent evaluations
    ]
    study = write_study_report(evaluations, tmp_path / "study", title="Hand-made study")
    assert _verdicts(study.findings) == dict.fromkeys(range(1, 7), SHOWN), [
        (f.number, f.why) for f in study.findings
    ]
    folder = tmp_path / "study"
    assert {folder / "study_findings.csv", folder / "study_findings.txt"} <= set(study.files)
    parsed = list(csv.DictReader(io.StringIO((folder / "study_findings.csv").read_text())))
    assert [r["verdict"] for r in parsed] == [SHOWN] * 6
    page = (folder / "study.html").read_text(encoding="utf-8")
    assert page.count('<table class="metric-table findings">') == 1
    assert re.findall(r'data-verdict="([^"]+)"', page) == [SHOWN] * 6
    assert "Reconstruction error grows clearly with the compression rate." in page
    # The findings are the report's first section, ahead of the tables.
    assert page.index("metric-table findings") < page.index('<table class="metric-table">')

    # The same study with the pixel solver doing better than every latent emulator at 1:20.
    better_pixel = _with(TABLE_6, ("pixel solver", 1), (0.05, 0.397, 1.102))
    evaluations[-4] = _evaluation("pixel solver", 1, tmp_path)
    for row in evaluations[-4].rows:
        if row["horizon"] == "lead_1-20":
            row["vrmse"] = better_pixel[("pixel solver", 1)][0]
    for row in evaluations[-4].per_trajectory:  # the findings read the scored units
        row["vrmse/lead_1-20"] = better_pixel[("pixel solver", 1)][0]
    study = write_study_report(evaluations, tmp_path / "again", title="Hand-made study")
    assert _verdicts(study.findings)[4] == NOT_SHOWN
    page = (tmp_path / "again" / "study.html").read_text(encoding="utf-8")
    assert re.findall(r'data-verdict="([^"]+)"', page)[3] == NOT_SHOWN


def test_replicates_are_averaged_per_trajectory():
    """``--seeds``: each unit's value is the mean over its replicates, so two replicates that
    straddle the paper's numbers show what the numbers themselves show."""
    base = _rows()
    replicated = [{**r, "replicate": 0, "vrmse": r["vrmse"] * 0.9} for r in base if "vrmse" in r]
    replicated += [{**r, "replicate": 1, "vrmse": r["vrmse"] * 1.1} for r in base if "vrmse" in r]
    replicated += [r for r in base if "vrmse" not in r]
    findings = assess_findings(replicated, horizons=HORIZONS)
    assert _verdicts(findings) == _verdicts(assess_findings(base, horizons=HORIZONS))
    assert findings[0].figures == assess_findings(base, horizons=HORIZONS)[0].figures
