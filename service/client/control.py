"""The control side: a DEALER connection to the control socket (status, models, scans, snapshot, train)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from ..protocol.codec import UnknownKindError, array_spec, arrays_from, decode, encode, split_envelope
from ..protocol.messages import Reply, Request
from ..transport.sockets import CurveClient
from .base import _Client


class ServiceError(RuntimeError):
    """The service answered a control request with ``ok: false``; ``result`` is what it added (if any)."""

    def __init__(self, message: str, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.result = result or {}


@dataclass
class ControlReply:
    reply: Reply
    arrays: dict[str, np.ndarray]

    @property
    def result(self) -> dict[str, Any]:
        return self.reply.result or {}


class Control(_Client):
    """A DEALER connection to the control socket; one request at a time per client.

    Replies are decoded tolerantly (a newer service may add keys); messages of unknown kinds are skipped."""

    def __init__(self, endpoint: str, *, ctx: zmq.asyncio.Context | None = None, curve: CurveClient | None = None):
        super().__init__(ctx)
        self.sock = self._connect(zmq.DEALER, endpoint, curve=curve)
        self._ids = itertools.count()

    async def request(self, op: str, scan_id: str | None = None, timeout: float = 10.0,
                      rows: tuple[int, int] | None = None, arrays: Sequence[np.ndarray] = (),
                      **fields: Any) -> ControlReply:
        """One request; ``arrays`` travel as its buffers (described in ``arrays``), ``fields`` are further
        header fields of the op (docs/protocol.md §5). ServiceError when the service answers not ok."""
        specs = [array_spec("labels", a) for a in arrays] or None
        req = Request(id=next(self._ids), op=op, scan_id=scan_id, rows=rows, arrays=specs, **fields)
        # the send counts against the timeout too: a DEALER without a peer (nothing listening, or a CURVE
        # handshake that was refused and is reconnecting) blocks in send until one appears
        async with asyncio.timeout(timeout):
            await self.sock.send_multipart([b"", *encode(req, arrays)])
            while True:
                _, body = split_envelope(await self.sock.recv_multipart(copy=False), hops=0)
                try:
                    header, buffers = decode(body, tolerant=True)
                except UnknownKindError:
                    continue
                if isinstance(header, Reply) and header.id == req.id:
                    break  # replies to earlier, timed-out requests are skipped
        if not header.ok:
            raise ServiceError(f"{op} failed: {header.error}", header.result)
        return ControlReply(header, arrays_from(header.arrays, buffers) if header.arrays else {})

    async def train(self, scan_id: str, labels: np.ndarray, classes: Sequence[str], *, name: str | None = None,
                    base: str | None = None, budget_s: float | None = None, frame: int | None = None,
                    timeout: float = 10.0) -> dict[str, Any]:
        """Ask the service to learn the scan's sample from labelled pixels (docs/live-training.md): ``labels``
        uint8 ``[rows, cols]`` (a movie: of frame ``frame``), 0 = unlabelled, k = ``classes[k-1]``. Returns at once
        with the job (``job``, ``recognizer``, ``revision``, ``labelled_pixels``, ...); its progress and the swap
        come as ``train_update`` messages on ``scan/<scan_id>/train`` (``Subscriber.train_updates``)."""
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        reply = await self.request("train", scan_id, timeout=timeout, arrays=[labels], classes=list(classes),
                                   name=name, base=base, budget_s=budget_s, frame=frame)
        return reply.result

    async def status(self) -> dict[str, Any]:
        return (await self.request("status")).result

    async def models(self) -> dict[str, Any]:
        return (await self.request("models")).result["models"]

    async def scans(self) -> dict[str, Any]:
        return (await self.request("scans")).result

    async def snapshot(self, scan_id: str, rows: tuple[int, int] | None = None,
                       timeout: float = 10.0) -> ControlReply:
        """The scan's current arrays (``docs/protocol.md`` §5). A snapshot over the service's reply limit
        is fetched in parts of rows and put together here, unless ``rows`` asks for one part."""
        try:
            return await self.request("snapshot", scan_id, timeout=timeout, rows=rows)
        except ServiceError as exc:
            per_reply = exc.result.get("rows_per_reply")
            if rows is not None or not per_reply:
                raise
            total, sliced = exc.result["shape"][0], set(exc.result["row_arrays"])
        parts = []
        for start in range(0, total, per_reply):
            parts.append(await self.request("snapshot", scan_id, timeout=timeout,
                                            rows=(start, min(start + per_reply, total))))
        last = parts[-1]
        arrays = {name: (np.concatenate([p.arrays[name] for p in parts]) if name in sliced else values)
                  for name, values in last.arrays.items()}
        result = {**last.result, "rows": [0, total]}
        specs = [s.model_copy(update={"shape": list(arrays[s.name].shape)}) for s in last.reply.arrays]
        return ControlReply(last.reply.model_copy(update={"result": result, "arrays": specs}), arrays)
