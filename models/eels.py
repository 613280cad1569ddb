"""Train and export "eels-mlp": a shallow MLP that recognizes STO / LSMO / BFO and their abundances per spectrum.

Training pixels come from simulated scans (``instrument_sim.eels``, seeds 1000+) and random pure,
binary and ternary mixtures rendered with the same physics at random dose, read noise and energy
shift, on the simulator's axis and on finer axes, then resampled onto the model axis by linear
interpolation exactly as the service does. Normalisation (divide by the spectrum's sum, standardise
per channel) is inside the graph, so the ONNX input is raw counts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import nn

from scanlens.sim.eels import (
    DEFAULT_AXIS,
    PHASES,
    EELSConfig,
    EELSSample,
    simulate_spectra,
)
from scanlens.models.export import ProgressFn, TrainProgress, emit, export_reporting  # noqa: F401 (re-exported)
from scanlens.models.training import TrainResult, optimizer_record, parity_inputs, seeded_run, silu_mlp, train_epochs
from scanlens.models.training import trainer
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec

log = logging.getLogger(__name__)

NAME = "eels-mlp"
VERSION = "1"
MODEL_AXIS = Axis(size=240, offset=5.0, scale=0.5, units="eV")
#: Axes the training spectra are rendered on before resampling: the simulator's, finer ones, and one
#: whose channels fall between the model's (interpolation then averages neighbours). All of them cover
#: 5-124.5 eV, as the service refuses a scan whose axis does not.
TRAIN_AXES: tuple[Axis, ...] = (
    DEFAULT_AXIS,
    Axis(size=1024, offset=0.0, scale=0.125, units="eV"),
    Axis(size=1024, offset=-1.93, scale=0.125, units="eV"),
    Axis(size=2048, offset=-2.0, scale=0.0625, units="eV"),
)
_AXIS_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
HELDOUT_SEED = 999
TRAIN_SEED_BASE = 1000
HIDDEN = (128, 64)
INPUT_NAME = "spectra"
OUTPUT_NAMES = ("probabilities", "abundance")
MSE_WEIGHT = 20.0
DOSE_RANGE = (0.3, 3.0)  # x EELSConfig().dose, log-uniform
MAX_SHIFT_EV = 0.3
NORMALIZATION = (
    "counts / max(sum(counts over the 240 channels), 1) * 240, then per-channel (x - mean) / std "
    "with training-set constants stored in the graph"
)





@dataclass(frozen=True)
class Recipe:
    """Sizes of one training run."""

    n_scans: int  # simulated training scans (seeds TRAIN_SEED_BASE + k)
    scan_keep: float  # fraction of pure pixels (max abundance > 0.98) kept from each scan
    n_mixtures: int  # extra random pure / binary / ternary mixtures
    epochs: int
    batch: int = 512
    lr: float = 3e-3


FULL = Recipe(n_scans=8, scan_keep=0.35, n_mixtures=240_000, epochs=30)
QUICK = Recipe(n_scans=1, scan_keep=0.2, n_mixtures=12_000, epochs=3)


# --------------------------------------------------------------------------- data


def resample(spectra: np.ndarray, src: Axis, dst: Axis = MODEL_AXIS) -> np.ndarray:
    """Linear interpolation of ``[n, src.size]`` onto ``dst`` — the service's own axis mapping, so the
    network is trained on exactly what it will be fed."""
    return AxisMap.build(src, dst).apply(np.asarray(spectra))


def scan_spectra(sample: EELSSample, dst: Axis = MODEL_AXIS) -> np.ndarray:
    """Every line of ``sample`` resampled onto ``dst``: ``[rows * cols, dst.size]`` float32."""
    return np.concatenate([resample(sample.line(r), sample.cfg.axis, dst) for r in range(sample.cfg.rows)])


def _random_abundances(rng: np.random.Generator, n: int) -> np.ndarray:
    """20 % pure, 45 % binary (half of them near 50/50), 35 % ternary mixtures."""
    k = len(PHASES)
    n_pure, n_bin = int(0.2 * n), int(0.45 * n)
    n_ter = n - n_pure - n_bin
    pure = np.eye(k)[rng.integers(0, k, n_pure)]
    first = rng.integers(0, k, n_bin)
    pairs = np.stack([first, (first + rng.integers(1, k, n_bin)) % k], axis=1)
    t = np.where(rng.random(n_bin) < 0.5, rng.random(n_bin), 0.5 + rng.uniform(-0.12, 0.12, n_bin))
    binary = np.zeros((n_bin, k))
    binary[np.arange(n_bin), pairs[:, 0]] = t
    binary[np.arange(n_bin), pairs[:, 1]] = 1.0 - t
    ternary = rng.dirichlet(np.ones(k), n_ter)
    a = np.concatenate([pure, binary, ternary])
    return a[rng.permutation(n)]


def _random_noise(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-spectrum dose (log-uniform), read noise and energy shift (quantised to 0.01 eV)."""
    d0 = EELSConfig().dose
    dose = d0 * np.exp(rng.uniform(math.log(DOSE_RANGE[0]), math.log(DOSE_RANGE[1]), n))
    read = rng.uniform(0.0, 2.0 * EELSConfig().read_noise, n)
    shift = np.round(rng.uniform(-MAX_SHIFT_EV, MAX_SHIFT_EV, n), 2)
    return dose, read, shift


def make_mixtures(rng: np.random.Generator, n: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random mixtures rendered on random training axes and resampled: (spectra, abundances)."""
    a = _random_abundances(rng, n)
    dose, read, shift = _random_noise(rng, n)
    which = rng.choice(len(TRAIN_AXES), n, p=_AXIS_WEIGHTS)
    x = np.empty((n, MODEL_AXIS.size), dtype=np.float32)
    for k, axis in enumerate(TRAIN_AXES):
        idx = np.flatnonzero(which == k)
        for start in range(0, idx.size, chunk):
            sel = idx[start : start + chunk]
            raw = simulate_spectra(a[sel], axis, dose=dose[sel], read_noise=read[sel], rng=rng, shift_eV=shift[sel])
            x[sel] = resample(raw, axis)
    return x, a.astype(np.float32)


def make_scan_pixels(
    rng: np.random.Generator, seed: int, keep: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of one training scan with randomised conditions; all mixed pixels, a ``keep`` share of pure ones."""
    d0, r0 = EELSConfig().dose, EELSConfig().read_noise
    cfg = EELSConfig(
        axis=TRAIN_AXES[int(rng.choice(len(TRAIN_AXES), p=_AXIS_WEIGHTS))],
        dose=float(d0 * np.exp(rng.uniform(math.log(DOSE_RANGE[0]), math.log(DOSE_RANGE[1])))),
        read_noise=float(rng.uniform(0.0, 2.0 * r0)),
        drift_eV=float(rng.uniform(0.0, 2 * MAX_SHIFT_EV)),
        interface_width_px=float(rng.uniform(1.5, 4.0)),
        roughness_px=float(rng.uniform(0.5, 3.0)),
        seed=seed,
    )
    sample = EELSSample(cfg)
    x = scan_spectra(sample)
    a = sample.abundance.reshape(-1, len(PHASES))
    sel = (a.max(axis=1) < 0.98) | (rng.random(a.shape[0]) < keep)
    return x[sel], a[sel]


# --------------------------------------------------------------------------- network


class EELSNet(nn.Module):
    """Sum-normalise, standardise, MLP, then two softmax heads: class probabilities and abundances."""

    def __init__(self, n_in: int = MODEL_AXIS.size, hidden: tuple[int, ...] = HIDDEN, n_out: int = len(PHASES)):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.body, width = silu_mlp(n_in, hidden)
        self.classes = nn.Linear(width, n_out)
        self.abundance = nn.Linear(width, n_out)
        self.n_in = n_in

    def normalize(self, counts: torch.Tensor) -> torch.Tensor:
        total = counts.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return counts / total * self.n_in

    def logits(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body((self.normalize(counts) - self.mean) / self.std)
        return self.classes(h), self.abundance(h)

    def forward(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, abd = self.logits(counts)
        return torch.softmax(cls, dim=-1), torch.softmax(abd, dim=-1)

    @torch.no_grad()
    def fit_normalization(self, counts: torch.Tensor) -> None:
        z = self.normalize(counts)
        self.mean.copy_(z.mean(dim=0))
        self.std.copy_(z.std(dim=0).clamp_min(1e-3))


def architecture() -> str:
    dims = " -> ".join(str(d) for d in (MODEL_AXIS.size, *HIDDEN))
    return f"MLP {dims} (SiLU) -> 2 heads x {len(PHASES)} (softmax); sum-normalisation + standardisation in graph"


@torch.no_grad()
def predict(model: EELSNet, x: np.ndarray, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, abundances) as numpy for raw counts ``x`` on the model axis."""
    model.eval()
    probs, abds = [], []
    for start in range(0, len(x), batch):
        p, a = model(torch.from_numpy(x[start : start + batch]))
        probs.append(p.numpy())
        abds.append(a.numpy())
    return np.concatenate(probs), np.concatenate(abds)


def scan_metrics(probs: np.ndarray, abundance: np.ndarray, truth: EELSSample) -> dict[str, float]:
    """Per-pixel phase accuracy (argmax of probabilities) and abundance RMSE against a scan's ground truth."""
    gt_a = truth.abundance.reshape(-1, len(PHASES))
    gt_p = truth.phase.reshape(-1)
    return {
        "phase_accuracy": float(np.mean(probs.argmax(axis=1) == gt_p)),
        "abundance_rmse": float(np.sqrt(np.mean((abundance - gt_a) ** 2))),
    }


# --------------------------------------------------------------------------- training


def build_dataset(
    recipe: Recipe, seed: int, progress: ProgressFn | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Training spectra (model axis, raw counts), their abundances and the scan seeds used."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    total = recipe.n_scans + 1
    xs, as_ = [], []
    seeds = [TRAIN_SEED_BASE + seed * 100 + k for k in range(recipe.n_scans)]
    for k, s in enumerate(seeds):
        x, a = make_scan_pixels(rng, s, recipe.scan_keep)
        xs.append(x)
        as_.append(a)
        emit(progress, TrainProgress("data", k + 1, total, message=f"scan seed {s}: {len(x)} pixels"))
    x, a = make_mixtures(rng, recipe.n_mixtures)
    xs.append(x)
    as_.append(a)
    emit(progress, TrainProgress("data", total, total, message=f"{len(x)} random mixtures"))
    return np.concatenate(xs), np.concatenate(as_), seeds


def fit(*, quick: bool = False, seed: int = 0, progress: ProgressFn | None = None) -> TrainResult[EELSNet]:
    """Generate the data, train the network (deterministic for a seed) and score it on the held-out scan."""
    recipe = QUICK if quick else FULL
    with seeded_run(seed) as clock:
        x_np, a_np, seeds = build_dataset(recipe, seed, progress)
        clock.lap("data")

        model = EELSNet()
        x = torch.from_numpy(x_np)
        a = torch.from_numpy(a_np)
        labels = a.argmax(dim=1)
        model.fit_normalization(x)

        def batch_loss(idx: torch.Tensor, _gen: torch.Generator) -> torch.Tensor:
            cls_logits, abd_logits = model.logits(x[idx])
            target = a[idx]
            loss_cls = nn.functional.cross_entropy(cls_logits, labels[idx])
            loss_abd = nn.functional.cross_entropy(abd_logits, target)
            loss_mse = torch.mean((torch.softmax(abd_logits, dim=-1) - target) ** 2)
            return loss_cls + loss_abd + MSE_WEIGHT * loss_mse

        loss_value = train_epochs(model, len(x), batch_loss, recipe, seed=seed, progress=progress)
        clock.lap("training")

        heldout = EELSSample(EELSConfig(seed=HELDOUT_SEED))
        x_val = scan_spectra(heldout)
        probs, abd = predict(model, x_val)
        metrics = scan_metrics(probs, abd, heldout)
        metrics["final_train_loss"] = float(loss_value)
        log.info("%s; held-out %s", clock, metrics)

    d0 = EELSConfig().dose
    training: dict[str, Any] = {
        "generator": "instrument_sim.eels",
        "scan_seeds": seeds,
        "heldout_seed": HELDOUT_SEED,
        "seed": seed,
        "quick": quick,
        "n_samples": int(len(x_np)),
        "n_scan_pixels": int(len(x_np) - recipe.n_mixtures),
        "n_mixtures": recipe.n_mixtures,
        **optimizer_record(recipe),
        "loss": f"CE(class) + CE(abundance, soft labels) + {MSE_WEIGHT:g} MSE(abundance)",
        "dose_range": [DOSE_RANGE[0] * d0, DOSE_RANGE[1] * d0],
        "read_noise_range": [0.0, 2.0 * EELSConfig().read_noise],
        "shift_eV_range": [-MAX_SHIFT_EV, MAX_SHIFT_EV],
        "source_axes": [ax.model_dump() for ax in TRAIN_AXES],
        "resampling": "np.interp (linear) at the model axis channel positions",
        "torch": torch.__version__,
    }
    return TrainResult(model=model, metrics=metrics, training=training, check_inputs=parity_inputs(x_val, 4096, seed))


def model_card(result: TrainResult[EELSNet]) -> ModelCard:
    """The card stored in the ONNX file's metadata."""
    return ModelCard(
        name=NAME,
        version=VERSION,
        modality="eels",
        description=(
            "Per-pixel recognition of SrTiO3 / La0.7Sr0.3MnO3 / BiFeO3 (STO / LSMO / BFO) in EELS "
            "spectrum images of oxide heterostructures: phase class and linear-mixing abundances "
            "from the low-loss (plasmon) and core-loss (M2,3 / N4,5 edges) regions, 5-124.5 eV."
        ),
        architecture=architecture(),
        input=InputSpec(name=INPUT_NAME, axis=MODEL_AXIS, normalization=NORMALIZATION),
        outputs=[
            OutputSpec(
                name="probabilities",
                role="class_probabilities",
                labels=list(PHASES),
                description="softmax over phases; trained on argmax(abundance)",
            ),
            OutputSpec(
                name="abundance",
                role="parameters",
                labels=list(PHASES),
                units=["fraction"] * len(PHASES),
                description="linear-mixing fractions, non-negative, summing to 1",
            ),
        ],
        training=result.training,
        metrics=result.metrics,
    )


def export(result: TrainResult[EELSNet], out_path: str | PathLike[str], progress: ProgressFn | None = None) -> float:
    """Write the single-file ONNX with its card, check ONNX Runtime against torch; return the max difference."""
    return export_reporting(result.model, result.check_inputs, out_path, model_card(result), OUTPUT_NAMES, progress)


train = trainer(NAME, fit, export)
