"""Train and export "eels-mlp": a shallow MLP that recognizes STO / LSMO / BFO and their abundances per spectrum.

Training pixels come from simulated scans (``instrument_sim.eels``, seeds 1000+) and random pure,
binary and ternary mixtures rendered with the same physics at random dose, read noise and energy
shift, on the simulator's axis and on finer axes, then resampled onto the model axis by linear
interpolation exactly as the service does. Normalisation (divide by the spectrum's sum, standardise
per channel) is inside the graph, so the ONNX input is raw counts.

Honesty (``models/novelty.py``): the class probabilities are temperature-calibrated on held-out
training-like pixels, and a novelty head scores each spectrum's distance from the training spectra
(variance-stabilised counts, ``2 sqrt(counts + 3/8)``, against their principal subspace); the card
records its threshold and the flagged fractions on the held-out scan and on foreign data (flat noise,
another instrument's spectra, the LAO phase the model has never seen).
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
from scanlens.sim.foreign import OTHER_EELS_AXIS, eels_other_instrument, flat_noise
from scanlens.models.novelty import NoveltyFit, WithNovelty, fit_novelty, fit_temperature, novelty_output
from scanlens.models.scoring import expected_calibration_error
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
NOVELTY_COMPONENTS = 12
NOVELTY_FEATURES = "2 sqrt(counts + 3/8) on the model axis (variance-stabilised counts)"
#: The novelty score's counts floor (``models/novelty.py``) as a share of the dimmest training spectrum's mean
#: counts per channel: a spectrum dimmer than that is outside the training doses, whatever its shape.
NOVELTY_FLOOR_SHARE = 0.5
FOREIGN_SEED = 4242  # the foreign data the card's flagged fractions are measured on
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
    #: held-out training-like data (not trained on), from their own seeds: whole randomised scans, on which
    #: the temperature is fitted, and these plus this many mixtures, on which the novelty threshold is set
    n_calibration_scans: int = 2
    n_calibration: int = 40_000


FULL = Recipe(n_scans=8, scan_keep=0.35, n_mixtures=240_000, epochs=30)
QUICK = Recipe(n_scans=1, scan_keep=0.2, n_mixtures=12_000, epochs=3, n_calibration_scans=1, n_calibration=4_000)


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
        self.register_buffer("temperature", torch.ones(()))  # class logits / T (fitted after training)
        self.n_in = n_in

    def normalize(self, counts: torch.Tensor) -> torch.Tensor:
        total = counts.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return counts / total * self.n_in

    def logits(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body((self.normalize(counts) - self.mean) / self.std)
        return self.classes(h), self.abundance(h)

    def forward(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, abd = self.logits(counts)
        return torch.softmax(cls / self.temperature, dim=-1), torch.softmax(abd, dim=-1)

    def novelty_features(self, counts: torch.Tensor) -> torch.Tensor:
        return novelty_features(counts)

    @torch.no_grad()
    def fit_normalization(self, counts: torch.Tensor) -> None:
        z = self.normalize(counts)
        self.mean.copy_(z.mean(dim=0))
        self.std.copy_(z.std(dim=0).clamp_min(1e-3))


def novelty_features(counts):
    """What the novelty head measures (torch tensor or numpy array of raw counts): variance-stabilised
    counts, so that Poisson noise weighs the same at every dose and channel."""
    if isinstance(counts, np.ndarray):
        return (2.0 * np.sqrt(np.clip(counts, 0.0, None) + 0.375)).astype(np.float32)
    return 2.0 * torch.sqrt(counts.clamp_min(0.0) + 0.375)


def counts_floor(spectra: np.ndarray) -> float:
    """The counts floor of training spectra ``[n, 240]``: :data:`NOVELTY_FLOOR_SHARE` x the smallest mean counts
    per channel among them."""
    return NOVELTY_FLOOR_SHARE * float(np.asarray(spectra, np.float64).mean(axis=1).min())


def foreign_data(n: int = 4000, seed: int = FOREIGN_SEED) -> dict[str, np.ndarray]:
    """Spectra the model was not trained on, on the model axis as the service would feed them: flat
    Poisson noise (15-150 and, faint, 0.3-3 counts per channel), another instrument's spectra (zero-loss
    peak, plasmons, power-law tail, their own calibration), and pure LAO, a phase outside the training set, at the training doses."""
    rng = np.random.default_rng(seed)
    d0 = EELSConfig().dose
    dose = d0 * np.exp(rng.uniform(math.log(DOSE_RANGE[0]), math.log(DOSE_RANGE[1]), n))
    lao = simulate_spectra(np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)), DEFAULT_AXIS, dose=dose,
                           read_noise=EELSConfig().read_noise, rng=rng)
    out = {"flat_noise": flat_noise(n, MODEL_AXIS.size, rng),
           "other_instrument": resample(eels_other_instrument(n, rng), OTHER_EELS_AXIS),
           "unknown_phase": resample(lao, DEFAULT_AXIS)}
    out["faint_flat_noise"] = flat_noise(n, MODEL_AXIS.size, rng, counts_per_channel=1.0)  # 0.3-3 counts/channel
    return out


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
        gt_val = heldout.phase.reshape(-1)
        probs, _ = predict(model, x_val)
        ece_before = expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == gt_val)

        # honesty, on held-out training-like pixels: the temperature, then the novelty threshold
        cal_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
        cal_seeds = [TRAIN_SEED_BASE + seed * 100 + 50 + k for k in range(recipe.n_calibration_scans)]
        cal_scans = [make_scan_pixels(cal_rng, s, 1.0) for s in cal_seeds]  # every pixel, as a scan has them
        x_scans, a_scans = np.concatenate([x for x, _ in cal_scans]), np.concatenate([a for _, a in cal_scans])
        with torch.no_grad():
            cal_logits = model.logits(torch.from_numpy(x_scans))[0].numpy()
        model.temperature.fill_(fit_temperature(cal_logits, a_scans.argmax(axis=1)))
        x_mix, _ = make_mixtures(cal_rng, recipe.n_calibration)
        x_cal = np.concatenate([x_scans, x_mix])
        novelty = fit_novelty(novelty_features(x_np), novelty_features(x_cal), components=NOVELTY_COMPONENTS,
                              features=NOVELTY_FEATURES, seed=seed, counts_floor=counts_floor(x_np))
        novelty.calibration["heldout_scan_flagged"] = novelty.flagged(novelty_features(x_val))
        for name, x_foreign in foreign_data().items():
            novelty.calibration[f"{name}_flagged"] = novelty.flagged(novelty_features(x_foreign))
        emit(progress, TrainProgress("calibrate", 1, 1, message=f"temperature {float(model.temperature):.3f}, "
                                     f"novelty threshold {novelty.threshold:.3g}"))
        clock.lap("calibration")

        probs, abd = predict(model, x_val)
        metrics = scan_metrics(probs, abd, heldout)
        metrics["ece"] = expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == gt_val)
        metrics["ece_uncalibrated"] = ece_before
        metrics["temperature"] = float(model.temperature)
        metrics["final_train_loss"] = float(loss_value)
        log.info("%s; held-out %s; novelty %s", clock, metrics, novelty.calibration)

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
        "calibration": f"temperature on the {len(x_scans)} pixels of held-out randomised scans (seeds {cal_seeds}); "
                       f"novelty threshold on those and {recipe.n_calibration} held-out mixtures; ece on the "
                       f"held-out scan ({len(x_val)} pixels, 15 equal-width bins)",
        "foreign_data": f"scanlens.models.eels.foreign_data(seed={FOREIGN_SEED})",
        "torch": torch.__version__,
    }
    return TrainResult(model=model, metrics=metrics, training=training, check_inputs=parity_inputs(x_val, 4096, seed),
                       novelty=novelty)


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
                description="softmax over phases (temperature-calibrated); trained on argmax(abundance)",
            ),
            OutputSpec(
                name="abundance",
                role="parameters",
                labels=list(PHASES),
                units=["fraction"] * len(PHASES),
                description="linear-mixing fractions, non-negative, summing to 1",
            ),
            novelty_output(),
        ],
        training=result.training,
        metrics=result.metrics,
        novelty=result.novelty.spec(),
    )


def export(result: TrainResult[EELSNet], out_path: str | PathLike[str], progress: ProgressFn | None = None) -> float:
    """Write the single-file ONNX with its card, check ONNX Runtime against torch; return the max difference."""
    return export_reporting(WithNovelty(result.model, result.novelty.head), result.check_inputs, out_path,
                            model_card(result), (*OUTPUT_NAMES, "novelty"), progress)


train = trainer(NAME, fit, export)
