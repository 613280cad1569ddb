"""scanlens.testing checks itself: the leak checks catch leaked sockets, contexts and tasks, and the
suite's autouse fixture turns each of them into a failing test."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from scanlens.testing import (LeakError, check_task_leaks, check_zmq_leaks, leak_check, task_snapshot, zmq_leaks,
                              zmq_snapshot)

pytest_plugins = ["pytester"]


def test_a_leaked_socket_is_reported():
    before = zmq_snapshot()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    try:
        with pytest.raises(LeakError, match=r"socket <zmq\.Socket\(zmq\.PUB\)"):
            check_zmq_leaks(before)
    finally:
        sock.close(linger=0)
        ctx.term()
    assert zmq_leaks(before) == []


def test_a_leaked_context_is_reported():
    before = zmq_snapshot()
    ctx = zmq.asyncio.Context()
    try:
        with pytest.raises(LeakError, match="context") as info:
            check_zmq_leaks(before)
        assert "socket" not in str(info.value).split(":", 1)[1]
    finally:
        ctx.term()
    assert zmq_leaks(before) == []


def test_what_existed_before_is_not_reported():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        before = zmq_snapshot()
        assert sock in before and ctx in before
        check_zmq_leaks(before)
        with leak_check():  # nested in the autouse one: the snapshot fallback
            pass
    finally:
        sock.close(linger=0)
        ctx.term()


def test_an_unreferenced_socket_is_collected_not_reported():
    before = zmq_snapshot()
    ctx = zmq.Context()
    try:
        with pytest.warns(ResourceWarning, match="Unclosed socket"):
            cycle: list = [ctx.socket(zmq.PUB)]
            cycle.append(cycle)  # unreachable after the del, but only the collector can free it
            del cycle
            assert zmq_leaks(before) == [f"context {ctx!r}"]  # collected (pyzmq closes it, and warns)
    finally:
        ctx.term()
    assert zmq_leaks(before) == []


def test_pyzmq_own_zero_copy_collector_is_not_a_leak():
    """A large ``send(copy=False)`` starts pyzmq's garbage-collector thread, with a context and sockets
    of its own that live as long as the process."""
    before = zmq_snapshot()
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://zero-copy")
        b.connect("inproc://zero-copy")
        a.send(bytearray(1 << 20), copy=False)
        assert len(b.recv()) == 1 << 20
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()
    assert zmq_leaks(before) == []


def test_leak_check_raises_after_the_block():
    holder: list[zmq.Context] = []
    with pytest.raises(LeakError, match="context"):
        with leak_check():
            holder.append(zmq.Context())
    holder[0].term()


async def test_a_leaked_task_is_reported():
    before = task_snapshot()
    task = asyncio.create_task(asyncio.sleep(60), name="forgotten")
    with pytest.raises(LeakError, match="forgotten"):
        await check_task_leaks(before)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await check_task_leaks(before)


def test_the_autouse_fixture_fails_leaking_tests(pytester):
    """A small suite with this suite's conftest, in its own process (so the check's usual path runs,
    not the fallback it takes nested in this test's): each kind of leak is an error of the test that leaked."""
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_leaky='''
        import asyncio
        import zmq
        import zmq.asyncio

        from scanlens.client import Control

        KEEP = []

        def test_sync_socket():
            ctx = zmq.Context()
            KEEP.append(ctx)
            KEEP.append(ctx.socket(zmq.PUB))

        async def test_async_context():
            KEEP.append(zmq.asyncio.Context())

        async def test_task():
            KEEP.append(asyncio.create_task(asyncio.sleep(60)))

        async def test_clean(server):
            async with Control(server.endpoints["control"]) as ctl:
                assert (await ctl.status())["recognizers"] == ["band", "pca"]

        def test_zz_cleanup():
            for obj in KEEP:
                if isinstance(obj, zmq.Socket):
                    obj.close(linger=0)
            for obj in KEEP:
                if isinstance(obj, zmq.Context):
                    obj.term()
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=3)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_sync_socket*", "*ZeroMQ objects leaked*socket*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_async_context*", "*ZeroMQ objects leaked*context*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_task*", "*tasks leaked by the test*"])
