"""Benchmark instrument: streams a synthetic scan to a scanlens ingest endpoint from its own process.

    python bench/sender.py ENDPOINT SCAN_ID ROWS COLS CHANNELS OFFSET SCALE UNITS DWELL_US [CLIENT_KEY SERVER_KEY]

CLIENT_KEY SERVER_KEY: CURVE key files (the sender's NAME.key_secret, the service's server.key).

Lines are generated before the clock starts (a few distinct lines reused), so the sender measures
the service, not the simulator. Prints one JSON line when done.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from scanlens.sim.stream import stream_scan
from scanlens.client import Instrument, client_keys
from scanlens.protocol.messages import Axis


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


async def main(argv: list[str]) -> None:
    endpoint, scan_id, rows, cols, channels, offset, scale, units, dwell_us = argv[:9]
    curve = client_keys(*map(Path, argv[9:11])) if len(argv) > 9 else None
    axis = Axis(size=int(channels), offset=float(offset), scale=float(scale), units=units)
    source = SyntheticSource(int(rows), int(cols), axis)
    async with Instrument(endpoint, curve=curve) as inst:
        report = await stream_scan(inst, source, scan_id, dwell_s=float(dwell_us) * 1e-6)
    print(json.dumps({"pixels": report.pixels, "elapsed_s": report.elapsed_s}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
