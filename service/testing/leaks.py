"""Finding what a test left behind: ZeroMQ sockets not closed, contexts not terminated, asyncio tasks pending.

    with leak_check():                    # LeakError after the block naming each leaked socket / context
        ...

    before = zmq_snapshot()               # the same by hand
    ...
    check_zmq_leaks(before)

The test suite's autouse fixture wraps every test in ``leak_check()`` and, inside an async test's event
loop, checks tasks with ``task_snapshot`` / ``check_task_leaks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import zmq
import zmq.utils.garbage as zmq_garbage


class LeakError(AssertionError):
    """A test left ZeroMQ sockets or contexts open, or asyncio tasks running."""


@dataclass(frozen=True)
class ZmqSnapshot:
    """The ZeroMQ sockets and contexts alive at one moment (weakly held: id -> weakref)."""

    objects: dict[int, weakref.ref]

    def __contains__(self, obj: object) -> bool:
        ref = self.objects.get(id(obj))
        return ref is not None and ref() is obj  # the same object, not a new one at a reused address


def _subclasses(cls: type) -> set[type]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _subclasses(sub)
    return found


def _zmq_objects() -> list[zmq.Socket | zmq.Context]:
    """Every ZeroMQ socket and context the garbage collector tracks (outside its frozen generation).

    The instances of a class defined in Python (pyzmq's ``Socket`` and ``Context`` and all their
    subclasses are) refer to their class in the collector's traversal, so ``gc.get_referrers`` of the
    classes finds them in one pass in C, several times faster than filtering ``gc.get_objects()``."""
    classes = _subclasses(zmq.Socket) | _subclasses(zmq.Context)
    return [o for o in gc.get_referrers(*classes) if isinstance(o, (zmq.Socket, zmq.Context))]


def zmq_snapshot() -> ZmqSnapshot:
    """Every ZeroMQ socket and context that exists now (found through the garbage collector)."""
    return ZmqSnapshot({id(o): weakref.ref(o) for o in _zmq_objects()})


def _pyzmq_internal(obj: zmq.Socket | zmq.Context) -> bool:
    """Whether pyzmq owns ``obj`` itself: a shadow socket (an asyncio socket keeps one over its own
    handle; it owns nothing), or the context and sockets of pyzmq's zero-copy garbage collector (a
    process-wide thread that pyzmq starts on the first large ``send(copy=False)`` and keeps)."""
    if getattr(obj, "_shadow", False):
        return True
    internal = zmq_garbage.gc._context
    return internal is not None and (obj is internal or getattr(obj, "context", None) is internal)


def _open_since(before: ZmqSnapshot) -> list[str]:
    """Descriptions of the sockets not closed and contexts not terminated that are not in ``before``."""
    return [f"{'socket' if isinstance(o, zmq.Socket) else 'context'} {o!r}" for o in _zmq_objects()
            if not o.closed and not _pyzmq_internal(o) and o not in before]


def zmq_leaks(before: ZmqSnapshot) -> list[str]:
    """The sockets and contexts created since ``before`` that are still open and still referenced.

    A quick look first; only when it finds something does a full ``gc.collect()`` run, so that an
    unreferenced socket (which pyzmq closes, with a ResourceWarning, when it is collected) is not
    reported as a leak."""
    if not _open_since(before):
        return []
    gc.collect()
    return _open_since(before)


def check_zmq_leaks(before: ZmqSnapshot) -> None:
    """LeakError when sockets or contexts created since ``before`` are still open."""
    if leaked := zmq_leaks(before):
        raise LeakError("ZeroMQ objects leaked by the test (close sockets, term() contexts): "
                        + "; ".join(leaked))


@contextlib.contextmanager
def leak_check() -> Iterator[None]:
    """LeakError after the block if sockets or contexts created in it are still open.

    Compares against a snapshot of the sockets and contexts alive before the block. (An earlier
    version set older objects aside with ``gc.freeze()`` instead; once in CI an asyncio subprocess
    transport then failed in ``__del__`` in a later test, most likely because freezing kept one test's
    garbage until another's, after its event loop had closed.)"""
    before = zmq_snapshot()
    yield
    check_zmq_leaks(before)


def task_snapshot() -> set[asyncio.Task]:
    """The asyncio tasks of the running loop now (call inside the loop)."""
    return set(asyncio.all_tasks())


async def check_task_leaks(before: set[asyncio.Task], *, what: str = "the test") -> None:
    """LeakError when tasks that were not in ``before`` are still pending (after one loop iteration,
    so that tasks finishing right now may finish)."""
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not current]
    if leaked:
        raise LeakError(f"tasks leaked by {what}: {leaked}")
