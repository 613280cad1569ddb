"""The journal's appender (``service/recording/appender.py``): direct writes from an aligned staging buffer on
this repo's file system (ext4 under pytest's tmp_path), real files read back with the journal's own reader.

The fallback to the page cache needs a file system that refuses ``O_DIRECT``; none is mounted here (tmpfs
takes it since Linux 6.6), so those two tests make ``os.open`` / ``os.pwrite`` refuse it with EINVAL, as such a
file system does, and say so."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from scanlens.recording.appender import BLOCK, Appender
from scanlens.recording.journal import MAGIC, encode_record, file_header, read_records


def _records(n: int, size: int = 3000) -> list[list]:
    rng = np.random.default_rng(n)
    return [encode_record({"dir": "out", "i": i}, [b"header", rng.random(size).astype("<f4")])[0] for i in range(n)]


def _read(path) -> list[int]:
    return [r.meta["i"] for r in read_records(path)]


def test_direct_writes_hold_every_record_once_flushed_and_exactly_them_once_closed(tmp_path):
    path = tmp_path / "a.journal"
    f = Appender(path, stage_bytes=4 * BLOCK)  # a small stage: records cross it and fill it many times
    assert f.direct
    f.append([file_header()[0]])
    records = _records(40)
    for k, rec in enumerate(records):
        f.append(rec)
        if k == 20:
            f.flush()
            assert not f.pending
            # what a kill -9 now leaves: every record so far, then the zero padding of the last block
            assert _read(path) == list(range(21))
            assert os.path.getsize(path) % BLOCK == 0 and os.path.getsize(path) >= f.size
    assert f.pending
    f.close()
    assert os.path.getsize(path) == f.size  # the padding is cut off
    assert _read(path) == list(range(40))
    with open(path, "rb") as fh:
        data = fh.read()
    assert data == MAGIC + data[8:24] + b"".join(
        b"".join(bytes(memoryview(b).cast("B")) for b in rec) for rec in records)


def test_a_flush_rewrites_the_padded_block_with_the_records_that_follow(tmp_path):
    path = tmp_path / "b.journal"
    f = Appender(path)
    f.append([file_header()[0]])
    for k, rec in enumerate(_records(12, size=50)):  # small records: several flushes inside one block
        f.append(rec)
        f.flush()
        assert _read(path) == list(range(k + 1))
    f.close(sync=True)
    assert _read(path) == list(range(12)) and os.path.getsize(path) == f.size


def test_a_file_system_that_refuses_o_direct_at_open_gets_buffered_writes(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):  # mocked: such a file system is not mounted on this machine
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    path = tmp_path / "c.journal"
    f = Appender(path)
    assert not f.direct
    f.append([file_header()[0]])
    for rec in _records(5):
        f.append(rec)
    assert not f.pending and _read(path) == list(range(5))  # in the file at once, nothing staged
    f.close()
    assert _read(path) == list(range(5)) and os.path.getsize(path) == f.size


def test_a_direct_write_refused_later_falls_back_and_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "d.journal"
    f = Appender(path, stage_bytes=2 * BLOCK)
    f.append([file_header()[0]])
    records = _records(30, size=700)
    for rec in records[:10]:
        f.append(rec)
    f.flush()
    real_pwrite = os.pwrite

    def refused(fd, data, offset):  # mocked: a file system whose direct writes start failing with EINVAL
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "pwrite", refused)
    for rec in records[10:]:
        f.append(rec)
    assert not f.direct
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    f.close()
    assert _read(path) == list(range(30)) and os.path.getsize(path) == f.size


def test_other_write_errors_are_raised(tmp_path, monkeypatch):
    f = Appender(tmp_path / "e.journal", stage_bytes=BLOCK)

    def full(fd, data, offset):  # mocked: a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match="No space"):
        f.append([bytes(2 * BLOCK)])
    with pytest.raises(FileExistsError):
        Appender(tmp_path / "e.journal")
    with pytest.raises(ValueError, match="multiple of 4096"):
        Appender(tmp_path / "f.journal", stage_bytes=1000)
