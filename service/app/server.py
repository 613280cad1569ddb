"""The scanlens server: binds the three sockets and moves messages between them and the pipeline.

    instrument --PUSH--> [ingest PULL] -> ScanManager.ingest -> InferenceWorker (thread) -> ScanManager.result --> [PUB]
    client <--REQ/DEALER--> [control ROUTER] -> ScanManager.query

I/O only: receiving, decoding, publishing and replying, under one TaskGroup. What a message means —
the scan lifecycle, accounting, policy — is ``scanlens.pipeline.ScanManager``'s job, which returns
the publications each message causes. Control runs on its own socket and task and is never starved
by data: the ingest loop yields to the event loop after every message. Nothing that comes from the
network can stop the server: every problem becomes an ``event`` on the PUB socket and a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import zmq
import zmq.asyncio
from threadpoolctl import threadpool_limits

from .. import __version__
from ..pipeline import (ModelError, PCAAnalyzer, Processor, Publication, Recognizer, ScanLimits, ScanManager,
                        WorkerOptions, WorkItem, load_recognizers)
from ..protocol import topics
from ..protocol.codec import Limits, ProtocolError, decode, encode, split_envelope
from ..protocol.messages import Reply, Request
from ..transport.sockets import bind
from .config import Settings

log = logging.getLogger(__name__)


class Server:
    """Run with ``await server.run()``; ``ready`` is set once sockets are bound and models warm."""

    def __init__(self, settings: Settings, recognizers: dict[str, Recognizer] | None = None):
        self.settings = s = settings
        self.recognizers = recognizers if recognizers is not None else load_recognizers(
            s.model_dir, s.models, threads=s.inference_threads)
        analyzers: dict[str, Processor] = {"pca": PCAAnalyzer(k=s.pca_components)}
        if clash := sorted(set(analyzers) & set(self.recognizers)):
            raise ModelError(f"model names {clash} clash with built-in analyzers")
        self.scans = ScanManager(
            dict(self.recognizers), analyzers, on_result=self._on_result,
            limits=ScanLimits(max_open_scans=s.max_open_scans, max_scan_pixels=s.max_scan_pixels,
                              keep_closed_scans=s.keep_closed_scans, scan_timeout_s=s.scan_timeout_s),
            workers=WorkerOptions(max_batch_pixels=s.max_batch_pixels, queue_pixels=s.queue_pixels,
                                  parallel=s.inference_parallel))
        self.limits = Limits(max_payload_bytes=s.max_message_bytes)
        self.endpoints: dict[str, str] = {}
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    @property
    def counters(self):
        return self.scans.counters

    @property
    def open_scans(self):
        return self.scans.open_scans

    def status(self):
        return self.scans.status()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        ctx = zmq.asyncio.Context()
        s = self.settings
        sockets: list[zmq.asyncio.Socket] = []
        try:
            # ZeroMQ's MAXMSGSIZE is a hard stop (the peer is disconnected without an event), so it sits
            # well above the limit that the codec enforces with a clear `oversized` event.
            self.ingest, self.endpoints["ingest"] = bind(ctx, zmq.PULL, s.ingest,
                                                         max_message_bytes=4 * s.max_message_bytes + 65536)
            sockets.append(self.ingest)
            self.pub, self.endpoints["publish"] = bind(ctx, zmq.PUB, s.publish, hwm=s.publish_hwm)
            sockets.append(self.pub)
            self.control, self.endpoints["control"] = bind(ctx, zmq.ROUTER, s.control,
                                                           max_message_bytes=1024 * 1024)
            sockets.append(self.control)
            log.info("scanlens %s: ingest %s, publish %s, control %s; recognizers %s", __version__,
                     self.endpoints["ingest"], self.endpoints["publish"], self.endpoints["control"],
                     ", ".join(self.scans.processors))
            # numpy's BLAS pool would fight ONNX Runtime's threads and the event loop for the cores
            # (measured on 2 shared cores: a 128x128 eigh takes 215 ms with 2 BLAS threads, 1.5 ms with 1)
            with threadpool_limits(1, "blas"):
                await self._serve()
        finally:
            for sock in sockets:
                sock.close(linger=0)
            ctx.term()
            log.info("scanlens stopped")

    async def _serve(self) -> None:
        """All long-lived tasks under one TaskGroup, until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._ingest_loop(), name="ingest"),
                     tg.create_task(self._control_loop(), name="control"),
                     tg.create_task(self._status_loop(), name="status"),
                     tg.create_task(self._timeout_loop(), name="timeouts")]
            tasks += [tg.create_task(w.serve(), name=f"worker-{n}") for n, w in self.scans.workers.items()]
            self.ready.set()
            await self._stop.wait()
            for task in tasks:
                task.cancel()

    # ------------------------------------------------------------------ publishing

    async def _publish(self, publications: Sequence[Publication]) -> None:
        for p in publications:
            await self.pub.send_multipart([p.topic.encode(), *encode(p.header, p.arrays)], copy=False)

    async def _on_result(self, item: WorkItem, outputs: dict[str, Any] | None, error: str | None) -> None:
        try:
            await self._publish(self.scans.result(item, outputs, error))
        except Exception as exc:  # a result that cannot be sent must not stall the scan
            log.exception("result of scan %s seq %s could not be published", item.scan_id, item.seq)
            await self._publish(self.scans.publish_failed(item, exc))
        finally:
            await self._publish(self.scans.settle(item.scan_id))

    # ------------------------------------------------------------------ loops

    async def _ingest_loop(self) -> None:
        while True:
            frames = await self.ingest.recv_multipart(copy=False)
            t_received = time.perf_counter()
            self.scans.counters["messages_in"] += 1
            try:
                header, buffers = decode(frames, self.limits)
                publications = await self.scans.ingest(header, buffers, t_received)
            except ProtocolError as exc:
                publications = self.scans.unreadable(exc)
            except Exception as exc:  # a bug must not stop ingest; report it loudly
                log.exception("internal error while handling an ingest message")
                publications = self.scans.internal(exc)
            await self._publish(publications)
            await asyncio.sleep(0)  # let control, results and heartbeats in after every message

    async def _timeout_loop(self) -> None:
        period = min(1.0, self.settings.scan_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            await self._publish(self.scans.expire())

    async def _status_loop(self) -> None:
        while True:
            await self._publish([Publication(topics.STATUS, self.scans.status())])
            await asyncio.sleep(self.settings.status_interval_s)

    async def _control_loop(self) -> None:
        while True:
            envelope, body = split_envelope(await self.control.recv_multipart())
            request_id, op = None, "?"
            try:
                request, _ = decode(body, self.limits)
                if not isinstance(request, Request):
                    raise ProtocolError("bad_message", f"control socket expects kind 'request', got {request.kind!r}")
                request_id, op = request.id, request.op
                result, specs, arrays = self.scans.query(request)
                reply = Reply(id=request_id, op=op, ok=True, result=result, arrays=specs)
            except ProtocolError as exc:
                self.scans.counters["control_errors"] += 1
                reply, arrays = Reply(id=request_id, op=op, ok=False, error=exc.reason), []
            except Exception as exc:
                log.exception("control request failed")
                reply, arrays = Reply(id=request_id, op=op, ok=False, error=f"internal: {exc}"), []
            await self.control.send_multipart([*envelope, *encode(reply, arrays)], copy=False)


@contextlib.asynccontextmanager
async def running(settings: Settings, recognizers: dict[str, Recognizer] | None = None,
                  *, timeout: float = 30.0) -> AsyncIterator[Server]:
    """A started server for the duration of the block (tests, demo); stopped and awaited on exit."""
    server = Server(settings, recognizers)
    task = asyncio.create_task(server.run(), name="scanlens-server")
    ready = asyncio.create_task(server.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises the startup error
        task.cancel()
        raise TimeoutError("scanlens server did not start")
    try:
        yield server
    finally:
        server.stop()
        async with asyncio.timeout(timeout):
            await task
