"""`scanlens dashboard`: a live page in its own process, tested in a real headless browser.

The browser is Debian's chromium (`apt-get install -y chromium`), driven by Playwright's Python API with
``executable_path``; nothing downloads a browser. Without chromium the browser test is skipped — except
under CI=true, where it fails (``.ci/run`` installs chromium). The other tests need no browser: the page's
single dirty slot and rate cap, what a page joining late gets, and the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scanlens.app.cli import app
from scanlens.app.config import Settings
from scanlens.client import Instrument, Received
from scanlens.dashboard import DashboardState, Page, PageCursor, unpack, update
from scanlens.dashboard import defaults
from scanlens.model_files import MODEL_DIR
from scanlens.protocol.messages import ArraySpec, Maps, ScanStarted, ScanSummary
from scanlens.testing import loopback_settings, serving

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI") == "true"
runner = CliRunner()


# ------------------------------------------------------------------ without a browser

def test_defaults_are_the_services():
    fields = Settings.model_fields
    assert (defaults.PUBLISH, defaults.CONTROL) == (fields["publish"].default, fields["control"].default)
    assert defaults.HOST == "127.0.0.1"


def test_help_explains_the_command():
    result = runner.invoke(app, ["dashboard", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    for option in ("--publish", "--control", "--host", "--port", "--max-rate-hz", "--allow-remote"):
        assert option in words
    assert "own process" in words and "never slows acquisition" in words


def test_a_non_loopback_host_needs_an_explicit_flag():
    result = runner.invoke(app, ["dashboard", "--host", "0.0.0.0", "--port", "0"], terminal_width=200)
    assert result.exit_code == 2
    words = " ".join(result.output.split())
    assert "refusing to serve the dashboard on 0.0.0.0" in words and "SSH tunnel" in words and "--allow-remote" in words


def test_the_page_is_package_data_and_loads_nothing_from_elsewhere():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["scanlens.dashboard"]
    static = ROOT / "service" / "dashboard" / "static"
    files = {p.relative_to(static.parent).as_posix() for p in static.rglob("*") if p.is_file()}
    assert {"static/index.html", "static/app.js", "static/style.css"} <= files
    assert all(any(fnmatch.fnmatch(f, glob) for glob in package_data) for f in files), (files, package_data)
    for f in files:  # no CDN, no remote font or script: everything comes from the dashboard itself
        text = (static.parent / f).read_text(encoding="utf-8")
        assert not re.search(r"https?://|(src|href)=[\"']//|@import|url\(", text), f


ROWS, COLS = 40, 16
SPECS = [ArraySpec(name="class", dtype="uint8", shape=[], labels=["a", "b", "c"]),
         ArraySpec(name="confidence", dtype="float32", shape=[]),
         ArraySpec(name="abundance", dtype="float32", shape=[3], labels=["a", "b", "c"], units=["fraction"] * 3)]


def started(scan_id: str = "s1") -> Received:
    h = ScanStarted(scan_id=scan_id, modality="eels", shape=(ROWS, COLS), recognizers=["rec"],
                    outputs={"rec": SPECS}, axis={"size": 8, "offset": 0.0, "scale": 1.0, "units": "eV"},
                    scan_step={"size": 0.4, "units": "nm"})
    return Received(f"scan/{scan_id}/started", h, {})


def line(row: int, scan_id: str = "s1") -> Received:
    arrays = {"class": np.full(COLS, row % 3, np.uint8), "confidence": np.full(COLS, 0.5 + row / 100, np.float32),
              "abundance": np.full((COLS, 3), row / ROWS, np.float32)}
    specs = [s.model_copy(update={"shape": [COLS, *s.shape]}) for s in SPECS]
    h = Maps(scan_id=scan_id, recognizer="rec", seq=row, row=row, col0=0, n_pixels=COLS, latency_ms=1.0 + row,
             arrays=specs)
    return Received(f"scan/{scan_id}/maps", h, arrays)


def test_a_page_gets_the_scan_so_far_then_only_new_rows():
    state = DashboardState()
    state.on_message(started())
    for row in range(10):
        state.on_message(line(row))
    late = PageCursor()
    late.select("s1")
    header, arrays = unpack(update(state, late))
    scan = header["scan"]
    assert scan["full"] and scan["started"]["scan_step"] == {"size": 0.4, "units": "nm"}
    assert scan["rows"] == [0, 10]  # everything the scan has so far, though the page joined after it
    assert arrays["rec/class"].shape == (10, COLS) and (arrays["rec/class"][4] == 1).all()
    assert arrays["rec/filled"].all() and sum(scan["hist"]) == 10
    for row in (10, 11, 12):
        state.on_message(line(row))
    header, arrays = unpack(update(state, late))
    assert not header["scan"]["full"] and header["scan"]["rows"] == [10, 13]  # only what it has not seen
    assert arrays["rec/abundance"].shape == (3, COLS, 3)
    header, arrays = unpack(update(state, late))
    assert header["scan"]["rows"] is None and "rec/class" not in arrays  # nothing new
    # a summary that counts pixels the dashboard never received: recover them from a snapshot
    summary = ScanSummary(scan_id="s1", state="complete", pixels_expected=ROWS * COLS, pixels_received=ROWS * COLS,
                          pixels_recognized=ROWS * COLS, messages_received=ROWS, lost=[], rejected=[], duration_s=1.0,
                          recognizers={"rec": {"pixels_recognized": ROWS * COLS}})
    assert state.on_message(Received("scan/s1/summary", summary, {})) == "s1"
    assert state.scan_list()[0]["state"] == "complete"


class SilentSocket:
    """A websocket whose browser never reads or answers: sends complete (into the kernel's buffer), nothing
    comes back."""

    def __init__(self):
        self.sent: list[bytes] = []

    async def receive(self):
        await asyncio.Event().wait()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


class AckingSocket(SilentSocket):
    """A page that acknowledges every frame at once."""

    def __init__(self):
        super().__init__()
        self.acks: asyncio.Queue = asyncio.Queue()

    async def receive(self):
        await self.acks.get()
        return {"type": "websocket.receive", "text": f'{{"ack": {len(self.sent)}}}'}

    async def send_bytes(self, data: bytes) -> None:
        await super().send_bytes(data)
        self.acks.put_nowait(None)


async def test_one_dirty_slot_per_page_a_page_that_never_reads_holds_one_frame():
    state = DashboardState()
    state.on_message(started())
    silent, acking = SilentSocket(), AckingSocket()
    pages = [Page(silent, state, max_rate_hz=20.0), Page(acking, state, max_rate_hz=20.0)]
    for p in pages:
        p.cursor.select("s1")
    tasks = [asyncio.create_task(p.run()) for p in pages]
    t0 = time.monotonic()
    try:
        for row in range(ROWS):  # 40 lines in 1 s: more changes than the 20 Hz cap lets through
            state.on_message(line(row))
            await asyncio.sleep(1 / ROWS)
        await asyncio.sleep(0.2)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - t0
    assert len(silent.sent) == 1  # it never acknowledged: one frame in flight, nothing queued behind it
    assert 5 <= len(acking.sent) <= 20 * elapsed + 1  # capped at 20 Hz, yet it kept up
    rows = set()
    for frame in acking.sent:
        header, _ = unpack(frame)
        if header["scan"]["rows"]:
            rows.update(range(*header["scan"]["rows"]))
    assert rows == set(range(ROWS))  # fewer, newer updates: every line arrived, batched
    assert state._listeners == set()  # pages unregister when they go


async def _http_get(url: str, host: str | None = None) -> tuple[int, bytes]:
    """Status and body of a GET (HTTP/1.0, no client library needed)."""
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    h, port = hostport.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(h, int(port))
    try:
        path = "/" + url.split("//", 1)[1].split("/", 1)[1]
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host or hostport}\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_dashboard_started_after_the_scans_shows_them_from_snapshots(server, clients):
    """Scans begun before the dashboard: it asks ``scans`` and a ``snapshot`` of each, and a page gets them."""
    from websockets.asyncio.client import connect

    from scanlens.dashboard import running_dashboard
    from scanlens.testing import band_axis, band_spectra, send_band_scan, wait_for_summary

    inst, sub, _ = clients
    truth = np.random.default_rng(1).integers(0, 3, size=(6, 8))
    await send_band_scan(inst, "done", truth)
    await wait_for_summary(sub, "done")
    async with inst.scan("running", "eels", (10, 8), band_axis()) as scan:
        for row in range(4):
            await scan.send_line(row, band_spectra(truth[row % 6]))
        await asyncio.sleep(0.3)  # recognized: the snapshot holds these rows
        async with running_dashboard(server.endpoints["publish"], server.endpoints["control"], port=0) as dash:
            state = dash.state
            for _ in range(200):
                if {"done", "running"} <= set(state.scans) and state.scans["running"].result.filled["band"].sum():
                    break
                await asyncio.sleep(0.05)
            done, running = state.scans["done"], state.scans["running"]
            assert done.summary is not None and done.summary.state == "complete" and done.recovered
            assert (done.result.maps["band"]["class"] == truth).all()
            assert running.open and running.result.filled["band"][:4].all()
            status, body = await _http_get(dash.url + "healthz")
            assert status == 200 and b'"connected":true' in body
            status, _ = await _http_get(dash.url, host="evil.example:80")  # DNS rebinding: not a loopback name
            assert status == 403
            status, body = await _http_get(dash.url)
            assert status == 200 and b"app.js" in body
            async with connect(dash.url.replace("http", "ws") + "ws") as ws:
                await ws.send('{"select": "running"}')
                for _ in range(20):
                    header, arrays = unpack(await asyncio.wait_for(ws.recv(), 10))
                    await ws.send(f'{{"ack": {header["frame"]}}}')
                    if header["scan"] and header["scan"]["rows"]:
                        break
                assert header["scan"]["id"] == "running" and header["scan"]["full"]
                assert arrays["band/filled"][:4].all()
                assert [s["id"] for s in header["scans"]] == ["done", "running"]
            with pytest.raises(Exception):  # another site's page may not read the maps
                async with connect(dash.url.replace("http", "ws") + "ws", origin="http://evil.example") as ws:
                    await ws.recv()
            await scan.send_line(4, band_spectra(truth[4]))


# ------------------------------------------------------------------ in a real browser

def _browser() -> str:
    why = None
    if not CHROMIUM.exists():
        why = f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            why = "needs playwright (the test extra)"
    if why is not None:
        if IN_CI:
            pytest.fail(f"CI=true: {why}; .ci/run installs chromium with apt-get before the tests")
        pytest.skip(why)
    return str(CHROMIUM)


@contextlib.asynccontextmanager
async def dashboard_process(publish: str, control: str, log: Path, *args: str):
    """`scanlens dashboard` as its own process on a free port; yields its URL."""
    err = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from scanlens.app.cli import main; main()", "dashboard", "--publish", publish,
        "--control", control, "--port", "0", *args, stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        m = re.search(r"on (http://\S+/)", first)
        assert m, f"no URL from the dashboard: {first!r} {log.read_text(errors='replace')}"
        yield m.group(1)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        err.close()


LINES_PER_S = 64
EELS_ROWS = 800  # 12.5 s at 64 lines/s: long enough to count redraws over 10 s


@pytest.mark.timeout(150)
async def test_live_page_in_a_headless_browser(tmp_path):
    chromium = _browser()
    from playwright.async_api import async_playwright

    from scanlens.sim import EELSConfig, EELSSource, STEMConfig, STEMSource, stream_movie, stream_scan

    settings = loopback_settings(MODEL_DIR, models=["eels-mlp", "eels-fit", "stem-unet"])
    sent = {"eels": 0}
    async with serving(settings) as server, \
            dashboard_process(server.endpoints["publish"], server.endpoints["control"], tmp_path / "dash.log") as url, \
            Instrument(server.endpoints["ingest"], linger_s=0) as inst_a, \
            Instrument(server.endpoints["ingest"], linger_s=0) as inst_b, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        streams: list[asyncio.Task] = []
        try:
            page = await browser.new_page(viewport={"width": 1480, "height": 980})
            await page.goto(url + "#scan=eels-live")
            await page.wait_for_function("window.__dash.frames > 0 && document.getElementById('conn').className"
                                         ".includes('on')", timeout=20_000)
            dwell_s = 1.0 / (LINES_PER_S * 128)  # 128 columns -> 64 lines/s
            eels = asyncio.create_task(stream_scan(
                inst_a, EELSSource(EELSConfig(rows=EELS_ROWS, cols=128, seed=3)), "eels-live", dwell_s=dwell_s,
                progress=lambda done, total: sent.__setitem__("eels", done)))
            movie = asyncio.create_task(stream_movie(
                inst_b, STEMSource(STEMConfig(size=256, frames=64, n_defects=6, seed=2)), "movie-live",
                frame_interval_s=0.25))
            streams += [eels, movie]
            await page.wait_for_function("window.__redraws > 0 && window.__dash.mapsDrawn > 0", timeout=20_000)
            (r0, f0), t0 = await page.evaluate("[window.__redraws, window.__dash.frames]"), time.monotonic()

            # a second page joins mid-scan: it shows the lines sent before it came
            await asyncio.sleep(4.0)
            late = await browser.new_page(viewport={"width": 1480, "height": 980})
            joined_at = sent["eels"]
            await late.goto(url + "#scan=eels-live")
            await late.wait_for_function("window.__redraws > 0 && window.__dash.rowsFilled > 0", timeout=20_000)
            got = await late.evaluate("({rows: window.__dash.rowsFilled, row0: window.__dash.row0})")
            since = sent["eels"] - joined_at
            assert got["row0"] and got["rows"] > since, (got, joined_at, since)
            await late.screenshot(path=str(tmp_path / "dashboard-late-joiner.png"))
            await late.close()

            await asyncio.sleep(max(0.0, t0 + 10.0 - time.monotonic()))
            (r1, f1), t1 = await page.evaluate("[window.__redraws, window.__dash.frames]"), time.monotonic()
            rate = (r1 - r0) / (t1 - t0)
            print(f"redraws with new data: {rate:.1f}/s over {t1 - t0:.1f} s, frames {(f1 - f0) / (t1 - t0):.1f}/s "
                  f"({LINES_PER_S} lines/s sent, cap {defaults.MAX_RATE_HZ:g} Hz)")
            assert rate >= 10, rate
            assert sent["eels"] < EELS_ROWS, "the scan ended inside the window: the rate would be undercounted"

            report = await eels
            assert report.messages == EELS_ROWS
            await page.wait_for_function("document.querySelector('#scan-head .state').textContent === 'complete'",
                                         timeout=20_000)
            info = await page.evaluate("window.__dash")
            assert info["rowsFilled"] == EELS_ROWS and info["errors"] == 0, info
            assert info["mapsDrawn"] >= 10  # eels-mlp: class, confidence, 3 abundances, novelty, novel; eels-fit ...
            text = await page.inner_text("body")
            assert "STO" in text and "fraction" in text and "scan step 0.4 nm" in text
            await page.hover("canvas.map", position={"x": 20, "y": 40})  # the per-pixel outputs under the cursor
            await page.wait_for_function("document.getElementById('readout').textContent.includes('confidence')")
            readout = await page.inner_text("#readout")
            assert "no raw spectra" in text and re.match(r"row \d+, col \d+ — x [\d.]+ nm, y [\d.]+ nm", readout), readout
            await asyncio.sleep(0.5)  # the next heartbeats: counters after the summary
            await page.screenshot(path=str(tmp_path / "dashboard.png"))
            if os.environ.get("SCANLENS_UPDATE_PICTURES") == "1":  # the README's picture, on request only
                await page.screenshot(path=str(ROOT / "docs" / "img" / "dashboard.png"))

            # the movie: frames with atoms, defects and their tracks, D in nm^2/s
            await page.evaluate("location.hash = '#scan=movie-live'")
            await page.wait_for_function("window.__dash.movieFrame >= 8 && window.__dash.atomsDrawn > 0 && "
                                         "window.__dash.defectsDrawn > 0 && window.__dash.tracksDrawn > 0",
                                         timeout=20_000)
            await movie
            await page.wait_for_function("document.querySelector('#scan-head .state').textContent === 'complete'",
                                         timeout=20_000)
            text = await page.inner_text("body")
            assert "frame interval 0.25 s" in text and "metal_vacancy" in text
            assert "diffusion" in text.lower() and "nm²/s" in text  # D with units (the movie had frame_interval_s)
            await asyncio.sleep(0.5)
            await page.screenshot(path=str(tmp_path / "dashboard-movie.png"))
            assert (await page.evaluate("window.__dash.errors")) == 0
        finally:
            for t in streams:
                t.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            await browser.close()
    for name in ("dashboard.png", "dashboard-late-joiner.png", "dashboard-movie.png"):
        assert (tmp_path / name).stat().st_size > 10_000
