"""Batching across lines and scans, and inference in a worker thread (never on the event loop).

Each recognizer has one ``InferenceWorker``: a bounded queue of work items (counted in pixels) and
its inference threads. The worker takes everything queued, up to ``max_batch_pixels``, maps each item's axis
straight into one preallocated float32 batch, runs the session once and splits the results by item.
While a batch runs, new lines queue up, so batches grow by themselves under load and stay small
(low latency) when the instrument is slow. A full queue makes ``submit`` wait: the ingest loop then
stops reading, ZeroMQ's queues fill and the instrument's PUSH blocks — lossless backpressure.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .recognizer import Recognizer
from .scan import WorkItem

log = logging.getLogger(__name__)

ResultHandler = Callable[[WorkItem, dict[str, np.ndarray] | None, str | None], Awaitable[None] | None]


class PixelQueue:
    """An asyncio FIFO bounded by the number of pixels it holds (one oversized item always fits)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.pixels = 0
        self.waits = 0  # puts that had to wait for room: backpressure reached the ingest loop
        self._items: collections.deque[WorkItem] = collections.deque()
        self._cond = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: WorkItem) -> None:
        async with self._cond:
            def fits() -> bool:
                return not self._items or self.pixels + item.n_pixels <= self.capacity
            if not fits():
                self.waits += 1
                await self._cond.wait_for(fits)
            self._items.append(item)
            self.pixels += item.n_pixels
            self._cond.notify_all()

    async def take(self, max_pixels: int) -> list[WorkItem]:
        """At least one item; then as many more as fit in ``max_pixels``."""
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._items))
            batch = [self._items.popleft()]
            total = batch[0].n_pixels
            while self._items and total + self._items[0].n_pixels <= max_pixels:
                item = self._items.popleft()
                batch.append(item)
                total += item.n_pixels
            self.pixels -= total
            self._cond.notify_all()
            return batch


class InferenceWorker:
    """Owns one recognizer's queue and ``parallel`` inference threads; ``serve`` is a long-lived task.

    With ``parallel > 1`` several batches run at once on the same session (ONNX Runtime allows
    concurrent ``run`` calls). On a small shared machine, two single-threaded runs side by side stall
    less than one two-threaded run whose threads must meet at every operator. Results of different
    batches may then be published out of order; each maps message says which pixels it covers.
    """

    def __init__(self, recognizer: Recognizer, on_result: ResultHandler, *,
                 max_batch_pixels: int = 4096, queue_pixels: int = 65536, parallel: int = 1):
        self.recognizer = recognizer
        self.max_batch_pixels = max_batch_pixels
        self.parallel = parallel
        self.queue = PixelQueue(queue_pixels)
        self._on_result = on_result
        self._executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"infer-{recognizer.name}")
        self.batches = 0
        self.pixels = 0

    async def submit(self, item: WorkItem) -> None:
        await self.queue.put(item)

    def _infer(self, items: list[WorkItem]) -> list[dict[str, np.ndarray]]:
        """Runs in a worker thread."""
        total = sum(item.n_pixels for item in items)
        batch = np.empty((total, self.recognizer.channels), dtype=np.float32)
        offset = 0
        for item in items:
            item.binding.axis_map.apply(item.spectra, out=batch[offset: offset + item.n_pixels])
            offset += item.n_pixels
        outputs = self.recognizer.run(batch)
        per_item, offset = [], 0
        for item in items:
            end = offset + item.n_pixels
            per_item.append({name: values[offset:end] for name, values in outputs.items()})
            offset = end
        return per_item

    async def serve(self) -> None:
        slots = asyncio.Semaphore(self.parallel)
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    await slots.acquire()
                    try:
                        items = await self.queue.take(self.max_batch_pixels)
                    except BaseException:
                        slots.release()
                        raise
                    tg.create_task(self._run_batch(items, slots))
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def _run_batch(self, items: list[WorkItem], slots: asyncio.Semaphore) -> None:
        try:
            try:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, items)
            except Exception as exc:  # a model failure must not stop the service
                log.exception("inference failed in %s", self.recognizer.name)
                results, error = [None] * len(items), f"inference failed: {exc}"
            else:
                error = None
                self.batches += 1
                self.pixels += sum(item.n_pixels for item in items)
        finally:
            slots.release()
        for item, outputs in zip(items, results):
            try:
                await _maybe_await(self._on_result(item, outputs, error))
            except Exception:  # publishing one result must not lose the others
                log.exception("handling a result of %s failed", self.recognizer.name)


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value
