"""The instrument side: a PUSH connection to the ingest socket and the scans streamed over it.

On the service's own host (a loopback or ipc endpoint) the payloads travel in a shared-memory ring
(``scanlens.transport.RingClient``; docs/protocol.md §3.6) unless ``shm=False``: each scan_start names
the ring and each line or frame is copied into a free slot (or written there directly through
``ScanStream.line_buffer``), the message carries only the header. When the service has no ring for us
(another host, another user, shared memory off, a restarted service), or a scan's payloads are small
(``RING_MIN_SLOT_BYTES``), the payloads go in the messages.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncio

import numpy as np
import zmq
import zmq.asyncio

from ..protocol.codec import as_wire_array, dtype_name, encode
from ..protocol.messages import Axis, Data, Frame, Message, PixelSize, ScanEnd, ScanStart
from ..transport.shm import RingClient, RingError, ring_socket_name
from ..transport.sockets import CurveClient
from .base import _Client

log = logging.getLogger(__name__)

#: bytes per value a ring slot is sized for (float64: any wire dtype fits; pages that a narrower dtype
#: never touches cost no memory)
_SLOT_ITEMSIZE = 8
#: A ring's default size: 16 slots, fewer when they are large (at least 4): at most 64 MiB of slots of
#: lines, 32 MiB of frames (512² frames: 16 slots; 1024²: 4, two in the service's network and
#: post-processing, two being written). The pages the payloads touch are memory of the sender and,
#: mapped, of the service: 16 MB for 1024² float32 frames.
_RING_SLOTS, _RING_MIN_SLOTS, _RING_BYTES, _FRAME_RING_BYTES = 16, 4, 64 * 2**20, 32 * 2**20
#: Scans whose slots would be smaller (lines of at most 3 spectra of 2048 channels, frames of at most
#: 90²) send their payloads in the messages unless ``shm=True``: ZeroMQ copies 8 KiB in microseconds, less
#: than a slot's bookkeeping on both sides (a lone 2048-channel line took 0.59–0.73 ms p50 in its message,
#: 0.81–0.93 ms through a ring: docs/performance.md).
RING_MIN_SLOT_BYTES = 64 * 2**10


def slot_bytes_of(start: ScanStart) -> int:
    """The slot a scan's payloads need: its largest one at 8 bytes a value, a whole line of spectra or a frame
    (the client gives a scan a ring when this is at least ``RING_MIN_SLOT_BYTES``)."""
    if start.imaging:
        return start.shape[0] * start.shape[1] * _SLOT_ITEMSIZE
    return start.shape[1] * start.axis.size * len(start.components or [0]) * _SLOT_ITEMSIZE


def ring_slots_for(slot_bytes: int, *, frames: bool = False) -> int:
    """Slots of a ring whose slots hold ``slot_bytes`` (of frames: ``frames``), when the instrument does not say."""
    budget = _FRAME_RING_BYTES if frames else _RING_BYTES
    return max(_RING_MIN_SLOTS, min(_RING_SLOTS, budget // max(slot_bytes, 1)))


class Instrument(_Client):
    """A PUSH connection to the ingest socket. ``send`` blocks (awaits) while the service backs off.
    ``curve``: the client's CURVE keys, for a service with authentication (``client_keys``).

    ``shm``: None (default) uses a shared-memory ring when the service is on this host and takes one
    and the scan's payloads are large enough to gain from it (``RING_MIN_SLOT_BYTES``), else the payloads
    go in the messages; True insists (RingError when no ring can be set up); False never.
    ``ring_slots``: lines or frames in flight in the ring at once (the sender waits for a free slot, as
    it waits for a full socket; default 16, fewer for large lines or frames: ``ring_slots_for``).
    ``async with`` (or ``aclose``) lets the service finish with the ring's lines before closing."""

    def __init__(self, endpoint: str, *, ctx: zmq.asyncio.Context | None = None, hwm: int = 1000,
                 linger_s: float = 10.0, curve: CurveClient | None = None, shm: bool | None = None,
                 ring_slots: int | None = None):
        if shm and ring_socket_name(endpoint) is None:
            raise RingError(f"shm=True needs the service on this host (a loopback tcp or ipc endpoint), not {endpoint}")
        super().__init__(ctx)
        self.sock = self._connect(zmq.PUSH, endpoint, hwm=hwm, curve=curve)
        self.endpoint = endpoint
        self._linger_ms = int(linger_s * 1000)
        self._shm = shm if shm is not None else ring_socket_name(endpoint) is not None
        self._insist = bool(shm)
        self.ring_slots = ring_slots
        self.ring: RingClient | None = None

    async def ring_for(self, slot_bytes: int, *, frames: bool = False) -> RingClient | None:
        """The ring whose slots hold ``slot_bytes`` (this instrument's, or a new one registered now), or
        None: no shared memory with this service (the reason is logged; RingError with ``shm=True``).
        The instrument's ring is kept for the next scan when its slots are large and many enough: a
        ring of four large frame slots is not what a scan of lines is sent through."""
        if not self._shm or (slot_bytes < RING_MIN_SLOT_BYTES and not self._insist):
            return None
        slots = self.ring_slots if self.ring_slots is not None else ring_slots_for(slot_bytes, frames=frames)
        ring = self.ring
        if ring is not None and not ring.closed and ring.fits(slot_bytes) and ring.slots >= slots:
            return ring
        if ring is not None:
            await self._drain_ring()
        try:
            self.ring = await RingClient.open(self.endpoint, slots, slot_bytes)
        except RingError as exc:
            if self._insist:
                raise
            log.info("payloads go in the messages: %s", exc)
            self._shm = False  # ask once per instrument
            return None
        return self.ring

    async def _drain_ring(self) -> None:
        """Wait (up to ``linger_s``) until the service released every slot, then close the ring."""
        ring, self.ring = self.ring, None
        if ring is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._linger_ms / 1000):
                while ring.free < ring.slots and not ring.closed:  # ``free`` reads the release notices
                    await asyncio.sleep(0.001)
        ring.close()

    async def aclose(self, *, linger_s: float | None = None) -> None:
        """``close`` after the service is done with the ring's lines (up to ``linger_s``)."""
        await self._drain_ring()
        self.close(linger_s=linger_s)

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self, *, linger_s: float | None = None) -> None:
        """Close; undelivered messages (the scan_end!) are kept for ``linger_s`` (default: the instrument's
        ``linger_s``) rather than dropped. ``linger_s=0`` when nobody will take them (no service, refused scan).
        A ring is closed at once: lines of it the service has not read yet are refused (use ``aclose``)."""
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self._close(linger_ms=self._linger_ms if linger_s is None else int(linger_s * 1000))

    async def send(self, header: Message, arrays: Sequence[np.ndarray] = ()) -> None:
        await self.sock.send_multipart(encode(header, arrays), copy=len(arrays) == 0)

    async def send_payload(self, header: Data | Frame, payload: np.ndarray, ring: RingClient | None) -> None:
        """A data or frame message: through a slot of ``ring`` when it has one that fits, else in the message."""
        payload = as_wire_array(payload)
        if ring is not None and not ring.closed and ring.fits(payload.nbytes):
            try:
                slot = await ring.acquire()
            except RingError:  # the service went away: the payload goes in the message
                pass
            else:
                np.copyto(ring.array(slot, payload.shape, payload.dtype), payload)
                await self.send(header.model_copy(update={"slot": slot}))
                return
        await self.send(header, [payload])

    def movie(self, scan_id: str, modality: str, shape: tuple[int, int], pixel_size: PixelSize, *,
              frames: int | None = None, policy: str = "lossless", recognizers: list[str] | None = None,
              meta: dict[str, Any] | None = None, frame_interval_s: float | None = None,
              retain: bool = False) -> ScanStream:
        """An imaging scan to send frame by frame (``send_frame``); ``policy`` "lossless" or "latest";
        ``frame_interval_s`` the time from one frame to the next (D in nm²/s); ``retain``: the service keeps the
        latest frames, so that ``Control.train`` can learn from a labelled one (docs/live-training.md)."""
        return ScanStream(self, ScanStart(scan_id=scan_id, modality=modality, shape=shape, pixel_size=pixel_size,
                                          frames=frames, policy=policy, recognizers=recognizers, meta=meta or {},
                                          frame_interval_s=frame_interval_s, retain=retain or None))

    def scan(self, scan_id: str, modality: str, shape: tuple[int, int], axis: Axis, *,
             components: list[str] | None = None, recognizers: list[str] | None = None,
             meta: dict[str, Any] | None = None, scan_step: PixelSize | None = None,
             retain: bool = False) -> ScanStream:
        """A scan to send; ``components`` names the last axis of multi-component data; ``scan_step`` the
        distance between neighbouring scan pixels (the map's spatial calibration); ``retain``: the service keeps
        the spectra, so that ``Control.train`` can learn from labelled pixels (docs/live-training.md)."""
        return ScanStream(self, ScanStart(scan_id=scan_id, modality=modality, shape=shape, axis=axis,
                                          components=components, recognizers=recognizers, meta=meta or {},
                                          scan_step=scan_step, retain=retain or None))


class ScanStream:
    """One scan being sent: ``scan_start`` on entry, ``send_line`` per line, ``scan_end`` on exit."""

    def __init__(self, instrument: Instrument, start: ScanStart):
        self.instrument = instrument
        self.start = start
        self.seq = 0
        self.ring: RingClient | None = None

    async def __aenter__(self) -> ScanStream:
        self.ring = await self.instrument.ring_for(slot_bytes_of(self.start), frames=self.start.imaging)
        if self.ring is not None:
            self.start = self.start.model_copy(update={"ring": self.ring.token})
        await self.instrument.send(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.end()

    async def send_line(self, row: int, spectra: np.ndarray, *, col0: int = 0) -> int:
        """Send ``[n_pixels, channels(, components)]`` at ``(row, col0)``; returns the seq used."""
        spectra = np.asarray(spectra)
        header = Data(scan_id=self.start.scan_id, seq=self.seq, row=row, col0=col0,
                      shape=spectra.shape, dtype=dtype_name(spectra.dtype))
        await self.instrument.send_payload(header, spectra, self.ring)
        self.seq += 1
        return header.seq

    @contextlib.asynccontextmanager
    async def line_buffer(self, row: int, n_pixels: int, *, dtype: Any = np.float32,
                          col0: int = 0) -> AsyncIterator[np.ndarray]:
        """A writable ``[n_pixels, channels(, components)]`` array to fill in place; sent as the next line at
        ``(row, col0)`` when the block ends without an error. With a ring it is a slot itself: the spectra
        are written once, where the service reads them (no copy)."""
        s = self.start
        shape = (n_pixels, s.axis.size, *([len(s.components)] if s.components else []))
        header = Data(scan_id=s.scan_id, seq=self.seq, row=row, col0=col0, shape=shape, dtype=dtype_name(np.dtype(dtype)))
        ring, nbytes = self.ring, int(np.prod(shape)) * np.dtype(dtype).itemsize
        if ring is not None and not ring.closed and ring.fits(nbytes):
            slot = await ring.acquire()
            try:
                yield ring.array(slot, shape, np.dtype(dtype).newbyteorder("<"))
            except BaseException:
                ring.unacquire(slot)
                raise
            await self.instrument.send(header.model_copy(update={"slot": slot}))
        else:
            buffer = np.empty(shape, dtype=np.dtype(dtype).newbyteorder("<"))
            yield buffer
            await self.instrument.send(header, [buffer])
        self.seq += 1

    async def send_frame(self, frame: int, image: np.ndarray) -> int:
        """Send one image ``[height, width]`` of an imaging scan; returns the seq used."""
        image = np.asarray(image)
        header = Frame(scan_id=self.start.scan_id, seq=self.seq, frame=frame, shape=image.shape,
                       dtype=dtype_name(image.dtype))
        await self.instrument.send_payload(header, image, self.ring)
        self.seq += 1
        return header.seq

    async def end(self) -> int:
        await self.instrument.send(ScanEnd(scan_id=self.start.scan_id, n_messages=self.seq))
        return self.seq
