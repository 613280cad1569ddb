"""A real scanlens server on loopback random ports for tests, and clients connected to it.

    async with live(loopback_settings(model_dir), scan_id="s1") as (server, inst, sub):
        await send_band_scan(inst, "s1", truth)
        result = await sub.collect_scan("s1")
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..app.config import Settings
from ..app.server import Server, running
from ..client import Control, CurveClient, Instrument, Subscriber
from .leaks import check_task_leaks, task_snapshot

LOOPBACK = "tcp://127.0.0.1:0"


def loopback_settings(model_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: the three sockets on free loopback ports, the models of ``model_dir``
    only (no user model directory), one inference thread, a heartbeat every 50 ms
    (``Subscriber.wait_ready`` returns quickly), ``overrides`` on top."""
    values: dict[str, Any] = dict(ingest=LOOPBACK, publish=LOOPBACK, control=LOOPBACK, model_dir=model_dir,
                                  user_model_dir=None, inference_threads=1, status_interval_s=0.05,
                                  scan_timeout_s=30)
    return Settings(**{**values, **overrides})


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Server]:
    """``scanlens.app.server.running``, then a LeakError if tasks started in the block still run."""
    before = task_snapshot()
    async with running(settings) as srv:
        yield srv
    await check_task_leaks(before)


@contextlib.asynccontextmanager
async def connected(server: Server, *, curve: CurveClient | None = None,
                    ) -> AsyncIterator[tuple[Instrument, Subscriber, Control]]:
    """(instrument, subscriber to everything, control) on ``server``, the subscriber already live;
    all closed on exit. ``curve``: the clients' keys, for a server with CURVE authentication."""
    inst = Instrument(server.endpoints["ingest"], linger_s=0, curve=curve)
    sub = Subscriber(server.endpoints["publish"], curve=curve)
    ctl = Control(server.endpoints["control"], curve=curve)
    try:
        await sub.wait_ready()
        yield inst, sub, ctl
    finally:
        for c in (inst, sub, ctl):
            c.close()


@contextlib.asynccontextmanager
async def live(settings: Settings, *, scan_id: str | None = None,
               hwm: int = 100_000) -> AsyncIterator[tuple[Server, Instrument, Subscriber]]:
    """A server with these settings plus a ready instrument and subscriber (to ``scan_id``, or to
    everything): (server, inst, sub)."""
    async with serving(settings) as srv:
        async with Instrument(srv.endpoints["ingest"], linger_s=0) as inst, \
                Subscriber(srv.endpoints["publish"], scan_id=scan_id, hwm=hwm) as sub:
            await sub.wait_ready()
            yield srv, inst, sub
