"""The socket and context handling every scanlens client shares: one socket, an own or a shared context,
optionally CurveZMQ keys (``curve=CurveClient.from_files(client_secret, server_public)``)."""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.asyncio

from ..transport.sockets import CurveClient, connect


def client_keys(client_key: Path | None, server_key: Path | None) -> CurveClient | None:
    """The CURVE keys of a client from its secret certificate (``NAME.key_secret``) and the service's
    public one (``server.key``); None when neither is given (no authentication). ValueError when only
    one is given, KeyFileError (a ValueError) when a file is missing or holds no usable key."""
    if client_key is None and server_key is None:
        return None
    if client_key is None or server_key is None:
        raise ValueError("CURVE needs both the client's secret key file (--client-key NAME.key_secret) and the "
                         "service's public key file (--server-key server.key)")
    return CurveClient.from_files(client_key, server_key)


class _Client:
    """One ZeroMQ socket (``sock``, set by the subclass) on a context the client owns unless one is given.

    ``close`` closes the socket (linger 0) and terminates an owned context; ``async with`` closes on exit."""

    def __init__(self, ctx: zmq.asyncio.Context | None):
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket

    def _connect(self, kind: int, endpoint: str, *, curve: CurveClient | None = None,
                 **options: int) -> zmq.asyncio.Socket:
        """The client's socket, connected (a CURVE client with ``curve``); an owned context is terminated
        again if connecting fails."""
        try:
            return connect(self.ctx, kind, endpoint, curve=curve, **options)
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
