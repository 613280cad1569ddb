"""Live training through the real service (docs/live-training.md): train requests on the control socket, the
trainer process beside the service, the hot swap and the redo of earlier lines, and every way a request can
go wrong — each answered with a clear error while the scan and its recognizers go on unchanged.

Real sockets on loopback, real ONNX models, the real trainer process (torch). Two stand-in trainers are small
real processes speaking the trainer pipe (one that crashes, one that never finishes) — a real trainer cannot
be made to crash or hang on purpose. Torch being absent is the one thing mocked (it is installed here).
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap

import numpy as np
import pytest

from scanlens.app import training
from scanlens.app.training import TrainerProcess
from scanlens.client import ServiceError
from scanlens.protocol.messages import Event, Maps, ScanSummary, TrainUpdate
from scanlens.testing import band_axis, band_spectra, connected, loopback_settings, serving

ROWS, COLS = 12, 16


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
        got = await collect(sub, "kept", lambda m: isinstance(m.header, ScanSummary))
        # every refusal is also an event on the scan's topic, for whoever watches it
        refusals = [m.header.reason for m in got if isinstance(m.header, Event) and m.header.code == "train_failed"]
        assert len(refusals) == 11 and all(r.startswith("train request refused: ") for r in refusals)
        summaries = [m.header for m in got]
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


# --------------------------------------------------------------------------- the real trainer


async def test_a_scan_learns_its_sample_swaps_and_redoes_the_earlier_lines(model_dir, tmp_path) -> None:
    """The band model's world with classes it calls by other names: labels on the first rows train a new
    recognizer (the real trainer process), which takes over the following lines; the earlier ones come again
    with revision 1; the model is kept, listed and usable by name in a later scan."""
    truth = truth_map()
    user_dir = tmp_path / "user-models"
    settings = loopback_settings(model_dir, user_model_dir=user_dir)
    async with serving(settings) as srv, connected(srv) as (inst, sub, ctl):
        async with inst.scan("s", "eels", truth.shape, band_axis(), retain=True) as scan:
            await send_rows(scan, truth, range(6), srv)
            labels = labels_for(truth, rows=3)
            job = await ctl.train("s", labels, ["left", "middle", "right"], name="bands-live", budget_s=20)
            assert job["labelled_pixels"] == 3 * COLS and job["revision"] == 1
            assert job["label_counts"] == {c: int(np.sum(labels == k + 1)) for k, c in
                                           enumerate(["left", "middle", "right"]) if np.any(labels == k + 1)}
            got = await collect(sub, "s", lambda m: isinstance(m.header, TrainUpdate) and m.header.state in
                                ("redone", "failed"), timeout=60)
            states = [m.header.state for m in got if isinstance(m.header, TrainUpdate)]
            assert states[0] == "started" and states[-1] == "redone", [m.header for m in got
                                                                        if isinstance(m.header, TrainUpdate)]
            assert "progress" in states and states.index("trained") < states.index("swapped")
            swapped = next(m.header for m in got if isinstance(m.header, TrainUpdate) and m.header.state == "swapped")
            assert [s.name for s in swapped.outputs][:2] == ["class", "confidence"]
            assert swapped.outputs[0].labels == ["left", "middle", "right"]
            redone = [m for m in got if isinstance(m.header, Maps) and m.header.recognizer == "bands-live"]
            assert sorted(m.header.row for m in redone) == list(range(6))  # every earlier line, once
            assert all(m.header.revision == 1 for m in redone)
            await send_rows(scan, truth, range(6, ROWS))
        rest = await collect(sub, "s", lambda m: isinstance(m.header, ScanSummary))
        direct = [m for m in rest if isinstance(m.header, Maps) and m.header.recognizer == "bands-live"]
        assert sorted(m.header.row for m in direct) == list(range(6, ROWS))
        summary = rest[-1].header
        assert summary.state == "complete" and set(summary.recognizers) == {"band", "bands-live"}
        assert summary.recognizers["bands-live"].pixels_recognized == truth.size
        snap = await ctl.snapshot("s")
        live = snap.arrays["bands-live/class"]
        unlabelled = labels == 0
        assert np.mean(live[unlabelled] == truth[unlabelled]) >= 0.98
        models = await ctl.models()
        assert models["bands-live"]["training"]["scan_id"] == "s"
        assert models["bands-live"]["training"]["live"] is True
        assert (user_dir / "bands-live.onnx").is_file()
        # a later scan takes it by name; by default only the model of the modality loaded at start runs
        async with inst.scan("later", "eels", truth.shape, band_axis(), recognizers=["bands-live"]) as scan:
            await send_rows(scan, truth, range(ROWS))
        later = (await collect(sub, "later", lambda m: isinstance(m.header, ScanSummary)))[-1].header
        assert later.state == "complete" and list(later.recognizers) == ["bands-live"]
        async with inst.scan("default", "eels", truth.shape, band_axis()) as scan:
            await send_rows(scan, truth, range(ROWS))
        default = (await collect(sub, "default", lambda m: isinstance(m.header, ScanSummary)))[-1].header
        assert list(default.recognizers) == ["band"]


async def test_scanlens_label_on_the_command_line(model_dir, tmp_path) -> None:
    """``scanlens label`` as an operator runs it: a .npy label image, progress on stderr, the outcome as JSON;
    a refused request exits 4 with the reason, a label file that is not one exits 2."""
    from scanlens.testing import run_cli_result

    truth = truth_map()
    labels_file = tmp_path / "labels.npy"
    np.save(labels_file, labels_for(truth, rows=3))
    settings = loopback_settings(model_dir, user_model_dir=tmp_path / "user")
    async with serving(settings) as srv, connected(srv) as (inst, sub, ctl):
        ep = srv.endpoints
        cli = ("-c", "from scanlens.app.cli import main; main()", "label")
        where = ("--control", ep["control"], "--publish", ep["publish"])
        async with inst.scan("s", "eels", truth.shape, band_axis(), retain=True) as scan:
            await send_rows(scan, truth, range(ROWS), srv)
            ok = await run_cli_result(*cli, "s", str(labels_file), "--classes", "left,middle,right", *where,
                                      "--name", "cli-live", timeout=120)
            assert ok.returncode == 0, ok.stderr
            outcome = json.loads(ok.stdout)
            assert outcome["recognizer"] == "cli-live" and outcome["lines_redone"] == ROWS
            assert "progress: epoch 1/" in ok.stderr and "redone" in ok.stderr
        async with inst.scan("plain", "eels", truth.shape, band_axis()) as scan:
            await send_rows(scan, truth, range(ROWS), srv)
            refused = await run_cli_result(*cli, "plain", str(labels_file), "--classes", "a,b,c", *where)
            assert refused.returncode == 4
            assert refused.stderr.strip().splitlines() == [
                "error: scan plain does not keep its data: start it with retain=true in scan_start "
                "(`Instrument.scan(..., retain=True)`, `scanlens sim eels --retain`) to train on it"]
        (tmp_path / "labels.txt").write_text("1 2 3")
        bad = await run_cli_result(*cli, "s", str(tmp_path / "labels.txt"), "--classes", "a,b", *where)
        assert bad.returncode == 2 and bad.stderr.strip() == (
            f"error: {tmp_path / 'labels.txt'}: label images are .npy or 8-bit grayscale .png files")


async def test_a_recorded_scan_without_retain_is_read_back_from_its_recording(model_dir, tmp_path) -> None:
    """``serve --record``: a scan that did not ask for retain can still be trained on; the lines received before
    the request are read back from its journal, the ones after are kept as they come, all are redone."""
    truth = truth_map()
    settings = loopback_settings(model_dir, user_model_dir=tmp_path / "user", record_dir=tmp_path / "runs")
    async with serving(settings) as srv, connected(srv) as (inst, sub, ctl):
        async with inst.scan("rec", "eels", truth.shape, band_axis()) as scan:
            await send_rows(scan, truth, range(6), srv)
            job = await ctl.train("rec", labels_for(truth, rows=3), ["left", "middle", "right"], name="rec-live")
            await send_rows(scan, truth, range(6, 9))  # while the job reads back and trains
            got = await collect(sub, "rec", lambda m: isinstance(m.header, TrainUpdate) and m.header.state in
                                ("redone", "failed"), timeout=60)
            assert got[-1].header.state == "redone", got[-1].header
            await send_rows(scan, truth, range(9, ROWS))
        rest = await collect(sub, "rec", lambda m: isinstance(m.header, ScanSummary))
        live = [m for m in got + rest if isinstance(m.header, Maps) and m.header.recognizer == "rec-live"]
        assert sorted(m.header.row for m in live) == list(range(ROWS))  # each line once: redone or direct
        summary = rest[-1].header
        assert summary.state == "complete" and summary.recognizers["rec-live"].pixels_recognized == truth.size
        assert job["labelled_pixels"] == 3 * COLS
        snap = await ctl.snapshot("rec")
        unlabelled = labels_for(truth, rows=3) == 0
        assert np.mean(snap.arrays["rec-live/class"][unlabelled] == truth[unlabelled]) >= 0.98
        # labels of lines the recording does not hold yet are refused only once read back: the job fails
        async with inst.scan("rec2", "eels", truth.shape, band_axis()) as scan:
            await send_rows(scan, truth, range(2), srv)
            await ctl.train("rec2", labels_for(truth, rows=4), ["left", "middle", "right"], name="rec2-live")
            failed = await collect(sub, "rec2", lambda m: isinstance(m.header, TrainUpdate) and m.header.state in
                                   ("redone", "failed"), timeout=60)
            assert failed[-1].header.state == "failed"
            assert "have not been received yet" in failed[-1].header.reason
            await send_rows(scan, truth, range(2, ROWS))
        assert (await collect(sub, "rec2", lambda m: isinstance(m.header, ScanSummary)))[-1].header.state == "complete"
