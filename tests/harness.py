"""Test harness: a live server with a ready instrument and subscriber, for tests with special settings."""

from __future__ import annotations

import contextlib

from scanlens.app.config import Settings
from scanlens.app.server import running
from scanlens.client import Instrument, Subscriber


@contextlib.asynccontextmanager
async def live(settings: Settings, *, scan_id: str | None = None, hwm: int = 100_000):
    """A server with these settings plus a ready instrument and subscriber: (server, inst, sub)."""
    async with running(settings) as srv:
        async with Instrument(srv.endpoints["ingest"], linger_s=0) as inst, \
                Subscriber(srv.endpoints["publish"], scan_id=scan_id, hwm=hwm) as sub:
            await sub.wait_ready()
            yield srv, inst, sub
