"""``scanlens sim``: simulated instruments that stream to a running scanlens service."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from scanlens.client import Instrument
from scanlens.protocol.messages import Axis

from .eels import DEFAULT_AXIS, EELSConfig
from .sources import EELSSource, ScanSource
from .stream import stream_scan

if TYPE_CHECKING:
    from .stem import STEMConfig

app = typer.Typer(help="Simulated instruments: stream a synthetic scan to `scanlens serve` over ZeroMQ.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)



@app.callback()
def _group() -> None:
    """Simulated instruments."""


# options every simulated instrument shares
DEFAULT_INGEST = "tcp://127.0.0.1:5555"  # where `scanlens serve` listens by default
Ingest = Annotated[str, typer.Option(help="ingest endpoint of the service")]
ScanId = Annotated[Optional[str], typer.Option(help="scan id (default <modality>-<time>)")]
Rows = Annotated[int, typer.Option(min=1, help="scan rows (one message per row)")]
Cols = Annotated[int, typer.Option(min=1, help="pixels per row")]
DwellUs = Annotated[float, typer.Option("--dwell-us", min=0.0, help="pixel dwell time in µs; 0 = as fast as the service takes")]
Seed = Annotated[int, typer.Option(help="sample and noise seed (same seed, same data)")]
Recognizers = Annotated[Optional[list[str]], typer.Option(
    "--recognizer", help="recognizer to run (repeat; `pca` is built in; default: all of the modality)")]
Truth = Annotated[Optional[Path], typer.Option(help="save the ground truth to this .npz")]
Quiet = Annotated[bool, typer.Option(help="no progress bar")]

# options of the STEM movie (`stem`) that `stem-frame` shares, so that both make the same movie
FrameSize = Annotated[int, typer.Option(min=64, max=2048, help="frame edge, pixels (square frames)")]
PixelSizeNm = Annotated[float, typer.Option("--pixel-size-nm", help="pixel size, nm")]
Dose = Annotated[Optional[float], typer.Option(help="expected counts at a metal column (default: simulator's)")]
Lattice = Annotated[str, typer.Option(help="ws2 or graphene")]
Defects = Annotated[Optional[int], typer.Option(help="number of defects (default: simulator's)")]


def play(source: ScanSource, ingest: str, scan_id: str | None, dwell_us: float, recognizers: list[str] | None,
         quiet: bool, truth: Path | None = None) -> None:
    """Save the ground truth if asked, stream ``source`` with a progress bar, print a one-line JSON report."""
    if truth is not None:
        source.save_ground_truth(truth)
    scan_id = scan_id or f"{source.modality}-{int(time.time())}"

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
    ingest: Ingest = DEFAULT_INGEST,
    scan_id: ScanId = None,
    rows: Rows = 128,
    cols: Cols = 128,
    dwell_us: DwellUs = 300.0,
    dose: Annotated[float, typer.Option(help="expected counts per spectrum")] = EELSConfig.dose,
    read_noise: Annotated[float, typer.Option(help="read noise, counts rms per channel")] = EELSConfig.read_noise,
    drift_ev: Annotated[float, typer.Option("--drift-ev", help="peak-to-peak energy drift over the scan, eV")] = 0.0,
    channels: Annotated[int, typer.Option(help="spectrometer channels")] = DEFAULT_AXIS.size,
    offset_ev: Annotated[float, typer.Option("--offset-ev", help="energy of channel 0, eV")] = DEFAULT_AXIS.offset,
    dispersion_ev: Annotated[float, typer.Option("--dispersion-ev", help="eV per channel")] = DEFAULT_AXIS.scale,
    unknown_region: Annotated[bool, typer.Option(help="add a region of a fourth phase not in the reference set")] = False,
    seed: Seed = 0,
    recognizer: Recognizers = None,
    truth: Truth = None,
    quiet: Quiet = False,
) -> None:
    """Stream an EELS spectrum image of an STO / LSMO / BFO oxide heterostructure, line by line.

    Layers with intermixed, rough interfaces; Poisson and read noise; optional energy drift and an
    optional region of an unknown fourth phase. The spectrometer axis (channels, offset, dispersion) is
    yours to choose: the service resamples it onto each recognizer's axis, or refuses the scan if it
    does not cover it.
    """
    axis = Axis(size=channels, offset=offset_ev, scale=dispersion_ev, units="eV")
    cfg = EELSConfig(rows=rows, cols=cols, axis=axis, dose=dose, read_noise=read_noise, drift_eV=drift_ev,
                     unknown_region=unknown_region, seed=seed)
    play(EELSSource(cfg), ingest, scan_id, dwell_us, recognizer, quiet, truth)


@app.command()
def bepfm(
    ingest: Ingest = DEFAULT_INGEST,
    scan_id: ScanId = None,
    rows: Rows = 128,
    cols: Cols = 128,
    dwell_us: DwellUs = 300.0,
    noise: Annotated[float, typer.Option(help="rms of the complex measurement noise per frequency bin")] = 1.0,
    pixel_size_um: Annotated[float, typer.Option("--pixel-size-um", help="scan step, µm")] = 0.1,
    seed: Seed = 0,
    recognizer: Recognizers = None,
    truth: Truth = None,
    quiet: Quiet = False,
) -> None:
    """Stream a band-excitation PFM scan of M. lysodeikticus cocci and P. fluorescens rods on a substrate.

    Per pixel: amplitude and phase of a damped harmonic oscillator response over a frequency band around
    the contact resonance (components "amplitude", "phase"), with class-dependent, overlapping
    distributions of resonance frequency, quality factor, amplitude and phase, cell-to-cell variation
    and noise.
    """
    from .bepfm import BEPFMConfig, BEPFMSource

    cfg = BEPFMConfig(rows=rows, cols=cols, noise=noise, pixel_size_um=pixel_size_um, seed=seed)
    play(BEPFMSource(cfg), ingest, scan_id, dwell_us, recognizer, quiet, truth)


@app.command()
def loops(
    ingest: Ingest = DEFAULT_INGEST,
    scan_id: ScanId = None,
    rows: Rows = 64,
    cols: Cols = 64,
    dwell_us: DwellUs = 1000.0,
    seed: Seed = 0,
    recognizer: Recognizers = None,
    truth: Truth = None,
    quiet: Quiet = False,
) -> None:
    """Stream ferroelectric switching loops from the random-bond random-field Ising model (Glauber dynamics).

    Per pixel the polarization of both field sweeps (components "up", "down") of a sample whose J0, dJ
    and dh vary across the scan, with measurement noise.
    """
    from .loops import LoopsConfig, LoopsSource

    play(LoopsSource(LoopsConfig(rows=rows, cols=cols, seed=seed)), ingest, scan_id, dwell_us, recognizer, quiet,
         truth)


def _stem_config(size: int, frames: int, pixel_size_nm: float, lattice: str, seed: int, dose: float | None,
                 defects: int | None) -> STEMConfig:
    """The movie the STEM options describe; ``dose`` and ``defects`` left as None keep the simulator's defaults."""
    from .stem import STEMConfig

    overrides = {k: v for k, v in {"dose": dose, "n_defects": defects}.items() if v is not None}
    return STEMConfig(size=size, frames=frames, pixel_size_nm=pixel_size_nm, lattice=lattice, seed=seed, **overrides)


@app.command()
def stem(
    ingest: Ingest = DEFAULT_INGEST,
    scan_id: ScanId = None,
    size: FrameSize = 512,
    frames: Annotated[int, typer.Option(min=1, help="frames in the movie")] = 100,
    frame_ms: Annotated[float, typer.Option("--frame-ms", min=0.0, help="frame period, ms; 0 = as fast as the service takes")] = 40.0,
    pixel_size_nm: PixelSizeNm = 0.02,
    dose: Dose = None,
    lattice: Lattice = "ws2",
    defects: Defects = None,
    policy: Annotated[str, typer.Option(help="lossless (every frame) or latest (newest frame wins)")] = "lossless",
    seed: Seed = 0,
    recognizer: Recognizers = None,
    truth: Truth = None,
    quiet: Quiet = False,
) -> None:
    """Stream an atomic-resolution HAADF STEM movie of WS2 (or graphene) with diffusing, transforming defects.

    Z-contrast columns, vacancies, dopants and adatoms, probe blur, Poisson noise, drift and line jitter;
    defects diffuse with a known diffusion coefficient per class (vacancies and dopants hop between
    lattice sites, adatoms walk freely) and change class by a known Markov chain. Frames carry their
    pixel size: the service rescales them to its model's.
    """
    from .stem import STEMSource
    from .stream import stream_movie

    try:
        source = STEMSource(_stem_config(size, frames, pixel_size_nm, lattice, seed, dose, defects))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if truth is not None:
        source.save_ground_truth(truth)
    sid = scan_id or f"haadf-{int(time.time())}"

    async def run() -> None:
        columns = (TextColumn(f"[bold]{sid}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                   TimeRemainingColumn())
        with Progress(*columns, disable=quiet, transient=True) as bar:
            task = bar.add_task("stream", total=frames)
            async with Instrument(ingest) as inst:
                report = await stream_movie(inst, source, sid, frame_interval_s=frame_ms * 1e-3, policy=policy,
                                            recognizers=recognizer,
                                            progress=lambda done, total: bar.update(task, completed=done))
        typer.echo(json.dumps({"scan_id": report.scan_id, "messages": report.messages, "frames": frames,
                               "elapsed_s": round(report.elapsed_s, 3)}))

    asyncio.run(run())


@app.command("stem-frame")
def stem_frame(
    out_image: Annotated[Path, typer.Option("--out-image", help="where to write the frame (.npy, float32 counts)")],
    out_labels: Annotated[Path, typer.Option("--out-labels", help="where to write the labels (.npy, uint8)")],
    frame: Annotated[int, typer.Option("--frame", min=0, help="which frame of the movie")] = 0,
    size: FrameSize = 256,
    lattice: Lattice = "ws2",
    pixel_size_nm: PixelSizeNm = 0.02,
    dose: Dose = None,
    defects: Defects = None,
    keep_sublattices: Annotated[bool, typer.Option(
        "--keep-sublattices", help="graphene: keep the A/B (metal/chalcogen) split in the labels instead of "
                                   "merging it")] = False,
    seed: Seed = 0,
) -> None:
    """Write one frame of a simulated HAADF STEM movie and its label image as .npy files, for
    `scanlens train one-frame`.

    The frame is frame --frame of the movie `scanlens sim stem` streams with the same --seed, --size,
    --lattice, --pixel-size-nm, --dose and --defects (the same movie however many frames it has), in raw
    counts (float32). The labels (uint8, same shape) hold one SEG_CLASSES index per pixel: 0 background,
    1 metal, 2 chalcogen, 3 metal_vacancy, 4 chalcogen_vacancy, 5 dopant, 6 adatom, a disk of 0.4 x the
    nearest-neighbour spacing around every column and vacancy site. In graphene both sublattices are
    carbon and look alike, so chalcogen is merged into metal and chalcogen_vacancy into metal_vacancy
    (--keep-sublattices keeps them apart). Prints a JSON line with the paths and the frame's geometry.
    """
    from .stem import STEMMovie, merge_sublattices, nearest_neighbour_spacing_px

    try:
        cfg = _stem_config(size, frame + 1, pixel_size_nm, lattice, seed, dose, defects)
        movie = STEMMovie(cfg)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    image = movie.frame(frame)
    labels = movie.truth(frame)["labels"]
    merged = lattice == "graphene" and not keep_sublattices
    if merged:
        labels = merge_sublattices(labels)
    for path, array in ((out_image, image), (out_labels, labels)):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array, allow_pickle=False)
    typer.echo(json.dumps({"image": str(out_image), "labels": str(out_labels), "frame": frame,
                           "shape": list(image.shape), "lattice": lattice, "pixel_size_nm": pixel_size_nm,
                           "nn_spacing_px": round(nearest_neighbour_spacing_px(cfg), 3), "seed": seed,
                           "sublattices_merged": merged}))


if __name__ == "__main__":  # the demo starts the simulator as `python -m instrument_sim.cli`
    app()
