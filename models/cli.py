"""``scanlens train ...``: train recognizers on simulated data and write their ONNX files (needs the train extra)."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scanlens.model_files import MODEL_DIR, user_model_dir

app = typer.Typer(
    help="Train recognizers on simulated instrument data and export them as ONNX files with model cards.",
    no_args_is_help=True,
)

INSTALL_HINT = "Training needs torch, onnx and onnxscript: install them with  pip install -e '.[train]'"
# models.one_frame's defaults, repeated so that --help works without torch (tests/test_one_frame.py checks them)
_ONE_FRAME_NAME = "one-frame-unet"
_ONE_FRAME_STEPS = 150
_ONE_FRAME_QUICK = 6


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
    "chi-squared maps, as a fixed ONNX graph (no network training; --quick and --seed are accepted and "
    "ignored), plus a novelty head (the same as eels-mlp's: distance of the variance-stabilised counts from "
    "the principal subspace of simulated training spectra, threshold on held-out ones; about 1-1.5 minutes "
    "on 2 cores). Checks ONNX Runtime against numpy and prints abundance RMSE, the chi-squared ROC AUC for "
    "an unknown phase on a held-out simulated scan and the novelty figures."
)

STEM_HELP = (
    'Train "stem-unet", the U-Net that segments atomic-resolution HAADF STEM frames of WS2 into background, '
    "metal and chalcogen columns, vacancies, dopants and adatoms (the service then finds sub-pixel atoms and "
    "defects and tracks them).\n\nTrains on synthetic frames from scanlens.sim.stem (random seeds, doses, "
    "drift, jitter), exports one ONNX file with its model card, checks ONNX Runtime against torch and prints "
    "held-out atom F1 and defect accuracy."
)

Out = Annotated[Optional[Path], typer.Option("--out", help="where to write the ONNX file (default: the user model "
                                                         "directory, <user models>/<name>.onnx; see --replace-shipped)")]
ReplaceShipped = Annotated[bool, typer.Option(
    "--replace-shipped", help="overwrite the shipped model of this name (service/model_files/<name>.onnx) instead of "
                              "writing to the user model directory")]
TrainedName = Annotated[Optional[str], typer.Option(
    "--name", help="the trained model's name, which --recognizer and the service call it (default: the shipped "
                   "model's, which only --replace-shipped or --out may use: a user model never shadows a shipped one)")]
Quick = Annotated[bool, typer.Option("--quick", help="small data set and few epochs: a smoke test of the pipeline")]
Seed = Annotated[int, typer.Option("--seed", help="seed of data generation, initialisation and shuffling")]


@app.callback()
def _group() -> None:
    """Train recognizers on simulated instrument data and export them as ONNX files with model cards.

    A trained model goes to the user model directory (default $SCANLENS_USER_MODEL_DIR, else
    $XDG_DATA_HOME/scanlens/models, else ~/.local/share/scanlens/models), which `scanlens serve` loads next to
    the shipped models; or to --out FILE. Only --replace-shipped overwrites a shipped model. A model in the user
    directory must not have a shipped model's name (give --name): train refuses, and so does the service at
    start-up, naming both files.
    """


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _destination(name: str, out: Path | None, replace_shipped: bool) -> Path:
    """Where a model called ``name`` is written: ``out``; the shipped file with ``replace_shipped``; else the
    user model directory (created). One clear line and exit 2 when the choice would overwrite a shipped
    model without --replace-shipped, or put a shipped model's name into the user model directory."""
    shipped = MODEL_DIR / f"{name}.onnx"
    users = user_model_dir()
    fix = (f"give it another --name, write it elsewhere with --out FILE, or overwrite the shipped model with "
           f"--replace-shipped")
    if replace_shipped:
        if out is not None:
            _fail("give --out or --replace-shipped, not both")
        if not shipped.is_file():
            _fail(f"there is no shipped model {name!r} to replace ({MODEL_DIR} holds "
                  f"{', '.join(sorted(p.stem for p in MODEL_DIR.glob('*.onnx')))}); without --replace-shipped the "
                  f"model goes to the user model directory {users}")
        return shipped
    if out is not None:
        where = out.expanduser().resolve().parent
        if where == MODEL_DIR.resolve():
            _fail(f"--out {out} is in the shipped models' directory {MODEL_DIR}: pass --replace-shipped to replace "
                  f"a shipped model on purpose, or write elsewhere")
        if where == users.expanduser().resolve() and shipped.is_file():
            _fail(f"{name!r} is the name of a shipped model ({shipped}); in the user model directory it would "
                  f"shadow it: {fix}")
        try:  # before training, not after it
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"cannot write --out {out}: {exc.strerror or exc}")
        if out.is_dir() or not os.access(out.parent, os.W_OK):
            _fail(f"cannot write --out {out}: {'a directory' if out.is_dir() else 'no write permission'}")
        return out
    if shipped.is_file():
        _fail(f"{name!r} is the name of a shipped model ({shipped}); in the user model directory {users} it would "
              f"shadow it: {fix}")
    try:
        users.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create the user model directory {users}: {exc.strerror or exc} (set SCANLENS_USER_MODEL_DIR "
              f"or give --out)")
    return users / f"{name}.onnx"


def _rename(path: Path, name: str) -> None:
    """Give the model file at ``path`` the name ``name`` in its card (training writes the default name)."""
    import onnx

    from .export import read_card, set_card

    proto = onnx.load(str(path))
    set_card(proto, read_card(proto).model_copy(update={"name": name}))
    onnx.save(proto, str(path))


def _load_training(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        typer.echo(f"{INSTALL_HINT}\n({exc})", err=True)
        raise typer.Exit(1) from exc


@contextlib.contextmanager
def _progress_display(console: Console, unit: str = "epoch") -> Iterator[Callable[[Any], None]]:
    """A progress bar per training stage, and a line per ``unit`` reported; yields the ``progress``
    callback for ``models.export.TrainProgress`` events."""
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
                bar.console.print(f"{unit} {event.step:>3}/{event.total}  loss {event.loss:.4f}")

        yield on_progress


def _print_metrics(console: Console, title: str | None, metrics: dict[str, Any], width: int = 24) -> None:
    if title:
        console.print(title)
    for key, value in metrics.items():
        console.print(f"  {key:<{width}} {value:.4g}" if isinstance(value, float) else f"  {key:<{width}} {value}")


def _run(module: str, name: str, out: Path | None, quick: bool, seed: int, *, new_name: str | None = None,
         replace_shipped: bool = False) -> None:
    """Run ``module.train`` with a progress display, then print where it wrote and its held-out metrics.
    ``new_name``: the model's name instead of ``name`` (the card is renamed after training)."""
    final = new_name or name
    training = _load_training(module)
    out = _destination(final, out, replace_shipped)
    console = Console()
    with _progress_display(console) as on_progress:
        metrics = training.train(out, quick=quick, seed=seed, progress=on_progress)
    if final != name:
        _rename(out, final)

    console.print(f"wrote {out}")
    _print_metrics(console, "held-out metrics:", metrics)


@app.command("eels", help=EELS_HELP)
def eels(out: Out = None, quick: Quick = False, seed: Seed = 0, name: TrainedName = None,
         replace_shipped: ReplaceShipped = False) -> None:
    _run("scanlens.models.eels", "eels-mlp", out, quick, seed, new_name=name, replace_shipped=replace_shipped)


@app.command("bepfm", help=BEPFM_HELP)
def bepfm(out: Out = None, quick: Quick = False, seed: Seed = 0, name: TrainedName = None,
          replace_shipped: ReplaceShipped = False) -> None:
    _run("scanlens.models.bepfm", "bepfm-mlp", out, quick, seed, new_name=name, replace_shipped=replace_shipped)


@app.command("loops", help=LOOPS_HELP)
def loops(out: Out = None, quick: Quick = False, seed: Seed = 0, name: TrainedName = None,
          replace_shipped: ReplaceShipped = False) -> None:
    _run("scanlens.models.loops", "loops-mlp", out, quick, seed, new_name=name, replace_shipped=replace_shipped)


@app.command("stem", help=STEM_HELP)
def stem(out: Out = None, quick: Quick = False, seed: Seed = 0, name: TrainedName = None,
         replace_shipped: ReplaceShipped = False) -> None:
    _run("scanlens.models.stem_unet", "stem-unet", out, quick, seed, new_name=name, replace_shipped=replace_shipped)


@app.command("eels-fit", help=FIT_HELP)
def eels_fit(out: Out = None, quick: Quick = False, seed: Seed = 0, name: TrainedName = None,
             replace_shipped: ReplaceShipped = False) -> None:
    final = name or "eels-fit"
    fit = _load_training("scanlens.models.physics_fit")
    out = _destination(final, out, replace_shipped)
    console = Console()
    with _progress_display(console) as on_progress:
        metrics = fit.build(out, progress=on_progress)
    if final != "eels-fit":
        _rename(out, final)
    console.print(f"wrote {out}")
    _print_metrics(console, None, metrics)


ONE_FRAME_HELP = (
    "Train on one frame, apply to the movie: fit the stem-unet network to ONE labelled HAADF frame and "
    "export it as a new image recognizer for the rest of that movie (recorded or live).\n\n"
    "--image is the frame as a 2-D .npy array (raw detector counts work best: they are augmented by "
    "binomial thinning, i.e. fresh Poisson noise at the frame's dose and below); --labels a .npy of the same "
    "shape with one class index per pixel: 0 background, 1 metal, 2 chalcogen, 3 metal_vacancy, "
    "4 chalcogen_vacancy, 5 dopant, 6 adatom, a blob (disk) around every atom column and vacancy site, as "
    "`scanlens sim stem-frame` writes them. --pixel-size-nm is the frame's pixel size, which becomes the "
    "model's: the service rescales frames of other pixel sizes to it. Training uses random crops in all 8 "
    "flips/rotations with fresh noise, so moved defects and a drifted lattice in later frames are recognized; "
    "the lattice spacing (and with it the peak spacing, tracking gate and defect-region size of the card's "
    "post-processing) is measured from the labels. The run takes about half a minute on 2 CPU cores "
    f"({_ONE_FRAME_STEPS} steps; --quick: {_ONE_FRAME_QUICK} steps, a smoke test). Prints progress, where it "
    "wrote and the training loss and atom F1 on the training frame itself (not a held-out score). It writes to "
    "the user model directory (or --out), which `scanlens serve` loads next to the shipped models: restart the "
    "service and stream with --recognizer NAME."
)

ImagePath = Annotated[Path, typer.Option("--image", help="the frame: 2-D .npy array, h x w (raw counts)",
                                         exists=True, dir_okay=False)]
LabelsPath = Annotated[Path, typer.Option("--labels", help="labels: .npy, h x w, of SEG_CLASSES indices 0-6",
                                          exists=True, dir_okay=False)]
PixelNm = Annotated[float, typer.Option("--pixel-size-nm", help="the frame's pixel size in nm (becomes the model's)")]
ModelName = Annotated[str, typer.Option("--name", help="the model's name: what the service and --recognizer call it")]
Steps = Annotated[Optional[int], typer.Option("--steps", min=1, help=f"training steps (default {_ONE_FRAME_STEPS}; "
                                                                      f"--quick {_ONE_FRAME_QUICK})")]
OneFrameQuick = Annotated[bool, typer.Option("--quick", help=f"{_ONE_FRAME_QUICK} steps: a smoke test of the pipeline")]
Threads = Annotated[int, typer.Option("--threads", min=1, help="torch threads")]


@app.command("one-frame", help=ONE_FRAME_HELP)
def one_frame(
    image: ImagePath,
    labels: LabelsPath,
    pixel_size_nm: PixelNm,
    out: Out = None,
    name: ModelName = _ONE_FRAME_NAME,
    steps: Steps = None,
    quick: OneFrameQuick = False,
    seed: Seed = 0,
    threads: Threads = 2,
    replace_shipped: ReplaceShipped = False,
) -> None:
    import numpy as np

    training = _load_training("scanlens.models.one_frame")
    out = _destination(name, out, replace_shipped)
    try:
        frame = np.load(image, allow_pickle=False)
        label_image = np.load(labels, allow_pickle=False)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot read the frame or the labels as .npy arrays: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not (isinstance(frame, np.ndarray) and isinstance(label_image, np.ndarray)):
        typer.echo("error: --image and --labels must each be one array saved with numpy.save (.npy), not .npz",
                   err=True)
        raise typer.Exit(2)
    n_steps = steps if steps is not None else training.QUICK_STEPS if quick else training.STEPS
    console = Console()
    console.print(f"training {name!r} on {image} ({'x'.join(map(str, frame.shape))} px at {pixel_size_nm:g} nm/px), "
                  f"{n_steps} steps")
    try:
        with _progress_display(console, unit="step") as on_progress:
            metrics = training.train_one_frame(frame, label_image, pixel_size_nm, out, name=name, steps=n_steps,
                                               seed=seed, progress=on_progress, threads=threads)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console.print(f"wrote {out}")
    _print_metrics(console, "training-frame metrics (scored on the frame it was trained on, not held out):", metrics,
                   width=34)
    if out.parent.resolve() in (MODEL_DIR.resolve(), user_model_dir().expanduser().resolve()):
        console.print("serve it:  (re)start `scanlens serve`, which loads this directory")
    else:
        console.print(f"serve it:  scanlens serve --model-dir {out.parent}")
    console.print(f"then pick it for a scan:  --recognizer {name}")

