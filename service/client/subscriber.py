"""The subscriber side: a SUB connection to the publish socket, and collecting one scan's results from it."""

from __future__ import annotations

import asyncio
import collections
from typing import Literal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from ..protocol import topics
from ..protocol.codec import UnknownKindError, arrays_from, decode, validate_tolerant
from ..protocol.messages import Event, FrameResult, Maps, Message, ScanStarted, ScanSummary, TrainUpdate
from ..transport.sockets import CurveClient
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
                 ctx: zmq.asyncio.Context | None = None, hwm: int = 100_000, curve: CurveClient | None = None):
        super().__init__(ctx)
        self.sock = self._connect(zmq.SUB, endpoint, hwm=hwm, curve=curve)
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
        set. Otherwise TimeoutError when nothing arrives for ``timeout`` s.

        A late joiner (subscribed after the scan's ``scan_started``) with ``control`` gets its maps too:
        at its first maps message a ``snapshot`` gives what it missed (and the ``scan_started``), live
        maps follow; one that only sees the summary takes the closed scan's snapshot. Without
        ``control`` a late joiner gets ServiceError at the summary."""
        result: ScanResult | None = None
        early: list[Received] = []
        early_events: list[Event] = []

        async def join() -> ScanResult | None:
            """The result so far from a snapshot (None from a service whose snapshot lacks ``started``)."""
            assert control is not None
            joined = await self._joined(scan_id, control)
            if joined is not None:
                for m in early:
                    joined.add(m.header, m.arrays)  # type: ignore[arg-type]
                joined.events[:0] = early_events
            return joined

        while True:
            try:
                msg = await self.recv(timeout)
            except TimeoutError:
                if control is None:
                    raise
                if result is None:
                    result = await join()
                    if result is None or result.summary is None:
                        raise
                    return result
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
                result.events.extend(early_events)
                for m in early:
                    result.add(m.header, m.arrays)  # type: ignore[arg-type]
            elif isinstance(h, Maps):
                if result is None and control is not None:
                    result = await join()  # joined late: the snapshot has what was missed
                if result is None:
                    early.append(msg)
                else:
                    result.add(h, msg.arrays)
                    if progress is not None:
                        progress(result)
            elif isinstance(h, Event):
                if result is None and h.code != "scan_rejected":
                    early_events.append(h)
                else:
                    note_event(result, h, scan_id)
            elif isinstance(h, TrainUpdate):
                if result is not None:
                    result.train(h)
            elif isinstance(h, ScanSummary):
                if result is None and control is not None:
                    result = await join()  # joined after the last maps: the closed scan's snapshot
                result = summarized(result, h, scan_id)
                if control is not None and result.missing_pixels():
                    result.fill_from(await control.snapshot(scan_id))
                return result

    @staticmethod
    async def _joined(scan_id: str, control: Control) -> ScanResult | None:
        """A scan's result as its snapshot has it (maps so far, the ``scan_started``, the summary if closed);
        None when the service's snapshot does not carry ``started``."""
        snap = await control.snapshot(scan_id)
        started = snap.result.get("started")
        if started is None:
            return None
        result = ScanResult.begin(validate_tolerant(ScanStarted, started))
        result.fill_from(snap)
        if snap.result.get("summary") is not None:
            result.summary = validate_tolerant(ScanSummary, snap.result["summary"])
        return result

    async def collect_movie(self, scan_id: str, timeout: float = 60.0, progress=None,
                            keep_classes: bool | Literal["first"] = True) -> MovieResult:
        """Receive an imaging scan until its summary; ``progress(result)`` after every frame result.
        ``keep_classes=False`` keeps only atoms and defects (class maps are large: a byte per pixel of every
        frame), ``"first"`` the class map of each recognizer's first frame result too."""
        result: MovieResult | None = None
        while True:
            msg = await self.recv(timeout)
            h = msg.header
            if getattr(h, "scan_id", None) != scan_id:
                continue
            if isinstance(h, ScanStarted):
                result = MovieResult(h, {name: {} for name in h.recognizers})
            elif isinstance(h, FrameResult) and result is not None:
                kept = result.frames.setdefault(h.recognizer, {})
                keep = keep_classes is True or (keep_classes == "first" and not kept)
                kept[h.frame] = dict(msg.arrays) if keep else {k: v for k, v in msg.arrays.items() if k != "classes"}
                result.latencies_ms.append(h.latency_ms)
                if h.tracking is not None:
                    result.tracking[h.recognizer] = h.tracking
                if progress is not None:
                    progress(result)
            elif isinstance(h, Event):
                note_event(result, h, scan_id)
            elif isinstance(h, TrainUpdate) and result is not None:
                result.train_updates.append(h)
            elif isinstance(h, ScanSummary):
                return summarized(result, h, scan_id)
