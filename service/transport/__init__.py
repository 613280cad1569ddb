"""ZeroMQ sockets: creation, binding, options. No message semantics here (``docs/architecture.md``)."""

from .sockets import bind, connect

__all__ = ["bind", "connect"]
