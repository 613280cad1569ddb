"""stem-unet's training run: the step loop that trains a STEMUNet on batches (shared with
``models.one_frame``) and :func:`fit`, which simulates the pool, trains, tunes and scores."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scanlens.models.export import ProgressFn, TrainProgress, emit
from scanlens.models.training import TrainResult, seeded_run

from .config import (
    BACKGROUND_RANGE,
    BLUR_RANGE_NM,
    CLASS_WEIGHTS,
    DOSE_RANGE,
    DRIFT_RANGE_PX,
    FULL,
    HELDOUT_SEEDS,
    JITTER_RANGE_PX,
    LOWDOSE_SEEDS,
    PADDED_SHARE,
    PIXEL_RANGE_NM,
    QUICK,
    RESCALED_SEEDS,
    RESCALED_SHARE,
    TARGET_SIGMA_PX,
    TUNING_SEEDS,
    Recipe,
)
from .data import PoolFrame, build_pool, sample_batch
from .evaluation import heldout_metrics, simulated_frame, tune_postprocess
from .honesty import calibration_errors, fit_frame_novelty, fit_pixel_temperature
from .network import STEMUNet, loss_fn

log = logging.getLogger(__name__)


@dataclass
class SegmentationResult(TrainResult[STEMUNet]):
    """The training result record (:class:`scanlens.models.training.TrainResult`) of a segmentation
    network, plus the post-processing spec its card carries."""

    postprocess: dict[str, Any]


def train_network(next_batch: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]], *, steps: int, lr: float,
                  pct_start: float, class_weights: Sequence[float], sigma_px: float = TARGET_SIGMA_PX,
                  progress: ProgressFn | None = None) -> tuple[STEMUNet, float]:
    """A new :class:`STEMUNet` trained on ``steps`` batches ``(x, labels, distance)`` from ``next_batch``
    (AdamW, one-cycle learning rate peaking at ``lr``, :func:`loss_fn` with ``class_weights``); returns the
    model (in train mode) and the mean loss of the last reporting interval. Progress: about 30 ``train`` events."""
    model = STEMUNet()
    weights = torch.tensor(list(class_weights), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    report = max(1, steps // 30)
    running, count, loss_value = 0.0, 0, float("nan")
    model.train()
    for step in range(steps):
        x_np, y_np, d_np = next_batch()
        loss = loss_fn(model.logits(torch.from_numpy(x_np)), torch.from_numpy(y_np), torch.from_numpy(d_np),
                       weights, sigma_px)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        count += 1
        if (step + 1) % report == 0 or step + 1 == steps:
            loss_value = running / count
            running, count = 0.0, 0
            emit(progress, TrainProgress("train", step + 1, steps, loss=loss_value))
    return model, loss_value


def fit(*, quick: bool = False, seed: int = 0, progress: ProgressFn | None = None,
        recipe: Recipe | None = None, threads: int = 2) -> SegmentationResult:
    """Simulate the pool, train the network (deterministic for a seed), then :func:`finish` it."""
    recipe = recipe or (QUICK if quick else FULL)
    with seeded_run(seed, threads) as clock:
        pool, seeds = build_pool(recipe, seed, progress)
        t_data = clock.lap("data")
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(23,)))

        model, loss_value = train_network(lambda: sample_batch(pool, rng, recipe), steps=recipe.steps, lr=recipe.lr,
                                          pct_start=0.1, class_weights=CLASS_WEIGHTS, progress=progress)
        t_train = clock.lap("train")
        return finish(model, pool, seeds, recipe, seed=seed, quick=quick, final_loss=loss_value,
                      seconds={"data": t_data, "train": t_train}, progress=progress)


def finish(model: STEMUNet, pool: list[PoolFrame], seeds: Sequence[int], recipe: Recipe, *, seed: int, quick: bool,
           final_loss: float, seconds: dict[str, float], progress: ProgressFn | None = None) -> SegmentationResult:
    """Everything after training a network on ``pool`` (the frames of ``seeds``): the temperature, the
    post-processing tuned on the calibrated probabilities, the held-out scores, the calibration error and the
    frame novelty head (models/stem_unet/honesty.py), and the training record. Run inside :func:`fit`'s seeded
    run; a separate function so a trained network's calibration can be redone without retraining it."""
    model.eval()
    kind = "quick" if quick else "full"
    uncalibrated = calibration_errors(model, recipe.eval_size)["ece"]
    temperature = fit_pixel_temperature(model, seed)
    tuning = [simulated_frame(s, size=recipe.eval_size) for s in TUNING_SEEDS]
    spec, tuning_scores = tune_postprocess(model, tuning)
    metrics = heldout_metrics(model, spec, recipe)
    metrics.update(tuning_scores)
    metrics.update(calibration_errors(model, recipe.eval_size))
    metrics["ece_uncalibrated"] = uncalibrated
    metrics["temperature"] = temperature
    novelty = fit_frame_novelty(model, pool, kind, seed)
    emit(progress, TrainProgress("calibrate", 1, 1, message=f"temperature {temperature:.3f}, novelty "
                                 f"threshold {novelty.threshold:.3g}"))
    metrics["final_train_loss"] = float(final_loss)
    log.info("data %.1fs, training %.1fs; held-out %s; novelty %s", seconds["data"], seconds["train"], metrics,
             novelty.calibration)

    training: dict[str, Any] = {
        "generator": "instrument_sim.stem",
        "lattice": "ws2",
        "frame_seeds": [seeds[0], seeds[-1]],
        "n_frames": len(seeds),
        "frame_px": recipe.frame_px,
        "heldout_seeds": {"default_dose": list(HELDOUT_SEEDS), "low_dose": list(LOWDOSE_SEEDS),
                          "rescaled": list(RESCALED_SEEDS), "tuning": list(TUNING_SEEDS)},
        "heldout_frame_px": recipe.eval_size,
        "seed": seed,
        "quick": quick,
        "steps": recipe.steps,
        "crop_sizes": list(recipe.crop_sizes),
        "pixels_per_step": recipe.pixels_per_step,
        "optimizer": f"AdamW lr {recipe.lr} one-cycle, weight_decay 1e-4",
        "loss": (f"class-weighted cross-entropy, weights {list(CLASS_WEIGHTS)} (SEG_CLASSES order), against soft "
                 f"targets: atom columns exp(-d^2 / 2 s^2), s = {TARGET_SIGMA_PX} px, inside their label disks"),
        "dose_range": list(DOSE_RANGE),
        "background_range": list(BACKGROUND_RANGE),
        "blur_fwhm_nm_range": list(BLUR_RANGE_NM),
        "drift_px_per_frame_range": list(DRIFT_RANGE_PX),
        "jitter_px_range": list(JITTER_RANGE_PX),
        "source_pixel_size_nm_range": list(PIXEL_RANGE_NM),
        "rescaled_share": RESCALED_SHARE,
        "rescaling": "scipy.ndimage.zoom order 1 (as the service), labels painted from scaled ground truth",
        "augmentation": "fresh dose, background and Poisson noise per crop; random flips",
        "padded_share": PADDED_SHARE,
        "padding": "reflect to a multiple of 16 from a random 0-15 px short edge (as the service), no loss there",
        "calibration": ("temperature on the tuning frames against their soft truth (the column profiles the "
                        "network is trained on); ece (15 bins) on every pixel of the held-out default-dose frames: "
                        "each pixel's confidence against the probability its predicted class has under the soft "
                        "truth (the expected accuracy when a pixel's class is drawn from its target distribution); "
                        "ece_hard_labels against the label disks instead, whose outer pixels the network calls "
                        "background by design; frame novelty fitted on training-pool crops, threshold on "
                        "pool-like frames of seeds never trained on, flagged shares on held-out movie frames and "
                        "scanlens.sim.foreign_frames"),
        "data_seconds": round(seconds["data"], 1),
        "train_seconds": round(seconds["train"], 1),
        "torch": torch.__version__,
    }
    check = np.stack([simulated_frame(HELDOUT_SEEDS[0], size=64 if quick else 128, dose=d)[0]
                      for d in (15.0, 200.0)])[:, None]
    return SegmentationResult(model=model, postprocess=spec, metrics=metrics, training=training, check_inputs=check,
                              novelty=novelty)
