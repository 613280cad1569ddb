"""Accounting that costs what was received, never what a header claims (issue 10).

Each test drives a ``ScanManager`` through the real codec with real ONNX models and checks the
mechanism: sequence numbers kept as ranges, seqs beyond what a scan can have refused, seqs beyond
``scan_end``'s count reclassified, distinct pixels counted, and scans owned by the sender that
started them.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from scanlens.pipeline import ScanState, SeqRanges, open_recognizer
from scanlens.protocol.codec import ProtocolError, decode
from scanlens.protocol.messages import Data, Event, Frame, PixelSize, ScanEnd, ScanStart
from scanlens.testing import (FRAME_PIXEL_NM, ManagerHarness, band_axis, band_spectra, render_frame,
                              write_band_model, write_frame_model)

HUGE = 2**53


@pytest.fixture
def recognizers(tmp_path):
    band = open_recognizer(write_band_model(tmp_path / "band.onnx"), threads=1)
    frame = open_recognizer(write_frame_model(tmp_path / "frame.onnx"), threads=1)
    return {band.name: band, frame.name: frame}


def _line(scan_id: str, seq: int, row: int, classes, col0: int = 0):
    spectra = band_spectra(classes)
    return Data(scan_id=scan_id, seq=seq, row=row, col0=col0, shape=spectra.shape, dtype="float32"), [spectra]


def test_seq_ranges_behave_as_a_set() -> None:
    rng = np.random.default_rng(0)
    ranges, reference = SeqRanges(), set()
    for seq in rng.integers(0, 300, 2000):
        assert ranges.add(int(seq)) == (int(seq) not in reference)
        reference.add(int(seq))
    assert set(ranges) == reference and len(ranges) == len(reference)
    assert all((s in ranges) == (s in reference) for s in range(-2, 305))
    gaps = ranges.gaps(310)
    assert {s for a, b in gaps for s in range(a, b)} == set(range(310)) - reference
    removed = ranges.discard_from(150)
    assert {s for a, b in removed for s in range(a, b)} == {s for s in reference if s >= 150}
    assert set(ranges) == {s for s in reference if s < 150}


def test_an_in_order_scan_is_one_run_however_long() -> None:
    ranges = SeqRanges()
    for seq in range(100_000):
        ranges.add(seq)
    assert ranges.runs == 1 and len(ranges) == 100_000
    assert ranges.gaps(HUGE) == [(100_000, HUGE)]  # O(runs): the missing 2**53 seqs are one range


async def test_an_absurd_n_messages_costs_nothing(recognizers) -> None:
    """Was: scan_end with n_messages of 2**53 materialized every missing seq (minutes, gigabytes)."""
    h = ManagerHarness(recognizers)
    async with h.serving():
        await h.send(ScanStart(scan_id="s", modality="eels", shape=(4, 3), axis=band_axis()))
        for row in range(3):
            await h.send(*_line("s", row, row, [0, 1, 2]))
        await h.send(ScanEnd(scan_id="s", n_messages=HUGE))
        summary = await h.wait_summary("s")
    assert summary.state == "incomplete" and summary.messages_sent == HUGE
    assert summary.n_lost == HUGE - 3 and summary.lost_ranges == [(3, HUGE)]
    assert len(summary.lost) == 4096 and summary.lost[:2] == [3, 4]  # listed one by one: only the first
    (lost,) = [e for e in h.of(Event) if e.code == "lost"]
    assert f"{HUGE - 3} data messages never arrived" in lost.reason and len(lost.seqs) == 4096


async def test_a_huge_seq_then_a_timeout_costs_nothing(recognizers) -> None:
    """Was: one huge seq followed by the timeout materialized every seq below it as lost."""
    h = ManagerHarness(recognizers, scan_timeout_s=5.0)
    frame = render_frame((32, 32), np.array([[10.0, 10.0]]), np.zeros((0, 2)))
    async with h.serving():
        await h.send(ScanStart(scan_id="m", modality="haadf", shape=frame.shape,
                               pixel_size=PixelSize(size=FRAME_PIXEL_NM, units="nm")))
        for seq in (0, 2**40):
            await h.send(Frame(scan_id="m", seq=seq, frame=seq, shape=frame.shape, dtype="float32"), [frame])
        await h.wait_for_idle("m")
        h.clock.now = 100.0
        h.published += h.manager.expire()
    summary = h.summary("m")
    assert summary.state == "timed_out" and summary.lost_ranges == [(1, 2**40)] and summary.n_lost == 2**40 - 1


async def test_a_seq_beyond_what_the_scan_can_have_is_refused(recognizers) -> None:
    """A spectral scan has at most rows*cols messages: a seq at or beyond that is refused on arrival."""
    h = ManagerHarness(recognizers)
    async with h.serving():
        await h.send(ScanStart(scan_id="s", modality="eels", shape=(2, 3), axis=band_axis()))
        with pytest.raises(ProtocolError, match="beyond the 6 messages") as exc:
            await h.send(*_line("s", 6, 0, [0, 1, 2]))
        assert exc.value.code == "data_rejected" and exc.value.seq == 6
        for row in range(2):
            await h.send(*_line("s", row, row, [0, 1, 2]))
        await h.send(ScanEnd(scan_id="s", n_messages=2))
        summary = await h.wait_summary("s")
    assert [r.seq for r in summary.rejected] == [6] and summary.n_lost == 0


async def test_seqs_beyond_scan_end_sent_before_it_are_rejected_not_counted(recognizers) -> None:
    """Was: seq 2 of a scan that then said n_messages=2 was recognized and counted: pixels_recognized
    above the scan's pixels, messages_received above messages_sent, 'incomplete' with nothing listed."""
    h = ManagerHarness(recognizers)
    async with h.serving():
        await h.send(ScanStart(scan_id="s", modality="eels", shape=(2, 3), axis=band_axis()))
        for seq in range(3):  # the third line repeats row 1
            await h.send(*_line("s", seq, min(seq, 1), [0, 1, 2]))
        await h.wait_for_idle("s")
        await h.send(ScanEnd(scan_id="s", n_messages=2))
        summary = await h.wait_summary("s")
    assert summary.messages_sent == 2 and summary.messages_received == 3
    assert [r.seq for r in summary.rejected] == [2] and "beyond scan_end's n_messages=2" in summary.rejected[0].reason
    assert summary.pixels_recognized == summary.pixels_expected == 6  # distinct pixels, never more
    assert summary.state == "incomplete" and summary.n_lost == 0
    (warning,) = [e for e in h.of(Event) if e.code == "data_rejected"]
    assert warning.seqs == [2]


async def test_frames_beyond_scan_end_recognized_before_it_are_not_counted(recognizers) -> None:
    """Was (found by tests/test_fuzz.py): frame 0 refused, frames 1 and 2 recognized, then scan_end with
    n_messages=1: the summary said one frame's pixels were recognized (the two beyond, capped at the
    one expected), though the only frame expected was refused."""
    h = ManagerHarness(recognizers)
    frame = render_frame((32, 32), np.array([[10.0, 10.0]]), np.zeros((0, 2)))
    async with h.serving():
        await h.send(ScanStart(scan_id="m", modality="haadf", shape=frame.shape,
                               pixel_size=PixelSize(size=FRAME_PIXEL_NM, units="nm")))
        with pytest.raises(ProtocolError, match="differs from scan_start"):
            await h.send(Frame(scan_id="m", seq=0, frame=0, shape=(32, 31), dtype="float32"), [frame[:, :31].copy()])
        for seq in (1, 2):
            await h.send(Frame(scan_id="m", seq=seq, frame=seq, shape=frame.shape, dtype="float32"), [frame])
        await h.wait_for_idle("m")
        await h.send(ScanEnd(scan_id="m", n_messages=1))
        summary = await h.wait_summary("m")
    assert [r.seq for r in summary.rejected] == [0, 1, 2] and summary.pixels_expected == frame.size
    assert summary.pixels_recognized == 0 and summary.state == "incomplete"
    assert summary.recognizers["frame-test"].frames_recognized == 2  # their results were published


async def test_overlapping_lines_do_not_count_pixels_twice(recognizers) -> None:
    h = ManagerHarness(recognizers)
    async with h.serving():
        await h.send(ScanStart(scan_id="s", modality="eels", shape=(1, 4), axis=band_axis()))
        await h.send(*_line("s", 0, 0, [0, 1, 2]))
        await h.send(*_line("s", 1, 0, [2, 1], col0=2))  # cols 2..3: col 2 again
        await h.send(ScanEnd(scan_id="s", n_messages=2))
        summary = await h.wait_summary("s")
    assert summary.pixels_recognized == 4 and summary.pixels_received == 5
    assert summary.state == "incomplete"  # a pixel came twice: not a clean scan


async def test_a_scan_belongs_to_the_sender_that_started_it(recognizers) -> None:
    """Was: any process could inject lines into another instrument's scan (recognized as the victim's,
    summary still 'complete'), close it early, or poison a future seq with one unreadable header."""
    h = ManagerHarness(recognizers)
    truth = np.array([[0, 1, 2], [2, 1, 0]])
    async with h.serving():
        await h.send(ScanStart(scan_id="s", modality="eels", shape=truth.shape, axis=band_axis()), owner="alice")
        await h.send(*_line("s", 0, 0, truth[0]), owner="alice")
        for header, arrays in (_line("s", 1, 1, [0, 0, 0]), (ScanEnd(scan_id="s", n_messages=1), [])):
            with pytest.raises(ProtocolError) as exc:
                await h.send(header, arrays, owner="mallory")
            assert exc.value.code == "forbidden" and exc.value.scan_id == "s"
        # an unreadable message naming seq 1 from another sender does not take seq 1 from the owner
        h.published += h.manager.unreadable(ProtocolError("bad_message", "garbage", scan_id="s", seq=1), "mallory")
        with pytest.raises(ProtocolError, match="forbidden|did not start"):
            await h.send(*_line("s", 1, 1, truth[1]))  # unauthenticated (owner None) is another sender too
        await h.send(*_line("s", 1, 1, truth[1]), owner="alice")
        await h.send(ScanEnd(scan_id="s", n_messages=2), owner="alice")
        summary = await h.wait_summary("s")
    assert summary.state == "complete" and summary.rejected == [] and summary.pixels_recognized == truth.size
    assert h.manager.counters["foreign_messages"] == 3


@pytest.mark.parametrize("override", [{"shape": [0, 3]}, {"meta": {"raw": b"\x00"}}, {"axis": None},
                                      {"modality": "a b"}, {"v": 2}, {"extra": 1}])
async def test_every_scan_start_is_answered_scan_rejected_naming_the_scan(recognizers, override) -> None:
    """Was: an invalid scan_start with a readable id was a bad_message (or an internal event) with no
    scan id: its sender, waiting on its scan's topic, never heard back."""
    h = ManagerHarness(recognizers)
    header = {"v": 1, "kind": "scan_start", "scan_id": "s", "modality": "eels", "shape": [2, 3],
              "axis": band_axis().model_dump(), **override}
    with pytest.raises(ProtocolError) as exc:
        decode([msgpack.packb(header)])
    (event,) = [p.header for p in h.manager.unreadable(exc.value)]
    assert event.code == "scan_rejected" and event.scan_id == "s" and "scan_start refused" in event.reason


async def test_a_second_scan_start_for_an_open_id_is_scan_rejected(recognizers) -> None:
    h = ManagerHarness(recognizers)
    await h.send(ScanStart(scan_id="s", modality="eels", shape=(2, 3), axis=band_axis()))
    with pytest.raises(ProtocolError, match="already open") as exc:
        await h.send(ScanStart(scan_id="s", modality="eels", shape=(2, 3), axis=band_axis()))
    assert exc.value.code == "scan_rejected" and exc.value.scan_id == "s"


# --------------------------------------------------------------------------- memory budget


def _start(scan_id: str, shape=(2, 3)) -> ScanStart:
    return ScanStart(scan_id=scan_id, modality="eels", shape=shape, axis=band_axis())


async def test_a_scan_whose_maps_do_not_fit_the_budget_is_refused_with_the_figures(recognizers) -> None:
    """Was: 16 scans of 4096 x 4096 (the open-scan limit) allocated their maps in full and exhausted the
    machine. Now every scan reserves its maps in one ledger, and one that does not fit is refused."""
    h = ManagerHarness(recognizers, memory_budget_bytes=64 * 2**20)
    await h.send(_start("small"))
    per_scan = h.manager.ledger.held("small")
    assert per_scan == h.manager.open_scans["small"].footprint() > 0
    with pytest.raises(ProtocolError, match=r"do not fit the memory budget: needs .* MiB; .* of the 64.0 MiB") as exc:
        await h.send(_start("huge", shape=(4096, 4096)))
    assert exc.value.code == "scan_rejected" and exc.value.scan_id == "huge"
    assert h.manager.ledger.used == per_scan and "huge" not in h.manager.open_scans
    assert h.manager.status().memory_bytes == per_scan


async def test_many_big_scans_stay_within_the_budget(recognizers) -> None:
    budget = 256 * 2**20
    h = ManagerHarness(recognizers, memory_budget_bytes=budget, max_open_scans=16)
    accepted = refused = 0
    for i in range(16):
        try:
            await h.send(_start(f"big{i}", shape=(2048, 2048)))
            accepted += 1
        except ProtocolError as exc:
            assert exc.code == "scan_rejected" and "memory budget" in exc.reason
            refused += 1
        assert h.manager.ledger.used <= budget
    assert accepted >= 1 and refused >= 1 and accepted + refused == 16
    assert h.manager.ledger.peak <= budget


async def test_memory_comes_back_when_a_closed_scan_is_dropped(recognizers) -> None:
    """Closed scans keep their maps for snapshot; their reservation is released when the record goes,
    and retained closed scans give way to a new scan that needs the room."""
    small, big = _footprint(recognizers, (1, 3)), _footprint(recognizers, (512, 1024))
    h = ManagerHarness(recognizers, keep_closed_scans=1, memory_budget_bytes=big + small - 1)
    async with h.serving():
        for sid in ("a", "b"):
            await h.send(_start(sid, shape=(1, 3)))
            await h.send(*_line(sid, 0, 0, [0, 1, 2]))
            await h.send(ScanEnd(scan_id=sid, n_messages=1))
            await h.wait_summary(sid)
    assert list(h.manager.closed_scans) == ["b"] and h.manager.ledger.held("a") == 0
    assert h.manager.ledger.used == h.manager.ledger.held("b") == small
    # the big scan fits only without the retained closed scan: that record gives way, it is not refused
    await h.send(_start("room", shape=(512, 1024)))
    assert "b" not in h.manager.closed_scans and h.manager.ledger.used == h.manager.ledger.held("room") == big
    with pytest.raises(ProtocolError, match="no longer kept") as exc:  # still late, not unknown_scan
        await h.send(*_line("b", 1, 0, [0, 1, 2]))
    assert exc.value.code == "late"


def _footprint(recognizers, shape) -> int:
    probe = ManagerHarness(recognizers)
    start = _start("probe", shape=shape)
    return ScanState.open(start, probe.manager.choose(start)).footprint()


async def test_a_scan_that_sends_nothing_gives_its_slot_back_soon(recognizers) -> None:
    """Was: 16 scan_starts without data held every slot until scan_timeout_s (60 s)."""
    h = ManagerHarness(recognizers, max_open_scans=2, scan_timeout_s=60.0, start_timeout_s=2.0)
    await h.send(_start("squat1"))
    await h.send(_start("busy"))
    await h.send(*_line("busy", 0, 0, [0, 1, 2]))
    with pytest.raises(ProtocolError, match="2 scans are open"):
        await h.send(_start("real"))
    h.clock.now = 3.0
    out = h.manager.expire()
    (timeout,) = [p.header for p in out if isinstance(p.header, Event) and p.header.code == "scan_timeout"]
    assert timeout.scan_id == "squat1" and "no data within 2 s of scan_start" in timeout.reason
    assert "busy" in h.manager.open_scans  # it sent data: the normal timeout applies
    await h.send(_start("real"))
