"""Control socket (status, models, scans, snapshot) and schema validation of everything the service emits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zmq
import zmq.asyncio

from scanlens.client import Control, ServiceError
from scanlens.protocol.codec import encode
from scanlens.protocol.messages import Request, ScanStart
from scanlens.testing import band_axis, band_spectra

from .schema_check import check_header_bytes


async def test_status_models_scans(clients, server):
    inst, sub, ctl = clients
    status = await ctl.status()
    assert status["recognizers"] == ["band", "pca"] and status["open_scans"] == []
    cards = await ctl.models()
    assert cards["band"]["input"]["axis"] == band_axis().model_dump()
    assert [o["name"] for o in cards["band"]["outputs"]] == ["probabilities", "abundance"]
    async with inst.scan("listed", "eels", (2, 3), band_axis()) as scan:
        await scan.send_line(0, band_spectra([0, 1, 2]))
        await scan.send_line(1, band_spectra([2, 1, 0]))
    await sub.collect_scan("listed")
    scans = await ctl.scans()
    assert scans["open"] == [] and scans["closed"][0]["summary"]["state"] == "complete"


async def test_snapshot_for_a_late_joiner(clients):
    inst, sub, ctl = clients
    truth = np.array([[0, 1, 2], [2, 2, 1]])
    scan = inst.scan("snap", "eels", truth.shape, band_axis())
    await scan.__aenter__()
    await scan.send_line(0, band_spectra(truth[0]))
    # wait until row 0 is recognized, then join "late" and ask for the current state
    while True:
        msg = await sub.recv(10)
        if getattr(msg.header, "kind", None) == "maps":
            break
    snap = await ctl.snapshot("snap")
    assert snap.result["open"] is True
    np.testing.assert_array_equal(snap.arrays["band/filled"], [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(snap.arrays["band/class"][0], truth[0])
    assert snap.arrays["band/abundance"].shape == (2, 3, 3)
    await scan.send_line(1, band_spectra(truth[1]))
    await scan.end()
    while getattr((msg := await sub.recv(10)).header, "kind", None) != "scan_summary":
        pass
    final = await ctl.snapshot("snap")
    assert final.result["open"] is False and final.result["summary"]["state"] == "complete"
    np.testing.assert_array_equal(final.arrays["band/class"], truth)
    assert final.arrays["band/filled"].all()


async def test_control_errors_are_replies_not_crashes(server):
    async with Control(server.endpoints["control"]) as ctl:
        with pytest.raises(ServiceError, match="no open or recently closed scan 'ghost'"):
            await ctl.snapshot("ghost")
        # garbage on the control socket gets an ok=false reply, then the socket keeps working
        await ctl.sock.send_multipart([b"", b"\x00garbage"])
        frames = await asyncio.wait_for(ctl.sock.recv_multipart(), 5)
        reply = check_header_bytes(frames[-1])
        assert reply["ok"] is False and "msgpack" in reply["error"]
        assert (await ctl.status())["counters"]["control_errors"] == 2  # ghost + garbage


async def test_req_socket_works_on_control(server):
    ctx = zmq.asyncio.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(server.endpoints["control"])
    try:
        await req.send_multipart(encode(Request(id="r1", op="status")))
        frames = await asyncio.wait_for(req.recv_multipart(), 5)
        reply = check_header_bytes(frames[0])
        assert reply["id"] == "r1" and reply["ok"] and reply["result"]["kind"] == "status"
    finally:
        req.close(linger=0)
        ctx.term()


async def test_everything_emitted_validates_against_the_schema(server, clients):
    """Tap the PUB socket raw during a scan with errors and check every header with jsonschema."""
    inst, sub, ctl = clients
    ctx = zmq.asyncio.Context()
    tap = ctx.socket(zmq.SUB)
    tap.setsockopt(zmq.LINGER, 0)
    tap.setsockopt(zmq.SUBSCRIBE, b"")
    tap.connect(server.endpoints["publish"])
    try:
        while (first := await asyncio.wait_for(tap.recv_multipart(), 5))[0] != b"service/status":
            pass
        kinds = {check_header_bytes(first[1])["kind"]: 1}
        await inst.sock.send_multipart([b"garbage"])
        async with inst.scan("schema", "eels", (3, 4), band_axis()) as scan:
            await scan.send_line(0, band_spectra([0, 1, 2, 0]))
            await inst.send(ScanStart(scan_id="schema", modality="eels", shape=(1, 1), axis=band_axis()))
            bad = band_spectra([1, 1, 1, 1])
            bad[0, 0] = np.inf
            await scan.send_line(1, bad)
            scan.seq += 1  # seq 2 is "lost"
        await inst.send(ScanStart(scan_id="other", modality="eels", shape=(1, 1), axis=band_axis(),
                                  recognizers=["no-such-model"]))
        while "scan_summary" not in kinds or kinds.get("scan_rejected", 0) < 2:  # duplicate, unknown recognizer
            frames = await asyncio.wait_for(tap.recv_multipart(), 10)
            header = check_header_bytes(frames[1])
            key = header["code"] if header["kind"] == "event" else header["kind"]
            kinds[key] = kinds.get(key, 0) + 1
            specs = header.get("arrays", [])
            assert len(frames) == 2 + len(specs)
            for spec, buf in zip(specs, frames[2:]):
                assert len(buf) == int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
        assert {"status", "bad_message", "scan_started", "maps", "data_rejected", "lost",
                "scan_summary", "scan_rejected"} <= set(kinds)
        # control replies too
        for op, scan_id in (("status", None), ("models", None), ("scans", None), ("snapshot", "schema")):
            await ctl.sock.send_multipart([b"", *encode(Request(id=op, op=op, scan_id=scan_id))])
            frames = await asyncio.wait_for(ctl.sock.recv_multipart(), 5)
            check_header_bytes(frames[1])
    finally:
        tap.close(linger=0)
        ctx.term()
