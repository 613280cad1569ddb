"""The scanlens server: binds the three sockets and moves messages between them and the pipeline.

    instrument --PUSH--> [ingest PULL] -> ScanManager.ingest -> InferenceWorker (thread) -> ScanManager.result --> [PUB]
    client <--REQ/DEALER--> [control ROUTER] -> ScanManager.query

I/O only: receiving, decoding, publishing and replying, under one TaskGroup. What a message means —
the scan lifecycle, accounting, policy — is ``scanlens.pipeline.ScanManager``'s job, which returns
the publications each message causes. Control runs on its own socket and task and is never starved
by data: the ingest loop yields to the event loop after every message. Nothing that comes from the
network can stop the server: every problem becomes an ``event`` on the PUB socket and a counter.

With CURVE keys (``curve_secret_key``, ``curve_allowed_keys``) all three sockets are CURVE servers and
a ZAP handler (``scanlens.transport.KeyAuthenticator``) admits the allowed client keys, counting each
refused handshake as ``auth_refused.<socket>``; the ingest loop hands the sender's key to the pipeline
as the owner of what it sends. Without keys, only local endpoints are bound (``config.check_binds``).

With ``shm_ingest`` (the default) and a local ingest endpoint, a ``scanlens.transport.RingServer`` takes
shared-memory rings from senders on this host (docs/protocol.md §3.6): a ``scan_start`` may name one
(``ring``), and its data and frame messages then name a slot instead of carrying the payload.
``_from_ring`` turns the slot into the message's buffer (zero copy) before the pipeline sees it; the
slot goes back to the sender when the last array made from it is gone.

With ``metrics`` set, a Prometheus endpoint (``metrics.py``) serves a snapshot of the status that the
status loop refreshes; it is always loopback unless ``network_isolated`` (it has no authentication).

With ``record_dir`` set, a ``scanlens.recording.Recorder`` gets every ingest message of a scan (after the
scan manager handled it, with whether it was accepted) and every publication, as the frames already at
hand (no copies); its writer thread journals them and writes ``<scan_id>.h5`` when the scan closes. A
full recording queue makes ingest wait (lossless), and a recording that stops early is published as a
``recording_stopped`` event (docs/operations.md, "Recording scans").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from threadpoolctl import threadpool_limits

from .. import __version__
from ..pipeline import (InferenceWorker, ModelError, PCAAnalyzer, Processor, Publication, Recognizer, ScanLimits,
                        ScanManager, WorkerOptions, WorkItem, load_recognizers)
from ..protocol import topics
from ..protocol.codec import Limits, ProtocolError, decode, encode, split_envelope, wire_dtype
from ..protocol.messages import Message, Reply, Request
from ..transport import CurveServer, KeyAuthenticator, RingMapping, RingServer, load_allowed_keys
from ..transport.sockets import bind
from .config import Settings, check_binds, metrics_address
from .limits import WireLimits
from .metrics import MetricsEndpoint
from .training import Jobs, TrainingOptions, trainer_missing

if TYPE_CHECKING:
    from ..recording import Recorder

log = logging.getLogger(__name__)

#: how long the PUB socket may still deliver at shutdown (the aborted scans' summaries), in ms
SHUTDOWN_LINGER_MS = 500

#: the three sockets, also their ZAP domains (CURVE refusals are counted as ``auth_refused.<name>``)
SOCKET_NAMES = ("ingest", "publish", "control")

#: closed scans whose ring is remembered (a late line naming a slot still gets the slot back to its sender)
KEEP_SCAN_RINGS = 4096

#: the memory ledger's key for the recording queue (docs/operations.md, "Memory")
RECORDING_QUEUE = "recording queue"


def processor_identities(recognizers: dict[str, Recognizer], analyzers: dict[str, Processor]) -> dict[str, dict]:
    """What a recording says about each processor: a model's card name, version, modality, file and the
    file's sha256 (None when it has no file), its card; an analyzer's name and description."""
    out: dict[str, dict] = {}
    for name, rec in recognizers.items():
        path = Path(rec.path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[name] = {"name": name, "version": rec.card.version, "modality": rec.card.modality, "path": str(path),
                     "sha256": sha, "card": rec.card.model_dump(mode="json")}
    for name, proc in analyzers.items():
        out[name] = {"name": name, "version": __version__, "builtin": True, "description": proc.describe()}
    return out


class Server:
    """Run with ``await server.run()``; ``ready`` is set once sockets are bound and models warm."""

    def __init__(self, settings: Settings, recognizers: dict[str, Recognizer] | None = None):
        self.settings = s = settings
        # the secure default first: no unauthenticated bind other hosts can reach (InsecureBindError)
        self._exposed = check_binds(s)
        self.curve: CurveServer | None = None
        self.allowed_keys: frozenset[bytes] = frozenset()
        if s.curve_secret_key is not None and s.curve_allowed_keys is not None:
            self.curve = CurveServer.from_file(s.curve_secret_key)  # KeyFileError: a clear start-up error
            self.allowed_keys = load_allowed_keys(s.curve_allowed_keys)
            if (mode := s.curve_secret_key.stat().st_mode) & 0o077:
                log.warning("%s is readable by others than its owner (mode %o); keep the secret key mode 0600",
                            s.curve_secret_key, mode & 0o777)
        self.recognizers = recognizers if recognizers is not None else load_recognizers(
            s.model_dir, s.models, threads=s.inference_threads, providers=s.providers, user_dir=s.user_model_dir,
            tile_px=s.frame_tile_px)
        analyzers: dict[str, Processor] = {"pca": PCAAnalyzer(k=s.pca_components)}
        if clash := sorted(set(analyzers) & set(self.recognizers)):
            raise ModelError(f"model names {clash} clash with built-in analyzers")
        self.scans = ScanManager(
            dict(self.recognizers), analyzers, on_result=self._on_result,
            limits=ScanLimits(max_open_scans=s.max_open_scans, max_scan_pixels=s.max_scan_pixels,
                              keep_closed_scans=s.keep_closed_scans, scan_timeout_s=s.scan_timeout_s,
                              start_timeout_s=s.start_timeout_s, memory_budget_bytes=s.memory_budget_bytes,
                              max_reply_bytes=s.max_reply_bytes, retain_frames=s.retain_frames),
            workers=WorkerOptions(max_batch_pixels=s.max_batch_pixels, queue_pixels=s.queue_pixels,
                                  parallel=s.inference_parallel, queue_bytes=s.ingest_queue,
                                  max_item_bytes=s.max_message_bytes, inline_lone_lines=s.inline_lone_lines,
                                  ingest_pending=self._ingest_pending))
        self.limits = Limits(max_payload_bytes=s.max_message_bytes)
        self.wire = WireLimits.derive(s, self.scans.max_publication_bytes())
        self.control_limits = Limits(max_payload_bytes=self.wire.request_bytes)
        self.endpoints: dict[str, str] = {}
        self.metrics: MetricsEndpoint | None = MetricsEndpoint() if s.metrics is not None else None
        self.rings: RingServer | None = None
        #: scan id -> the ring its scan_start named (kept after the scan closes, see ``_prune_rings``)
        self._scan_rings: dict[str, RingMapping] = {}
        self.recorder: Recorder | None = None
        if s.record_dir is not None:  # last: it locks the directory (RecordingError when it is unusable)
            self.recorder = self._recorder(s, analyzers)
        self.jobs = Jobs(self.scans, self._publish, self._serve_worker, TrainingOptions(
            model_dir=s.user_model_dir, budget_s=s.train_budget_s, frame_budget_s=s.train_frame_budget_s,
            threads=s.trainer_threads, inference_threads=s.inference_threads, providers=s.providers,
            max_batch_pixels=s.max_batch_pixels, frame_tile_px=s.frame_tile_px))
        self.jobs.recorder = self.recorder
        self._tg: asyncio.TaskGroup | None = None
        self._worker_tasks: dict[int, asyncio.Task] = {}  # id(worker) -> its serve task
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def _ingest_pending(self) -> bool:
        """Whether another message waits on the ingest socket (then a lone line is not run on the event
        loop: the instrument is not slow, and the loop has messages to read)."""
        sock = getattr(self, "ingest", None)
        return sock is not None and bool(sock.get(zmq.EVENTS) & zmq.POLLIN)

    def _recorder(self, s: Settings, analyzers: dict[str, Processor]) -> Recorder:
        """The recorder of ``record_dir``: its queue (a sixteenth of the memory budget, or one message of
        the largest size if more) reserved in the ledger; leftover journals converted first."""
        from ..recording import Recorder  # h5py only when recording

        queue = max(s.memory_budget_bytes // 16, s.max_message_bytes)
        try:
            self.scans.ledger.reserve(RECORDING_QUEUE, queue)
        except MemoryError as exc:
            raise ValueError(f"memory_budget_bytes cannot hold the recording queue too, which needs max("
                             f"memory_budget_bytes / 16, max_message_bytes): {exc}; raise memory_budget_bytes") from None
        return Recorder.open(s.record_dir, budget_bytes=s.record_budget_bytes, queue_bytes=queue,
                             identities=processor_identities(self.recognizers, analyzers),
                             counters=self.scans.counters)

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
        auth: KeyAuthenticator | None = None
        try:
            if self.curve is not None:
                # the ZAP handler runs before any socket binds: libzmq lets every key in while none answers
                auth = KeyAuthenticator(ctx, self.allowed_keys, SOCKET_NAMES, on_refused=self._auth_refused)
                auth.start()
                for name in SOCKET_NAMES:
                    self.scans.counters[f"auth_refused.{name}"] += 0
                log.info("CurveZMQ on: server key %s, %d allowed client keys from %s",
                         self.curve.public_key.decode(), len(self.allowed_keys), s.curve_allowed_keys)
                if not self.allowed_keys:
                    log.warning("no client keys (*.key) in %s: every client will be refused", s.curve_allowed_keys)
                if "metrics" in self._exposed:
                    log.warning("network_isolated = true: metrics %s bound WITHOUT authentication (CURVE does not "
                                "cover HTTP)", self._exposed["metrics"])
            elif self._exposed:
                log.warning("network_isolated = true: %s bound WITHOUT authentication; any host that can reach "
                            "them can send, subscribe and query", ", ".join(f"{n} {ep}" for n, ep in self._exposed.items()))
            elif s.network_isolated:
                log.warning("network_isolated = true: no authentication (all endpoints are loopback or local now)")
            # ZeroMQ's MAXMSGSIZE is a hard stop (the peer is disconnected without an event), so it sits
            # well above the limit that the codec enforces with a clear `oversized` event.
            w = self.wire
            # ingest_hwm: how many messages of each sender ZeroMQ holds here (docs/operations.md, "Memory")
            self.ingest, self.endpoints["ingest"] = bind(ctx, zmq.PULL, s.ingest, hwm=s.ingest_hwm,
                                                         max_message_bytes=w.ingest_frame_bytes,
                                                         curve=self.curve, zap_domain="ingest")
            sockets.append(self.ingest)
            if s.shm_ingest:
                self.rings = RingServer(self.endpoints["ingest"], max_slot_bytes=s.max_message_bytes,
                                        counters=self.scans.counters)
                if self.rings.start():
                    self.endpoints["rings"] = "unix:@" + self.rings.name[1:]
                    for key in ("shm_rings", "shm_refused", "shm_messages"):
                        self.scans.counters[key] += 0
                else:
                    self.rings = None
            self.pub, self.endpoints["publish"] = bind(ctx, zmq.PUB, s.publish, send_hwm=w.publish_hwm,
                                                       curve=self.curve, zap_domain="publish")
            sockets.append(self.pub)
            self.control, self.endpoints["control"] = bind(ctx, zmq.ROUTER, s.control,
                                                           max_message_bytes=w.control_frame_bytes,
                                                           send_hwm=w.control_send_hwm, mandatory=True,
                                                           curve=self.curve, zap_domain="control")
            sockets.append(self.control)
            if self.metrics is not None:
                self.metrics.update(self.scans.status(), self.scans)
                self.endpoints["metrics"] = self.metrics.start(*metrics_address(s.metrics))
                log.info("Prometheus metrics on %s", self.endpoints["metrics"])
            log.info("scanlens %s: ingest %s, publish %s, control %s; recognizers %s", __version__,
                     self.endpoints["ingest"], self.endpoints["publish"], self.endpoints["control"],
                     ", ".join(self.scans.processors))
            log.info("limits: memory budget %.0f MiB; data frames up to %.1f MiB; ingest queues %.0f MiB, %d "
                     "message(s) per sender in ZeroMQ; control requests up to %.1f MiB; "
                     "at most %d queued publications per subscriber (largest %.1f MiB)",
                     s.memory_budget_bytes / 2**20, w.ingest_frame_bytes / 2**20, s.ingest_queue / 2**20,
                     s.ingest_hwm, w.request_bytes / 2**20, w.publish_hwm, w.largest_publication / 2**20)
            if self.recorder is not None:
                self.recorder.start()
            # numpy's BLAS pool would fight ONNX Runtime's threads and the event loop for the cores
            # (measured on 2 shared cores: a 128x128 eigh takes 215 ms with 2 BLAS threads, 1.5 ms with 1)
            with threadpool_limits(1, "blas"):
                await self._serve()
        finally:
            if self.rings is not None:
                self._scan_rings.clear()
                self.rings.close()
            if self.recorder is not None:  # the aborted scans' recordings are written before the process ends
                self.recorder.close()
            for sock in sockets:  # the PUB socket gets a moment to deliver the last summaries
                sock.close(linger=SHUTDOWN_LINGER_MS if sock is getattr(self, "pub", None) else 0)
            if auth is not None:
                auth.stop()
            if self.metrics is not None:
                self.metrics.stop()
            ctx.term()
            log.info("scanlens stopped")

    def _auth_refused(self, domain: str, key: bytes) -> None:
        """A CURVE handshake refused by the ZAP handler (unknown client key), counted per socket."""
        self.scans.counters[f"auth_refused.{domain}"] += 1

    async def _serve(self) -> None:
        """All long-lived tasks under one TaskGroup, until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tasks = [tg.create_task(self._ingest_loop(), name="ingest"),
                     tg.create_task(self._control_loop(), name="control"),
                     tg.create_task(self._status_loop(), name="status"),
                     tg.create_task(self._timeout_loop(), name="timeouts")]
            for name, worker in self.scans.workers.items():
                self._worker_tasks[id(worker)] = task = tg.create_task(worker.serve(), name=f"worker-{name}")
                tasks.append(task)
            if self.settings.trainer == "warm":
                tasks.append(tg.create_task(self._warm_trainer(), name="trainer-start"))
            if self.recorder is not None:
                tasks.append(tg.create_task(self._recording_loop(self.recorder), name="recording"))
            self.ready.set()
            await self._stop.wait()
            # a clean stop (SIGTERM, Ctrl-C) ends every open scan with a summary, state "aborted"
            await self.jobs.aclose()
            await self._publish(self.scans.abort_all())
            for task in [*tasks, *self._worker_tasks.values()]:
                task.cancel()

    async def _warm_trainer(self) -> None:
        """``trainer = "warm"``: start the trainer with the service, so that the first job does not wait for torch."""
        if (missing := trainer_missing()) is not None:
            log.warning("trainer = warm, but %s", missing)
            return
        try:
            await self.jobs.start_trainer()
        except Exception as exc:  # the service runs without it; a train request will say why
            log.error("the trainer did not start: %s", exc)

    def _serve_worker(self, worker: InferenceWorker, old: InferenceWorker | None) -> None:
        """Serve a live recognizer's new worker; stop the one it replaces once that has nothing left."""
        assert self._tg is not None
        self._worker_tasks[id(worker)] = self._tg.create_task(worker.serve(), name=f"worker-{worker.processor.name}")
        if old is not None:
            self._tg.create_task(self._retire(old), name=f"retire-{old.processor.name}")

    async def _retire(self, worker: InferenceWorker) -> None:
        while not worker.idle:
            await asyncio.sleep(0.05)
        task = self._worker_tasks.pop(id(worker), None)
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------------ publishing

    async def _publish(self, publications: Sequence[Publication]) -> None:
        for p in publications:
            frames = [p.topic.encode(), *encode(p.header, p.arrays)]
            await self.pub.send_multipart(frames, copy=False)
            if self.recorder is not None:  # the same frames: the arrays are not copied
                await self.recorder.published(p.header, frames)

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
            owner: str | None = None
            header, accepted = None, False
            try:
                # the sender's identity: its CURVE public key (z85), which the ZAP handler gave as user id
                owner = frames[0].get("User-Id") if self.curve is not None else None
                header, buffers = decode(frames, self.limits)
                if getattr(header, "ring", None) is not None or getattr(header, "slot", None) is not None:
                    header, buffers, frames = self._from_ring(header, buffers, owner)
                publications = await self.scans.ingest(header, buffers, t_received, owner=owner)
                accepted = True
            except ProtocolError as exc:
                publications = self.scans.unreadable(exc, owner)
            except Exception as exc:  # a bug must not stop ingest; report it loudly
                log.exception("internal error while handling an ingest message")
                publications = self.scans.internal(exc)
            if self.recorder is not None and header is not None:  # waits while the recording queue is full
                await self.recorder.received(header, frames, t_received, accepted=accepted, owner=owner)
            await self._publish(publications)
            # a ring slot goes back to its sender when the last reference to it is gone: drop ours now
            frames = header = buffers = publications = None
            await asyncio.sleep(0)  # let control, results and heartbeats in after every message

    def _from_ring(self, header: Message, buffers: list, owner: str | None) -> tuple[Message, list, list]:
        """A ``scan_start`` naming a ring, or a data/frame message naming a slot -> the message as the pipeline
        takes it (the slot's bytes as its one buffer, zero copy) and the frames the recorder keeps (as if the
        payload had come in the message: a recording does not depend on the transport). ProtocolError when
        the ring or slot cannot be used.

        Every slot its owner names goes back to it, whatever the message's fate: the slot is wrapped here
        even when the pipeline will refuse the message (a refused or closed scan), and a slot that cannot
        be wrapped is given back at once. A slot named by another sender is never touched."""
        sid = header.scan_id
        if header.kind == "scan_start":
            ring = self.rings.rings.get(header.ring) if self.rings is not None else None
            if ring is None or not ring.connected:
                raise ProtocolError("scan_rejected", f"scan_start names ring {header.ring}, which this service does "
                                    "not hold (closed, or registered with another service): register a ring again "
                                    "or send without one", scan_id=sid)
            if ring.owner is not None and ring.owner != (owner,):
                raise ProtocolError("scan_rejected", f"ring {header.ring} belongs to another sender", scan_id=sid)
            ring.owner = (owner,)  # claimed by its first scan_start: only this sender may name it from now on
            if sid not in self.scans.open_scans:  # (a duplicate scan_start keeps the open scan's ring)
                self._prune_rings()
                self._scan_rings[sid] = ring  # also when the scan is refused: its lines' slots must come back
            return header, buffers, self._as_recorded(header, [])
        ring = self._scan_rings.get(sid)
        if ring is None:
            raise ProtocolError("bad_message", f"seq {header.seq} names ring slot {header.slot}, but no scan_start "
                                f"of scan {sid} named a ring", scan_id=sid, seq=header.seq)
        if ring.owner != (owner,):  # the pipeline refuses it (not the scan's owner); the slot is not ours to read
            return header, buffers, []
        if buffers:
            ring.give_back(header.slot)
            raise ProtocolError("bad_message", f"seq {header.seq} names ring slot {header.slot} and carries a "
                                "buffer too: one or the other", scan_id=sid, seq=header.seq)
        try:
            nbytes = wire_dtype(header.dtype).itemsize * math.prod(header.shape)
            view = ring.slot(header.slot, nbytes)
        except ValueError as exc:
            raise ProtocolError("bad_message", f"seq {header.seq}, ring slot {header.slot}: {exc}",
                                scan_id=sid, seq=header.seq) from None
        self.scans.counters["shm_messages"] += 1
        # the pipeline never reads ``slot``; only a recording gets the header as if sent without a ring
        return header, [view], self._as_recorded(header, [view])

    def _as_recorded(self, header: Message, buffers: list) -> list:
        """The frames a recording keeps of a message that came through a ring: as if sent without one."""
        if self.recorder is None:
            return []
        field = "ring" if header.kind == "scan_start" else "slot"
        return [encode(header.model_copy(update={field: None}))[0], *buffers]

    def _prune_rings(self) -> None:
        """Forget which ring a scan used once the scan is closed and its ring is gone (the mapping goes when
        nothing refers to it), and beyond the last ``KEEP_SCAN_RINGS`` closed scans."""
        held = self.rings.rings if self.rings is not None else {}
        closed = [sid for sid, ring in self._scan_rings.items() if sid not in self.scans.open_scans]
        for n, sid in enumerate(closed):
            if self._scan_rings[sid].token not in held or n < len(closed) - KEEP_SCAN_RINGS:
                del self._scan_rings[sid]

    async def _recording_loop(self, recorder: Recorder) -> None:
        """Recordings that stopped early (disk error, budget), as ``recording_stopped`` events of their scans."""
        while True:
            scan_id, reason = await recorder.notices.get()
            await self._publish([self.scans.event("recording_stopped", reason, scan_id=scan_id, level="warning")])

    async def _timeout_loop(self) -> None:
        period = min(1.0, self.settings.scan_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self._publish(self.scans.expire())
            except Exception:  # never let one bad close end the timeouts (or the service)
                log.exception("expiring scans failed")

    async def _status_loop(self) -> None:
        while True:
            status = self.scans.status()
            self._prune_rings()
            if self.metrics is not None:  # what scrapes read until the next heartbeat (metrics.py)
                self.metrics.update(status, self.scans)
            await self._publish([Publication(topics.STATUS, status)])
            await asyncio.sleep(self.settings.status_interval_s)

    async def _control_loop(self) -> None:
        while True:
            envelope, body = split_envelope(await self.control.recv_multipart())
            request_id, op = None, "?"
            try:
                request, buffers = decode(body, self.control_limits)
                if not isinstance(request, Request):
                    raise ProtocolError("bad_message", f"control socket expects kind 'request', got {request.kind!r}")
                request_id, op = request.id, request.op
                if op == "train":
                    result, specs, arrays = await self._train(request, buffers), [], []
                else:
                    result, specs, arrays = self.scans.query(request)
                reply = Reply(id=request_id, op=op, ok=True, result=result, arrays=specs)
            except ProtocolError as exc:
                self.scans.counters["control_errors"] += 1
                reply, arrays = Reply(id=request_id, op=op, ok=False, error=exc.reason,
                                      result=getattr(exc, "result", None)), []
            except Exception as exc:
                log.exception("control request failed")
                reply, arrays = Reply(id=request_id, op=op, ok=False, error=f"internal: {exc}"), []
            try:  # a client that does not read its replies gets no more than control_send_hwm of them
                await self.control.send_multipart([*envelope, *encode(reply, arrays)], copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.scans.counters["control_replies_dropped"] += 1
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                self.scans.counters["control_replies_dropped"] += 1


    async def _train(self, request: Request, buffers: list) -> dict[str, Any]:
        """A train request (docs/protocol.md §5.1): the job, or ProtocolError — which is also published as a
        ``train_failed`` event, so that whoever watches the scan sees the refusal too."""
        try:
            if self.settings.trainer == "off":
                raise ProtocolError("bad_message", "live training is off in this service (trainer = \"off\"); set "
                                    "trainer = \"on_demand\" or \"warm\" to allow train requests")
            return self.jobs.submit(request, buffers)
        except ProtocolError as exc:
            known = request.scan_id if request.scan_id in self.scans.open_scans or \
                request.scan_id in self.scans.closed_scans else None
            event = self.scans.event("train_failed", f"train request refused: {exc.reason}; nothing changed",
                                     scan_id=known, level="warning")
            await self._publish([event])
            raise


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
