"""The dashboard's one link to the service: a ``Subscriber`` to everything it publishes and a ``Control``
client for catching up, both feeding a :class:`~.state.DashboardState`.

At start (and whenever the service comes back after a silence) the feed waits for a heartbeat (its
subscription is then live), asks ``scans`` and takes a ``snapshot`` of every open and retained scan, so
scans begun before the dashboard started are shown with their maps so far. Afterwards a snapshot is
asked only to recover: maps of a scan whose ``scan_started`` it never saw, a summary that counts pixels
it did not receive (its SUB queue overflowed), or a scan the service no longer lists.

The dashboard is a subscriber like any other: the service's PUB socket drops messages for it alone
when it falls behind (``docs/protocol.md`` §4), so nothing the dashboard does slows acquisition.
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq.asyncio

from ..client import Control, CurveClient, ServiceError, Subscriber
from .state import DashboardState

log = logging.getLogger(__name__)

#: seconds without any message (the heartbeat comes every 0.25 s by default) before the service counts as gone
SILENCE_S = 5.0
#: a scan is not recovered from a snapshot more often than this
RETRY_S = 2.0


class Feed:
    """Runs until cancelled: ``await Feed(state, publish, control).run()``."""

    def __init__(self, state: DashboardState, publish: str, control: str, *, curve: CurveClient | None = None,
                 silence_s: float = SILENCE_S):
        self.state = state
        self.publish, self.control = publish, control
        self.curve = curve
        self.silence_s = silence_s
        self._wanted: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._tried: dict[str, float] = {}
        self._sockets: tuple[zmq.asyncio.Context, Subscriber, Control] | None = None

    def want(self, scan_id: str) -> None:
        """Ask for a snapshot of ``scan_id`` (at most one in flight, and not again within RETRY_S)."""
        if scan_id in self._pending or time.monotonic() - self._tried.get(scan_id, -RETRY_S) < RETRY_S:
            return
        self._pending.add(scan_id)
        self._wanted.put_nowait(scan_id)

    def open(self) -> None:
        """Create and connect the sockets (ZMQError for an endpoint ZeroMQ cannot use); ``run`` opens
        them itself when this was not called."""
        if self._sockets is not None:
            return
        ctx = zmq.asyncio.Context()
        try:
            sub = Subscriber(self.publish, topics_=[""], ctx=ctx, curve=self.curve)
            try:
                ctl = Control(self.control, ctx=ctx, curve=self.curve)
            except BaseException:
                sub.close()
                raise
        except BaseException:
            ctx.term()
            raise
        self._sockets = (ctx, sub, ctl)

    async def run(self) -> None:
        """Follow the service until cancelled; the sockets are closed on the way out."""
        self.open()
        assert self._sockets is not None
        ctx, sub, ctl = self._sockets
        recover = asyncio.create_task(self._recover(ctl), name="dashboard-recover")
        try:
            await self._listen(sub, ctl)
        finally:
            recover.cancel()
            await asyncio.gather(recover, return_exceptions=True)
            self.close()

    def close(self) -> None:
        """Close the sockets of an ``open`` feed that is not running (``run`` closes its own)."""
        if self._sockets is not None:
            ctx, sub, ctl = self._sockets
            self._sockets = None
            sub.close()
            ctl.close()
            ctx.term()

    async def _listen(self, sub: Subscriber, ctl: Control) -> None:
        while True:
            while True:  # until a heartbeat: the subscription is live from then on
                try:
                    await sub.wait_ready(timeout=self.silence_s)
                    break
                except TimeoutError:
                    self.state.set_connected(False)
            self.state.set_connected(True)
            log.info("subscribed to %s", self.publish)
            await self._catch_up(ctl)
            while True:
                try:
                    msg = await sub.recv(timeout=self.silence_s)
                except TimeoutError:
                    log.warning("no message from %s for %g s: is the service running?", self.publish, self.silence_s)
                    self.state.set_connected(False)
                    break  # wait for it to come back, then catch up again
                recover = self.state.on_message(msg)
                if recover is not None:
                    self.want(recover)

    async def _catch_up(self, ctl: Control) -> None:
        """Every open and retained scan of the service, from its snapshot."""
        try:
            scans = await ctl.scans()
        except (ServiceError, TimeoutError) as exc:
            log.warning("cannot list the service's scans on %s: %s", self.control, exc or "no reply")
            return
        entries = [*scans.get("closed", []), *scans.get("open", [])]  # oldest first: the list shows them in order
        for entry in entries:
            scan_id = entry.get("scan_id")
            if isinstance(scan_id, str):
                await self._snapshot(ctl, scan_id)

    async def _recover(self, ctl: Control) -> None:
        while True:
            scan_id = await self._wanted.get()
            try:
                await self._snapshot(ctl, scan_id)
            finally:
                self._pending.discard(scan_id)
                self._tried[scan_id] = time.monotonic()
                if len(self._tried) > 4096:
                    self._tried.clear()

    async def _snapshot(self, ctl: Control, scan_id: str) -> None:
        try:
            reply = await ctl.snapshot(scan_id, timeout=30.0)
        except ServiceError as exc:  # the service does not (or no longer) know it
            log.info("scan %s: %s", scan_id, exc)
            self.state.forget(scan_id)
            return
        except TimeoutError:
            log.warning("no snapshot of %s from %s within 30 s", scan_id, self.control)
            return
        self.state.on_snapshot(scan_id, reply)
