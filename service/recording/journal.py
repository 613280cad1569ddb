"""The append-only journal of one scan being recorded: ``<record_dir>/<scan_id>.journal``.

While a scan is open the recorder's writer thread appends every message of it to its journal
(``appender.py``: direct I/O from a staging buffer flushed at least every ``FLUSH_INTERVAL_S``, or the
page cache; what has been written a ``kill -9`` of the service cannot take back) and ``fsync``\\ s at most
every ``FSYNC_INTERVAL_S`` (what a power cut can take back). When the scan
closes, the journal becomes an ``.h5`` file (``convert.py``) and is deleted; ``scanlens recover`` turns
leftover journals into ``.h5`` files the same way (``docs/operations.md``, "Recording scans").

Format (little-endian)::

    file    = MAGIC (8 bytes) + recording id (16 bytes, random) + record*
    record  = u32 n + u64 length[n] + frame[0] ... frame[n-1] + u32 crc32(everything before it)
    length  = the frame's size in the file; bit 63 set: the frame is stored Blosc-compressed (a Blosc 1
              frame: BloscLZ, byte shuffle on 4-byte items), and decompresses to the wire frame
    frame 0 = msgpack map: the record's meta
              {"dir": "info", "t", "scan_id", "service", "recognizers"}  the first record: who recorded
              {"dir": "in", "t", "ok"}       an ingest message as received: frames 1.. are its wire frames
                                             (docs/protocol.md §2: header, buffers); ``ok`` = accepted
              {"dir": "out", "t", "topic"}   a publication: frames 1.. are its header and buffers (§4)
    t       = Unix time in seconds (receipt of an ingest message, sending of a publication)

Only the wire buffers (frames 2..) of at least ``COMPRESS_MIN_BYTES`` are compressed, and only when that
saves at least a tenth; the meta and the header are always stored as they are, so a survey reads them
without decompressing anything. Compression is what lets recording keep up with a flat-out instrument:
spectra of counts shrink about 4x for about 0.4 ms of one core per 2 MiB line, with the GIL released
(``docs/performance.md``, "Recording and the dashboard"), and the page cache and the disk then take a
quarter of the bytes. Journals of format 1 (no compressed frames) are read too.

A reader stops at the first record that is incomplete or whose checksum does not match: a record cut
short by a crash, the zero padding of a direct write's last block (a count of 0), or the stale tail of a
file after a power cut, is ignored; everything before it is kept.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from numcodecs import blosc

MAGIC = b"SLJRNL\x00\x02"
#: journals written before frames could be compressed (same records, no length has bit 63 set)
MAGIC_V1 = b"SLJRNL\x00\x01"
SUFFIX = ".journal"
#: at most this long between two fsyncs of a journal that was written to
FSYNC_INTERVAL_S = 0.5
#: frames of one record: the meta frame and at most 16 wire frames (docs/protocol.md §6)
MAX_FRAMES = 17

#: wire buffers at least this large are compressed (smaller ones cost more calls than they save bytes)
COMPRESS_MIN_BYTES = 64 * 1024
_COMPRESSED = 1 << 63
_COUNT = struct.Struct("<I")
_CRC = struct.Struct("<I")


def file_header() -> tuple[bytes, str]:
    """The first bytes of a new journal and its recording id (hex)."""
    rid = uuid.uuid4()
    return MAGIC + rid.bytes, rid.hex


def encode_record(meta: dict[str, Any], frames: Sequence[Any]) -> tuple[list[Any], int]:
    """The buffers of one record (for ``os.writev``: frames stored as they are are not copied) and its size
    in bytes. ``frames[0]`` is the message's header; later frames may be stored compressed."""
    views: list[Any] = [memoryview(msgpack.packb(meta, use_bin_type=True))]
    lengths = [views[0].nbytes]
    for i, f in enumerate(frames):
        v = memoryview(f).cast("B")
        if i >= 1 and v.nbytes >= COMPRESS_MIN_BYTES:
            packed = _compress(v)
            if len(packed) <= 0.9 * v.nbytes:
                views.append(packed)
                lengths.append(len(packed) | _COMPRESSED)
                continue
        views.append(v)
        lengths.append(v.nbytes)
    prefix = _COUNT.pack(len(views)) + struct.pack(f"<{len(views)}Q", *lengths)
    crc = zlib.crc32(prefix)
    for v in views:
        crc = zlib.crc32(v, crc)
    buffers = [prefix, *views, _CRC.pack(crc)]
    return buffers, len(prefix) + sum(memoryview(v).nbytes for v in views) + _CRC.size


def _compress(view: memoryview) -> bytes:
    # numcodecs' Blosc releases the GIL (it uses Blosc's per-call context off the main thread, where the
    # recorder's writer runs); blosc2's Python binding holds it, which would stall the event loop
    # BloscLZ, byte shuffle on 4-byte items, 256 KiB blocks: of the codecs and block sizes tried on 2 MiB
    # lines of counts (docs/performance.md) the fastest, at the same ratio as LZ4 (about 4x)
    return blosc.compress(view, b"blosclz", 1, blosc.SHUFFLE, 256 * 1024, typesize=4)


@dataclass
class Record:
    """One record read back: its meta and its wire frames (``None`` in a survey, which skips payloads)."""

    meta: dict[str, Any]
    frames: list[bytes] | None
    header: bytes | None  # the first wire frame (the msgpack header), when there is one


def read_id(path: Path | str) -> str | None:
    """The recording id of a journal, None if the file is not a journal."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 16)
    if len(head) < len(MAGIC) + 16 or head[:len(MAGIC)] not in (MAGIC, MAGIC_V1):
        return None
    return head[len(MAGIC):].hex()


def read_records(path: Path | str, *, payload: bool = True) -> Iterator[Record]:
    """The complete records of a journal, in order. ``payload=False`` (a survey) reads only each record's
    meta and header and seeks past its buffers, without checking the checksum."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) not in (MAGIC, MAGIC_V1) or len(f.read(16)) != 16:
            return
        while True:
            record = _read_one(f, size, payload)
            if record is None:
                return
            yield record


def _read_one(f: BinaryIO, size: int, payload: bool) -> Record | None:
    start = f.tell()
    raw = f.read(_COUNT.size)
    if len(raw) < _COUNT.size:
        return None
    (n,) = _COUNT.unpack(raw)
    if not 1 <= n <= MAX_FRAMES:
        return None
    raw_lengths = f.read(8 * n)
    if len(raw_lengths) < 8 * n:
        return None
    flagged = struct.unpack(f"<{n}Q", raw_lengths)
    lengths = [length & ~_COMPRESSED for length in flagged]
    end = start + _COUNT.size + 8 * n + sum(lengths) + _CRC.size
    if end > size:  # cut short: the tail of a crash
        return None
    if payload:
        frames = [f.read(length) for length in lengths]
        crc = zlib.crc32(raw + raw_lengths)
        for frame in frames:
            crc = zlib.crc32(frame, crc)
        if _CRC.unpack(f.read(_CRC.size))[0] != crc:
            return None
        try:
            frames = [blosc.decompress(frame) if flag & _COMPRESSED else frame for frame, flag in zip(frames, flagged)]
        except Exception:  # noqa: BLE001 - a checksum that matched by chance over garbage: the end of the journal
            return None
    else:
        frames = [f.read(length) for length in lengths[:2]]
        f.seek(end)
    try:
        meta = msgpack.unpackb(frames[0], raw=False)
    except Exception:  # a stale tail that happens to have plausible lengths
        return None
    if not isinstance(meta, dict):
        return None
    header = frames[1] if len(frames) > 1 else None
    return Record(meta, frames[1:] if payload else None, header)
