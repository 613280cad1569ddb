"""The scan lifecycle without sockets: ``ScanManager`` fed decoded messages, real ONNX models, real workers.

Messages go through the real codec (``encode`` then ``decode``), so the manager sees exactly what the
server hands it; what it returns, and what it returns for each finished work item, is what the
server would publish.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from scanlens.pipeline import Publication, open_recognizer
from scanlens.protocol.codec import ProtocolError
from scanlens.protocol.messages import (Data, Event, Frame, Maps, PixelSize, Request, ScanEnd, ScanStart,
                                        ScanStarted, ScanSummary)
from scanlens.testing import (FRAME_PIXEL_NM, ManagerHarness, band_axis, band_spectra, render_frame,
                              write_band_model, write_frame_model)


@pytest.fixture
def recognizers(tmp_path):
    band = open_recognizer(write_band_model(tmp_path / "band.onnx"), threads=1)
    frame = open_recognizer(write_frame_model(tmp_path / "frame.onnx"), threads=1)
    return {band.name: band, frame.name: frame}


async def test_a_scan_from_start_to_summary(recognizers) -> None:
    h = ManagerHarness(recognizers)
    truth = np.array([[0, 1, 2, 1], [2, 2, 0, 0], [1, 0, 1, 2]])
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(w.serve()) for w in h.manager.workers.values()]
        (started,) = await h.send(ScanStart(scan_id="s1", modality="eels", shape=truth.shape, axis=band_axis()))
        assert isinstance(started.header, ScanStarted) and started.topic == "scan/s1/started"
        assert started.header.recognizers == ["band"] and "band" in started.header.outputs
        for row in range(truth.shape[0]):
            spectra = band_spectra(truth[row])
            assert await h.send(Data(scan_id="s1", seq=row, row=row, col0=0, shape=spectra.shape,
                                     dtype="float32"), [spectra]) == []
        await h.send(ScanEnd(scan_id="s1", n_messages=truth.shape[0]))
        async with asyncio.timeout(10):
            await h.done.wait()
        for t in tasks:
            t.cancel()
    maps = h.of(Maps)
    assert sorted(m.row for m in maps) == [0, 1, 2]
    by_row = {p.header.row: p.arrays for p in h.published if isinstance(p.header, Maps)}
    for row in range(truth.shape[0]):
        np.testing.assert_array_equal(by_row[row][0], truth[row])  # the first array is the class map
    (summary,) = h.of(ScanSummary)
    assert summary.state == "complete" and summary.pixels_recognized == truth.size and not summary.lost
    assert h.manager.counters["pixels_recognized"] == truth.size and "s1" in h.manager.closed_scans
    result, specs, arrays = h.manager.query(Request(id=1, op="snapshot", scan_id="s1"))
    snap = dict(zip([s.name for s in specs], arrays))
    np.testing.assert_array_equal(snap["band/class"], truth)
    assert result["summary"]["state"] == "complete"


async def test_refusals_and_accounting(recognizers) -> None:
    h = ManagerHarness(recognizers, max_open_scans=1)
    await h.send(ScanStart(scan_id="a", modality="eels", shape=(2, 3), axis=band_axis()))
    with pytest.raises(ProtocolError) as exc:
        await h.send(ScanStart(scan_id="a", modality="eels", shape=(2, 3), axis=band_axis()))
    assert exc.value.code == "scan_rejected"
    with pytest.raises(ProtocolError) as exc:
        await h.send(ScanStart(scan_id="b", modality="eels", shape=(2, 3), axis=band_axis()))
    assert exc.value.code == "scan_rejected" and "limit is 1" in exc.value.reason
    spectra = band_spectra(np.zeros(3, int))
    with pytest.raises(ProtocolError) as exc:
        await h.send(Data(scan_id="zz", seq=0, row=0, col0=0, shape=spectra.shape, dtype="float32"), [spectra])
    assert exc.value.code == "unknown_scan"
    bad = spectra.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ProtocolError) as exc:
        await h.send(Data(scan_id="a", seq=0, row=0, col0=0, shape=bad.shape, dtype="float32"), [bad])
    assert exc.value.code == "data_rejected" and "NaN" in exc.value.reason
    # an undecodable message that still names its scan and seq counts as rejected, with an event
    (event,) = h.manager.unreadable(ProtocolError("bad_message", "garbage", scan_id="a", seq=1))
    assert isinstance(event.header, Event) and event.topic == "scan/a/event" and event.header.seq == 1
    await h.send(ScanEnd(scan_id="a", n_messages=2))  # nothing in flight: closes at once
    (summary,) = h.of(ScanSummary)
    assert summary.state == "incomplete" and [r.seq for r in summary.rejected] == [0, 1] and summary.lost == []
    with pytest.raises(ProtocolError) as exc:  # after the close: late, and kept with the closed scan
        await h.send(Data(scan_id="a", seq=1, row=1, col0=0, shape=spectra.shape, dtype="float32"), [spectra])
    assert exc.value.code == "late" and h.manager.closed_scans["a"].late == [1]


async def test_values_the_models_cannot_hold_are_refused_and_negative_ones_are_taken(recognizers) -> None:
    """docs/protocol.md §3.2 (1.1): any finite value is taken as it is, negative ones included (a
    background-subtracted spectrum); float64 values beyond float32's range are refused like NaN, since
    the models compute in float32."""
    h = ManagerHarness(recognizers)
    async with h.serving():
        await _values_scan(h)


async def _values_scan(h: ManagerHarness) -> None:
    await h.send(ScanStart(scan_id="v", modality="eels", shape=(3, 3), axis=band_axis()))
    spectra = band_spectra(np.zeros(3, int)).astype(np.float64)
    huge = spectra.copy()
    huge[1, 2] = -1e39
    with pytest.raises(ProtocolError) as exc:
        await h.send(Data(scan_id="v", seq=0, row=0, col0=0, shape=huge.shape, dtype="float64"), [huge])
    assert exc.value.code == "data_rejected" and "beyond float32's range" in exc.value.reason
    await h.send(Data(scan_id="v", seq=1, row=1, col0=0, shape=spectra.shape, dtype="float64"), [spectra - 500.0])
    await h.send(Data(scan_id="v", seq=2, row=2, col0=0, shape=spectra.shape, dtype="float64"), [spectra * 1e30])
    await h.send(ScanEnd(scan_id="v", n_messages=3))
    summary = await h.wait_summary("v")
    assert [r.seq for r in summary.rejected] == [0] and summary.recognizers["band"].pixels_recognized == 6


async def test_choice_of_processors(recognizers) -> None:
    m = ManagerHarness(recognizers).manager
    frames = ScanStart(scan_id="f", modality="haadf", shape=(32, 32), pixel_size=PixelSize(size=0.02, units="nm"))
    assert [p.name for p in m.choose(frames)] == ["frame-test"]
    spectral = ScanStart(scan_id="e", modality="eels", shape=(2, 2), axis=band_axis())
    assert [p.name for p in m.choose(spectral)] == ["band"]
    other = ScanStart(scan_id="o", modality="bepfm", shape=(2, 2), axis=band_axis())
    assert [p.name for p in m.choose(other)] == ["pca"]  # no recognizer of the modality: PCA
    with pytest.raises(ProtocolError, match="no image recognizer for modality 'stm'"):
        m.choose(frames.model_copy(update={"modality": "stm"}))
    with pytest.raises(ProtocolError, match="unknown recognizer 'nope'"):
        m.choose(spectral.model_copy(update={"recognizers": ["nope"]}))
    with pytest.raises(ProtocolError, match="is for modality 'haadf'"):
        m.choose(spectral.model_copy(update={"recognizers": ["frame-test"]}))


async def test_latest_policy_skips_queued_frames(recognizers) -> None:
    """With no worker running, queued frames stay queued: each newer frame replaces the older one."""
    h = ManagerHarness(recognizers)
    shape = (40, 40)
    await h.send(ScanStart(scan_id="m", modality="haadf", shape=shape, policy="latest",
                           pixel_size=PixelSize(size=FRAME_PIXEL_NM, units="nm")))
    image = render_frame(shape, np.array([[10.0, 10.0], [30.0, 20.0]]), np.zeros((0, 2)))
    for i in range(3):
        out = await h.send(Frame(scan_id="m", seq=i, frame=i, shape=shape, dtype="float32"), [image])
        assert [e.header.seq for e in out] == ([] if i == 0 else [i - 1])
        assert all(e.header.code == "skipped" and e.header.level == "info" for e in out)
    worker = h.manager.workers["frame-test"]
    assert [item.seq for item in worker.queue.discard(lambda item: True)] == [2]
    assert h.manager.open_scans["m"].skipped == [0, 1] and h.manager.counters["frames_skipped"] == 2


async def test_a_silent_scan_times_out(recognizers) -> None:
    h = ManagerHarness(recognizers, scan_timeout_s=5.0)
    await h.send(ScanStart(scan_id="t", modality="eels", shape=(2, 2), axis=band_axis()))
    h.clock.now = 4.0
    assert h.manager.expire() == []
    h.clock.now = 6.0
    out = h.manager.expire()
    assert [p.header.code for p in out if isinstance(p.header, Event)] == ["scan_timeout"]
    assert out[-1].header.state == "timed_out" and "t" not in h.manager.open_scans


def test_an_event_is_always_publishable(recognizers) -> None:
    """Whatever identifiers a caller passes, ``event`` returns a valid event (issue 10: one header must
    not stop the service through its own error report)."""
    m = ManagerHarness(recognizers).manager
    pub = m.event("bad_message", "broken", scan_id="a/b", seq=-3)
    assert pub.topic == "service/event" and pub.header.scan_id is None and pub.header.seq is None
    assert "not publishable" in pub.header.reason and m.counters["event.bad_message"] == 1
    ok = m.event("late", "fine", scan_id="s-1", seq=4)
    assert ok.topic == "scan/s-1/event" and ok.header.seq == 4


async def test_data_after_a_closed_scan_was_evicted_is_still_late(recognizers) -> None:
    """Only ``keep_closed_scans`` records are kept, but the ids of evicted scans are remembered, so late
    data is reported as ``late`` (as documented), not as ``unknown_scan`` (issue 10)."""
    h = ManagerHarness(recognizers, keep_closed_scans=1)
    for sid in ("first", "second"):
        await h.send(ScanStart(scan_id=sid, modality="eels", shape=(1, 3), axis=band_axis()))
        await h.send(ScanEnd(scan_id=sid, n_messages=0))
    assert list(h.manager.closed_scans) == ["second"] and "first" in h.manager.evicted_ids
    spectra = band_spectra(np.zeros(3, int))
    with pytest.raises(ProtocolError) as exc:
        await h.send(Data(scan_id="first", seq=0, row=0, col0=0, shape=spectra.shape, dtype="float32"), [spectra])
    assert exc.value.code == "late" and "no longer kept" in exc.value.reason
    with pytest.raises(ProtocolError) as exc:
        await h.send(Data(scan_id="never", seq=0, row=0, col0=0, shape=spectra.shape, dtype="float32"), [spectra])
    assert exc.value.code == "unknown_scan"
    # a closed id may be reused: the new scan is open, and the old id is no longer "evicted"
    await h.send(ScanStart(scan_id="first", modality="eels", shape=(1, 3), axis=band_axis()))
    assert "first" in h.manager.open_scans and "first" not in h.manager.evicted_ids


def test_frame_results_are_published_in_arrival_order(recognizers) -> None:
    """Two frames in flight can finish in either order; publications wait for every earlier frame,
    and a frame that will never come (skipped, failed) stops holding the others back."""
    start = ScanStart(scan_id="o", modality="haadf", shape=(32, 32), pixel_size=PixelSize(size=0.02, units="nm"))
    binding = recognizers["frame-test"].bind(start)
    for seq in range(4):
        binding.admit(seq)
    pub = {seq: Publication(f"t{seq}", Event(code="internal", reason=str(seq))) for seq in range(4)}
    assert binding.in_order(1, [pub[1]]) == []                 # frame 0 is still in flight
    assert binding.in_order(0, [pub[0]]) == [pub[0], pub[1]]   # ... now both, in order
    assert binding.in_order(3, [pub[3]]) == []                 # frame 2 is still in flight
    binding.forget(2)                                          # ... and never comes (skipped)
    assert binding.flush() == [pub[3]]
    assert binding.in_order(9, [pub[0]]) == [pub[0]]           # a seq never admitted is not held


async def test_spatial_and_time_calibration_travel_with_the_scan(recognizers) -> None:
    """scan_start's scan_step (spectral) and frame_interval_s (imaging) are echoed in scan_started; a
    scan_step that is not a length is refused; each belongs to one kind of scan only."""
    h = ManagerHarness(recognizers)
    step = PixelSize(size=0.4, units="nm")
    (started,) = await h.send(ScanStart(scan_id="si", modality="eels", shape=(2, 3), axis=band_axis(), scan_step=step))
    assert started.header.scan_step == step and started.header.frame_interval_s is None
    (started,) = await h.send(ScanStart(scan_id="mv", modality="haadf", shape=(64, 64), frames=2,
                                        pixel_size=PixelSize(size=FRAME_PIXEL_NM, units="nm"), frame_interval_s=0.04))
    assert started.header.frame_interval_s == 0.04 and started.header.scan_step is None
    with pytest.raises(ProtocolError) as exc:
        await h.send(ScanStart(scan_id="bad", modality="eels", shape=(2, 3), axis=band_axis(),
                               scan_step=PixelSize(size=1.0, units="eV")))
    assert exc.value.code == "scan_rejected" and "not a length" in exc.value.reason
    assert "bad" not in h.manager.open_scans
    with pytest.raises(ValueError, match="scan_step applies to spectral"):
        ScanStart(scan_id="x", modality="haadf", shape=(8, 8), pixel_size=step, scan_step=step)
    with pytest.raises(ValueError, match="frame_interval_s applies to imaging"):
        ScanStart(scan_id="x", modality="eels", shape=(2, 3), axis=band_axis(), frame_interval_s=0.1)
    with pytest.raises(ValueError):
        ScanStart(scan_id="x", modality="haadf", shape=(8, 8), pixel_size=step, frame_interval_s=-1.0)


async def test_a_short_lone_line_for_an_idle_recognizer_runs_on_the_event_loop(recognizers) -> None:
    """A line that already is the model's input and short enough (idle_inline_pixels) is recognized and its
    maps published inside ingest itself when the recognizer is idle; a longer one, or one that needs the axis
    mapped, is queued for an inference thread; all come out alike."""
    band = recognizers["band"]
    band.idle_inline_pixels = 16
    h = ManagerHarness(recognizers)
    async with h.serving():
        await h.send(ScanStart(scan_id="s", modality="eels", shape=(3, 40), axis=band_axis()))
        short = band_spectra(np.array([0, 1, 2] * 5))  # 15 spectra
        await h.send(Data(scan_id="s", seq=0, row=0, col0=0, shape=short.shape, dtype="float32"), [short])
        assert [m.seq for m in h.of(Maps)] == [0]  # published before ingest returned
        await h.send(Data(scan_id="s", seq=1, row=1, col0=0, shape=short.shape, dtype="float64"),
                     [short.astype(np.float64)])
        assert [m.seq for m in h.of(Maps)] == [0]  # queued: not the model's input as it is (float64)
        await h.wait_for_idle("s")
        long = band_spectra(np.array([2, 1] * 10))  # 20 spectra: more than idle_inline_pixels
        await h.send(Data(scan_id="s", seq=2, row=2, col0=0, shape=long.shape, dtype="float32"), [long])
        assert [m.seq for m in h.of(Maps)] == [0, 1]  # queued
        await h.send(ScanEnd(scan_id="s", n_messages=3))
        summary = await h.wait_summary("s")
    assert summary.state == "incomplete" and summary.pixels_recognized == 15 + 20 + 15 and summary.n_lost == 0
    by_seq = {p.header.seq: p.arrays[0] for p in h.published if isinstance(p.header, Maps)}
    np.testing.assert_array_equal(by_seq[0], [0, 1, 2] * 5)
    np.testing.assert_array_equal(by_seq[1], [0, 1, 2] * 5)
    np.testing.assert_array_equal(by_seq[2], [2, 1] * 10)
