"""one-frame-unet's training run: measure the lattice in the labels, train stem-unet's network on crops of
the one frame and score it on that frame (:func:`fit_one_frame`)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scanlens.models.export import ProgressFn, TrainProgress, emit
from scanlens.models.scoring import MATCH_FRACTION, atom_scores
from scanlens.models.stem_unet import (
    NN_PX,
    PADDED_SHARE,
    SEG_OF_ATOM,
    SEG_OF_DEFECT,
    SIZE_MULTIPLE,
    TARGET_SIGMA_PX,
    SegmentationResult,
    STEMUNet,
    TorchSegmenter,
    postprocess_spec,
    train_network,
)
from scanlens.models.training import seeded_run
from scanlens.pipeline import postprocess
from scanlens.sim.stem import SEG_CLASSES

from .config import (
    CLASS_WEIGHTS,
    DEFECT_CROP_SHARE,
    GAIN_RANGE,
    LEARNING_RATE,
    MAX_CROP_PX,
    MIN_REGION_PX,
    PIXELS_PER_STEP,
    STEPS,
    THINNED_SHARE,
    THINNING_RANGE,
    THRESHOLD,
)
from .crops import TrainingFrame, sample_batch
from .geometry import (
    blob_centres,
    column_centres,
    distance_map,
    drop_outside_columns,
    is_counts,
    nearest_neighbour_px,
    validate,
)

log = logging.getLogger(__name__)

_ATOM_OF_SEG = {int(s): a for a, s in enumerate(SEG_OF_ATOM)}  # SEG_CLASSES index -> ATOM_CLASSES index


@dataclass
class OneFrameResult(SegmentationResult):
    """stem-unet's training result (its metrics measured on the training frame) plus the frame's pixel size."""

    pixel_size_nm: float = 0.0


def training_frame_scores(model: STEMUNet, spec: dict[str, Any], image: np.ndarray, centres: np.ndarray,
                          nn_px: float, labelled: np.ndarray | None = None) -> dict[str, float]:
    """Atom F1, precision, recall and class accuracy on the training frame (against the label blobs' centres);
    with ``labelled`` (bool ``[h, w]``, a partly labelled frame) only the atoms found on labelled pixels count."""
    seg = TorchSegmenter(model, spec)
    _, atoms, _ = postprocess(seg.segment(image), seg.pp)
    if labelled is not None:
        h, w = labelled.shape
        rows = np.clip(np.round(atoms[:, 1]).astype(np.intp), 0, h - 1)
        cols = np.clip(np.round(atoms[:, 0]).astype(np.intp), 0, w - 1)
        atoms = atoms[labelled[rows, cols]]
    true = np.column_stack([centres[:, :2], [_ATOM_OF_SEG[int(c)] for c in centres[:, 2]]])
    s = atom_scores(atoms, true, MATCH_FRACTION * nn_px)
    out = {f"training_frame_atom_{k}": float(s[k]) for k in ("f1", "precision", "recall")}
    if "class_accuracy" in s:
        out["training_frame_atom_class_accuracy"] = float(s["class_accuracy"])
    return out


@dataclass
class PreparedFrame:
    """A labelled frame made ready for training (:func:`prepare_frame`)."""

    frame: TrainingFrame  # its labels with the edge slivers dropped
    centres: np.ndarray  # [k, 3] (x, y, SEG_CLASSES index) of the labelled atom columns
    nn_px: float  # nearest-neighbour column spacing measured in the labels
    sigma_px: float  # width of the soft targets
    postprocess: dict[str, Any]  # the card's post-processing spec for this lattice
    batch: int  # crops per step
    dropped: int  # edge slivers dropped


def prepare_frame(img: np.ndarray, lab: np.ndarray, pixel_size_nm: float) -> PreparedFrame:
    """Measure the lattice in the labels (SEG_CLASSES indices; ``IGNORE`` where unlabelled) and derive what
    training needs: the :class:`TrainingFrame`, the soft-target width, the post-processing spec, the batch.
    ValueError when the labels do not mark at least two atom columns apart. See the package docstring."""
    lab, dropped = drop_outside_columns(lab)
    centres = column_centres(lab)
    nn_px = nearest_neighbour_px(centres)
    if nn_px < 2.0:
        raise ValueError(f"atom columns in the labels are only {nn_px:.2g} px apart: label one blob per column")
    scale = nn_px / NN_PX  # this frame's lattice relative to stem-unet's (WS2 at 0.02 nm/px)
    sigma_px = TARGET_SIGMA_PX * scale
    spec = postprocess_spec(THRESHOLD, max(2, int(round(MIN_REGION_PX * scale**2))), nn_px=nn_px,
                            pixel_size_nm=float(pixel_size_nm))
    crop = min(MAX_CROP_PX, min(img.shape) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    blobs = blob_centres(lab)
    frame = TrainingFrame(image=img, labels=lab, distance=distance_map(blobs), counts=is_counts(img), crop=crop,
                          defect_pixels=np.argwhere(np.isin(lab, SEG_OF_DEFECT)), centres=blobs)
    batch = max(2, PIXELS_PER_STEP // crop**2)
    return PreparedFrame(frame=frame, centres=centres, nn_px=nn_px, sigma_px=sigma_px, postprocess=spec,
                         batch=batch, dropped=dropped)


def digest(a: np.ndarray) -> str:
    """A short sha256 of an array's bytes, for a card's provenance (which frame and labels trained it)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def fit_one_frame(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float, *, steps: int = STEPS,
                  seed: int = 0, progress: ProgressFn | None = None, threads: int = 2) -> OneFrameResult:
    """Train a :class:`~scanlens.models.stem_unet.STEMUNet` on crops of one labelled frame (deterministic for
    a seed and thread count) and score it on that frame. See the package docstring."""
    t0 = time.perf_counter()
    img, lab = validate(image, labels, pixel_size_nm)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps = int(steps)
    emit(progress, TrainProgress("data", 0, 1, message="measuring the lattice in the labels"))
    labels_digest = digest(lab)
    prepared = prepare_frame(img, lab, pixel_size_nm)
    frame, centres, nn_px, sigma_px, spec = (prepared.frame, prepared.centres, prepared.nn_px, prepared.sigma_px,
                                             prepared.postprocess)
    lab, dropped, crop, batch = frame.labels, prepared.dropped, frame.crop, prepared.batch
    class_pixels = np.bincount(lab.ravel(), minlength=len(SEG_CLASSES))
    emit(progress, TrainProgress("data", 1, 1, message=f"{len(centres)} columns, nn {nn_px:.2f} px"))
    t_data = time.perf_counter() - t0

    with seeded_run(seed, threads) as clock:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(31,)))
        model, loss_value = train_network(lambda: sample_batch(frame, rng, batch), steps=steps, lr=LEARNING_RATE,
                                          pct_start=0.15, class_weights=CLASS_WEIGHTS, sigma_px=sigma_px,
                                          progress=progress)
        t_train = clock.lap("train")
        model.eval()
        metrics = {"final_train_loss": float(loss_value)}
        metrics.update(training_frame_scores(model, spec, img, centres, nn_px))
    log.info("one-frame training: %d steps in %.1fs; %s", steps, t_train, metrics)

    training: dict[str, Any] = {
        "method": "one labelled frame (models.one_frame)",
        "source": {
            "image_shape": list(img.shape),
            "pixel_size_nm": float(pixel_size_nm),
            "image_sha256": digest(img),
            "labels_sha256": labels_digest,
            "counts": frame.counts,
            "label_pixels": {name: int(n) for name, n in zip(SEG_CLASSES, class_pixels)},
            "columns": int(len(centres)),
            "edge_slivers_dropped": dropped,
            "nn_spacing_px": round(nn_px, 3),
        },
        "steps": steps,
        "seed": seed,
        "crop_px": crop,
        "batch": batch,
        "optimizer": f"AdamW lr {LEARNING_RATE} one-cycle, weight_decay 1e-4",
        "loss": (f"class-weighted cross-entropy, weights {list(CLASS_WEIGHTS)} (SEG_CLASSES order), against soft "
                 f"targets: atom columns exp(-d^2 / 2 s^2), s = {sigma_px:.3g} px, inside their label blobs"),
        "augmentation": (f"random crops at every offset ({DEFECT_CROP_SHARE:.0%} placed on a defect), the 8 "
                         "dihedral flips/rotations, "
                         + (f"binomial thinning of the counts (keep p log-uniform {list(THINNING_RANGE)}) on "
                            f"{THINNED_SHARE:.0%} of the crops, " if frame.counts else "")
                         + f"gain log-uniform {list(GAIN_RANGE)}; {PADDED_SHARE:.0%} of the crops reflect-padded "
                           "from a random 0-15 px short edge (as the service pads), no loss there"),
        "data_seconds": round(t_data, 2),
        "train_seconds": round(t_train, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "threads": threads,
        "torch": torch.__version__,
    }
    side = min(MAX_CROP_PX, crop)
    check = np.stack([img[:side, :side], img[-side:, -side:]])[:, None]
    return OneFrameResult(model=model, postprocess=spec, metrics=metrics, training=training, check_inputs=check,
                          pixel_size_nm=float(pixel_size_nm))
