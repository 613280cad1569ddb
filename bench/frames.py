"""Frames per second through the service against bare ONNX Runtime on the same model, same run.

    python bench/frames.py [--model-dir service/model_files] [--model stem-unet] [--size 512] [--frames 40] [--json]
    python bench/frames.py --size 256 --frames 8 --json                            # small run, ~5 s

1. bare ORT: the image model's session alone on ``size``² frames at its own pixel size -> frames/s
   (inference only: what ONNX Runtime itself can do with this model here), in three configurations:
   one run at a time with 1 or with 2 intra-op threads, and two runs side by side with 1 thread
   each (what the service does by default on 2 cores); the fastest is the baseline. Always whole frames:
   above 512² the service segments in tiles (``frame_tile_px``), about 27 % more pixels at 1024².
2. service, flat out, policy lossless: a sender in its own process (bench/frame_sender.py) streams
   pre-rendered simulated STEM frames at the model's pixel size as fast as the service takes them;
   rate = frames / (scan_start -> summary). This includes transport, post-processing (atoms,
   defects) and tracking.
3. bare ORT again (best configuration), so that a machine whose load changed during the run shows
   up as two different baselines.

Prints a table, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scanlens.model_files import MODEL_DIR  # noqa: E402
from scanlens.app.config import Settings  # noqa: E402
from scanlens.app.server import running  # noqa: E402
from scanlens.client import Subscriber  # noqa: E402
from scanlens.pipeline import load_recognizers, open_recognizer  # noqa: E402
from scanlens.protocol.messages import ScanSummary  # noqa: E402


def bare_ort(path: Path, threads: int, size: int, frames: int, parallel: int = 1) -> float:
    """Frames/s of plain session.run loops (the service's session options, padding included):
    ``parallel`` Python threads share one session, ``frames`` runs in all."""
    rec = open_recognizer(path, threads=threads, tile_px=0)  # whole frames: bare, whatever the size
    rec.limit_runs(parallel)  # as many runs at once as asked, no more
    image = np.random.default_rng(0).poisson(50.0, size=(size, size)).astype(np.float32)
    rec.segment(image)
    counts = [frames // parallel + (i < frames % parallel) for i in range(parallel)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda n: [rec.segment(image) for _ in range(n)], counts))
    return frames / (time.perf_counter() - t0)


async def through_service(settings: Settings, size: int, frames: int, pixel_nm: float) -> ScanSummary:
    async with running(settings) as server:
        async with Subscriber(server.endpoints["publish"], topics_=["scan/bench-frames/summary"]) as sub:
            await sub.wait_ready()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "bench" / "frame_sender.py"), server.endpoints["ingest"], "bench-frames",
                str(size), str(frames), str(pixel_nm), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            summary = (await sub.recv(timeout=600)).header
            out, err = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(err.decode())
    assert isinstance(summary, ScanSummary), summary
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    p.add_argument("--model", default=None, help="image recognizer name (default: the first one)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--threads", type=int, default=Settings().inference_threads,
                   help="the service's ONNX Runtime intra-op threads per run (default: the service's default)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    recs = {n: r for n, r in load_recognizers(a.model_dir, threads=a.threads).items() if r.takes == "frames"}
    if not recs:
        sys.exit(f"no image recognizer in {a.model_dir}")
    rec = recs[a.model] if a.model else next(iter(recs.values()))
    pixel_nm = rec.pixel_size.size  # frames at the model's own pixel size: no rescaling cost
    n_bare = max(10, a.frames // 2)
    configs = {"1 thread": (1, 1), "2 threads": (2, 1), "2 runs x 1 thread": (1, 2)}
    bare = {}
    for label, (threads, parallel) in configs.items():
        print(f"model {rec.name}; bare ONNX Runtime, {label}, {a.size}² frames ...", file=sys.stderr)
        bare[label] = bare_ort(rec.path, threads, a.size, n_bare, parallel)
    best = max(bare, key=bare.get)
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=a.model_dir, models=[rec.name], inference_threads=a.threads)
    print(f"service ({a.threads} intra-op threads), flat out ...", file=sys.stderr)
    summary = asyncio.run(through_service(settings, a.size, a.frames, pixel_nm))
    print("bare ONNX Runtime again ...", file=sys.stderr)
    bare_after = bare_ort(rec.path, configs[best][0], a.size, n_bare, configs[best][1])
    frames_done = summary.recognizers[rec.name].frames_recognized
    rate = frames_done / summary.duration_s
    baseline = max(bare[best], bare_after)
    report = {"model": rec.name, "size": a.size, "frames": a.frames, "service_threads": a.threads,
              "bare_ort_frames_per_s": bare, "bare_ort_best": best, "bare_ort_best_after_frames_per_s": bare_after,
              "baseline_frames_per_s": baseline, "service_frames_per_s": rate, "ratio": rate / baseline,
              "lost": summary.n_lost, "skipped": len(summary.skipped), "state": summary.state,
              "latency_ms_p50": summary.latency_ms_p50, "latency_ms_p99": summary.latency_ms_p99}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    for label, v in bare.items():
        print(f"bare ONNX Runtime, {label:<18} {v:8.2f} frames/s  ({a.size}², {rec.name})")
    print(f"bare ONNX Runtime, again ({best}) {bare_after:8.2f} frames/s")
    print(f"service ({a.threads} thread(s) per run), flat out {rate:8.2f} frames/s  ratio {report['ratio']:.2f} of the best bare rate  "
          f"lost {report['lost']}, state {report['state']}, latency p50 {summary.latency_ms_p50:.0f} ms")


if __name__ == "__main__":
    main()
