"""``scanlens sim``: simulated instruments that stream to a running scanlens service."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from scanlens.client import (CurveClient, Instrument, ScanFailed, ScanRejected, ScanWatch, ServiceStopped,
                             ServiceUnreachable, client_keys)
from scanlens.protocol.messages import Axis

from .eels import DEFAULT_AXIS, SAMPLE_PHASES, EELSConfig
from .sources import EELSSource, ScanSource
from .stream import StreamReport, stream_scan

if TYPE_CHECKING:
    from .stem import STEMConfig

# exit status of the streaming commands, one per way the work can fail (EXIT_CODES documents them in --help)
EXIT_OK = 0
EXIT_USAGE = 2  # invalid options (typer's own code), a malformed endpoint, a movie that cannot be simulated
EXIT_NO_SERVICE = 3
EXIT_REJECTED = 4
EXIT_SERVICE_STOPPED = 5
EXIT_INCOMPLETE = 6
EXIT_INTERRUPTED = 130
EXIT_CODES = (
    "Exit status: 0 the scan is complete (every line recognized; a JSON report on stdout); "
    "2 invalid options or endpoint; "
    "3 no service: no heartbeat on --publish, or no answer to scan_start, within --connect-timeout s; "
    "4 the scan was refused (scan_rejected: unknown recognizer, an axis that does not cover the model's, "
    "too large ...); "
    "5 the service stopped mid-scan (no heartbeat for --heartbeat-timeout s before the summary); "
    "6 the scan ended incomplete (lines lost or rejected, timed out, aborted; the report with the summary on "
    "stdout); 130 interrupted. On failure one line on stderr says what happened."
)

app = typer.Typer(help="Simulated instruments: stream a synthetic scan to `scanlens serve` over ZeroMQ and "
                       "report how it ended. " + EXIT_CODES,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)



@app.callback()
def _group() -> None:
    """Simulated instruments."""


# options every simulated instrument shares
DEFAULT_INGEST = "tcp://127.0.0.1:5555"  # where `scanlens serve` listens by default
Ingest = Annotated[str, typer.Option(help="ingest endpoint of the service")]
def _check_names(kind: str, adapter: Any, values: Any) -> Any:
    """``values`` (one or a list), each valid for the protocol's type ``adapter``; typer.BadParameter otherwise."""
    from pydantic import ValidationError

    for value in values if isinstance(values, list) else [] if values is None else [values]:
        try:
            adapter.validate_python(value)
        except ValidationError:
            raise typer.BadParameter(f"{value!r} is not a {kind}: 1-64 letters, digits or . _ - "
                                     f"{'or : ' if kind == 'scan id' else ''}(docs/protocol.md)") from None
    return values


def _scan_id(value: str | None) -> str | None:
    from pydantic import TypeAdapter

    from scanlens.protocol.messages import ScanId as ScanIdType

    return _check_names("scan id", TypeAdapter(ScanIdType), value)


def _recognizer_names(values: list[str] | None) -> list[str] | None:
    from pydantic import TypeAdapter

    from scanlens.protocol.messages import Name

    return _check_names("recognizer name", TypeAdapter(Name), values)


ScanId = Annotated[Optional[str], typer.Option(callback=_scan_id, help="scan id (default <modality>-<time>)")]
Rows = Annotated[int, typer.Option(min=1, help="scan rows (one message per row)")]
Cols = Annotated[int, typer.Option(min=1, help="pixels per row")]
DwellUs = Annotated[float, typer.Option("--dwell-us", min=0.0, help="pixel dwell time in µs; 0 = as fast as the service takes")]
Seed = Annotated[int, typer.Option(help="sample and noise seed (same seed, same data)")]
Recognizers = Annotated[Optional[list[str]], typer.Option(
    "--recognizer", callback=_recognizer_names, help="recognizer to run (repeat; `pca` is built in; default: all of the modality)")]
Truth = Annotated[Optional[Path], typer.Option(help="save the ground truth to this .npz")]
Quiet = Annotated[bool, typer.Option(help="no progress bar")]
Retain = Annotated[bool, typer.Option(help="ask the service to keep the scan's spectra, so that `scanlens label` "
                                           "can train a recognizer on labelled pixels of it (docs/live-training.md)")]
ClientKey = Annotated[Optional[Path], typer.Option(
    "--client-key", help="this instrument's secret CURVE key file (NAME.key_secret, `scanlens keys create`), for "
                         "a service with authentication; with --server-key")]
ServerKey = Annotated[Optional[Path], typer.Option(
    "--server-key", help="the service's public CURVE key file (server.key); with --client-key")]
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"  # where `scanlens serve` publishes by default
Publish = Annotated[str, typer.Option(
    help="publish endpoint of the service: where the simulator learns whether its scan was accepted and how it "
         "ended")]
ConnectTimeout = Annotated[float, typer.Option(
    "--connect-timeout", min=0.01, help="seconds to wait for the service's first heartbeat, and then for the "
                                        "answer to scan_start (scan_started or scan_rejected)")]
HeartbeatTimeout = Annotated[float, typer.Option(
    "--heartbeat-timeout", min=0.01, help="seconds without the service's heartbeat (published every 0.25 s by "
                                          "default) after which the service counts as stopped")]


@dataclasses.dataclass(frozen=True)
class Service:
    """Where the service is and how long to wait for it: the options every streaming command shares."""

    ingest: str
    publish: str
    curve: CurveClient | None = None
    connect_timeout: float = 5.0
    heartbeat_timeout: float = 10.0


def _fail(code: int, message: object) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


T = TypeVar("T")


def _config(make: Callable[[], T], options: dict[str, str] | None = None) -> T:
    """``make()``, the simulator's config; a value it refuses is one line and exit 2. ``options``: the
    option that sets each field, to name it in the message."""
    from pydantic import ValidationError

    try:
        return make()
    except ValidationError as exc:
        names = options or {}
        what = "; ".join(f"{names.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else exc.title}: {e['msg']}"
                         for e in exc.errors())
        _fail(EXIT_USAGE, what)
    except ValueError as exc:
        _fail(EXIT_USAGE, exc)


def _save_truth(source: Any, truth: Path | None) -> None:
    if truth is not None:
        try:
            source.save_ground_truth(truth)
        except OSError as exc:
            _fail(EXIT_USAGE, f"cannot write the ground truth to {truth}: {exc.strerror or exc}")


def _run_scan(service: Service, scan_id: str, unit: str, total: int, quiet: bool,
              stream: Callable[[Instrument, ScanWatch, Callable[[int, int], None]], Awaitable[StreamReport]],
              ) -> StreamReport:
    """Run ``stream(instrument, watch, progress)`` with a progress bar of ``total`` ``unit``; its report (with
    the summary). A failure is one line on stderr and its exit status (EXIT_CODES)."""
    import zmq

    async def run() -> StreamReport:
        columns = (TextColumn(f"[bold]{scan_id}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                   TimeRemainingColumn())
        err = Console(stderr=True)  # the bar on stderr, and only on a terminal: stdout is the JSON report
        with Progress(*columns, disable=quiet or not err.is_terminal, transient=True, console=err) as bar:
            task = bar.add_task("stream", total=total)
            try:
                watch = ScanWatch(service.publish, scan_id, heartbeat_timeout=service.heartbeat_timeout,
                                  curve=service.curve)
            except zmq.ZMQError as exc:
                _fail(EXIT_USAGE, f"cannot connect to --publish {service.publish!r}: {exc}")
            async with watch:
                try:
                    inst = Instrument(service.ingest, curve=service.curve)
                except zmq.ZMQError as exc:
                    _fail(EXIT_USAGE, f"cannot connect to --ingest {service.ingest!r}: {exc}")
                warned = False

                def progress(done: int, _total: int) -> None:
                    nonlocal warned
                    if not warned and watch.started is not None:  # once the scan is accepted
                        warned = True
                        if watch.started.skipped:  # recognizers of the modality that cannot take this scan
                            err.print(f"warning: scan {scan_id}: not running " + "; ".join(
                                f"{name} ({why})" for name, why in watch.started.skipped.items())
                                + f"; running {', '.join(watch.started.recognizers)}",
                                markup=False, highlight=False, soft_wrap=True)
                    bar.update(task, completed=done)

                try:
                    await watch.wait_ready(service.connect_timeout)
                    report = await stream(inst, watch, progress)
                except BaseException:
                    inst.close(linger_s=0)  # nobody will take what is still queued
                    raise
                inst.close()
                return report

    try:
        return asyncio.run(run())
    except ServiceUnreachable as exc:
        _fail(EXIT_NO_SERVICE, exc)
    except ScanRejected as exc:
        _fail(EXIT_REJECTED, exc)
    except (ServiceStopped, ScanFailed) as exc:
        _fail(EXIT_SERVICE_STOPPED, exc)
    except KeyboardInterrupt:
        _fail(EXIT_INTERRUPTED, f"interrupted; scan {scan_id} was not finished")


def _finish(report: StreamReport, fields: dict[str, Any], *, skips_allowed: bool = False) -> None:
    """Print the JSON report; when the summary says the scan is not complete, with the summary, one line on
    stderr and exit EXIT_INCOMPLETE. ``skips_allowed``: frames skipped by policy "latest" are no failure."""
    s = report.summary
    assert s is not None  # streamed with a watch
    out = {**fields, "state": s.state}
    ok = s.state == "complete" or (skips_allowed and s.state == "incomplete" and not s.n_lost and not s.rejected)
    if ok:
        typer.echo(json.dumps(out))
        return
    typer.echo(json.dumps({**out, "summary": s.model_dump(mode="json")}))
    _fail(EXIT_INCOMPLETE, f"scan {s.scan_id} ended {s.state}: {s.n_lost} messages lost, {len(s.rejected)} "
                           f"rejected, {s.pixels_recognized} of {s.pixels_expected} pixels recognized")

# options of the STEM movie (`stem`) that `stem-frame` shares, so that both make the same movie
FrameSize = Annotated[int, typer.Option(min=64, max=2048, help="frame edge, pixels (square frames)")]
PixelSizeNm = Annotated[float, typer.Option("--pixel-size-nm", help="pixel size, nm")]
Dose = Annotated[Optional[float], typer.Option(help="expected counts at a metal column (default: simulator's)")]
Lattice = Annotated[str, typer.Option(help="ws2 or graphene")]
Defects = Annotated[Optional[int], typer.Option(
    min=0, help="number of defects (default: the simulator's 12, or as many as the frame holds with room to move "
                "when that is fewer: none below about 120 px of WS2 at 0.02 nm/px)")]


def _curve(client_key: Path | None, server_key: Path | None) -> CurveClient | None:
    """The CURVE keys of --client-key and --server-key (None without both); a clear error and exit 2 otherwise."""
    try:
        return client_keys(client_key, server_key)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def play(source: ScanSource, ingest: str, scan_id: str | None, dwell_us: float, recognizers: list[str] | None,
         quiet: bool, truth: Path | None = None, curve: CurveClient | None = None, *,
         service: Service | None = None, retain: bool = False) -> None:
    """Save the ground truth if asked, stream ``source`` with a progress bar until its summary, print a
    one-line JSON report; exit non-zero when the scan failed (EXIT_CODES). ``service`` (its ingest and
    curve replaced by ``ingest`` and ``curve``) says where it publishes and how long to wait."""
    service = dataclasses.replace(service or Service(ingest, DEFAULT_PUBLISH), ingest=ingest, curve=curve)
    _save_truth(source, truth)
    scan_id = scan_id or f"{source.modality}-{int(time.time())}"

    def stream(inst: Instrument, watch: ScanWatch, progress: Callable[[int, int], None]) -> Awaitable[StreamReport]:
        return stream_scan(inst, source, scan_id, dwell_s=dwell_us * 1e-6, recognizers=recognizers, progress=progress,
                           watch=watch, start_timeout=service.connect_timeout, retain=retain)

    report = _run_scan(service, scan_id, "lines", source.shape[0], quiet, stream)
    _finish(report, {"scan_id": report.scan_id, "messages": report.messages, "pixels": report.pixels,
                     "elapsed_s": round(report.elapsed_s, 3), "pixels_per_s": round(report.pixel_rate, 1)})


def _eels_sample(value: str) -> str:
    if value not in SAMPLE_PHASES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(SAMPLE_PHASES)}")
    return value


@app.command(epilog=EXIT_CODES)
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
    sample: Annotated[str, typer.Option(
        callback=_eels_sample,
        help="which heterostructure: oxide (STO / LSMO / BFO, what the shipped models were trained on) or cto "
             "(CaTiO3 / interface / NdGaO3, phases no shipped model knows: a sample for live training)",
    )] = EELSConfig.sample,
    seed: Seed = 0,
    recognizer: Recognizers = None,
    truth: Truth = None,
    quiet: Quiet = False,
    retain: Retain = False,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
    publish: Publish = DEFAULT_PUBLISH,
    connect_timeout: ConnectTimeout = 5.0,
    heartbeat_timeout: HeartbeatTimeout = 10.0,
) -> None:
    """Stream an EELS spectrum image of an STO / LSMO / BFO oxide heterostructure, line by line.

    Layers with intermixed, rough interfaces; Poisson and read noise; optional energy drift and an
    optional region of an unknown fourth phase. --sample cto streams a CaTiO3 / NdGaO3 heterostructure
    with its own interface phase instead, none of whose phases the shipped models know: they flag it
    novel (the ground truth names its phases). The spectrometer axis (channels, offset, dispersion) is
    yours to choose: the service resamples it onto each recognizer's axis. A recognizer whose axis it
    does not cover is left out, with a warning (pca runs when none is left); one named with
    --recognizer refuses the scan instead.
    """
    axis = _config(lambda: Axis(size=channels, offset=offset_ev, scale=dispersion_ev, units="eV"),
                   {"size": "--channels", "offset": "--offset-ev", "scale": "--dispersion-ev"})
    cfg = _config(lambda: EELSConfig(rows=rows, cols=cols, axis=axis, dose=dose, read_noise=read_noise,
                                     drift_eV=drift_ev, unknown_region=unknown_region, seed=seed, sample=sample))
    play(EELSSource(cfg), ingest, scan_id, dwell_us, recognizer, quiet, truth, _curve(client_key, server_key),
         service=Service(ingest, publish, None, connect_timeout, heartbeat_timeout), retain=retain)


@app.command(epilog=EXIT_CODES)
def bepfm(
    ingest: Ingest = DEFAULT_INGEST,
    scan_id: ScanId = None,
    rows: Rows = 128,
    cols: Cols = 128,
    dwell_us: DwellUs = 300.0,
    noise: Annotated[float, typer.Option(help="rms of the complex measurement noise per frequency bin")] = 1.0,
    pixel_size_um: Annotated[float, typer.Option("--pixel-size-um", help="scan step, µm")] = 0.1,
    spores_per_100um2: Annotated[float, typer.Option(
        "--spores-per-100um2", min=0.0,
        help="B. subtilis spores per 100 µm² (0 = none): a stiff-coated cell with its own resonance, a class the "
             "shipped model does not know (label 3 in the ground truth)")] = 0.0,
    seed: Seed = 0,
    recognizer: Recognizers = None,
    truth: Truth = None,
    quiet: Quiet = False,
    retain: Retain = False,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
    publish: Publish = DEFAULT_PUBLISH,
    connect_timeout: ConnectTimeout = 5.0,
    heartbeat_timeout: HeartbeatTimeout = 10.0,
) -> None:
    """Stream a band-excitation PFM scan of M. lysodeikticus cocci and P. fluorescens rods on a substrate.

    Per pixel: amplitude and phase of a damped harmonic oscillator response over a frequency band around
    the contact resonance (components "amplitude", "phase"), with class-dependent, overlapping
    distributions of resonance frequency, quality factor, amplitude and phase, cell-to-cell variation
    and noise. --spores-per-100um2 adds B. subtilis spores, a class the shipped model does not know.
    """
    from .bepfm import BEPFMConfig, BEPFMSource

    cfg = _config(lambda: BEPFMConfig(rows=rows, cols=cols, noise=noise, pixel_size_um=pixel_size_um, seed=seed,
                                      spores_per_100um2=spores_per_100um2))
    play(BEPFMSource(cfg), ingest, scan_id, dwell_us, recognizer, quiet, truth, _curve(client_key, server_key),
         service=Service(ingest, publish, None, connect_timeout, heartbeat_timeout), retain=retain)


@app.command(epilog=EXIT_CODES)
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
    retain: Retain = False,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
    publish: Publish = DEFAULT_PUBLISH,
    connect_timeout: ConnectTimeout = 5.0,
    heartbeat_timeout: HeartbeatTimeout = 10.0,
) -> None:
    """Stream ferroelectric switching loops from the random-bond random-field Ising model (Glauber dynamics).

    Per pixel the polarization of both field sweeps (components "up", "down") of a sample whose J0, dJ
    and dh vary across the scan, with measurement noise.
    """
    from .loops import LoopsConfig, LoopsSource

    cfg = _config(lambda: LoopsConfig(rows=rows, cols=cols, seed=seed))
    play(LoopsSource(cfg), ingest, scan_id, dwell_us, recognizer, quiet, truth, _curve(client_key, server_key),
         service=Service(ingest, publish, None, connect_timeout, heartbeat_timeout), retain=retain)


def _policy(value: str) -> str:
    if value not in ("lossless", "latest"):
        raise typer.BadParameter(f"{value!r} is not one of lossless, latest")
    return value


def _stem_config(size: int, frames: int, pixel_size_nm: float, lattice: str, seed: int, dose: float | None,
                 defects: int | None) -> STEMConfig:
    """The movie the STEM options describe; ``dose`` left as None keeps the simulator's default, and so does
    ``defects``, capped to what the frame holds (``defects_that_fit``; a note on stderr when it caps)."""
    from .stem import STEMConfig
    from .stem.config import LATTICE_SPECS, defects_that_fit

    if defects is None and lattice in LATTICE_SPECS and pixel_size_nm > 0:
        fit = defects_that_fit(size, pixel_size_nm, lattice)
        if fit < STEMConfig.n_defects:
            typer.echo(f"note: a {size} px frame of {lattice} at {pixel_size_nm:g} nm/px holds {fit} defects with "
                       f"room to move, not the default {STEMConfig.n_defects}: simulating {fit} (--defects sets it)",
                       err=True)
            defects = fit
    overrides = {k: v for k, v in {"dose": dose, "n_defects": defects}.items() if v is not None}
    return STEMConfig(size=size, frames=frames, pixel_size_nm=pixel_size_nm, lattice=lattice, seed=seed, **overrides)


@app.command(epilog=EXIT_CODES)
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
    policy: Annotated[str, typer.Option(callback=_policy,
                                        help="lossless (every frame) or latest (newest frame wins)")] = "lossless",
    seed: Seed = 0,
    recognizer: Recognizers = None,
    truth: Truth = None,
    quiet: Quiet = False,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
    publish: Publish = DEFAULT_PUBLISH,
    connect_timeout: ConnectTimeout = 5.0,
    heartbeat_timeout: HeartbeatTimeout = 10.0,
) -> None:
    """Stream an atomic-resolution HAADF STEM movie of WS2 (or graphene) with diffusing, transforming defects.

    Z-contrast columns, vacancies, dopants and adatoms, probe blur, Poisson noise, drift and line jitter;
    defects diffuse with a known diffusion coefficient per class (vacancies and dopants hop between
    lattice sites, adatoms walk freely) and change class by a known Markov chain. Frames carry their
    pixel size: the service rescales them to its model's.
    """
    from .stem import STEMSource
    from .stream import stream_movie

    curve = _curve(client_key, server_key)
    try:
        source = STEMSource(_stem_config(size, frames, pixel_size_nm, lattice, seed, dose, defects))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _save_truth(source, truth)
    sid = scan_id or f"haadf-{int(time.time())}"
    service = Service(ingest, publish, curve, connect_timeout, heartbeat_timeout)

    def stream(inst: Instrument, watch: ScanWatch, progress: Callable[[int, int], None]) -> Awaitable[StreamReport]:
        return stream_movie(inst, source, sid, frame_interval_s=frame_ms * 1e-3, policy=policy,
                            recognizers=recognizer, progress=progress, watch=watch,
                            start_timeout=service.connect_timeout)

    report = _run_scan(service, sid, "frames", frames, quiet, stream)
    _finish(report, {"scan_id": report.scan_id, "messages": report.messages, "frames": frames,
                     "elapsed_s": round(report.elapsed_s, 3)}, skips_allowed=policy == "latest")


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array, allow_pickle=False)
        except OSError as exc:
            _fail(EXIT_USAGE, f"cannot write {path}: {exc.strerror or exc}")
    typer.echo(json.dumps({"image": str(out_image), "labels": str(out_labels), "frame": frame,
                           "shape": list(image.shape), "lattice": lattice, "pixel_size_nm": pixel_size_nm,
                           "nn_spacing_px": round(nearest_neighbour_spacing_px(cfg), 3), "seed": seed,
                           "sublattices_merged": merged}))


if __name__ == "__main__":  # the demo starts the simulator as `python -m instrument_sim.cli`
    app()
