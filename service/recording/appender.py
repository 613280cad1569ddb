"""How a journal's bytes reach the disk: direct I/O through an aligned staging buffer, or the page cache.

The recorder's writer thread appends each record of a scan to its journal (``journal.py``). Written
through the page cache, every byte is first copied by the guest's kernel into freshly allocated cache
pages; on the virtual machines this project runs on that copy cost more CPU than compressing the same
line (``docs/performance.md``, "Recording"), and flat out that CPU is taken from the recognizers.
:class:`Appender` therefore opens the journal a second time with ``O_DIRECT`` and copies records into
a reused, page-aligned staging buffer of ``STAGE_BYTES``; full buffers, and every ``FLUSH_INTERVAL_S``
the part that is filled, are written straight from it to the device. The device (the hypervisor's
I/O thread on a VM) reads the buffer: the guest's CPUs only set the transfer up.

What a crash can take: a ``kill -9`` of the service loses what is in the staging buffer, at most
``FLUSH_INTERVAL_S`` of records that were written to it (what has been written by ``pwrite`` is in the
file). A flush writes whole blocks: the last block of the file is padded with zeros until the next
flush overwrites it with the records that follow, so a journal left by a crash ends with fewer than
``BLOCK`` zero bytes, which a reader takes for the end (a record count of 0 is not a record;
``journal.read_records``). ``close`` cuts the padding off.

Where the file system does not take ``O_DIRECT`` (tmpfs, some network and FUSE file systems: ``open``
or the first write fails with EINVAL) the appender writes through the page cache with ``os.writev``,
as journals were written before; ``direct`` says which is in use.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the unit of a direct write: offsets, lengths and the buffer's address are multiples of it
#: (4096 covers devices with 512-byte and with 4096-byte logical blocks)
BLOCK = 4096
#: the staging buffer of one open journal (a multiple of BLOCK)
STAGE_BYTES = 8 * 2**20
#: at most this long between a record reaching the staging buffer and its write into the file
FLUSH_INTERVAL_S = 0.1


def write_all(fd: int, buffers: Sequence[Any]) -> None:
    """Write every buffer, in order, with as few ``writev`` calls as the kernel allows."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        done = os.writev(fd, views[:1024])
        while views and done >= views[0].nbytes:
            done -= views[0].nbytes
            views.pop(0)
        if done:
            views[0] = views[0][done:]


class Appender:
    """Appends to the new file ``path`` (created with mode 0644; FileExistsError if it exists).

    ``append`` takes a record's buffers, ``flush`` makes what was appended part of the file (the writer
    calls it when ``due``), ``close`` flushes, cuts the padding and closes. ``fd`` is a descriptor of the
    file for ``fsync`` (the recorder's fsync thread duplicates it). Not thread-safe: one writer."""

    def __init__(self, path: Path | str, *, direct: bool = True, stage_bytes: int = STAGE_BYTES):
        self.path = Path(path)
        #: bytes appended so far: the file's length once flushed
        self.size = 0
        if direct and (stage_bytes <= 0 or stage_bytes % BLOCK):
            raise ValueError(f"stage_bytes must be a positive multiple of {BLOCK}, got {stage_bytes}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._direct_fd: int | None = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._direct_fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    os.close(self.fd)
                    raise
        if self._direct_fd is not None:
            self._stage = mmap.mmap(-1, stage_bytes)  # anonymous: page-aligned, reused for every record
            self._view = memoryview(self._stage)
        self._fill = 0  # bytes of the staging buffer that hold appended data
        self._base = 0  # the file offset of the staging buffer's first byte (a multiple of BLOCK)
        self._unflushed = False  # bytes were appended since the last flush
        self._flushed_at = time.monotonic()

    @property
    def direct(self) -> bool:
        """Whether the file is written with direct I/O (else through the page cache)."""
        return self._direct_fd is not None

    @property
    def pending(self) -> bool:
        """Whether appended bytes wait in the staging buffer (not yet in the file)."""
        return self._unflushed

    def due(self) -> bool:
        """Whether a flush is due: bytes wait and the last flush is ``FLUSH_INTERVAL_S`` ago."""
        return self.pending and time.monotonic() - self._flushed_at >= FLUSH_INTERVAL_S

    def append(self, buffers: Sequence[Any]) -> None:
        """Append the buffers, in order (OSError as the kernel reports it: the file then holds a prefix)."""
        views = [memoryview(b).cast("B") for b in buffers]
        n = sum(v.nbytes for v in views)
        for i, v in enumerate(views):
            while v.nbytes:
                if self._direct_fd is None:
                    write_all(self.fd, [v, *views[i + 1:]])
                    self.size += n
                    return
                k = min(len(self._stage) - self._fill, v.nbytes)
                self._view[self._fill:self._fill + k] = v[:k]
                self._fill += k
                self._unflushed = True
                v = v[k:]
                if self._fill == len(self._stage) and self._write(self._fill):
                    self._base += self._fill
                    self._fill = 0
        self.size += n

    def flush(self) -> None:
        """Write what waits in the staging buffer into the file: whole blocks, the last one padded with zeros
        (overwritten by the next flush)."""
        self._flushed_at = time.monotonic()
        self._unflushed = False
        if self._direct_fd is None or self._fill == 0:
            return
        end = -(-self._fill // BLOCK) * BLOCK
        self._view[self._fill:end] = bytes(end - self._fill)
        if not self._write(end):
            return
        whole = self._fill // BLOCK * BLOCK
        if whole:
            tail = self._fill - whole
            self._view[:tail] = self._view[whole:self._fill]
            self._base += whole
            self._fill = tail

    def _write(self, end: int) -> bool:
        """``pwrite`` the staging buffer's first ``end`` bytes at its file offset; True. A file system that
        took the ``O_DIRECT`` open but refuses the write (EINVAL) gets the buffer, and all that follows,
        through the page cache instead: False."""
        assert self._direct_fd is not None
        done, refused = 0, False
        with self._view[:end] as view:
            try:
                while done < end:
                    with view[done:] as rest:
                        done += os.pwrite(self._direct_fd, rest, self._base + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or done:
                    raise
                refused = True
        if refused:  # outside the views on the buffer, which the fall-back releases
            self._fall_back()
            return False
        return True

    def _fall_back(self) -> None:
        assert self._direct_fd is not None
        os.close(self._direct_fd)
        self._direct_fd = None
        os.ftruncate(self.fd, self._base)  # the O_APPEND descriptor goes on from the last direct write
        write_all(self.fd, [self._view[:self._fill]])
        self._fill = 0
        self._release()

    def _release(self) -> None:
        if self._direct_fd is None and hasattr(self, "_stage"):
            self._view.release()
            self._stage.close()
            del self._stage

    def close(self, *, sync: bool = False) -> None:
        """Flush, cut the last block's padding off, ``fsync`` if ``sync``, close. The file then holds exactly
        what was appended."""
        try:
            if self._direct_fd is not None:
                self.flush()
                os.ftruncate(self.fd, self.size)
            if sync:
                os.fsync(self.fd)
        finally:
            if self._direct_fd is not None:
                os.close(self._direct_fd)
                self._direct_fd = None
            self._release()
            os.close(self.fd)
