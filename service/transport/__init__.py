"""ZeroMQ sockets: creation, binding, options, CurveZMQ keys and the ZAP handler. No message semantics
here (``docs/architecture.md``)."""

from .auth import KeyAuthenticator, load_allowed_keys
from .sockets import CurveClient, CurveServer, KeyFileError, bind, connect, is_local_endpoint

__all__ = ["CurveClient", "CurveServer", "KeyAuthenticator", "KeyFileError", "bind", "connect", "is_local_endpoint",
           "load_allowed_keys"]
