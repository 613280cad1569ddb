"""The Nion Swift plug-in (service/nionswift), headless: nionswift-usim's STEM with its EELS camera, a
synchronized spectrum image acquired through Swift's own acquisition code, a real scanlens service.

Needs Swift (``pip install "scanlens[nionswift]"``, Python 3.11: nionswift 16.16.2, nionswift-instrumentation
23.6.2, nionswift-usim 5.4.2); skipped where it is not installed. Tests are synchronous: Swift's test
context owns the main thread's event loop, so the service runs on a loop of its own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if os.environ.get("CI") != "true":  # CI installs the nionswift extra (in `test`): missing there is a failure
    pytest.importorskip("nion.swift", reason="needs the nionswift extra: pip install -e '.[test]'")
    pytest.importorskip("nion.instrumentation")
    pytest.importorskip("nion.usim_device")

from nion.instrumentation import Acquisition, DataChannel  # noqa: E402
from nion.instrumentation.test import AcquisitionTestContext  # noqa: E402
from nion.swift.test import TestContext  # noqa: E402
from nion.usim_device import DeviceConfiguration  # noqa: E402
from nion.utils import Geometry  # noqa: E402

from scanlens.client import Control, Instrument  # noqa: E402
from scanlens.model_files import MODEL_DIR  # noqa: E402
from scanlens.protocol.messages import Axis, PixelSize  # noqa: E402
from scanlens.testing import loopback_settings, serve_process, serving  # noqa: E402


from nionswift_plugin.scanlens import acquisition  # noqa: E402  (the package Swift loads)
from nionswift_plugin.scanlens import streamer as streamer_mod  # noqa: E402


ROWS = COLS = 32
DEBUG = False
# usim's camera hands over what it acquired every second (update_period / exposure frames, however long
# computing them takes: ~16 ms a frame here), so this exposure gives two lines a chunk, ~20 s a spectrum image
EXPOSURE_MS = 1000.0 / (2 * COLS)


# --------------------------------------------------------------------------- a service on its own loop

class LoopThread:
    """An asyncio loop on a thread of its own, for the service (and its clients) beside Swift."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-service", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def hold(self, cm_factory: Callable[[], Any], timeout: float = 60) -> tuple[Any, Callable[[], None]]:
        """Enter the async context manager ``cm_factory()`` in one task on the loop; (its value, exit)."""
        entered: concurrent.futures.Future[Any] = concurrent.futures.Future()
        leave = asyncio.Event()

        async def body() -> None:
            try:
                async with cm_factory() as value:
                    entered.set_result(value)
                    await leave.wait()
            except BaseException as exc:
                if not entered.done():
                    entered.set_exception(exc)
                raise

        done = asyncio.run_coroutine_threadsafe(body(), self.loop)
        value = entered.result(timeout)

        def exit_() -> None:
            self.loop.call_soon_threadsafe(leave.set)
            done.result(timeout)
        return value, exit_

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def service_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def service(service_loop) -> Iterator[Any]:
    """A real scanlens server on loopback with the shipped EELS models."""
    server, exit_ = service_loop.hold(
        lambda: serving(loopback_settings(MODEL_DIR, models=["eels-mlp", "eels-fit"], scan_timeout_s=60)))
    yield server
    exit_()


def snapshot_started(service_loop: LoopThread, service: Any, scan_id: str) -> dict[str, Any]:
    """The service's own record of how the scan started (the ``started`` of its ``snapshot``)."""
    async def snapshot() -> Any:
        ctl = Control(service.endpoints["control"])
        try:
            return await ctl.snapshot(scan_id)
        finally:
            ctl.close()
    return service_loop.run(snapshot()).result["started"]


def assert_told_once(r: Any, scan_id: str, words: str) -> None:
    """The plug-in told the operator of one problem, for ``scan_id``, in one sentence containing ``words``."""
    assert len(r.problems) == 1, r.problems
    pid, message = r.problems[0]
    assert pid == scan_id and words in message
    assert message.endswith("recognition.") and "\n" not in message  # one sentence


def _free_endpoints() -> dict[str, str]:
    """Three loopback endpoints with nothing listening."""
    ports = []
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return {name: f"tcp://127.0.0.1:{port}" for name, port in zip(("ingest", "publish", "control"), ports)}


# --------------------------------------------------------------------------- Swift, headless, with usim

@pytest.fixture
def swift(tmp_path, monkeypatch) -> Iterator[Any]:
    """Swift's acquisition test context with nionswift-usim's STEM, scan device and EELS camera."""
    monkeypatch.chdir(tmp_path)  # the usim configuration (re)creates ./test_data
    setup = TestContext.TestSetup()
    with AcquisitionTestContext.AcquisitionTestContext(DeviceConfiguration.AcquisitionContextConfiguration(),
                                                       is_eels=True) as tc:
        yield tc
    del setup
    gc.collect()


@pytest.fixture
def recognition() -> Iterator[Any]:
    made: list[Any] = []

    def make(endpoints: dict[str, str], **options: Any) -> Any:
        r = acquisition.Recognition(endpoints["ingest"], endpoints["publish"], endpoints["control"],
                                    ready_timeout=3.0, heartbeat_timeout=2.0, **options)
        acquisition.arm(r)
        made.append(r)
        return r

    yield make
    acquisition.disarm()
    for r in made:
        r.close()


def acquire_spectrum_image(tc: Any, on_tick: Callable[[], None] | None = None) -> tuple[Any, Any]:
    """A synchronized EELS spectrum image of ROWS x COLS, as Swift's panels start one: a
    ``DataItemDataChannel`` (the class the plug-in tees when armed) and ``grab_synchronized`` on an
    acquisition thread while the main thread runs Swift's periodic. (scans, spectrum images, data channel)."""
    scan = tc.scan_hardware_source
    camera = tc.camera_hardware_source
    scan_parameters = scan.get_current_frame_parameters()
    scan_parameters.scan_id = uuid.uuid4()
    scan_parameters.size = Geometry.IntSize(ROWS, COLS)
    camera_parameters = camera.get_current_frame_parameters()
    camera_parameters.processing = "sum_project"
    camera_parameters.exposure_ms = EXPOSURE_MS
    channel = DataChannel.DataItemDataChannel(tc.document_model, "SI", {
        Acquisition.Channel(scan.hardware_source_id, "0"): "HAADF",
        Acquisition.Channel(camera.hardware_source_id): "EELS"})
    outcome: dict[str, Any] = {}

    def grab() -> None:
        try:
            outcome["result"] = scan.grab_synchronized(data_channel=channel, scan_frame_parameters=scan_parameters,
                                                       camera=camera, camera_frame_parameters=camera_parameters)
        except Exception as exc:  # noqa: BLE001 - re-raised on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=grab, name="acquisition")
    thread.start()
    while thread.is_alive():
        tc.document_controller.periodic()
        if on_tick is not None:
            on_tick()
        time.sleep(0.02)
    thread.join()
    for _ in range(10):
        tc.document_controller.periodic()
    if "error" in outcome:
        raise outcome["error"]
    scans, spectrum_images = outcome["result"]
    del channel  # Swift closes its data items' transactions when the channel goes (before the document closes)
    gc.collect()
    return scans, spectrum_images, None


def _periodic_until(tc: Any, predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tc.document_controller.periodic()
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _leading_rows(data: np.ndarray) -> int:
    full = np.isfinite(data).all(axis=1)
    return len(full) if full.all() else int(np.argmin(full))


def _assert_swift_acquisition_complete(scans: Any, spectrum_images: Any) -> None:
    si = spectrum_images[0]
    assert si.data_shape == (ROWS, COLS, 512) and scans[0].data_shape == (ROWS, COLS)
    assert si.dimensional_calibrations[-1].units == "eV"
    assert (si.data.sum(axis=-1) > 0).all()  # every pixel of Swift's own spectrum image was acquired


# --------------------------------------------------------------------------- the tests

@pytest.mark.timeout(240)
def test_armed_spectrum_image_streams_and_maps_fill_in(swift, service, service_loop, recognition):
    r = recognition(service.endpoints)
    watched: dict[str, Any] = {"halfway": None, "max_ahead": 0}

    def tick() -> None:
        if not r.writers:
            return
        (scan_id, writer), = r.writers.items()
        stats = r.stats(scan_id)
        item = writer.data_item("eels-mlp", "class")
        if DEBUG:
            print("tick", stats.lines_queued, stats.lines_sent, stats.maps_received, len(writer.data_items),
                  writer.filled_rows("eels-mlp"), None if item is None or item.data is None else _leading_rows(item.data))
        if item is None or item.data is None:
            return
        mapped = _leading_rows(item.data)
        watched["max_ahead"] = max(watched["max_ahead"], mapped - stats.lines_queued)
        if watched["halfway"] is None and mapped >= ROWS // 2 and stats.lines_queued < ROWS:
            watched["halfway"] = (mapped, stats.lines_queued)

    scans, spectrum_images, _ = acquire_spectrum_image(swift, tick)
    _assert_swift_acquisition_complete(scans, spectrum_images)

    (scan_id, writer), = r.writers.items()
    stats = r.streamer.wait(scan_id, timeout=30)
    assert stats.problem is None and r.problems == []
    # halfway through, the class map already held the lines acquired so far (and never more than those)
    assert watched["halfway"] is not None, "the maps did not fill in during the scan"
    assert watched["max_ahead"] <= 0
    # every pixel accounted for
    assert stats.lines_queued == stats.lines_sent == ROWS and stats.lines_dropped == 0
    summary = stats.summary
    assert summary.state == "complete" and summary.lost == [] and summary.n_lost == 0 and summary.rejected == []
    assert summary.pixels_expected == summary.pixels_received == summary.pixels_recognized == ROWS * COLS
    assert set(summary.recognizers) == {"eels-mlp", "eels-fit"}
    assert all(s.pixels_recognized == ROWS * COLS for s in summary.recognizers.values())
    # the calibrations arrived at the service: its own record of the scan (snapshot) has them
    started = snapshot_started(service_loop, service, scan_id)
    assert Axis.model_validate(started["axis"]) == Axis(size=512, offset=-20.0, scale=1.0, units="eV")
    assert PixelSize.model_validate(started["scan_step"]) == PixelSize(size=100.0 / ROWS, units="nm")
    assert started["meta"]["camera_hardware_source_id"] == "usim_eels_camera"
    # usim's spectra (a zero-loss peak and a power-law background) are nothing like the training oxides
    for rec in ("eels-mlp", "eels-fit"):
        assert summary.recognizers[rec].novel_fraction is not None and summary.recognizers[rec].novel_fraction > 0.9
    assert _periodic_until(swift, lambda: all(
        i.data is not None and np.isfinite(i.data).all() for i in writer.data_items.values()), 10)
    novel = writer.data_item("eels-mlp", "novel").data
    assert novel.shape == (ROWS, COLS) and novel.mean() > 0.9
    # ... and the operator is told so, once, in the panel's status line: the maps are not vouched for
    ((nid, told),) = [n for n in r.notices if "novel" in n[1]]
    assert nid == scan_id and "eels-mlp flagged" in told and "eels-fit flagged" in told and "not vouched for" in told
    # the map data items: class, confidence, novelty per model, parameter maps of the fit
    titles = {i.title for i in writer.data_items.values()}
    for expected in ("scanlens eels-mlp class (SI)", "scanlens eels-mlp confidence (SI)",
                     "scanlens eels-mlp novelty (SI)", "scanlens eels-fit novelty (SI)"):
        assert expected in titles, sorted(titles)
    assert any(t.startswith("scanlens eels-fit ") and "novel" not in t for t in titles), sorted(titles)
    assert writer.data_item("eels-mlp", "class").dimensional_calibrations[0].units == "nm"


@pytest.mark.timeout(180)
def test_without_a_service_the_acquisition_completes_and_the_plugin_says_so_once(swift, recognition):
    r = recognition(_free_endpoints())
    scans, spectrum_images, _ = acquire_spectrum_image(swift)
    _assert_swift_acquisition_complete(scans, spectrum_images)
    (scan_id, _), = r.writers.items()
    stats = r.streamer.wait(scan_id, timeout=10)
    assert_told_once(r, scan_id, "no service answers")
    assert stats.lines_sent == 0 and stats.lines_dropped == ROWS


@pytest.mark.timeout(240)
def test_a_service_killed_mid_scan_is_reported_once_and_the_acquisition_completes(swift, tmp_path, service_loop,
                                                                                   recognition):
    proc, exit_ = service_loop.hold(lambda: serve_process(MODEL_DIR, tmp_path, args=["--model", "eels-mlp"]))
    try:
        r = recognition(proc.endpoints)
        killed: dict[str, Any] = {}

        def tick() -> None:
            if "at" in killed or not r.writers:
                return
            (scan_id, _), = r.writers.items()
            if r.stats(scan_id).lines_sent >= 8:
                killed["at"] = r.stats(scan_id).lines_queued
                proc.proc.kill()

        scans, spectrum_images, _ = acquire_spectrum_image(swift, tick)
        _assert_swift_acquisition_complete(scans, spectrum_images)
    finally:
        exit_()
    assert "at" in killed and killed["at"] < ROWS
    (scan_id, _), = r.writers.items()
    stats = r.streamer.wait(scan_id, timeout=10)
    assert len(r.problems) == 1, r.problems
    assert r.problems[0][0] == scan_id and "stopped during scan" in r.problems[0][1]
    assert stats.lines_queued + stats.lines_dropped == ROWS and stats.lines_dropped > 0
    assert stats.summary is None


# --------------------------------------------------------------------------- the Swift-free core

def test_streamer_against_a_real_service_and_a_refusal(service, service_loop):
    """``Streamer`` alone: a small scan on a foreign axis is recognized; one on a too narrow axis is refused
    once, its lines dropped here, and the caller never waits."""
    rng = np.random.default_rng(0)
    maps: list[Any] = []
    problems: list[tuple[str, str]] = []
    with streamer_mod.Streamer(service.endpoints["ingest"], service.endpoints["publish"], service.endpoints["control"],
                               on_maps=lambda sid, h, a: maps.append((sid, h.recognizer, h.row)),
                               on_problem=lambda sid, m: problems.append((sid, m))) as s:
        sid = s.start_scan("streamer-ok", (4, 6), streamer_mod.EnergyAxis(0.0, 0.5, "eV", 400), 0.5)
        for row in range(4):
            assert s.line(row, rng.poisson(50, (6, 400)).astype(np.float32))
        s.end()
        stats = s.wait(sid, 30)
        assert stats.summary is not None and stats.summary.state == "complete" and stats.summary.lost == []
        assert stats.started.scan_step == PixelSize(size=0.5, units="nm")
        assert {(rec, row) for _, rec, row in maps} == {(rec, row) for rec in ("eels-mlp", "eels-fit")
                                                        for row in range(4)}
        models = s.models().result(10)
        assert {"eels-mlp", "eels-fit"} <= set(models)

        sid = s.start_scan("streamer-narrow", (3, 4), streamer_mod.EnergyAxis(0.0, 0.25, "eV", 256), None,
                            recognizers=["eels-mlp"])
        t0 = time.monotonic()
        for row in range(3):
            s.line(row, np.ones((4, 256), np.float32))
        assert time.monotonic() - t0 < 0.5  # handing over never waits for the service
        s.end()
        stats = s.wait(sid, 15)
        time.sleep(0.2)
        assert problems == [(sid, problems[0][1])] and "refused scan streamer-narrow" in problems[0][1]
        assert stats.lines_sent == 0 and stats.lines_dropped == 3
        # a calibration the protocol cannot carry is one problem, not an exception in the acquisition
        bad = s.start_scan("streamer-reversed", (2, 2), streamer_mod.EnergyAxis(100.0, -0.5, "eV", 64), 1.0)
        assert not s.line(0, np.ones((2, 64), np.float32))
        s.end()
        assert problems[-1][0] == bad and "must increase" in problems[-1][1]


def test_recognizers_left_out_of_a_scan_are_a_notice_not_a_problem(service):
    """Protocol 1.1: an axis the EELS models do not cover, with no recognizer named, runs pca; the plug-in
    tells the operator which models were left out and why, and the scan is still recognized."""
    r = acquisition.Recognition(service.endpoints["ingest"], service.endpoints["publish"], service.endpoints["control"])
    told: list[tuple[str, str]] = []
    r.listeners.append(lambda sid, m: told.append((sid, m)))
    try:
        sid = r.streamer.start_scan("narrow-default", (3, 4), streamer_mod.EnergyAxis(0.0, 0.25, "eV", 256), 1.0)
        for row in range(3):
            assert r.streamer.line(row, np.random.default_rng(row).poisson(30, (4, 256)).astype(np.float32))
        r.streamer.end()
        stats = r.streamer.wait(sid, 30)
        assert stats.summary is not None and stats.summary.state == "complete" and r.problems == []
        assert list(stats.summary.recognizers) == ["pca"]
        ((nid, message),) = r.notices
        assert told == [(nid, message)] and nid == sid
        assert message.startswith("scanlens: scan narrow-default runs pca; not eels-") and "does not cover" in message
    finally:
        r.close()


def test_swift_finds_loads_and_starts_the_plugin_as_pip_installs_it(tmp_path):
    """Laid out as a regular install puts it (``pip install ".[nionswift]"``: site-packages/nionswift_plugin/
    scanlens with its manifest), Swift's own plug-in manager lists it among the ``nionswift_plugin``
    packages, checks the manifest's requirement (the instrumentation kit), imports it and instantiates
    ``ScanlensExtension``, which registers the panel."""
    import subprocess
    import sys

    src = Path(acquisition.__file__).parent
    dest = tmp_path / "site" / "nionswift_plugin" / "scanlens"
    dest.mkdir(parents=True)
    for f in [*src.glob("*.py"), src / "manifest.json"]:
        shutil.copy2(f, dest / f.name)
    script = ("import logging, sys\n"
              "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(name)s %(message)s')\n"
              "from nion.swift.model import PlugInManager\n"
              f"PlugInManager.load_plug_ins({str(tmp_path)!r}, {str(tmp_path)!r}, None)\n"
              "import nionswift_plugin.scanlens as plugin\n"
              "from nion.swift import Panel\n"
              "print('FILE', plugin.__file__)\n"
              "print('PANEL', Panel.PanelManager().get_panel_info('scanlens-panel')[0], flush=True)\n"
              "import os; os._exit(0)  # usim's plug-in keeps simulator threads running\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("loader_progress Plug-in 'nionswift_plugin.scanlens' loaded") for line in lines), lines
    assert f"FILE {dest / '__init__.py'}" in lines, lines
    assert "PANEL scanlens" in lines, lines


def test_line_assembler_cuts_chunks_into_lines():
    la = acquisition.LineAssembler(3, 4, 2)
    data = np.arange(3 * 4 * 2, dtype=np.float32)
    out = []
    for start, stop in ((0, 6), (6, 8), (8, 20), (20, 24)):
        out += [(row, line.copy()) for row, line in la.feed(start, data[start:stop])]
    assert [row for row, _ in out] == [0, 1, 2] and la.complete
    for row, line in out:
        np.testing.assert_array_equal(line, data.reshape(3, 4, 2)[row])


def test_panel_lists_recognizers_and_arms(swift, service):
    """The Swift panel, built headless: endpoints, "List recognizers" against the service, the arm box."""
    import nionswift_plugin.scanlens as plugin
    from nionswift_plugin.scanlens import panel
    extension = plugin.ScanlensExtension(None)  # what Swift's plug-in manager does at start-up
    try:
        widget = panel.ScanlensPanel(swift.document_controller, panel.PANEL_ID, {})
        handler = panel.recognition.listeners[-1].__self__
        handler.ingest, handler.publish = service.endpoints["ingest"], service.endpoints["publish"]
        handler.control = service.endpoints["control"]
        handler.list_models(None)
        assert _periodic_until(swift, lambda: handler.status.startswith("Recognizers:"), 15), handler.status
        assert "eels-mlp (eels)" in handler.status and "eels-fit (eels)" in handler.status
        original = DataChannel.DataItemDataChannel
        handler.armed = True
        assert panel.recognition.armed and DataChannel.DataItemDataChannel is not original
        assert issubclass(DataChannel.DataItemDataChannel, original)
        handler.armed = False
        assert DataChannel.DataItemDataChannel is original and not panel.recognition.armed
        widget.close()
    finally:
        extension.close()
