"""Does a dashboard slow acquisition? Service throughput with `scanlens dashboard` and its pages against none.

    python bench/dashboard.py [--channels 2048 | --model-dir service/model_files --model eels-mlp] [--line 256]
    python bench/dashboard.py --spectra 65536 --json      # small run, ~20 s

1. service, flat out, nobody watching: the service in this process, a sender in its own process streaming
   lines of ``--line`` spectra on the model axis as fast as the service takes them -> spectra/s.
2. the same scan with `scanlens dashboard` running in its own process and no page (issue 13's baseline);
3. the same scan with `scanlens dashboard` running in its own process, subscribed to the service, and
   ``--pages`` websocket clients in a third process reading every frame at the page rate (acknowledging
   each, as the page does) plus ``--silent`` clients that connect, pick the scan and never read
   -> spectra/s, and the ratio to 1 (the target is >= 0.95: the dashboard is just another subscriber,
   whose backlog the service's PUB socket drops for it alone).

Steps 2 and 3 run ``--pairs`` times in turn (default 3); each pair's ratio and their median are reported.
The pages' frame rates are reported too (each is capped at the dashboard's ``--max-rate-hz``). Prints a
table, or one JSON object with --json. Numbers depend on the machine; compare the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cli_types import count  # noqa: E402
from scanlens.app.config import Settings  # noqa: E402
from scanlens.app.server import Server, running  # noqa: E402
from scanlens.client import Subscriber  # noqa: E402
from scanlens.protocol.messages import ScanSummary  # noqa: E402


# ------------------------------------------------------------------ the pages (run in their own process)

async def _page(url: str, reading: bool, seconds: float, counts: dict[str, int], key: str) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None) as ws:
        selected = None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame = await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if isinstance(frame, str):
                continue
            n = int.from_bytes(frame[:4], "little")
            header = json.loads(frame[4:4 + n])
            counts[key] += 1
            scans = [s for s in header.get("scans", []) if s["state"] == "open"]
            if scans and scans[-1]["id"] != selected:
                selected = scans[-1]["id"]
                await ws.send(json.dumps({"select": selected}))
            if not reading and selected is not None:
                await asyncio.sleep(deadline - time.monotonic())  # it chose a scan, and reads no more
                break
            await ws.send(json.dumps({"ack": counts[key]}))


async def pages_main(url: str, reading: int, silent: int, seconds: float) -> None:
    counts = {f"page{i}": 0 for i in range(reading)} | {f"silent{i}": 0 for i in range(silent)}
    await asyncio.gather(*(_page(url, k.startswith("page"), seconds, counts, k) for k in counts))
    print(json.dumps({k: v / seconds for k, v in counts.items()}))


# ------------------------------------------------------------------ the measurement

@contextlib.asynccontextmanager
async def dashboard_process(publish: str, control: str, max_rate_hz: float):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from scanlens.app.cli import main; main()", "dashboard", "--publish", publish,
        "--control", control, "--port", "0", "--max-rate-hz", str(max_rate_hz),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        m = re.search(r"on http://(\S+)/", line)
        if not m:
            raise RuntimeError(f"the dashboard did not start: {line!r}")
        yield f"ws://{m.group(1)}/ws"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def flat_out(server: Server, axis, rows: int, cols: int, scan_id: str) -> dict:
    """One scan streamed as fast as the service takes it, by bench/sender.py in its own process (as in
    bench/throughput.py); its summary says how fast it went."""
    async with Subscriber(server.endpoints["publish"], topics_=[f"scan/{scan_id}/summary"]) as sub:
        await sub.wait_ready()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "sender.py"), server.endpoints["ingest"], scan_id, str(rows),
            str(cols), str(axis.size), str(axis.offset), str(axis.scale), axis.units, "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        s = (await sub.recv(timeout=300)).header
        assert isinstance(s, ScanSummary), s
        _, err = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(err.decode())
    return {"pixels": s.pixels_recognized, "lost": s.n_lost, "duration_s": s.duration_s,
            "rate": s.pixels_recognized / s.duration_s, "latency_ms_p99": s.latency_ms_p99}


async def alone(settings: Settings, axis, rows: int, cols: int) -> dict:
    async with running(settings) as server:
        return await flat_out(server, axis, rows, cols, "bench-alone")


async def watched(settings: Settings, axis, rows: int, cols: int, a: argparse.Namespace) -> dict:
    """The same scan with a dashboard (own process) and its pages (a third process) watching."""
    async with running(settings) as server:
        async with dashboard_process(server.endpoints["publish"], server.endpoints["control"], a.max_rate_hz) as url:
            pages = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--pages-url", url, "--pages", str(a.pages), "--silent", str(a.silent),
                "--pages-seconds", str(a.pages_seconds), stdout=asyncio.subprocess.PIPE)
            await asyncio.sleep(1.0)  # the pages are connected and waiting for a scan
            result = await flat_out(server, axis, rows, cols, "bench-watched")
            out, _ = await pages.communicate()
    result["pages_frames_per_s"] = json.loads(out) if out.strip() else {}
    return result



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None,
                   help="directory of the recognizer to measure (default: the reference MLP, see --channels)")
    p.add_argument("--model", default=None, help="recognizer name in --model-dir (default: the first)")
    p.add_argument("--channels", type=int, default=2048, help="input size of the default MLP C -> 128 -> 64 -> 4")
    p.add_argument("--spectra", type=int, default=262_144, help="spectra per measurement")
    p.add_argument("--line", type=int, default=256, help="spectra per data message")
    p.add_argument("--pages", type=int, default=3, help="websocket clients reading at the page rate")
    p.add_argument("--silent", type=int, default=1, help="websocket clients that never read")
    p.add_argument("--max-rate-hz", type=float, default=20.0, help="the dashboard's cap per page")
    p.add_argument("--pairs", type=count, default=3,
                   help="(no page, pages) measurements run in turn; the ratio reported is their median")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pages-url", help=argparse.SUPPRESS)  # internal: run the pages (in their own process)
    p.add_argument("--pages-seconds", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.pages_url:
        asyncio.run(pages_main(a.pages_url, a.pages, a.silent, a.pages_seconds))
        return

    from mlp_model import write_mlp
    from scanlens.pipeline import load_recognizers

    if a.model_dir is None:
        a.model_dir = Path(tempfile.mkdtemp(prefix="scanlens-bench-"))
        write_mlp(a.model_dir / "mlp.onnx", a.channels)
    recs = load_recognizers(a.model_dir, [a.model] if a.model else None, threads=1)
    rec = recs[a.model] if a.model else next(iter(recs.values()))
    axis = rec.card.input.axis
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=a.model_dir, models=[rec.name], user_model_dir=None)
    rows = a.spectra // a.line
    print("service, flat out, nobody watching ...", file=sys.stderr)
    first = asyncio.run(alone(settings, axis, rows, a.line))
    a.pages_seconds = a.pages_seconds or max(5.0, 2.0 * first["duration_s"] + 2.0)
    no_page = argparse.Namespace(**{**vars(a), "pages": 0, "silent": 0})
    bares, seens = [], []
    for i in range(a.pairs):  # in turn: this machine's run-to-run scatter (±15 %) is larger than the effect
        print(f"pair {i + 1}/{a.pairs}: service, flat out, a dashboard subscribed with no page ...", file=sys.stderr)
        bares.append(asyncio.run(watched(settings, axis, rows, a.line, no_page)))
        print(f"pair {i + 1}/{a.pairs}: service, flat out, a dashboard with {a.pages} reading and {a.silent} silent "
              "pages ...", file=sys.stderr)
        seens.append(asyncio.run(watched(settings, axis, rows, a.line, a)))
    ratios = [seen["rate"] / bare["rate"] for bare, seen in zip(bares, seens)]
    report = {"model": rec.name, "channels": rec.channels, "line_spectra": a.line, "pages": a.pages,
              "silent": a.silent, "max_rate_hz": a.max_rate_hz, "alone_spectra_per_s": first["rate"],
              "dashboard_no_page_spectra_per_s": [b["rate"] for b in bares],
              "watched_spectra_per_s": [w["rate"] for w in seens],
              "ratio_to_nobody_watching": [w["rate"] / first["rate"] for w in seens],
              # the target: pages against the dashboard subscribed with none (>= 0.95)
              "ratios_to_dashboard_without_pages": ratios,
              "ratio_to_dashboard_without_pages": float(statistics.median(ratios)),
              "pages_frames_per_s": [w["pages_frames_per_s"] for w in seens], "alone": first,
              "dashboard_no_page": bares, "watched": seens}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"nobody watching        {first['rate']:12,.0f} spectra/s")
    for i, (bare, seen, ratio) in enumerate(zip(bares, seens, ratios)):
        print(f"pair {i + 1}: dashboard, no page {bare['rate']:10,.0f}; dashboard + pages {seen['rate']:10,.0f} spectra/s"
              f"   ratio {ratio:.3f}   page frames/s "
              + ", ".join(f"{k} {v:.1f}" for k, v in seen["pages_frames_per_s"].items()))
    print(f"dashboard + pages / dashboard without pages, median of {len(ratios)} pairs: "
          f"{report['ratio_to_dashboard_without_pages']:.3f} (target >= 0.95)")

if __name__ == "__main__":
    main()
