"""Create, bind and connect ZeroMQ sockets with the options scanlens relies on.

Every socket gets ``linger=0`` (closing never hangs on undelivered messages); endpoints ending in
``:0`` bind to a free port and the real endpoint is returned, so tests and demos can run side by side.

CurveZMQ: a bound socket given ``curve=CurveServer(...)`` is a CURVE server (its ``zap_domain`` names it
to the ZAP handler, ``scanlens.transport.auth``); a connected socket given ``curve=CurveClient(...)`` is
a CURVE client. Keys are z85 text, loaded from pyzmq certificate files (``scanlens keys create``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth


class KeyFileError(ValueError):
    """A certificate file that is missing, unreadable or lacks the key it must hold."""


def _load_certificate(path: Path, what: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys of a pyzmq certificate file; KeyFileError naming ``what`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"{what} {path} does not exist (create key pairs with `scanlens keys create`)")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{what} {path} is not a ZeroMQ certificate: {exc}") from None
    if secret and secret_key is None:
        raise KeyFileError(f"{what} {path} holds no secret key: give the NAME.key_secret file, not NAME.key")
    for key in (public, secret_key):
        if key is not None and len(key) != 40:  # z85 of 32 bytes
            raise KeyFileError(f"{what} {path} holds a malformed key ({len(key)} characters, a z85 CURVE key has 40)")
    return public, secret_key


@dataclass(frozen=True)
class CurveServer:
    """The service's CURVE key pair (z85). ``from_file``: its secret certificate (``NAME.key_secret``)."""

    public_key: bytes
    secret_key: bytes = field(repr=False)

    @classmethod
    def from_file(cls, secret_file: Path) -> CurveServer:
        public, secret = _load_certificate(secret_file, "server secret key file", secret=True)
        return cls(public, secret)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CurveClient:
    """A client's CURVE key pair and the server's public key it expects (all z85).

    ``from_files``: the client's secret certificate (``NAME.key_secret``) and the server's public one
    (``server.key``; its ``.key_secret`` holds the same public key, but should stay on the server)."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    server_key: bytes

    @classmethod
    def from_files(cls, client_secret_file: Path, server_public_file: Path) -> CurveClient:
        public, secret = _load_certificate(client_secret_file, "client secret key file", secret=True)
        server, _ = _load_certificate(server_public_file, "server public key file", secret=False)
        return cls(public, secret, server)  # type: ignore[arg-type]


def _curve_server(sock: zmq.Socket, curve: CurveServer, zap_domain: str) -> None:
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
    sock.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())


def _curve_client(sock: zmq.Socket, curve: CurveClient) -> None:
    sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this host can reach ``endpoint``: ``ipc://``, ``inproc://``, or ``tcp://`` on a loopback
    address (127.0.0.0/8, ::1, localhost). ``tcp://*``, ``0.0.0.0``, other hosts and interface names,
    and every other transport are not local."""
    transport, sep, address = endpoint.partition("://")
    if not sep:
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name, a host name
        return False


def _prepare(sock: zmq.Socket, *, hwm: int | None, max_message_bytes: int | None,
             send_hwm: int | None = None, mandatory: bool = False) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    if send_hwm is not None:  # libzmq applies a high-water mark to pipes made after it is set: set it first
        sock.setsockopt(zmq.SNDHWM, send_hwm)
    if max_message_bytes is not None:  # a bigger frame makes libzmq drop the connection before receiving it
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if mandatory:  # ROUTER: a send to a full or vanished peer raises (Again / EHOSTUNREACH) instead of dropping
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)


def bind(ctx: zmq.asyncio.Context, kind: int, endpoint: str, *, hwm: int | None = None,
         max_message_bytes: int | None = None, curve: CurveServer | None = None,
         zap_domain: str = "", send_hwm: int | None = None,
         mandatory: bool = False) -> tuple[zmq.asyncio.Socket, str]:
    """A bound socket and the endpoint it really listens on (port 0 picks a free port).

    With ``curve`` the socket is a CURVE server: every peer must complete the CurveZMQ handshake, and
    the context's ZAP handler decides on its public key, told the socket by ``zap_domain``."""
    sock = ctx.socket(kind)
    try:
        _prepare(sock, hwm=hwm, max_message_bytes=max_message_bytes, send_hwm=send_hwm, mandatory=mandatory)
        if curve is not None:
            _curve_server(sock, curve, zap_domain)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    try:
        sock.bind(endpoint[:-2] + ":*" if endpoint.startswith("tcp://") and endpoint.endswith(":0") else endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise OSError(f"cannot bind {endpoint}: {exc}") from exc
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connect(ctx: zmq.asyncio.Context, kind: int, endpoint: str, *, hwm: int | None = None,
            curve: CurveClient | None = None) -> zmq.asyncio.Socket:
    """A socket connected to ``endpoint`` (ZeroMQ connects lazily: the peer may come later); with
    ``curve`` a CURVE client of a service whose public key is ``curve.server_key``."""
    sock = ctx.socket(kind)
    try:
        _prepare(sock, hwm=hwm, max_message_bytes=None)
        if curve is not None:
            _curve_client(sock, curve)
        sock.connect(endpoint)
    except zmq.ZMQError:  # a malformed endpoint: nothing is left open
        sock.close(linger=0)
        raise
    return sock
