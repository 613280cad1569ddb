"""The scanlens server: binds the three sockets and wires them to the pipeline under one TaskGroup.

    instrument --PUSH--> [ingest PULL] -> ScanState.accept -> InferenceWorker (thread) -> maps --> [PUB]
    client <--REQ/DEALER--> [control ROUTER]: status, models, scans, snapshot

Handlers live in tables keyed by message kind (ingest) and by op (control). Control runs on its own
socket and task and is never starved by data: the ingest loop yields to the event loop after every
message. Every problem with input becomes an ``event`` on the PUB socket and a counter; nothing that
comes from the network can stop the server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from threadpoolctl import threadpool_limits

from .. import __version__
from ..pipeline.axis import AxisError
from ..pipeline.batcher import InferenceWorker
from ..pipeline.pca import PCAAnalyzer
from ..pipeline.processor import Processor
from ..pipeline.recognizer import ModelError, Recognizer, load_recognizers
from ..pipeline.scan import ScanState, WorkItem
from ..protocol import topics
from ..protocol.codec import Limits, ProtocolError, decode, encode
from ..protocol.messages import (INGEST_KINDS, Data, Event, Frame, FrameResult, Maps, Reply, Request, ScanEnd,
                                 ScanStart, ScanStarted, Status)
from ..transport.sockets import bind
from .config import Settings

log = logging.getLogger(__name__)

_YIELD_EVERY = 1  # ingest messages between explicit yields to the event loop


class Server:
    """Run with ``await server.run()``; ``ready`` is set once sockets are bound and models warm."""

    def __init__(self, settings: Settings, recognizers: dict[str, Recognizer] | None = None):
        self.settings = settings
        self.recognizers = recognizers if recognizers is not None else load_recognizers(
            settings.model_dir, settings.models, threads=settings.inference_threads)
        analyzers: dict[str, Processor] = {"pca": PCAAnalyzer(k=settings.pca_components)}
        if clash := sorted(set(analyzers) & set(self.recognizers)):
            raise ModelError(f"model names {clash} clash with built-in analyzers")
        self.processors: dict[str, Processor] = {**self.recognizers, **analyzers}
        self.limits = Limits(max_payload_bytes=settings.max_message_bytes)
        self.endpoints: dict[str, str] = {}
        self.ready = asyncio.Event()
        self.counters: collections.Counter[str] = collections.Counter()
        self.open_scans: dict[str, ScanState] = {}
        self.closed_scans: collections.OrderedDict[str, ScanState] = collections.OrderedDict()
        self.workers = {name: InferenceWorker(proc, self._on_result, max_batch_pixels=settings.max_batch_pixels,
                                              queue_pixels=settings.queue_pixels,
                                              parallel=settings.inference_parallel)
                        for name, proc in self.processors.items()}
        self._t0 = time.monotonic()
        self._stop = asyncio.Event()
        self._ingest_handlers = {"scan_start": self._on_scan_start, "data": self._on_data,
                                 "frame": self._on_frame, "scan_end": self._on_scan_end}
        self._control_handlers = {"status": self._op_status, "models": self._op_models,
                                  "scans": self._op_scans, "snapshot": self._op_snapshot}

    # ------------------------------------------------------------------ lifecycle

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
                     ", ".join(self.processors))
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
            tasks += [tg.create_task(w.serve(), name=f"worker-{n}") for n, w in self.workers.items()]
            self.ready.set()
            await self._stop.wait()
            for task in tasks:
                task.cancel()

    # ------------------------------------------------------------------ publishing

    async def _publish(self, topic: str, header: Any, arrays: Sequence[np.ndarray] = ()) -> None:
        await self.pub.send_multipart([topic.encode(), *encode(header, arrays)], copy=False)

    async def _event(self, code: str, reason: str, *, scan_id: str | None = None, seq: int | None = None,
                     seqs: list[int] | None = None, level: str = "error") -> None:
        self.counters[f"event.{code}"] += 1
        log.log(logging.ERROR if level == "error" else logging.WARNING,
                "%s scan=%s seq=%s: %s", code, scan_id, seq, reason)
        await self._publish(topics.event_topic(scan_id),
                            Event(scan_id=scan_id, level=level, code=code, reason=reason, seq=seq, seqs=seqs))

    # ------------------------------------------------------------------ ingest

    async def _ingest_loop(self) -> None:
        n = 0
        while True:
            frames = await self.ingest.recv_multipart(copy=False)
            t_received = time.perf_counter()
            self.counters["messages_in"] += 1
            try:
                header, buffers = decode(frames, self.limits)
                if header.kind not in INGEST_KINDS:
                    raise ProtocolError("bad_message", f"kind {header.kind!r} is not accepted on the ingest socket",
                                        scan_id=getattr(header, "scan_id", None))
                await self._ingest_handlers[header.kind](header, buffers, t_received)
            except ProtocolError as exc:
                self._account_unreadable(exc)
                await self._event(exc.code, exc.reason, scan_id=exc.scan_id, seq=exc.seq)
            except Exception as exc:  # a bug must not stop ingest; report it loudly
                log.exception("internal error while handling an ingest message")
                await self._event("internal", f"{type(exc).__name__}: {exc}")
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _account_unreadable(self, exc: ProtocolError) -> None:
        """A data message of an open scan that failed before the scan saw it counts as rejected, not lost."""
        scan = self.open_scans.get(exc.scan_id) if exc.scan_id else None
        if scan is not None and exc.seq is not None and exc.code in ("bad_message", "oversized") \
                and exc.seq not in scan.received:
            scan.rejected.setdefault(exc.seq, exc.reason)

    async def _on_scan_start(self, start: ScanStart, buffers: list[memoryview], t_received: float) -> None:
        sid = start.scan_id
        if sid in self.open_scans:
            raise ProtocolError("duplicate_scan", f"scan {sid} is already open; the open scan continues "
                                "(end it with scan_end first, or use a new scan_id)", scan_id=sid)
        if buffers:
            raise ProtocolError("scan_rejected", "scan_start carries no buffers", scan_id=sid)
        if len(self.open_scans) >= self.settings.max_open_scans:
            raise ProtocolError("scan_rejected", f"{len(self.open_scans)} scans are open, the limit is "
                                f"{self.settings.max_open_scans}", scan_id=sid)
        rows, cols = start.shape
        if rows * cols > self.settings.max_scan_pixels:
            raise ProtocolError("scan_rejected", f"scan of {rows}x{cols} pixels exceeds the limit of "
                                f"{self.settings.max_scan_pixels}", scan_id=sid)
        recognizers = self._choose_recognizers(start)
        try:
            scan = ScanState.open(start, recognizers)
        except AxisError as exc:
            raise ProtocolError("scan_rejected", str(exc), scan_id=sid) from None
        self.closed_scans.pop(sid, None)
        self.open_scans[sid] = scan
        self.counters["scans_started"] += 1
        log.info("scan %s started: %s %dx%d, %s, recognizers %s", sid, start.modality, rows, cols,
                 f"{start.axis.size} channels" if start.axis else f"{start.pixel_size.size:g} {start.pixel_size.units}/px",
                 list(scan.bindings))
        await self._publish(topics.scan_topic(sid, topics.SCAN_STARTED), ScanStarted(
            scan_id=sid, modality=start.modality, shape=start.shape, axis=start.axis, components=start.components,
            pixel_size=start.pixel_size, frames=start.frames, policy=start.policy,
            recognizers=list(scan.bindings),
            outputs={name: b.processor.pixel_specs() for name, b in scan.bindings.items()},
            meta=start.meta))

    def _choose_recognizers(self, start: ScanStart) -> list[Processor]:
        """The requested processors, or every recognizer of the modality — or PCA if it has none."""
        sid, modality = start.scan_id, start.modality
        if start.recognizers:
            chosen = []
            for name in start.recognizers:
                proc = self.processors.get(name)
                if proc is None:
                    raise ProtocolError("scan_rejected", f"unknown recognizer {name!r}; available: "
                                        f"{sorted(self.processors)}", scan_id=sid)
                if proc.modality not in (None, modality):
                    raise ProtocolError("scan_rejected", f"recognizer {name!r} is for modality "
                                        f"{proc.modality!r}, the scan is {modality!r}", scan_id=sid)
                chosen.append(proc)
            return chosen
        chosen = [r for r in self.recognizers.values() if r.modality == modality]
        if start.imaging:
            chosen = [r for r in chosen if r.imaging]
            if not chosen:
                have = sorted({r.modality for r in self.recognizers.values() if r.imaging})
                raise ProtocolError("scan_rejected", f"no image recognizer for modality {modality!r}; "
                                    f"image modalities: {have}", scan_id=sid)
            return chosen
        return [r for r in chosen if not r.imaging] or [self.processors["pca"]]

    async def _on_data(self, data: Data, buffers: list[memoryview], t_received: float) -> None:
        sid = data.scan_id
        scan = self.open_scans.get(sid)
        if scan is None:
            closed = self.closed_scans.get(sid)
            if closed is not None:
                closed.record_late(data.seq)
                raise ProtocolError("late", f"data seq {data.seq} arrived after scan {sid} was closed; "
                                    "it is not in the summary", scan_id=sid, seq=data.seq)
            raise ProtocolError("unknown_scan", f"data for scan {sid}, which is not open (no scan_start seen)",
                                scan_id=sid, seq=data.seq)
        spectra = scan.accept(data, buffers)
        self.counters["pixels_in"] += data.shape[0]
        for binding in scan.bindings.values():
            scan.in_flight += 1
            await self.workers[binding.processor.name].submit(
                WorkItem(scan, binding, data.seq, data.row, data.col0, spectra, t_received))

    async def _on_frame(self, msg: Frame, buffers: list[memoryview], t_received: float) -> None:
        sid = msg.scan_id
        scan = self.open_scans.get(sid)
        if scan is None:
            return await self._on_data(msg, buffers, t_received)  # the same late / unknown_scan errors
        image = scan.accept_frame(msg, buffers)
        self.counters["frames_in"] += 1
        for binding in scan.bindings.values():
            worker = self.workers[binding.processor.name]
            if scan.start.policy == "latest":  # newest frame wins: drop this scan's frames still waiting
                for stale in worker.queue.discard(lambda item: item.scan is scan):
                    scan.in_flight -= 1
                    scan.record_skipped(stale.seq)
                    binding.state.forget([stale.seq])
                    self.counters["frames_skipped"] += 1
                    await self._event("skipped", f"frame {stale.row} (seq {stale.seq}) skipped: frame {msg.frame} "
                                      "is newer (policy latest)", scan_id=sid, seq=stale.seq, level="info")
            scan.in_flight += 1
            binding.state.admit(msg.seq)
            await worker.submit(WorkItem(scan, binding, msg.seq, msg.frame, 0, image, t_received))

    async def _on_scan_end(self, end: ScanEnd, buffers: list[memoryview], t_received: float) -> None:
        sid = end.scan_id
        scan = self.open_scans.get(sid)
        if scan is None:
            raise ProtocolError("unknown_scan", f"scan_end for scan {sid}, which is not open", scan_id=sid)
        if scan.ended:
            raise ProtocolError("bad_message", f"second scan_end for scan {sid}", scan_id=sid)
        scan.n_messages = end.n_messages
        beyond = sorted(s for s in scan.received if s >= end.n_messages)
        if beyond:
            await self._event("data_rejected", f"scan_end says {end.n_messages} messages but seqs {beyond[:16]} "
                              "were received", scan_id=sid, seqs=beyond, level="warning")
        await self._maybe_close(scan)

    # ------------------------------------------------------------------ results

    async def _on_result(self, item: WorkItem, outputs: dict[str, np.ndarray] | None, error: str | None) -> None:
        scan = item.scan
        scan.in_flight -= 1
        try:
            if outputs is None:
                scan.rejected.setdefault(item.seq, error or "inference failed")
                await self._event("internal", error or "inference failed", scan_id=scan.scan_id, seq=item.seq)
            elif item.binding.processor.imaging:
                await self._publish_frame(scan, item, outputs)
            else:
                await self._publish_maps(scan, item, outputs)
        except Exception as exc:  # a result that cannot be stored or published must not stall the scan
            log.exception("result of scan %s seq %s could not be published", scan.scan_id, item.seq)
            scan.rejected.setdefault(item.seq, f"internal: {exc}")
            await self._event("internal", f"{type(exc).__name__}: {exc}", scan_id=scan.scan_id, seq=item.seq)
        finally:
            await self._maybe_close(scan)

    async def _publish_maps(self, scan: ScanState, item: WorkItem, outputs: dict[str, np.ndarray]) -> None:
        latency = scan.store(item, outputs)
        self.counters["pixels_recognized"] += item.n_pixels
        specs = item.binding.line_specs(item.n_pixels)
        await self._publish(topics.scan_topic(scan.scan_id, topics.MAPS), Maps(
            scan_id=scan.scan_id, recognizer=item.binding.processor.name, seq=item.seq, row=item.row,
            col0=item.col0, n_pixels=item.n_pixels, latency_ms=latency, arrays=specs),
            [outputs[spec.name] for spec in specs])

    async def _publish_frame(self, scan: ScanState, item: WorkItem, outputs: dict[str, np.ndarray]) -> None:
        latency = scan.store(item, outputs)
        proc = item.binding.processor
        specs = proc.frame_specs(outputs["classes"].shape, len(outputs["atoms"]), len(outputs["defects"]))
        self.counters["frames_recognized"] += 1
        await self._publish(topics.scan_topic(scan.scan_id, topics.FRAME), FrameResult(
            scan_id=scan.scan_id, recognizer=proc.name, seq=item.seq, frame=item.row, latency_ms=latency,
            n_atoms=len(outputs["atoms"]), n_defects=len(outputs["defects"]), arrays=specs,
            tracking=outputs.get("tracking")),
            [outputs[spec.name] for spec in specs])

    async def _maybe_close(self, scan: ScanState, *, timed_out: bool = False) -> None:
        if scan.closed or scan.in_flight or not (scan.ended or timed_out):
            return
        summary = scan.close(timed_out=timed_out)
        sid = scan.scan_id
        del self.open_scans[sid]
        self.closed_scans[sid] = scan
        while len(self.closed_scans) > self.settings.keep_closed_scans:
            self.closed_scans.popitem(last=False)
        self.counters["scans_closed"] += 1
        if timed_out:
            await self._event("scan_timeout", f"no message for {self.settings.scan_timeout_s:g} s; scan closed "
                              "without scan_end", scan_id=sid, level="warning")
        if summary.lost:
            self.counters["messages_lost"] += len(summary.lost)
            await self._event("lost", f"{len(summary.lost)} data messages never arrived", scan_id=sid,
                              seqs=summary.lost, level="warning")
        log.info("scan %s closed: %s, %d/%d pixels recognized, %d lost, %d rejected, p99 %.2f ms", sid,
                 summary.state, summary.pixels_recognized, summary.pixels_expected, len(summary.lost),
                 len(summary.rejected), summary.latency_ms_p99 or 0.0)
        await self._publish(topics.scan_topic(sid, topics.SUMMARY), summary)

    async def _timeout_loop(self) -> None:
        period = min(1.0, self.settings.scan_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.perf_counter()
            for scan in list(self.open_scans.values()):
                if now - scan.t_last > self.settings.scan_timeout_s and not scan.in_flight:
                    await self._maybe_close(scan, timed_out=True)

    # ------------------------------------------------------------------ status and control

    def status(self) -> Status:
        return Status(version=__version__, uptime_s=time.monotonic() - self._t0, open_scans=list(self.open_scans),
                      recognizers=list(self.processors),
                      counters={**self.counters,
                                "backpressure_waits": sum(w.queue.waits for w in self.workers.values())},
                      queued_pixels=sum(w.queue.pixels for w in self.workers.values()))

    async def _status_loop(self) -> None:
        while True:
            await self._publish(topics.STATUS, self.status())
            await asyncio.sleep(self.settings.status_interval_s)

    async def _control_loop(self) -> None:
        while True:
            frames = await self.control.recv_multipart()
            # envelope: routing id(s) up to and including the empty delimiter (REQ); DEALER may omit it
            split = frames.index(b"") + 1 if b"" in frames else 1
            envelope, body = frames[:split], frames[split:]
            request_id, op = None, "?"
            try:
                request, _ = decode(body, self.limits)
                if not isinstance(request, Request):
                    raise ProtocolError("bad_message", f"control socket expects kind 'request', got {request.kind!r}")
                request_id, op = request.id, request.op
                result, specs, arrays = await self._control_handlers[request.op](request)
                reply = Reply(id=request_id, op=op, ok=True, result=result, arrays=specs)
            except ProtocolError as exc:
                self.counters["control_errors"] += 1
                reply, arrays = Reply(id=request_id, op=op, ok=False, error=exc.reason), []
            except Exception as exc:
                log.exception("control request failed")
                reply, arrays = Reply(id=request_id, op=op, ok=False, error=f"internal: {exc}"), []
            await self.control.send_multipart([*envelope, *encode(reply, arrays)], copy=False)

    async def _op_status(self, request: Request) -> tuple[dict, list, list]:
        return self.status().model_dump(mode="json"), [], []

    async def _op_models(self, request: Request) -> tuple[dict, list, list]:
        return {"models": {n: r.describe() for n, r in self.recognizers.items()},
                "analyzers": {n: p.describe() for n, p in self.processors.items() if n not in self.recognizers}}, [], []

    async def _op_scans(self, request: Request) -> tuple[dict, list, list]:
        def row(scan: ScanState) -> dict:
            return {"scan_id": scan.scan_id, "modality": scan.start.modality, "shape": list(scan.start.shape),
                    "open": not scan.closed, "pixels_received": scan.pixels_received,
                    "recognizers": list(scan.bindings), "late": list(scan.late),
                    "summary": scan.summary.model_dump(mode="json") if scan.summary else None}
        return {"open": [row(s) for s in self.open_scans.values()],
                "closed": [row(s) for s in self.closed_scans.values()]}, [], []

    async def _op_snapshot(self, request: Request) -> tuple[dict, list, list]:
        sid = request.scan_id
        scan = (self.open_scans.get(sid) or self.closed_scans.get(sid)) if sid else None
        if scan is None:
            raise ProtocolError("unknown_scan", f"no open or recently closed scan {sid!r}")
        specs, arrays = scan.snapshot()
        result = {"scan_id": scan.scan_id, "open": not scan.closed, "shape": list(scan.start.shape),
                  "pixels_received": scan.pixels_received,
                  "summary": scan.summary.model_dump(mode="json") if scan.summary else None}
        return result, specs, [a.copy() for a in arrays]


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
