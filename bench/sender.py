"""Benchmark instrument: streams a synthetic scan to a scanlens ingest endpoint from its own process.

    python bench/sender.py [--send-times] [--shm | --no-shm] [--in-place] ENDPOINT SCAN_ID ROWS COLS CHANNELS OFFSET SCALE UNITS DWELL_US [CLIENT_KEY SERVER_KEY]

CLIENT_KEY SERVER_KEY: CURVE key files (the sender's NAME.key_secret, the service's server.key).
--shm / --no-shm: payloads through a shared-memory ring (or fail) / always in the messages; neither:
the client's default (a ring when the service is on this host and takes one).
--in-place: each line is written into its ring slot while it is acquired (``stream_scan(in_place=True)``,
``ScanStream.line_buffer``), as a detector writing into shared memory would, and only its header is sent
at the line's deadline; without it, each finished line is copied into a slot when it is sent.
--send-times: also report ``send_ns``, the ``time.perf_counter_ns()`` at which each data line (index =
seq) was handed to ``Instrument.send`` (before it is encoded and goes to the socket). On Linux that
clock is CLOCK_MONOTONIC, the same in every process, so a subscriber elsewhere on this machine can
subtract it from its arrival times.

Lines are generated before the clock starts (a few distinct lines reused), so the sender measures
the service, not the simulator. Prints one JSON line when done.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from scanlens.sim.stream import stream_scan
from scanlens.client import Instrument, client_keys
from scanlens.protocol.messages import Axis, Data


class SyntheticSource:
    def __init__(self, rows: int, cols: int, axis: Axis):
        self.modality = "eels"
        self.shape = (rows, cols)
        self.axis = axis
        self.meta = {"simulator": "bench"}
        rng = np.random.default_rng(0)
        self._lines = [rng.poisson(200.0, size=(cols, axis.size)).astype(np.float32) for _ in range(8)]

    def line(self, row: int) -> np.ndarray:
        return self._lines[row % len(self._lines)]


class TimedInstrument(Instrument):
    """An Instrument that notes when each data line is handed to its socket (``send_ns[seq]``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.send_ns: list[int] = []

    async def send(self, header, arrays=()) -> None:
        if isinstance(header, Data):
            self.send_ns.append(time.perf_counter_ns())
        await super().send(header, arrays)


async def main(argv: list[str]) -> None:
    times = "--send-times" in argv
    shm = True if "--shm" in argv else False if "--no-shm" in argv else None
    in_place = "--in-place" in argv
    argv = [arg for arg in argv if arg not in ("--send-times", "--shm", "--no-shm", "--in-place")]
    endpoint, scan_id, rows, cols, channels, offset, scale, units, dwell_us = argv[:9]
    curve = client_keys(*map(Path, argv[9:11])) if len(argv) > 9 else None
    axis = Axis(size=int(channels), offset=float(offset), scale=float(scale), units=units)
    source = SyntheticSource(int(rows), int(cols), axis)
    async with (TimedInstrument if times else Instrument)(endpoint, curve=curve, shm=shm) as inst:
        report = await stream_scan(inst, source, scan_id, dwell_s=float(dwell_us) * 1e-6, in_place=in_place)
    out = {"pixels": report.pixels, "elapsed_s": report.elapsed_s}
    if times:
        out["send_ns"] = inst.send_ns
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
