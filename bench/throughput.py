"""Service throughput and latency against bare ONNX Runtime, measured in the same run.

    python bench/throughput.py [--channels 2048 | --model-dir service/model_files --model eels-mlp] [--line 256]
    python bench/throughput.py --spectra 65536 --paced-spectra 16384 --json      # small run, ~10 s

1. bare ORT: the recognizer's session alone, batches of ``max_batch_pixels`` float32 spectra on the
   model axis, same thread settings as the service -> spectra/s.
2. service, flat out: the service in this process, a sender in its own process streaming lines of
   ``--line`` spectra on the model axis as fast as the service takes them -> spectra/s, ratio to 1.
3. service, paced at ``--paced-rate`` spectra/s (default 16 000): latency p50/p99 from the summary.

With ``--record DIR`` the flat-out scan runs ``--record-pairs`` times more without and with recording
(``serve --record``) in turn; each pair's ratio and their median are reported. Each recording is
deleted after its pair, so every pair meets the same disk. Prints a table, or one JSON object with --json. Numbers depend on the machine; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cli_types import count  # noqa: E402
from mlp_model import write_mlp  # noqa: E402
from scanlens.app.config import Settings  # noqa: E402
from scanlens.app.server import running  # noqa: E402
from scanlens.client import Subscriber  # noqa: E402
from scanlens.protocol.messages import ScanSummary  # noqa: E402
from scanlens.pipeline import open_recognizer, load_recognizers  # noqa: E402


def bare_ort(path: Path, threads: int, parallel: int, batch: int, spectra: int, repeats: int = 3) -> float:
    """Spectra/s of the session alone: ``parallel`` threads each calling ``run`` on its own batches."""
    rec = open_recognizer(path, threads=threads)
    x = np.random.default_rng(0).poisson(200.0, size=(batch, rec.channels)).astype(np.float32)

    def work(n: int) -> None:
        for _ in range(n):
            rec.run(x)

    runs = max(1, spectra // batch // parallel)
    best = 0.0
    with ThreadPoolExecutor(parallel) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(work, [runs] * parallel))
            best = max(best, runs * parallel * batch / (time.perf_counter() - t0))
    return best


async def through_service(settings: Settings, rec_name: str, axis, rows: int, cols: int, dwell_us: float,
                          scan_id: str) -> dict:
    async with running(settings) as server:
        # only the summary: a subscriber to every maps message would compete with the service in this process
        async with Subscriber(server.endpoints["publish"], topics_=[f"scan/{scan_id}/summary"]) as sub:
            await sub.wait_ready()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "bench" / "sender.py"), server.endpoints["ingest"], scan_id, str(rows),
                str(cols), str(axis.size), str(axis.offset), str(axis.scale), axis.units, str(dwell_us),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            s = (await sub.recv(timeout=300)).header
            assert isinstance(s, ScanSummary), s
            out, err = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(err.decode())
    return {"pixels": s.pixels_recognized, "lost": s.n_lost, "rejected": len(s.rejected),
            "duration_s": s.duration_s, "rate": s.pixels_recognized / s.duration_s,
            "latency_ms_p50": s.latency_ms_p50, "latency_ms_p99": s.latency_ms_p99,
            "sender": json.loads(out)}


def recording_pairs(settings: Settings, a: argparse.Namespace, rec_name: str, axis) -> dict:
    """The flat-out scan without and with recording, ``a.record_pairs`` times in turn (this machine's
    run-to-run scatter is larger than the effect): each pair's ratio and their median."""
    on_settings = settings.model_copy(update={"record_dir": a.record})
    off, on = [], []
    for i in range(a.record_pairs):
        print(f"pair {i + 1}/{a.record_pairs}: flat out, not recording ...", file=sys.stderr)
        off.append(asyncio.run(through_service(settings, rec_name, axis, a.spectra // a.line, a.line, 0.0,
                                               "bench-flat")))
        print(f"pair {i + 1}/{a.record_pairs}: flat out, recording into {a.record} ...", file=sys.stderr)
        scan_id = f"bench-record-{i + 1}"
        on.append(asyncio.run(through_service(on_settings, rec_name, axis, a.spectra // a.line, a.line, 0.0, scan_id)))
        on[-1]["bytes_on_disk"] = sum(f.stat().st_size for f in a.record.glob(f"{scan_id}*.h5"))
        for f in a.record.glob(f"{scan_id}*.h5"):  # the next pair starts with the disk as this one did
            f.unlink()
    ratios = [b["rate"] / o["rate"] for o, b in zip(off, on)]
    return {"off": off, "on": on, "ratios": ratios, "ratio_to_not_recording": float(np.median(ratios))}



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None,
                   help="directory of the recognizer to measure (default: the reference MLP of docs/performance.md, see --channels)")
    p.add_argument("--model", default=None, help="recognizer name in --model-dir (default: the first)")
    p.add_argument("--channels", type=int, default=2048, help="input size of the default MLP C -> 128 -> 64 -> 4")
    p.add_argument("--spectra", type=int, default=262_144, help="spectra per flat-out measurement")
    p.add_argument("--line", type=int, default=256, help="spectra per data message")
    p.add_argument("--paced-rate", type=float, default=16_000.0, help="spectra/s for the latency run")
    p.add_argument("--paced-spectra", type=int, default=65_536)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per inference run")
    p.add_argument("--parallel", type=int, default=2, help="inference runs in flight at once")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--record", type=Path, default=None,
                   help="also run the flat-out scan with recording into this directory (serve --record) and "
                        "report its rate as a ratio to the same scan without recording, measured in this run")
    p.add_argument("--record-pairs", type=count, default=3,
                   help="with --record: how many (not recording, recording) pairs to run in turn; the ratio "
                        "reported is their median")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    if a.model_dir is None:
        a.model_dir = Path(tempfile.mkdtemp(prefix="scanlens-bench-"))
        write_mlp(a.model_dir / "mlp.onnx", a.channels)
    recs = load_recognizers(a.model_dir, [a.model] if a.model else None, threads=a.threads)
    rec = recs[a.model] if a.model else next(iter(recs.values()))
    axis = rec.card.input.axis
    print(f"model {rec.name}: {rec.channels} channels; measuring bare ONNX Runtime ...", file=sys.stderr)
    # the baseline is the best bare ORT can do here: one run on 2 threads, or the service's configuration
    bare_configs = {(2, 1), (a.threads, a.parallel)}
    bare_by_config = {f"{t}x{p}": bare_ort(rec.path, t, p, a.batch, a.spectra) for t, p in sorted(bare_configs)}
    bare = max(bare_by_config.values())
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=a.model_dir, models=[rec.name], inference_threads=a.threads,
                        inference_parallel=a.parallel, max_batch_pixels=a.batch)
    print("service, flat out ...", file=sys.stderr)
    flat = asyncio.run(through_service(settings, rec.name, axis, a.spectra // a.line, a.line, 0.0, "bench-flat"))
    print(f"service, paced at {a.paced_rate:g} spectra/s ...", file=sys.stderr)
    paced = asyncio.run(through_service(settings, rec.name, axis, a.paced_spectra // a.line, a.line,
                                        1e6 / a.paced_rate, "bench-paced"))
    recorded = None
    if a.record is not None:
        recorded = recording_pairs(settings, a, rec.name, axis)
    report = {"model": rec.name, "channels": rec.channels, "line_spectra": a.line, "batch": a.batch,
              "threads": a.threads, "bare_ort_spectra_per_s": bare,
              "bare_ort_by_threads_x_parallel": bare_by_config, "parallel": a.parallel, "service_spectra_per_s": flat["rate"],
              "ratio": flat["rate"] / bare, "flat": flat, "paced_rate": a.paced_rate, "paced": paced,
              "recording": recorded}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    for config, rate in bare_by_config.items():
        print(f"bare ONNX Runtime {config:>5} {rate:12,.0f} spectra/s   (intra-op threads x runs in parallel)")
    print(f"service, flat out      {flat['rate']:12,.0f} spectra/s   ratio {report['ratio']:.2f}   "
          f"lost {flat['lost']}, rejected {flat['rejected']}")
    print(f"service, paced {a.paced_rate:,.0f}/s  latency p50 {paced['latency_ms_p50']:.2f} ms, "
          f"p99 {paced['latency_ms_p99']:.2f} ms   lost {paced['lost']}")
    if recorded is not None:
        for i, (off, on) in enumerate(zip(recorded["off"], recorded["on"])):
            print(f"pair {i + 1}: not recording {off['rate']:12,.0f}, recording {on['rate']:12,.0f} spectra/s   ratio "
                  f"{on['rate'] / off['rate']:.2f}   lost {on['lost']}, {on['bytes_on_disk']:,} bytes on disk")
        print(f"recording on / off, median of {len(recorded['ratios'])} interleaved pairs: "
              f"{recorded['ratio_to_not_recording']:.2f}")


if __name__ == "__main__":
    main()
