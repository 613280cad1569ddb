"""scanlens: real-time recognition imaging for scanning microscopes.

The service's layers, imported one way only (``docs/architecture.md``; checked by the import
contracts in ``pyproject.toml``): ``protocol`` (pure encode/decode and schemas) <- ``transport``
(ZeroMQ sockets) <- ``pipeline`` (scan lifecycle, recognizers, batching, inference) <- ``app``
(config, server, CLI). ``client`` is the Python client for instruments and subscribers,
``model_files`` holds the shipped recognizers, ``testing`` is the test kit. The simulators
(``scanlens.sim``), training, scoring and the demo (``scanlens.models``) sit on top; the service never
imports them, nor torch.
"""

__version__ = "0.1.0"
