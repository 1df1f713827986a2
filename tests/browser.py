"""Headless Chromium (Debian's package) driven over the DevTools protocol, for report tests.

``Chromium.load(path, expected_figures=...)`` opens a page, waits until its plotly figures
are drawn, and returns the console errors, rendered counts and a full-page screenshot;
:func:`assert_page_ok` holds the checks a report must pass.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def _png_stats(png: bytes) -> tuple[tuple[int, int], int, float]:
    """(size, number of distinct colours, fraction of pixels off the page background)."""

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
