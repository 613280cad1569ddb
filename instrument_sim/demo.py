"""``scanlens demo``: service + simulated instrument + subscriber on loopback, scored against ground truth.

The service runs in this process on free loopback ports; the simulator is the very command an
operator would run (``scanlens sim eels``), started as a child process; a subscriber assembles the
live maps. At the end the recognized maps are compared with the simulator's ground truth and drawn
next to it in a PNG.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.app.config import Settings
from service.app.server import running
from service.client import Control, ScanResult, ServiceError, Subscriber

from .eels import PHASES, EELSConfig
from .figures import render_eels
from .sources import EELSSource

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger(__name__)


class DemoError(RuntimeError):
    pass


async def _run_simulator(args: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "instrument_sim.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DemoError(f"simulator exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    log.info("simulator: %s", out.decode().strip())


async def run_eels(cfg: EELSConfig, dwell_us: float, *, show_progress: bool, timeout: float = 120.0
                   ) -> tuple[ScanResult, float]:
    """Run one live EELS scan end to end; returns what the subscriber assembled and the wall time."""
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0")
    scan_id = f"demo-eels-{cfg.seed}"
    rows, cols = cfg.rows, cfg.cols
    t0 = time.perf_counter()
    async with running(settings) as server:
        async with Subscriber(server.endpoints["publish"], scan_id=scan_id) as sub, \
                Control(server.endpoints["control"]) as control:
            await sub.wait_ready()
            sim_args = ["eels", "--ingest", server.endpoints["ingest"], "--scan-id", scan_id, "--rows", str(rows),
                        "--cols", str(cols), "--dwell-us", str(dwell_us), "--seed", str(cfg.seed),
                        "--dose", str(cfg.dose), "--drift-ev", str(cfg.drift_eV), "--recognizer", "eels-mlp", "--quiet"]
            columns = (TextColumn("[bold]recognizing[/] " + scan_id), BarColumn(), MofNCompleteColumn(),
                       TextColumn("pixels"), TimeElapsedColumn())
            with Progress(*columns, disable=not show_progress, console=Console(stderr=True)) as bar:
                task = bar.add_task("pixels", total=rows * cols)

                def progress(result: ScanResult) -> None:
                    bar.update(task, completed=int(min(f.sum() for f in result.filled.values())))

                async with asyncio.TaskGroup() as tg:
                    sim = tg.create_task(_run_simulator(sim_args))
                    result = await sub.collect_scan(scan_id, timeout=timeout, progress=progress, control=control)
                    await sim
    return result, time.perf_counter() - t0


def score_eels(result: ScanResult, cfg: EELSConfig) -> dict[str, Any]:
    truth = EELSSource(cfg).sample
    rec = result.started.recognizers[0]
    maps = result.maps[rec]
    s = result.summary
    return {
        "modality": "eels",
        "recognizer": rec,
        "scan_id": s.scan_id,
        "state": s.state,
        "pixels": s.pixels_expected,
        "recognized": s.pixels_recognized,
        "accuracy": float(np.mean(maps["class"] == truth.phase)),
        "abundance_rmse": float(np.sqrt(np.mean((maps["abundance"] - truth.abundance) ** 2))),
        "lost": len(s.lost),
        "rejected": len(s.rejected),
        "unrecognized_pixels": s.pixels_expected - s.pixels_recognized,
        "latency_ms_p50": s.latency_ms_p50,
        "latency_ms_p99": s.latency_ms_p99,
        "class_fractions": s.recognizers[rec].class_fractions,
    }


@app.callback(invoke_without_command=True)
def demo(
    modality: Annotated[str, typer.Option(help="which simulated instrument: eels")] = "eels",
    rows: Annotated[int, typer.Option(min=1, help="scan rows")] = 128,
    cols: Annotated[int, typer.Option(min=1, help="scan columns")] = 128,
    dwell_us: Annotated[float, typer.Option("--dwell-us", help="pixel dwell time, µs (0 = as fast as possible)")] = 300.0,
    seed: Annotated[int, typer.Option(help="sample seed (the shipped models were never trained on seed 0)")] = 0,
    out: Annotated[Path, typer.Option(help="directory for the PNG and the JSON report")] = Path("demo-out"),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a report")] = False,
) -> None:
    """Watch a simulated scan being recognized live: start the service, the simulated instrument and a
    subscriber on loopback, then score the live maps against the simulator's ground truth.

    Writes <out>/demo-<modality>.png (maps next to ground truth) and <out>/demo-<modality>.json.
    Exits 1 if any pixel was not recognized.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if modality != "eels":
        typer.echo(f"error: unknown modality {modality!r}; available: eels", err=True)
        raise typer.Exit(2)
    cfg = EELSConfig(rows=rows, cols=cols, seed=seed)
    try:
        result, wall = asyncio.run(run_eels(cfg, dwell_us, show_progress=not as_json))
    except (DemoError, ServiceError, TimeoutError, OSError) as exc:
        typer.echo(f"error: demo failed: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    report = score_eels(result, cfg)
    report["wall_s"] = round(wall, 2)
    truth = EELSSource(cfg).sample
    maps = result.maps[report["recognizer"]]
    png = render_eels(out / f"demo-{modality}.png", truth_phase=truth.phase, truth_abundance=truth.abundance,
                      phase=maps["class"], confidence=maps["confidence"], abundance=maps["abundance"],
                      labels=list(PHASES),
                      title=f"scanlens live EELS recognition — {report['recognizer']}: phase accuracy "
                            f"{report['accuracy']:.4f}, abundance RMSE {report['abundance_rmse']:.4f}, "
                            f"latency p99 {report['latency_ms_p99'] or 0:.2f} ms")
    report["png"] = str(png)
    (out / f"demo-{modality}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(f"scan {report['scan_id']}: {report['pixels']} pixels, {report['recognized']} recognized, "
                   f"{report['lost']} messages lost, {report['rejected']} rejected ({report['state']})")
        typer.echo(f"phase accuracy   {report['accuracy']:.4f}")
        typer.echo(f"abundance RMSE   {report['abundance_rmse']:.4f}")
        typer.echo(f"latency p50/p99  {report['latency_ms_p50']:.2f} / {report['latency_ms_p99']:.2f} ms")
        typer.echo(f"maps             {png}")
    if report["unrecognized_pixels"]:
        raise typer.Exit(1)
