"""Service throughput and latency against bare ONNX Runtime, measured in the same run.

    python bench/throughput.py [--model-dir models] [--model eels-mlp] [--spectra 262144] [--line 256]

1. bare ORT: the recognizer's session alone, batches of ``max_batch_pixels`` float32 spectra on the
   model axis, same thread settings as the service -> spectra/s.
2. service, flat out: the service in this process, a sender in its own process streaming lines of
   ``--line`` spectra on the model axis as fast as the service takes them -> spectra/s, ratio to 1.
3. service, paced at ``--paced-rate`` spectra/s (default 16 000): latency p50/p99 from the summary.

Prints a table, or one JSON object with --json. Numbers depend on the machine; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import MODEL_DIR  # noqa: E402
from service.app.config import Settings  # noqa: E402
from service.app.server import running  # noqa: E402
from service.client import Subscriber  # noqa: E402
from service.pipeline.recognizer import load_recognizers  # noqa: E402


def bare_ort(rec, batch: int, spectra: int, repeats: int) -> float:
    x = np.random.default_rng(0).poisson(200.0, size=(batch, rec.channels)).astype(np.float32)
    rec.run(x)
    best = 0.0
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while n < spectra:
            rec.run(x)
            n += batch
        best = max(best, n / (time.perf_counter() - t0))
    return best


async def through_service(settings: Settings, rec_name: str, axis, rows: int, cols: int, dwell_us: float,
                          scan_id: str) -> dict:
    async with running(settings) as server:
        async with Subscriber(server.endpoints["publish"], scan_id=scan_id) as sub:
            await sub.wait_ready()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "bench" / "sender.py"), server.endpoints["ingest"], scan_id, str(rows),
                str(cols), str(axis.size), str(axis.offset), str(axis.scale), axis.units, str(dwell_us),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            first = None

            def progress(result) -> None:
                nonlocal first
                if first is None:
                    first = time.perf_counter()

            result = await sub.collect_scan(scan_id, timeout=120, progress=progress)
            t_end = time.perf_counter()
            out, err = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(err.decode())
    s = result.summary
    return {"pixels": s.pixels_recognized, "lost": len(s.lost), "rejected": len(s.rejected),
            "duration_s": s.duration_s, "rate": s.pixels_recognized / s.duration_s,
            "latency_ms_p50": s.latency_ms_p50, "latency_ms_p99": s.latency_ms_p99,
            "sender": json.loads(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    p.add_argument("--model", default=None, help="recognizer name (default: the first)")
    p.add_argument("--spectra", type=int, default=262_144, help="spectra per flat-out measurement")
    p.add_argument("--line", type=int, default=256, help="spectra per data message")
    p.add_argument("--paced-rate", type=float, default=16_000.0, help="spectra/s for the latency run")
    p.add_argument("--paced-spectra", type=int, default=65_536)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    recs = load_recognizers(a.model_dir, [a.model] if a.model else None, threads=a.threads)
    rec = recs[a.model] if a.model else next(iter(recs.values()))
    axis = rec.card.input.axis
    print(f"model {rec.name}: {rec.channels} channels; measuring bare ONNX Runtime ...", file=sys.stderr)
    bare = bare_ort(rec, a.batch, a.spectra, repeats=3)
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=a.model_dir, models=[rec.name], inference_threads=a.threads,
                        max_batch_pixels=a.batch)
    print("service, flat out ...", file=sys.stderr)
    flat = asyncio.run(through_service(settings, rec.name, axis, a.spectra // a.line, a.line, 0.0, "bench-flat"))
    print(f"service, paced at {a.paced_rate:g} spectra/s ...", file=sys.stderr)
    paced = asyncio.run(through_service(settings, rec.name, axis, a.paced_spectra // a.line, a.line,
                                        1e6 / a.paced_rate, "bench-paced"))
    report = {"model": rec.name, "channels": rec.channels, "line_spectra": a.line, "batch": a.batch,
              "threads": a.threads, "bare_ort_spectra_per_s": bare, "service_spectra_per_s": flat["rate"],
              "ratio": flat["rate"] / bare, "flat": flat, "paced_rate": a.paced_rate, "paced": paced}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"bare ONNX Runtime      {bare:12,.0f} spectra/s")
    print(f"service, flat out      {flat['rate']:12,.0f} spectra/s   ratio {report['ratio']:.2f}   "
          f"lost {flat['lost']}, rejected {flat['rejected']}")
    print(f"service, paced {a.paced_rate:,.0f}/s  latency p50 {paced['latency_ms_p50']:.2f} ms, "
          f"p99 {paced['latency_ms_p99']:.2f} ms   lost {paced['lost']}")


if __name__ == "__main__":
    main()
