"""Shared fixtures: a real server on loopback random ports, real sockets, real ONNX models.

Every test that starts a server gets it through ``server``; sockets bind to port 0 and close with
linger=0; the server fixture fails a test that leaves asyncio tasks running.
"""

from __future__ import annotations

import asyncio

import pytest

from scanlens.app.config import Settings
from scanlens.app.server import running
from scanlens.client import Control, Instrument, Subscriber

from .band_model import write_band_model


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    write_band_model(d / "band.onnx")
    return d


@pytest.fixture
def settings(model_dir):
    return Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                    model_dir=model_dir, inference_threads=1, status_interval_s=0.05, scan_timeout_s=30)


@pytest.fixture
async def server(settings):
    before = set(asyncio.all_tasks())
    async with running(settings) as srv:
        yield srv
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert not leaked, f"tasks leaked by the test: {leaked}"


@pytest.fixture
async def clients(server):
    """(instrument, subscriber to everything, control), subscriber already live."""
    inst = Instrument(server.endpoints["ingest"], linger_s=0)
    sub = Subscriber(server.endpoints["publish"])
    ctl = Control(server.endpoints["control"])
    try:
        await sub.wait_ready()
        yield inst, sub, ctl
    finally:
        for c in (inst, sub, ctl):
            c.close()
