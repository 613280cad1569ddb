"""Train and export "loops-mlp": regression of random-bond random-field Ising disorder (J0, dJ, dh) from switching loops.

Training loops come from ``instrument_sim.loops`` (Glauber dynamics of the RB-RF Ising model) with
parameters drawn from :data:`PRIOR`, simulated on the simulator's field axis and on two finer ones,
then resampled onto the model axis with the service's own ``AxisMap`` (linear interpolation), exactly
what the service does to a scan. Fresh white measurement noise of a random level is added to every
batch. The network standardises each input channel inside the graph (raw polarisation in), and has
two heads per parameter: the mean and the log-variance of a Gaussian; the mean is trained by squared
error, the variance by the Gaussian negative log-likelihood of the (fixed) mean's error. The ONNX
outputs are ``parameters`` (means) and ``uncertainty`` (predicted standard deviations).

Identifiability, measured on held-out loops: a loop pins down the coupling J0, the total disorder and
whether it acts on bonds or on fields, but a weak kind of disorder under a strong one of the other kind
leaves almost no trace (dh up to ~1 k_BT under dJ ~ 3 k_BT, dJ up to ~1 under dh ~ 6). There the
prior decides; it therefore mirrors the film model: each kind of disorder is either weak or strong,
with a 10 % uniform share in between.

The full run (82k training loops, 40 epochs) takes about 4.5 minutes on 2 cores, almost all of it
simulating loops; ``quick=True`` about 10 s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import nn

from scanlens.sim.loops import (
    BLOCK,
    COMPONENTS,
    DEFAULT_AXIS,
    GRAINS,
    H_MAX,
    LATTICE,
    PARAM_UNITS,
    PARAMS,
    SWEEPS_PER_STEP,
    TEMPERATURE,
    LoopsConfig,
    LoopsSample,
    process_pool,
    simulate_loops_parallel,
)
from scanlens.models.export import ProgressFn, TrainProgress, emit, export_reporting
from scanlens.models.training import TrainResult, optimizer_record, parity_inputs, seeded_run, silu_mlp, train_epochs
from scanlens.models.training import trainer
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec

log = logging.getLogger(__name__)

NAME = "loops-mlp"
VERSION = "1"
MODEL_AXIS: Axis = DEFAULT_AXIS
#: Axes the training loops are sampled on before resampling onto MODEL_AXIS (all span the full sweep).
TRAIN_AXES: tuple[Axis, ...] = (
    DEFAULT_AXIS,
    Axis(size=101, offset=-H_MAX, scale=2 * H_MAX / 100, units="a.u."),
    Axis(size=160, offset=-H_MAX, scale=2 * H_MAX / 159, units="a.u."),
)
_AXIS_WEIGHTS = (0.5, 0.25, 0.25)
#: Prior of the training loops, per parameter a mixture of uniform laws (weight, low, high), k_B T.
#: It covers the demo film (LoopsConfig defaults: J0 0.7-3.1, dJ 0.2-3.0, dh 0.3-6.0) with margin.
PRIOR: dict[str, tuple[tuple[float, float, float], ...]] = {
    "J0": ((1.0, 0.6, 3.3),),
    "dJ": ((0.45, 0.0, 0.6), (0.45, 2.0, 3.6), (0.1, 0.0, 3.6)),
    "dh": ((0.45, 0.0, 1.0), (0.45, 3.6, 6.4), (0.1, 0.0, 6.8)),
}
NOISE_RANGE = (0.0, 2.0 * LoopsConfig().noise)  # rms measurement noise added to training batches
HELDOUT_SEED = 999
DATA_SEED_BASE = 1000
HIDDEN = (256, 128, 64)
INPUT_NAME = "loops"
OUTPUT_NAMES = ("parameters", "uncertainty")
LOGVAR_RANGE = (-12.0, 6.0)  # clamp of the standardised log-variance head
NORMALIZATION = (
    "none outside the graph: input is the polarisation in units of its saturation value (-1..1); the "
    "graph flattens [n, 64, 2] (field, up/down) and standardises every channel with training-set "
    "mean and std stored in the graph"
)


@dataclass(frozen=True)
class Recipe:
    """Sizes of one training run."""

    n_loops: int  # simulated training loops
    n_val: int  # held-out loops from the prior
    epochs: int
    heldout_shape: tuple[int, int]  # rows, cols of the held-out simulated scan
    batch: int = 512
    lr: float = 3e-3
    workers: int = 2


FULL = Recipe(n_loops=81_920, n_val=4096, epochs=40, heldout_shape=(64, 64))
QUICK = Recipe(n_loops=2048, n_val=256, epochs=4, heldout_shape=(12, 12))


# --------------------------------------------------------------------------- data


def resample(loops: np.ndarray, src: Axis, dst: Axis = MODEL_AXIS) -> np.ndarray:
    """``[n, src.size, 2]`` onto ``dst`` by linear interpolation: the service's own axis mapping."""
    return AxisMap.build(src, dst).apply(np.asarray(loops))


def scan_loops(sample: LoopsSample, dst: Axis = MODEL_AXIS) -> np.ndarray:
    """Every (noisy) line of ``sample`` resampled onto ``dst``: ``[rows * cols, dst.size, 2]`` float32."""
    return np.concatenate([resample(sample.line(r), sample.cfg.axis, dst) for r in range(sample.cfg.rows)])


def sample_prior(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 3]`` float64 draws of (J0, dJ, dh) from :data:`PRIOR`."""
    out = np.empty((n, len(PARAMS)))
    for k, name in enumerate(PARAMS):
        parts = np.array(PRIOR[name], dtype=np.float64)
        which = rng.choice(len(parts), n, p=parts[:, 0] / parts[:, 0].sum())
        lo, hi = parts[which, 1], parts[which, 2]
        out[:, k] = lo + (hi - lo) * rng.random(n)
    return out


def make_loops(
    params: np.ndarray, seed: int, pool: Executor | None, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Noise-free loops on the model axis for ``[n, 3]`` parameters, each simulated on a random training axis.

    ``progress(done, total)`` counts blocks of ``BLOCK`` loops."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(8,)))
    which = rng.choice(len(TRAIN_AXES), len(params), p=_AXIS_WEIGHTS)
    out = np.empty((len(params), MODEL_AXIS.size, len(COMPONENTS)), dtype=np.float32)
    done = [0] * len(TRAIN_AXES)
    total = sum(math.ceil(np.count_nonzero(which == k) / BLOCK) for k in range(len(TRAIN_AXES)))

    for k, axis in enumerate(TRAIN_AXES):
        idx = np.flatnonzero(which == k)
        if idx.size == 0:
            continue

        def report(step: int, _n: int, k: int = k) -> None:
            done[k] = step
            if progress is not None:
                progress(sum(done), total)

        raw = simulate_loops_parallel(
            params[idx, 0], params[idx, 1], params[idx, 2], axis=axis, seed=seed * 10 + k, workers=1,
            progress=report, pool=pool,
        )
        out[idx] = resample(raw, axis)
    return out


def build_dataset(
    recipe: Recipe, seed: int, progress: ProgressFn | None = None, pool: Executor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free training loops (model axis) and their parameters (float32), training then validation."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    n = recipe.n_loops + recipe.n_val
    params = sample_prior(rng, n)
    t0 = time.perf_counter()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 2.0:
            last[0] = now
            loops = min(done * BLOCK, n)
            rate = loops / max(now - t0, 1e-9)
            emit(progress, TrainProgress("data", done, total, message=f"{loops} loops, {rate:.0f}/s"))

    x = make_loops(params, DATA_SEED_BASE + seed, pool, report)
    return x, params.astype(np.float32)


# --------------------------------------------------------------------------- network


class LoopsNet(nn.Module):
    """Standardise the flattened loop, MLP, then a mean and a log-variance per parameter."""

    def __init__(self, n_in: int = MODEL_AXIS.size * len(COMPONENTS), hidden: tuple[int, ...] = HIDDEN):
        super().__init__()
        n_out = len(PARAMS)
        self.register_buffer("x_mean", torch.zeros(n_in))
        self.register_buffer("x_std", torch.ones(n_in))
        self.register_buffer("p_mean", torch.zeros(n_out))
        self.register_buffer("p_std", torch.ones(n_out))
        self.body, width = silu_mlp(n_in, hidden)
        self.head = nn.Linear(width, 2 * n_out)
        self.n_out = n_out

    def raw(self, loops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised mean and clamped standardised log-variance, ``[n, 3]`` each."""
        z = (loops.flatten(1) - self.x_mean) / self.x_std
        out = self.head(self.body(z))
        return out[:, : self.n_out], out[:, self.n_out :].clamp(*LOGVAR_RANGE)

    def forward(self, loops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.raw(loops)
        return mu * self.p_std + self.p_mean, torch.exp(0.5 * logvar) * self.p_std

    @torch.no_grad()
    def fit_normalization(self, loops: torch.Tensor, params: torch.Tensor) -> None:
        flat = loops.flatten(1)
        self.x_mean.copy_(flat.mean(dim=0))
        self.x_std.copy_(flat.std(dim=0).clamp_min(0.05))
        self.p_mean.copy_(params.mean(dim=0))
        self.p_std.copy_(params.std(dim=0).clamp_min(1e-3))


def architecture() -> str:
    dims = " -> ".join(str(d) for d in (MODEL_AXIS.size * len(COMPONENTS), *HIDDEN))
    return (f"MLP {dims} (SiLU) -> {len(PARAMS)} means + {len(PARAMS)} log-variances (Gaussian heads); "
            "flatten + per-channel standardisation in graph")


@torch.no_grad()
def predict(model: LoopsNet, x: np.ndarray, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(parameters, sigmas) as numpy for loops ``[n, MODEL_AXIS.size, 2]`` on the model axis."""
    model.eval()
    mus, sigmas = [], []
    for start in range(0, len(x), batch):
        mu, sigma = model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch])))
        mus.append(mu.numpy())
        sigmas.append(sigma.numpy())
    return np.concatenate(mus), np.concatenate(sigmas)


def regression_metrics(pred: np.ndarray, sigma: np.ndarray, truth: np.ndarray, prefix: str) -> dict[str, float]:
    """R², RMSE and the fraction of errors within the predicted 1 sigma (ideal 0.683), per parameter."""
    out: dict[str, float] = {}
    for k, name in enumerate(PARAMS):
        err = pred[:, k].astype(np.float64) - truth[:, k]
        var = float(np.var(truth[:, k]))
        out[f"{prefix}_r2_{name}"] = float(1.0 - np.mean(err**2) / var) if var > 0 else float("nan")
        out[f"{prefix}_rmse_{name}"] = float(np.sqrt(np.mean(err**2)))
        out[f"{prefix}_within_1sigma_{name}"] = float(np.mean(np.abs(err) <= sigma[:, k]))
    return out


def scan_truth(sample: LoopsSample) -> np.ndarray:
    """Ground truth ``[rows * cols, 3]`` of a scan, in PARAMS order."""
    return np.stack([sample.params[p].reshape(-1) for p in PARAMS], axis=1)


# --------------------------------------------------------------------------- training


def fit(*, quick: bool = False, seed: int = 0, progress: ProgressFn | None = None) -> TrainResult[LoopsNet]:
    """Simulate the data, train the network (deterministic for a seed) and score it on held-out loops and a scan."""
    recipe = QUICK if quick else FULL
    pool = process_pool(recipe.workers) if recipe.workers > 1 else None
    with seeded_run(seed) as clock, pool or contextlib.nullcontext():  # the pool shuts down on the way out
        x_all, y_all = build_dataset(recipe, seed, progress, pool)
        clock.lap("data")
        x, y = torch.from_numpy(x_all[: recipe.n_loops]), torch.from_numpy(y_all[: recipe.n_loops])
        x_val, y_val = x_all[recipe.n_loops :], y_all[recipe.n_loops :]

        model = LoopsNet()
        model.fit_normalization(x, y)
        lo, hi = NOISE_RANGE

        def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            """Fresh measurement noise of a random level (drawn after the epoch's permutation), then
            MSE of the standardised mean + Gaussian NLL of the log-variance given the detached error."""
            level = lo + (hi - lo) * torch.rand(len(idx), 1, 1, generator=gen)
            noisy = x[idx] + level * torch.randn(x[idx].shape, generator=gen)
            mu, logvar = model.raw(noisy)
            z = (y[idx] - model.p_mean) / model.p_std
            sq = (z - mu) ** 2
            return sq.mean() + 0.5 * (logvar + sq.detach() * torch.exp(-logvar)).mean()

        loss_value = train_epochs(model, len(x), batch_loss, recipe, seed=seed, progress=progress)
        clock.lap("training")

        noise = LoopsConfig().noise
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(9,)))
        x_val = (x_val + noise * rng.standard_normal(x_val.shape)).astype(np.float32)
        metrics = regression_metrics(*predict(model, x_val), y_val, "prior")

        rows, cols = recipe.heldout_shape
        heldout = LoopsSample(LoopsConfig(rows=rows, cols=cols, seed=HELDOUT_SEED))
        heldout.precompute(workers=1, pool=pool if rows * cols >= 1024 else None)
        x_scan = scan_loops(heldout)
        metrics.update(regression_metrics(*predict(model, x_scan), scan_truth(heldout), "scan"))
        metrics["final_train_loss"] = float(loss_value)
        log.info("%s; held-out %s", clock, metrics)

    training: dict[str, Any] = {
        "generator": "instrument_sim.loops",
        "model": "random-bond random-field Ising, Glauber (heat-bath) dynamics, checkerboard updates",
        "temperature_kBT": TEMPERATURE,
        "lattice": LATTICE,
        "grains": GRAINS,
        "sweeps_per_step": SWEEPS_PER_STEP,
        "field_sweep": [-H_MAX, H_MAX],
        "prior": {k: [list(p) for p in v] for k, v in PRIOR.items()},
        "data_seed": DATA_SEED_BASE + seed,
        "heldout_seed": HELDOUT_SEED,
        "heldout_scan_shape": list(recipe.heldout_shape),
        "seed": seed,
        "quick": quick,
        "n_samples": recipe.n_loops,
        "n_val": recipe.n_val,
        **optimizer_record(recipe),
        "loss": "MSE(standardised mean) + Gaussian NLL(log-variance | detached mean error)",
        "noise_range": list(NOISE_RANGE),
        "source_axes": [ax.model_dump() for ax in TRAIN_AXES],
        "resampling": "service.pipeline.axis.AxisMap (linear) onto the model axis",
        "seconds_data": round(clock.laps["data"], 1),
        "seconds_train": round(clock.laps["training"], 1),
        "torch": torch.__version__,
    }
    return TrainResult(model=model, metrics=metrics, training=training, check_inputs=parity_inputs(x_scan, 2048, seed))


def model_card(result: TrainResult[LoopsNet]) -> ModelCard:
    """The card stored in the ONNX file's metadata."""
    return ModelCard(
        name=NAME,
        version=VERSION,
        modality="loops",
        description=(
            "Per-pixel disorder of a ferroelectric from its switching loop P(H): the mean coupling J0, the "
            "random-bond disorder dJ and the random-field disorder dh of the random-bond random-field Ising "
            f"model (Glauber dynamics, T = {TEMPERATURE:g}, energies in k_B T), with a predicted standard deviation each."
        ),
        architecture=architecture(),
        input=InputSpec(name=INPUT_NAME, axis=MODEL_AXIS, components=list(COMPONENTS), normalization=NORMALIZATION),
        outputs=[
            OutputSpec(
                name="parameters",
                role="parameters",
                labels=list(PARAMS),
                units=list(PARAM_UNITS),
                description="posterior-mean estimates of J0, dJ, dh",
            ),
            OutputSpec(
                name="uncertainty",
                role="parameters",
                labels=[f"sigma_{p}" for p in PARAMS],
                units=list(PARAM_UNITS),
                description="predicted standard deviation of each estimate (Gaussian head)",
            ),
        ],
        training=result.training,
        metrics=result.metrics,
    )


def export(result: TrainResult[LoopsNet], out_path: str | PathLike[str], progress: ProgressFn | None = None) -> float:
    """Write the single-file ONNX with its card, check ONNX Runtime against torch; return the max difference."""
    return export_reporting(result.model, result.check_inputs, out_path, model_card(result), OUTPUT_NAMES, progress)


train = trainer(NAME, fit, export)
