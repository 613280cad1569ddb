"""The simulated instrument's streaming: absolute-deadline pacing (injected clock) and a full scan."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scanlens.sim.stream import MonotonicClock, stream_scan
from scanlens.protocol.messages import Axis

from scanlens.testing import band_axis, band_spectra


class FakeClock:
    """Virtual time: sleeping jumps to the deadline; every send 'costs' ``work`` seconds."""

    def __init__(self, work: float = 0.0):
        self.t = 100.0
        self.work = work
        self.deadlines: list[float] = []

    def now(self) -> float:
        t = self.t
        self.t += self.work
        return t

    async def sleep_until(self, deadline: float) -> None:
        self.deadlines.append(deadline)
        self.t = max(self.t, deadline)


@dataclass
class BandSource:
    classes: np.ndarray
    modality: str = "eels"
    axis: Axis = field(default_factory=band_axis)
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.classes.shape

    def line(self, row: int) -> np.ndarray:
        return band_spectra(self.classes[row])


async def test_pacing_uses_absolute_deadlines(clients):
    inst, sub, _ = clients
    clock = FakeClock(work=0.003)  # slow "sends" must not accumulate drift
    source = BandSource(np.zeros((5, 10), int))
    report = await stream_scan(inst, source, "paced", dwell_s=1e-3, clock=clock)
    assert np.allclose(clock.deadlines, [100.0 + (k + 1) * 10 * 1e-3 for k in range(5)])
    assert report.messages == 5 and report.pixels == 50
    assert (await sub.collect_scan("paced")).summary.state == "complete"


async def test_streamed_scan_is_recognized(clients):
    inst, sub, _ = clients
    classes = np.random.default_rng(3).integers(0, 3, size=(16, 24))
    progress = []
    await stream_scan(inst, BandSource(classes), "streamed", progress=lambda d, t: progress.append((d, t)))
    result = await sub.collect_scan("streamed")
    assert progress[-1] == (16, 16)
    np.testing.assert_array_equal(result.maps["band"]["class"], classes)
    assert result.started.meta["dwell_s"] == 0.0


async def test_real_clock_sleeps_until_deadline():
    clock = MonotonicClock()
    t0 = clock.now()
    await clock.sleep_until(t0 + 0.02)
    assert clock.now() >= t0 + 0.02


async def test_lines_written_in_place_through_a_ring_are_recognized_alike(clients):
    """in_place=True writes each line into its ring slot (ScanStream.line_buffer) before its deadline: the
    same maps and accounting as lines handed to send_line, and every line went through the ring."""
    inst, sub, _ = clients
    classes = np.random.default_rng(4).integers(0, 3, size=(6, 160))  # slots over RING_MIN_SLOT_BYTES
    clock = FakeClock()
    report = await stream_scan(inst, BandSource(classes), "in-place", dwell_s=1e-4, clock=clock, in_place=True)
    assert inst.ring is not None and report.messages == 6
    assert np.allclose(clock.deadlines, [100.0 + (k + 1) * 160 * 1e-4 for k in range(6)])
    result = await sub.collect_scan("in-place")
    assert (result.summary.state, result.summary.pixels_recognized, result.summary.n_lost) == ("complete", classes.size, 0)
    np.testing.assert_array_equal(result.maps["band"]["class"], classes)
