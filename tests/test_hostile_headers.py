"""Headers whose own identifiers are invalid (issue 10): the error event must still be publishable,
so the service reports them and goes on instead of dying on its own event's validation."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from scanlens.testing import band_spectra, nested_map, send_band_scan, wait_for_event

BAD_IDENTIFIERS = [
    pytest.param({"seq": -1}, "seq", id="negative-seq"),
    pytest.param({"seq": 2**60}, "seq", id="seq-above-2^53"),
    pytest.param({"scan_id": "a/b"}, "scan_id", id="scan-id-with-slash"),
    pytest.param({"scan_id": "x" * 65}, "scan_id", id="scan-id-too-long"),
    pytest.param({"scan_id": "", "seq": -5}, "scan_id", id="empty-scan-id-and-bad-seq"),
]


@pytest.mark.parametrize(("override", "field"), BAD_IDENTIFIERS)
async def test_a_header_with_invalid_identifiers_is_reported_and_the_service_goes_on(clients, override, field):
    inst, sub, ctl = clients
    spectra = band_spectra([0, 1, 2])
    header = {"v": 1, "kind": "data", "scan_id": "victim", "seq": 0, "row": 0, "col0": 0,
              "shape": list(spectra.shape), "dtype": "float32", **override}
    await inst.sock.send_multipart([msgpack.packb(header), spectra.tobytes()])
    ev = await wait_for_event(sub, "bad_message")
    assert field in ev.reason
    # the event names only what is valid: never the invalid scan id or seq it could not publish
    assert ev.scan_id in (None, "victim") and (ev.seq is None or 0 <= ev.seq <= 2**53)
    truth = np.array([[0, 1, 2], [2, 1, 0]])
    await send_band_scan(inst, "after", truth)
    result = await sub.collect_scan("after", timeout=10)
    assert result.summary.state == "complete"
    assert (await ctl.status())["counters"]["event.bad_message"] == 1


@pytest.mark.parametrize("value", ["17", 1.0, True])
async def test_an_integer_field_takes_integers_only(clients, value):
    """``seq`` as the string "17" (or 1.0, or true) is refused, not coerced (issue 10: strict types)."""
    inst, sub, _ = clients
    spectra = band_spectra([0, 1, 2])
    header = {"v": 1, "kind": "data", "scan_id": "strict", "seq": value, "row": 0, "col0": 0,
              "shape": list(spectra.shape), "dtype": "float32"}
    await inst.sock.send_multipart([msgpack.packb(header), spectra.tobytes()])
    ev = await wait_for_event(sub, "bad_message")
    assert "seq" in ev.reason and ev.seq is None


@pytest.mark.parametrize(("meta", "fragment"), [
    pytest.param({"raw": b"\x00\x01"}, "meta.raw is bytes", id="raw-bytes"),
    pytest.param(nested_map(40), "nests deeper than 8", id="too-deep"),
    pytest.param({"x": float("nan")}, "meta.x is not a finite number", id="nan"),
])
async def test_meta_that_cannot_be_echoed_is_refused_with_the_scan_id(clients, meta, fragment):
    """``meta`` travels back in ``scan_started``: bytes, NaN or absurd nesting are refused at the edge,
    naming the scan (before, they gave an ``internal`` event without a scan id and no answer)."""
    inst, sub, _ = clients
    header = {"v": 1, "kind": "scan_start", "scan_id": "meta-1", "modality": "eels", "shape": [2, 3],
              "axis": {"size": 60, "offset": 10.0, "scale": 1.0, "units": "eV"}, "meta": meta}
    await inst.sock.send_multipart([msgpack.packb(header, use_bin_type=True)])
    ev = await wait_for_event(sub, "scan_rejected")
    assert ev.scan_id == "meta-1" and fragment in ev.reason
    truth = np.array([[0, 1, 2]])
    await send_band_scan(inst, "meta-after", truth)
    assert (await sub.collect_scan("meta-after", timeout=10)).summary.state == "complete"
