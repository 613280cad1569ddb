"""The Prometheus endpoint (``metrics`` setting): the status counters, queues, scans, memory and
per-recognizer latency histograms over HTTP, in the standard exposition format.

prometheus_client answers scrapes in its own threads, so they never touch the event loop's state: the
server's status loop replaces ``MetricsEndpoint.snapshot`` (an immutable ``Snapshot``) by assignment
every ``status_interval_s``, and the collector only reads that. Figures are therefore at most one
status interval old. Each server has its own ``CollectorRegistry`` (several can run in one process).
The metric names and how to reach the endpoint safely: docs/operations.md, "Metrics (Prometheus)".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..pipeline import ScanManager
from ..protocol.messages import Status

log = logging.getLogger(__name__)

#: status counters that are levels, not totals: exported as gauges of their own
GAUGE_COUNTERS = ("queued_bytes", "queued_bytes_peak")


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports, copied on the event loop; nothing in it is shared or mutable."""

    counters: tuple[tuple[str, int], ...]
    queued_pixels: int
    open_scans: int
    memory_bytes: int
    memory_budget_bytes: int
    closed_by_state: tuple[tuple[str, int], ...]
    #: per processor: (bucket bounds in ms, cumulative counts with +Inf last, sum in ms)
    latency: tuple[tuple[str, tuple[float, ...], tuple[int, ...], float], ...]

    @classmethod
    def take(cls, status: Status, scans: ScanManager) -> Snapshot:
        """On the event loop: the figures of ``status`` (``ScanManager.status()``) and the histograms."""
        return cls(counters=tuple(status.counters.items()), queued_pixels=status.queued_pixels,
                   open_scans=len(status.open_scans), memory_bytes=status.memory_bytes or 0,
                   memory_budget_bytes=status.memory_budget_bytes or 0,
                   closed_by_state=tuple(scans.closed_by_state.items()),
                   latency=tuple((name, h.bounds, h.cumulative(), h.sum_ms) for name, h in scans.latency.items()))


class _SnapshotCollector(Collector):
    """Metric families from the endpoint's latest snapshot (called in prometheus_client's threads)."""

    def __init__(self, endpoint: MetricsEndpoint):
        self.endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        snap = self.endpoint.snapshot  # one read of a reference the event loop replaces whole
        if snap is None:
            return
        counters = CounterMetricFamily("scanlens_counter", "every status counter of the service "
                                       "(`scanlens status`), by its name", labels=["counter"])
        for name, value in snap.counters:
            if name not in GAUGE_COUNTERS:
                counters.add_metric([name], value)
        yield counters
        levels = dict(snap.counters)
        for name, value, doc in (
                ("queued_pixels", snap.queued_pixels, "pixels waiting for inference, all recognizers"),
                ("queued_bytes", levels.get("queued_bytes", 0), "bytes of received data waiting for inference"),
                ("queued_bytes_peak", levels.get("queued_bytes_peak", 0), "the most queued_bytes since start"),
                ("open_scans", snap.open_scans, "scans open now"),
                ("memory_bytes", snap.memory_bytes, "bytes reserved by open and retained scans and the queues"),
                ("memory_budget_bytes", snap.memory_budget_bytes, "the memory_budget_bytes setting")):
            yield GaugeMetricFamily(f"scanlens_{name}", doc, value=value)
        yield CounterMetricFamily("scanlens_scans_started", "scans opened (scan_start accepted)",
                                  value=levels.get("scans_started", 0))
        closed = CounterMetricFamily("scanlens_scans_closed", "scans closed, by the final state of their "
                                     "summary (complete, incomplete, timed_out, aborted)", labels=["state"])
        for state, n in snap.closed_by_state:
            closed.add_metric([state], n)
        yield closed
        latency = HistogramMetricFamily("scanlens_latency_ms", "per recognizer, milliseconds from receipt of a "
                                        "line or frame to its stored result", labels=["recognizer"])
        for name, bounds, cumulative, total in snap.latency:
            buckets = [(f"{b:g}", n) for b, n in zip(bounds, cumulative)] + [("+Inf", cumulative[-1])]
            latency.add_metric([name], buckets, total)
        yield latency


class MetricsEndpoint:
    """The HTTP endpoint of one server: ``start`` binds it (port 0: any free port) and returns its URL,
    ``update`` (event loop) replaces the snapshot, ``stop`` shuts the HTTP server down."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(self))
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def update(self, status: Status, scans: ScanManager) -> None:
        self.snapshot = Snapshot.take(status, scans)

    def start(self, host: str, port: int) -> str:
        """Serve ``/metrics`` on ``host:port``; OSError when it cannot bind. Returns the URL."""
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._httpd.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{bound}/metrics"

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()  # ends serve_forever (within its 0.5 s poll)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None
