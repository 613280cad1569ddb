"""Switching loops of the RB-RF Ising simulator: saturation, hysteresis, disorder; live through the
service (analysed by PCA until a trained loops recognizer lands)."""

from __future__ import annotations

import numpy as np

from instrument_sim.loops import DEFAULT_AXIS, LoopsConfig, LoopsSample, LoopsSource, simulate_loops
from instrument_sim.stream import stream_scan

from .harness import live


def test_loops_saturate_close_and_open():
    rng = np.random.default_rng(0)
    n = 64
    loops = simulate_loops(np.full(n, 1.0), np.full(n, 0.3), np.full(n, 0.5), axis=DEFAULT_AXIS, rng=rng)
    assert loops.shape == (n, DEFAULT_AXIS.size, 2)
    up, down = loops[..., 0].mean(axis=0), loops[..., 1].mean(axis=0)
    assert up[0] < -0.9 and down[0] < -0.9 and up[-1] > 0.9 and down[-1] > 0.9  # saturate at both ends
    mid = DEFAULT_AXIS.size // 2
    assert down[mid] - up[mid] > 0.5  # hysteresis: the descending branch stays up longer


def test_random_field_spreads_switching():
    rng = np.random.default_rng(1)
    n = 64

    def width(dh: float) -> float:
        up = simulate_loops(np.full(n, 1.0), np.zeros(n), np.full(n, dh), axis=DEFAULT_AXIS, rng=rng)[..., 0].mean(0)
        h = DEFAULT_AXIS.offset + np.arange(DEFAULT_AXIS.size) * DEFAULT_AXIS.scale
        return float(np.interp(0.8, up, h) - np.interp(-0.8, up, h))  # field span of 10 %..90 % switching

    assert width(3.0) > width(0.2) + 1.0


def test_sample_is_deterministic_and_varies():
    a, b = LoopsSample(LoopsConfig(rows=6, cols=5, seed=4)), LoopsSample(LoopsConfig(rows=6, cols=5, seed=4))
    np.testing.assert_array_equal(a.line(3), b.line(3))
    assert all(np.ptp(a.params[p]) > 0 for p in ("J0", "dJ", "dh"))


async def test_loops_scan_streams_through_the_service(settings):
    source = LoopsSource(LoopsConfig(rows=6, cols=8, seed=2))
    async with live(settings, scan_id="loops-1") as (_, inst, sub):
        await stream_scan(inst, source, "loops-1")
        result = await sub.collect_scan("loops-1")
    assert result.started.components == ["up", "down"] and result.started.recognizers == ["pca"]
    assert result.summary.state == "complete" and result.summary.pixels_recognized == 48
