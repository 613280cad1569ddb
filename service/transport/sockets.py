"""Create, bind and connect ZeroMQ sockets with the options scanlens relies on.

Every socket gets ``linger=0`` (closing never hangs on undelivered messages); endpoints ending in
``:0`` bind to a free port and the real endpoint is returned, so tests and demos can run side by side.
"""

from __future__ import annotations

import zmq
import zmq.asyncio


def _prepare(sock: zmq.Socket, *, hwm: int | None, max_message_bytes: int | None) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    if max_message_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)


def bind(ctx: zmq.asyncio.Context, kind: int, endpoint: str, *, hwm: int | None = None,
         max_message_bytes: int | None = None) -> tuple[zmq.asyncio.Socket, str]:
    """A bound socket and the endpoint it really listens on (port 0 picks a free port)."""
    sock = ctx.socket(kind)
    _prepare(sock, hwm=hwm, max_message_bytes=max_message_bytes)
    try:
        sock.bind(endpoint[:-2] + ":*" if endpoint.startswith("tcp://") and endpoint.endswith(":0") else endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise OSError(f"cannot bind {endpoint}: {exc}") from exc
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connect(ctx: zmq.asyncio.Context, kind: int, endpoint: str, *, hwm: int | None = None) -> zmq.asyncio.Socket:
    """A socket connected to ``endpoint`` (ZeroMQ connects lazily: the peer may come later)."""
    sock = ctx.socket(kind)
    try:
        _prepare(sock, hwm=hwm, max_message_bytes=None)
        sock.connect(endpoint)
    except zmq.ZMQError:  # a malformed endpoint: nothing is left open
        sock.close(linger=0)
        raise
    return sock
