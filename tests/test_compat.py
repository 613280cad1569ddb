"""Wire compatibility within v1: clients read what a newer service publishes (tolerant decoding), the
service stays strict about what it receives.

Additions are optional: unknown header keys (at any depth) are ignored, unknown event codes, levels
and summary states are kept, messages of unknown kinds are skipped by the Subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
import zmq.asyncio

from scanlens.client import Subscriber
from scanlens.protocol import topics
from scanlens.protocol.codec import (ProtocolError, UnknownKindError, array_spec, decode, validate_header,
                                     validate_tolerant)
from scanlens.protocol.messages import (Event, Maps, RecognizerSummary, Rejection, ScanStarted, ScanSummary, Status,
                                        line_slice)
from scanlens.testing import band_axis

CLS = np.array([2, 0, 1], np.uint8)


def summary(**update: Any) -> dict[str, Any]:
    """A scan_summary header as a newer service might publish it (``update`` on top of a valid one)."""
    header = ScanSummary(
        scan_id="s1", state="complete", pixels_expected=6, pixels_received=6, pixels_recognized=6,
        messages_sent=2, messages_received=2, lost=[], rejected=[Rejection(seq=9, reason="NaN")], duration_s=0.1,
        recognizers={"m": RecognizerSummary(pixels_recognized=6, class_fractions={"a": 1.0})},
    ).model_dump(mode="json", exclude_none=True)
    header.update(update)
    return header


def maps(**update: Any) -> dict[str, Any]:
    header = Maps(scan_id="s1", recognizer="m", seq=1, row=1, col0=0, n_pixels=3, latency_ms=1.5,
                  arrays=[array_spec("class", CLS)]).model_dump(mode="json", exclude_none=True)
    header.update(update)
    return header


def started(**update: Any) -> dict[str, Any]:
    header = ScanStarted(scan_id="s1", modality="eels", shape=(2, 3), axis=band_axis(), recognizers=["m"],
                         outputs={"m": [array_spec("class", CLS[:1].reshape(()))]}).model_dump(
        mode="json", exclude_none=True)
    header.update(update)
    return header


def event(**update: Any) -> dict[str, Any]:
    header = Event(scan_id="s1", code="lost", reason="1 lost", seqs=[3], level="warning").model_dump(
        mode="json", exclude_none=True)
    header.update(update)
    return header


def nested_extra() -> dict[str, Any]:
    """A summary with new keys inside its recognizer summary and inside a rejection."""
    header = summary()
    header["recognizers"]["m"]["energy_drift_ev"] = 0.01
    header["rejected"][0]["detail"] = {"pixel": 3}
    return header


# --------------------------------------------------------------------------- decode: tolerant vs strict

ADDITIONS = {
    "top-level key": maps(trace_id="abc"),
    "nested key": nested_extra(),
    "key in a listed model": started(outputs={"m": [{**array_spec("class", CLS[:1].reshape(())).model_dump(
        mode="json", exclude_none=True), "colormap": "viridis"}]}),
    "unknown event code": event(code="drift_corrected"),
    "unknown event level": event(level="debug"),
    "unknown summary state": summary(state="aborted_by_operator"),
}


@pytest.mark.parametrize("header", ADDITIONS.values(), ids=ADDITIONS.keys())
def test_additions_decode_tolerantly_and_are_refused_strictly(header):
    raw = msgpack.packb(header)
    decoded, _ = decode([raw], tolerant=True)
    assert decoded.kind == header["kind"]
    with pytest.raises(ProtocolError) as info:
        decode([raw])
    assert info.value.code == "bad_message"


def test_unknown_keys_are_dropped_and_known_fields_intact():
    h, _ = decode([msgpack.packb(maps(trace_id="abc", hops=[1, 2]))], tolerant=True)
    assert h == Maps.model_validate(maps())
    s, _ = decode([msgpack.packb(nested_extra())], tolerant=True)
    assert s == ScanSummary.model_validate(summary())
    assert s.recognizers["m"].class_fractions == {"a": 1.0} and s.rejected[0].reason == "NaN"
    st, _ = decode([msgpack.packb(ADDITIONS["key in a listed model"])], tolerant=True)
    assert st == ScanStarted.model_validate(started())


def test_unknown_vocabulary_values_are_kept():
    ev, _ = decode([msgpack.packb(event(code="drift_corrected", level="debug", extra=1))], tolerant=True)
    assert isinstance(ev, Event)
    assert (ev.code, ev.level, ev.scan_id, ev.reason, ev.seqs) == ("drift_corrected", "debug", "s1", "1 lost", [3])
    s, _ = decode([msgpack.packb(summary(state="aborted_by_operator"))], tolerant=True)
    assert s.state == "aborted_by_operator" and s.pixels_recognized == 6 and s.recognizers["m"].pixels_recognized == 6
    # and a known value is of course still itself
    assert decode([msgpack.packb(summary())], tolerant=True)[0].state == "complete"


def test_unknown_kind_is_a_skippable_bad_message():
    raw = msgpack.packb({"v": 1, "kind": "calibration", "scan_id": "s1", "gain": 2.0})
    with pytest.raises(UnknownKindError) as info:
        decode([raw], tolerant=True)
    assert info.value.code == "bad_message" and "calibration" in info.value.reason and info.value.scan_id == "s1"
    with pytest.raises(ProtocolError) as strict:
        decode([raw])
    assert strict.value.code == "bad_message" and not isinstance(strict.value, UnknownKindError)


@pytest.mark.parametrize("header,fragment", [
    ({**maps(), "v": 2}, "unsupported protocol version 2"),  # additions stay within v1
    (maps(n_pixels=0), "n_pixels"),  # a known field is validated as strictly as ever
    (maps(arrays=[{"name": "class", "dtype": "float16", "shape": [3]}]), "dtype"),  # dtype stays closed
    (event(code=7), "code"),  # an open vocabulary is still a string
    ({k: v for k, v in summary().items() if k != "state"}, "state"),  # and still required
    ({"v": 1, "scan_id": "s1"}, "discriminator 'kind'"),  # a kind is required ...
    ({"v": 1, "kind": ["maps"]}, "does not match any of the expected tags"),  # ... and is a name
])
def test_tolerance_has_limits(header, fragment):
    with pytest.raises(ProtocolError) as info:
        decode([msgpack.packb(header)], tolerant=True)
    assert info.value.code == "bad_message" and not isinstance(info.value, UnknownKindError)
    assert fragment in info.value.reason


def test_strict_is_the_default_everywhere():
    raw = msgpack.packb(maps(trace_id="abc"))
    with pytest.raises(ProtocolError, match="trace_id"):
        decode([raw])
    with pytest.raises(ProtocolError, match="trace_id"):
        validate_header(msgpack.unpackb(raw))


def test_validate_tolerant_reads_a_summary_from_a_snapshot_reply():
    s = validate_tolerant(ScanSummary, nested_extra() | {"state": "paused"})
    assert s.state == "paused" and s.recognizers["m"] == RecognizerSummary(pixels_recognized=6,
                                                                          class_fractions={"a": 1.0})


def test_line_slice_places_a_line_in_a_map():
    m = np.zeros((3, 5), int)
    m[line_slice(1, 2, 3)] = [7, 8, 9]
    np.testing.assert_array_equal(m, [[0] * 5, [0, 0, 7, 8, 9], [0] * 5])


# --------------------------------------------------------------------------- a Subscriber on a real PUB socket


@contextlib.asynccontextmanager
async def newer_service() -> AsyncIterator[tuple[zmq.asyncio.Socket, str]]:
    """A bare PUB socket standing in for a newer service: (socket, endpoint)."""
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        pub.bind("tcp://127.0.0.1:*")
        yield pub, pub.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        pub.close(linger=0)
        ctx.term()


async def ready(pub: zmq.asyncio.Socket, sub: Subscriber) -> None:
    """Heartbeats (with a key this client does not know) until the subscription is live."""
    status = Status(version="9", uptime_s=1.0, open_scans=[], recognizers=["m"], counters={},
                    queued_pixels=0).model_dump(mode="json") | {"load": 0.5}

    async def beat() -> None:
        while True:
            await pub.send_multipart([topics.STATUS.encode(), msgpack.packb(status)])
            await asyncio.sleep(0.01)

    beating = asyncio.create_task(beat())
    try:
        await sub.wait_ready(timeout=10)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def publish(pub: zmq.asyncio.Socket, what: str, header: dict[str, Any], *arrays: np.ndarray) -> None:
    await pub.send_multipart([topics.scan_topic("s1", what).encode(), msgpack.packb(header),
                              *(a.tobytes() for a in arrays)])


async def test_subscriber_reads_a_newer_service():
    async with newer_service() as (pub, endpoint), Subscriber(endpoint, scan_id="s1") as sub:
        await ready(pub, sub)
        await publish(pub, "calibration", {"v": 1, "kind": "calibration", "scan_id": "s1", "gain": 2.0})
        await publish(pub, "event", event(code="drift_corrected", hint="new"))
        await publish(pub, "maps", maps(trace_id="abc"), CLS)
        await publish(pub, "summary", nested_extra() | {"state": "aborted_by_operator"})
        got = [await sub.recv(5) for _ in range(3)]
        assert [m.header.kind for m in got] == ["event", "maps", "scan_summary"]
        assert got[0].header.code == "drift_corrected" and got[0].header.reason == "1 lost"
        assert got[1].header == Maps.model_validate(maps()) and got[1].topic == "scan/s1/maps"
        np.testing.assert_array_equal(got[1].arrays["class"], CLS)
        assert got[2].header.state == "aborted_by_operator" and got[2].header.recognizers["m"].pixels_recognized == 6
        assert sub.skipped_messages == 1


async def test_collect_scan_from_a_newer_service():
    async with newer_service() as (pub, endpoint), Subscriber(endpoint, scan_id="s1") as sub:
        await ready(pub, sub)
        await publish(pub, "started", started(features=["x"]))
        await publish(pub, "maps", maps(row=0, trace_id="a"), CLS)
        await publish(pub, "preview", {"v": 1, "kind": "preview", "scan_id": "s1"})
        await publish(pub, "maps", maps(row=1, seq=2, trace_id="b"), CLS[::-1].copy())
        await publish(pub, "event", event(code="drift_corrected"))
        await publish(pub, "summary", nested_extra() | {"state": "aborted_by_operator"})
        result = await sub.collect_scan("s1", timeout=5)
    np.testing.assert_array_equal(result.maps["m"]["class"], [CLS, CLS[::-1]])
    assert result.filled["m"].all() and result.latencies_ms == [1.5, 1.5]
    assert [e.code for e in result.events] == ["drift_corrected"]
    assert result.summary.state == "aborted_by_operator" and sub.skipped_messages == 1
