"""Play a scan source to scanlens line by line, paced by absolute deadlines on an injectable clock.

Line ``k`` is released at ``t0 + (k + 1) * cols * dwell_s`` — when its last pixel would have been
acquired — so pacing does not drift however long each send takes. ``dwell_s = 0`` streams as fast as
the service accepts (the PUSH socket blocks when the service backs off).

With a :class:`~scanlens.client.ScanWatch` (``watch=``) a stream is truthful about its fate: it waits for
``scan_started`` before the first line (``ScanRejected`` when refused, ``ServiceUnreachable`` when nothing
answers within ``start_timeout`` s), stops with ``ServiceStopped`` when the service's heartbeat stops, and
returns only with the scan's summary (``StreamReport.summary``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from scanlens.client import Instrument, ScanStream, ScanWatch
from scanlens.protocol.messages import PixelSize, ScanSummary

from .sources import ScanSource


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class StreamReport:
    scan_id: str
    messages: int
    pixels: int
    elapsed_s: float
    #: the scan's summary, when streamed with a watch
    summary: ScanSummary | None = None

    @property
    def pixel_rate(self) -> float:
        return self.pixels / self.elapsed_s if self.elapsed_s > 0 else float("inf")


@contextlib.asynccontextmanager
async def _opened(scan: ScanStream, watch: ScanWatch | None, start_timeout: float) -> AsyncIterator[ScanStream]:
    """``scan_start`` on entry, then (with ``watch``) its answer: a refused or unanswered scan raises and
    sends nothing more, not even ``scan_end``; ``scan_end`` on exit otherwise."""
    await scan.__aenter__()
    if watch is not None:
        await watch.wait_started(start_timeout)
    try:
        yield scan
    finally:
        await scan.end()


async def _watched(send: Callable[[], Awaitable[tuple[int, float]]],
                   watch: ScanWatch | None) -> tuple[int, float, ScanSummary | None]:
    """Run ``send`` (-> messages sent, seconds it took), guarded by ``watch`` when given; then the summary."""
    if watch is None:
        return *(await send()), None
    sent, elapsed = await watch.guard(send())
    return sent, elapsed, await watch.wait_summary()


async def stream_scan(instrument: Instrument, source: ScanSource, scan_id: str, *, dwell_s: float = 0.0,
                      recognizers: list[str] | None = None, clock: Clock | None = None,
                      progress: Callable[[int, int], None] | None = None, watch: ScanWatch | None = None,
                      start_timeout: float = 5.0, retain: bool = False, in_place: bool = False) -> StreamReport:
    """Send ``scan_start``, every line, ``scan_end``; ``progress(rows_sent, rows)`` after each line. With
    ``watch``: see the module notes. ``retain``: the service keeps the spectra (live training).

    ``in_place``: each line is written into its buffer as it is acquired (``ScanStream.line_buffer``: with
    a shared-memory ring, the slot itself, as a detector writing into shared memory would) and only its
    header is sent at its deadline; by default a finished line is handed to ``send_line``, which copies it
    into a slot or its message then."""
    clock = clock or MonotonicClock()
    rows, cols = source.shape
    t0 = clock.now()

    async def acquired(row: int) -> None:
        """Until line ``row``'s last pixel would have been acquired."""
        if dwell_s > 0:
            await clock.sleep_until(t0 + (row + 1) * cols * dwell_s)

    async def send() -> int:
        async with _opened(instrument.scan(scan_id, source.modality, source.shape, source.axis,
                                           components=getattr(source, "components", None), recognizers=recognizers,
                                           meta={**source.meta, "dwell_s": dwell_s},
                                           scan_step=getattr(source, "scan_step", None), retain=retain),
                           watch, start_timeout) as scan:
            for row in range(rows):
                spectra = source.line(row)
                if in_place:
                    async with scan.line_buffer(row, len(spectra), dtype=spectra.dtype) as buffer:
                        buffer[...] = spectra
                        await acquired(row)
                else:
                    await acquired(row)
                    await scan.send_line(row, spectra)
                if progress is not None:
                    progress(row + 1, rows)
        return scan.seq, clock.now() - t0

    sent, elapsed, summary = await _watched(send, watch)
    return StreamReport(scan_id, sent, rows * cols, elapsed, summary)


async def stream_movie(instrument: Instrument, source, scan_id: str, *, frame_interval_s: float = 0.0,
                       policy: str = "lossless", recognizers: list[str] | None = None, clock: Clock | None = None,
                       progress: Callable[[int, int], None] | None = None, watch: ScanWatch | None = None,
                       start_timeout: float = 5.0) -> StreamReport:
    """Send an imaging scan: ``scan_start``, every frame of ``source`` (``frame(i)``, ``frames``,
    ``shape``, ``pixel_size_nm``, ``modality``, ``meta``), ``scan_end``. Frame ``i`` is released at
    ``t0 + (i + 1) * interval``. With ``watch``: see the module notes."""
    clock = clock or MonotonicClock()
    t0 = clock.now()
    pixel_size = PixelSize(size=source.pixel_size_nm, units="nm")

    async def send() -> int:
        async with _opened(instrument.movie(scan_id, source.modality, source.shape, pixel_size, frames=source.frames,
                                            policy=policy, recognizers=recognizers, meta=dict(source.meta),
                                            frame_interval_s=frame_interval_s if frame_interval_s > 0 else None),
                           watch, start_timeout) as scan:
            for i in range(source.frames):
                image = source.frame(i)
                if frame_interval_s > 0:
                    await clock.sleep_until(t0 + (i + 1) * frame_interval_s)
                await scan.send_frame(i, image)
                if progress is not None:
                    progress(i + 1, source.frames)
        return scan.seq, clock.now() - t0

    sent, elapsed, summary = await _watched(send, watch)
    return StreamReport(scan_id, sent, source.frames * source.shape[0] * source.shape[1], elapsed, summary)
