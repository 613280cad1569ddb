"""The instrument side: a PUSH connection to the ingest socket and the scans streamed over it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from ..protocol.codec import dtype_name, encode
from ..protocol.messages import Axis, Data, Frame, Message, PixelSize, ScanEnd, ScanStart
from ..transport.sockets import CurveClient
from .base import _Client


class Instrument(_Client):
    """A PUSH connection to the ingest socket. ``send`` blocks (awaits) while the service backs off.
    ``curve``: the client's CURVE keys, for a service with authentication (``client_keys``)."""

    def __init__(self, endpoint: str, *, ctx: zmq.asyncio.Context | None = None, hwm: int = 1000,
                 linger_s: float = 10.0, curve: CurveClient | None = None):
        super().__init__(ctx)
        self.sock = self._connect(zmq.PUSH, endpoint, hwm=hwm, curve=curve)
        self._linger_ms = int(linger_s * 1000)

    def close(self, *, linger_s: float | None = None) -> None:
        """Close; undelivered messages (the scan_end!) are kept for ``linger_s`` (default: the instrument's
        ``linger_s``) rather than dropped. ``linger_s=0`` when nobody will take them (no service, refused scan)."""
        self._close(linger_ms=self._linger_ms if linger_s is None else int(linger_s * 1000))

    async def send(self, header: Message, arrays: Sequence[np.ndarray] = ()) -> None:
        await self.sock.send_multipart(encode(header, arrays), copy=len(arrays) == 0)

    def movie(self, scan_id: str, modality: str, shape: tuple[int, int], pixel_size: PixelSize, *,
              frames: int | None = None, policy: str = "lossless", recognizers: list[str] | None = None,
              meta: dict[str, Any] | None = None, frame_interval_s: float | None = None) -> ScanStream:
        """An imaging scan to send frame by frame (``send_frame``); ``policy`` "lossless" or "latest";
        ``frame_interval_s`` the time from one frame to the next (D in nm²/s)."""
        return ScanStream(self, ScanStart(scan_id=scan_id, modality=modality, shape=shape, pixel_size=pixel_size,
                                          frames=frames, policy=policy, recognizers=recognizers, meta=meta or {},
                                          frame_interval_s=frame_interval_s))

    def scan(self, scan_id: str, modality: str, shape: tuple[int, int], axis: Axis, *,
             components: list[str] | None = None, recognizers: list[str] | None = None,
             meta: dict[str, Any] | None = None, scan_step: PixelSize | None = None) -> ScanStream:
        """A scan to send; ``components`` names the last axis of multi-component data; ``scan_step`` the
        distance between neighbouring scan pixels (the map's spatial calibration)."""
        return ScanStream(self, ScanStart(scan_id=scan_id, modality=modality, shape=shape, axis=axis,
                                          components=components, recognizers=recognizers, meta=meta or {},
                                          scan_step=scan_step))


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
