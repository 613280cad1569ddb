"""Live training through the real service (docs/live-training.md): train requests on the control socket, the
trainer process beside the service, the hot swap and the redo of earlier lines, and every way a request can
go wrong — each answered with a clear error while the scan and its recognizers go on unchanged.

Real sockets on loopback, real ONNX models, the real trainer process (torch). Two stand-in trainers are small
real processes speaking the trainer pipe (one that crashes, one that never finishes) — a real trainer cannot
be made to crash or hang on purpose. Torch being absent is the one thing mocked (it is installed here).
"""

from __future__ import annotations

import asyncio
import sys
import textwrap

import numpy as np
import pytest

from scanlens.app import training
from scanlens.app.training import TrainerProcess
from scanlens.client import ServiceError
from scanlens.protocol.messages import Event, Maps, ScanSummary, TrainUpdate
from scanlens.testing import (band_axis, band_spectra, connected, loopback_settings, serving, wait_for,
                              write_band_model)

ROWS, COLS = 12, 16


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    write_band_model(directory / "band.onnx")
    return directory


def truth_map(seed: int = 0) -> np.ndarray:
    """Three vertical bands of classes 0, 1, 2 with a ragged border."""
    rng = np.random.default_rng(seed)
    cols = np.arange(COLS)[None, :] + rng.integers(-1, 2, (ROWS, 1))
    return np.clip(cols * 3 // COLS, 0, 2).astype(np.uint8)


async def send_rows(scan, truth: np.ndarray, rows: range, srv=None) -> None:
    """Send these rows; with ``srv``, wait until the service has them (ingest and control are separate
    sockets: a train request may otherwise overtake the lines it labels)."""
    for row in rows:
        await scan.send_line(row, band_spectra(truth[row]))
    if srv is not None:
        async with asyncio.timeout(10):
            while True:
                kept = srv.scans.open_scans.get(scan.start.scan_id)
                if kept is not None and kept.pixels_received >= rows.stop * COLS:
                    return
                await asyncio.sleep(0.01)


async def collect(sub, scan_id: str, until, timeout: float = 30.0) -> list:
    """Messages of ``scan_id`` until ``until(message)`` is true (that one included)."""
    got = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await sub.recv()
            if getattr(msg.header, "scan_id", None) != scan_id:
                continue
            got.append(msg)
            if until(msg):
                return got


def labels_for(truth: np.ndarray, rows: int = 2) -> np.ndarray:
    """A few labelled pixels of every class in the first ``rows`` rows (label = class + 1)."""
    labels = np.zeros_like(truth)
    labels[:rows] = truth[:rows] + 1
    return labels


# --------------------------------------------------------------------------- bad requests


async def test_bad_train_requests_get_clear_errors_and_the_scan_goes_on(model_dir, tmp_path) -> None:
    truth = truth_map()
    settings = loopback_settings(model_dir, keep_closed_scans=1)
    async with serving(settings) as srv, connected(srv) as (inst, sub, ctl):
        async with inst.scan("plain", "eels", truth.shape, band_axis()) as scan:
            await send_rows(scan, truth, range(2), srv)
            with pytest.raises(ServiceError, match="does not keep its data: start it with retain=true"):
                await ctl.train("plain", labels_for(truth), ["a", "b", "c"])
            await send_rows(scan, truth, range(2, ROWS))
        async with inst.scan("kept", "eels", truth.shape, band_axis(), retain=True) as scan:
            await send_rows(scan, truth, range(4), srv)
            cases = [
                (np.zeros((ROWS, COLS + 1), np.uint8), ["a", "b", "c"], "do not match the scan's \\[rows, cols\\]"),
                (np.zeros_like(truth), ["a", "b", "c"], "no pixel is labelled"),
                (np.where(truth == 0, 1, 0).astype(np.uint8), ["a", "b"], "only one class is labelled"),
                (labels_for(truth), ["a", "b"], "label value 3 has no class"),
                (labels_for(truth, rows=6), ["a", "b", "c"], "have not been received yet"),
                (labels_for(truth), ["a", "a", "c"], "class names repeat"),
            ]
            for labels, classes, match in cases:
                with pytest.raises(ServiceError, match=match):
                    await ctl.train("kept", labels, classes)
            with pytest.raises(ServiceError, match="must be uint8"):
                await ctl.request("train", "kept", arrays=[labels_for(truth).astype(np.uint16)], classes=["a", "b", "c"])
            with pytest.raises(ServiceError, match="train needs classes"):
                await ctl.request("train", "kept", arrays=[labels_for(truth)])
            with pytest.raises(ServiceError, match="one buffer"):
                await ctl.request("train", "kept", classes=["a", "b", "c"])
            with pytest.raises(ServiceError, match="names a recognizer loaded at start"):
                await ctl.train("kept", labels_for(truth), ["a", "b", "c"], name="band")
            with pytest.raises(ServiceError, match="unknown base recognizer 'nope'"):
                await ctl.train("kept", labels_for(truth), ["a", "b", "c"], base="nope")
            with pytest.raises(ServiceError, match="no open or recently closed scan 'ghost'"):
                await ctl.train("ghost", labels_for(truth), ["a", "b", "c"])
            await send_rows(scan, truth, range(4, ROWS))
        summaries = [m.header for m in await collect(sub, "kept", lambda m: isinstance(m.header, ScanSummary))]
        assert summaries[-1].state == "complete" and summaries[-1].pixels_recognized == truth.size
        # keep_closed_scans=1: "kept" closing evicted "plain"
        with pytest.raises(ServiceError, match="has closed and its record is no longer kept"):
            await ctl.train("plain", labels_for(truth), ["a", "b", "c"])
        assert srv.scans.counters["train_requests"] == 0 and srv.counters["control_errors"] >= 14


async def test_without_torch_a_train_request_says_how_to_install_it(model_dir, monkeypatch) -> None:
    # mocked: torch is installed on this machine; an installation without the train extra lacks it
    monkeypatch.setattr(training, "trainer_missing", lambda: training.NO_TORCH)
    truth = truth_map()
    async with serving(loopback_settings(model_dir)) as srv, connected(srv) as (inst, sub, ctl):
        async with inst.scan("s", "eels", truth.shape, band_axis(), retain=True) as scan:
            await send_rows(scan, truth, range(ROWS), srv)
            with pytest.raises(ServiceError, match=r"install the train extra \(pip install 'scanlens\[train\]'"):
                await ctl.train("s", labels_for(truth), ["a", "b", "c"])


async def test_trainer_off_refuses_train_requests(model_dir) -> None:
    truth = truth_map()
    async with serving(loopback_settings(model_dir, trainer="off")) as srv, connected(srv) as (inst, sub, ctl):
        async with inst.scan("s", "eels", truth.shape, band_axis(), retain=True) as scan:
            await send_rows(scan, truth, range(ROWS), srv)
            with pytest.raises(ServiceError, match='live training is off in this service'):
                await ctl.train("s", labels_for(truth), ["a", "b", "c"])


# --------------------------------------------------------------------------- trainers that fail

_STAND_IN = textwrap.dedent('''
    import sys, time
    from scanlens.protocol.trainer_wire import read_frame, write_frame
    out = sys.stdout.buffer
    write_frame(out, {{"type": "ready", "pid": 0, "torch": "none"}})
    message = read_frame(sys.stdin.buffer)
    {behaviour}
''')
CRASH = 'print("simulated crash in the trainer", file=sys.stderr, flush=True); sys.exit(3)'
HANG = 'time.sleep(3600)'


def stand_in(tmp_path, behaviour: str) -> TrainerProcess:
    script = tmp_path / "trainer.py"
    script.write_text(_STAND_IN.format(behaviour=behaviour))
    return TrainerProcess(command=[sys.executable, str(script)])


@pytest.mark.parametrize("behaviour, reason", [
    (CRASH, r"the trainer process ended \(exit code 3\): simulated crash in the trainer"),
    (HANG, r"ran past its budget of 0.5 s"),
])
async def test_a_failing_trainer_leaves_the_scan_and_its_recognizers_unchanged(model_dir, tmp_path, behaviour,
                                                                                reason) -> None:
    truth = truth_map()
    async with serving(loopback_settings(model_dir)) as srv, connected(srv) as (inst, sub, ctl):
        srv.jobs.trainer = stand_in(tmp_path, behaviour)
        async with inst.scan("s", "eels", truth.shape, band_axis(), retain=True) as scan:
            await send_rows(scan, truth, range(4), srv)
            job = await ctl.train("s", labels_for(truth), ["a", "b", "c"], budget_s=0.5)
            assert job["recognizer"] == "s-live" and job["revision"] == 1
            got = await collect(sub, "s", lambda m: isinstance(m.header, Event) and m.header.code == "train_failed")
            failed = [m.header for m in got if isinstance(m.header, TrainUpdate) and m.header.state == "failed"]
            assert len(failed) == 1 and failed[0].job == job["job"]
            assert __import__("re").search(reason, failed[0].reason), failed[0].reason
            assert __import__("re").search(reason, got[-1].header.reason)
            await send_rows(scan, truth, range(4, ROWS))
        rest = await collect(sub, "s", lambda m: isinstance(m.header, ScanSummary))
        summary = rest[-1].header
        assert summary.state == "complete" and list(summary.recognizers) == ["band"]
        assert {m.header.recognizer for m in got + rest if isinstance(m.header, Maps)} == {"band"}
        assert "s-live" not in (await ctl.models())
        assert not srv.jobs.trainer.alive  # killed (past the budget) or ended (crash); the next job starts another
