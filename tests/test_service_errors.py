"""Bad input over real sockets: each gets an error event naming the reason, and the service goes on."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from scanlens.protocol.messages import Data, ScanEnd, ScanStart, ScanSummary
from scanlens.testing import (band_axis, band_spectra, data_frames, live, send_band_scan, wait_for_event,
                              wait_for_summary)


async def good_scan(inst, sub, scan_id: str, rows: int = 3, cols: int = 5) -> ScanSummary:
    truth = np.arange(rows * cols).reshape(rows, cols) % 3
    await send_band_scan(inst, scan_id, truth)
    result = await sub.collect_scan(scan_id, timeout=10)
    np.testing.assert_array_equal(result.maps["band"]["class"], truth)
    assert result.summary.state == "complete"
    return result.summary


async def start(inst, scan_id: str, rows: int = 3, cols: int = 5) -> None:
    await inst.send(ScanStart(scan_id=scan_id, modality="eels", shape=(rows, cols), axis=band_axis()))


async def test_garbage_bytes(clients):
    inst, sub, ctl = clients
    await inst.sock.send_multipart([b"\x00\xffnot msgpack at all", b"more"])
    ev = await wait_for_event(sub, "bad_message")
    assert ev.scan_id is None and "msgpack" in ev.reason
    await good_scan(inst, sub, "after-garbage")
    assert (await ctl.status())["counters"]["event.bad_message"] == 1


async def test_wrong_dtype(clients):
    inst, sub, _ = clients
    await start(inst, "dt")
    spectra = band_spectra([0, 1, 2, 0, 1])
    await inst.sock.send_multipart(data_frames("dt", 0, 0, spectra, dtype="float16"))
    ev = await wait_for_event(sub, "bad_message")
    assert ev.scan_id == "dt" and ev.seq == 0 and "dtype" in ev.reason
    # a dtype that is valid but contradicts the buffer's size
    await inst.sock.send_multipart(data_frames("dt", 1, 1, spectra, dtype="float64"))
    ev = await wait_for_event(sub, "data_rejected")
    assert ev.seq == 1 and "bytes" in ev.reason and "float64" in ev.reason
    await inst.send(ScanEnd(scan_id="dt", n_messages=2))
    s = await wait_for_summary(sub)
    assert [r.seq for r in s.rejected] == [0, 1] and s.lost == []
    await good_scan(inst, sub, "after-dtype")


async def test_shape_contradicting_scan_start(clients):
    inst, sub, _ = clients
    await start(inst, "shape")
    wrong_channels = np.ones((5, 61), np.float32)
    await inst.sock.send_multipart(data_frames("shape", 0, 0, wrong_channels))
    ev = await wait_for_event(sub, "data_rejected")
    assert ev.scan_id == "shape" and "61 channels" in ev.reason and "60" in ev.reason
    too_many_pixels = band_spectra([0] * 6)
    await inst.sock.send_multipart(data_frames("shape", 1, 0, too_many_pixels))
    ev = await wait_for_event(sub, "data_rejected")
    assert "outside the scan shape" in ev.reason
    await inst.sock.send_multipart(data_frames("shape", 2, 7, band_spectra([0] * 5)))
    ev = await wait_for_event(sub, "data_rejected")
    assert "row 7" in ev.reason
    await inst.send(ScanEnd(scan_id="shape", n_messages=3))
    s = await wait_for_summary(sub)
    assert s.scan_id == "shape" and s.state == "incomplete"
    assert [r.seq for r in s.rejected] == [0, 1, 2] and s.lost == [] and s.pixels_recognized == 0
    await good_scan(inst, sub, "after-shape")


async def test_nan_is_rejected_and_other_lines_recognized(clients):
    inst, sub, _ = clients
    async with inst.scan("nan", "eels", (3, 5), band_axis()) as scan:
        await scan.send_line(0, band_spectra([0] * 5))
        bad = band_spectra([1] * 5)
        bad[2, 3] = np.nan
        await scan.send_line(1, bad)
        await scan.send_line(2, band_spectra([2] * 5))
    result = await sub.collect_scan("nan")
    s = result.summary
    assert [(r.seq, "NaN" in r.reason) for r in s.rejected] == [(1, True)]
    assert s.pixels_recognized == 10 and s.state == "incomplete"
    assert result.filled["band"][[0, 2]].all() and not result.filled["band"][1].any()
    assert any(e.code == "data_rejected" and e.seq == 1 for e in result.events)


async def test_unknown_scan(clients):
    inst, sub, _ = clients
    await inst.sock.send_multipart(data_frames("nobody", 4, 0, band_spectra([0])))
    ev = await wait_for_event(sub, "unknown_scan")
    assert ev.scan_id == "nobody" and ev.seq == 4 and "not open" in ev.reason
    await inst.send(ScanEnd(scan_id="nobody", n_messages=1))
    ev = await wait_for_event(sub, "unknown_scan")
    assert "scan_end" in ev.reason
    await good_scan(inst, sub, "after-unknown")


async def test_oversized_message(settings):
    small = settings.model_copy(update={"max_message_bytes": 4096})
    async with live(small) as (_, inst, sub):
        await start(inst, "big", rows=3, cols=20)
        huge = band_spectra([0] * 20)  # 20 * 60 * 4 = 4800 bytes > 4096
        await inst.send(Data(scan_id="big", seq=0, row=0, shape=huge.shape, dtype="float32"), [huge])
        ev = await wait_for_event(sub, "oversized")
        assert ev.scan_id == "big" and ev.seq == 0 and "4800 bytes" in ev.reason and "4096" in ev.reason
        await good_scan(inst, sub, "after-oversized")


async def test_duplicate_scan_start_keeps_open_scan(clients):
    inst, sub, _ = clients
    async with inst.scan("dup", "eels", (2, 5), band_axis()) as scan:
        await scan.send_line(0, band_spectra([1] * 5))
        await start(inst, "dup", rows=9, cols=9)
        await scan.send_line(1, band_spectra([2] * 5))
    result = await sub.collect_scan("dup")
    assert any(e.code == "scan_rejected" and "already open" in e.reason for e in result.events)
    assert result.summary.state == "complete" and result.summary.pixels_expected == 10
    np.testing.assert_array_equal(result.maps["band"]["class"], [[1] * 5, [2] * 5])


async def test_lost_and_late_messages_are_reported(clients):
    inst, sub, ctl = clients
    await start(inst, "gaps", rows=3, cols=5)
    for seq in (0, 2):
        await inst.sock.send_multipart(data_frames("gaps", seq, seq, band_spectra([0] * 5)))
    await inst.send(ScanEnd(scan_id="gaps", n_messages=3))
    ev = await wait_for_event(sub, "lost")
    assert ev.seqs == [1]
    s = await wait_for_summary(sub)
    assert s.lost == [1] and s.state == "incomplete" and s.pixels_recognized == 10
    await inst.sock.send_multipart(data_frames("gaps", 1, 1, band_spectra([0] * 5)))
    ev = await wait_for_event(sub, "late")
    assert ev.scan_id == "gaps" and ev.seq == 1
    closed = {s["scan_id"]: s for s in (await ctl.scans())["closed"]}
    assert closed["gaps"]["late"] == [1]


async def test_scan_without_end_times_out(settings):
    quick = settings.model_copy(update={"scan_timeout_s": 0.3})
    async with live(quick) as (_, inst, sub):
        await start(inst, "abandoned", rows=4, cols=5)
        for seq in (0, 1, 3):  # the publisher dies after seq 3; seq 2 never came
            await inst.sock.send_multipart(data_frames("abandoned", seq, seq, band_spectra([0] * 5)))
        ev = await wait_for_event(sub, "scan_timeout")
        assert ev.scan_id == "abandoned"
        s = await wait_for_summary(sub)
        assert s.state == "timed_out" and s.messages_sent is None and s.lost == [2]
        assert s.pixels_recognized == 15


@pytest.mark.parametrize(("kind_header", "code"), [
    ({"v": 1, "kind": "request", "id": 1, "op": "status"}, "bad_message"),
    ({"v": 1, "kind": "scan_start", "scan_id": "x", "modality": "eels", "shape": [0, 5],
      "axis": {"size": 60, "offset": 10, "scale": 1, "units": "eV"}}, "scan_rejected"),
])
async def test_invalid_or_misrouted_headers(clients, kind_header, code):
    inst, sub, _ = clients
    await inst.sock.send_multipart([msgpack.packb(kind_header)])
    ev = await wait_for_event(sub, code)
    assert ev.reason and ev.scan_id == kind_header.get("scan_id")
    await good_scan(inst, sub, "after-invalid")
