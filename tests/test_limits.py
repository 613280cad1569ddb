"""Socket-level limits (issue 10): what a peer can make the service hold, and how it is refused.

Real server, real sockets on loopback. Each test checks the mechanism (a counter that shows a message
was never received, a socket option, a reply in parts), not a time or a resident size; the sizes
and times go to ``bench/``.
"""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from scanlens.app.limits import MIN_PUBLISH_HWM
from scanlens.client import ServiceError
from scanlens.protocol.codec import encode
from scanlens.protocol.messages import Request
from scanlens.testing import (band_axis, band_spectra, connected, data_frames, loopback_settings, send_band_scan,
                              serving, wait_for_summary, write_frame_model)


async def _status_counters(ctl) -> dict[str, int]:
    return (await ctl.status())["counters"]


async def test_an_oversized_data_frame_is_refused_before_it_is_received(model_dir):
    """Was: a 300 MiB message was received in full (+410 MB) before it was refused. Now libzmq drops
    the sender's connection while the frame's size prefix arrives: the service never counts the
    message as received, the seq is lost, and the sender's next messages (reconnected) go through."""
    settings = loopback_settings(model_dir, max_message_bytes=16 * 1024)
    async with serving(settings) as server, connected(server) as (inst, sub, ctl):
        async with inst.scan("big", "eels", (3, 3), band_axis()) as scan:
            await scan.send_line(0, band_spectra([0, 1, 2]))
            await until(lambda: server.counters["messages_in"] == 2)
            inst_frames = data_frames("big", 1, 1, np.zeros((3, 60_000), np.float32))  # 720 kB > 16 KiB
            await inst.sock.send_multipart(inst_frames)
            scan.seq += 1
            await asyncio.sleep(0.3)
            await scan.send_line(2, band_spectra([2, 1, 0]))  # after the reconnect
        summary = await wait_for_summary(sub, "big")
        assert summary.lost == [1] and summary.pixels_recognized == 6
        assert server.counters["messages_in"] == 4  # scan_start, seq 0, seq 2, scan_end: never seq 1
        assert server.counters["event.oversized"] == 0
        assert server.ingest.getsockopt(zmq.MAXMSGSIZE) == 64 * 1024  # max(max_message_bytes, header limit)


async def test_a_control_request_over_the_limit_is_answered_with_an_error(settings):
    """Was: a request over 1 MiB got no reply at all and a REQ client was stuck. Now requests up to
    room for a label image of the largest scan are read; bigger ones (up to twice that) get an error."""
    async with serving(settings) as server:
        limit = server.wire.request_bytes
        assert limit >= settings.max_scan_pixels  # a uint8 label image of the largest allowed scan fits
        ctx = zmq.asyncio.Context()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(server.endpoints["control"])
        try:
            header = msgpack.packb({"v": 1, "kind": "request", "id": 7, "op": "status"})
            await req.send_multipart([header, b"\0" * (limit + 1)])
            reply = msgpack.unpackb(await asyncio.wait_for(req.recv(), 10))
            assert reply["ok"] is False and "limit" in reply["error"]
            await req.send_multipart(encode(Request(id=8, op="status")))  # the REQ socket is not stuck
            assert msgpack.unpackb(await asyncio.wait_for(req.recv(), 10))["ok"] is True
        finally:
            req.close(linger=0)
            ctx.term()


async def test_replies_a_client_never_reads_are_dropped_not_hoarded(model_dir):
    settings = loopback_settings(model_dir)
    async with serving(settings) as server, connected(server) as (inst, sub, ctl):
        await send_band_scan(inst, "snap", np.zeros((256, 256), int))
        await wait_for_summary(sub, "snap")
        ctx = zmq.asyncio.Context()
        lazy = ctx.socket(zmq.DEALER)
        lazy.setsockopt(zmq.LINGER, 0)
        lazy.setsockopt(zmq.RCVHWM, 1)
        lazy.setsockopt(zmq.RCVBUF, 4096)
        lazy.connect(server.endpoints["control"])
        try:
            for i in range(64):  # 64 snapshots of ~1 MB each, never read
                await lazy.send_multipart([b"", *encode(Request(id=i, op="snapshot", scan_id="snap"))])
            await until(lambda: server.counters["control_replies_dropped"] > 0, timeout=20)
            assert (await ctl.status())["counters"]["control_replies_dropped"] > 0  # others are served
            assert server.control.getsockopt(zmq.SNDHWM) == server.wire.control_send_hwm
        finally:
            lazy.close(linger=0)
            ctx.term()


async def test_a_snapshot_over_the_reply_limit_comes_in_parts(model_dir):
    """Was: a snapshot was one reply of any size (1 GB for a 4096 x 4096 scan)."""
    settings = loopback_settings(model_dir, max_reply_bytes=2**16)
    truth = np.random.default_rng(1).integers(0, 3, (128, 96))
    async with serving(settings) as server, connected(server) as (inst, sub, ctl):
        await send_band_scan(inst, "parts", truth)
        await wait_for_summary(sub, "parts")
        try:
            await ctl.request("snapshot", "parts")
            raise AssertionError("a snapshot over the limit was sent whole")
        except ServiceError as exc:
            assert "reply limit" in str(exc) and 0 < exc.result["rows_per_reply"] < truth.shape[0]
        part = await ctl.snapshot("parts", rows=(10, 12))
        np.testing.assert_array_equal(part.arrays["band/class"], truth[10:12])
        whole = await ctl.snapshot("parts")  # the client asks in parts and puts them together
        np.testing.assert_array_equal(whole.arrays["band/class"], truth)
        assert whole.arrays["band/filled"].all() and whole.result["rows"] == [0, 128]
        assert server.counters["control_errors"] == 2  # the whole request, and the client's first try


def test_a_slow_subscriber_costs_the_service_a_bounded_number_of_bytes(tmp_path):
    """Was: publish_hwm (100 000 messages) per subscriber, whatever their size: a slow subscriber of 1 MiB
    frame results could make the service hold gigabytes. The PUB high-water mark is now derived from
    the largest publication the loaded models can make, so that hwm x largest <= a sixteenth of the
    memory budget (and at least 256 messages, so that bursts fit)."""
    from scanlens.app import Server

    models = tmp_path / "m"
    models.mkdir()
    write_frame_model(models / "frame.onnx")
    for budget in (2**30, 4 * 2**30):
        s = loopback_settings(models, memory_budget_bytes=budget, max_scan_pixels=1024 * 1024)
        w = Server(s).wire
        assert w.largest_publication >= 1024 * 1024  # a uint8 class map of the largest frame
        assert w.publish_hwm == min(s.publish_hwm, max(MIN_PUBLISH_HWM, budget // 16 // w.largest_publication))
        assert w.publish_hwm * w.largest_publication <= max(budget // 16, MIN_PUBLISH_HWM * w.largest_publication)
        assert w.publish_hwm < s.publish_hwm


async def test_the_publish_socket_uses_the_derived_high_water_mark(settings):
    async with serving(settings) as server:
        assert server.pub.getsockopt(zmq.SNDHWM) == server.wire.publish_hwm


async def until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_the_ingest_queues_share_one_byte_bound():
    """Every recognizer's queue is bounded in pixels (latency); all of them together are also bounded in
    bytes by one gate, a share of the memory budget: a message waits there for room as for pixels."""
    from scanlens.pipeline.batcher import ByteGate, PixelQueue
    from scanlens.pipeline.processor import WorkItem

    def item(nbytes: int) -> WorkItem:
        return WorkItem("s", None, 0, 0, 0, np.zeros(nbytes, np.uint8), 0.0, n_pixels=1)

    gate = ByteGate(100)
    a, b = PixelQueue(1000, gate), PixelQueue(1000, gate)
    await a.put(item(80))
    waiting = asyncio.create_task(b.put(item(40)))  # 80 + 40 > 100: waits, though b itself is empty
    await asyncio.sleep(0.05)
    assert not waiting.done() and gate.waits == 1 and len(b) == 0
    assert [i.values.nbytes for i in await a.take(10)] == [80]
    await asyncio.wait_for(waiting, 1)
    assert gate.used == 40 and len(b) == 1
    await b.take(10)
    await a.put(item(500))  # nothing held: one item of any size fits, so the bound is max(capacity, largest)
    assert gate.peak == 500 == gate.bound(500)
    assert len(a.discard(lambda i: True)) == 1 and gate.used == 0


def test_the_server_reserves_its_ingest_queues_in_the_memory_budget(tmp_path, model_dir):
    """The ingest queues' bytes come out of the one memory budget (the ledger's "ingest queues" entry):
    max(ingest_queue_bytes, max_message_bytes), where ingest_queue_bytes defaults to a sixteenth of the
    budget; a budget that cannot hold them stops the start."""
    from scanlens.app import Server
    from scanlens.pipeline.scans import INGEST_QUEUES

    for budget, queue, largest, capacity, reserved in ((2**30, None, 2**20, 2**26, 2**26),
                                                       (2**30, None, 2**27, 2**26, 2**27),
                                                       (2**32, None, 2**20, 2**28, 2**28),  # the defaults
                                                       (2**32, 2**25, 2**20, 2**25, 2**25)):
        server = Server(loopback_settings(model_dir, memory_budget_bytes=budget, ingest_queue_bytes=queue,
                                          max_message_bytes=largest))
        assert server.scans.ledger.held(INGEST_QUEUES) == reserved == server.scans.ledger.used
        assert server.scans.gate.capacity == capacity
        assert server.status().memory_bytes == reserved
    try:
        Server(loopback_settings(model_dir, memory_budget_bytes=2**24, max_message_bytes=2**25))
    except ValueError as exc:
        assert "ingest queues" in str(exc) and "max_message_bytes" in str(exc)
    else:
        raise AssertionError("a budget smaller than one message was accepted")
