"""The subscriber side: a SUB connection to the publish socket, and collecting one scan's results from it."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from ..protocol import topics
from ..protocol.codec import UnknownKindError, arrays_from, decode, validate_tolerant
from ..protocol.messages import Event, FrameResult, Maps, Message, ScanStarted, ScanSummary
from .base import _Client
from .control import Control
from .results import MovieResult, ScanResult, note_event, summarized


@dataclass
class Received:
    topic: str
    header: Message
    arrays: dict[str, np.ndarray]


class Subscriber(_Client):
    """A SUB connection to the publish socket, subscribed to one scan (or to ``topics``).

    Headers are decoded tolerantly (wire rule: what a newer v1 service adds is optional): unknown keys
    are ignored, unknown event codes, levels and summary states are kept, and messages of a kind this
    client does not know are skipped and counted in ``skipped_messages``."""

    def __init__(self, endpoint: str, *, scan_id: str | None = None, topics_: Sequence[str] | None = None,
                 ctx: zmq.asyncio.Context | None = None, hwm: int = 100_000):
        super().__init__(ctx)
        self.sock = self._connect(zmq.SUB, endpoint, hwm=hwm)
        self._topics = list(topics_ if topics_ is not None else
                            ([topics.scan_prefix(scan_id), topics.SERVICE_EVENT] if scan_id else [""]))
        for t in self._topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._pending: collections.deque[Received] = collections.deque()
        self._drop_status = False
        #: messages of an unknown kind (from a newer service) skipped so far
        self.skipped_messages = 0

    async def _recv_raw(self) -> Received:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            topic = bytes(frames[0].buffer).decode()
            try:
                header, buffers = decode(frames[1:], tolerant=True)
            except UnknownKindError:
                self.skipped_messages += 1
                continue
            specs = getattr(header, "arrays", None) or []
            return Received(topic, header, arrays_from(specs, buffers) if specs else {})

    async def recv(self, timeout: float | None = None) -> Received:
        if self._pending:
            return self._pending.popleft()
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._recv_raw()
                if not (self._drop_status and msg.topic == topics.STATUS):
                    return msg

    async def __aiter__(self) -> AsyncIterator[Received]:
        while True:
            yield await self.recv()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the subscription is live (a status heartbeat arrived), so nothing published after
        this returns is missed. ZeroMQ subscriptions take effect asynchronously ("slow joiner")."""
        extra = not any(topics.STATUS.startswith(t) for t in self._topics)
        if extra:
            self.sock.setsockopt(zmq.SUBSCRIBE, topics.STATUS.encode())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self._recv_raw()
                    if msg.topic == topics.STATUS:
                        break
                    self._pending.append(msg)
        finally:
            if extra:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, topics.STATUS.encode())
        # heartbeats that were already queued before the unsubscribe are dropped by recv()
        self._drop_status = extra

    async def collect_scan(self, scan_id: str, timeout: float = 60.0, progress=None,
                           control: Control | None = None) -> ScanResult:
        """Receive until the scan's summary; ``progress(result)`` is called after every maps message.

        If messages were dropped on the way (a subscriber that fell behind the PUB high-water mark)
        and ``control`` is given, missing maps — or a missing summary, when nothing arrives for
        ``timeout`` s after the scan closed — come from a ``snapshot``, and ``result.recovered`` is
        set. Otherwise TimeoutError when nothing arrives for ``timeout`` s."""
        result: ScanResult | None = None
        early: list[Received] = []
        while True:
            try:
                msg = await self.recv(timeout)
            except TimeoutError:
                if control is None or result is None:
                    raise
                snap = await control.snapshot(scan_id)
                if snap.result.get("summary") is None:
                    raise  # still open, and silent
                result.summary = validate_tolerant(ScanSummary, snap.result["summary"])
                result.fill_from(snap)
                return result
            h = msg.header
            if getattr(h, "scan_id", None) != scan_id:
                continue
            if isinstance(h, ScanStarted):
                result = ScanResult.begin(h)
                for m in early:
                    result.add(m.header, m.arrays)  # type: ignore[arg-type]
            elif isinstance(h, Maps):
                if result is None:
                    early.append(msg)
                else:
                    result.add(h, msg.arrays)
                    if progress is not None:
                        progress(result)
            elif isinstance(h, Event):
                note_event(result, h, scan_id)
            elif isinstance(h, ScanSummary):
                result = summarized(result, h, scan_id)
                if control is not None and result.missing_pixels():
                    result.fill_from(await control.snapshot(scan_id))
                return result

    async def collect_movie(self, scan_id: str, timeout: float = 60.0, progress=None,
                            keep_classes: bool = True) -> MovieResult:
        """Receive an imaging scan until its summary; ``progress(result)`` after every frame result.
        ``keep_classes=False`` keeps only atoms and defects (class maps are large)."""
        result: MovieResult | None = None
        while True:
            msg = await self.recv(timeout)
            h = msg.header
            if getattr(h, "scan_id", None) != scan_id:
                continue
            if isinstance(h, ScanStarted):
                result = MovieResult(h, {name: {} for name in h.recognizers})
            elif isinstance(h, FrameResult) and result is not None:
                arrays = dict(msg.arrays) if keep_classes else {k: v for k, v in msg.arrays.items() if k != "classes"}
                result.frames.setdefault(h.recognizer, {})[h.frame] = arrays
                result.latencies_ms.append(h.latency_ms)
                if h.tracking is not None:
                    result.tracking[h.recognizer] = h.tracking
                if progress is not None:
                    progress(result)
            elif isinstance(h, Event):
                note_event(result, h, scan_id)
            elif isinstance(h, ScanSummary):
                return summarized(result, h, scan_id)
