"""Unit tests of evaluation/report.py: tables, figures, and the HTML report rendered in
headless Chromium (console errors, rendered plots, a non-blank screenshot).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so no Python package beyond the
standard library is needed. A missing Chromium is a failure, not a skip: install it with
``apt-get install -y chromium``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fcntl
import io
import itertools
import json
import math
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from lolaray.evaluation.metrics import isotropic_power_spectrum
from lolaray.evaluation.report import (
    MetricTable,
    RawHTML,
    Section,
    format_compression,
    horizon_title,
    metric_table,
    metric_vs_lead_figure,
    power_spectrum_figure,
    reconstruction_figure,
    snapshot_grid_figure,
    spread_skill_figure,
    write_figure_html,
    write_html_report,
)
from lolaray.evaluation.rollout import lead_times

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


# --------------------------------------------------------------- headless Chromium (CDP)

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium_executable() -> str:
    explicit = os.environ.get("LOLARAY_CHROMIUM")
    found = explicit or next((p for p in map(shutil.which, _CHROMIUM_NAMES) if p), None)
    if not found:
        pytest.fail(
            "headless Chromium is needed to check the HTML report but was not found "
            f"(looked for {', '.join(_CHROMIUM_NAMES)} on PATH and $LOLARAY_CHROMIUM). "
            "Install it with: apt-get install -y chromium",
            pytrace=False,
        )
    return found


@dataclass
class PageResult:
    """What a page did: its errors (uncaught exceptions, console.error/assert, error
    log entries such as failed loads), the DOM counts and a PNG screenshot."""

    errors: list[str] = field(default_factory=list)
    plots: int = 0
    rendered: int = 0
    traces: int = 0
    main_svgs: int = 0
    screenshot: bytes = field(default=b"", repr=False)


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (stdlib only)."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="lolaray-chromium-")
        cmd_read, self._cmd_write = os.pipe()
        self._resp_read, resp_write = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. The pipe ends are
        # duplicated above any low fd, passed to bash (dash only knows fds 0-9), which moves them into place
        # and execs Chromium (thread-safe, unlike a preexec_fn).
        high_cmd = fcntl.fcntl(cmd_read, fcntl.F_DUPFD_CLOEXEC, 10)
        high_resp = fcntl.fcntl(resp_write, fcntl.F_DUPFD_CLOEXEC, 10)
        wire = f'exec "$@" 3<&{high_cmd} 4>&{high_resp} {high_cmd}<&- {high_resp}>&-'

        args = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            "--allow-file-access-from-files",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", wire, "chromium", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            pass_fds=(high_cmd, high_resp),
        )
        for fd in (cmd_read, resp_write, high_cmd, high_resp):
            os.close(fd)

        self._ids = itertools.count(1)
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        buffer = b""
        with os.fdopen(self._resp_read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)  # the browser closed the pipe

    def _pump(self, timeout: float) -> None:
        message = self._messages.get(timeout=timeout)
        if message is None:
            raise RuntimeError(f"Chromium exited (rc={self.process.poll()}): {self._stderr_tail()}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]

    def send(
        self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 30
    ):
        ident = next(self._ids)
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while ident not in self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            try:
                self._pump(remaining)
            except queue.Empty:
                continue
        reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, session: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {timeout} s")
            try:
                self._pump(remaining)
            except queue.Empty:
                pass

    def load(self, path: Path, *, expected_figures: int, timeout: float = 60) -> PageResult:
        """Opens a file in a fresh tab, waits for the load event and for the expected
        number of plotly figures to render (or the timeout), collects errors and takes
        a full-page screenshot."""

        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Page"):
                self.send(f"{domain}.enable", session=session)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            navigation = self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            assert "errorText" not in navigation, navigation
            self.wait_event("Page.loadEventFired", session, timeout=timeout)

            # A plot is rendered once Plotly has laid it out (_fullLayout) and drawn its
            # traces: a <g class="trace"> per scatter trace, an <image> per heatmap.
            probe = """JSON.stringify((() => {
                const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
                const drawn = d => d.querySelectorAll('g.trace').length + d.querySelectorAll('g.hm image').length;
                return {plots: divs.length,
                        rendered: divs.filter(d => d._fullLayout && drawn(d) > 0).length,
                        traces: divs.reduce((n, d) => n + drawn(d), 0),
                        svgs: document.querySelectorAll('.plotly-graph-div svg.main-svg').length};
            })())"""
            deadline = time.monotonic() + timeout
            while True:
                value = self.send(
                    "Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session
                )
                counts = json.loads(value["result"]["value"])
                if counts["rendered"] >= expected_figures or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            # Two animation frames: let the last paint land before the screenshot.
            self.send(
                "Runtime.evaluate",
                {
                    "expression": "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))",
                    "awaitPromise": True,
                },
                session=session,
            )
            metrics = self.send("Page.getLayoutMetrics", session=session)
            size = metrics["cssContentSize"]
            shot = self.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {
                        "x": 0,
                        "y": 0,
                        "width": size["width"],
                        "height": min(size["height"], 8000),
                        "scale": 1,
                    },
                },
                session=session,
                timeout=timeout,
            )
            # Drain what arrived meanwhile (late console errors).
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                try:
                    self._pump(0.05)
                except queue.Empty:
                    pass
            return PageResult(
                errors=self._errors(session),
                plots=counts["plots"],
                rendered=counts["rendered"],
                traces=counts["traces"],
                main_svgs=counts["svgs"],
                screenshot=base64.b64decode(shot["data"]),
            )
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    def _errors(self, session: str) -> list[str]:
        errors = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(
                    details.get("exception", {}).get("description") or details.get("text", "exception")
                )
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                )
            elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
        return errors

    def close(self):
        # The browser may already be gone; the process wait below is what matters.
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()  # only the browser this fixture started
            self.process.wait(timeout=15)
        os.close(self._cmd_write)
        self.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def chromium():
    browser = Chromium(_chromium_executable())
    try:
        browser.send("Browser.getVersion", timeout=60)
        yield browser
    finally:
        browser.close()


def _png_stats(png: bytes) -> tuple[tuple[int, int], int, float]:
    """(size, number of distinct colours, fraction of pixels off the page background)."""

    from PIL import Image  # pillow comes with matplotlib, a project dependency

    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = np.asarray(image).reshape(-1, 3)
    colours = np.unique(pixels, axis=0).shape[0]
    background = pixels[0]
    return image.size, colours, float((pixels != background).any(axis=1).mean())


def assert_page_ok(result: PageResult, *, expected_figures: int, expected_traces: int | None = None) -> None:
    """The checks a report must pass: no error, every figure (and trace) rendered, a
    real picture."""

    assert not result.errors, f"the page logged errors: {result.errors}"
    assert result.plots == expected_figures, f"{result.plots} plot containers, expected {expected_figures}"
    assert result.rendered == expected_figures, f"{result.rendered}/{expected_figures} figures rendered"
    assert result.main_svgs >= expected_figures
    if expected_traces is not None:
        assert result.traces == expected_traces, f"{result.traces}/{expected_traces} traces drawn"
    assert len(result.screenshot) > 20_000, f"screenshot of only {len(result.screenshot)} bytes"
    size, colours, ink = _png_stats(result.screenshot)
    assert size[0] >= 1000 and size[1] >= 900, size
    assert colours > 200, f"screenshot has {colours} colours: blank or near-blank"
    assert ink > 0.05, f"only {ink:.1%} of the screenshot differs from the background"


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
