"""scanlens: real-time recognition imaging for scanning microscopes.

Layers, imported one way only: ``protocol`` (pure encode/decode and schemas) <- ``transport``
(ZeroMQ sockets) <- ``pipeline`` (scan assembly, batching, inference, map state) <- ``app`` (config,
CLI, wiring). ``client`` is the Python client API for instruments and subscribers. Nothing here
imports torch, ``instrument_sim`` or test code.
"""

__version__ = "0.1.0"
