"""``scanlens train ...``: train recognizers on simulated data and write their ONNX files (needs the train extra)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

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


@app.callback()
def _group() -> None:
    """Train recognizers on simulated instrument data and export them as ONNX files with model cards."""


def _load_training(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        typer.echo(f"{INSTALL_HINT}\n({exc})", err=True)
        raise typer.Exit(1) from exc


@app.command("eels", help=EELS_HELP)
def eels(
    out: Annotated[
        Path, typer.Option("--out", help="where to write the ONNX file (model card in its metadata)")
    ] = MODEL_DIR / "eels-mlp.onnx",
    quick: Annotated[
        bool, typer.Option("--quick", help="small data set and 3 epochs (~10 s): a smoke test of the pipeline")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of data generation, initialisation and shuffling")] = 0,
) -> None:
    """Train "eels-mlp", the STO / LSMO / BFO recognizer for EELS spectrum images."""
    training = _load_training("models.eels")
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
    console.print("metrics (phase_accuracy and abundance_rmse on held-out simulated scan seed 999):")
    for key, value in metrics.items():
        console.print(f"  {key:<20} {value:.4g}")
