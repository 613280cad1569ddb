"""The recorder: every scan to one file, written by one thread, never by the event loop.

The event loop only *enqueues*: for an ingest message, the frames it received (header and buffers as
zmq frames or memoryviews over them: no copy; the queue keeps them alive until they are written), for a
publication, the frames it has just sent. The queue is bounded in bytes (``queue_bytes``; one item of
any size fits when it is empty). When it is full the loop ``await``\\ s room, so ingest waits exactly
like the lossless backpressure of the inference queues (``docs/protocol.md`` §3.4): nothing is dropped.

The writer thread appends each item to the scan's journal (``journal.py``: large buffers compressed;
``appender.py``: direct writes from a staging buffer, flushed at least every ``FLUSH_INTERVAL_S``, also
when the writer is idle). It never waits for an fsync: an fsync thread syncs what was written every
``FSYNC_INTERVAL_S``, and a converter thread turns each journal whose scan's summary has been written
into ``<scan_id>.h5`` (``convert.py``), one after another. A write that fails (disk full, I/O error)
or that would take the recordings in the directory over ``budget_bytes`` stops recording *that scan*: the loop is told
(``notices``, which the server publishes as a ``recording_stopped`` event) and the scan itself goes on;
what was recorded until then still becomes an ``.h5`` file when the scan closes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .convert import DirectoryLock, convert_journal, free_path, open_directory, recordings_bytes, recover
from .appender import FLUSH_INTERVAL_S, Appender
from .journal import FSYNC_INTERVAL_S, SUFFIX, encode_record, file_header

log = logging.getLogger(__name__)


@dataclass
class _Item:
    op: str  # "open", "write", "close", "stop", "mark" (a barrier: meta["done"] is resolved with the journal)
    scan_id: str = ""
    serial: int = 0  # which recording (a scan id can be recorded again once closed)
    meta: dict[str, Any] = field(default_factory=dict)
    frames: list[memoryview] = field(default_factory=list)  # views on the received or sent frames: no copies
    nbytes: int = 0  # what the queue counts: the frames' bytes
    summary: dict[str, Any] | None = None


@dataclass(eq=False)  # a key of the fsync thread's table: by identity
class _Journal:
    """Thread side: one scan's open journal."""

    scan_id: str
    serial: int
    path: Path | None = None
    file: Appender | None = None  # once the first record is written
    stopped: str | None = None
    dirty: bool = False  # written to since the fsync thread's last pass (under the recorder's mutex)
    closed: bool = False  # the writer is done with it: the fsync thread closes its duplicate descriptor


@dataclass
class _Open:
    """Loop side: a scan being recorded."""

    scan_id: str
    serial: int
    owner: str | None
    stopped: bool = False


def _size(n: int) -> str:
    """Bytes for people: 512 bytes, 29.3 KiB, 4.0 MiB, 50.0 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _item(op: str, scan: _Open, meta: dict[str, Any], frames: Sequence[Any] = ()) -> _Item:
    """A record to write; the loop only takes views (packing and checksums are the writer's work)."""
    views = [memoryview(f).cast("B") for f in frames]
    return _Item(op, scan.scan_id, scan.serial, meta, views, sum(v.nbytes for v in views) + 256)


class Recorder:
    """Records scans into ``directory``. ``identities``: per processor name what the recording says about
    it (model name, version, file and its sha256). Create with ``Recorder.open``; ``start`` on the event
    loop; ``received`` / ``published`` for every message; ``close`` at the end."""

    def __init__(self, directory: Path, lock: DirectoryLock, *, budget_bytes: int, queue_bytes: int,
                 identities: dict[str, dict[str, Any]], counters: collections.Counter[str] | None = None):
        self.directory = directory
        self.budget_bytes = budget_bytes
        self.queue_bytes = queue_bytes
        self.identities = identities
        self.counters = counters if counters is not None else collections.Counter()
        #: (scan_id, reason) of every scan whose recording stopped early, for the loop to publish
        self.notices: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._lock = lock
        self._open: dict[str, _Open] = {}
        self._items: collections.deque[_Item] = collections.deque()
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._queued = 0
        self._waiting = False
        self._room = asyncio.Event()
        self._fair = asyncio.Lock()  # FIFO: the order in which full-queue waiters get room
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wall = time.time() - time.perf_counter()  # perf_counter (the server's receipt clock) -> Unix time
        self._used = recordings_bytes(directory)  # writer and converter threads, under _mutex, after start
        self._journals: dict[int, _Journal] = {}  # thread only, by serial
        self._sync_fds: dict[_Journal, int] = {}  # the fsync thread's duplicate descriptors (under _mutex)
        self._stopping = threading.Event()
        self._conversions: queue.Queue[tuple[_Journal, dict[str, Any] | None] | None] = queue.Queue()
        self._serial = 0

    @classmethod
    def open(cls, directory: Path | str, **kwargs: Any) -> Recorder:
        """Create, check and lock ``directory`` (RecordingError), convert the journals a previous run left
        (a log line per file), then a recorder for it."""
        path, lock = open_directory(directory)
        try:
            for done in recover(path):
                if isinstance(done, tuple):
                    log.error("recording: could not recover %s: %s (the journal is kept)", *done)
                elif done.path is None:
                    log.info("recording: removed %s (%s)", done.journal, done.state)
                else:
                    log.info("recording: recovered %s -> %s (%s)", done.journal.name, done.path.name, done.state)
            return cls(path, lock, **kwargs)
        except BaseException:
            lock.release()
            raise

    # ------------------------------------------------------------------ event loop side

    def start(self) -> None:
        """Start the writer thread (on the running event loop, which it reports to)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="scanlens-recorder", daemon=True)
        self._thread.start()
        log.info("recording every scan to %s (budget %s, %s used)", self.directory, _size(self.budget_bytes),
                 _size(self._used))

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def recording(self, scan_id: str) -> bool:
        """Whether the open scan ``scan_id`` is being recorded (and its recording has not stopped)."""
        scan = self._open.get(scan_id)
        return scan is not None and not scan.stopped

    async def journal_of(self, scan_id: str) -> Path | None:
        """The journal of the open, recorded scan ``scan_id`` once everything queued before this call has been
        written to it (a barrier through the writer's queue); None when the scan is not being recorded (or its
        recording stopped, or nothing of it was written). Live training reads the lines back from it
        (docs/live-training.md)."""
        scan = self._open.get(scan_id)
        if scan is None or scan.stopped or self._loop is None:
            return None
        done: asyncio.Future[Path | None] = self._loop.create_future()
        self._append(_Item("mark", scan_id, scan.serial, meta={"done": done}))
        return await done

    async def received(self, header: Any, frames: Sequence[Any], t_received: float, *, accepted: bool,
                       owner: str | None = None) -> None:
        """An ingest message as received (``frames``: its header frame and buffers) after the scan manager
        handled it. An accepted ``scan_start`` opens the scan's recording; messages of scans not being
        recorded, or from another sender than the scan's owner, are ignored."""
        sid = getattr(header, "scan_id", None)
        if header.kind == "scan_start":
            if not accepted or sid in self._open:
                return
            self._serial += 1
            self._open[sid] = opened = _Open(sid, self._serial, owner)
            info = {"dir": "info", "t": time.time(), "scan_id": sid, "service": __version__,
                    "recognizers": self.identities}
            await self._put(_item("open", opened, info))
        scan = self._open.get(sid)
        if scan is None or scan.stopped or scan.owner != owner:
            return
        await self._put(_item("write", scan, {"dir": "in", "t": t_received + self._wall, "ok": accepted}, frames))

    async def published(self, header: Any, frames: Sequence[Any]) -> None:
        """A publication just sent (``frames``: topic, header, buffers). Its scan's summary closes the
        recording: the journal becomes the ``.h5`` file."""
        sid = getattr(header, "scan_id", None)
        scan = self._open.get(sid) if sid is not None else None
        if scan is None:
            return
        closing = header.kind == "scan_summary"
        try:
            if not scan.stopped:
                topic = bytes(frames[0]).decode()
                await self._put(_item("write", scan, {"dir": "out", "t": time.time(), "topic": topic}, frames[1:]))
        finally:  # even when cancelled (shutdown): the close is what turns the journal into the file
            if closing:
                del self._open[sid]
                self._append(_Item("close", sid, scan.serial,
                                   summary=header.model_dump(mode="json", exclude_none=True)))

    async def _put(self, item: _Item) -> None:
        """Queue ``item``, waiting while the queue is full (backpressure). Waiters are served in order
        (``_fair``): nothing overtakes a waiting record, so a scan's records stay in order and none comes
        after its close. Cancelled while waiting (the service stops), it is queued anyway: a stop loses
        nothing that reached the recorder."""
        if not self._fair.locked() and self._try_append(item):
            return
        self.counters["recording_waits"] += 1
        try:
            async with self._fair:
                while not self._try_append(item):
                    await self._room.wait()
        except asyncio.CancelledError:
            self._append(item)
            raise

    def _try_append(self, item: _Item) -> bool:
        """Queue ``item`` if it fits; else ask the writer to wake us when it has made room."""
        with self._mutex:
            if self._queued == 0 or self._queued + item.nbytes <= self.queue_bytes:
                self._append_locked(item)
                return True
            self._waiting = True
            self._room.clear()
            return False

    def _append(self, item: _Item) -> None:
        with self._mutex:
            self._append_locked(item)

    def _append_locked(self, item: _Item) -> None:
        self._queued += item.nbytes
        self._items.append(item)
        self._cond.notify()

    def _stopped(self, serial: int, scan_id: str, reason: str) -> None:
        """On the loop: recording ``serial`` of ``scan_id`` stopped early."""
        scan = self._open.get(scan_id)
        if scan is not None and scan.serial == serial:
            scan.stopped = True
        self.counters["recordings_stopped"] += 1
        self.notices.put_nowait((scan_id, reason))

    def _count(self, name: str) -> None:
        self.counters[name] += 1

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued (conversions included), stop the thread, unlock the directory. Blocks."""
        if self._thread is not None:
            self._append(_Item("stop"))
            self._thread.join(timeout)
            self._thread = None
        self._lock.release()

    # ------------------------------------------------------------------ writer thread

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _run(self) -> None:
        syncer = threading.Thread(target=self._sync_loop, name="scanlens-recorder-fsync", daemon=True)
        converter = threading.Thread(target=self._convert_loop, name="scanlens-recorder-convert", daemon=True)
        syncer.start()
        converter.start()
        try:
            while True:
                with self._cond:
                    if not self._items:  # idle: wait, but not past the next flush of what waits to be flushed
                        self._cond.wait(FLUSH_INTERVAL_S if self._unflushed() else None)
                    item = self._items.popleft() if self._items else None
                if item is None:
                    self._flush(idle=True)
                    continue
                if item.op == "stop":
                    return
                try:
                    self._handle(item)
                except Exception:  # noqa: BLE001 - the writer must survive anything
                    log.exception("recording: %s of scan %s failed", item.op, item.scan_id)
                self._flush(idle=False)
                with self._mutex:
                    self._queued -= item.nbytes
                    wake, self._waiting = self._waiting, False
                if wake:
                    self._call(self._room.set)
        finally:
            self._conversions.put(None)  # after the conversions queued before it
            converter.join()
            self._stopping.set()
            syncer.join()

    def _staged_bytes(self) -> int:
        """Bytes appended to the open journals that their files do not hold yet (staged for a direct write;
        the zero padding of a last block counts against it)."""
        return sum(j.file.size - os.fstat(j.file.fd).st_size for j in self._journals.values() if j.file is not None)

    def _unflushed(self) -> bool:
        return any(j.file is not None and j.file.pending for j in self._journals.values())

    def _flush(self, *, idle: bool) -> None:
        """Flush the journals whose flush is due (all that wait, when the writer is idle): what a ``kill -9``
        could take is at most ``FLUSH_INTERVAL_S`` old (appender.py)."""
        for j in self._journals.values():
            if j.file is not None and not j.stopped and (j.file.due() or idle and j.file.pending):
                self._flush_one(j)

    def _flush_one(self, j: _Journal) -> None:
        assert j.file is not None
        try:
            j.file.flush()
        except OSError as exc:
            self._stop(j, f"cannot write {j.path}: {exc.strerror or exc}; recording of this scan stops here, "
                          "the scan goes on")

    def _sync_loop(self) -> None:
        """The fsync thread: every ``FSYNC_INTERVAL_S`` it fsyncs the journals written to since its last
        pass, on duplicates of their descriptors, so the writer never waits for the disk (an fsync of a
        journal taking in a gigabyte a second can last seconds; the page cache holds what it has not
        reached yet, which a ``kill -9`` cannot take back). Descriptors of closed journals are closed
        here, after their last fsync."""
        while True:
            stopping = self._stopping.wait(FSYNC_INTERVAL_S)
            with self._mutex:
                due = [(j, fd) for j, fd in self._sync_fds.items() if j.dirty or j.closed]
                for j, _ in due:
                    j.dirty = False
            for j, fd in due:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    if not j.closed:
                        self._stop(j, f"cannot fsync {j.path}: {exc.strerror or exc}; recording of this scan "
                                      "stops here, the scan goes on")
                if j.closed:
                    with self._mutex:
                        del self._sync_fds[j]
                    os.close(fd)
            if stopping:
                with self._mutex:
                    left, self._sync_fds = list(self._sync_fds.values()), {}
                for fd in left:
                    os.close(fd)
                return

    def _handle(self, item: _Item) -> None:
        if item.op == "mark":
            j = self._journals.get(item.serial)
            if j is not None and j.file is not None and not j.stopped:
                self._flush_one(j)  # the caller reads the journal: all of it must be in the file
            path = j.path if j is not None and not j.stopped else None
            done = item.meta["done"]
            self._call(lambda: done.done() or done.set_result(path))
            return
        if item.op == "open":
            self._journals[item.serial] = _Journal(item.scan_id, item.serial)
        j = self._journals.get(item.serial)
        if j is None:
            return
        if item.op == "close":
            self._close(j, item.summary)
        elif not j.stopped:
            self._write(j, item)

    def _write(self, j: _Journal, item: _Item) -> None:
        buffers, nbytes = encode_record(item.meta, item.frames)
        extra = 0 if j.file is not None else 24
        with self._mutex:
            if self._used + nbytes + extra > self.budget_bytes:  # measure again: files may have been removed
                self._used = recordings_bytes(self.directory) + self._staged_bytes()
            over = self._used + nbytes + extra > self.budget_bytes
        if over:
            self._stop(j, f"record_budget_bytes exhausted: the recordings in {self.directory} would exceed "
                          f"{_size(self.budget_bytes)} ({_size(self._used)} used); recording of this scan stops "
                          "here, the scan goes on")
            return
        try:
            if j.file is None:
                j.path = free_path(self.directory, j.scan_id, SUFFIX)
                j.file = Appender(j.path)
                with self._mutex:
                    self._sync_fds[j] = os.dup(j.file.fd)
                head, _ = file_header()
                j.file.append([head])
                with self._mutex:
                    self._used += len(head)
            j.file.append(buffers)
        except OSError as exc:
            self._stop(j, f"cannot write {j.path or self.directory}: {exc.strerror or exc}; recording of this "
                          "scan stops here, the scan goes on")
            return
        with self._mutex:
            self._used += nbytes
            j.dirty = True

    def _stop(self, j: _Journal, reason: str) -> None:
        """Stop recording ``j`` (writer or fsync thread); the first reason is the one reported."""
        with self._mutex:
            if j.stopped:
                return
            j.stopped = reason
        log.warning("recording of scan %s stopped: %s", j.scan_id, reason)
        self._call(self._stopped, j.serial, j.scan_id, reason)

    def _close(self, j: _Journal, summary: dict[str, Any] | None) -> None:
        """The scan closed: its journal goes to the converter thread (the writer goes on with the other
        scans' records meanwhile)."""
        del self._journals[j.serial]
        if j.file is None:
            return  # nothing was written (stopped at the first record)
        if not j.stopped:
            self._flush_one(j)  # now, not when the converter gets to it
        with self._mutex:
            j.closed = True
        self._conversions.put((j, summary))

    def _convert_loop(self) -> None:
        """The converter thread: each closed journal, in order, is fsynced, closed and becomes
        ``<scan_id>.h5``. A conversion of a large scan takes seconds; no record waits for it."""
        while (job := self._conversions.get()) is not None:
            try:
                self._convert(*job)
            except Exception:  # noqa: BLE001 - the converter must survive anything
                log.exception("recording: the conversion of scan %s failed", job[0].scan_id)

    def _convert(self, j: _Journal, summary: dict[str, Any] | None) -> None:
        assert j.file is not None and j.path is not None
        try:
            j.file.close(sync=True)
        except OSError as exc:  # what was flushed before is in the journal: convert that
            log.error("recording of scan %s: closing %s failed: %s", j.scan_id, j.path, exc.strerror or exc)
        size = j.path.stat().st_size
        try:
            done = convert_journal(j.path, summary=summary if j.stopped else None, stopped=j.stopped)
        except Exception as exc:  # noqa: BLE001
            log.error("recording of scan %s: the journal %s could not be converted (%s: %s); it is kept, "
                      "`scanlens recover %s` converts it", j.scan_id, j.path, type(exc).__name__, exc, self.directory)
            self._call(self._count, "recordings_failed")
            return
        assert done.path is not None
        with self._mutex:
            self._used += done.path.stat().st_size - size
        log.info("recorded scan %s: %s (%d messages, %.1f MiB)", j.scan_id, done.path, done.messages,
                 done.path.stat().st_size / 2**20)
        self._call(self._count, "recordings_written")
