"""Small statistics shared by the pipeline's accounting."""

from __future__ import annotations

import numpy as np


def latency_percentiles(latencies_ms: list[float]) -> dict[str, float | None]:
    """``latency_ms_p50`` and ``latency_ms_p99`` (None when there are no latencies)."""
    if not latencies_ms:
        return {"latency_ms_p50": None, "latency_ms_p99": None}
    p50, p99 = np.percentile(np.asarray(latencies_ms), [50, 99])
    return {"latency_ms_p50": float(p50), "latency_ms_p99": float(p99)}
