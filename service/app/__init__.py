"""Application layer: configuration, the server that wires sockets to the pipeline, the ``scanlens`` CLI.

``Server`` and ``running`` load on first use (PEP 562), so ``scanlens --help`` stays quick: the
server pulls in ONNX Runtime and ZeroMQ.
"""

from __future__ import annotations

from typing import Any

from .config import Settings, load_settings

__all__ = ["Server", "Settings", "load_settings", "running"]


def __getattr__(name: str) -> Any:
    if name in ("Server", "running"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
