"""Benchmark camera: streams simulated STEM frames to a scanlens ingest endpoint from its own process.

    python bench/frame_sender.py ENDPOINT SCAN_ID SIZE FRAMES PIXEL_NM

A few distinct frames are rendered before the clock starts and replayed, so the sender measures the
service, not the simulator. Prints one JSON line when done.
"""

from __future__ import annotations

import asyncio
import json
import sys

from scanlens.sim.stem import STEMConfig, STEMMovie
from scanlens.sim.stream import stream_movie
from scanlens.client import Instrument


class CachedMovie:
    modality = "haadf"

    def __init__(self, size: int, frames: int, pixel_nm: float, distinct: int = 8):
        movie = STEMMovie(STEMConfig(size=size, frames=distinct, pixel_size_nm=pixel_nm, seed=7))
        self._frames = [movie.frame(i) for i in range(distinct)]
        self.shape, self.frames, self.pixel_size_nm = (size, size), frames, pixel_nm
        self.meta = {"simulator": "bench (cached STEM frames)"}

    def frame(self, i: int):
        return self._frames[i % len(self._frames)]


async def main(argv: list[str]) -> None:
    endpoint, scan_id, size, frames, pixel_nm = argv
    source = CachedMovie(int(size), int(frames), float(pixel_nm))
    async with Instrument(endpoint) as inst:
        report = await stream_movie(inst, source, scan_id)
    print(json.dumps({"frames": report.messages, "elapsed_s": report.elapsed_s}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
