"""A ``ScanManager`` without sockets: messages go through the real codec, results are collected.

    h = ManagerHarness(recognizers, max_open_scans=1)      # keyword arguments: ScanLimits
    async with h.serving():                                 # the processors' workers run as tasks
        await h.send(ScanStart(...))                        # what ingest returns, also in h.published
        await h.wait_summary()

What it collects is exactly what the server would publish (``scanlens.app.server`` adds only I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..pipeline import PCAAnalyzer, Processor, Publication, ScanLimits, ScanManager, WorkItem
from ..protocol.codec import decode, encode
from ..protocol.messages import ScanSummary


class Clock:
    """An injected clock for timeouts: ``clock.now`` is what the manager reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def through_wire(header, arrays=()):
    """``header`` and ``arrays`` encoded and decoded again, as the server hands them to the manager."""
    return decode(encode(header, arrays))


class ManagerHarness:
    """A manager whose results are collected instead of published; ``serving`` runs its workers."""

    def __init__(self, recognizers: dict[str, Processor], *, manager_options: dict[str, Any] | None = None,
                 **limits: Any):
        self.published: list[Publication] = []
        self.clock = Clock()
        self.done = asyncio.Event()
        self.manager = ScanManager(recognizers, {"pca": PCAAnalyzer(k=2)}, on_result=self._on_result,
                                   limits=ScanLimits(**limits), clock=self.clock, **(manager_options or {}))

    async def _on_result(self, item: WorkItem, outputs, error) -> None:
        self._collect(self.manager.result(item, outputs, error) + self.manager.settle(item.scan_id))

    def _collect(self, publications: list[Publication]) -> None:
        """Keep what would be published; ``done`` once a summary is among it (a scan whose results were
        all delivered before its scan_end closes with the scan_end itself)."""
        self.published += publications
        if any(isinstance(p.header, ScanSummary) for p in publications):
            self.done.set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[ManagerHarness]:
        tasks = [asyncio.create_task(w.serve()) for w in self.manager.workers.values()]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send(self, header, arrays=(), owner: str | None = None) -> list[Publication]:
        header, buffers = through_wire(header, arrays)
        out = await self.manager.ingest(header, buffers, 0.0, owner=owner)
        self._collect(out)
        return out

    def of(self, kind) -> list:
        return [p.header for p in self.published if isinstance(p.header, kind)]

    def summary(self, scan_id: str) -> ScanSummary | None:
        return next((s for s in self.of(ScanSummary) if s.scan_id == scan_id), None)

    async def wait_for_idle(self, scan_id: str, timeout: float = 10.0) -> None:
        """Until nothing of the open scan ``scan_id`` is in flight."""
        async with asyncio.timeout(timeout):
            while self.manager.open_scans[scan_id].in_flight:
                await asyncio.sleep(0.005)

    async def wait_summary(self, scan_id: str, timeout: float = 10.0) -> ScanSummary:
        async with asyncio.timeout(timeout):
            while (summary := self.summary(scan_id)) is None:
                await asyncio.sleep(0.005)
        return summary
