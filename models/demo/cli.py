"""``scanlens demo``: service + simulated instrument + subscriber on loopback, scored against ground truth.

The service runs in this process on free loopback ports; the simulator is the very command an
operator would run (``scanlens sim <modality>``), started as a child process, which also saves its
ground truth; a subscriber assembles the live maps (completed from a snapshot if it missed any).
At the end the maps are scored against the ground truth and drawn next to it in a PNG.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scanlens.app.config import Settings
from scanlens.recording import RecordingError
from scanlens.app.server import running
from scanlens.client import Control, ControlReply, MovieResult, ScanResult, ServiceError, Subscriber
from scanlens.pipeline import ModelError

from .figures import render_panels
from .scenarios import ALIASES, SCENARIOS, Scenario

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger(__name__)


class DemoError(RuntimeError):
    pass


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first exception in a (nested) exception group that is not itself a group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _run_simulator(args: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "scanlens.sim.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    finally:  # the scan failed or was cancelled: the simulator must not outlive the demo
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    from scanlens.sim.cli import EXIT_INCOMPLETE

    if proc.returncode == EXIT_INCOMPLETE:  # the scan's summary says what is missing; so does the demo's report
        log.warning("simulator: %s", err.decode(errors="replace").strip())
    elif proc.returncode != 0:
        raise DemoError(f"simulator exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    log.info("simulator: %s", out.decode().strip())


async def run_scan(scenario: Scenario, recognizers: list[str], rows: int, cols: int, pace: float, seed: int,
                   truth_path: Path, extra_args: list[str], *, frames: int = 0, show_progress: bool,
                   timeout: float = 120.0, record: Path | None = None
                   ) -> tuple[ScanResult | MovieResult, ControlReply, float]:
    """Run one live scan end to end: the subscriber's result, the final snapshot and the wall time.
    ``pace`` is the pixel dwell time in µs (spectral) or the frame period in ms (imaging); with ``record``
    the service records the scan there (docs/operations.md, "Recording scans")."""
    # only the models the scan runs (the others' sessions would only take memory)
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        record_dir=record, models=[r for r in recognizers if r != "pca"])
    scan_id = f"demo-{scenario.modality}-{seed}"
    t0 = time.perf_counter()
    async with running(settings) as server:
        async with Subscriber(server.endpoints["publish"], scan_id=scan_id) as sub, \
                Control(server.endpoints["control"]) as control:
            await sub.wait_ready()
            common = ["--ingest", server.endpoints["ingest"], "--publish", server.endpoints["publish"],
                      "--scan-id", scan_id, "--seed", str(seed),
                      "--truth", str(truth_path), "--quiet", *extra_args]
            if scenario.imaging:
                sim_args = ["stem", "--size", str(rows), "--frames", str(frames), "--frame-ms", str(pace), *common]
                total, unit = frames, "frames"
            else:
                sim_args = [scenario.modality, "--rows", str(rows), "--cols", str(cols), "--dwell-us", str(pace),
                            *common]
                total, unit = rows * cols, "pixels"
            for name in recognizers:
                sim_args += ["--recognizer", name]
            columns = (TextColumn("[bold]recognizing[/] " + scan_id), BarColumn(), MofNCompleteColumn(),
                       TextColumn(unit), TimeElapsedColumn())
            with Progress(*columns, disable=not show_progress, console=Console(stderr=True)) as bar:
                task = bar.add_task(unit, total=total)

                def progress(result: ScanResult | MovieResult) -> None:
                    done = (min(len(f) for f in result.frames.values()) if isinstance(result, MovieResult)
                            else int(min(f.sum() for f in result.filled.values())))
                    bar.update(task, completed=done)

                async with asyncio.TaskGroup() as tg:
                    sim = tg.create_task(_run_simulator(sim_args))
                    if scenario.imaging:
                        # the figure draws the first frame's class map only (a byte per pixel of each frame)
                        result = await sub.collect_movie(scan_id, timeout=timeout, progress=progress,
                                                         keep_classes="first")
                    else:
                        result = await sub.collect_scan(scan_id, timeout=timeout, progress=progress, control=control)
                    await sim
            snapshot = await control.snapshot(scan_id)  # final PCA maps and loadings, for the figure
    return result, snapshot, time.perf_counter() - t0


def report_of(result: ScanResult | MovieResult, snapshot: ControlReply, truth: dict[str, Any], scenario: Scenario,
              recognizer: str) -> dict[str, Any]:
    s = result.summary
    report: dict[str, Any] = {
        "modality": scenario.modality, "recognizer": recognizer, "recognizers": result.started.recognizers,
        "scan_id": s.scan_id, "state": s.state, "pixels": s.pixels_expected, "recognized": s.pixels_recognized,
        "lost": s.n_lost, "rejected": len(s.rejected), "unrecognized_pixels": s.pixels_expected - s.pixels_recognized,
        "latency_ms_p50": s.latency_ms_p50, "latency_ms_p99": s.latency_ms_p99,
        # the share of pixels (frames) unlike the recognizer's training data (None: the model has no novelty head)
        "novel_fraction": s.recognizers[recognizer].novel_fraction if recognizer in s.recognizers else None,
    }
    report.update(scenario.score(result, snapshot, truth, recognizer))
    from .scenarios import pca_score

    report.update(pca_score(result))
    return report


HEADLINE = ("accuracy", "abundance_rmse", "chi2_auc", "r2_J0", "r2_dJ", "r2_dh", "f1", "defect_accuracy",
            "diffusion_max_rel_error", "transition_max_abs_error", "low_dose_f1", "low_dose_classical_f1",
            "novel_fraction")


def _headline(report: dict[str, Any]) -> str:
    keys = [k for k in HEADLINE if report.get(k) is not None]
    return ", ".join(f"{k} {report[k]:.4f}" for k in keys)


@app.callback(invoke_without_command=True)
def demo(
    modality: Annotated[str, typer.Option(
        help="simulated instrument: eels, bepfm (bacteria), loops (switching) or haadf (STEM movie)")] = "eels",
    recognizer: Annotated[Optional[str], typer.Option(
        help="recognizer to score, by the name `scanlens models` lists (default: eels-mlp / bepfm-mlp / "
             "loops-mlp / stem-unet; the old names physics-fit, fit and nn still work)")] = None,
    pca: Annotated[bool, typer.Option(help="also run the built-in streaming PCA and draw its maps")] = True,
    unknown_region: Annotated[bool, typer.Option(help="eels: add a region of an unknown fourth phase")] = False,
    rows: Annotated[Optional[int], typer.Option(min=1, help="scan rows (default 128; loops 64)")] = None,
    cols: Annotated[Optional[int], typer.Option(min=1, help="scan columns (default 128; loops 64)")] = None,
    dwell_us: Annotated[Optional[float], typer.Option("--dwell-us", min=0.0, help="pixel dwell time, µs (0 = as fast "
                                                      "as possible; default 300, with --live-train 1000)")] = None,
    frames: Annotated[int, typer.Option(min=2, help="haadf: frames in the movie")] = 100,
    frame_ms: Annotated[float, typer.Option("--frame-ms", min=0.0, help="haadf: frame period, ms (0 = as fast as possible)")] = 40.0,
    seed: Annotated[int, typer.Option(help="sample seed (the shipped models were never trained on seed 0)")] = 0,
    out: Annotated[Path, typer.Option(help="directory for the PNG, the JSON report and the ground truth")] = Path("demo-out"),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a report")] = False,
    record: Annotated[Optional[Path], typer.Option(help="record the scan into this directory (<scan id>.h5, "
                                                   "as scanlens serve --record does)")] = None,
    live_train: Annotated[bool, typer.Option("--live-train", help="eels or bepfm: scan a sample the shipped model "
                                             "does not know, label a few patches part way through, let the service "
                                             "train a model on them, swap it in and redo the earlier lines (needs "
                                             "the train extra: pip install -e '.[train]'; docs/live-training.md)")] = False,
    label_at: Annotated[Optional[float], typer.Option(min=0.05, max=1.0, help="with --live-train: label when this "
                                                      "share of the rows has been sent (default eels 0.55, bepfm "
                                                      "0.8)")] = None,
    label_fraction: Annotated[Optional[float], typer.Option(min=0.001, max=0.5, help="with --live-train: the most of "
                                                            "the scan's pixels to label (default eels 0.02, bepfm "
                                                            "0.045)")] = None,
) -> None:
    """Watch a simulated scan being recognized live: start the service, the simulated instrument and a
    subscriber on loopback, then score the live maps against the simulator's ground truth.

    Writes <out>/demo-<modality>.png (maps next to ground truth), <out>/demo-<modality>.json and the
    ground truth <out>/truth-<modality>.npz. Exits 1 if any pixel was not recognized.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if live_train:
        from .live_train import live_train_demo

        live_train_demo(modality, rows=rows or 128, cols=cols or 128, dwell_us=1000.0 if dwell_us is None else dwell_us,
                        seed=seed, out=out, as_json=as_json, label_at=label_at, label_fraction=label_fraction)
        return
    dwell_us = 300.0 if dwell_us is None else dwell_us
    scenario = SCENARIOS.get(modality)
    if scenario is None:
        typer.echo(f"error: unknown modality {modality!r}; available: {', '.join(SCENARIOS)}", err=True)
        raise typer.Exit(2)
    rec = ALIASES.get(recognizer, recognizer) if recognizer else scenario.recognizer
    if rec == "pca":
        typer.echo("error: --recognizer pca: the built-in PCA has no classes or parameters to score; it runs next to "
                   "the recognizer with --pca (the default)", err=True)
        raise typer.Exit(2)
    recognizers = [rec] + (["pca"] if pca and rec != "pca" and not scenario.imaging else [])
    rows, cols = rows or scenario.shape[0], cols or scenario.shape[1]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        typer.echo(f"error: cannot create --out {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    truth_path = out / f"truth-{modality}.npz"
    extra = scenario.sim_args({"unknown_region": unknown_region})
    try:
        pace = frame_ms if scenario.imaging else dwell_us
        result, snapshot, wall = asyncio.run(run_scan(scenario, recognizers, rows, cols, pace, seed, truth_path,
                                                      extra, frames=frames, show_progress=not as_json, record=record))
    except (DemoError, ServiceError, TimeoutError, OSError, RecordingError, ModelError) as exc:
        typer.echo(f"error: demo failed: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    except ExceptionGroup as group:  # a task of the scan failed: report the first cause, in one line
        expected = (DemoError, ServiceError, TimeoutError, OSError, RecordingError, ModelError)
        cause = _first_leaf(group)
        if not isinstance(cause, expected):
            raise
        typer.echo(f"error: demo failed: {cause or type(cause).__name__}", err=True)
        raise typer.Exit(1) from None
    truth = scenario.load_truth(truth_path)
    report = report_of(result, snapshot, truth, scenario, rec)
    report["wall_s"] = round(wall, 2)
    title = (f"scanlens live {modality} recognition — {rec}: {_headline(report)}, "
             f"latency p99 {report['latency_ms_p99'] or 0:.2f} ms")
    png = render_panels(out / f"demo-{modality}.png", scenario.panels(result, snapshot, truth, rec), title=title,
                        ncols=scenario.ncols)
    report["png"] = str(png)
    if record is not None:  # the service wrote it when the scan closed; a reused scan id gets -1, -2 ...
        written = sorted(record.glob(f"{report['scan_id']}*.h5"), key=lambda p: p.stat().st_mtime)
        report["recording"] = str(written[-1]) if written else None
    (out / f"demo-{modality}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report))
    else:
        what = (f"{report['frames']} of {frames} frames recognized" if scenario.imaging
                else f"{report['pixels']} pixels, {report['recognized']} recognized")
        typer.echo(f"scan {report['scan_id']}: {what}, "
                   f"{report['lost']} messages lost, {report['rejected']} rejected ({report['state']})")
        for key in HEADLINE:
            if report.get(key) is not None:
                typer.echo(f"{key:<25}{report[key]:.4f}")
        for key in ("diffusion_rel_error",):
            if report.get(key):
                typer.echo(f"{key:<25}" + ", ".join(f"{k} {v:.3f}" for k, v in report[key].items()))
        if "pca_explained_variance" in report:
            typer.echo("PCA explained    " + ", ".join(f"{v:.3f}" for v in report["pca_explained_variance"]))
        typer.echo(f"latency p50/p99  {report['latency_ms_p50']:.2f} / {report['latency_ms_p99']:.2f} ms")
        typer.echo(f"maps             {png}")
        if record is not None:
            typer.echo(f"recording        {report['recording']}")
    if report["unrecognized_pixels"]:
        raise typer.Exit(1)
