"""Shared fixtures: a real server on loopback random ports, real sockets, real ONNX models.

Every test that starts a server gets it through ``server`` (or ``scanlens.testing.live``); sockets
bind to port 0 and close with linger=0. Every test fails that leaves ZeroMQ sockets open, contexts
unterminated or asyncio tasks running (``leak_check``). The logic lives in ``scanlens.testing``.
"""

from __future__ import annotations

import pytest
from pytest_asyncio import is_async_test

from scanlens.testing import (check_task_leaks, connected, leak_check as zmq_leak_check, loopback_settings, serving,
                              task_snapshot, write_band_model)


@pytest.fixture(autouse=True)
def user_model_dir(tmp_path, monkeypatch):
    """Every test (and every process it starts) has its own, empty user model directory, never the real
    home's: ``scanlens train`` without ``--out`` writes there and the service loads from there."""
    path = tmp_path / "user-models"
    monkeypatch.setenv("SCANLENS_USER_MODEL_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def leak_check(request):
    """Fail the test if it leaves ZeroMQ sockets or contexts open, or (async tests) asyncio tasks running."""
    with zmq_leak_check():
        if is_async_test(request.node):
            request.getfixturevalue("_task_leak_check")
        yield


@pytest.fixture
async def _task_leak_check():
    """Inside the test's event loop, after every other async fixture is torn down: no tasks left running."""
    before = task_snapshot()
    yield
    await check_task_leaks(before)


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    write_band_model(d / "band.onnx")
    return d


@pytest.fixture
def settings(model_dir):
    return loopback_settings(model_dir)


@pytest.fixture
async def server(settings):
    async with serving(settings) as srv:
        yield srv


@pytest.fixture
async def clients(server):
    """(instrument, subscriber to everything, control), subscriber already live."""
    async with connected(server) as trio:
        yield trio
