"""Replay a recording (``scanlens replay FILE``): send a recorded scan to a service again, like any instrument.

The messages come from ``scanlens.recording.open_recording`` in the order the service received them:
``scan_start``, every ``data`` / ``frame`` message with its arrays as received (refused ones too, so
the replayed scan is refused the same way), ``scan_end``. ``pace="recorded"`` keeps the recorded
intervals between messages (divided by ``speed``); ``pace="fast"`` sends as fast as the service takes
them (lossless backpressure, docs/protocol.md §3.4). The scan gets a new id (``<id>-replay`` unless
given) so it does not clash with the recorded one if that service still holds it; ``recognizers``
replaces the recorded choice (re-analyse yesterday's scan with today's model). With the same models
and the same batching settings (``max_batch_pixels``), the maps of a lossless scan come out bitwise
identical to the recorded ones (tests/test_replay.py). The replay follows its scan on the publish
socket (``scanlens.client.ScanWatch``) and ends with the service's summary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..client import Instrument, ScanWatch
from ..protocol.messages import Data, Frame, ScanEnd, ScanStart, ScanSummary
from ..recording import open_recording

Pace = Literal["recorded", "fast"]


@dataclass
class ReplayReport:
    """What was sent and how the service closed the scan."""

    path: Path
    scan_id: str
    recorded_scan_id: str
    messages: int  # data / frame messages sent
    seconds: float
    summary: ScanSummary | None


def _renamed(header: ScanStart | Data | Frame | ScanEnd, scan_id: str,
             recognizers: list[str] | None) -> ScanStart | Data | Frame | ScanEnd:
    update: dict = {"scan_id": scan_id}
    if isinstance(header, ScanStart) and recognizers is not None:
        update["recognizers"] = list(recognizers)
    return header.model_copy(update=update)


async def replay(path: str | Path, ingest: str, publish: str | None = None, *, scan_id: str | None = None,
                 pace: Pace = "recorded", speed: float = 1.0, recognizers: list[str] | None = None,
                 start_timeout: float = 5.0, progress: Callable[[int, int], None] | None = None,
                 **client_options) -> ReplayReport:
    """Send the recording at ``path`` to the service on ``ingest``; with ``publish``, follow the scan there
    and return its summary (ScanRejected, ServiceUnreachable, ServiceStopped as for a simulator).
    ``client_options`` go to the Instrument and the ScanWatch (e.g. ``curve=``)."""
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    path = Path(path)
    with open_recording(path) as rec:  # read message by message while sending: a recording can be large
        recorded = rec.scan_start.scan_id
        sid = scan_id or f"{recorded}-replay"
        total = rec.n_data_messages
        watch = ScanWatch(publish, sid, **client_options) if publish is not None else None
        t_start = time.monotonic()
        sent = 0
        try:
            if watch is not None:
                await watch.wait_ready(start_timeout)
            async with Instrument(ingest, **client_options) as inst:

                async def send() -> None:
                    nonlocal sent
                    t0 = r0 = None
                    last = None
                    for m in rec.messages():
                        if t0 is None:
                            t0, r0 = time.monotonic(), m.t_received
                        elif pace == "recorded":
                            delay = t0 + (m.t_received - r0) / speed - time.monotonic()
                            if delay > 0:
                                await asyncio.sleep(delay)
                        last = m.header
                        await inst.send(_renamed(m.header, sid, recognizers), m.arrays)
                        if isinstance(m.header, ScanStart) and watch is not None:
                            await watch.wait_started(start_timeout)
                        elif isinstance(m.header, (Data, Frame)):
                            sent += 1
                            if progress is not None:
                                progress(sent, total)
                    if not isinstance(last, ScanEnd):  # a recovered recording: the service died before scan_end
                        await inst.send(ScanEnd(scan_id=sid, n_messages=sent))

                if watch is None:
                    await send()
                    summary = None
                else:
                    await watch.guard(send())
                    summary = await watch.wait_summary()
        finally:
            if watch is not None:
                await watch.aclose()
    return ReplayReport(path, sid, recorded, sent, time.monotonic() - t_start, summary)
