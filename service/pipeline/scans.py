"""The scan lifecycle: which scans are open, which processors serve them, and what to publish.

``ScanManager`` takes decoded ingest messages and returns the ``Publication`` s they cause; the
server (``scanlens.app.server``) only moves bytes. It owns the scan registry (open scans and a
bounded history of closed ones), chooses and binds the processors of a new scan, routes accepted
data to each processor's ``InferenceWorker``, applies the frame policy (``latest``: the newest
frame wins over frames still queued), accounts for input that could not be read, closes scans when
everything is back (or nothing arrived for ``scan_timeout_s``) and answers the control queries.
Every problem becomes an ``event`` publication and a counter. It is tested without sockets.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from .. import __version__
from ..protocol import topics
from ..protocol.codec import ProtocolError, ReplyTooLarge
from ..protocol.messages import (INGEST_KINDS, MAX_EDGE, PROTOCOL_REVISION, Data, Event, Frame, Message, Request,
                                 ScanEnd, ScanStart, ScanStarted, Status)
from .axis import AxisError, length_factor
from .batcher import ByteGate, InferenceWorker, ResultHandler
from .memory import MemoryLedger, mib
from .processor import Binding, Processor, Publication, WorkItem, takes_of
from .providers import DEFAULT_PARALLEL, per_provider
from .retention import Line, SpectraRetention, retention_for
from .scan import LIST_LIMIT, ScanState
from .stats import LatencyHistogram

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanLimits:
    """How many scans, how big, how long: the lifecycle's limits (from the service settings)."""

    max_open_scans: int = 16
    max_scan_pixels: int = 16_777_216
    keep_closed_scans: int = 64
    keep_closed_ids: int = 65536  # ids (not records) of evicted closed scans, so that late data stays `late`
    scan_timeout_s: float = 60.0
    start_timeout_s: float = 10.0  # a scan that sends nothing after scan_start gives its slot back this soon
    memory_budget_bytes: int = 4 * 2**30  # maps and results of all open and retained scans (memory.py)
    max_reply_bytes: int = 64 * 2**20  # the largest control reply; bigger snapshots come in parts (rows)
    retain_frames: int = 8  # frames a movie with ``retain`` keeps (its latest), for live training


@dataclass(frozen=True)
class WorkerOptions:
    """Batching and parallelism of every processor's inference worker."""

    max_batch_pixels: int = 4096
    queue_pixels: int = 65536
    #: runs in flight per processor, or a table by execution provider (``inference_parallel``)
    parallel: int | Mapping[str, int] = 1
    #: bytes all ingest queues hold together (None: bounded in pixels only, nothing reserved); the
    #: server gives ``ingest_queue_bytes`` (Settings.ingest_queue) and reserves it in the ledger
    queue_bytes: int | None = None
    max_item_bytes: int = 0  # the largest message a queue can be handed (max_message_bytes)
    #: a short lone line for an idle recognizer runs on the event loop (``Processor.runs_inline``) ...
    inline_lone_lines: bool = True
    #: ... unless this says another message waits to be read (the server asks its ingest socket)
    ingest_pending: Callable[[], bool] | None = None

    def parallel_of(self, processor: Processor) -> int:
        """``parallel`` for one processor: a table's entry for the provider that runs its model (the first of
        ``model.providers``; analyzers run on CPU), else the CPU entry, else ``DEFAULT_PARALLEL``."""
        model = getattr(processor, "model", None)
        return per_provider(self.parallel, getattr(model, "providers", ["CPU"])[0], DEFAULT_PARALLEL)


#: the memory ledger's key for the ingest queues (no scan id can be this: it has spaces)
INGEST_QUEUES = "ingest queues"


class ScanManager:
    """Scan registry and lifecycle. ``on_result`` receives each finished work item (the server publishes
    what ``result`` returns for it); the fallback analyzer serves spectral scans no recognizer fits."""

    def __init__(self, recognizers: dict[str, Processor], analyzers: dict[str, Processor], *,
                 on_result: ResultHandler, limits: ScanLimits = ScanLimits(),
                 workers: WorkerOptions = WorkerOptions(), fallback: str = "pca",
                 clock: Callable[[], float] = time.perf_counter):
        self.recognizers = recognizers
        self.processors: dict[str, Processor] = {**recognizers, **analyzers}
        self.fallback = fallback
        self.limits = limits
        self.clock = clock
        self.counters: collections.Counter[str] = collections.Counter()
        #: closed scans by their summary's final state (complete, incomplete, timed_out, aborted)
        self.closed_by_state: collections.Counter[str] = collections.Counter()
        #: every processor's latencies (receipt -> stored) since start, for the metrics endpoint
        self.latency = {name: LatencyHistogram() for name in self.processors}
        self.open_scans: dict[str, ScanState] = {}
        self.closed_scans: collections.OrderedDict[str, ScanState] = collections.OrderedDict()
        #: ids of closed scans whose records were evicted (bounded): their data is still ``late``
        self.evicted_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.ledger = MemoryLedger(limits.memory_budget_bytes)
        self.gate = ByteGate(workers.queue_bytes if workers.queue_bytes is not None else 2**62)
        if workers.queue_bytes is not None:
            need = self.gate.bound(workers.max_item_bytes)
            try:
                self.ledger.reserve(INGEST_QUEUES, need)
            except MemoryError as exc:
                raise ValueError(f"memory_budget_bytes cannot hold the ingest queues, which need "
                                 f"max(ingest_queue_bytes, max_message_bytes): {exc}; raise "
                                 "memory_budget_bytes or lower ingest_queue_bytes or max_message_bytes") from None
        self._on_result, self._worker_options = on_result, workers
        self.workers = {name: self._worker(proc) for name, proc in self.processors.items()}
        self._t0 = time.monotonic()
        self._handlers = {"data": self._on_data, "frame": self._on_frame, "scan_end": self._on_scan_end}

    # ------------------------------------------------------------------ events

    def event(self, code: str, reason: str, *, scan_id: str | None = None, seq: int | None = None,
              seqs: list[int] | None = None, level: str = "error") -> Publication:
        """An ``event`` publication, counted and logged."""
        self.counters[f"event.{code}"] += 1
        log.log(logging.ERROR if level == "error" else logging.WARNING,
                "%s scan=%s seq=%s: %s", code, scan_id, seq, reason)
        try:
            event = Event(scan_id=scan_id, level=level, code=code, reason=reason, seq=seq, seqs=seqs)
        except ValidationError:  # identifiers no event can carry: report without them, never fail here
            scan_id = None
            event = Event(level=level, code=code, reason=f"{reason} (scan id or seq not publishable)")
        return Publication(topics.event_topic(scan_id), event)

    def unreadable(self, exc: ProtocolError, owner: str | None = None) -> list[Publication]:
        """A message that could not be accepted. A data message of an open scan that failed before the
        scan saw it (undecodable, oversized) counts as rejected, not lost — when it came from the scan's
        owner: another sender cannot poison a seq of someone else's scan."""
        if exc.kind == "scan_start" and exc.scan_id is not None and exc.code in ("bad_message", "oversized"):
            # every scan_start whose scan id can be read is answered scan_rejected, naming it
            return [self.event("scan_rejected", f"scan_start refused: {exc.reason}", scan_id=exc.scan_id)]
        scan = self.open_scans.get(exc.scan_id) if exc.scan_id else None
        if (scan is not None and exc.seq is not None and exc.code in ("bad_message", "oversized")
                and scan.owner == owner):
            scan.record_unreadable(exc.seq, exc.reason)
        return [self.event(exc.code, exc.reason, scan_id=exc.scan_id, seq=exc.seq)]

    def internal(self, exc: Exception) -> list[Publication]:
        """A bug while handling a message: reported loudly, never fatal."""
        return [self.event("internal", f"{type(exc).__name__}: {exc}")]

    # ------------------------------------------------------------------ ingest

    async def ingest(self, header: Message, buffers: list[memoryview], t_received: float,
                     owner: str | None = None) -> list[Publication]:
        """One decoded ingest message; ProtocolError when it cannot be accepted (see ``unreadable``).
        Awaits while a worker's queue is full: backpressure reaches the ingest socket. ``owner`` is the
        sender's authenticated identity (its CURVE public key), None without authentication: a scan
        belongs to the identity that started it, and only that identity may send its data and scan_end."""
        if header.kind not in INGEST_KINDS:
            raise ProtocolError("bad_message", f"kind {header.kind!r} is not accepted on the ingest socket",
                                scan_id=getattr(header, "scan_id", None))
        if header.kind == "scan_start":
            return await self._on_scan_start(header, buffers, owner)
        scan = self._open_scan(header.scan_id, getattr(header, "seq", None), header.kind)
        if scan.owner != owner:
            self.counters["foreign_messages"] += 1
            raise ProtocolError("forbidden", f"{header.kind} for scan {scan.scan_id} from a sender that did not "
                                "start it; refused, the scan is unchanged",
                                scan_id=scan.scan_id, seq=getattr(header, "seq", None))
        scan.t_last = self.clock()
        return await self._handlers[header.kind](scan, header, buffers, t_received)

    async def _on_scan_start(self, start: ScanStart, buffers: list[memoryview], owner: str | None) -> list[Publication]:
        sid, lim = start.scan_id, self.limits
        if sid in self.open_scans:
            raise ProtocolError("scan_rejected", f"scan {sid} is already open; the open scan continues "
                                "(end it with scan_end first, or use a new scan_id)", scan_id=sid)
        if buffers:
            raise ProtocolError("scan_rejected", "scan_start carries no buffers", scan_id=sid)
        if len(self.open_scans) >= lim.max_open_scans:
            raise ProtocolError("scan_rejected", f"{len(self.open_scans)} scans are open, the limit is "
                                f"{lim.max_open_scans}", scan_id=sid)
        rows, cols = start.shape
        if rows * cols > lim.max_scan_pixels:
            raise ProtocolError("scan_rejected", f"scan of {rows}x{cols} pixels exceeds the limit of "
                                f"{lim.max_scan_pixels}", scan_id=sid)
        if start.scan_step is not None:
            try:
                length_factor(start.scan_step.units, "nm")
            except AxisError:
                raise ProtocolError("scan_rejected", f"scan_step units {start.scan_step.units!r} are not a length "
                                    "(pm, Å, nm, um)", scan_id=sid) from None
        scan = self._bind(start, owner)
        scan.t_last = self.clock()
        self._reserve(scan)
        self.evicted_ids.pop(sid, None)
        self.open_scans[sid] = scan
        self.counters["scans_started"] += 1
        log.info("scan %s started: %s %dx%d, %s, recognizers %s", sid, start.modality, rows, cols,
                 f"{start.axis.size} channels" if start.axis else f"{start.pixel_size.size:g} {start.pixel_size.units}/px",
                 list(scan.bindings))
        published = [Publication(topics.scan_topic(sid, topics.SCAN_STARTED), self._started(scan))]
        if scan.not_running:
            published.append(self.event(
                "recognizers_skipped", f"not running on scan {sid}: " + _why_not(scan.not_running)
                + f"; running {list(scan.bindings)}", scan_id=sid, level="warning"))
        return published

    def _bind(self, start: ScanStart, owner: str | None) -> ScanState:
        """The scan with its processors bound (docs/protocol.md §3.1). Requested by name, every one must
        take the scan, or it is refused naming each that cannot. By default the recognizers of the
        modality that cannot take it (an axis that does not cover theirs, an uncalibrated axis, a missing
        component) are left out and reported; when none can, spectra go to the fallback analyzer."""
        sid = start.scan_id
        bindings, refused = {}, {}
        for proc in self.choose(start):
            try:
                bindings[proc.name] = proc.bind(start)
            except AxisError as exc:
                refused[proc.name] = str(exc)
        if refused and start.recognizers:
            raise ProtocolError("scan_rejected", _why_not(refused), scan_id=sid)
        if not bindings and takes_of(start) == "spectra":
            fallback = self.processors[self.fallback]
            try:
                bindings[fallback.name] = fallback.bind(start)
            except AxisError as exc:
                refused[fallback.name] = str(exc)
        if not bindings:
            raise ProtocolError("scan_rejected", _why_not(refused), scan_id=sid)
        return ScanState(start, bindings, owner=owner, not_running=refused,
                         retained=retention_for(start, self.limits.retain_frames))

    def choose(self, start: ScanStart) -> list[Processor]:
        """The requested processors, or every recognizer of the modality that takes what the scan sends
        — or, for spectra, the fallback analyzer (PCA) when there is none."""
        sid, modality, takes = start.scan_id, start.modality, takes_of(start)
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
        chosen = [r for r in self.recognizers.values()
                  if r.modality == modality and r.takes == takes and not r.by_name_only]
        if chosen:
            return chosen
        if takes == "frames":
            have = sorted({r.modality for r in self.recognizers.values() if r.takes == "frames"})
            raise ProtocolError("scan_rejected", f"no image recognizer for modality {modality!r}; "
                                f"image modalities: {have}", scan_id=sid)
        return [self.processors[self.fallback]]

    def _open_scan(self, sid: str, seq: int | None, kind: str) -> ScanState:
        """The open scan ``sid``; ProtocolError ``late`` (recorded) or ``unknown_scan`` otherwise."""
        scan = self.open_scans.get(sid)
        if scan is not None:
            return scan
        if seq is None:  # scan_end
            raise ProtocolError("unknown_scan", f"{kind} for scan {sid}, which is not open", scan_id=sid)
        closed = self.closed_scans.get(sid)
        if closed is not None:
            closed.record_late(seq)
            raise ProtocolError("late", f"data seq {seq} arrived after scan {sid} was closed; "
                                "it is not in the summary", scan_id=sid, seq=seq)
        if sid in self.evicted_ids:
            raise ProtocolError("late", f"data seq {seq} arrived after scan {sid} was closed (its record is "
                                "no longer kept); it is not in the summary", scan_id=sid, seq=seq)
        raise ProtocolError("unknown_scan", f"data for scan {sid}, which is not open (no scan_start seen)",
                            scan_id=sid, seq=seq)

    async def _on_data(self, scan: ScanState, data: Data, buffers: list[memoryview],
                       t_received: float) -> list[Publication]:
        spectra = scan.accept(data, buffers)
        self.counters["pixels_in"] += data.shape[0]
        bindings = list(scan.bindings.values())  # a live recognizer may be attached while this waits
        scan.in_flight += len(bindings)  # all at once: a result delivered inside ``submit`` must not settle the scan
        for binding in bindings:
            await self.workers[binding.processor.name].submit(
                binding.work(scan.scan_id, data.seq, data.row, data.col0, spectra, t_received))
        return []

    async def _on_frame(self, scan: ScanState, msg: Frame, buffers: list[memoryview],
                        t_received: float) -> list[Publication]:
        sid = scan.scan_id
        image = scan.accept_frame(msg, buffers)
        self.counters["frames_in"] += 1
        out: list[Publication] = []
        for binding in list(scan.bindings.values()):
            worker = self.workers[binding.processor.name]
            if scan.start.policy == "latest":  # newest frame wins: drop this scan's frames still waiting
                for stale in worker.queue.discard(lambda item: item.scan_id == sid):
                    scan.in_flight -= 1
                    binding.forget(stale.seq)
                    self.counters["frames_skipped"] += 1
                    if not scan.record_skipped(stale.seq):
                        continue  # already rejected (beyond scan_end's n_messages), said so then
                    out.append(self.event("skipped", f"frame {stale.row} (seq {stale.seq}) skipped: frame "
                                          f"{msg.frame} is newer (policy latest)", scan_id=sid, seq=stale.seq,
                                          level="info"))
                out += binding.flush()  # results that waited for a skipped frame
            scan.in_flight += 1
            binding.admit(msg.seq)
            await worker.submit(binding.work(sid, msg.seq, msg.frame, 0, image, t_received))
        return out

    async def _on_scan_end(self, scan: ScanState, end: ScanEnd, buffers: list[memoryview],
                           t_received: float) -> list[Publication]:
        sid = end.scan_id
        if scan.ended:
            raise ProtocolError("bad_message", f"second scan_end for scan {sid}", scan_id=sid)
        out = []
        beyond = scan.end(end.n_messages)
        if beyond:
            out.append(self.event("data_rejected", f"scan_end says {end.n_messages} messages but {len(beyond)} "
                                  f"seqs at or beyond it were received, from {beyond[0]}; they count as rejected",
                                  scan_id=sid, seqs=beyond[:LIST_LIMIT], level="warning"))
        return out + self._maybe_close(scan)

    # ------------------------------------------------------------------ results

    def result(self, item: WorkItem, outputs: dict[str, Any] | None, error: str | None) -> list[Publication]:
        """What to publish for one finished work item (``outputs`` None: inference failed with ``error``).
        Once it is published (or ``publish_failed``), ``settle`` closes the scan if it is done."""
        scan = self.open_scans[item.scan_id]  # an item in flight keeps its scan open
        scan.in_flight -= 1
        out: list[Publication] = []
        if scan.bindings.get(item.binding.processor.name) is not item.binding:
            # a live recognizer's earlier revision, replaced while this was in flight: the new one redoes it
            self.counters["results_superseded"] += 1
            return out
        try:
            if outputs is None:
                scan.rejected.setdefault(item.seq, error or "inference failed")
                out.append(self.event("internal", error or "inference failed", scan_id=scan.scan_id, seq=item.seq))
            else:
                latency = scan.store(item, outputs)
                self.latency[item.binding.processor.name].observe(latency)
                counter, n = item.binding.recognized(item)
                self.counters[counter] += n
                out.append(item.binding.publication(item, outputs, latency))
                out += [self.event(code, reason, scan_id=scan.scan_id, level="warning")
                        for code, reason in item.binding.notices()]
        except Exception as exc:  # a result that cannot be stored or published must not stall the scan
            log.exception("result of scan %s seq %s could not be published", scan.scan_id, item.seq)
            scan.rejected.setdefault(item.seq, f"internal: {exc}")
            out.append(self.event("internal", f"{type(exc).__name__}: {exc}", scan_id=scan.scan_id, seq=item.seq))
        return item.binding.in_order(item.seq, out)  # frames: in the order they arrived

    def publish_failed(self, item: WorkItem, exc: Exception) -> list[Publication]:
        """A result that could not be sent: the seq counts as rejected, an ``internal`` event says why."""
        scan = self.open_scans.get(item.scan_id)
        if scan is not None:
            scan.rejected.setdefault(item.seq, f"internal: {exc}")
        return [self.event("internal", f"{type(exc).__name__}: {exc}", scan_id=item.scan_id, seq=item.seq)]

    def settle(self, scan_id: str) -> list[Publication]:
        """Close the scan if it has ended and nothing of it is in flight any more: its summary."""
        scan = self.open_scans.get(scan_id)
        return self._maybe_close(scan) if scan is not None else []

    # ------------------------------------------------------------------ closing

    def _maybe_close(self, scan: ScanState, *, timed_out: bool = False) -> list[Publication]:
        if scan.closed or scan.in_flight or not (scan.ended or timed_out):
            return []
        summary = scan.close(timed_out=timed_out)
        sid = scan.scan_id
        del self.open_scans[sid]
        self.closed_scans[sid] = scan
        while len(self.closed_scans) > self.limits.keep_closed_scans:
            self._drop_oldest_closed()
        self.counters["scans_closed"] += 1
        self.closed_by_state[summary.state] += 1
        out = []
        if timed_out:
            silent = (f"no data within {min(self.limits.start_timeout_s, self.limits.scan_timeout_s):g} s of "
                      "scan_start" if scan.silent else f"no message for {self.limits.scan_timeout_s:g} s")
            out.append(self.event("scan_timeout", f"{silent}; scan closed without scan_end", scan_id=sid,
                                  level="warning"))
        if summary.n_lost:
            self.counters["messages_lost"] += summary.n_lost
            runs = ", ".join(f"{a}..{b - 1}" for a, b in summary.lost_ranges[:8])
            more = f" and {len(summary.lost_ranges) - 8} more runs" if len(summary.lost_ranges) > 8 else ""
            out.append(self.event("lost", f"{summary.n_lost} data messages never arrived: seqs {runs}{more}",
                                  scan_id=sid, seqs=summary.lost, level="warning"))
        log.info("scan %s closed: %s, %d/%d pixels recognized, %d lost, %d rejected, p99 %.2f ms", sid,
                 summary.state, summary.pixels_recognized, summary.pixels_expected, summary.n_lost,
                 len(summary.rejected), summary.latency_ms_p99 or 0.0)
        out.append(Publication(topics.scan_topic(sid, topics.SUMMARY), summary))
        return out

    def abort_all(self) -> list[Publication]:
        """The service is stopping: a summary (state ``aborted``) for every open scan, whatever is in flight."""
        out: list[Publication] = []
        for scan in list(self.open_scans.values()):
            summary = scan.close(aborted=True)
            del self.open_scans[scan.scan_id]
            self.ledger.release(scan.scan_id)
            self.counters["scans_aborted"] += 1
            self.closed_by_state[summary.state] += 1
            out.append(self.event("aborted", f"the service is shutting down: scan {scan.scan_id} aborted with "
                                  f"{summary.pixels_recognized} of {summary.pixels_expected} pixels recognized",
                                  scan_id=scan.scan_id, level="warning"))
            out.append(Publication(topics.scan_topic(scan.scan_id, topics.SUMMARY), summary))
        return out

    def expire(self) -> list[Publication]:
        """Close every open scan that has been silent for ``scan_timeout_s`` with nothing in flight, and
        every scan that sent nothing at all for ``start_timeout_s`` after its scan_start (a squatter)."""
        now, out = self.clock(), []
        for scan in list(self.open_scans.values()):
            limit = self.limits.scan_timeout_s
            if scan.silent:
                limit = min(limit, self.limits.start_timeout_s)
            if now - scan.t_last > limit and not scan.in_flight:
                try:
                    out += self._maybe_close(scan, timed_out=True)
                except Exception as exc:  # a bug must not stop the timeouts of every other scan
                    log.exception("closing scan %s failed", scan.scan_id)
                    self.open_scans.pop(scan.scan_id, None)
                    self.ledger.release(scan.scan_id)
                    out.append(self.event("internal", f"closing the scan failed: {type(exc).__name__}: {exc}",
                                          scan_id=scan.scan_id))
        return out

    # ------------------------------------------------------------------ memory

    def _reserve(self, scan: ScanState) -> None:
        """Reserve the scan's footprint, dropping retained closed scans (oldest first) to make room;
        ProtocolError ``scan_rejected``, with the figures, when it cannot fit."""
        sid, need = scan.scan_id, scan.footprint()
        if sid in self.closed_scans:  # a reused id replaces the closed record
            self._drop_closed(sid)
        while not self.ledger.fits(need) and self.closed_scans:
            self._drop_oldest_closed()
        try:
            self.ledger.reserve(sid, need)
        except MemoryError as exc:
            rows, cols = scan.start.shape
            self.counters["scans_refused_memory"] += 1
            raise ProtocolError("scan_rejected", f"the maps of a {rows}x{cols} scan do not fit the memory budget: "
                                f"{exc} ({len(self.open_scans)} scans open); try again when a scan has closed, or "
                                "raise memory_budget_bytes", scan_id=sid) from None

    def _drop_closed(self, sid: str) -> None:
        """Forget a closed scan's record (its maps go back to the budget); its id is kept for ``late``."""
        del self.closed_scans[sid]
        self.ledger.release(sid)
        self.evicted_ids[sid] = None
        while len(self.evicted_ids) > self.limits.keep_closed_ids:
            self.evicted_ids.popitem(last=False)

    def _drop_oldest_closed(self) -> None:
        self._drop_closed(next(iter(self.closed_scans)))

    def max_publication_bytes(self) -> int:
        """The largest message any processor can publish within the scan limits."""
        return max(p.max_publication_bytes(self.limits.max_scan_pixels, MAX_EDGE) for p in self.processors.values())

    # ------------------------------------------------------------------ live training (docs/live-training.md)

    def find_scan(self, sid: str | None) -> ScanState:
        """An open or recently closed scan; ProtocolError ``unknown_scan`` saying which it is not."""
        scan = (self.open_scans.get(sid) or self.closed_scans.get(sid)) if sid else None
        if scan is not None:
            return scan
        if sid in self.evicted_ids:
            raise ProtocolError("unknown_scan", f"scan {sid!r} has closed and its record is no longer kept (the "
                                f"service keeps the last {self.limits.keep_closed_scans} closed scans)")
        raise ProtocolError("unknown_scan", f"no open or recently closed scan {sid!r}")

    def add_processor(self, proc: Processor) -> tuple[InferenceWorker, InferenceWorker | None]:
        """Register a recognizer trained live (or its new revision, replacing the one of the same name) with a
        worker of its own; returns (the new worker, the replaced one or None): the server serves the first and
        stops the second once its queue is empty."""
        old = self.workers.get(proc.name)
        if proc.name in self.processors and not getattr(self.processors[proc.name], "by_name_only", False):
            raise ValueError(f"{proc.name!r} names a recognizer loaded at start; a live model needs another name")
        self.recognizers[proc.name] = proc
        self.processors[proc.name] = proc
        self.latency.setdefault(proc.name, LatencyHistogram())
        worker = self.workers[proc.name] = self._worker(proc)
        return worker, old

    def _worker(self, proc: Processor) -> InferenceWorker:
        opts = self._worker_options
        return InferenceWorker(proc, self._on_result, max_batch_pixels=opts.max_batch_pixels,
                               queue_pixels=opts.queue_pixels, parallel=opts.parallel_of(proc), gate=self.gate,
                               inline_lone_lines=opts.inline_lone_lines, ingest_pending=opts.ingest_pending)

    def keep_from_now(self, scan: ScanState) -> SpectraRetention:
        """Start keeping an open spectral scan's spectra that did not ask for ``retain`` (a recorded scan, whose
        earlier lines are read back from its recording): its reservation grows by them; ProtocolError
        ``bad_message`` with the figures when they do not fit the memory budget."""
        kept = SpectraRetention(scan.start)
        held = self.ledger.release(scan.scan_id)
        try:
            self.ledger.reserve(scan.scan_id, held + kept.nbytes)
        except MemoryError as exc:
            self.ledger.reserve(scan.scan_id, held)
            raise ProtocolError("bad_message", f"scan {scan.scan_id}'s spectra do not fit the memory budget: {exc}; "
                                "raise memory_budget_bytes, or label a smaller scan", scan_id=scan.scan_id) from None
        scan.retained = kept
        return kept

    def stop_keeping(self, scan: ScanState) -> None:
        """Undo ``keep_from_now`` (the request it was for was refused)."""
        if scan.retained is not None:
            held = self.ledger.release(scan.scan_id)
            self.ledger.reserve(scan.scan_id, max(0, held - scan.retained.nbytes))
            scan.retained = None

    def live_binding(self, sid: str, proc: Processor, revision: int) -> Binding:
        """``proc`` bound to the scan (AxisError: it does not take the scan), not yet attached."""
        binding = proc.bind(self.find_scan(sid).start)
        binding.revision = revision
        return binding

    def attach(self, sid: str, binding: Binding) -> list[Line]:
        """Attach a ``live_binding`` to the scan from the next message on (a line or frame boundary: this runs
        between two messages on the event loop) and return the kept lines received before, which the caller
        re-recognizes (``redo_items``, ``store_redone``). The scan's reservation grows by the new maps
        (MemoryError when they do not fit)."""
        scan = self.find_scan(sid)
        proc = binding.processor
        old = scan.bindings.get(proc.name)
        held = self.ledger.release(sid)
        extra = binding.footprint() - (old.footprint() if old is not None else 0)
        try:
            self.ledger.reserve(sid, held + max(extra, 0))
        except MemoryError:
            self.ledger.reserve(sid, held)
            raise
        scan.bindings[proc.name] = binding
        scan.not_running.pop(proc.name, None)
        if not isinstance(scan.retained, SpectraRetention):
            return []
        # a line read back from the recording may also have been kept as it arrived: redo each seq once
        return list({line.seq: line for line in scan.retained.lines}.values())

    @staticmethod
    def redo_items(scan: ScanState, binding: Binding, lines: list[Line], max_pixels: int) -> list[list[WorkItem]]:
        """The kept lines as work items for ``binding``, in batches of at most ``max_pixels`` pixels (none for a
        movie: its earlier frames are not redone)."""
        if not lines or not isinstance(scan.retained, SpectraRetention):
            return []
        batches: list[list[WorkItem]] = [[]]
        pixels, now = 0, time.perf_counter()
        for line in lines:
            if batches[-1] and pixels + line.n > max_pixels:
                batches.append([])
                pixels = 0
            values = scan.retained.line_values(line)
            batches[-1].append(binding.work(scan.scan_id, line.seq, line.row, line.col0, values, now))
            pixels += line.n
        return [b for b in batches if b]

    def store_redone(self, scan: ScanState, items: list[WorkItem], outputs: list[dict[str, Any]]) -> list[Publication]:
        """Store re-recognized lines (if their binding is still the scan's) and what to publish for them."""
        out = []
        for item, result in zip(items, outputs):
            if scan.bindings.get(item.binding.processor.name) is not item.binding:
                continue  # replaced by a newer revision meanwhile
            item.binding.store(item, result)
            self.counters["pixels_redone"] += item.n_pixels
            out.append(item.binding.publication(item, result, (time.perf_counter() - item.t_received) * 1e3))
        return out

    @staticmethod
    def hold(scan: ScanState) -> bool:
        """Keep an open scan from closing while a train job for it runs (its summary then lists the new
        recognizer, whose maps are complete); False for a closed scan. ``release`` ends it."""
        if scan.closed:
            return False
        scan.in_flight += 1
        return True

    def release(self, scan: ScanState) -> list[Publication]:
        """The end of a ``hold``: the scan may close (its summary, if it has ended)."""
        scan.in_flight -= 1
        return self._maybe_close(scan)

    # ------------------------------------------------------------------ queries (control socket)

    def status(self) -> Status:
        # the recognizers' ONNX models (``OnnxModel``): the providers that took each session, and why
        # some run on another provider than the first one asked for (each warning once)
        models = {name: m for name, rec in self.recognizers.items()
                  if hasattr(m := getattr(rec, "model", None), "providers")}
        return Status(version=__version__, protocol=PROTOCOL_REVISION, uptime_s=time.monotonic() - self._t0, open_scans=list(self.open_scans),
                      memory_bytes=self.ledger.used, memory_budget_bytes=self.ledger.budget,
                      recognizers=list(self.processors),
                      counters={**self.counters,
                                "backpressure_waits": sum(w.queue.waits for w in self.workers.values()),
                                "queue_byte_waits": self.gate.waits, "queued_bytes": self.gate.used,
                                "queued_bytes_peak": self.gate.peak},
                      queued_pixels=sum(w.queue.pixels for w in self.workers.values()),
                      providers={name: list(m.providers) for name, m in models.items()},
                      provider_warnings=list(dict.fromkeys(w for m in models.values() for w in m.warnings)))

    def query(self, request: Request) -> tuple[dict[str, Any], list, list[np.ndarray]]:
        """A control request -> (result, array specs, arrays); ProtocolError when it cannot be answered."""
        if request.op == "status":
            return self.status().model_dump(mode="json"), [], []
        if request.op == "models":
            return {"models": {n: r.describe() for n, r in self.recognizers.items()},
                    "analyzers": {n: p.describe() for n, p in self.processors.items()
                                  if n not in self.recognizers}}, [], []
        if request.op == "scans":
            return {"open": [self._scan_row(s) for s in self.open_scans.values()],
                    "closed": [self._scan_row(s) for s in self.closed_scans.values()]}, [], []
        return self._snapshot(request.scan_id, request.rows)  # op "snapshot" (the schema allows no other)

    @staticmethod
    def _started(scan: ScanState) -> ScanStarted:
        """The scan's ``scan_started`` header (published when it opened; in every snapshot, for late joiners)."""
        start = scan.start
        return ScanStarted(
            scan_id=start.scan_id, modality=start.modality, shape=start.shape, axis=start.axis,
            components=start.components, pixel_size=start.pixel_size, frames=start.frames, policy=start.policy,
            recognizers=list(scan.bindings), outputs={name: b.map_specs() for name, b in scan.bindings.items()},
            meta=start.meta, scan_step=start.scan_step, frame_interval_s=start.frame_interval_s,
            skipped=dict(scan.not_running) or None)

    @staticmethod
    def _scan_row(scan: ScanState) -> dict[str, Any]:
        return {"scan_id": scan.scan_id, "modality": scan.start.modality, "shape": list(scan.start.shape),
                "open": not scan.closed, "pixels_received": scan.pixels_received,
                "recognizers": list(scan.bindings), "late": list(scan.late), "n_late": scan.n_late,
                "summary": scan.summary.model_dump(mode="json") if scan.summary else None}

    def _snapshot(self, sid: str | None, rows: tuple[int, int] | None) -> tuple[dict[str, Any], list, list[np.ndarray]]:
        """The scan's arrays, or the rows ``[start, stop)`` of its per-pixel ones (``[rows, cols, ...]``;
        other arrays come whole with every part). ReplyTooLarge, saying how many rows fit, when the reply
        would exceed ``max_reply_bytes``."""
        scan = (self.open_scans.get(sid) or self.closed_scans.get(sid)) if sid else None
        if scan is None:
            raise ProtocolError("unknown_scan", f"no open or recently closed scan {sid!r}")
        specs, arrays = scan.snapshot()
        shape = tuple(scan.start.shape)
        per_row = [a.shape[:2] == shape for a in arrays]
        row_bytes = sum(a.nbytes for a, p in zip(arrays, per_row) if p) // shape[0]
        fixed = sum(a.nbytes for a, p in zip(arrays, per_row) if not p)
        start, stop = rows if rows is not None else (0, shape[0])
        if not 0 <= start < stop <= shape[0]:
            raise ProtocolError("bad_message", f"rows [{start}, {stop}) are not within the scan's {shape[0]} rows",
                                scan_id=scan.scan_id)
        limit = self.limits.max_reply_bytes
        result = {"scan_id": scan.scan_id, "open": not scan.closed, "shape": list(shape), "rows": [start, stop],
                  "row_bytes": row_bytes, "max_reply_bytes": limit, "pixels_received": scan.pixels_received,
                  "summary": scan.summary.model_dump(mode="json") if scan.summary else None,
                  "started": self._started(scan).model_dump(mode="json"),
                  # 1.3: which live training made each live recognizer's maps (the others have none)
                  "revisions": {name: b.revision for name, b in scan.bindings.items() if b.revision is not None}}
        result["row_arrays"] = [spec.name for spec, p in zip(specs, per_row) if p]
        size = fixed + row_bytes * (stop - start)
        if size > limit:
            fit = max(0, (limit - fixed) // max(row_bytes, 1))
            result["rows_per_reply"] = fit
            raise ReplyTooLarge(f"a snapshot of rows [{start}, {stop}) is {size / 2**20:.1f} MiB, over the "
                                f"{limit / 2**20:.0f} MiB reply limit: ask for at most {fit} rows at a time (rows)",
                                result, scan_id=scan.scan_id)
        out_specs, out = [], []
        for spec, values, sliced in zip(specs, arrays, per_row):
            if sliced:
                values = values[start:stop]
                spec = spec.model_copy(update={"shape": list(values.shape)})
            out_specs.append(spec)
            out.append(values.copy())
        return result, out_specs, out


def _why_not(refused: dict[str, str]) -> str:
    """``recognizer 'a': reason; recognizer 'b': reason`` (what a refusal or a skip event says)."""
    return "; ".join(f"recognizer {name!r}: {reason}" for name, reason in refused.items())
