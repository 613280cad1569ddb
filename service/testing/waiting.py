"""Waiting on a subscriber for the message a test expects, with one deadline for the whole wait.

Heartbeats and other scans' messages keep arriving, so a per-``recv`` timeout would never fire: these
helpers bound the whole wait and raise TimeoutError when the message does not come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..client import Received, Subscriber
from ..protocol.messages import Event, Message, ScanSummary


async def wait_for(sub: Subscriber, kind: str | None = None, *, scan_id: str | None = None,
                   where: Callable[[Message], bool] | None = None, timeout: float = 10.0) -> Received:
    """The next message of ``kind`` (any kind when None), for ``scan_id`` when given, whose header
    satisfies ``where`` when given; messages before it are dropped. TimeoutError after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await sub.recv()
            h = msg.header
            if ((kind is None or h.kind == kind) and (scan_id is None or getattr(h, "scan_id", None) == scan_id)
                    and (where is None or where(h))):
                return msg


async def wait_for_event(sub: Subscriber, code: str | None = None, *, scan_id: str | None = None,
                         timeout: float = 10.0) -> Event:
    """The next event with this ``code`` (any code when None), for ``scan_id`` when given."""
    msg = await wait_for(sub, "event", scan_id=scan_id, timeout=timeout,
                         where=lambda h: code is None or h.code == code)  # type: ignore[union-attr]
    return msg.header  # type: ignore[return-value]


async def wait_for_summary(sub: Subscriber, scan_id: str | None = None, *, timeout: float = 10.0) -> ScanSummary:
    """The next ``scan_summary`` (of ``scan_id``, when given)."""
    return (await wait_for(sub, "scan_summary", scan_id=scan_id, timeout=timeout)).header  # type: ignore[return-value]
