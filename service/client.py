"""Python client API: stream a scan to scanlens, subscribe to its maps, ask the control socket.

    async with Instrument("tcp://127.0.0.1:5555") as inst:
        async with inst.scan("s1", "eels", (rows, cols), axis) as scan:
            for row in range(rows):
                await scan.send_line(row, spectra[row])        # [cols, channels]

    async with Subscriber("tcp://127.0.0.1:5556", scan_id="s1") as sub:
        await sub.wait_ready()                                  # before the scan starts
        result = await sub.collect_scan("s1")                  # maps, events, summary

    async with Control("tcp://127.0.0.1:5557") as ctl:
        snapshot = await ctl.snapshot("s1")

Used by the simulators, the demo and the tests; other languages follow ``docs/protocol.md``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from .protocol import topics
from .protocol.codec import arrays_from, decode, dtype_name, encode
from .protocol.messages import (Axis, Data, Event, Frame, FrameResult, Maps, Message, PixelSize, Reply, Request,
                                ScanEnd, ScanStart, ScanStarted, ScanSummary)
from .transport.sockets import connect


class ServiceError(RuntimeError):
    """The service answered a control request with ``ok: false``."""


class _Client:
    def __init__(self, ctx: zmq.asyncio.Context | None):
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- instrument side


class Instrument(_Client):
    """A PUSH connection to the ingest socket. ``send`` blocks (awaits) while the service backs off."""

    def __init__(self, endpoint: str, *, ctx: zmq.asyncio.Context | None = None, hwm: int = 1000,
                 linger_s: float = 10.0):
        super().__init__(ctx)
        self.sock = connect(self.ctx, zmq.PUSH, endpoint, hwm=hwm)
        self._linger_ms = int(linger_s * 1000)

    def close(self) -> None:
        # keep undelivered messages for a while (the scan_end!) rather than dropping them on close
        self.sock.close(linger=self._linger_ms)
        if self._own_ctx:
            self.ctx.term()

    async def send(self, header: Message, arrays: Sequence[np.ndarray] = ()) -> None:
        await self.sock.send_multipart(encode(header, arrays), copy=len(arrays) == 0)

    def movie(self, scan_id: str, modality: str, shape: tuple[int, int], pixel_size: PixelSize, *,
              frames: int | None = None, policy: str = "lossless", recognizers: list[str] | None = None,
              meta: dict[str, Any] | None = None) -> ScanStream:
        """An imaging scan to send frame by frame (``send_frame``); ``policy`` "lossless" or "latest"."""
        return ScanStream(self, ScanStart(scan_id=scan_id, modality=modality, shape=shape, pixel_size=pixel_size,
                                          frames=frames, policy=policy, recognizers=recognizers, meta=meta or {}))

    def scan(self, scan_id: str, modality: str, shape: tuple[int, int], axis: Axis, *,
             components: list[str] | None = None, recognizers: list[str] | None = None,
             meta: dict[str, Any] | None = None) -> ScanStream:
        """A scan to send; ``components`` names the last axis of multi-component data."""
        return ScanStream(self, ScanStart(scan_id=scan_id, modality=modality, shape=shape, axis=axis,
                                          components=components, recognizers=recognizers, meta=meta or {}))


class ScanStream:
    """One scan being sent: ``scan_start`` on entry, ``send_line`` per line, ``scan_end`` on exit."""

    def __init__(self, instrument: Instrument, start: ScanStart):
        self.instrument = instrument
        self.start = start
        self.seq = 0

    async def __aenter__(self) -> ScanStream:
        await self.instrument.send(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.end()

    async def send_line(self, row: int, spectra: np.ndarray, *, col0: int = 0) -> int:
        """Send ``[n_pixels, channels(, components)]`` at ``(row, col0)``; returns the seq used."""
        spectra = np.asarray(spectra)
        header = Data(scan_id=self.start.scan_id, seq=self.seq, row=row, col0=col0,
                      shape=spectra.shape, dtype=dtype_name(spectra.dtype))
        await self.instrument.send(header, [spectra])
        self.seq += 1
        return header.seq

    async def send_frame(self, frame: int, image: np.ndarray) -> int:
        """Send one image ``[height, width]`` of an imaging scan; returns the seq used."""
        image = np.asarray(image)
        header = Frame(scan_id=self.start.scan_id, seq=self.seq, frame=frame, shape=image.shape,
                       dtype=dtype_name(image.dtype))
        await self.instrument.send(header, [image])
        self.seq += 1
        return header.seq

    async def end(self) -> int:
        await self.instrument.send(ScanEnd(scan_id=self.start.scan_id, n_messages=self.seq))
        return self.seq


# --------------------------------------------------------------------------- subscriber side


@dataclass
class Received:
    topic: str
    header: Message
    arrays: dict[str, np.ndarray]


@dataclass
class ScanResult:
    """Everything a subscriber saw of one scan, with the maps assembled to full size."""

    started: ScanStarted
    maps: dict[str, dict[str, np.ndarray]]  # recognizer -> output -> [rows, cols, ...]
    filled: dict[str, np.ndarray]  # recognizer -> bool [rows, cols]
    events: list[Event] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    summary: ScanSummary | None = None

    @classmethod
    def begin(cls, started: ScanStarted) -> ScanResult:
        rows, cols = started.shape
        maps = {rec: {s.name: np.zeros((rows, cols, *s.shape), dtype=s.dtype) for s in specs}
                for rec, specs in started.outputs.items()}
        filled = {rec: np.zeros((rows, cols), dtype=bool) for rec in started.outputs}
        return cls(started, maps, filled)

    recovered: bool = False  # maps completed from a snapshot after messages were missed

    def missing_pixels(self) -> int:
        """Pixels the summary says were recognized but whose maps this subscriber did not receive."""
        if self.summary is None:
            return 0
        return sum(max(0, s.pixels_recognized - int(self.filled[rec].sum()))
                   for rec, s in self.summary.recognizers.items() if rec in self.filled)

    def fill_from(self, snapshot: ControlReply) -> None:
        for rec, outputs in self.maps.items():
            for name, values in outputs.items():
                values[...] = snapshot.arrays[f"{rec}/{name}"]
            self.filled[rec][...] = snapshot.arrays[f"{rec}/filled"].astype(bool)
        self.recovered = True

    def add(self, header: Maps, arrays: dict[str, np.ndarray]) -> None:
        sl = (header.row, slice(header.col0, header.col0 + header.n_pixels))
        for name, values in arrays.items():
            self.maps[header.recognizer][name][sl] = values
        self.filled[header.recognizer][sl] = True
        self.latencies_ms.append(header.latency_ms)


@dataclass
class MovieResult:
    """Everything a subscriber saw of one imaging scan: per frame the atoms, defects and (optionally)
    the class map of each image recognizer."""

    started: ScanStarted
    frames: dict[str, dict[int, dict[str, np.ndarray]]]  # recognizer -> frame index -> arrays
    events: list[Event] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    summary: ScanSummary | None = None
    #: recognizer -> the running tracking statistics of its latest frame result (live, before the summary)
    tracking: dict[str, dict[str, Any]] = field(default_factory=dict)


def _note_event(result: ScanResult | MovieResult | None, event: Event, scan_id: str) -> None:
    """Keep an event with the scan's result; a refusal before the scan started is an error."""
    if result is not None:
        result.events.append(event)
    elif event.code == "scan_rejected":
        raise ServiceError(f"scan {scan_id} rejected: {event.reason}")


def _summarized(result, summary: ScanSummary, scan_id: str):
    if result is None:
        raise ServiceError(f"summary for scan {scan_id} arrived before its scan_started")
    result.summary = summary
    return result


class Subscriber(_Client):
    """A SUB connection to the publish socket, subscribed to one scan (or to ``topics``)."""

    def __init__(self, endpoint: str, *, scan_id: str | None = None, topics_: Sequence[str] | None = None,
                 ctx: zmq.asyncio.Context | None = None, hwm: int = 100_000):
        super().__init__(ctx)
        self.sock = connect(self.ctx, zmq.SUB, endpoint, hwm=hwm)
        self._topics = list(topics_ if topics_ is not None else
                            ([topics.scan_prefix(scan_id), topics.SERVICE_EVENT] if scan_id else [""]))
        for t in self._topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._pending: collections.deque[Received] = collections.deque()
        self._drop_status = False

    async def _recv_raw(self) -> Received:
        frames = await self.sock.recv_multipart(copy=False)
        topic = bytes(frames[0].buffer).decode()
        header, buffers = decode(frames[1:])
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
                result.summary = ScanSummary.model_validate(snap.result["summary"])
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
                _note_event(result, h, scan_id)
            elif isinstance(h, ScanSummary):
                result = _summarized(result, h, scan_id)
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
                _note_event(result, h, scan_id)
            elif isinstance(h, ScanSummary):
                return _summarized(result, h, scan_id)


# --------------------------------------------------------------------------- control


@dataclass
class ControlReply:
    reply: Reply
    arrays: dict[str, np.ndarray]

    @property
    def result(self) -> dict[str, Any]:
        return self.reply.result or {}


class Control(_Client):
    """A DEALER connection to the control socket; one request at a time per client."""

    def __init__(self, endpoint: str, *, ctx: zmq.asyncio.Context | None = None):
        super().__init__(ctx)
        self.sock = connect(self.ctx, zmq.DEALER, endpoint)
        self._ids = itertools.count()

    async def request(self, op: str, scan_id: str | None = None, timeout: float = 10.0) -> ControlReply:
        req = Request(id=next(self._ids), op=op, scan_id=scan_id)
        await self.sock.send_multipart([b"", *encode(req)])
        async with asyncio.timeout(timeout):
            while True:
                frames = await self.sock.recv_multipart(copy=False)
                body = frames[1:] if len(frames[0]) == 0 else frames
                header, buffers = decode(body)
                if isinstance(header, Reply) and header.id == req.id:
                    break  # replies to earlier, timed-out requests are skipped
        if not header.ok:
            raise ServiceError(f"{op} failed: {header.error}")
        return ControlReply(header, arrays_from(header.arrays, buffers) if header.arrays else {})

    async def status(self) -> dict[str, Any]:
        return (await self.request("status")).result

    async def models(self) -> dict[str, Any]:
        return (await self.request("models")).result["models"]

    async def scans(self) -> dict[str, Any]:
        return (await self.request("scans")).result

    async def snapshot(self, scan_id: str) -> ControlReply:
        return await self.request("snapshot", scan_id)
