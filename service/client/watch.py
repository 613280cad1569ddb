"""Following one scan from the sender's side: was it accepted, is the service alive, how did it end.

An instrument only PUSHes, so what became of its scan is only published. ``ScanWatch`` subscribes to
the scan's ``started``, ``event`` and ``summary`` topics and to the status heartbeat (not to the maps),
so that a sender can tell "done" from "refused", "nobody there" and "service gone":

    async with ScanWatch("tcp://127.0.0.1:5556", "s1") as watch:
        await watch.wait_ready(timeout=5)               # ServiceUnreachable: no heartbeat at all

        async def send():
            async with inst.scan("s1", ...) as scan:
                await watch.wait_started(timeout=5)     # ScanRejected, or ServiceUnreachable: no answer
                ...                                     # send the lines

        await watch.guard(send())                       # ServiceStopped: heartbeats stopped meanwhile
        summary = await watch.wait_summary()            # ServiceStopped: heartbeats stopped first

The service publishes its heartbeat every ``status_interval_s`` (default 0.25 s); after the first one,
``heartbeat_timeout`` seconds without one mean the service is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import zmq

from ..protocol import topics
from ..protocol.messages import Event, ScanStarted, ScanSummary
from .control import ServiceError
from .subscriber import Subscriber

T = TypeVar("T")


class ScanFailed(RuntimeError):
    """A scan's sender learnt that its work failed (the subclasses say how)."""


class ServiceUnreachable(ScanFailed):
    """No heartbeat from the service, or no answer to the scan's ``scan_start``, in time."""


class ScanRejected(ScanFailed, ServiceError):
    """The service refused the scan (a ``scan_rejected`` event for its scan id)."""

    def __init__(self, scan_id: str, reason: str):
        super().__init__(f"scan {scan_id} rejected: {reason}")
        self.scan_id, self.reason = scan_id, reason


class ServiceStopped(ScanFailed):
    """The service's heartbeat stopped before the scan's summary arrived."""


class ScanWatch:
    """Watches one scan on the publish socket ``endpoint`` (see the module notes); ``subscriber_options``
    go to the :class:`Subscriber` (e.g. ``curve=``). Use ``async with`` (or ``await aclose()``)."""

    def __init__(self, endpoint: str, scan_id: str, *, heartbeat_timeout: float = 10.0, **subscriber_options: Any):
        if not heartbeat_timeout > 0:
            raise ValueError("heartbeat_timeout must be > 0")
        self.endpoint, self.scan_id, self.heartbeat_timeout = endpoint, scan_id, heartbeat_timeout
        watched = [topics.scan_topic(scan_id, what) for what in (topics.SCAN_STARTED, topics.EVENT, topics.SUMMARY)]
        self.sub = Subscriber(endpoint, topics_=[*watched, topics.STATUS], **subscriber_options)
        #: the scan's events as they came (``data_rejected``, ``lost`` ...)
        self.events: list[Event] = []
        self.started: ScanStarted | None = None
        self.summary: ScanSummary | None = None
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._answer: asyncio.Future[ScanStarted] = loop.create_future()  # started, or ScanRejected
        self._summary: asyncio.Future[ScanSummary] = loop.create_future()
        self._stopped: asyncio.Future[None] = loop.create_future()  # ServiceStopped
        self._pump = asyncio.create_task(self._run(), name=f"watch {scan_id}")

    async def __aenter__(self) -> ScanWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._pump.cancel()
        try:
            await self._pump
        except asyncio.CancelledError:
            pass
        for fut in (self._ready, self._answer, self._summary, self._stopped):
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "exception was never retrieved" warning
        self.sub.close()

    # ------------------------------------------------------------------ what the sender awaits

    async def wait_ready(self, timeout: float) -> None:
        """Return at the first heartbeat (the service is there and the subscription live); ServiceUnreachable
        after ``timeout`` s without one."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except TimeoutError:
            raise ServiceUnreachable(f"no heartbeat from a scanlens service on {self.endpoint} within {timeout:g} s "
                                     "— is `scanlens serve` running, and is this its publish endpoint?") from None

    async def wait_started(self, timeout: float) -> ScanStarted:
        """The scan's ``scan_started``; ScanRejected when it was refused, ServiceUnreachable when neither came
        within ``timeout`` s (the service did not get the ``scan_start``), ServiceStopped when the heartbeat
        stopped."""
        try:
            async with asyncio.timeout(timeout):
                return await self._until(self._answer)
        except TimeoutError:
            raise ServiceUnreachable(
                f"no answer to the scan_start of {self.scan_id} within {timeout:g} s although the service "
                f"publishing on {self.endpoint} is running — is the ingest endpoint that service's, or is it too "
                f"busy to read it?") from None

    async def wait_summary(self) -> ScanSummary:
        """The scan's summary (however long the service takes while its heartbeat goes on); ServiceStopped
        when the heartbeat stops first."""
        return await self._until(self._summary)

    async def guard(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` (e.g. the sending of the lines); when the service's heartbeat stops meanwhile, cancel
        it and raise ServiceStopped (a PUSH to a dead service would block for ever)."""
        task = asyncio.ensure_future(aw)
        try:
            await asyncio.wait({task, self._stopped}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await _cancel(task)
            raise
        if not task.done():
            await _cancel(task)
            self._stopped.result()  # raises ServiceStopped
        return task.result()

    async def _until(self, fut: asyncio.Future[T]) -> T:
        """``fut``'s result, or ServiceStopped if the heartbeat stops first."""
        await asyncio.wait({fut, self._stopped}, return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        self._stopped.result()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the one consumer of the socket

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:  # noqa: BLE001 - whatever stops the watch fails the waits, never hangs them
            self._stopped.set_exception(ScanFailed(f"cannot follow scan {self.scan_id} on {self.endpoint}: {exc}"))

    async def _follow(self) -> None:
        while True:
            try:
                msg = await self.sub.recv(timeout=self.heartbeat_timeout if self._ready.done() else None)
            except TimeoutError:
                if self._pending():  # this process was busy, the heartbeats are queued: not a silence
                    continue
                self._stopped.set_exception(ServiceStopped(
                    f"the service on {self.endpoint} stopped: no heartbeat for {self.heartbeat_timeout:g} s "
                    f"and no summary for scan {self.scan_id}"))
                return
            h = msg.header
            if msg.topic == topics.STATUS:
                if not self._ready.done():
                    self._ready.set_result(None)
            elif isinstance(h, ScanStarted) and h.scan_id == self.scan_id:
                self.started = h
                if not self._answer.done():
                    self._answer.set_result(h)
            elif isinstance(h, Event) and h.scan_id == self.scan_id:
                self.events.append(h)
                if h.code == "scan_rejected" and not self._answer.done():
                    self._answer.set_exception(ScanRejected(self.scan_id, h.reason))
            elif isinstance(h, ScanSummary) and h.scan_id == self.scan_id:
                self.summary = h
                if not self._summary.done():
                    self._summary.set_result(h)

    def _pending(self) -> bool:
        return bool(self.sub.sock.get(zmq.EVENTS) & zmq.POLLIN)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it is done, cancelling again while it is not (its clean-up may await
    a send to a dead service, which only another cancellation interrupts)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled():
        task.exception()  # retrieved
