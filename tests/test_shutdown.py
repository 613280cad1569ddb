"""A clean stop (SIGTERM to `scanlens serve`) ends every open scan with a summary, state "aborted"
(issue 10: before, open scans got no summary at all). A real process, real sockets."""

from __future__ import annotations

import asyncio
import signal

from scanlens.client import Instrument, Subscriber
from scanlens.protocol.messages import Event, ScanStart, ScanSummary
from scanlens.testing import band_axis, band_spectra, data_frames, serve_process, wait_for


async def test_sigterm_publishes_an_aborted_summary_for_every_open_scan(model_dir, tmp_path):
    async with serve_process(model_dir, tmp_path) as served:
        ep = served.endpoints
        async with Subscriber(ep["publish"]) as sub, Instrument(ep["ingest"]) as inst:
            await wait_for(sub, "status")  # the subscription is live
            for sid in ("a", "b"):
                await inst.send(ScanStart(scan_id=sid, modality="eels", shape=(4, 3), axis=band_axis()))
                await wait_for(sub, "scan_started", scan_id=sid)
                await inst.sock.send_multipart(data_frames(sid, 0, 0, band_spectra([0, 1, 2])))
                await wait_for(sub, "maps", scan_id=sid)
            served.proc.send_signal(signal.SIGTERM)
            summaries: dict[str, ScanSummary] = {}
            aborted: set[str] = set()
            async with asyncio.timeout(10):
                while len(summaries) < 2:
                    got = await sub.recv()
                    if isinstance(got.header, ScanSummary):
                        summaries[got.header.scan_id] = got.header
                    elif isinstance(got.header, Event) and got.header.code == "aborted":
                        aborted.add(got.header.scan_id)
        assert set(summaries) == aborted == {"a", "b"}
        for s in summaries.values():
            assert s.state == "aborted" and s.messages_sent is None
            assert s.pixels_received == s.pixels_recognized == 3 and s.pixels_expected == 12
        async with asyncio.timeout(15):
            assert await served.proc.wait() == 0
