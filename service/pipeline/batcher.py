"""Batching across lines and scans, and inference in a worker thread (never on the event loop).

Each processor (recognizer or analyzer) has one ``InferenceWorker``: a bounded queue of work items
(counted in pixels) and its threads. The worker hands everything queued, up to ``max_batch_pixels``,
to the processor in one call (a recognizer maps every item straight into one preallocated float32
batch, runs its session once and splits the results by item).
While a batch runs, new lines queue up, so batches grow by themselves under load and stay small
(low latency) when the instrument is slow. A batch of at most ``Processor.inline_pixels`` pixels (a
lone line of a few spectra) runs on the event loop itself: shorter than the hand-off to a thread. So
does a lone line that arrives while nothing is queued or running and no other message waits for
ingest, when the processor expects its run to be short (``Processor.runs_inline``; for a spectral
recognizer a few milliseconds): it is run and its result delivered inside ``submit``. A full queue
makes ``submit`` wait: the ingest loop then stops reading, ZeroMQ's queues fill and the instrument's
PUSH blocks — lossless backpressure.

All queues together are also bounded in bytes by one ``ByteGate`` (a share of the memory budget,
reserved in the scan manager's ledger: ``docs/operations.md``, "Memory"); a message waits for room
there the same way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .processor import Processor, WorkItem

log = logging.getLogger(__name__)

ResultHandler = Callable[[WorkItem, dict[str, np.ndarray] | None, str | None], Awaitable[None] | None]


class ByteGate:
    """The bytes of received data held by several queues together, against one bound. When nothing is
    held, one item of any size fits, so the most ever held is max(capacity, the largest item)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.waits = 0  # acquisitions that had to wait for room
        self._freed = asyncio.Event()

    def bound(self, largest_item: int) -> int:
        """The most bytes this gate can let be held, for items of at most ``largest_item`` bytes."""
        return max(self.capacity, largest_item)

    async def acquire(self, nbytes: int) -> None:
        def fits() -> bool:
            return self.used == 0 or self.used + nbytes <= self.capacity
        if not fits():
            self.waits += 1
            while not fits():
                self._freed.clear()
                await self._freed.wait()
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._freed.set()


class PixelQueue:
    """An asyncio FIFO bounded by the number of pixels it holds (one oversized item always fits) and,
    with ``gate``, by the bytes it and its sibling queues hold together."""

    def __init__(self, capacity: int, gate: ByteGate | None = None):
        self.capacity = capacity
        self.gate = gate if gate is not None else ByteGate(2**62)
        self.pixels = 0
        self.waits = 0  # puts that had to wait for room: backpressure reached the ingest loop
        self._items: collections.deque[WorkItem] = collections.deque()
        self._cond = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: WorkItem) -> None:
        nbytes = item.values.nbytes
        await self.gate.acquire(nbytes)
        try:
            async with self._cond:
                def fits() -> bool:
                    return not self._items or self.pixels + item.n_pixels <= self.capacity
                if not fits():
                    self.waits += 1
                    await self._cond.wait_for(fits)
                self._items.append(item)
                self.pixels += item.n_pixels
                self._cond.notify_all()
        except BaseException:
            self.gate.release(nbytes)
            raise

    def discard(self, predicate: Callable[[WorkItem], bool]) -> list[WorkItem]:
        """Remove and return the queued items for which ``predicate`` holds (not yet started)."""
        kept, dropped = collections.deque(), []
        for item in self._items:
            (dropped if predicate(item) else kept).append(item)
        if dropped:
            self._items = kept
            self.pixels -= sum(item.n_pixels for item in dropped)
            self.gate.release(sum(item.values.nbytes for item in dropped))
        return dropped

    async def take(self, max_pixels: int, alone: Callable[[WorkItem], bool] = lambda item: False) -> list[WorkItem]:
        """At least one item; then as many more as fit in ``max_pixels`` — none when the first one is to
        run ``alone``, and none that is."""
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._items))
            batch = [self._items.popleft()]
            total = batch[0].n_pixels
            single = alone(batch[0])
            while (not single and self._items and total + self._items[0].n_pixels <= max_pixels
                   and not alone(self._items[0])):
                item = self._items.popleft()
                batch.append(item)
                total += item.n_pixels
            self.pixels -= total
            self.gate.release(sum(item.values.nbytes for item in batch))
            self._cond.notify_all()
            return batch


class InferenceWorker:
    """Owns one processor's queue and ``parallel`` inference threads; ``serve`` is a long-lived task.

    With ``parallel > 1`` several batches run at once on the same session (ONNX Runtime allows
    concurrent ``run`` calls). On a small shared machine, two single-threaded runs side by side stall
    less than one two-threaded run whose threads must meet at every operator. Results of different
    batches may then be published out of order; each maps message says which pixels it covers.
    """

    def __init__(self, processor: Processor, on_result: ResultHandler, *,
                 max_batch_pixels: int = 4096, queue_pixels: int = 65536, parallel: int = 1,
                 gate: ByteGate | None = None, inline_lone_lines: bool = True,
                 ingest_pending: Callable[[], bool] | None = None):
        self.processor = processor
        # ``submit``: a short lone line runs on the event loop, unless ``ingest_pending()`` says more is coming
        self.inline_lone_lines, self._ingest_pending = inline_lone_lines, ingest_pending
        self.max_batch_pixels = max_batch_pixels
        self.parallel = min(parallel, processor.max_parallel or parallel)
        self.queue = PixelQueue(queue_pixels, gate)
        self._on_result = on_result
        self._executor = ThreadPoolExecutor(max_workers=self.parallel,
                                            thread_name_prefix=f"infer-{processor.name}")
        self.batches = 0
        self.pixels = 0
        self.running = 0  # batches taken and not yet handed back

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running: a replaced worker can stop (``Server``, live training)."""
        return not len(self.queue) and not self.running

    async def submit(self, item: WorkItem) -> None:
        """Queue ``item``; or, when nothing is queued or running and the processor runs it inline
        (``Processor.runs_inline``; a short lone line only while no other message waits for ingest), run
        and deliver it here and now: no queue, no hand-off to a thread."""
        if not self.idle:
            await self.queue.put(item)
            return
        slow = self.inline_lone_lines and not (self._ingest_pending is not None and self._ingest_pending())
        if self.processor.runs_inline([item], idle=slow):
            self.running += 1
            await self._deliver([item], *self._process_here([item]))
            return
        await self.queue.put(item)

    async def serve(self) -> None:
        slots = asyncio.Semaphore(self.parallel)
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    await slots.acquire()
                    try:
                        items = await self.queue.take(self.max_batch_pixels, self.processor.runs_alone)
                    except BaseException:
                        slots.release()
                        raise
                    self.running += 1
                    tg.create_task(self._run_batch(items, slots))
                    items = None  # the batch's task holds it; no reference here may outlive it (ring slots)
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def _run_batch(self, items: list[WorkItem], slots: asyncio.Semaphore) -> None:
        try:
            if self.processor.runs_inline(items, idle=False):
                # a handful of spectra: a run takes less than the hand-off to a thread and back
                results, error = self._process_here(items)
            else:
                try:
                    results = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self.processor.process, items)
                except Exception as exc:
                    results, error = self._failed(items, exc)
                else:
                    results, error = self._done(items, results)
        finally:
            slots.release()
        await self._deliver(items, results, error)

    def _process_here(self, items: list[WorkItem]) -> tuple[list, str | None]:
        """``items`` processed on the calling thread (the event loop): (results, error)."""
        try:
            return self._done(items, self.processor.process(items))
        except Exception as exc:
            return self._failed(items, exc)

    def _done(self, items: list[WorkItem], results: list) -> tuple[list, None]:
        self.batches += 1
        self.pixels += sum(item.n_pixels for item in items)
        return results, None

    def _failed(self, items: list[WorkItem], exc: Exception) -> tuple[list, str]:
        # a model failure must not stop the service
        log.error("inference failed in %s", self.processor.name, exc_info=exc)
        return [None] * len(items), f"inference failed: {exc}"

    async def _deliver(self, items: list[WorkItem], results: list, error: str | None) -> None:
        """Hand each item's results to the result handler; the batch is no longer running after."""
        try:
            for item, outputs in zip(items, results):
                try:
                    await _maybe_await(self._on_result(item, outputs, error))
                except Exception:  # publishing one result must not lose the others
                    log.exception("handling a result of %s failed", self.processor.name)
        finally:
            self.running -= 1


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value
