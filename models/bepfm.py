"""Train and export "bepfm-mlp": an MLP that tells substrate, M. lysodeikticus and P. fluorescens apart per pixel.

Recognition imaging after Nikiforov et al., Nanotechnology 20, 405708 (2009): a network trained on
labelled pixels classifies every pixel's band-excitation response (amplitude and phase against
frequency around the contact resonance). Training pixels come from simulated scans
(``instrument_sim.bepfm``, seeds 1000+) at random noise, cell density, pixel size and rim width,
rendered on the simulator's band and on other frequency axes (one of them in Hz), then resampled onto
the model axis by linear interpolation with the service's own ``AxisMap``. Normalisation
(``asinh`` of the amplitude, per-feature standardisation) is inside the graph, so the ONNX input is
the raw ``[n, 112, 2]`` (amplitude a.u., phase rad) response.
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

from scanlens.sim.bepfm import CLASSES, COMPONENTS, DEFAULT_AXIS, BEPFMConfig, BEPFMSample
from scanlens.models.export import ProgressFn, TrainProgress, emit, export_reporting
from scanlens.models.training import TrainResult, optimizer_record, parity_inputs, seeded_run, silu_mlp, train_epochs
from scanlens.models.training import trainer
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec

log = logging.getLogger(__name__)

NAME = "bepfm-mlp"
VERSION = "1"
MODEL_AXIS = Axis(size=112, offset=316.0, scale=0.6, units="kHz")
#: Axes the training scans are rendered on before resampling: the simulator's band, a coarser and a
#: finer one whose channels fall between the model's, and one in Hz. All cover 316-382.6 kHz.
TRAIN_AXES: tuple[Axis, ...] = (
    DEFAULT_AXIS,
    Axis(size=96, offset=305.0, scale=0.85, units="kHz"),
    Axis(size=256, offset=312.3, scale=0.3, units="kHz"),
    Axis(size=160, offset=314_000.0, scale=450.0, units="Hz"),
)
_AXIS_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
HELDOUT_SEED = 999
TRAIN_SEED_BASE = 1000
HIDDEN = (128, 64)
INPUT_NAME = "response"
OUTPUT_NAMES = ("probabilities",)
NOISE_RANGE = (0.6, 1.8)  # x BEPFMConfig().noise, log-uniform
NORMALIZATION = (
    "amplitude -> asinh(amplitude), phase unchanged (radians); then per-feature (x - mean) / std over the "
    "112 x 2 features with training-set constants stored in the graph"
)


@dataclass(frozen=True)
class Recipe:
    """Sizes of one training run."""

    n_scans: int  # simulated training scans (seeds TRAIN_SEED_BASE + seed * 100 + k)
    bg_keep: float  # fraction of interior substrate pixels kept (cells and rims are always kept)
    epochs: int
    batch: int = 1024
    lr: float = 4e-3


FULL = Recipe(n_scans=16, bg_keep=0.35, epochs=20)
QUICK = Recipe(n_scans=2, bg_keep=0.35, epochs=3)


# --------------------------------------------------------------------------- data


def resample(lines: np.ndarray, src: Axis, dst: Axis = MODEL_AXIS) -> np.ndarray:
    """Linear interpolation of ``[n, src.size, 2]`` onto ``dst`` — the service's own axis mapping."""
    return AxisMap.build(src, dst).apply(np.asarray(lines))


def scan_responses(sample: BEPFMSample, dst: Axis = MODEL_AXIS) -> np.ndarray:
    """Every line of ``sample`` resampled onto ``dst``: ``[rows * cols, dst.size, 2]`` float32."""
    amap = AxisMap.build(sample.cfg.axis, dst)
    return np.concatenate([amap.apply(sample.line(r)) for r in range(sample.cfg.rows)])


def training_config(rng: np.random.Generator, seed: int) -> BEPFMConfig:
    """A training scan's randomised conditions: axis, noise, cell densities, pixel size, rim width."""
    base = BEPFMConfig()
    return BEPFMConfig(
        axis=TRAIN_AXES[int(rng.choice(len(TRAIN_AXES), p=_AXIS_WEIGHTS))],
        noise=float(base.noise * np.exp(rng.uniform(math.log(NOISE_RANGE[0]), math.log(NOISE_RANGE[1])))),
        pixel_size_um=float(rng.uniform(0.07, 0.13)),
        cocci_per_100um2=float(base.cocci_per_100um2 * rng.uniform(0.8, 2.0)),
        rods_per_100um2=float(base.rods_per_100um2 * rng.uniform(0.8, 2.0)),
        edge_um=float(rng.uniform(0.015, 0.06)),
        seed=seed,
    )


def make_scan_pixels(rng: np.random.Generator, seed: int, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels of one training scan: every cell and rim pixel, a ``keep`` share of interior substrate."""
    sample = BEPFMSample(training_config(rng, seed))
    x = scan_responses(sample)
    y = sample.label.reshape(-1)
    interior_bg = (y == 0) & (sample.coverage.reshape(-1) < 0.02)
    sel = ~interior_bg | (rng.random(y.size) < keep)
    return x[sel], y[sel].astype(np.int64)


def build_dataset(
    recipe: Recipe, seed: int, progress: ProgressFn | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Training responses (model axis), their class labels and the scan seeds used."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    seeds = [TRAIN_SEED_BASE + seed * 100 + k for k in range(recipe.n_scans)]
    xs, ys = [], []
    for k, s in enumerate(seeds):
        x, y = make_scan_pixels(rng, s, recipe.bg_keep)
        xs.append(x)
        ys.append(y)
        emit(progress, TrainProgress("data", k + 1, len(seeds), message=f"scan seed {s}: {len(x)} pixels"))
    return np.concatenate(xs), np.concatenate(ys), seeds


# --------------------------------------------------------------------------- network


class BEPFMNet(nn.Module):
    """asinh(amplitude) and phase, standardised per feature, then an MLP and a softmax over the classes."""

    def __init__(self, n_in: int = MODEL_AXIS.size, hidden: tuple[int, ...] = HIDDEN, n_out: int = len(CLASSES)):
        super().__init__()
        n_feat = n_in * len(COMPONENTS)
        self.register_buffer("mean", torch.zeros(n_feat))
        self.register_buffer("std", torch.ones(n_feat))
        self.body, width = silu_mlp(n_feat, hidden)
        self.head = nn.Linear(width, n_out)

    @staticmethod
    def features(response: torch.Tensor) -> torch.Tensor:
        """``[n, channels, 2]`` -> ``[n, 2 * channels]``: asinh(amplitude) then phase."""
        return torch.cat([torch.asinh(response[..., 0]), response[..., 1]], dim=-1)

    def logits(self, response: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((self.features(response) - self.mean) / self.std))

    def forward(self, response: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(response), dim=-1)

    @torch.no_grad()
    def fit_normalization(self, response: torch.Tensor) -> None:
        z = self.features(response)
        self.mean.copy_(z.mean(dim=0))
        self.std.copy_(z.std(dim=0).clamp_min(1e-3))


def architecture() -> str:
    dims = " -> ".join(str(d) for d in (MODEL_AXIS.size * len(COMPONENTS), *HIDDEN, len(CLASSES)))
    return f"MLP {dims} (SiLU, softmax); asinh(amplitude) + standardisation in graph"


@torch.no_grad()
def predict(model: BEPFMNet, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Class probabilities ``[n, 3]`` for raw responses ``[n, MODEL_AXIS.size, 2]``."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[s : s + batch])).numpy() for s in range(0, len(x), batch)])


def _key(name: str) -> str:
    return name.replace(". ", "_").replace(" ", "_")


def scan_metrics(probs: np.ndarray, truth: BEPFMSample) -> dict[str, float]:
    """Per-pixel accuracy, balanced accuracy, per-class recall and accuracy on cell rims, against ground truth."""
    pred = probs.argmax(axis=1)
    gt = truth.label.reshape(-1)
    recalls = {
        f"recall_{_key(c)}": float(np.mean(pred[gt == k] == k)) for k, c in enumerate(CLASSES) if np.any(gt == k)
    }
    cov = truth.coverage.reshape(-1)
    rim = (cov > 0.02) & (cov < 0.98)
    return {
        "accuracy": float(np.mean(pred == gt)),
        "balanced_accuracy": float(np.mean(list(recalls.values()))),
        **recalls,
        "rim_accuracy": float(np.mean(pred[rim] == gt[rim])) if rim.any() else float("nan"),
    }


# --------------------------------------------------------------------------- training


def fit(*, quick: bool = False, seed: int = 0, progress: ProgressFn | None = None) -> TrainResult[BEPFMNet]:
    """Generate the data, train the network (deterministic for a seed) and score it on the held-out scan."""
    recipe = QUICK if quick else FULL
    with seeded_run(seed) as clock:
        x_np, y_np, seeds = build_dataset(recipe, seed, progress)
        clock.lap("data")

        model = BEPFMNet()
        x = torch.from_numpy(x_np)
        y = torch.from_numpy(y_np)
        model.fit_normalization(x)

        def batch_loss(idx: torch.Tensor, _gen: torch.Generator) -> torch.Tensor:
            return nn.functional.cross_entropy(model.logits(x[idx]), y[idx])

        loss_value = train_epochs(model, len(x), batch_loss, recipe, seed=seed, progress=progress)
        clock.lap("training")

        heldout = BEPFMSample(BEPFMConfig(seed=HELDOUT_SEED))
        x_val = scan_responses(heldout)
        metrics = scan_metrics(predict(model, x_val), heldout)
        metrics["final_train_loss"] = float(loss_value)
        log.info("%s; held-out %s", clock, metrics)

    counts = np.bincount(y_np, minlength=len(CLASSES))
    training: dict[str, Any] = {
        "generator": "instrument_sim.bepfm",
        "scan_seeds": seeds,
        "heldout_seed": HELDOUT_SEED,
        "seed": seed,
        "quick": quick,
        "n_samples": int(len(x_np)),
        "class_counts": {c: int(n) for c, n in zip(CLASSES, counts)},
        "background_keep": recipe.bg_keep,
        **optimizer_record(recipe),
        "loss": "cross-entropy on the per-pixel class label (cell where its coverage >= 0.5)",
        "noise_range": [NOISE_RANGE[0] * BEPFMConfig().noise, NOISE_RANGE[1] * BEPFMConfig().noise],
        "source_axes": [ax.model_dump() for ax in TRAIN_AXES],
        "resampling": "service.pipeline.axis.AxisMap (linear) at the model axis channel positions",
        "torch": torch.__version__,
    }
    return TrainResult(model=model, metrics=metrics, training=training, check_inputs=parity_inputs(x_val, 4096, seed))


def model_card(result: TrainResult[BEPFMNet]) -> ModelCard:
    """The card stored in the ONNX file's metadata."""
    return ModelCard(
        name=NAME,
        version=VERSION,
        modality="bepfm",
        description=(
            "Per-pixel recognition of bacteria in band-excitation PFM scans (Nikiforov et al. 2009): "
            "substrate, M. lysodeikticus (Gram-positive cocci) or P. fluorescens (Gram-negative rods), "
            "from the amplitude and phase of the contact-resonance response, 316-382.6 kHz."
        ),
        architecture=architecture(),
        input=InputSpec(name=INPUT_NAME, axis=MODEL_AXIS, components=list(COMPONENTS), normalization=NORMALIZATION),
        outputs=[
            OutputSpec(
                name="probabilities",
                role="class_probabilities",
                labels=list(CLASSES),
                description="softmax over substrate and the two bacteria",
            ),
        ],
        training=result.training,
        metrics=result.metrics,
    )


def export(result: TrainResult[BEPFMNet], out_path: str | PathLike[str], progress: ProgressFn | None = None) -> float:
    """Write the single-file ONNX with its card, check ONNX Runtime against torch; return the max difference."""
    return export_reporting(result.model, result.check_inputs, out_path, model_card(result), OUTPUT_NAMES, progress)


train = trainer(NAME, fit, export)
