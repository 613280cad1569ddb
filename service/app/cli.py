"""The ``scanlens`` command line: serve, recover, models, status, schema, plus plugged-in groups (sim, train, demo).

Command groups that live outside ``service/`` (which must not import them) are found through the
``scanlens.commands`` entry point group declared in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__

app = typer.Typer(
    help="scanlens: live recognition imaging for scanning microscopes. Instruments stream spectra over "
         "ZeroMQ; ONNX recognizers turn them into class, confidence and parameter maps during the scan.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(value: str) -> str:
    if value.upper() not in _LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(_LEVELS)}")
    return value.upper()


LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR", callback=_log_level)]
ClientKey = Annotated[Optional[Path], typer.Option(
    "--client-key", help="this client's secret CURVE key file (NAME.key_secret, `scanlens keys create`), for a "
                         "service with authentication; with --server-key")]
ServerKey = Annotated[Optional[Path], typer.Option(
    "--server-key", help="the service's public CURVE key file (server.key); with --client-key")]


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)


def _one_line(exc: Exception) -> str:
    """A start-up error as one line: a settings ValidationError says which key and why, without
    pydantic's multi-line dump."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            msg, got = e["msg"].removeprefix("Value error, "), repr(e.get("input"))
            where = ".".join(str(p) for p in e["loc"]) or "settings"
            parts.append(f"{where}: {msg}" + ("" if got in msg else f" (got {got})"))
        return "; ".join(parts)
    return " ".join(str(exc).split())


@app.command()
def serve(
    config: Annotated[Optional[Path], typer.Option(help="TOML config file (see deploy/scanlens.toml)")] = None,
    ingest: Annotated[Optional[str], typer.Option(help="PULL endpoint for instruments (default tcp://127.0.0.1:5555)")] = None,
    publish: Annotated[Optional[str], typer.Option(help="PUB endpoint for maps/events (default tcp://127.0.0.1:5556)")] = None,
    control: Annotated[Optional[str], typer.Option(help="ROUTER endpoint for requests (default tcp://127.0.0.1:5557)")] = None,
    model_dir: Annotated[Optional[Path], typer.Option(help="directory of *.onnx recognizers (default bundled models)")] = None,
    models: Annotated[Optional[list[str]], typer.Option("--model", help="load only this recognizer (repeat)")] = None,
    providers: Annotated[Optional[list[str]], typer.Option(
        "--provider", metavar="NAME",
        help="ONNX Runtime execution provider, in order of preference (repeat): CPU, CUDA, TensorRT, ROCm, OpenVINO, "
             "DirectML, CoreML; default CPU. `--provider CUDA --provider CPU` falls back to CPU with a warning "
             "(docs/operations.md, \"Execution providers (GPU)\")")] = None,
    metrics: Annotated[Optional[str], typer.Option(
        help="serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464 (port 0: any free port; default: no "
             "endpoint; docs/operations.md)")] = None,
    record: Annotated[Optional[Path], typer.Option(
        "--record", metavar="DIR", help="record every scan into DIR: one HDF5 file per scan (<scan_id>.h5, opens in "
                                        "HyperSpy), journaled while it is open (record_dir; docs/operations.md)")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Run the recognition service until Ctrl-C / SIGTERM.

    Settings come from defaults, then the --config TOML file, then SCANLENS_* environment variables
    (e.g. SCANLENS_INGEST), then these flags.

    Without CurveZMQ keys (curve_secret_key, curve_allowed_keys; see `scanlens keys`) only loopback,
    ipc:// and inproc:// endpoints are bound, unless network_isolated = true.

    With --record DIR (record_dir) every scan is recorded; journals a killed service left in DIR are
    converted at start (as `scanlens recover DIR` does).
    """
    from .config import load_settings
    from .server import Server

    setup_logging(log_level)
    try:
        settings = load_settings(config, ingest=ingest, publish=publish, control=control,
                                 model_dir=model_dir, models=models, providers=providers, metrics=metrics,
                                 record_dir=record)
        server = Server(settings)
    except Exception as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        await server.run()

    try:
        asyncio.run(main())
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def recover(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="the record directory (record_dir, --record)")],
) -> None:
    """Convert the journals a killed or crashed service left in DIR into recordings (<scan_id>.h5, state
    `recovered` unless the scan's summary made it into the journal); one line per journal.

    `scanlens serve --record DIR` does the same at start. Exit status 1 if a journal could not be converted
    (it is kept), 2 if DIR is missing or a running service holds it.
    """
    from ..recording import RecordingError, lock_directory
    from ..recording import recover as recover_journals

    setup_logging("WARNING")
    failed = done = 0
    try:
        with lock_directory(directory) as path:
            for result in recover_journals(path):
                if isinstance(result, tuple):
                    journal, exc = result
                    typer.echo(f"failed {journal}: {type(exc).__name__}: {exc} (the journal is kept)", err=True)
                    failed += 1
                    continue
                done += 1
                if result.path is None:
                    typer.echo(f"removed {result.journal} ({result.state})")
                else:
                    typer.echo(f"recovered {result.journal} -> {result.path} ({result.state}, "
                               f"{result.messages} records)" if result.state != "already converted" else
                               f"removed {result.journal} (already converted to {result.path})")
    except RecordingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not done and not failed:
        typer.echo(f"no journals in {directory}")
    if failed:
        raise typer.Exit(1)


@app.command()
def replay(
    recording: Annotated[Path, typer.Argument(metavar="FILE", help="a recording (<scan_id>.h5 of serve --record)")],
    ingest: Annotated[str, typer.Option(help="the service's ingest (PULL) endpoint")] = "tcp://127.0.0.1:5555",
    publish: Annotated[str, typer.Option(help="the service's publish endpoint, to follow the scan")] = "tcp://127.0.0.1:5556",
    scan_id: Annotated[Optional[str], typer.Option(help="the replayed scan's id (default <recorded id>-replay)")] = None,
    pace: Annotated[str, typer.Option(help="recorded: keep the recorded intervals (divided by --speed); fast: as "
                                      "fast as the service takes them")] = "recorded",
    speed: Annotated[float, typer.Option(min=1e-3, help="with --pace recorded: how many times faster than recorded")] = 1.0,
    recognizers: Annotated[Optional[list[str]], typer.Option("--recognizer", help="run this recognizer instead of the "
                                                             "recorded choice (repeat)")] = None,
    connect_timeout: Annotated[float, typer.Option(help="seconds to wait for the service's heartbeat and for its "
                                                   "answer to scan_start")] = 5.0,
    quiet: Annotated[bool, typer.Option(help="no progress bar (the JSON line and errors only)")] = False,
) -> None:
    """Stream a recording back to a service like an instrument: the recorded scan_start (under a new scan id),
    every data or frame message as received, scan_end; then print the service's summary as JSON.

    With the same models and batching settings the maps of a lossless scan come out identical to the recorded
    ones; --recognizer re-analyses the scan with another model. Exit status: 0 complete, 2 bad options or not a
    recording, 3 no service, 4 the scan was refused, 5 the service stopped, 6 the scan ended incomplete
    (docs/operations.md, "Recording scans").
    """
    import asyncio
    import json

    from ..client import ScanRejected, ServiceStopped, ServiceUnreachable
    from .replay import replay as run_replay

    if pace not in ("recorded", "fast"):
        typer.echo(f"error: --pace must be recorded or fast, got {pace!r}", err=True)
        raise typer.Exit(2)
    if not recording.is_file():
        typer.echo(f"error: no recording {recording}", err=True)
        raise typer.Exit(2)
    import zmq
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    setup_logging("WARNING")

    async def run():
        columns = (TextColumn(f"[bold]{recording.name}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("messages"),
                   TimeRemainingColumn())
        err = Console(stderr=True)  # the bar on stderr, and only on a terminal: stdout is the JSON report
        with Progress(*columns, disable=quiet or not err.is_terminal, transient=True, console=err) as bar:
            task = bar.add_task("replay", total=None)
            return await run_replay(recording, ingest, publish, scan_id=scan_id, pace=pace, speed=speed,
                                    recognizers=recognizers, start_timeout=connect_timeout,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))

    try:
        report = asyncio.run(run())
    except zmq.ZMQError as exc:
        typer.echo(f"error: cannot connect to --ingest {ingest!r} or --publish {publish!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {recording}: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from None
    except ServiceUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    except ScanRejected as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(4) from None
    except ServiceStopped as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(5) from None
    summary = report.summary
    typer.echo(json.dumps({"recording": str(recording), "scan_id": report.scan_id, "messages": report.messages,
                           "seconds": round(report.seconds, 3), "summary": summary.model_dump(mode="json")}))
    if summary.state != "complete":
        typer.echo(f"error: scan {report.scan_id} ended {summary.state}", err=True)
        raise typer.Exit(6)


@app.command("models")
def list_models(
    model_dir: Annotated[Optional[Path], typer.Option(help="directory of *.onnx recognizers (default bundled models)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full model cards as JSON")] = False,
) -> None:
    """List the recognizers in a model directory and in the user model directory ($SCANLENS_USER_MODEL_DIR,
    else $XDG_DATA_HOME/scanlens/models, else ~/.local/share/scanlens/models) with their model cards, as
    `scanlens serve` would load them (no server needed)."""
    from ..model_files import MODEL_DIR, user_model_dir
    from ..pipeline import ModelError, load_recognizers

    try:
        recs = load_recognizers(model_dir or MODEL_DIR, threads=1, user_dir=user_model_dir())
    except ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({n: r.card.model_dump(mode="json") for n, r in recs.items()}, indent=2))
        return
    for name, rec in recs.items():
        c = rec.card
        ax, px = c.input.axis, c.input.pixel_size
        typer.echo(f"{name} v{c.version}  [{c.modality}]  {c.description}")
        what = (f"{ax.size} channels, {ax.offset:g}–{ax.end:g} {ax.units}" if ax is not None
                else f"images at {px.size:g} {px.units}/px")
        if c.input.components:
            what += f" x ({', '.join(c.input.components)})"
        typer.echo(f"    input  {c.input.name}: {what}; {c.input.normalization}")
        for out in c.outputs:
            typer.echo(f"    output {out.name} ({out.role}): {', '.join(out.labels)}")
        typer.echo(f"    {c.architecture}")
        if c.novelty is None:
            typer.echo("    novelty: none (this model cannot say when its input is unlike its training data; "
                       "its answers carry no novel map)")
        else:
            figures = ", ".join(f"{k}={v:.4g}" for k, v in c.novelty.calibration.items())
            typer.echo(f"    novelty: {c.novelty.method}; novel above {c.novelty.threshold:.4g}"
                       + (f" ({figures})" if figures else ""))
        if c.metrics:
            typer.echo("    held-out: " + ", ".join(f"{k}={v:.4g}" for k, v in c.metrics.items()))
        typer.echo(f"    file   {rec.path}")


def read_labels(path: Path) -> "np.ndarray":
    """A label image from ``.npy`` (integers 0-255) or an 8-bit grayscale ``.png`` (pixel value = label);
    ValueError saying what is wrong."""
    import numpy as np

    if not path.is_file():
        raise ValueError(f"no label file {path}")
    if path.suffix.lower() == ".npy":
        labels = np.load(path, allow_pickle=False)
    elif path.suffix.lower() == ".png":
        from matplotlib import image

        raw = image.imread(path)
        if raw.ndim == 3:
            if not np.allclose(raw[..., :3], raw[..., :1]):
                raise ValueError(f"{path} is a colour PNG; label images are 8-bit grayscale (value = label)")
            raw = raw[..., 0]
        labels = np.rint(raw * 255) if raw.dtype.kind == "f" else raw
    else:
        raise ValueError(f"{path}: label images are .npy or 8-bit grayscale .png files")
    if labels.ndim != 2:
        raise ValueError(f"{path} holds a {labels.ndim}-d array; a label image is 2-d [rows, cols]")
    if labels.dtype.kind not in "iuf" or labels.min() < 0 or labels.max() > 255 or not np.all(labels == np.rint(labels)):
        raise ValueError(f"{path}: labels must be integers 0-255 (0 = unlabelled)")
    return labels.astype(np.uint8)


@app.command()
def label(
    scan_id: Annotated[str, typer.Argument(metavar="SCAN_ID", help="the scan to learn from (started with retain)")],
    labels_file: Annotated[Path, typer.Argument(metavar="LABELS", help="label image: .npy or 8-bit grayscale "
                                                "PNG, the scan's rows x cols (a movie: the frame's); 0 = "
                                                "unlabelled, k = the k-th of --classes")],
    classes: Annotated[str, typer.Option(help="class names of label values 1, 2, ... separated by commas, e.g. "
                                         "CTO,interface,NGO")],
    name: Annotated[Optional[str], typer.Option(help="the new recognizer's name (default <scan_id>-live)")] = None,
    base: Annotated[Optional[str], typer.Option(help="a loaded recognizer to start from (movies: default the "
                                                "scan's frame recognizer)")] = None,
    budget: Annotated[Optional[float], typer.Option(min=0.01, help="seconds the job may take (default: the "
                                                    "service's train_budget_s)")] = None,
    frame: Annotated[Optional[int], typer.Option(min=0, help="movies: the index of the labelled frame")] = None,
    control: Annotated[str, typer.Option(help="control endpoint of the running service")] = "tcp://127.0.0.1:5557",
    publish: Annotated[str, typer.Option(help="publish endpoint, to follow the job")] = "tcp://127.0.0.1:5556",
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the service, and for each step "
                                           "of the job")] = 60.0,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
) -> None:
    """Teach a running scan your sample: train a recognizer on the labelled pixels, swap it in, redo the
    earlier lines (docs/live-training.md). Progress goes to stderr; the outcome is printed as JSON.

    Exit status: 0 the new model runs on the scan, 2 bad options or label file, 3 no service, 4 refused (the
    reason says what to change), 5 the job failed (the scan goes on unchanged)."""
    from ..client import Control, Subscriber, TrainFailed, client_keys, train_and_follow
    from ..client.training import describe
    from ..protocol import topics

    names = [c.strip() for c in classes.split(",") if c.strip()]
    try:
        curve = client_keys(client_key, server_key)
        labels = read_labels(labels_file)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if len(names) < 2:
        typer.echo(f"error: --classes needs at least two names separated by commas, got {classes!r}", err=True)
        raise typer.Exit(2)

    async def run():
        async with Control(control, curve=curve) as ctl, Subscriber(
                publish, topics_=[topics.scan_topic(scan_id, topics.TRAIN)], curve=curve) as sub:
            await sub.wait_ready(timeout)
            return await train_and_follow(ctl, sub, scan_id, labels, names, timeout=timeout, name=name, base=base,
                                          budget_s=budget, frame=frame,
                                          on_update=lambda u: typer.echo(describe(u), err=True))

    import zmq

    try:
        final = asyncio.run(run())
    except zmq.ZMQError as exc:
        typer.echo(f"error: cannot connect to {control!r} or {publish!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    except TimeoutError:
        typer.echo(f"error: no answer from the service within {timeout:g} s — is `scanlens serve` running at "
                   f"{control} and {publish}?", err=True)
        raise typer.Exit(3) from None
    except TrainFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(4 if exc.refused else 5) from None
    typer.echo(json.dumps({"scan_id": scan_id, "job": final.job, "recognizer": final.recognizer,
                           "revision": final.revision, "lines_redone": final.lines,
                           "seconds": round(final.elapsed_s, 3)}))


@app.command()
def status(
    control: Annotated[str, typer.Option(help="control endpoint of the running service")] = "tcp://127.0.0.1:5557",
    timeout: Annotated[float, typer.Option(min=0.01, help="seconds to wait for the answer")] = 5.0,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
) -> None:
    """Ask a running service for its status (counters, open scans, recognizers) and print it as JSON."""
    from ..client import Control, client_keys

    try:
        curve = client_keys(client_key, server_key)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def ask():  # -> ControlReply
        async with Control(control, curve=curve) as ctl:
            return await ctl.request("status", timeout=timeout)

    import zmq

    try:
        reply = asyncio.run(ask())
    except zmq.ZMQError as exc:
        typer.echo(f"error: cannot connect to {control!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    except TimeoutError:
        hint = (" (with CURVE keys a refused key gets no answer either: is --client-key's public key among the "
                "service's allowed keys, and --server-key its public key?)" if curve is not None else "")
        typer.echo(f"error: no answer from {control} within {timeout:g} s — is `scanlens serve` running?{hint}",
                   err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(reply.result, indent=2))


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="where to write the JSON Schema")] = Path("docs/protocol.schema.json"),
    check: Annotated[bool, typer.Option(help="exit 1 if the file differs from the code instead of writing")] = False,
) -> None:
    """Write (or --check) the JSON Schema of every protocol header and the model card."""
    from ..protocol.schema import protocol_schema_text

    text = protocol_schema_text()
    if check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            typer.echo(f"{out} is out of date; run `scanlens schema --out {out}`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date")
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        typer.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {out}")


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False) -> None:
    if version:
        typer.echo(f"scanlens {__version__}")
        raise typer.Exit()


def _add_groups() -> None:
    """Command groups of the service itself (``keys``)."""
    from .keys import app as keys_app

    app.add_typer(keys_app, name="keys")


def _plug_in() -> None:
    for ep in entry_points(group="scanlens.commands"):
        try:
            sub = ep.load()
        except ImportError as exc:  # a group whose extra is not installed
            logging.getLogger(__name__).debug("command group %s unavailable: %s", ep.name, exc)
            continue
        app.add_typer(sub, name=ep.name)


_add_groups()
_plug_in()


def main() -> None:
    app()
