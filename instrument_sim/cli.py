"""``scanlens sim``: simulated instruments that stream to a running scanlens service."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.client import Instrument
from service.protocol.messages import Axis

from .eels import DEFAULT_AXIS, EELSConfig
from .sources import EELSSource, ScanSource
from .stream import stream_scan

app = typer.Typer(help="Simulated instruments: stream a synthetic scan to `scanlens serve` over ZeroMQ.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)



@app.callback()
def _group() -> None:
    """Simulated instruments."""


Ingest = Annotated[str, typer.Option(help="ingest endpoint of the service")]
DwellUs = Annotated[float, typer.Option("--dwell-us", help="pixel dwell time in µs; 0 = as fast as the service takes")]


def play(source: ScanSource, ingest: str, scan_id: str, dwell_us: float, recognizers: list[str] | None,
         quiet: bool) -> None:
    """Stream ``source`` with a progress bar; prints a one-line JSON report at the end."""

    async def run() -> None:
        columns = (TextColumn(f"[bold]{scan_id}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("lines"),
                   TimeRemainingColumn())
        with Progress(*columns, disable=quiet, transient=True) as bar:
            task = bar.add_task("stream", total=source.shape[0])
            async with Instrument(ingest) as inst:
                report = await stream_scan(inst, source, scan_id, dwell_s=dwell_us * 1e-6,
                                           recognizers=recognizers,
                                           progress=lambda done, total: bar.update(task, completed=done))
        typer.echo(json.dumps({"scan_id": report.scan_id, "messages": report.messages, "pixels": report.pixels,
                               "elapsed_s": round(report.elapsed_s, 3),
                               "pixels_per_s": round(report.pixel_rate, 1)}))

    asyncio.run(run())


@app.command()
def eels(
    ingest: Ingest = "tcp://127.0.0.1:5555",
    scan_id: Annotated[Optional[str], typer.Option(help="scan id (default eels-<time>)")] = None,
    rows: Annotated[int, typer.Option(min=1, help="scan rows (one message per row)")] = 128,
    cols: Annotated[int, typer.Option(min=1, help="pixels per row")] = 128,
    dwell_us: DwellUs = 300.0,
    dose: Annotated[float, typer.Option(help="expected counts per spectrum")] = EELSConfig.dose,
    read_noise: Annotated[float, typer.Option(help="read noise, counts rms per channel")] = EELSConfig.read_noise,
    drift_ev: Annotated[float, typer.Option("--drift-ev", help="peak-to-peak energy drift over the scan, eV")] = 0.0,
    channels: Annotated[int, typer.Option(help="spectrometer channels")] = DEFAULT_AXIS.size,
    offset_ev: Annotated[float, typer.Option("--offset-ev", help="energy of channel 0, eV")] = DEFAULT_AXIS.offset,
    dispersion_ev: Annotated[float, typer.Option("--dispersion-ev", help="eV per channel")] = DEFAULT_AXIS.scale,
    seed: Annotated[int, typer.Option(help="sample and noise seed (same seed, same data)")] = 0,
    recognizer: Annotated[Optional[list[str]], typer.Option(help="recognizer to run (repeat; default: all eels)")] = None,
    truth: Annotated[Optional[Path], typer.Option(help="save the ground truth (phase, abundance) to this .npz")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Stream an EELS spectrum image of an STO / LSMO / BFO oxide heterostructure, line by line.

    Layers with intermixed, rough interfaces; Poisson and read noise; optional energy drift. The
    spectrometer axis (channels, offset, dispersion) is yours to choose: the service resamples it onto
    each recognizer's axis, or refuses the scan if it does not cover it.
    """
    axis = Axis(size=channels, offset=offset_ev, scale=dispersion_ev, units="eV")
    cfg = EELSConfig(rows=rows, cols=cols, axis=axis, dose=dose, read_noise=read_noise, drift_eV=drift_ev, seed=seed)
    source = EELSSource(cfg)
    if truth is not None:
        source.save_ground_truth(truth)
    play(source, ingest, scan_id or f"eels-{int(time.time())}", dwell_us, recognizer, quiet)


if __name__ == "__main__":  # the demo starts the simulator as `python -m instrument_sim.cli`
    app()
