"""The socket and context handling every scanlens client shares: one socket, an own or a shared context."""

from __future__ import annotations

import zmq
import zmq.asyncio

from ..transport.sockets import connect


class _Client:
    """One ZeroMQ socket (``sock``, set by the subclass) on a context the client owns unless one is given.

    ``close`` closes the socket (linger 0) and terminates an owned context; ``async with`` closes on exit."""

    def __init__(self, ctx: zmq.asyncio.Context | None):
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket

    def _connect(self, kind: int, endpoint: str, **options: int) -> zmq.asyncio.Socket:
        """The client's socket, connected; an owned context is terminated again if connecting fails."""
        try:
            return connect(self.ctx, kind, endpoint, **options)
        except zmq.ZMQError:
            if self._own_ctx:
                self.ctx.term()
            raise

    def close(self) -> None:
        self._close(linger_ms=0)

    def _close(self, *, linger_ms: int) -> None:
        self.sock.close(linger=linger_ms)
        if self._own_ctx:
            self.ctx.term()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
