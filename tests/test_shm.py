"""Shared-memory ingest (docs/protocol.md §3.6) against the real thing: a real server, real ZeroMQ
sockets, real memfd rings handed over a real Unix socket, real sender processes killed with SIGKILL,
another user (a child that drops to uid 65534) and another network namespace (``unshare -n``).

Nothing is mocked. Every wait has a deadline, so a ring that never releases fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from scanlens.client import Control, Instrument, Subscriber
from scanlens.client.instrument import RING_MIN_SLOT_BYTES
from scanlens.protocol.messages import Data, ScanEnd, ScanStart
from scanlens.testing import (band_axis, band_spectra, loopback_settings, send_band_scan, serving, wait_for_event,
                              wait_for_summary)
from scanlens.transport import RingClient, RingError, ring_socket_name
from scanlens.protocol.codec import encode

TRUTH = np.random.default_rng(3).integers(0, 3, size=(12, 160))  # lines of 160 pixels: they run on the slot itself


def dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def scan_through(server, scan_id: str, *, shm: bool | None, truth=TRUTH):
    """Send the band scan through a new instrument; the summary and the scan's snapshot arrays."""
    async with Subscriber(server.endpoints["publish"], scan_id=scan_id) as sub, \
            Control(server.endpoints["control"]) as ctl:
        await sub.wait_ready()
        async with Instrument(server.endpoints["ingest"], shm=shm) as inst:
            await send_band_scan(inst, scan_id, truth)
            used_ring = inst.ring is not None
        summary = await wait_for_summary(sub, scan_id, timeout=30)
        snap = await ctl.snapshot(scan_id)
    return summary, snap, used_ring


async def test_accounting_and_maps_identical_to_tcp(model_dir):
    async with serving(loopback_settings(model_dir)) as server:
        before = server.counters["shm_messages"]
        shm_summary, shm_snap, used = await scan_through(server, "via-shm", shm=True)
        assert used and server.counters["shm_messages"] - before == len(TRUTH)
        tcp_summary, tcp_snap, used_tcp = await scan_through(server, "via-tcp", shm=False)
        assert not used_tcp and server.counters["shm_messages"] - before == len(TRUTH)
    for a, b in [(shm_summary, tcp_summary)]:
        assert (a.state, a.pixels_recognized, a.n_lost, a.rejected, a.messages_sent) == \
               (b.state, b.pixels_recognized, b.n_lost, b.rejected, b.messages_sent) == \
               ("complete", TRUTH.size, 0, [], len(TRUTH))
    maps_shm, maps_tcp = shm_snap.arrays, tcp_snap.arrays
    assert set(maps_shm) == set(maps_tcp) and "band/class" in maps_shm
    for name in maps_shm:
        assert np.array_equal(maps_shm[name], maps_tcp[name]), name
    assert np.array_equal(maps_shm["band/class"], TRUTH)


async def test_a_second_scan_reuses_the_ring_and_nothing_is_left(model_dir):
    shm_before, fds_before = dev_shm(), open_fds()
    async with serving(loopback_settings(model_dir)) as server:
        async with Subscriber(server.endpoints["publish"]) as sub:
            await sub.wait_ready()
            async with Instrument(server.endpoints["ingest"], shm=True, ring_slots=4) as inst:
                for sid in ("first", "second"):
                    await send_band_scan(inst, sid, TRUTH)
                    summary = await wait_for_summary(sub, sid, timeout=30)
                    assert (summary.state, summary.n_lost, summary.pixels_recognized) == ("complete", 0, TRUTH.size)
                token = inst.ring.token
                assert list(server.rings.rings) == [token]  # one ring, registered once, used by both scans
                assert server.counters["shm_rings"] == 1
                await until(lambda: inst.ring.free == 4, what="every slot released after the scans")
            # the instrument closed its ring: the service forgets it once nothing of it is held
            await until(lambda: not server.rings.rings, what="the closed ring forgotten")
    assert dev_shm() == shm_before  # memfd rings never appear in /dev/shm
    assert open_fds() <= fds_before  # every fd of the rings and the Unix sockets closed


async def test_backpressure_through_the_slots_is_lossless(model_dir):
    """Two slots for 12 lines: the sender waits for releases, nothing is lost, every line is recognized."""
    async with serving(loopback_settings(model_dir)) as server:
        async with Subscriber(server.endpoints["publish"], scan_id="tight") as sub:
            await sub.wait_ready()
            async with Instrument(server.endpoints["ingest"], shm=True, ring_slots=2) as inst:
                await send_band_scan(inst, "tight", TRUTH)
            summary = await wait_for_summary(sub, "tight", timeout=30)
    assert (summary.state, summary.n_lost, summary.pixels_recognized) == ("complete", 0, TRUTH.size)
    assert server.counters["shm_messages"] == len(TRUTH)


SENDER = textwrap.dedent("""
    import asyncio, os, sys
    import numpy as np
    from scanlens.client import Instrument
    from scanlens.testing import band_axis, band_spectra
    async def main():
        inst = Instrument(sys.argv[1], shm=True, ring_slots=4)
        async with inst.scan("killed", "eels", (12, 160), band_axis()) as scan:
            for row in range(int(sys.argv[2])):
                await scan.send_line(row, band_spectra(np.zeros(160, int)))
            print("sent", inst.ring.token, flush=True)
            await asyncio.sleep(3600)
    asyncio.run(main())
""")


async def test_a_sender_killed_mid_scan_leaves_nothing_stuck(model_dir):
    async with serving(loopback_settings(model_dir, scan_timeout_s=1.0)) as server:
        async with Subscriber(server.endpoints["publish"], scan_id="killed") as sub:
            await sub.wait_ready()
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, server.endpoints["ingest"], "5",
                                                        stdout=asyncio.subprocess.PIPE)
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line.startswith(b"sent"), line
                # "sent" means handed to libzmq, whose I/O thread may not have written the last header yet: kill
                # the sender once the service has all five lines (a kill before that lost the fifth, in one CI run)
                await until(lambda: (s := server.scans.open_scans.get("killed")) is not None
                            and s.pixels_received == 5 * 160, what="the five lines received")
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            summary = await wait_for_summary(sub, "killed", timeout=30)  # the scan times out as over TCP
        assert summary.state == "timed_out" and summary.pixels_recognized == 5 * 160
        await until(lambda: not server.rings.rings, what="the dead sender's ring forgotten")
        # the service goes on: a new sender, a new ring, a complete scan
        summary, _, used = await scan_through(server, "after", shm=True)
        assert used and summary.state == "complete" and summary.n_lost == 0


async def test_a_service_restarted_while_the_sender_holds_slots(model_dir):
    settings = loopback_settings(model_dir)
    inst = None
    try:
        async with serving(settings) as first:
            endpoint = first.endpoints["ingest"]
            inst = Instrument(endpoint, shm=True, ring_slots=4, linger_s=0)
            stream = inst.scan("interrupted", "eels", TRUTH.shape, band_axis())
            await stream.__aenter__()
            for row in range(3):
                await stream.send_line(row, band_spectra(TRUTH[row]))
            old_ring = inst.ring
        # the service is gone: the sender sees its ring closed and does not wait for releases that never come
        await until(lambda: old_ring.closed, what="the sender noticing the service went away")
        async with asyncio.timeout(10):
            for row in range(3, 6):  # not stuck; these go in the messages now (nobody takes them)
                await stream.send_line(row, band_spectra(TRUTH[row]))
        async with serving(settings.model_copy(update={"ingest": endpoint})) as second:
            async with Subscriber(second.endpoints["publish"], scan_id="again") as sub:
                await sub.wait_ready()
                await send_band_scan(inst, "again", TRUTH)  # a new ring with the new service
                summary = await wait_for_summary(sub, "again", timeout=30)
            assert inst.ring is not None and inst.ring is not old_ring and not inst.ring.closed
            assert (summary.state, summary.n_lost, summary.pixels_recognized) == ("complete", 0, TRUTH.size)
            assert second.counters["shm_messages"] == len(TRUTH)
            await inst.aclose()
            inst = None
            await until(lambda: not second.rings.rings, what="the ring forgotten after the sender closed it")
    finally:
        if inst is not None:
            inst.close()


async def test_falls_back_to_messages_when_the_service_takes_no_ring(model_dir):
    async with serving(loopback_settings(model_dir, shm_ingest=False)) as server:
        assert server.rings is None and "rings" not in server.endpoints
        summary, _, used = await scan_through(server, "no-shm", shm=None)  # automatic: falls back
        assert not used and summary.state == "complete" and summary.n_lost == 0
        with pytest.raises(RingError, match="no shared-memory ring service"):
            await scan_through(server, "insisted", shm=True)


async def test_automatic_mode_sends_small_payloads_in_the_messages(model_dir):
    """shm=None: a scan of short lines (slots under RING_MIN_SLOT_BYTES) sends its payloads in the messages,
    a scan of long lines through a ring; shm=True puts even the short ones through a ring."""
    short = TRUTH[:3, :4]
    assert short.shape[1] * band_axis().size * 8 < RING_MIN_SLOT_BYTES <= TRUTH.shape[1] * band_axis().size * 8
    async with serving(loopback_settings(model_dir)) as server:
        summary, _, used = await scan_through(server, "short-lines", shm=None, truth=short)
        assert not used and server.counters["shm_messages"] == 0
        assert (summary.state, summary.pixels_recognized, summary.n_lost) == ("complete", short.size, 0)
        summary, _, used = await scan_through(server, "long-lines", shm=None)
        assert used and server.counters["shm_messages"] == len(TRUTH) and summary.state == "complete"
        summary, _, used = await scan_through(server, "short-insisted", shm=True, truth=short)
        assert used and server.counters["shm_messages"] == len(TRUTH) + len(short)
        assert (summary.state, summary.pixels_recognized) == ("complete", short.size)


async def test_a_ring_of_few_large_frame_slots_is_not_kept_for_lines(model_dir):
    """A movie of 1024² frames gets a ring of 4 large slots; a scan of lines after it gets a ring of its own
    with 16 slots, and a scan that fits the ring it has keeps it."""
    async with serving(loopback_settings(model_dir)) as server:
        async with Instrument(server.endpoints["ingest"]) as inst:
            frames = await inst.ring_for(1024 * 1024 * 8, frames=True)
            assert frames is not None and frames.slots == 4
            lines = await inst.ring_for(160 * band_axis().size * 8)
            assert lines is not None and lines.token != frames.token and lines.slots == 16 and frames.closed
            assert await inst.ring_for(140 * band_axis().size * 8) is lines


def test_a_remote_endpoint_never_tries_shared_memory():
    assert ring_socket_name("tcp://192.0.2.7:5555") is None
    assert ring_socket_name("tcp://127.0.0.1:5555") == "\0scanlens-ring/tcp/5555"
    with pytest.raises(RingError, match="on this host"):
        Instrument("tcp://192.0.2.7:5555", shm=True)


NETNS_SENDER = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    from scanlens.client import Instrument
    from scanlens.testing import band_axis, band_spectra
    async def main():
        async with Instrument(sys.argv[1]) as inst:
            async with inst.scan("netns", "eels", (4, 160), band_axis()) as scan:
                for row in range(4):
                    await scan.send_line(row, band_spectra(np.ones(160, int)))
            print("ring" if inst.ring is not None else "no ring", flush=True)
    asyncio.run(main())
""")


async def test_another_network_namespace_falls_back_to_messages(model_dir, tmp_path):
    """A sender in its own network namespace (standing in for another host) reaches the service over an
    ipc endpoint but not the service's abstract Unix socket: its payloads go in the messages."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here (needs CAP_SYS_ADMIN)")
    endpoint = f"ipc://{tmp_path}/ingest"
    async with serving(loopback_settings(model_dir, ingest=endpoint)) as server:
        assert server.rings is not None
        async with Subscriber(server.endpoints["publish"], scan_id="netns") as sub:
            await sub.wait_ready()
            proc = await asyncio.create_subprocess_exec("unshare", "-n", sys.executable, "-c", NETNS_SENDER, endpoint,
                                                        stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            summary = await wait_for_summary(sub, "netns", timeout=30)
        assert proc.returncode == 0 and out.strip() == b"no ring"
        assert (summary.state, summary.n_lost, summary.pixels_recognized) == ("complete", 0, 4 * 160)
        assert server.counters["shm_messages"] == 0 and server.counters["shm_rings"] == 0


OTHER_USER = textwrap.dedent("""
    import os, sys
    from scanlens.transport import RingClient, RingError
    os.setgid(65534); os.setuid(65534)   # everything is imported: from here on another user
    try:
        RingClient.open_blocking(sys.argv[1], 2, 4096)
    except RingError as exc:
        print("refused:", exc, flush=True)
    else:
        print("accepted", flush=True)
""")


async def test_another_users_process_is_refused(model_dir):
    if os.getuid() != 0:
        pytest.skip("the test becomes another user by setuid, which needs root")
    async with serving(loopback_settings(model_dir)) as server:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", OTHER_USER, server.endpoints["ingest"],
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert out.startswith(b"refused:") and b"not of this service's user" in out, out
        assert server.counters["shm_refused"] == 1 and not server.rings.rings


async def test_an_unsealed_segment_is_refused(model_dir):
    """The service maps only a memfd sealed against shrinking: a sender shrinking it later would make the
    service read past its end (SIGBUS)."""
    import socket
    import msgpack
    async with serving(loopback_settings(model_dir)) as server:
        fd = os.memfd_create("unsealed")
        os.ftruncate(fd, 4096)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.settimeout(5)
            await asyncio.get_running_loop().run_in_executor(None, sock.connect, ring_socket_name(server.endpoints["ingest"]))
            socket.send_fds(sock, [msgpack.packb({"op": "ring", "slots": 1, "slot_bytes": 4096})], [fd])
            reply = msgpack.unpackb(await asyncio.get_running_loop().run_in_executor(None, sock.recv, 4096))
        finally:
            sock.close()
            os.close(fd)
        assert reply["ok"] is False and "sealed" in reply["error"]
        assert server.counters["shm_refused"] == 1 and not server.rings.rings


async def test_bad_slot_references_are_rejected_and_the_scan_goes_on(server, clients):
    """A slot in a scan without a ring, a slot out of range, a slot the service still holds: each is a
    data_rejected seq with the reason; the scan's other lines are recognized."""
    inst, sub, _ = clients
    axis = band_axis()
    line = band_spectra(np.zeros(160, int))
    ring = await RingClient.open(server.endpoints["ingest"], 2, line.nbytes)
    push = inst.sock
    try:
        # a scan that named no ring
        await inst.send(ScanStart(scan_id="plain", modality="eels", shape=(2, 160), axis=axis))
        await push.send_multipart(encode(Data(scan_id="plain", seq=0, row=0, shape=line.shape, dtype="float32", slot=0)))
        await inst.send(ScanEnd(scan_id="plain", n_messages=1))
        summary = await wait_for_summary(sub, "plain", timeout=10)
        assert [r.seq for r in summary.rejected] == [0] and "no scan_start of scan plain named a ring" in summary.rejected[0].reason
        # a ring scan: slot 5 of 2, then a good line, then the same slot again while the service may hold it
        await inst.send(ScanStart(scan_id="ringed", modality="eels", shape=(3, 160), axis=axis, ring=ring.token))
        await push.send_multipart(encode(Data(scan_id="ringed", seq=0, row=0, shape=line.shape, dtype="float32", slot=5)))
        np.copyto(ring.array(0, line.shape, line.dtype), line)
        await push.send_multipart(encode(Data(scan_id="ringed", seq=1, row=1, shape=line.shape, dtype="float32", slot=0)))
        await push.send_multipart(encode(Data(scan_id="ringed", seq=2, row=2, shape=line.shape, dtype="float32", slot=0),
                                         [line]))  # a slot and a buffer
        await inst.send(ScanEnd(scan_id="ringed", n_messages=3))
        summary = await wait_for_summary(sub, "ringed", timeout=10)
        reasons = {r.seq: r.reason for r in summary.rejected}
        assert set(reasons) == {0, 2} and "not in the ring" in reasons[0] and "one or the other" in reasons[2]
        assert summary.pixels_recognized == 160 and summary.n_lost == 0
        # a scan_start naming a ring the service does not hold
        await inst.send(ScanStart(scan_id="unknown-ring", modality="eels", shape=(2, 160), axis=axis, ring="0" * 32))
        event = await wait_for_event(sub, "scan_rejected", scan_id="unknown-ring")
        assert "does not hold" in event.reason
    finally:
        ring.close()


def _movie_frames(n: int) -> list[np.ndarray]:
    from scanlens.testing import render_frame
    shape = (128, 128)
    xs = np.arange(8.3, shape[1] - 6, 12.0)
    atoms = np.array([(x, y + 0.4) for y in xs for x in xs], np.float32)
    return [render_frame(shape, atoms + 0.3 * i, np.array([[40.0 + 2 * i, 40.0]])) for i in range(n)]


async def _movie_through(server, scan_id: str, frames, *, shm: bool, policy: str):
    from scanlens.protocol.messages import FrameResult, PixelSize, ScanSummary
    from scanlens.testing import FRAME_PIXEL_NM
    results = {}
    async with Subscriber(server.endpoints["publish"], scan_id=scan_id) as sub:
        await sub.wait_ready()
        async with Instrument(server.endpoints["ingest"], shm=shm, ring_slots=3) as inst:
            async with inst.movie(scan_id, "haadf", frames[0].shape, PixelSize(size=FRAME_PIXEL_NM, units="nm"),
                                  frames=len(frames), policy=policy) as movie:
                for i, image in enumerate(frames):
                    await movie.send_frame(i, image)
            used = inst.ring is not None
            while True:
                msg = await sub.recv(20)
                if isinstance(msg.header, FrameResult):
                    results[msg.header.seq] = msg.arrays
                if isinstance(msg.header, ScanSummary):
                    return results, msg.header, used, inst


@pytest.mark.parametrize("policy", ["lossless", "latest"])
async def test_a_movie_through_the_ring(model_dir, policy):
    """Frames through 3 slots: the same results as in the messages (lossless), or every frame recognized
    or skipped with its slot back (latest: skipped frames release theirs)."""
    from scanlens.testing import write_frame_model
    write_frame_model(model_dir / "frame.onnx")
    frames = _movie_frames(10)
    async with serving(loopback_settings(model_dir)) as server:
        got, summary, used, inst = await _movie_through(server, f"movie-{policy}", frames, shm=True, policy=policy)
        assert used and server.counters["shm_messages"] == len(frames)
        assert sorted([*got, *summary.skipped]) == list(range(len(frames)))  # each frame: recognized or skipped
        assert summary.lost == [] and summary.rejected == []
        await until(lambda: not server.rings.rings, what="the movie's ring forgotten after the sender closed it")
        if policy == "lossless":
            ref, ref_summary, used_tcp, _ = await _movie_through(server, "movie-tcp", frames, shm=False, policy=policy)
            assert not used_tcp and summary.state == ref_summary.state == "complete"
            assert set(got) == set(ref) == set(range(len(frames)))
            for seq in got:
                for name in ref[seq]:
                    assert np.array_equal(got[seq][name], ref[seq][name]), (seq, name)


@pytest.mark.parametrize("shm", [True, False])
async def test_line_buffer_writes_the_line_where_the_service_reads_it(model_dir, shm):
    """``ScanStream.line_buffer``: the instrument fills the line in place (a ring slot itself, or a plain
    array without a ring); the maps are those of the truth either way."""
    async with serving(loopback_settings(model_dir)) as server:
        async with Subscriber(server.endpoints["publish"], scan_id="inplace") as sub, \
                Control(server.endpoints["control"]) as ctl:
            await sub.wait_ready()
            async with Instrument(server.endpoints["ingest"], shm=shm, ring_slots=2) as inst:
                async with inst.scan("inplace", "eels", TRUTH.shape, band_axis()) as scan:
                    for row in range(TRUTH.shape[0]):
                        async with scan.line_buffer(row, TRUTH.shape[1]) as line:
                            line[...] = band_spectra(TRUTH[row])
                    assert (scan.ring is not None) == shm
            summary = await wait_for_summary(sub, "inplace", timeout=30)
            snap = await ctl.snapshot("inplace")
        assert (summary.state, summary.n_lost, summary.pixels_recognized) == ("complete", 0, TRUTH.size)
        assert server.counters["shm_messages"] == (len(TRUTH) if shm else 0)
    assert np.array_equal(snap.arrays["band/class"], TRUTH)


def test_a_rings_default_slots_bound_the_memory_its_payloads_touch():
    from scanlens.client.instrument import ring_slots_for

    assert ring_slots_for(4 * 2**20) == 16  # a line of 256 x 2048 spectra at 8 bytes a value
    assert ring_slots_for(8 * 2**20) == 8 and ring_slots_for(2**30) == 4  # large lines: fewer, at least 4
    assert ring_slots_for(2 * 2**20, frames=True) == 16  # 512² frames at 8 bytes a value
    assert ring_slots_for(8 * 2**20, frames=True) == 4  # 1024²: two in the service, two being written
