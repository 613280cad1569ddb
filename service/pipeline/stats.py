"""Small statistics shared by the pipeline's accounting."""

from __future__ import annotations

import bisect
import itertools

import numpy as np

#: upper bounds (ms) of the per-recognizer latency histograms (docs/operations.md, "Metrics (Prometheus)")
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def latency_percentiles(latencies_ms: list[float]) -> dict[str, float | None]:
    """``latency_ms_p50`` and ``latency_ms_p99`` (None when there are no latencies)."""
    if not latencies_ms:
        return {"latency_ms_p50": None, "latency_ms_p99": None}
    p50, p99 = np.percentile(np.asarray(latencies_ms), [50, 99])
    return {"latency_ms_p50": float(p50), "latency_ms_p99": float(p99)}


class LatencyHistogram:
    """One processor's latencies (ms) since start, in fixed buckets: one bisect and one increment per
    item, on the event loop. ``counts[i]`` holds the items in bucket ``i`` alone (the last one: above
    every bound); ``cumulative()`` gives the Prometheus ``le`` counts, the last one being the total."""

    __slots__ = ("bounds", "counts", "sum_ms")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_MS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum_ms = 0.0

    def observe(self, latency_ms: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, latency_ms)] += 1  # le: bound >= latency
        self.sum_ms += latency_ms

    def cumulative(self) -> tuple[int, ...]:
        return tuple(itertools.accumulate(self.counts))
