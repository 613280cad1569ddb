"""The plug-in's frames path (HAADF imaging, protocol §3.5), headless: nionswift-usim's scan device, frames
acquired through Swift's own acquisition code (the Acquisition panel's scan sequence) and its live view
(``start_playing``), a real scanlens service with the shipped ``stem-unet``.

usim's scan at 256 x 256 pixels over 5.12 nm is 0.02 nm per pixel, the pixel size stem-unet was trained at
(its card's ``input.pixel_size``), so the frames go to the network unscaled.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from .test_plugin import (  # noqa: F401  (fixtures)
    LoopThread, _free_endpoints, _periodic_until, assert_told_once, recognition, service_loop, snapshot_started,
    swift,
)

from nion.instrumentation import Acquisition, DataChannel, scan_base  # noqa: E402
from nion.instrumentation import stem_controller as STEMController  # noqa: E402
from nion.utils import Geometry, Model  # noqa: E402

from scanlens.model_files import MODEL_DIR  # noqa: E402
from scanlens.protocol.messages import PixelSize  # noqa: E402
from scanlens.testing import loopback_settings, serving  # noqa: E402

from nionswift_plugin.scanlens import acquisition  # noqa: E402
from nionswift_plugin.scanlens import streamer as streamer_mod  # noqa: E402

SIZE = 256
FOV_NM = 5.12  # 0.02 nm per pixel
FRAMES = 4
REC = "stem-unet"


@pytest.fixture
def frames_service(service_loop) -> Iterator[Any]:
    """A real scanlens server on loopback with the shipped image recognizer."""
    server, exit_ = service_loop.hold(
        lambda: serving(loopback_settings(MODEL_DIR, models=[REC], scan_timeout_s=60)))
    yield server
    exit_()


def _scan_parameters(tc: Any) -> Any:
    scan = tc.scan_hardware_source
    fp = scan.get_current_frame_parameters()
    fp.pixel_size = Geometry.IntSize(SIZE, SIZE)
    fp.fov_nm = FOV_NM
    fp.pixel_time_us = 1
    scan.set_current_frame_parameters(fp)
    return fp


def acquire_scan_sequence(tc: Any, count: int, on_tick: Callable[[], None] | None = None) -> Any:
    """A sequence of ``count`` scan frames as the Acquisition panel starts one ("Scan" device, "Sequence"
    method): the panel's device and method objects, ``Acquisition.start_acquire`` with a data channel
    provider that makes a ``DataItemDataChannel`` (the class the plug-in tees when armed), Swift's periodic
    on the main thread until it completes. Returns the sequence's data item."""
    scan = tc.scan_hardware_source
    fp = _scan_parameters(tc)
    device_map: dict[str, Any] = {"stem": STEMController.STEMDeviceController()}
    data_stream = scan_base.ScanAcquisitionDevice(scan, fp).build_acquisition_device_data_stream(device_map)
    data_stream = Acquisition.SequenceAcquisitionMethod(count).wrap_acquisition_device_data_stream(data_stream,
                                                                                                   device_map)
    made: list[Any] = []

    class Provider:
        def get_data_channel(self, title_base: str, channel_names: Any, **kwargs: Any) -> Any:
            channel = DataChannel.DataItemDataChannel(tc.document_model, title_base, channel_names)
            made.append(channel)
            return channel

    done = threading.Event()
    Acquisition.session_manager.begin_acquisition(tc.document_model)
    acq = Acquisition.start_acquire(data_stream, data_stream.title or "Acquire", data_stream.channel_names, Provider(),
                                    None, Model.PropertyModel(0), Model.PropertyModel(False),
                                    tc.document_controller.event_loop, done.set)
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        tc.document_controller.periodic()
        if on_tick is not None:
            on_tick()
        time.sleep(0.01)
    assert done.is_set(), "the acquisition did not finish"
    assert not acq.is_error and not acq.is_aborted
    for _ in range(10):
        tc.document_controller.periodic()
    (channel,) = made
    item = channel.get_data_item(Acquisition.Channel(scan.hardware_source_id, "0"))
    del channel, made, acq, data_stream  # Swift closes its data items' transactions when the channel goes
    gc.collect()
    return item


def _assert_sequence_in_swift(item: Any, count: int) -> None:
    assert item.data_shape == (count, SIZE, SIZE)
    assert item.dimensional_calibrations[-1].units == "nm"
    assert np.isclose(item.dimensional_calibrations[-1].scale, FOV_NM / SIZE)
    assert all(item.data[k].std() > 0 for k in range(count))  # every frame of Swift's own sequence was acquired


# --------------------------------------------------------------------------- a scan acquisition: one movie

@pytest.mark.timeout(240)
def test_armed_scan_sequence_streams_every_frame_as_one_movie(swift, frames_service, service_loop, recognition):
    r = recognition(frames_service.endpoints)
    acquisition.arm(r, swift.document_model)  # the live view too: it must stay out of the acquisition's way
    (watcher,) = r.watchers
    seen: dict[str, Any] = {"item_before_summary": False}

    def tick() -> None:
        for scan_id, writer in r.frame_writers.items():
            if writer.data_item(REC) is not None and r.stats(scan_id).summary is None:
                seen["item_before_summary"] = True

    item = acquire_scan_sequence(swift, FRAMES, tick)
    _assert_sequence_in_swift(item, FRAMES)

    (scan_id, writer), = r.frame_writers.items()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and r.stats(scan_id).summary is None and not r.stats(scan_id).failed:
        swift.document_controller.periodic()
        tick()
        time.sleep(0.02)
    stats = r.streamer.wait(scan_id, timeout=1)
    assert stats.problem is None and r.problems == [], r.problems
    # every completed frame reached the service, none dropped here, none lost or skipped there
    assert stats.movie and stats.frames_queued == stats.frames_sent == FRAMES and stats.frames_dropped == 0
    summary = stats.summary
    assert summary.lost == [] and summary.n_lost == 0 and summary.rejected == [] and summary.skipped == []
    assert summary.messages_received == FRAMES and summary.pixels_received == FRAMES * SIZE * SIZE
    assert summary.recognizers[REC].frames_recognized == FRAMES and summary.state == "complete"
    # the pixel size, the frame count and the policy arrived: the service's own record of the movie has them
    started = snapshot_started(service_loop, frames_service, scan_id)
    assert PixelSize.model_validate(started["pixel_size"]) == PixelSize(size=FOV_NM / SIZE, units="nm")
    assert started["frames"] == FRAMES and started["policy"] == "lossless" and started["shape"] == [SIZE, SIZE]
    assert started["meta"]["scan_hardware_source_id"] == "usim_scan_device" and started["meta"]["scan_channel"] == "HAADF"
    # the live view (sequence mode plays the scan) was not streamed besides
    assert watcher.scan_ids == []
    # the class image: one data item, drawn as results came, the last frame's in the end
    assert _periodic_until(swift, lambda: writer.frames_received.get(REC) == FRAMES, 10)
    assert _periodic_until(swift, lambda: writer.data_item(REC).metadata["scanlens"]["frame"] == FRAMES - 1, 10)
    assert seen["item_before_summary"], "the classes data item was not there during the movie"
    classes_item = writer.data_item(REC)
    assert classes_item.title == "scanlens stem-unet classes (Sequence)"
    assert classes_item.data_shape == (SIZE, SIZE) and classes_item.data.dtype == np.uint8
    assert classes_item.dimensional_calibrations[0].units == "nm"
    md = classes_item.metadata["scanlens"]
    assert md["scan_id"] == scan_id and md["recognizer"] == REC
    assert [h[0] for h in md["history"]] == list(range(FRAMES))
    assert all(n_atoms >= 0 and n_defects >= 0 for _, n_atoms, n_defects in md["history"])
    assert md["labels"][0] == "background"
    # usim's HAADF frames (its own simulated sample, not monolayer WS2) are nothing like stem-unet's training
    # frames: every one is flagged novel (novelty ~50 against a threshold of ~3), as it should be
    assert summary.recognizers[REC].novel_fraction == 1.0
    assert md["novel"] is True and md["novelty"] > 10
    titles = [i.title for i in swift.document_model.data_items]
    assert titles.count("scanlens stem-unet classes (Sequence)") == 1, titles


@pytest.mark.timeout(180)
def test_without_a_service_the_scan_sequence_completes_and_the_plugin_says_so_once(swift, recognition):
    r = recognition(_free_endpoints())
    item = acquire_scan_sequence(swift, FRAMES)
    _assert_sequence_in_swift(item, FRAMES)
    (scan_id, _), = r.frame_writers.items()
    stats = r.streamer.wait(scan_id, timeout=10)
    assert_told_once(r, scan_id, "no service answers")
    assert stats.frames_sent == 0 and stats.frames_dropped == FRAMES  # queued, then dropped here


# --------------------------------------------------------------------------- the live view: one movie per play

@pytest.mark.timeout(240)
def test_armed_live_view_streams_completed_frames_newest_first(swift, frames_service, service_loop, recognition):
    r = recognition(frames_service.endpoints)
    acquisition.arm(r, swift.document_model)
    (watcher,) = r.watchers
    scan = swift.scan_hardware_source
    _scan_parameters(swift)
    completed: list[int] = []
    listener = scan.data_channel_updated_event.listen(
        lambda args, xdata: completed.append(1) if args.state == "complete" and args.name == "HAADF" else None)
    try:
        scan.start_playing()
        # play until several frames went out and the class image was drawn while playing
        assert _periodic_until(swift, lambda: watcher.writer is not None and watcher.writer.data_item(REC) is not None
                               and len(completed) >= 6, 60)
        drawn_while_playing = watcher.writer.frames_written.get(REC, 0)
        scan.stop_playing(sync_timeout=10)
    finally:
        listener.close()
    (scan_id,) = watcher.scan_ids
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and r.stats(scan_id).summary is None and not r.stats(scan_id).failed:
        swift.document_controller.periodic()
        time.sleep(0.02)
    stats = r.stats(scan_id)
    assert stats.problem is None and r.problems == [], r.problems
    assert drawn_while_playing >= 1
    # every completed frame of the play session went out; the service recognized or skipped each (latest)
    assert stats.frames_queued == stats.frames_sent == len(completed) and stats.frames_dropped == 0
    summary = stats.summary
    assert summary.lost == [] and summary.n_lost == 0 and summary.rejected == []
    assert summary.messages_received == len(completed)
    assert summary.recognizers[REC].frames_recognized + len(summary.skipped) == len(completed)
    assert summary.recognizers[REC].frames_recognized >= 1
    started = snapshot_started(service_loop, frames_service, scan_id)
    assert PixelSize.model_validate(started["pixel_size"]) == PixelSize(size=FOV_NM / SIZE, units="nm")
    assert started["policy"] == "latest" and started["frames"] is None and started["meta"]["live"] is True
    item = watcher.writer.data_item(REC)
    assert item.title == "scanlens stem-unet classes (Live)" and item.data_shape == (SIZE, SIZE)
    assert item.metadata["scanlens"]["scan_id"] == scan_id

    # a second play session is a second movie, drawn into the same data item
    scan.start_playing()
    assert _periodic_until(swift, lambda: len(watcher.scan_ids) == 2 and r.stats(watcher.scan_ids[1]).frames_sent >= 2,
                           60)
    scan.stop_playing(sync_timeout=10)
    second = r.streamer.wait(watcher.scan_ids[1], timeout=60)
    assert second.summary is not None and second.problem is None
    assert _periodic_until(swift, lambda: watcher.writer.data_item(REC).metadata["scanlens"]["scan_id"]
                           == watcher.scan_ids[1], 10)
    titles = [i.title for i in swift.document_model.data_items]
    assert titles.count("scanlens stem-unet classes (Live)") == 1, titles


@pytest.mark.timeout(120)
def test_without_a_service_the_live_view_plays_and_the_plugin_says_so_once(swift, recognition):
    r = recognition(_free_endpoints())
    acquisition.arm(r, swift.document_model)
    (watcher,) = r.watchers
    scan = swift.scan_hardware_source
    _scan_parameters(swift)
    scan.start_playing()
    assert _periodic_until(swift, lambda: len(r.problems) == 1, 30)
    frames = scan.get_next_xdatas_to_finish(10)  # Swift's live view goes on
    assert frames and frames[0].data_shape == (SIZE, SIZE)
    scan.stop_playing(sync_timeout=10)
    (scan_id,) = watcher.scan_ids
    stats = r.streamer.wait(scan_id, timeout=10)
    assert len(r.problems) == 1 and r.problems[0][0] == scan_id and "no service answers" in r.problems[0][1]
    assert stats.frames_sent == 0 and stats.frames_dropped > 0


# --------------------------------------------------------------------------- the Swift-free core

def test_streamer_movie_and_a_refused_pixel_size(frames_service):
    """``Streamer`` alone: a small lossless movie of noise is recognized frame by frame (and flagged novel:
    noise is nothing like WS2); a movie at 1 nm per pixel (50 x the model's) is refused once."""
    rng = np.random.default_rng(0)
    results: list[tuple[str, int, int]] = []
    problems: list[tuple[str, str]] = []
    ep = frames_service.endpoints
    with streamer_mod.Streamer(ep["ingest"], ep["publish"], ep["control"],
                               on_frame=lambda sid, h, a: results.append((sid, h.frame, a["classes"].shape[0])),
                               on_problem=lambda sid, m: problems.append((sid, m))) as s:
        sid = s.start_movie("movie-ok", (64, 64), 0.02, 0.5, frames=3)
        for k in range(3):
            assert s.frame(k, rng.poisson(20, (64, 64)).astype(np.float32))
        assert not s.frame(3, np.ones((32, 32), np.float32), scan_id="another")  # not the current movie
        s.end()
        stats = s.wait(sid, 60)
        assert stats.problem is None and stats.summary is not None and stats.summary.state == "complete"
        assert stats.started.pixel_size == PixelSize(size=0.02, units="nm") and stats.started.frames == 3
        assert stats.started.frame_interval_s == 0.5
        assert sorted(results) == [(sid, k, 64) for k in range(3)] and stats.frame_results == 3
        assert stats.summary.recognizers[REC].novel_fraction == 1.0
        assert not s.line(0, np.ones((4, 10), np.float32))  # no spectrum scan is open

        sid = s.start_movie("movie-coarse", (64, 64), 1.0)
        t0 = time.monotonic()
        for k in range(3):
            s.frame(k, np.ones((64, 64), np.float32))
        assert time.monotonic() - t0 < 0.5
        s.end()
        stats = s.wait(sid, 15)
        assert problems == [(sid, problems[0][1])] and "refused scan movie-coarse" in problems[0][1]
        assert "rescaling" in problems[0][1]
        assert stats.frames_sent == 0 and stats.frames_dropped == 3

        bad = s.start_movie("movie-uncalibrated", (8, 8), None)
        assert not s.frame(0, np.ones((8, 8), np.float32))
        assert problems[-1][0] == bad and "no spatial calibration" in problems[-1][1]
