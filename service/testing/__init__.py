"""Testing scanlens as a product: a real server on loopback, waiting helpers, hand-made ONNX models, leak checks.

Needs the ``test`` extra (``pip install "scanlens[test]"``: onnx builds the hand-made models). Used by
scanlens' own test suite and usable by anyone testing a client or a deployment against a live server:

    from scanlens.testing import live, loopback_settings, send_band_scan, write_band_model

    write_band_model(model_dir / "band.onnx")
    async with live(loopback_settings(model_dir), scan_id="s1") as (server, inst, sub):
        await send_band_scan(inst, "s1", truth)        # truth: [rows, cols] classes 0..2
        result = await sub.collect_scan("s1")          # result.maps["band"]["class"] == truth

Modules: ``server`` (settings, server and clients), ``waiting`` (wait for an event or a summary),
``wire`` (raw messages), ``manager`` (a scan manager without sockets), ``processes`` (the CLI as a subprocess), ``models`` (the ``band`` and
``frame-test`` models and their data), ``leaks`` (sockets, contexts and tasks left behind).
"""

from __future__ import annotations

from .leaks import (LeakError, ZmqSnapshot, check_task_leaks, check_zmq_leaks, leak_check, task_snapshot,
                    zmq_leaks, zmq_snapshot)
from .models import (BAND_LABELS, BAND_NOVELTY_THRESHOLD, FRAME_LABELS, FRAME_PIXEL_NM, band_axis, band_spectra, render_frame,
                     send_band_scan, write_band_model, write_frame_model)
from .manager import Clock, ManagerHarness, through_wire
from .processes import CliResult, ServeProcess, run_cli, run_cli_result, serve_process
from .server import LOOPBACK, connected, live, loopback_settings, serving
from .waiting import wait_for, wait_for_event, wait_for_summary
from .wire import data_frames, nested_map

__all__ = [
    "BAND_LABELS", "BAND_NOVELTY_THRESHOLD", "CliResult", "Clock", "FRAME_LABELS", "FRAME_PIXEL_NM", "LOOPBACK", "LeakError", "ManagerHarness",
    "ServeProcess", "ZmqSnapshot", "band_axis", "band_spectra", "check_task_leaks", "check_zmq_leaks", "connected",
    "data_frames", "leak_check", "live", "loopback_settings", "nested_map", "render_frame", "run_cli", "run_cli_result",
    "send_band_scan", "serve_process", "serving", "task_snapshot", "through_wire", "wait_for", "wait_for_event",
    "wait_for_summary", "write_band_model", "write_frame_model", "zmq_leaks", "zmq_snapshot",
]
