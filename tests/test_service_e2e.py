"""End to end through real sockets on loopback with a real ONNX model: every pixel accounted for."""

from __future__ import annotations

import numpy as np

from scanlens.testing import send_band_scan


async def test_scan_round_trip_every_pixel_accounted(clients):
    inst, sub, ctl = clients
    rows, cols = 12, 20
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, size=(rows, cols))
    await send_band_scan(inst, "e2e", truth)
    result = await sub.collect_scan("e2e", timeout=20)
    s = result.summary
    assert s.state == "complete"
    assert s.pixels_expected == s.pixels_received == s.pixels_recognized == rows * cols
    assert s.messages_sent == s.messages_received == rows and s.lost == [] and s.rejected == []
    assert result.filled["band"].all()
    np.testing.assert_array_equal(result.maps["band"]["class"], truth)
    np.testing.assert_allclose(result.maps["band"]["abundance"], np.eye(3)[truth], atol=1e-4)
    assert (result.maps["band"]["confidence"] > 0.99).all()
    assert s.recognizers["band"].class_fractions == {
        label: float(np.mean(truth == k)) for k, label in enumerate(["low", "mid", "high"])}
    assert s.latency_ms_p50 is not None and s.latency_ms_p99 >= s.latency_ms_p50
