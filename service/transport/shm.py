"""Shared-memory rings for a co-located instrument: the payload of a data or frame message travels in a
memory segment both processes map, and the ZeroMQ message carries only its header and a slot number.

No message semantics here (which scan may use which ring is the server's business): this module makes,
hands over, maps and recycles rings (``docs/protocol.md`` §3.6 is the wire description).

* The sender creates the segment with ``memfd_create`` (it has no name: nothing in ``/dev/shm`` to leak,
  nothing another process can open) and seals it against shrinking, so that the service can never read
  past its end (SIGBUS).
* It hands the file descriptor to the service over a Unix socket (``SCM_RIGHTS``) in the abstract
  namespace whose name derives from the ingest endpoint (``ring_socket_name``). The service admits only
  peers of its own user (``SO_PEERCRED``), maps the segment and answers with a random token that a
  ``scan_start`` names (``ring``).
* Slot ``k`` is bytes ``[k * slot_bytes, (k + 1) * slot_bytes)``. The sender fills a free slot and sends the
  header with ``slot = k``. The service wraps the slot as an array (``RingMapping.slot``) and, once no
  array of it is left anywhere (recognized, rejected, discarded, recorded), sends the 4-byte slot number
  back on the Unix socket: only then may the sender reuse it. That connection stays open for the ring's
  life; either side closing it (or dying) tells the other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import numpy as np

from .sockets import is_local_endpoint

log = logging.getLogger(__name__)

#: the most slots and bytes one ring may have (the service refuses larger rings)
MAX_SLOTS = 1024
MAX_RING_BYTES = 2**34
#: slots start on page boundaries
PAGE = mmap.PAGESIZE
_HANDSHAKE_BYTES = 4096
_RELEASE = struct.Struct("<I")
_PREFIX = "scanlens-ring"


class RingError(OSError):
    """A ring that cannot be set up or used (refused by the service, no service, closed)."""


def ring_socket_name(endpoint: str) -> str | None:
    """The abstract Unix socket name the service of ``endpoint`` listens on for rings, or None when the
    endpoint is not local (``tcp://`` on loopback or ``ipc://``): only a sender on the service's own host
    and network namespace can share memory with it. A tcp endpoint is named by its port (one process per
    port), an ipc one by a hash of its absolute path."""
    if not is_local_endpoint(endpoint):
        return None
    transport, _, address = endpoint.partition("://")
    if transport == "tcp":
        port = address.rsplit(":", 1)[-1]
        return f"\0{_PREFIX}/tcp/{port}" if port.isdigit() else None
    if transport == "ipc":
        digest = hashlib.sha256(os.path.abspath(address).encode()).hexdigest()[:32]
        return f"\0{_PREFIX}/ipc/{digest}"
    return None


def round_to_page(nbytes: int) -> int:
    return max(PAGE, -(-nbytes // PAGE) * PAGE)


# ---------------------------------------------------------------------------------------------- sender side


class RingClient:
    """The sender's half of one ring: ``slots`` slots of ``slot_bytes`` bytes each (a multiple of the page
    size). ``open`` (or ``open_blocking``) creates, seals and hands over the segment; ``acquire`` (or
    ``acquire_blocking``) waits for a free slot; ``array`` is a writable view of one. ``closed`` becomes
    true when the service goes away."""

    def __init__(self, sock: socket.socket, fd: int, mm: mmap.mmap, token: str, slots: int, slot_bytes: int):
        self._sock, self._fd, self._mm = sock, fd, mm
        self.token, self.slots, self.slot_bytes = token, slots, slot_bytes
        self.closed = False
        self._free = collections.deque(range(slots))
        self._loop: asyncio.AbstractEventLoop | None = None  # set by the first ``acquire`` that waits
        self._wake: asyncio.Event | None = None

    @classmethod
    async def open(cls, endpoint: str, slots: int, slot_bytes: int, *, timeout_s: float = 2.0) -> RingClient:
        """A ring registered with the service of ``endpoint``; RingError when there is none there or it refuses.
        (The handshake runs in a thread: a service that does not answer never blocks the event loop.)"""
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: cls.open_blocking(endpoint, slots, slot_bytes, timeout_s=timeout_s))

    @classmethod
    def open_blocking(cls, endpoint: str, slots: int, slot_bytes: int, *, timeout_s: float = 2.0) -> RingClient:
        """``open`` for code without an event loop."""
        name = ring_socket_name(endpoint)
        if name is None:
            raise RingError(f"{endpoint} is not a local endpoint: shared memory needs the service on this host")
        slot_bytes = round_to_page(slot_bytes)
        fd = os.memfd_create("scanlens-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        sock = mm = None
        try:
            os.ftruncate(fd, slots * slot_bytes)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            mm = mmap.mmap(fd, slots * slot_bytes)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.settimeout(timeout_s)
            try:
                sock.connect(name)
            except OSError as exc:
                raise RingError(f"no shared-memory ring service for {endpoint} on this host ({exc})") from None
            try:
                socket.send_fds(sock, [msgpack.packb({"op": "ring", "slots": slots, "slot_bytes": slot_bytes})], [fd])
                reply = msgpack.unpackb(sock.recv(_HANDSHAKE_BYTES))
            except (OSError, ValueError) as exc:
                raise RingError(f"the service did not accept the ring ({exc or 'no answer'})") from None
            if not isinstance(reply, dict) or not reply.get("ok"):
                raise RingError(f"the service refused the ring: {reply.get('error') if isinstance(reply, dict) else reply}")
            sock.setblocking(False)
            return cls(sock, fd, mm, str(reply["ring"]), slots, slot_bytes)
        except BaseException:
            if sock is not None:
                sock.close()
            if mm is not None:
                mm.close()
            os.close(fd)
            raise

    def _read_notices(self) -> None:
        """Take every release notice waiting on the socket; an end of stream means the service is gone."""
        while not self.closed:
            try:
                packet = self._sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                packet = b""
            if not packet:
                self._close_socket()
                return
            if len(packet) == _RELEASE.size:
                (slot,) = _RELEASE.unpack(packet)
                if slot < self.slots:
                    self._free.append(slot)

    def _on_readable(self) -> None:
        self._read_notices()
        self._wake.set()

    async def acquire(self, timeout_s: float | None = None) -> int:
        """A free slot; waits while the service holds them all (backpressure). RingError once closed."""
        if self._loop is None and not self.closed:
            self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._read_notices()
        while not self._free and not self.closed:
            self._wake.clear()
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        return self._take()

    def acquire_blocking(self, timeout_s: float | None = None) -> int:
        """``acquire`` for code without an event loop (TimeoutError after ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._read_notices()
        while not self._free and not self.closed:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no ring slot was released within {timeout_s:g} s")
            select.select([self._sock], [], [], left)
            self._read_notices()
        return self._take()

    def _take(self) -> int:
        if self.closed:
            raise RingError("the shared-memory ring was closed by the service")
        return self._free.popleft()

    def unacquire(self, slot: int) -> None:
        """Give back a slot that was acquired but not sent."""
        self._free.appendleft(slot)

    @property
    def free(self) -> int:
        """Slots known to be free (notices are read by ``acquire``)."""
        self._read_notices()
        return len(self._free)

    def array(self, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A writable view of ``slot`` as an array of ``shape`` and ``dtype`` (ValueError if it does not fit)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.slot_bytes:
            raise ValueError(f"{nbytes} bytes do not fit a slot of {self.slot_bytes}")
        return np.frombuffer(self._mm, dtype=dtype, count=nbytes // dtype.itemsize,
                             offset=slot * self.slot_bytes).reshape(shape)

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.slot_bytes

    def _close_socket(self) -> None:
        if not self.closed:
            self.closed = True
            if self._loop is not None:
                with contextlib.suppress(ValueError, RuntimeError):  # the loop is already closed
                    self._loop.remove_reader(self._sock.fileno())
                self._wake.set()
            self._sock.close()

    def close(self) -> None:
        """Close the connection (the service drops the ring once it holds no slot) and the segment."""
        self._close_socket()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(BufferError):  # an array of a slot is still alive: the mapping goes with it
            self._mm.close()


# --------------------------------------------------------------------------------------------- service side


@dataclass(eq=False)
class RingMapping:
    """The service's mapping of one ring; ``slot`` wraps a slot as bytes whose release is automatic."""

    token: str
    slots: int
    slot_bytes: int
    uid: int
    pid: int
    _mm: mmap.mmap
    _sock: socket.socket
    _release: Callable[[RingMapping, int], None]
    held: set[int] = field(default_factory=set)
    connected: bool = True
    owner: object = None  # who may name it (set by the server when a scan first claims it)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the socket's state against releases

    def slot(self, k: int, nbytes: int) -> memoryview:
        """Bytes ``[0, nbytes)`` of slot ``k``, zero copy, read-only. The slot is held until every array
        and view made from it is gone, then released to the sender. ValueError: not usable. A ring whose
        sender has closed it still serves the messages that sender sent before."""
        if not 0 <= k < self.slots:
            raise ValueError(f"slot {k} is not in the ring (slots 0..{self.slots - 1})")
        if k in self.held:
            raise ValueError(f"slot {k} is still in use by the service (sent again before its release)")
        if nbytes > self.slot_bytes:
            self.give_back(k)
            raise ValueError(f"{nbytes} bytes do not fit a ring slot of {self.slot_bytes}")
        base = np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=k * self.slot_bytes)
        base.flags.writeable = False
        self.held.add(k)
        done = weakref.finalize(base, self._release, self, k)
        done.atexit = False
        return memoryview(base)

    def give_back(self, k: int) -> None:
        """Send slot ``k`` back without reading it (a message that named it but cannot use it); nothing
        when it is not in the ring or is held (it goes back when its reader is done)."""
        if 0 <= k < self.slots and k not in self.held:
            self.held.add(k)
            self._release(self, k)


class RingServer:
    """Listens on the abstract Unix socket of one ingest endpoint and keeps the rings senders hand over.

    ``rings`` maps token -> RingMapping. A release notice is sent by the thread that let go of the
    slot's last array; the rest (closing, forgetting) happens on the event loop. ``counters`` gets ``shm_rings``, ``shm_refused``."""

    def __init__(self, endpoint: str, *, max_slot_bytes: int, counters: collections.Counter | None = None):
        self.name = ring_socket_name(endpoint)
        self.max_slot_bytes = max_slot_bytes
        self.rings: dict[str, RingMapping] = {}
        self.counters = counters if counters is not None else collections.Counter()
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[int, socket.socket] = {}

    def start(self) -> bool:
        """Listen; False (and a log line) when the endpoint is not local or the name is taken."""
        if self.name is None:
            return False
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.name)
        except OSError as exc:
            sock.close()
            log.warning("shared-memory ingest off: cannot listen on %r (%s)", self.name[1:], exc)
            return False
        sock.listen(16)
        sock.setblocking(False)
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._accept)
        return True

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        conn.setblocking(False)
        self._conns[conn.fileno()] = conn
        self._loop.add_reader(conn.fileno(), self._handshake, conn)

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        self.counters["shm_refused"] += 1
        log.warning("shared-memory ring refused: %s", reason)
        try:
            conn.send(msgpack.packb({"ok": False, "error": reason}))
        except OSError:
            pass
        self._drop_conn(conn)

    def _drop_conn(self, conn: socket.socket) -> None:
        fileno = conn.fileno()
        if fileno >= 0:
            self._loop.remove_reader(fileno)
            self._conns.pop(fileno, None)
        conn.close()

    def _handshake(self, conn: socket.socket) -> None:
        self._loop.remove_reader(conn.fileno())
        fds: list[int] = []
        try:
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 struct.calcsize("3i")))
            data, fds, _flags, _addr = socket.recv_fds(conn, _HANDSHAKE_BYTES, 1)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            return self._refuse(conn, f"unreadable handshake ({exc})")
        try:
            if uid != os.getuid():
                return self._refuse(conn, f"process {pid} of user {uid} is not of this service's user "
                                          f"{os.getuid()}: rings are private to one user")
            try:
                hello = msgpack.unpackb(data)
                slots, slot_bytes = int(hello["slots"]), int(hello["slot_bytes"])
            except Exception:
                return self._refuse(conn, "the handshake must be msgpack {op: ring, slots, slot_bytes} with one fd")
            if len(fds) != 1:
                return self._refuse(conn, "the handshake must carry exactly one file descriptor (SCM_RIGHTS)")
            if not (1 <= slots <= MAX_SLOTS and 0 < slot_bytes <= self.max_slot_bytes and slot_bytes % PAGE == 0
                    and slots * slot_bytes <= MAX_RING_BYTES):
                return self._refuse(conn, f"{slots} slots of {slot_bytes} bytes: slots must be 1..{MAX_SLOTS}, slot "
                                          f"bytes a multiple of {PAGE} up to {self.max_slot_bytes} (max_message_bytes)")
            mm = self._map(fds[0], slots * slot_bytes)
            if isinstance(mm, str):
                return self._refuse(conn, mm)
        finally:
            for fd in fds:
                os.close(fd)
        token = secrets.token_hex(16)
        ring = RingMapping(token, slots, slot_bytes, uid, pid, mm, conn, self._released)
        self.rings[token] = ring
        self.counters["shm_rings"] += 1
        conn.send(msgpack.packb({"ok": True, "ring": token}))
        self._loop.add_reader(conn.fileno(), self._watch, ring)
        log.info("shared-memory ring from process %d: %d slots of %.1f MiB", pid, slots, slot_bytes / 2**20)

    @staticmethod
    def _map(fd: int, size: int) -> mmap.mmap | str:
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            return "the segment must be a memfd (memfd_create with MFD_ALLOW_SEALING)"
        if not seals & fcntl.F_SEAL_SHRINK:
            return "the segment must be sealed against shrinking (F_SEAL_SHRINK)"
        if os.fstat(fd).st_size < size:
            return f"the segment has {os.fstat(fd).st_size} bytes, fewer than slots x slot_bytes = {size}"
        try:
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except OSError as exc:
            return f"cannot map the segment ({exc})"

    def _watch(self, ring: RingMapping) -> None:
        """The ring's connection became readable: the sender closed it (or died). Nothing else is read."""
        try:
            if ring._sock.recv(64):
                return  # senders send nothing after the handshake; ignore it
        except BlockingIOError:
            return
        except OSError:
            pass
        self._disconnect(ring)

    def _disconnect(self, ring: RingMapping) -> None:
        with ring.lock:
            if ring.connected:
                ring.connected = False
                self._drop_conn(ring._sock)
        self._forget_if_idle(ring)

    def _forget_if_idle(self, ring: RingMapping) -> None:
        # the mapping itself goes when nothing refers to the ring any more (a scan still open may read
        # the slots of messages that were sent before the sender closed the ring)
        if not ring.connected and not ring.held and self.rings.get(ring.token) is ring:
            del self.rings[ring.token]

    def _released(self, ring: RingMapping, slot: int) -> None:
        """A slot's last array is gone (in whichever thread dropped it): tell the sender at once. A send
        on a non-blocking socket never waits; the lock keeps it off a socket the loop is closing."""
        failed: OSError | None = None
        with ring.lock:
            ring.held.discard(slot)
            if ring.connected:
                try:
                    ring._sock.send(_RELEASE.pack(slot))
                except OSError as exc:
                    failed = exc
            idle = not ring.connected and not ring.held
        if failed is None and not idle:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._release_failed if failed else self._forget_if_idle, ring, *(
                    [failed] if failed else []))

    def _release_failed(self, ring: RingMapping, exc: OSError) -> None:
        if isinstance(exc, BlockingIOError):
            # at most `slots` notices are ever unread (a slot is reused only after its notice), and a Unix
            # socket holds far more: this sender does not read its socket at all; the ring is closed
            log.warning("shared-memory ring of process %d: the sender does not read its releases; closed", ring.pid)
        elif exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            log.warning("shared-memory ring of process %d: %s", ring.pid, exc)
        self._disconnect(ring)

    def close(self) -> None:
        """Stop listening and close every connection (senders see their rings closed)."""
        if self._listener is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._listener.fileno())
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for ring in list(self.rings.values()):
            with ring.lock:
                if ring.connected:
                    ring.connected = False
                    self._drop_conn(ring._sock)
        for conn in list(self._conns.values()):
            self._drop_conn(conn)
        for ring in self.rings.values():
            with contextlib.suppress(BufferError):  # a slot still in use: that mapping goes with its arrays
                ring._mm.close()
        self.rings.clear()
