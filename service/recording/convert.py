"""Journals -> ``.h5`` recordings: when a scan closes (the recorder's writer thread) and for leftover
journals (``scanlens recover DIR``, and ``scanlens serve`` at start for its ``record_dir``).

A conversion writes ``.<name>.h5.tmp`` beside the journal, fsyncs it, renames it to ``<scan_id>.h5``
(``<scan_id>-1.h5``, ``-2`` ... when that name is taken: a recording is never overwritten) and only
then deletes the journal. A crash in between leaves the journal and perhaps the finished file: its
recording id (``/scanlens`` attribute ``recording_id``, the journal's header) tells that it was
converted, and recovery then just deletes the journal. One process at a time works in a record
directory (``DirectoryLock``). ``docs/operations.md``, "Recording scans".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import msgpack

from ..protocol.codec import ProtocolError, validate_header
from ..protocol.messages import ScanStart
from .journal import SUFFIX, read_id, read_records
from .layout import Builder, Survey

try:  # POSIX; elsewhere the directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".scanlens.lock"
#: a recording's file name is ``<scan_id><RECORDING_SUFFIX>``
RECORDING_SUFFIX = ".h5"
TMP_SUFFIX = RECORDING_SUFFIX + ".tmp"


class RecordingError(RuntimeError):
    """A record directory that cannot be used (not writable, in use by another process)."""


class EmptyJournal(ValueError):
    """A journal without a complete ``scan_start`` record: nothing to convert."""


@dataclass(frozen=True)
class Converted:
    """One journal turned into a recording (``path`` None: it already was; the journal was removed)."""

    journal: Path
    path: Path | None
    state: str
    messages: int = 0


def survey(journal: Path) -> Survey:
    """A first pass over a journal, headers only: the scan_start, the dtypes and the frames received."""
    s = Survey(read_id(journal) or "")
    for rec in read_records(journal, payload=False):
        meta = rec.meta
        if meta.get("dir") == "info":
            s.info = meta
            continue
        if meta.get("dir") != "in" or rec.header is None:
            continue
        try:
            header = validate_header(msgpack.unpackb(rec.header, raw=False))
        except (ProtocolError, ValueError):
            continue
        if isinstance(header, ScanStart):
            s.start = s.start or header
        elif header.kind in ("data", "frame") and meta.get("ok", True):
            s.dtypes.add(header.dtype)
            if header.kind == "frame":
                s.first_frame = header.frame if s.first_frame is None else min(s.first_frame, header.frame)
                s.last_frame = header.frame if s.last_frame is None else max(s.last_frame, header.frame)
    return s


def free_path(directory: Path, stem: str, suffix: str) -> Path:
    """``<stem><suffix>``, or ``<stem>-1<suffix>``, ``-2`` ...: the first name not taken."""
    path, n = directory / f"{stem}{suffix}", 0
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}{suffix}"
    return path


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        if not directory:
            raise
    finally:
        os.close(fd)


def converted_as(directory: Path, scan_id: str, recording_id: str) -> Path | None:
    """The recording in ``directory`` made from the journal with this recording id, if there is one."""
    pattern = re.compile(re.escape(scan_id) + r"(-\d+)?" + re.escape(RECORDING_SUFFIX))
    for name in sorted(os.listdir(directory)):
        if not pattern.fullmatch(name):
            continue
        with contextlib.suppress(OSError):
            with h5py.File(directory / name, "r") as f:
                if f.get("scanlens") is not None and f["scanlens"].attrs.get("recording_id") == recording_id:
                    return directory / name
    return None


def convert_journal(journal: Path | str, *, summary: dict[str, Any] | None = None,
                    stopped: str | None = None) -> Converted:
    """The journal as ``<scan_id>.h5`` beside it (a free name), then the journal deleted. ``summary`` and
    ``stopped``: see ``Builder.finish``. EmptyJournal when there is nothing to convert; OSError (the
    journal kept, no partial file left) when the file cannot be written."""
    journal = Path(journal)
    found = survey(journal)
    if found.start is None:
        raise EmptyJournal(f"{journal} holds no complete scan_start")
    directory = journal.parent
    final = free_path(directory, found.start.scan_id, RECORDING_SUFFIX)
    tmp = directory / f".{final.name[:-len(RECORDING_SUFFIX)]}{TMP_SUFFIX}"
    messages = 0
    try:
        with h5py.File(tmp, "w") as f:
            builder = Builder(f, found)
            for record in read_records(journal):
                builder.add(record)
                messages += 1
            state = builder.finish(summary=summary, stopped=stopped)
        _fsync_path(tmp)
        if final.exists():  # taken meanwhile (by hand): never overwrite
            final = free_path(directory, found.start.scan_id, RECORDING_SUFFIX)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_path(directory, directory=True)
    journal.unlink()
    _fsync_path(directory, directory=True)
    return Converted(journal, final, state, messages)


def recover(directory: Path | str) -> Iterator[Converted | tuple[Path, Exception]]:
    """Every journal left in ``directory`` as a recording (state ``recovered`` unless its summary made it
    into the journal), oldest first; a journal that fails is reported as (journal, error) and kept.
    Leftover temporary files of an interrupted conversion are removed first."""
    directory = Path(directory)
    for tmp in directory.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    journals = sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))
    for journal in journals:
        try:
            rid = read_id(journal)
            found = survey(journal) if rid else None
            if found is not None and found.start is not None and (
                    done := converted_as(directory, found.start.scan_id, rid)) is not None:
                journal.unlink()  # converted before a crash took the service before it deleted the journal
                yield Converted(journal, done, "already converted")
                continue
            yield convert_journal(journal)
        except EmptyJournal:
            journal.unlink()  # the service died before the scan_start record was complete: nothing in it
            yield Converted(journal, None, "empty")
        except Exception as exc:  # noqa: BLE001 - one bad journal must not stop the others
            yield journal, exc


def recordings_bytes(directory: Path) -> int:
    """What the recordings and journals in ``directory`` occupy (the budget counts them)."""
    total = 0
    for pattern in (f"*{RECORDING_SUFFIX}", f"*{SUFFIX}"):
        for path in directory.glob(pattern):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total


class DirectoryLock:
    """An exclusive lock on a record directory (``.scanlens.lock``, ``flock``: released when the process
    ends, ``kill -9`` included). RecordingError when another process holds it."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise RecordingError(f"record directory {directory} is in use by another scanlens process "
                                 f"(it holds {self.path})") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def lock_directory(directory: Path | str) -> Iterator[Path]:
    """An existing record directory, locked for the block (``scanlens recover``); RecordingError when it
    is missing or another process (a running ``scanlens serve``) holds it."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise RecordingError(f"record directory {directory} does not exist")
    try:
        lock = DirectoryLock(directory)
    except OSError as exc:
        raise RecordingError(f"record directory {directory} is not writable: {exc.strerror or exc}") from None
    try:
        yield directory
    finally:
        lock.release()


def open_directory(directory: Path | str) -> tuple[Path, DirectoryLock]:
    """The record directory, created if missing, checked writable and locked; RecordingError (one line)
    when it cannot be used."""
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        lock = DirectoryLock(directory)
    except OSError as exc:
        raise RecordingError(f"record directory {directory} is not writable: {exc.strerror or exc}") from None
    return directory, lock
