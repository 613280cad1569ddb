"""Python client API: stream a scan to scanlens, subscribe to its maps, ask the control socket.

    async with Instrument("tcp://127.0.0.1:5555") as inst:
        async with inst.scan("s1", "eels", (rows, cols), axis) as scan:
            for row in range(rows):
                await scan.send_line(row, spectra[row])        # [cols, channels]

    async with Subscriber("tcp://127.0.0.1:5556", scan_id="s1") as sub:
        await sub.wait_ready()                                  # before the scan starts
        result = await sub.collect_scan("s1")                  # maps, events, summary

    async with Control("tcp://127.0.0.1:5557") as ctl:
        snapshot = await ctl.snapshot("s1")

    keys = client_keys(Path("keys/inst1.key_secret"), Path("keys/server.key"))   # a service with CURVE keys
    async with Instrument("tcp://10.0.0.5:5555", curve=keys) as inst: ...      # likewise Subscriber, Control

Used by the simulators, the demo and the tests; other languages follow ``docs/protocol.md``.
Modules by job: ``instrument`` (sending), ``subscriber`` (receiving), ``results`` (assembling a scan's
maps), ``watch`` (a sender following its scan: accepted, refused, service gone, summary), ``control``
(requests), ``training`` (a train request and its job), ``base`` (the socket and context every client holds). Subscriber and
Control decode what the service publishes tolerantly (``scanlens.protocol.codec.decode(tolerant=True)``).
"""

from __future__ import annotations

from ..transport.sockets import CurveClient, KeyFileError
from .base import client_keys
from .control import Control, ControlReply, ServiceError
from .instrument import Instrument, ScanStream
from .results import MovieResult, ScanResult
from .subscriber import Received, Subscriber
from .watch import ScanFailed, ScanRejected, ScanWatch, ServiceStopped, ServiceUnreachable
from .training import TrainFailed, train_and_follow

__all__ = ["Control", "ControlReply", "CurveClient", "Instrument", "KeyFileError", "MovieResult", "Received",
           "ScanFailed", "ScanRejected", "ScanResult", "ScanStream", "ScanWatch", "ServiceError", "ServiceStopped",
           "ServiceUnreachable", "Subscriber", "TrainFailed", "client_keys", "train_and_follow"]
