"""Reliability situations with a tested behaviour (docs/protocol.md §7): interleaved scans, a publisher restarting mid-scan,
a subscriber that never reads, backpressure that loses nothing."""

from __future__ import annotations

import asyncio

import numpy as np
import zmq

from scanlens.client import Control, Instrument, Subscriber
from scanlens.protocol.messages import Data, ScanEnd, ScanStart
from scanlens.testing import band_axis, band_spectra, live, send_band_scan


async def test_interleaved_scans_from_two_instruments(clients, server):
    _, sub, _ = clients
    truths = {sid: np.random.default_rng(k).integers(0, 3, size=(10, 7)) for k, sid in enumerate(("a", "b"))}
    insts = [Instrument(server.endpoints["ingest"], linger_s=0) for _ in truths]
    try:
        streams = [inst.scan(sid, "eels", truth.shape, band_axis()) for inst, (sid, truth) in zip(insts, truths.items())]
        for s in streams:
            await s.__aenter__()
        for row in range(10):  # strictly alternating lines of the two scans
            for s, truth in zip(streams, truths.values()):
                await s.send_line(row, band_spectra(truth[row]))
        for s in streams:
            await s.end()
        results = {}
        while len(results) < 2:
            msg = await sub.recv(10)
            if msg.header.kind == "scan_summary":
                results[msg.header.scan_id] = msg.header
        for sid, truth in truths.items():
            assert results[sid].state == "complete" and results[sid].pixels_recognized == truth.size
    finally:
        for inst in insts:
            inst.close()


async def test_publisher_restart_continues_the_scan(clients, server):
    """An instrument process dies after seq 3 and a new one carries on with seq 4: nothing is lost."""
    _, sub, _ = clients
    truth = np.random.default_rng(5).integers(0, 3, size=(8, 6))
    first = Instrument(server.endpoints["ingest"], linger_s=1)
    await first.send(ScanStart(scan_id="restart", modality="eels", shape=truth.shape, axis=band_axis()))
    for seq in range(4):
        await first.send(Data(scan_id="restart", seq=seq, row=seq, shape=(6, 60), dtype="float32"),
                         [band_spectra(truth[seq])])
    first.close()  # the "crash": its socket is gone
    async with Instrument(server.endpoints["ingest"], linger_s=1) as second:
        for seq in range(4, 8):
            await second.send(Data(scan_id="restart", seq=seq, row=seq, shape=(6, 60), dtype="float32"),
                              [band_spectra(truth[seq])])
        await second.send(ScanEnd(scan_id="restart", n_messages=8))
        result = await sub.collect_scan("restart")
    assert result.summary.state == "complete" and result.summary.lost == []
    np.testing.assert_array_equal(result.maps["band"]["class"], truth)


async def test_subscriber_that_never_reads_does_not_slow_the_scan(server):
    ctx = zmq.Context()
    stalled = ctx.socket(zmq.SUB)  # connects, subscribes to everything, never reads
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(server.endpoints["publish"])
    try:
        async with Instrument(server.endpoints["ingest"], linger_s=0) as inst, \
                Subscriber(server.endpoints["publish"], scan_id="busy") as sub:
            await sub.wait_ready()
            truth = np.random.default_rng(2).integers(0, 3, size=(200, 8))
            await send_band_scan(inst, "busy", truth)
            result = await sub.collect_scan("busy", timeout=20)
        assert result.summary.state == "complete" and not result.recovered
        np.testing.assert_array_equal(result.maps["band"]["class"], truth)
    finally:
        stalled.close(linger=0)
        ctx.term()


async def test_subscriber_that_fell_behind_recovers_from_a_snapshot(settings):
    """A PUB queue of 10 messages and a subscriber that only reads after the scan: maps are dropped
    for it (never for the scan), and collect_scan completes them from the control socket."""
    small_hwm = settings.model_copy(update={"publish_hwm": 10})
    async with live(small_hwm, scan_id="behind", hwm=10) as (srv, inst, sub):
        async with Control(srv.endpoints["control"]) as ctl:
            # ~10 MB of maps: more than the PUB queue, the SUB queue and the kernel's socket buffers hold
            truth = np.random.default_rng(4).integers(0, 3, size=(2000, 256))
            await send_band_scan(inst, "behind", truth)
            while srv.open_scans:  # let the scan finish before the subscriber reads anything
                await asyncio.sleep(0.01)
            result = await sub.collect_scan("behind", timeout=1, control=ctl)
        assert result.recovered and len(result.latencies_ms) < truth.shape[0], "nothing was dropped"
        assert result.summary.state == "complete" and result.summary.pixels_recognized == truth.size
        np.testing.assert_array_equal(result.maps["band"]["class"], truth)
        assert result.filled["band"].all()


async def test_backpressure_is_lossless(settings):
    """A queue of only 16 pixels: the ingest loop must wait for inference, and nothing is dropped. (Lines run
    on the event loop would never wait in the queue: ``inline_lone_lines`` off.)"""
    tiny = settings.model_copy(update={"queue_pixels": 16, "max_batch_pixels": 16, "inline_lone_lines": False})
    async with live(tiny, scan_id="press") as (srv, inst, sub):
        truth = np.random.default_rng(9).integers(0, 3, size=(300, 16))
        await send_band_scan(inst, "press", truth)
        result = await sub.collect_scan("press", timeout=30)
        counters = srv.status().counters
        assert result.summary.state == "complete" and result.summary.pixels_recognized == truth.size
        np.testing.assert_array_equal(result.maps["band"]["class"], truth)
        assert counters["pixels_recognized"] == truth.size
        assert counters["backpressure_waits"] > 0, "the test did not make the ingest loop wait"


async def test_a_small_receive_queue_keeps_the_backlog_with_the_sender_and_loses_nothing(settings):
    """ZeroMQ holds at most ``ingest_hwm`` messages of a sender for the service (docs/operations.md,
    "Memory"); with one, and ingest queues of two lines, a sender far faster than inference keeps its
    backlog in its own queue and, closing only after its scan_summary, loses nothing. (Lines run on the event
    loop would never wait in the queues: ``inline_lone_lines`` off.)"""
    line_bytes = 64 * band_axis().size * 4
    small = settings.model_copy(update={"ingest_hwm": 1, "ingest_queue_bytes": 2 * line_bytes,
                                        "max_batch_pixels": 64, "inline_lone_lines": False})
    async with live(small, scan_id="backlog") as (srv, inst, sub):
        assert srv.ingest.getsockopt(zmq.RCVHWM) == 1
        truth = np.random.default_rng(10).integers(0, 3, size=(400, 64))
        await send_band_scan(inst, "backlog", truth)
        result = await sub.collect_scan("backlog", timeout=60)
        assert result.summary.state == "complete" and result.summary.n_lost == 0
        np.testing.assert_array_equal(result.maps["band"]["class"], truth)
        assert srv.scans.gate.peak <= 2 * line_bytes
        assert srv.scans.gate.waits > 0, "the test did not make the ingest loop wait for inference"
