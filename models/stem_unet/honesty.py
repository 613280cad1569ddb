"""stem-unet's honesty (issue 11): the temperature of its pixel probabilities, the frame novelty head and
the figures the card carries (``models/novelty.py`` explains both methods).

* **Temperature**, fitted on the tuning frames against their soft ground truth: an atom column's pixels
  are part column, part background along its profile (the targets the network is trained on,
  ``network.soft_targets``), so the truth of a pixel is that distribution, not a hard label.
* **Calibration error**, on the held-out default-dose frames: ``ece`` compares each pixel's confidence with
  the probability its predicted class has under that soft truth (the expected accuracy); ``ece_hard_labels``
  with the simulator's hard label disks, for reference (a column's outer pixels are background by
  argmax, by design, so hard labels count them wrong).
* **Novelty** per frame, from the U-Net's deepest features: fitted on crops of the training pool,
  thresholded on pool-like frames from seeds never trained on; the card records the share flagged of
  held-out movie frames (256 and 384 px, and 1024 px frames like the demo's) and of foreign frames
  (``scanlens.sim.foreign_frames``: graphene, a lattice it was never shown; flat Poisson noise; WS2 with
  inverted, bright-field-like contrast).
"""

from __future__ import annotations

import numpy as np
import torch

from scanlens.models.novelty import NoveltyFit, fit_novelty, fit_temperature
from scanlens.models.scoring import expected_calibration_error, simulated_frame
from scanlens.sim.foreign_frames import foreign_frames
from scanlens.sim.stem import STEMConfig, STEMMovie

from .config import (
    CROP_SIZES,
    FOREIGN_FRAMES,
    HELDOUT_SEEDS,
    NOVELTY_COMPONENTS,
    NOVELTY_FIT_CROPS,
    NOVELTY_HELDOUT_FRAMES,
    NOVELTY_SEED_BASE,
    SIZE_MULTIPLE,
    TUNING_SEEDS,
)
from .data import PoolFrame, make_pool_frame, paint_targets, sample_crop, truth_points
from .network import NOVELTY_FEATURES, STEMUNet, soft_targets

#: The seed of the foreign frames the card's figures are measured on (tests draw others).
FOREIGN_SEED = NOVELTY_SEED_BASE + 90_000
#: Pixels per frame the temperature is fitted on (a random subset: the fit is 1-d).
TEMPERATURE_PIXELS = 60_000


def _padded(image: np.ndarray) -> np.ndarray:
    """The frame as the service hands it to the network: reflected to a multiple of 16."""
    h, w = image.shape
    return np.pad(image, ((0, -h % SIZE_MULTIPLE), (0, -w % SIZE_MULTIPLE)), mode="reflect")


@torch.no_grad()
def logits_and_features(model: STEMUNet, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[C, h, w]`` (cropped back to the frame) and novelty features ``[d]`` of one frame at the
    model's pixel size, as the service runs it."""
    h, w = image.shape
    x = torch.from_numpy(np.ascontiguousarray(_padded(image), dtype=np.float32))[None, None]
    logits, features = model.logits_and_features(x)
    return logits[0, :, :h, :w].numpy(), features[0].numpy()


def soft_truth(truth: dict[str, np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(hard labels ``[h, w]``, soft target distribution ``[C, h, w]``) of a simulated frame's ground truth."""
    labels, distance = paint_targets(truth_points(truth), shape)
    q = soft_targets(torch.from_numpy(labels.astype(np.int64))[None], torch.from_numpy(distance)[None])[0]
    return labels, q.numpy()


def fit_pixel_temperature(model: STEMUNet, seed: int = 0) -> float:
    """The temperature of the pixel probabilities, on the tuning frames against their soft truth; sets it."""
    rng = np.random.default_rng(seed)
    model.temperature.fill_(1.0)
    lg, targets = [], []
    for s in TUNING_SEEDS:
        image, truth, _ = simulated_frame(s, size=384)
        logits, _ = logits_and_features(model, image)
        _, q = soft_truth(truth, image.shape)
        pick = rng.choice(image.size, min(TEMPERATURE_PIXELS, image.size), replace=False)
        lg.append(logits.reshape(len(logits), -1)[:, pick].T)
        targets.append(q.reshape(len(q), -1)[:, pick].T)
    t = fit_temperature(np.concatenate(lg), np.concatenate(targets))
    model.temperature.fill_(t)
    return t


def calibration_errors(model: STEMUNet, size: int) -> dict[str, float]:
    """ECE (15 bins) of the pixel classes on the held-out default-dose frames: against the soft truth
    (``ece``) and the hard label disks (``ece_hard_labels``); ``ece_pixels`` counts the pixels."""
    conf, expected, hard = [], [], []
    for s in HELDOUT_SEEDS:
        image, truth, _ = simulated_frame(s, size=size)
        logits, _ = logits_and_features(model, image)
        p = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
        labels, q = soft_truth(truth, image.shape)
        pred = p.argmax(axis=0)
        conf.append(p.max(axis=0).ravel())
        expected.append(np.take_along_axis(q, pred[None], axis=0)[0].ravel())
        hard.append((pred == labels).ravel())
    c = np.concatenate(conf)
    return {"ece": expected_calibration_error(c, np.concatenate(expected)),
            "ece_hard_labels": expected_calibration_error(c, np.concatenate(hard)), "ece_pixels": float(c.size)}


def _noisy_frame(frame: PoolFrame, rng: np.random.Generator) -> np.ndarray:
    """A whole pool frame with training-like dose, background and noise, at the model's pixel size."""
    size = min(frame.shape)
    image, _, _ = sample_crop(frame, rng, size)
    return image


def fit_frame_novelty(model: STEMUNet, pool: list[PoolFrame], kind: str, seed: int = 0) -> NoveltyFit:
    """The frame novelty head: the subspace of training-pool crops' features, the threshold on pool-like
    frames of seeds never trained on; the card's figures on held-out movie frames and foreign frames."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(31,)))
    fit = []
    for _ in range(NOVELTY_FIT_CROPS[kind]):
        frame = pool[int(rng.integers(len(pool)))]
        crop = int(rng.choice([c for c in CROP_SIZES if c <= min(frame.shape)] or [min(frame.shape)]))
        image, _, _ = sample_crop(frame, rng, crop)
        fit.append(logits_and_features(model, image)[1])
    held = []
    for k in range(NOVELTY_HELDOUT_FRAMES[kind]):
        frame = make_pool_frame(rng, NOVELTY_SEED_BASE + k, int(rng.choice([192, 256, 384])))
        held.append(logits_and_features(model, _noisy_frame(frame, rng))[1])
    result = fit_novelty(np.array(fit), np.array(held), components=NOVELTY_COMPONENTS, features=NOVELTY_FEATURES,
                         seed=seed)
    movie = STEMMovie(STEMConfig(size=256, frames=20 if kind == "full" else 4, seed=HELDOUT_SEEDS[0]))
    own = [logits_and_features(model, movie.frame(t))[1] for t in range(movie.cfg.frames)]
    own += [logits_and_features(model, simulated_frame(s, size=384)[0])[1] for s in HELDOUT_SEEDS]
    if kind == "full":  # frames of the demo's size (1024 px, 32 defects): the score must not grow with the frame
        demo = STEMMovie(STEMConfig(size=1024, frames=3, n_defects=32, seed=HELDOUT_SEEDS[1]))
        own += [logits_and_features(model, demo.frame(t))[1] for t in range(demo.cfg.frames)]
    result.calibration["heldout_scan_flagged"] = result.flagged(np.array(own))
    for name, frames in foreign_frames(FOREIGN_FRAMES[kind], FOREIGN_SEED).items():
        result.calibration[f"{name}_flagged"] = result.flagged(np.array([logits_and_features(model, f)[1]
                                                                         for f in frames]))
    return result
