"""Train and export "bepfm-mlp": an MLP that tells substrate, M. lysodeikticus and P. fluorescens apart per pixel.

Recognition imaging after Nikiforov et al., Nanotechnology 20, 405708 (2009): a network trained on
labelled pixels classifies every pixel's band-excitation response (amplitude and phase against
frequency around the contact resonance). Training pixels come from simulated scans
(``instrument_sim.bepfm``, seeds 1000+) at random noise, cell density, pixel size and rim width,
rendered on the simulator's band and on other frequency axes (one of them in Hz), then resampled onto
the model axis by linear interpolation with the service's own ``AxisMap``. Normalisation
(``asinh`` of the amplitude, per-feature standardisation) is inside the graph, so the ONNX input is
the raw ``[n, 112, 2]`` (amplitude a.u., phase rad) response.

Honesty (``models/novelty.py``, issue 11): the class probabilities are temperature-calibrated on held-out
training-like scans (their own seeds, never trained on), and a novelty head scores each response's
distance from the training responses (``BEPFMNet.novelty_features``: the network's standardised input,
the standardised lock-in quadratures and the response's amplitude scale, against their principal
subspace); the card records its threshold and the flagged fractions on the held-out scan and on foreign
data (``foreign_data``: a disconnected tip, a free cantilever mode, an electrostatic response, a hard
ferroelectric film; ``scanlens.sim.foreign``).
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
from scanlens.sim.foreign import (
    bepfm_cantilever_mode,
    bepfm_electrostatic,
    bepfm_flat_noise,
    bepfm_hard_ferroelectric,
)
from scanlens.models.novelty import WithNovelty, fit_novelty, fit_temperature, novelty_output
from scanlens.models.scoring import expected_calibration_error
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
NOVELTY_COMPONENTS = 16
NOVELTY_FEATURES = (
    "the network's standardised input (asinh amplitude, phase; 224), the standardised asinh of the lock-in's "
    "in-phase and quadrature parts A cos(phase), A sin(phase) (224), and the standardised amplitude scale "
    "(max, mean, min of asinh amplitude over the band; 3) with its square (3)"
)
FOREIGN_SEED = 4242  # the foreign data the card's flagged fractions are measured on
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
    #: held-out training-like scans (seeds TRAIN_SEED_BASE + seed * 100 + 50 + k, randomised like the training
    #: scans, every pixel, never trained on): the temperature and the novelty threshold are fitted on them
    n_calibration_scans: int = 3


FULL = Recipe(n_scans=16, bg_keep=0.35, epochs=20)
QUICK = Recipe(n_scans=2, bg_keep=0.35, epochs=3, n_calibration_scans=1)


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
    """asinh(amplitude) and phase, standardised per feature, then an MLP and a softmax over the classes of the
    logits divided by the fitted ``temperature``. Also holds the standardisation of the novelty features."""

    def __init__(self, n_in: int = MODEL_AXIS.size, hidden: tuple[int, ...] = HIDDEN, n_out: int = len(CLASSES)):
        super().__init__()
        n_feat = n_in * len(COMPONENTS)
        self.register_buffer("mean", torch.zeros(n_feat))
        self.register_buffer("std", torch.ones(n_feat))
        self.body, width = silu_mlp(n_feat, hidden)
        self.head = nn.Linear(width, n_out)
        self.register_buffer("temperature", torch.ones(()))  # logits / T (fitted after training)
        self.register_buffer("xy_mean", torch.zeros(n_feat))  # novelty features' standardisation
        self.register_buffer("xy_std", torch.ones(n_feat))
        self.register_buffer("scale_mean", torch.zeros(3))
        self.register_buffer("scale_std", torch.ones(3))

    @staticmethod
    def features(response: torch.Tensor) -> torch.Tensor:
        """``[n, channels, 2]`` -> ``[n, 2 * channels]``: asinh(amplitude) then phase."""
        return torch.cat([torch.asinh(response[..., 0]), response[..., 1]], dim=-1)

    @staticmethod
    def lockin_features(response: torch.Tensor) -> torch.Tensor:
        """``[n, channels, 2]`` -> ``[n, 2 * channels]``: asinh of the in-phase part A cos(phase) then of the
        quadrature A sin(phase) (a.u.), the lock-in's X and Y, in which the measurement noise is additive."""
        amp, phase = response[..., 0], response[..., 1]
        return torch.cat([torch.asinh(amp * torch.cos(phase)), torch.asinh(amp * torch.sin(phase))], dim=-1)

    @staticmethod
    def scale_features(response: torch.Tensor) -> torch.Tensor:
        """``[n, channels, 2]`` -> ``[n, 3]``: the largest, mean and smallest asinh(amplitude) over the band."""
        a = torch.asinh(response[..., 0])
        return torch.stack([a.amax(dim=-1), a.mean(dim=-1), a.amin(dim=-1)], dim=-1)

    def logits(self, response: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((self.features(response) - self.mean) / self.std))

    def forward(self, response: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(response) / self.temperature, dim=-1)

    def novelty_features(self, response: torch.Tensor) -> torch.Tensor:
        """What the novelty head measures, ``[n, 454]`` (``NOVELTY_FEATURES``): what ``forward`` feeds the first
        layer, the standardised lock-in quadratures, and the standardised amplitude scale ``s`` with ``s**2``
        (a scale far outside the training's range leaves the subspace, not only moves along it)."""
        s = (self.scale_features(response) - self.scale_mean) / self.scale_std
        return torch.cat([(self.features(response) - self.mean) / self.std,
                          (self.lockin_features(response) - self.xy_mean) / self.xy_std, s, s * s], dim=-1)

    @torch.no_grad()
    def fit_normalization(self, response: torch.Tensor) -> None:
        """Per-feature mean and std of the network's input and of the novelty features on the training data."""
        for feats, mean, std in ((self.features, self.mean, self.std),
                                 (self.lockin_features, self.xy_mean, self.xy_std),
                                 (self.scale_features, self.scale_mean, self.scale_std)):
            z = feats(response)
            mean.copy_(z.mean(dim=0))
            std.copy_(z.std(dim=0).clamp_min(1e-3))


@torch.no_grad()
def novelty_features(model: BEPFMNet, x: np.ndarray, batch: int = 16384) -> np.ndarray:
    """``model.novelty_features`` of raw responses ``x`` ``[n, 112, 2]`` as numpy ``[n, 454]`` float32."""
    if not len(x):
        return np.zeros((0, 4 * MODEL_AXIS.size + 6), np.float32)
    return np.concatenate([model.novelty_features(torch.from_numpy(np.ascontiguousarray(x[s : s + batch]))).numpy()
                           for s in range(0, len(x), batch)])


@torch.no_grad()
def logits_of(model: BEPFMNet, x: np.ndarray, batch: int = 16384) -> np.ndarray:
    """Uncalibrated logits ``[n, 3]`` of raw responses ``x``."""
    return np.concatenate([model.logits(torch.from_numpy(x[s : s + batch])).numpy() for s in range(0, len(x), batch)])


def foreign_data(n: int = 4000, seed: int = FOREIGN_SEED) -> dict[str, np.ndarray]:
    """Responses the model was not trained on, ``n`` of each kind, rendered on the simulator's band and
    resampled onto the model axis as the service would feed them (``scanlens.sim.foreign``, noise 0.6-1.8
    a.u. as in training): ``flat_noise`` (a disconnected tip: no resonance, an offset and the noise),
    ``cantilever_mode`` (a free cantilever's sharp mode, Q 400-1500), ``electrostatic`` (a flat amplitude with
    a phase linear in frequency) and ``hard_ferroelectric`` (a phase outside the training set: a PZT-like film,
    A0 4-20 a.u. and Q 250-600)."""
    rng = np.random.default_rng(seed)
    kinds = {"flat_noise": bepfm_flat_noise, "cantilever_mode": bepfm_cantilever_mode,
             "electrostatic": bepfm_electrostatic, "hard_ferroelectric": bepfm_hard_ferroelectric}
    return {name: resample(gen(n, rng), DEFAULT_AXIS) for name, gen in kinds.items()}


def architecture() -> str:
    dims = " -> ".join(str(d) for d in (MODEL_AXIS.size * len(COMPONENTS), *HIDDEN, len(CLASSES)))
    return f"MLP {dims} (SiLU, temperature-scaled softmax); asinh(amplitude) + standardisation in graph"


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
    """Generate the data, train the network (deterministic for a seed), calibrate it (temperature and novelty
    threshold on held-out randomised scans, see ``Recipe.n_calibration_scans``) and score it on the held-out
    scan (seed ``HELDOUT_SEED``: accuracy, ECE before and after calibration) and on ``foreign_data``."""
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
        gt_val = heldout.label.reshape(-1)
        probs = predict(model, x_val)
        ece_before = expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == gt_val)

        # honesty, on held-out training-like scans (own seeds, randomised like the training's, every pixel):
        # the temperature, then the novelty threshold; the subspace itself is fitted on the training pixels
        cal_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
        cal_seeds = [TRAIN_SEED_BASE + seed * 100 + 50 + k for k in range(recipe.n_calibration_scans)]
        cal_scans = [make_scan_pixels(cal_rng, s, 1.0) for s in cal_seeds]
        x_cal, y_cal = np.concatenate([x for x, _ in cal_scans]), np.concatenate([y for _, y in cal_scans])
        model.temperature.fill_(fit_temperature(logits_of(model, x_cal), y_cal))
        novelty = fit_novelty(novelty_features(model, x_np), novelty_features(model, x_cal),
                              components=NOVELTY_COMPONENTS, features=NOVELTY_FEATURES, seed=seed)
        novelty.calibration["heldout_scan_flagged"] = novelty.flagged(novelty_features(model, x_val))
        for name, x_foreign in foreign_data().items():
            novelty.calibration[f"{name}_flagged"] = novelty.flagged(novelty_features(model, x_foreign))
        emit(progress, TrainProgress("calibrate", 1, 1, message=f"temperature {float(model.temperature):.3f}, "
                                     f"novelty threshold {novelty.threshold:.3g}"))
        clock.lap("calibration")

        probs = predict(model, x_val)
        metrics = scan_metrics(probs, heldout)
        metrics["ece"] = expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == gt_val)
        metrics["ece_uncalibrated"] = ece_before
        metrics["ece_pixels"] = float(len(x_val))
        metrics["temperature"] = float(model.temperature)
        metrics["final_train_loss"] = float(loss_value)
        log.info("%s; held-out %s; novelty %s", clock, metrics, novelty.calibration)

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
        "calibration": f"temperature (NLL of softmax(logits / T)) and novelty threshold on the {len(x_cal)} pixels "
                       f"of {len(cal_seeds)} held-out randomised scans (seeds {cal_seeds}, never trained on); the "
                       f"novelty subspace on the training pixels; ece (15 equal-width bins) before and after on "
                       f"the {len(x_val)} pixels of the held-out scan (seed {HELDOUT_SEED}, simulator defaults)",
        "calibration_seeds": cal_seeds,
        "foreign_data": f"scanlens.models.bepfm.foreign_data(seed={FOREIGN_SEED}): 4000 responses of each kind",
        "torch": torch.__version__,
    }
    return TrainResult(model=model, metrics=metrics, training=training, check_inputs=parity_inputs(x_val, 4096, seed),
                       novelty=novelty)


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
                description="softmax over substrate and the two bacteria (temperature-calibrated)",
            ),
            novelty_output(),
        ],
        training=result.training,
        metrics=result.metrics,
        novelty=result.novelty.spec(),
    )


def export(result: TrainResult[BEPFMNet], out_path: str | PathLike[str], progress: ProgressFn | None = None) -> float:
    """Write the single-file ONNX with its card, check ONNX Runtime against torch; return the max difference."""
    return export_reporting(WithNovelty(result.model, result.novelty.head), result.check_inputs, out_path,
                            model_card(result), (*OUTPUT_NAMES, "novelty"), progress)


train = trainer(NAME, fit, export)
