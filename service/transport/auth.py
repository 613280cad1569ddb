"""The ZAP handler of a context of CURVE servers: which client public keys may connect, refusals reported.

    allowed = load_allowed_keys(Path("/etc/scanlens/keys/clients"))     # the *.key files there
    auth = KeyAuthenticator(ctx, allowed, ["ingest", "publish", "control"], on_refused=count)
    auth.start()                       # before binding: libzmq accepts every key while no handler runs
    ... bind(ctx, zmq.PULL, endpoint, curve=server_keys, zap_domain="ingest") ...
    auth.stop()                        # after closing the sockets, before ctx.term()

pyzmq's ``AsyncioAuthenticator`` answers libzmq's ZAP requests on the event loop. Its public credentials
hook (``configure_curve_callback``) decides on each key, one callback per ZAP domain, so a refusal is
known with the socket (domain) it was meant for: ``on_refused(domain, z85_key)``. A client that was let
in gets its z85 public key as ZAP user id, which every message it sends carries as the ``User-Id``
property (``zmq.Frame.get("User-Id")``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from .sockets import KeyFileError

log = logging.getLogger(__name__)


def load_allowed_keys(directory: Path) -> frozenset[bytes]:
    """The z85 public keys of the certificates ``*.key`` in ``directory`` (KeyFileError when it is not a
    readable directory of certificates). Secret certificates (``*.key_secret``) there are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"allowed client keys directory {directory} does not exist or is not a directory")
    try:
        return frozenset(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"allowed client keys in {directory}: {exc}") from None


class _DomainKeys:
    """pyzmq's credentials provider for one ZAP domain: allowed if the key is in the set."""

    def __init__(self, allowed: frozenset[bytes], refused: Callable[[str, bytes], None]):
        self.allowed = allowed
        self.refused = refused

    def callback(self, domain: str, z85_key: bytes) -> bool:
        if z85_key in self.allowed:
            return True
        self.refused(domain, z85_key)
        return False


class KeyAuthenticator:
    """ZAP handler on ``ctx`` (one per context) for the CURVE sockets of ``domains``: a client whose
    public key is in ``allowed`` is let in; any other is refused and ``on_refused(domain, key)`` is called.
    A ZAP request for another domain is refused too (no socket of ours asks for one)."""

    def __init__(self, ctx: zmq.asyncio.Context, allowed: frozenset[bytes], domains: Iterable[str], *,
                 on_refused: Callable[[str, bytes], None] | None = None):
        self.allowed = allowed
        self.domains = tuple(domains)
        self._on_refused = on_refused
        self._logged: set[tuple[str, bytes]] = set()
        self._auth = AsyncioAuthenticator(ctx, log=logging.getLogger("zmq.auth"))

    def start(self) -> None:
        """Bind the context's ZAP endpoint and answer on the running event loop."""
        self._auth.start()
        for domain in self.domains:
            self._auth.configure_curve_callback(domain, _DomainKeys(self.allowed, self._refused))

    def stop(self) -> None:
        """Stop answering and close the ZAP socket (call after the CURVE sockets are closed)."""
        self._auth.stop()

    def _refused(self, domain: str, z85_key: bytes) -> None:
        # a refused client retries every reconnect interval (0.1 s): log each key once per domain
        if len(self._logged) < 1024 and (domain, z85_key) not in self._logged:
            self._logged.add((domain, z85_key))
            log.warning("CURVE handshake refused on %s: client key %s is not allowed", domain,
                        z85_key.decode("ascii", "replace"))
        if self._on_refused is not None:
            try:
                self._on_refused(domain, z85_key)
            except Exception:  # a failing counter must not stop the ZAP handler (every handshake would hang)
                log.exception("on_refused failed")
