"""Pure protocol: every message kind survives encode/decode; bad bytes get clear errors; schema is current."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from scanlens.protocol.codec import Limits, ProtocolError, all_finite, arrays_from, array_spec, decode, encode
from scanlens.protocol.messages import (Axis, Data, Event, Maps, RecognizerSummary, Rejection, Reply, Request,
                                       ScanEnd, ScanStart, ScanStarted, ScanSummary, Status)
from scanlens.protocol.schema import protocol_schema_text

from .schema_check import SCHEMA_PATH, check_header_bytes

AXIS = Axis(size=512, offset=0.0, scale=0.25, units="eV")
LINE = np.arange(4 * 512, dtype=np.float32).reshape(4, 512)
CLS = np.array([0, 1, 2, 1], np.uint8)

EXAMPLES = [
    (ScanStart(scan_id="s1", modality="eels", shape=(64, 128), axis=AXIS, recognizers=["eels-mlp"],
               meta={"operator": "a", "dwell_us": 100}), []),
    (Data(scan_id="s1", seq=3, row=3, col0=0, shape=(4, 512), dtype="float32", t_ns=123), [LINE]),
    (ScanEnd(scan_id="s1", n_messages=64), []),
    (ScanStarted(scan_id="s1", modality="eels", shape=(64, 128), axis=AXIS, recognizers=["m"],
                 outputs={"m": [array_spec("class", CLS[:1].reshape(()))]}), []),
    (Maps(scan_id="s1", recognizer="m", seq=3, row=3, col0=0, n_pixels=4, latency_ms=1.5,
          arrays=[array_spec("class", CLS, labels=["a", "b", "c"])]), [CLS]),
    (Event(scan_id="s1", code="lost", reason="2 lost", seqs=[4, 5], level="warning"), []),
    (Event(code="bad_message", reason="garbage"), []),
    (ScanSummary(scan_id="s1", state="incomplete", pixels_expected=10, pixels_received=8, pixels_recognized=8,
                 messages_sent=5, messages_received=4, lost=[2], rejected=[Rejection(seq=3, reason="NaN")],
                 latency_ms_p50=1.0, latency_ms_p99=2.0, duration_s=0.5,
                 recognizers={"m": RecognizerSummary(pixels_recognized=8, class_fractions={"a": 1.0})}), []),
    (Status(version="0", uptime_s=1.0, open_scans=["s1"], recognizers=["m"], counters={"x": 1}, queued_pixels=0), []),
    (Request(id=7, op="snapshot", scan_id="s1"), []),
    (Reply(id=7, op="snapshot", ok=True, result={"open": True}, arrays=[array_spec("m/class", CLS)]), [CLS]),
]


@pytest.mark.parametrize("header,arrays", EXAMPLES, ids=lambda x: getattr(x, "kind", ""))
def test_every_kind_round_trips(header, arrays):
    frames = encode(header, arrays)
    assert len(frames) == 1 + len(arrays)
    check_header_bytes(bytes(frames[0]))  # the committed JSON schema accepts what the code emits
    decoded, buffers = decode([bytes(f) for f in frames])
    assert decoded == header
    specs = getattr(decoded, "arrays", None)
    if isinstance(decoded, Data):
        from scanlens.protocol.codec import buffer_to_array
        np.testing.assert_array_equal(buffer_to_array(buffers[0], decoded.dtype, decoded.shape), arrays[0])
    elif specs:
        got = arrays_from(specs, buffers)
        for spec, a in zip(specs, arrays):
            np.testing.assert_array_equal(got[spec.name], a)


def test_arrays_are_not_copied_on_decode():
    big = np.ones((256, 512), np.float32)
    frames = encode(Data(scan_id="s", seq=0, row=0, shape=big.shape, dtype="float32"), [big])
    assert np.shares_memory(np.frombuffer(frames[1], np.float32), big)
    _, buffers = decode(frames)
    assert np.shares_memory(np.frombuffer(buffers[0], np.float32), big)


@pytest.mark.parametrize("raw,fragment", [
    (b"\xc1\xff garbage", "not valid msgpack"),
    (msgpack.packb([1, 2, 3]), "expected a map"),
    (msgpack.packb({"v": 2, "kind": "data"}), "unsupported protocol version 2"),
    (msgpack.packb({"v": 1, "kind": "teleport"}), "kind"),
    (msgpack.packb({"v": 1, "kind": "data", "scan_id": "s", "seq": 0, "row": 0, "shape": [1, 4],
                    "dtype": "float16"}), "dtype"),
    (msgpack.packb({"v": 1, "kind": "scan_end", "scan_id": "s", "n_messages": 1, "extra": 1}), "extra"),
    (msgpack.packb({"v": 1, "kind": "scan_end", "scan_id": "bad id!", "n_messages": 1}), "scan_id"),
])
def test_bad_headers_get_clear_errors(raw, fragment):
    with pytest.raises(ProtocolError) as info:
        decode([raw])
    assert info.value.code == "bad_message"
    assert fragment in info.value.reason


def test_limits_are_enforced():
    limits = Limits(max_header_bytes=64, max_frames=3, max_payload_bytes=1000)
    with pytest.raises(ProtocolError, match="header is") as info:
        decode([msgpack.packb({"v": 1, "kind": "x", "pad": "y" * 100})], limits)
    assert info.value.code == "oversized"
    end = encode(ScanEnd(scan_id="s", n_messages=1))[0]
    with pytest.raises(ProtocolError, match="4 frames"):
        decode([end, b"", b"", b""], limits)
    data = encode(Data(scan_id="s", seq=5, row=0, shape=(1, 2000), dtype="uint8"), [np.zeros((1, 2000), np.uint8)])
    with pytest.raises(ProtocolError, match="payload is 2000 bytes") as info:
        decode(data, limits)
    assert (info.value.code, info.value.scan_id, info.value.seq) == ("oversized", "s", 5)


def test_committed_schema_matches_code():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == protocol_schema_text(), \
        "docs/protocol.schema.json drifted from service/protocol; run `scanlens schema`"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(256, 2048), (33, 1000, 2), (5,), (1024, 1025)])
def test_all_finite_finds_every_non_finite_value(dtype, shape):
    """The fast check (row sums by BLAS, codec.all_finite) against numpy's exact one, with a NaN, +Inf or
    -Inf at the first, last and a middle position (the middle one inside the summed rows, the last one in
    the tail that is checked apart when the size is not a multiple of the row), and both infinities at once."""
    x = np.random.default_rng(1).normal(100.0, 30.0, size=shape).astype(dtype)
    assert all_finite(x)
    flat = x.reshape(-1)
    for bad in ([np.nan], [np.inf], [-np.inf], [np.inf, -np.inf]):
        for where in (0, flat.size // 2, flat.size - 1):
            y = flat.copy()
            y[where: where + len(bad)] = bad[: flat.size - where]
            assert not all_finite(y.reshape(shape)), (bad, where)
    assert all_finite(np.ascontiguousarray(x.T)) and all_finite(x.T)  # not contiguous: the exact check


def test_all_finite_is_not_fooled_by_sums_that_overflow():
    """Finite values whose row sum overflows to Inf are still finite (settled by the exact check)."""
    x = np.full((4, 2048), np.finfo(np.float32).max, np.float32)
    assert all_finite(x)
    x[2, 7] = np.nan
    assert not all_finite(x)
