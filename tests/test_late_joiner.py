"""A subscriber that joins a scan late still gets its maps: `collect_scan(..., control=...)` takes what it
missed from a `snapshot` (which carries the scan's `scan_started`) and the rest live. Real server, real
sockets, the hand-made band model whose every pixel is predictable."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from scanlens.client import Control, ScanResult, ServiceError, Subscriber
from scanlens.testing import band_axis, band_spectra, wait_for

ROWS, COLS = 24, 8


def same_maps(a: ScanResult, b: ScanResult) -> None:
    assert a.maps.keys() == b.maps.keys()
    for rec in a.maps:
        assert a.maps[rec].keys() == b.maps[rec].keys()
        for name in a.maps[rec]:
            np.testing.assert_array_equal(a.maps[rec][name], b.maps[rec][name], err_msg=f"{rec}/{name}")
        np.testing.assert_array_equal(a.filled[rec], b.filled[rec])


async def test_late_joiners_end_with_the_maps_of_a_subscriber_present_from_the_start(server, clients):
    inst, on_time_sub, _ = clients  # subscribed to everything and live before the scan starts
    truth = np.random.default_rng(5).integers(0, 3, size=(ROWS, COLS))
    filled = {ROWS // 2 * COLS: asyncio.Event(), ROWS * COLS: asyncio.Event()}

    def progress(result: ScanResult) -> None:
        done = int(result.filled["band"].sum())
        for n, ev in filled.items():
            if done >= n:
                ev.set()

    on_time = asyncio.create_task(on_time_sub.collect_scan("late", progress=progress, timeout=30))
    publish, control = server.endpoints["publish"], server.endpoints["control"]
    async with contextlib.AsyncExitStack() as stack:
        mid_ctl = await stack.enter_async_context(Control(control))
        end_ctl = await stack.enter_async_context(Control(control))
        async with inst.scan("late", "eels", truth.shape, band_axis()) as scan:
            for row in range(ROWS // 2):
                await scan.send_line(row, band_spectra(truth[row]))
            await asyncio.wait_for(filled[ROWS // 2 * COLS].wait(), 30)
            # joins mid-scan: half the maps are published already, the other half will come live
            mid_sub = await stack.enter_async_context(Subscriber(publish, scan_id="late"))
            await mid_sub.wait_ready()
            mid = asyncio.create_task(mid_sub.collect_scan("late", control=mid_ctl, timeout=30))
            for row in range(ROWS // 2, ROWS):
                await scan.send_line(row, band_spectra(truth[row]))
            await asyncio.wait_for(filled[ROWS * COLS].wait(), 30)
            # joins after every map was published, before scan_end: it will only see the summary
            end_sub = await stack.enter_async_context(Subscriber(publish, scan_id="late"))
            await end_sub.wait_ready()
            end = asyncio.create_task(end_sub.collect_scan("late", control=end_ctl, timeout=30))
            await asyncio.sleep(0.1)  # the joiner is waiting before the scan ends
        reference, mid_result, end_result = await asyncio.gather(on_time, mid, end)

    assert reference.summary.state == "complete" and not reference.recovered
    np.testing.assert_array_equal(reference.maps["band"]["class"], truth)
    for late in (mid_result, end_result):
        assert late.recovered  # from a snapshot
        assert late.started == reference.started
        assert late.summary == reference.summary
        assert late.missing_pixels() == 0 and late.filled["band"].all()
        same_maps(late, reference)
    assert len(mid_result.latencies_ms) >= ROWS // 2  # the second half came live, not from the snapshot


async def test_a_late_joiner_without_control_is_told_how_to_recover(server, clients):
    inst, on_time_sub, _ = clients
    async with contextlib.AsyncExitStack() as stack:
        async with inst.scan("late2", "eels", (2, COLS), band_axis()) as scan:
            await scan.send_line(0, band_spectra(np.zeros(COLS, int)))
            await wait_for(on_time_sub, "maps", scan_id="late2")  # scan_started was published before it
            late_sub = await stack.enter_async_context(Subscriber(server.endpoints["publish"], scan_id="late2"))
            await late_sub.wait_ready()
            await scan.send_line(1, band_spectra(np.ones(COLS, int)))
        with pytest.raises(ServiceError, match="joined after the scan started .*control="):
            await late_sub.collect_scan("late2", timeout=30)
