"""Unit tests of evaluation/report.py: tables, figures, and the HTML report rendered in
headless Chromium (console errors, rendered plots, a non-blank screenshot).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so no Python package beyond the
standard library is needed. A missing Chromium is a failure, not a skip: install it with
``apt-get install -y chromium``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
from browser import _chromium_executable, assert_page_ok
from PIL import Image

from lolaray.evaluation.animation import animation_html, write_rollout_animation
from lolaray.evaluation.figures import (
    coverage_figure,
    metric_vs_lead_figure,
    power_spectrum_figure,
    rank_histogram_figure,
    reconstruction_figure,
    snapshot_grid_figure,
    spread_skill_figure,
)
from lolaray.evaluation.headline import headline_metrics
from lolaray.evaluation.report import (
    RawHTML,
    Section,
    write_figure_html,
    write_html_report,
)
from lolaray.evaluation.rollout import lead_times
from lolaray.evaluation.spectra import isotropic_power_spectrum
from lolaray.evaluation.study import Evaluation, write_study_report
from lolaray.evaluation.tables import (
    MetricTable,
    format_compression,
    horizon_title,
    metric_table,
)
from lolaray.platform.artifacts import Artifact

# ------------------------------------------------------------------ synthetic study

METHODS = {"autoencoder": (80, 320, 1280), "diffusion": (80, 320, 1280), "neural solver": (1, 80, 320, 1280)}
HORIZONS = ((1, 20), (21, 60), (61, 100))


def _study_rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Long-format rows per (method, compression, trajectory, lead) and the horizon rows
    averaged from them, with the paper's trends (error grows with lead and ÷)."""

    rng = np.random.default_rng(seed)
    leads = lead_times(26, 1, 4).tolist()
    per_lead, per_horizon = [], []
    for method, rates in METHODS.items():
        for rate in rates:
            base = {"autoencoder": 0.01, "diffusion": 0.05, "neural solver": 0.08}[method] * (
                1 + math.log(rate) / 8
            )
            for trajectory in range(3):
                values = {}
                for lead in leads:
                    vrmse = base * (1 + lead / 25) * (1 + 0.05 * rng.standard_normal())
                    ratio = (
                        0.0
                        if method != "diffusion"
                        else 0.95 - 0.02 * math.log(rate) + 0.02 * rng.standard_normal()
                    )
                    per_lead.append(
                        {
                            "method": method,
                            "compression": rate,
                            "trajectory": trajectory,
                            "lead": lead,
                            "vrmse": vrmse,
                            "spread_skill": ratio,
                        }
                    )
                    values[lead] = vrmse
                for first, last in HORIZONS:
                    inside = [v for lead, v in values.items() if first <= lead <= last]
                    per_horizon.append(
                        {
                            "method": method,
                            "compression": rate,
                            "trajectory": trajectory,
                            "horizon": f"lead_{first}-{last}",
                            "vrmse": sum(inside) / len(inside),
                        }
                    )
    return per_lead, per_horizon


def _snapshots(t: int = 6, size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    truth = np.stack([np.exp(-((x - 0.1 * i) ** 2 + y**2) * 4) + 0.1 * np.sin(6 * x) for i in range(t)])
    rng = np.random.default_rng(1)
    return truth, {
        "diffusion ÷80": truth + 0.05 * rng.standard_normal(truth.shape),
        "neural solver ÷80": 0.9 * truth,
    }


def _spectra() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 1, 64, 64, generator=g).cumsum(-1).cumsum(-2)
    v = u + 0.5 * torch.randn(1, 1, 64, 64, generator=g)
    k, p_u = isotropic_power_spectrum(u, spatial_dims=2)
    _, p_v = isotropic_power_spectrum(v, spatial_dims=2)
    return k, p_u.reshape(-1), {"diffusion ÷80": p_v.reshape(-1)}


def _report_sections() -> list[Section]:
    per_lead, per_horizon = _study_rows()
    table = metric_table(per_horizon, metric="vrmse", order=list(METHODS))
    truth, emulated = _snapshots()
    k, p_u, p_v = _spectra()
    recon = [r for r in per_horizon if r["method"] == "autoencoder"]
    emulators = [r for r in per_lead if r["method"] != "autoencoder"]
    return [
        Section("Summary", ["Synthetic study <not real data> & co.", table]),
        Section(
            "Emulation",
            [
                metric_vs_lead_figure(emulators, metric="vrmse", title="VRMSE", log_y=True),
                spread_skill_figure([r for r in per_lead if r["method"] == "diffusion"]),
            ],
        ),
        Section("Reconstruction", [reconstruction_figure(recon)]),
        Section("Spectra", [power_spectrum_figure(k, p_u, p_v)]),
        Section(
            "Snapshots",
            [snapshot_grid_figure(truth, emulated, leads=lead_times(6, 1, 4).tolist(), field="density")],
        ),
    ]


N_FIGURES = 5


# ------------------------------------------------------------------------------ tables


def test_metric_table_layout_csv_and_means():
    _, per_horizon = _study_rows()
    table = metric_table(per_horizon, metric="vrmse", order=list(METHODS))

    assert table.columns == ("lead_1-20", "lead_21-60", "lead_61-100")
    keys = [values for values, _ in table.rows]
    expected = [(m, r) for m, rates in METHODS.items() for r in rates]
    assert keys == expected  # Table 6 order: methods as given, ÷ ascending within

    # Cells are means over the three trajectories.
    for method, rate in expected:
        for column in table.columns:
            values = [
                r["vrmse"]
                for r in per_horizon
                if (r["method"], r["compression"], r["horizon"]) == (method, rate, column)
            ]
            assert table.cell(method, rate, column=column) == pytest.approx(sum(values) / 3)
    assert all(c == (3, 3, 3) for c in table.counts)

    parsed = list(csv.reader(io.StringIO(table.to_csv())))
    assert parsed[0] == ["method", "compression", "lead_1-20", "lead_21-60", "lead_61-100"]
    assert len(parsed) == 1 + len(expected)
    assert parsed[1][:2] == ["autoencoder", "80"]
    assert float(parsed[1][2]) == pytest.approx(table.rows[0][1][0], rel=1e-5)

    text = table.to_text()
    lines = text.splitlines()
    assert lines[0].split("|")[1:-1] == [
        " method        ",
        " ÷         ",
        "  1:20 ",
        " 21:60 ",
        " 61:100 ",
    ]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "| neural solver | 1 (pixel) |" in text
    assert str(table) == text

    html = table.to_html(caption="VRMSE <avg>")
    assert html.count("<tr>") == 1 + len(expected)
    assert "VRMSE &lt;avg&gt;" in html


def test_metric_table_missing_cells_nan_and_validation():
    rows = [
        {"method": "diffusion", "compression": 80, "horizon": "lead_21-60", "vrmse": 2.0},
        {"method": "diffusion", "compression": 80, "horizon": "lead_1-20", "vrmse": 1.0},
        {"method": "diffusion", "compression": 80, "horizon": "lead_1-20", "vrmse": float("nan")},
        {"method": "diffusion", "compression": 80, "horizon": "lead_1-20", "vrmse": 3.0},
        {"method": "solver", "compression": 320, "horizon": "lead_1-20", "vrmse": 5.0},
        {"method": "solver", "compression": 320, "horizon": "lead_1-20"},  # no metric: ignored
    ]
    table = metric_table(rows)
    assert table.columns == ("lead_1-20", "lead_21-60")  # sorted by the horizon's start
    assert table.cell("diffusion", 80, column="lead_1-20") == 2.0
    assert math.isnan(table.cell("solver", 320, column="lead_21-60"))
    assert "—" in table.to_text()
    assert table.to_csv().splitlines()[2] == "solver,320,5,"

    with pytest.raises(ValueError, match="horizon"):
        metric_table([{"method": "a", "compression": 1, "vrmse": 1.0}])

    assert horizon_title("lead_61-100") == "61:100" and horizon_title("all") == "all"
    assert format_compression(80.0) == "80" and format_compression(1) == "1 (pixel)"


# ----------------------------------------------------------------------------- figures


def test_figures_have_the_expected_traces():
    per_lead, per_horizon = _study_rows()

    fig = metric_vs_lead_figure(per_lead, metric="vrmse")
    assert len(fig.data) == sum(len(r) for r in METHODS.values())
    trace = next(t for t in fig.data if t.name == "diffusion ÷320")
    assert list(trace.x) == list(range(4, 101, 4))  # lead 0 dropped
    mean_at_4 = np.mean(
        [r["vrmse"] for r in per_lead if (r["method"], r["compression"], r["lead"]) == ("diffusion", 320, 4)]
    )
    assert trace.y[0] == pytest.approx(mean_at_4)
    # Same colour for the same ÷ across methods, different dashes across methods.
    solver = next(t for t in fig.data if t.name == "neural solver ÷320")
    assert solver.line.color == trace.line.color and solver.line.dash != trace.line.dash

    ss = spread_skill_figure([r for r in per_lead if r["method"] == "diffusion"])
    assert len(ss.data) == 3 and any(s.y0 == 1.0 for s in ss.layout.shapes)

    recon = reconstruction_figure([r for r in per_horizon if r["method"] == "autoencoder"])
    assert [t.name for t in recon.data] == ["lead 1:20", "lead 21:60", "lead 61:100"]
    assert list(recon.data[0].x) == [80, 320, 1280] and recon.layout.xaxis.type == "log"
    assert list(recon.data[0].y) == sorted(recon.data[0].y)  # error grows with ÷

    k, p_u, p_v = _spectra()
    spec = power_spectrum_figure(k, p_u, p_v)
    assert sorted(t.name for t in spec.data) == ["diffusion ÷80", "ground truth"]
    assert spec.data[-1].name == "ground truth"  # drawn on top
    assert spec.layout.xaxis.type == "log" and spec.layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="wavenumbers"):
        power_spectrum_figure(k, p_u[:-1], {})

    truth, emulated = _snapshots()
    grid = snapshot_grid_figure(truth, emulated, leads=lead_times(6, 1, 4).tolist())
    assert len(grid.data) == 3 * 4  # (truth + 2 emulators) × 4 lead times
    assert all(t.zmin == truth.min() and t.zmax == truth.max() for t in grid.data)
    assert sum(bool(t.showscale) for t in grid.data) == 1
    big = snapshot_grid_figure(np.zeros((2, 512, 512)), {}, leads=[0, 4], max_size=128)
    assert np.asarray(big.data[0].z).shape == (128, 128)
    with pytest.raises(ValueError, match="shape"):
        snapshot_grid_figure(truth, {"x": truth[:, :5]}, leads=range(6))


# -------------------------------------------------------------------------- HTML file


def test_report_is_self_contained(tmp_path):
    path = write_html_report(tmp_path / "sub" / "report.html", "Study <1>", _report_sections())
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # plotly.js inlined exactly once, no external script or CDN.
    assert text.count("plotly.js v") >= 1
    assert text.count('<script type="text/javascript">/**') <= 1
    # (plotly.js itself mentions cdn.plot.ly as a default topojson URL: look at tags only.)
    assert not re.search(r"<(script|link|img)[^>]*\b(src|href)\s*=", text, flags=re.IGNORECASE)
    assert text.count('class="plotly-graph-div"') == N_FIGURES
    assert text.count('<table class="metric-table">') == 1
    assert "Study &lt;1&gt;" in text and "Synthetic study &lt;not real data&gt; &amp; co." in text
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o644

    with pytest.raises(TypeError, match="cannot render"):
        write_html_report(tmp_path / "bad.html", "x", [("s", [object()])])
    assert not (tmp_path / "bad.html").exists()


def test_report_renders_in_chromium(chromium, tmp_path):
    sections = _report_sections()
    traces = sum(len(item.data) for s in sections for item in s.items if isinstance(item, go.Figure))
    path = write_html_report(tmp_path / "report.html", "Synthetic study", sections)
    result = chromium.load(path, expected_figures=N_FIGURES)
    (tmp_path / "report.png").write_bytes(result.screenshot)
    assert_page_ok(result, expected_figures=N_FIGURES, expected_traces=traces)

    single = write_figure_html(go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2])), tmp_path / "figure.html")
    one = chromium.load(single, expected_figures=1)
    assert not one.errors and one.rendered == 1


def test_chromium_check_catches_a_script_error(chromium, tmp_path):
    sections = _report_sections()
    sections.append(
        Section("Broken", [RawHTML("<script>window.reportBroken = undefinedHelper(1);</script>")])
    )
    path = write_html_report(tmp_path / "broken.html", "Broken", sections)
    result = chromium.load(path, expected_figures=N_FIGURES)
    assert any("undefinedHelper" in e for e in result.errors), result.errors
    with pytest.raises(AssertionError, match="errors"):
        assert_page_ok(result, expected_figures=N_FIGURES)


def test_chromium_check_catches_unrendered_figures(chromium, tmp_path):
    # A figure page whose plotly.js is missing (as a CDN one opened offline would be):
    # nothing renders and Plotly is undefined.
    fig = metric_vs_lead_figure(_study_rows()[0], metric="vrmse")
    path = tmp_path / "no-plotlyjs.html"
    path.write_text(pio.to_html(fig, full_html=True, include_plotlyjs=False), encoding="utf-8")
    result = chromium.load(path, expected_figures=1, timeout=5)
    assert result.rendered == 0
    assert any("Plotly is not defined" in e for e in result.errors), result.errors
    with pytest.raises(AssertionError):
        assert_page_ok(result, expected_figures=1)


def test_blank_screenshot_is_rejected(chromium, tmp_path):
    path = tmp_path / "blank.html"
    path.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    result = chromium.load(path, expected_figures=0, timeout=5)
    assert not result.errors
    with pytest.raises(AssertionError, match="bytes|colours|background"):
        assert_page_ok(result, expected_figures=0)


def test_missing_chromium_fails_with_install_hint(monkeypatch):
    monkeypatch.setenv("LOLARAY_CHROMIUM", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        _chromium_executable()


def test_metric_table_type_is_exported():
    assert isinstance(metric_table([]), MetricTable)


# ---------------------------------------------------------------- ensemble figures, animation, headline


def test_coverage_and_rank_histogram_figures():
    rows = [
        {"method": "diffusion", "compression": 64, "lead": lead, "coverage_50": 0.4, "coverage_90": 0.8}
        for lead in (2, 4, 6)
    ]
    fig = coverage_figure(rows)
    assert len(fig.data) == 2 and [t.name for t in fig.data] == [
        "diffusion ÷64 (50 %)",
        "diffusion ÷64 (90 %)",
    ]
    ranks = [
        {"horizon": h, "rank": r, "count": n}
        for h, counts in (("lead_1-20", (3, 1, 1, 3)), ("lead_21-60", (2, 2, 2, 2)))
        for r, n in enumerate(counts)
    ]
    bars = rank_histogram_figure(ranks)
    assert [t.name for t in bars.data] == ["1:20", "21:60"]
    # Frequency × (K + 1): a flat histogram is 1 everywhere; the U shape is above 1 at the ends.
    np.testing.assert_allclose(bars.data[1].y, 1.0)
    np.testing.assert_allclose(bars.data[0].y, [1.5, 0.5, 0.5, 1.5])


@pytest.mark.parametrize("shape", [(5, 8, 8), (3, 6, 6, 4)], ids=["2d", "3d"])
def test_rollout_animation_opens_with_one_frame_per_state(tmp_path, shape):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=shape)
    # Two identical consecutive states must still be two frames.
    truth[1] = truth[0]
    panels = {"truth": truth, "ensemble mean": 0.5 * truth, "member 0": truth + 0.1}
    path = write_rollout_animation(tmp_path / "rollout.gif", panels, leads=list(range(-1, shape[0] - 1)))
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == shape[0]
        assert gif.size[0] >= 3 * 96  # three panels, small grids enlarged
    assert animation_html(path, caption="a <caption>").count("data:image/gif;base64,") == 1
    with pytest.raises(ValueError, match="different shapes"):
        write_rollout_animation(tmp_path / "bad.gif", {"truth": truth, "member": truth[:2]})


def test_headline_metrics_per_method_and_rate_with_the_best_rate():
    def evaluation(method, rate, vrmse):
        rows = [
            {
                "reference": "absolute",
                "context": "all",
                "horizon": "lead_1-20",
                "vrmse": vrmse,
                "crps": 0.1,
                "psrmse_high": 0.3,
                "spread_skill": 0.9,
                "coverage_90": math.nan,
            },
            {"reference": "relative", "context": "all", "horizon": "lead_1-20", "vrmse": 99.0},
            {"reference": "absolute", "context": 1, "horizon": "lead_1-20", "vrmse": 98.0},
        ]
        summary = {"method": method, "compression": rate, "infer_ms_per_state": 2.0, "recon_vrmse": None}
        return SimpleNamespace(summary=summary, rows=rows)

    metrics = headline_metrics(
        [
            evaluation("diffusion", 16.0, 0.5),
            evaluation("diffusion", 64.0, 0.2),
            evaluation("pixel solver", 1.0, 0.7),
        ]
    )
    assert metrics["diffusion/x16/vrmse/lead_1-20"] == 0.5 and metrics["diffusion/x64/vrmse/lead_1-20"] == 0.2
    assert metrics["pixel_solver/x1/psrmse/high/lead_1-20"] == 0.3
    assert metrics["diffusion/x64/infer_ms_per_state"] == 2.0
    assert metrics["best_compression/diffusion/vrmse/lead_1-20"] == 64.0
    assert "best_compression/pixel_solver/vrmse/lead_1-20" not in metrics  # one rate: nothing to pick
    assert not any("coverage_90" in name or "recon_vrmse" in name for name in metrics)  # NaN / None left out
    assert all(re.fullmatch(r"[A-Za-z0-9_./-]+", name) for name in metrics)


def test_study_report_shows_crps_coverage_and_rollouts(tmp_path):
    horizons = ["lead_1-20", "lead_21-60"]
    gif = write_rollout_animation(tmp_path / "r.gif", {"truth": np.zeros((3, 4, 4))}).read_bytes()

    def evaluation(method, crps, coverage):
        rows = [
            {
                "method": method,
                "compression": 16.0,
                "context": "all",
                "horizon": h,
                "reference": "absolute",
                "vrmse": 0.5,
                "spread_skill": 0.8,
                "psrmse_high": 0.2,
                "crps": crps,
                "coverage_90": coverage,
            }
            for h in horizons
        ]
        per_lead = [
            {
                "method": method,
                "compression": 16.0,
                "reference": "absolute",
                "context": 1,
                "lead": lead,
                "vrmse": 0.5,
                "spread_skill": 0.8,
                "psrmse_high": 0.2,
                "crps": crps,
                "coverage_50": 0.4,
                "coverage_90": coverage,
            }
            for lead in (2, 30)
        ]
        summary = {
            "method": method,
            "kind": method,
            "compression": 16.0,
            "horizons": horizons,
            "config": {"contexts": [1]},
            "infer_ms_per_state": 1.0,
        }
        artifact = Artifact("evaluation", method, str(tmp_path / method))
        return Evaluation(
            artifact=artifact,
            summary=summary,
            rows=rows,
            per_lead=per_lead,
            animation=gif if method == "diffusion" else None,
        )

    study = write_study_report(
        [evaluation("diffusion", 0.11, 0.85), evaluation("solver", 0.22, math.nan)], tmp_path / "study"
    )
    html = (tmp_path / "study" / "study.html").read_text()
    assert html.count("data:image/gif;base64,") == 1 and "Coverage of the central intervals" in html
    crps = study.tables["crps"].to_csv()
    assert "0.11" in crps and "0.22" in crps
    assert "0.85" in study.tables["coverage_90"].to_csv()
    assert (tmp_path / "study" / "study_crps.csv").exists() and (
        tmp_path / "study" / "study_coverage_90.csv"
    ).exists()
