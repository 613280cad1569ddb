"""``scanlens train ...``: train recognizers on simulated data and write their ONNX files (needs the train extra)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models import MODEL_DIR

app = typer.Typer(
    help="Train recognizers on simulated instrument data and export them as ONNX files with model cards.",
    no_args_is_help=True,
)

INSTALL_HINT = "Training needs torch, onnx and onnxscript: install them with  pip install -e '.[train]'"


EELS_HELP = (
    'Train "eels-mlp", the STO / LSMO / BFO recognizer for EELS spectrum images.\n\n'
    "Simulates labelled spectra with instrument_sim.eels (training scans with seeds 1000+ and random "
    "pure / binary / ternary mixtures at random dose, read noise and energy shift, rendered on several "
    "energy axes and resampled onto the model axis 5-124.5 eV x 240 channels), trains a shallow MLP "
    "with two heads (class probabilities and abundances), exports one ONNX file with its model card, "
    "checks ONNX Runtime against torch and prints the held-out metrics (phase accuracy and abundance "
    "RMSE on simulated scan seed 999). The full run takes about 1.5 minutes on 2 CPU cores."
)
BEPFM_HELP = (
    'Train "bepfm-mlp", the background / M. lysodeikticus / P. fluorescens classifier for band-excitation '
    "PFM.\n\nSimulates labelled scans with instrument_sim.bepfm (seeds 1000+, amplitude and phase of a "
    "damped harmonic oscillator over the excitation band, on more than one frequency axis resampled to "
    "the model axis), trains a small network, exports it with its model card, checks ONNX Runtime "
    "against torch and prints held-out metrics."
)
LOOPS_HELP = (
    'Train "loops-mlp", the regression of random-bond random-field Ising disorder (J0, dJ, dh) from '
    "switching loops.\n\nSimulates loops with instrument_sim.loops (Glauber dynamics over the prior "
    "range of the parameters), trains a network with a mean and an uncertainty per parameter, exports it "
    "with its model card, checks ONNX Runtime against torch and prints held-out R² and calibration."
)
FIT_HELP = (
    'Build "eels-fit", the classical EELS physics fit: per-pixel least squares on the known STO / LSMO / '
    "BFO reference spectra in the plasmon (5-35 eV) and chemistry (35-125 eV) windows, with residual and "
    "chi-squared maps, as a fixed ONNX graph (no training; --quick and --seed are accepted and ignored). "
    "Checks ONNX Runtime against numpy least squares and prints abundance RMSE and the chi-squared ROC "
    "AUC for an unknown phase on a held-out simulated scan."
)

STEM_HELP = (
    'Train "stem-unet", the U-Net that segments atomic-resolution HAADF STEM frames of WS2 into background, '
    "metal and chalcogen columns, vacancies, dopants and adatoms (the service then finds sub-pixel atoms and "
    "defects and tracks them).\n\nTrains on synthetic frames from instrument_sim.stem (random seeds, doses, "
    "drift, jitter), exports one ONNX file with its model card, checks ONNX Runtime against torch and prints "
    "held-out atom F1 and defect accuracy."
)

Out = Annotated[Optional[Path], typer.Option("--out", help="where to write the ONNX file (default: models/<name>.onnx)")]
Quick = Annotated[bool, typer.Option("--quick", help="small data set and few epochs: a smoke test of the pipeline")]
Seed = Annotated[int, typer.Option("--seed", help="seed of data generation, initialisation and shuffling")]


@app.callback()
def _group() -> None:
    """Train recognizers on simulated instrument data and export them as ONNX files with model cards."""


def _load_training(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        typer.echo(f"{INSTALL_HINT}\n({exc})", err=True)
        raise typer.Exit(1) from exc


def _run(module: str, name: str, out: Path | None, quick: bool, seed: int) -> None:
    """Run ``module.train`` with a progress display, then print where it wrote and its held-out metrics."""
    training = _load_training(module)
    out = out or MODEL_DIR / f"{name}.onnx"
    console = Console()
    with Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(event: Any) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total, info="")
            info = f"loss {event.loss:.4f}" if event.loss is not None else event.message
            bar.update(tasks[event.stage], completed=event.step, total=event.total, info=info)
            if event.stage == "train":
                bar.console.print(f"epoch {event.step:>3}/{event.total}  loss {event.loss:.4f}")

        metrics = training.train(out, quick=quick, seed=seed, progress=on_progress)

    console.print(f"wrote {out}")
    console.print("held-out metrics:")
    for key, value in metrics.items():
        console.print(f"  {key:<24} {value:.4g}" if isinstance(value, float) else f"  {key:<24} {value}")


@app.command("eels", help=EELS_HELP)
def eels(out: Out = None, quick: Quick = False, seed: Seed = 0) -> None:
    _run("models.eels", "eels-mlp", out, quick, seed)


@app.command("bepfm", help=BEPFM_HELP)
def bepfm(out: Out = None, quick: Quick = False, seed: Seed = 0) -> None:
    _run("models.bepfm", "bepfm-mlp", out, quick, seed)


@app.command("loops", help=LOOPS_HELP)
def loops(out: Out = None, quick: Quick = False, seed: Seed = 0) -> None:
    _run("models.loops", "loops-mlp", out, quick, seed)


@app.command("stem", help=STEM_HELP)
def stem(out: Out = None, quick: Quick = False, seed: Seed = 0) -> None:
    _run("models.stem_unet", "stem-unet", out, quick, seed)


@app.command("eels-fit", help=FIT_HELP)
def eels_fit(out: Out = None, quick: Quick = False, seed: Seed = 0) -> None:
    fit = _load_training("models.physics_fit")
    out = out or MODEL_DIR / "eels-fit.onnx"
    with Console().status("building the least-squares graph and checking it against numpy ..."):
        metrics = fit.build(out)
    typer.echo(f"wrote {out}")
    for key, value in metrics.items():
        typer.echo(f"  {key:<24} {value:.4g}" if isinstance(value, float) else f"  {key:<24} {value}")
