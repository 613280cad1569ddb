"""Defaults of ``scanlens dashboard`` (no imports: the CLI's ``--help`` needs nothing of the web stack).

The endpoints are the service's own defaults (``scanlens serve``); tests/test_dashboard.py checks they agree."""

PUBLISH = "tcp://127.0.0.1:5556"
CONTROL = "tcp://127.0.0.1:5557"
HOST = "127.0.0.1"
PORT = 8765
MAX_RATE_HZ = 20.0
