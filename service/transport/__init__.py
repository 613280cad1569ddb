"""ZeroMQ sockets: creation, binding, options, CurveZMQ keys and the ZAP handler; shared-memory rings. No message semantics
here (``docs/architecture.md``)."""

from .auth import KeyAuthenticator, load_allowed_keys
from .shm import RingClient, RingError, RingMapping, RingServer, ring_socket_name
from .sockets import CurveClient, CurveServer, KeyFileError, bind, connect, is_local_endpoint

__all__ = ["CurveClient", "CurveServer", "KeyAuthenticator", "KeyFileError", "RingClient", "RingError",
           "RingMapping", "RingServer", "bind", "connect", "is_local_endpoint",
           "load_allowed_keys", "ring_socket_name"]
