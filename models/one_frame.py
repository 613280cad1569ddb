"""Train on one frame, apply to the movie: a STEM segmentation network learned from ONE labelled frame.

The AtomAI workflow for a material or a microscope setting the shipped ``stem-unet`` (WS2 at
0.02 nm/px) does not know: label one frame of the movie (by hand, or from a simulation of it), train
the same network quickly on that frame alone, and let the service recognize the rest of the recorded
or live movie with it. :func:`train_one_frame` does the training and writes one ONNX file with its
model card; ``scanlens train one-frame`` is its command line.

**What is reused.** The network, loss, soft targets, post-processing spec and ONNX export of
:mod:`models.stem_unet` (so the service runs the result exactly as it runs stem-unet): same input
(raw counts ``[n, 1, h, w]``, Anscombe + per-image standardisation inside the graph), same
:data:`~instrument_sim.stem.SEG_CLASSES` output, same post-processing, with the geometry taken from the
labels instead of WS2's.

**Geometry from the labels.** Labels are uint8 ``[h, w]`` SEG_CLASSES indices with a blob (a disk, as
the simulator paints them) around every atom column and vacancy site; blobs of one class must not touch
(4-connectivity). Each atom-class blob's centroid is a column centre; the median distance between a
centre and its nearest neighbour is the nearest-neighbour spacing ``nn`` (px). The card's
``min_distance_px`` (0.6 nn), ``min_region_px`` (stem-unet's 8 px scaled by the blob area, ``(nn /
9.12)**2``), tracking gate (from the lattice constant ``sqrt(3) nn``) and the width of the soft targets
(stem-unet's 1.5 px scaled by ``nn / 9.12``) follow from it. The model works at the frame's own pixel
size (the card's ``input.pixel_size``): frames of the same movie reach it unscaled, frames at another
pixel size are rescaled by the service as for any image model.

**What generalises to later frames.** Later frames of the same movie show the same lattice, probe and
dose, but the defects have moved (or changed class) and drift has shifted the lattice. So the training
examples are random crops at every offset (all positions of the lattice relative to the crop), in all 8
orientations of the dihedral group (a defect is not learned as "this blob at this place in this
orientation"), with fresh noise: when the frame holds counts (non-negative integers) each crop is
binomially thinned — ``Binomial(x, p)`` of Poisson counts ``x`` is exactly Poisson at ``p`` x the dose —
so the network sees new noise realisations at the frame's dose and below, not only the frame's own
noise; then an overall gain (intensity scaling). Half of the crops are placed to contain a defect (a
frame holds only a few, ~0.1 % of its pixels), and the defect classes weigh 30 in the class-weighted
cross-entropy (stem-unet: 8), or a short run does not learn them. A share of the crops end in a
reflection, as the service pads frames to a multiple of 16 (no loss there). In every crop, as in
every frame the service sees, only columns centred inside count: blobs centred outside the crop (and
edge slivers of columns centred outside the frame, :func:`drop_outside_columns`) are background there,
or the network would learn to put an atom on every sliver at a frame edge.

**Budget.** On a 256 x 256 graphene frame (2 CPU cores, ~0.22 s a step) atom F1 on frames 1-10 of the
same movie is ~0.99 after 60 steps and >= 0.997 after 120; :data:`STEPS` = 150 takes ~35 s.

**Metrics** are measured on the training frame itself (``training_frame_*``: atom F1, precision,
recall, class accuracy of the columns found against the label blobs' centres, match radius 0.3 nn) and
the final training loss: they show that training converged, not how well the model generalises —
score later frames against their truth for that (``tests/test_one_frame.py`` does, on a graphene movie).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from scanlens.sim.stem import ATOM_CLASSES, DEFECT_CLASSES, SEG_CLASSES
from scanlens.models.scoring import stem as stem_metrics
from scanlens.models.export import ProgressFn, TrainProgress, emit
from scanlens.models.stem_unet import (
    CLASS_WEIGHTS as STEM_WEIGHTS,
    IGNORE,
    INPUT_NAME,
    MODALITY,
    NN_PX,
    NORMALIZATION,
    OUTPUT_NAMES,
    PADDED_SHARE,
    SIZE_MULTIPLE,
    TARGET_SIGMA_PX,
    STEMUNet,
    TorchSegmenter,
    TrainResult,
    architecture,
    train_network,
    export_model,
    postprocess_spec,
)
from scanlens.pipeline.atoms import postprocess
from scanlens.protocol.messages import PixelSize
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec

log = logging.getLogger(__name__)

NAME = "one-frame-unet"
VERSION = "1"
#: Smallest frame edge accepted (px): a crop of at least 64 px must fit.
MIN_FRAME_PX = 64
#: Largest training crop (px, a multiple of 16); smaller frames train on crops of their own size.
MAX_CROP_PX = 128
#: Training steps of the default run and of ``--quick`` (a smoke test of the pipeline).
STEPS = 150
QUICK_STEPS = 6
#: Pixels per training step (batch = PIXELS_PER_STEP // crop**2).
PIXELS_PER_STEP = 6 * 128 * 128
LEARNING_RATE = 3e-3
#: Binomial thinning of count frames: keep probability log-uniform in this range for a share of crops ...
THINNING_RANGE = (0.25, 1.0)
#: ... the rest keep the frame's own counts.
THINNED_SHARE = 0.7
#: Overall gain of a crop (log-uniform).
GAIN_RANGE = (0.8, 1.25)
#: Share of crops placed to contain a random defect pixel (vacancy, dopant, adatom): a frame holds only
#: a few defects, a few dozen pixels each, which uniform crops would rarely show the network.
DEFECT_CROP_SHARE = 0.5
#: Cross-entropy weight of the defect classes (stem-unet's weights otherwise): one frame holds a few
#: defects, ~0.1 % of its pixels; at stem-unet's weight of 8 a short run does not learn them.
DEFECT_WEIGHT = 30.0
#: Default threshold and smallest vacancy region of stem-unet's post-processing (scaled to this frame's nn).
THRESHOLD = 0.5
MIN_REGION_PX = 8

_NAME_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_ATOM_SEG = np.array([SEG_CLASSES.index(c) for c in ATOM_CLASSES], dtype=np.intp)
_ATOM_OF_SEG = {int(s): a for a, s in enumerate(_ATOM_SEG)}
_DEFECT_SEG = np.array([SEG_CLASSES.index(c) for c in DEFECT_CLASSES], dtype=np.intp)
#: Cross-entropy weight of each SEG_CLASSES class.
CLASS_WEIGHTS: tuple[float, ...] = tuple(
    DEFECT_WEIGHT if c in DEFECT_CLASSES else w for c, w in zip(SEG_CLASSES, STEM_WEIGHTS))


# --------------------------------------------------------------------------- input checks and geometry


def validate(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) after checking them; ValueError with the reason otherwise."""
    img = np.asarray(image)
    lab = np.asarray(labels)
    if img.ndim != 2:
        raise ValueError(f"image must be a 2-D frame [h, w], got shape {img.shape}")
    if lab.shape != img.shape:
        raise ValueError(f"labels must have the image's shape {img.shape}, got {lab.shape}")
    if min(img.shape) < MIN_FRAME_PX:
        raise ValueError(f"the frame must be at least {MIN_FRAME_PX} x {MIN_FRAME_PX} px, got {img.shape}")
    if not (np.issubdtype(img.dtype, np.number) and not np.iscomplexobj(img)):
        raise ValueError(f"image must hold real numbers, got dtype {img.dtype}")
    img = img.astype(np.float32)
    if not np.all(np.isfinite(img)):
        raise ValueError("image holds NaN or infinite values")
    if not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.bool_)):
        if not (np.issubdtype(lab.dtype, np.floating) and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab))):
            raise ValueError(f"labels must be integer class indices, got dtype {lab.dtype}")
    lo, hi = float(lab.min()), float(lab.max())
    if lo < 0 or hi > len(SEG_CLASSES) - 1:
        raise ValueError(f"labels must be SEG_CLASSES indices 0..{len(SEG_CLASSES) - 1} "
                         f"({', '.join(SEG_CLASSES)}), got values {lo:g}..{hi:g}")
    try:
        px = float(pixel_size_nm)
    except (TypeError, ValueError):
        px = math.nan
    if isinstance(pixel_size_nm, bool) or not (math.isfinite(px) and px > 0):
        raise ValueError(f"pixel_size_nm must be a finite number > 0, got {pixel_size_nm!r}")
    return img, lab.astype(np.uint8)


def _blobs(labels: np.ndarray, classes: Iterable[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per class in ``classes`` that has pixels: (class, its 4-connected blobs labelled 1..n, their
    centroids ``[n, 2]`` as (row, col))."""
    for c in classes:
        regions, n = ndimage.label(labels == c)
        if n:
            yield int(c), regions, np.asarray(ndimage.center_of_mass(np.ones_like(regions), regions,
                                                                     np.arange(1, n + 1))).reshape(n, 2)


def column_centres(labels: np.ndarray) -> np.ndarray:
    """Atom columns of a label image: float64 ``[k, 3]`` (x, y, SEG_CLASSES index), the centroid of
    every 4-connected blob of an atom class (metal, chalcogen, dopant, adatom)."""
    out = [np.column_stack([yx[:, 1], yx[:, 0], np.full(len(yx), c)]) for c, _, yx in _blobs(labels, _ATOM_SEG)]
    return np.concatenate(out) if out else np.zeros((0, 3))


def nearest_neighbour_px(centres: np.ndarray) -> float:
    """Median distance (px) from a column centre to its nearest neighbour."""
    if len(centres) < 2:
        raise ValueError("the labels must mark at least two atom columns (metal, chalcogen, dopant or adatom)")
    d, _ = cKDTree(centres[:, :2]).query(centres[:, :2], k=2)
    return float(np.median(d[:, 1]))


def drop_outside_columns(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, number dropped): atom-class blobs cut by the frame edge to less than half the median
    blob of their class are columns centred outside the frame; they become background, as the service
    (and every ground-truth atom list here) reports only columns centred inside the frame. Without this
    the network learns to put a peak on every edge sliver."""
    out = labels.copy()
    dropped = 0
    for _, regions, yx in _blobs(labels, _ATOM_SEG):
        n = len(yx)
        area = np.bincount(regions.ravel(), minlength=n + 1)[1:]
        border = np.zeros(n + 1, bool)
        for edge in (regions[0], regions[-1], regions[:, 0], regions[:, -1]):
            border[edge] = True
        border = border[1:]
        full = area[~border] if np.any(~border) else area
        small = border & (area < 0.5 * np.median(full))
        if small.any():
            out[np.isin(regions, np.flatnonzero(small) + 1)] = 0
            dropped += int(small.sum())
    return out, dropped


def blob_centres(labels: np.ndarray) -> np.ndarray:
    """float32 ``[2, h, w]``: the (row, col) centroid of the blob (4-connected, one class) each labelled
    pixel belongs to; NaN on background."""
    h, w = labels.shape
    centre = np.full((2, h, w), np.nan, np.float32)
    for _, regions, yx in _blobs(labels, range(1, len(SEG_CLASSES))):
        sel = regions > 0
        centre[:, sel] = yx[regions[sel] - 1].T
    return centre


def distance_map(centres: np.ndarray) -> np.ndarray:
    """float32 ``[h, w]``: distance (px) of every labelled pixel from its blob's centroid (``centres`` from
    :func:`blob_centres`); ``inf`` on background. What :func:`models.stem_unet.soft_targets` needs."""
    _, h, w = centres.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - centres[0], xx - centres[1]).astype(np.float32)
    return np.where(np.isnan(d), np.inf, d).astype(np.float32)


def is_counts(image: np.ndarray) -> bool:
    """Whether the frame looks like detector counts (non-negative integers), which may be thinned."""
    return bool(np.all(image >= 0) and np.all(image == np.round(image)) and image.max() < 2**31)


# --------------------------------------------------------------------------- training examples


@dataclass
class TrainingFrame:
    """The one frame and what training needs of it."""

    image: np.ndarray  # float32 [h, w]
    labels: np.ndarray  # uint8 [h, w] SEG_CLASSES indices
    distance: np.ndarray  # float32 [h, w], see distance_map
    counts: bool  # integer counts: augment by binomial thinning
    crop: int  # training crop edge (px, multiple of 16)
    defect_pixels: np.ndarray  # int [k, 2] (row, col) of the pixels labelled with a defect class
    centres: np.ndarray  # float32 [2, h, w], see blob_centres


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_crop(frame: TrainingFrame, rng: np.random.Generator, valid: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One example (counts float32, labels uint8, distance float32), each ``[crop, crop]``: a random
    crop (containing a defect pixel for a :data:`DEFECT_CROP_SHARE` of the calls), one of the 8 dihedral
    transforms, binomial thinning (count frames) and a gain. Blobs centred outside the crop are background
    in it, as columns centred outside a frame are (see :func:`drop_outside_columns`).

    With ``valid = (h, w)`` only an ``h x w`` region of the frame is cut, transformed, and completed to
    ``crop x crop`` by reflection at the bottom and right, as the service pads frames to a multiple of 16;
    the padding is labelled ``IGNORE``."""
    s = frame.crop
    vh, vw = valid or (s, s)
    h, w = frame.image.shape
    if len(frame.defect_pixels) and rng.random() < DEFECT_CROP_SHARE:
        py, px = (int(v) for v in frame.defect_pixels[int(rng.integers(len(frame.defect_pixels)))])
        y0 = int(rng.integers(max(0, py - vh + 1), min(py, h - vh) + 1))
        x0 = int(rng.integers(max(0, px - vw + 1), min(px, w - vw) + 1))
    else:
        y0, x0 = int(rng.integers(0, h - vh + 1)), int(rng.integers(0, w - vw + 1))
    img = frame.image[y0 : y0 + vh, x0 : x0 + vw]
    lab = frame.labels[y0 : y0 + vh, x0 : x0 + vw]
    dist = frame.distance[y0 : y0 + vh, x0 : x0 + vw]
    cy = frame.centres[0, y0 : y0 + vh, x0 : x0 + vw] - y0
    cx = frame.centres[1, y0 : y0 + vh, x0 : x0 + vw] - x0
    outside = (lab > 0) & ~((cy >= -0.5) & (cy < vh - 0.5) & (cx >= -0.5) & (cx < vw - 0.5))
    if outside.any():
        lab = np.where(outside, 0, lab).astype(np.uint8)
        dist = np.where(outside, np.inf, dist).astype(np.float32)
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    img, lab, dist = (np.rot90(a, k) for a in (img, lab, dist))
    if flip:
        img, lab, dist = img[:, ::-1], lab[:, ::-1], dist[:, ::-1]
    if frame.counts and rng.random() < THINNED_SHARE:
        img = rng.binomial(img.astype(np.int64), _log_uniform(rng, *THINNING_RANGE)).astype(np.float32)
    img = img * np.float32(_log_uniform(rng, *GAIN_RANGE))
    if img.shape != (s, s):
        pad = ((0, s - img.shape[0]), (0, s - img.shape[1]))
        img = np.pad(img, pad, mode="reflect")
        lab = np.pad(lab, pad, constant_values=IGNORE)
        dist = np.pad(dist, pad, constant_values=np.inf)
    return (np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(lab, dtype=np.uint8),
            np.ascontiguousarray(dist, dtype=np.float32))


def sample_batch(frame: TrainingFrame, rng: np.random.Generator, batch: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x float32 [b, 1, s, s], labels int64 [b, s, s], distance [b, s, s]); a ``PADDED_SHARE`` of the
    crops padded from a short edge that is not a multiple of 16."""
    xs, ys, ds = [], [], []
    for _ in range(batch):
        valid = None
        if rng.random() < PADDED_SHARE:
            valid = (frame.crop - int(rng.integers(0, SIZE_MULTIPLE)), frame.crop - int(rng.integers(0, SIZE_MULTIPLE)))
        x, y, d = sample_crop(frame, rng, valid)
        xs.append(x)
        ys.append(y)
        ds.append(d)
    return np.stack(xs)[:, None], np.stack(ys).astype(np.int64), np.stack(ds)


# --------------------------------------------------------------------------- training


@dataclass
class OneFrameResult(TrainResult):
    """stem-unet's training result (its metrics measured on the training frame) plus the frame's pixel size."""

    pixel_size_nm: float = 0.0


def training_frame_scores(model: STEMUNet, spec: dict[str, Any], image: np.ndarray, centres: np.ndarray,
                          nn_px: float) -> dict[str, float]:
    """Atom F1, precision, recall and class accuracy on the training frame (against the label blobs' centres)."""
    seg = TorchSegmenter(model, spec)
    _, atoms, _ = postprocess(seg._segment(image), seg.pp)
    true = np.column_stack([centres[:, :2], [_ATOM_OF_SEG[int(c)] for c in centres[:, 2]]])
    s = stem_metrics.atom_scores(atoms, true, stem_metrics.MATCH_FRACTION * nn_px)
    out = {f"training_frame_atom_{k}": float(s[k]) for k in ("f1", "precision", "recall")}
    if "class_accuracy" in s:
        out["training_frame_atom_class_accuracy"] = float(s["class_accuracy"])
    return out


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def fit_one_frame(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float, *, steps: int = STEPS,
                  seed: int = 0, progress: ProgressFn | None = None, threads: int = 2) -> OneFrameResult:
    """Train a :class:`~models.stem_unet.STEMUNet` on crops of one labelled frame (deterministic for a
    seed and thread count) and score it on that frame. See the module docstring."""
    t0 = time.perf_counter()
    img, lab = validate(image, labels, pixel_size_nm)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps = int(steps)
    emit(progress, TrainProgress("data", 0, 1, message="measuring the lattice in the labels"))
    labels_digest = _digest(lab)
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
                          defect_pixels=np.argwhere(np.isin(lab, _DEFECT_SEG)), centres=blobs)
    batch = max(2, PIXELS_PER_STEP // crop**2)
    class_pixels = np.bincount(lab.ravel(), minlength=len(SEG_CLASSES))
    emit(progress, TrainProgress("data", 1, 1, message=f"{len(centres)} columns, nn {nn_px:.2f} px"))
    t_data = time.perf_counter() - t0

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(31,)))
        model, loss_value = train_network(lambda: sample_batch(frame, rng, batch), steps=steps, lr=LEARNING_RATE,
                                          pct_start=0.15, class_weights=CLASS_WEIGHTS, sigma_px=sigma_px,
                                          progress=progress)
        t_train = time.perf_counter() - t0 - t_data
        model.eval()
        metrics = {"final_train_loss": float(loss_value)}
        metrics.update(training_frame_scores(model, spec, img, centres, nn_px))
    finally:
        torch.set_num_threads(old_threads)
    log.info("one-frame training: %d steps in %.1fs; %s", steps, t_train, metrics)

    training: dict[str, Any] = {
        "method": "one labelled frame (models.one_frame)",
        "source": {
            "image_shape": list(img.shape),
            "pixel_size_nm": float(pixel_size_nm),
            "image_sha256": _digest(img),
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


def model_card(result: OneFrameResult, name: str = NAME, description: str | None = None) -> ModelCard:
    """The card stored in the ONNX file's metadata."""
    src = result.training["source"]
    h, w = src["image_shape"]
    description = description or (
        f"Atom columns and point defects in atomic-resolution HAADF STEM frames at {result.pixel_size_nm:g} nm per "
        f"pixel, learned from one labelled {h} x {w} frame (nearest-neighbour spacing {src['nn_spacing_px']:.2f} px): "
        "per-pixel class probabilities, turned into sub-pixel atom coordinates, a defect list and defect tracks "
        "by the service's post-processing. Meant for the rest of the movie that frame came from; its metrics are "
        "measured on the training frame itself."
    )
    return ModelCard(
        name=name,
        version=VERSION,
        modality=MODALITY,
        description=description,
        architecture=architecture(),
        input=InputSpec(name=INPUT_NAME, pixel_size=PixelSize(size=result.pixel_size_nm, units="nm"),
                        normalization=NORMALIZATION),
        outputs=[OutputSpec(name=OUTPUT_NAMES[0], role="segmentation", labels=list(SEG_CLASSES),
                            description="softmax over SEG_CLASSES per pixel, [n, 7, h, w]")],
        training=result.training,
        metrics=result.metrics,
        postprocess=result.postprocess,
    )


def train_one_frame(
    image: np.ndarray,
    labels: np.ndarray,
    pixel_size_nm: float,
    out_path: str | PathLike[str],
    *,
    name: str = NAME,
    steps: int = STEPS,
    seed: int = 0,
    progress: ProgressFn | None = None,
    description: str | None = None,
    threads: int = 2,
) -> dict[str, float]:
    """Train on one labelled frame, export the network with its card to ``out_path`` (one ONNX file, checked
    against torch in ONNX Runtime) and return the training-frame metrics plus ``onnx_max_abs_diff``.

    ``image``: 2-D frame (raw counts ideally; at least 64 x 64 px); ``labels``: same shape, SEG_CLASSES
    indices (0 background, 1 metal, 2 chalcogen, 3 metal_vacancy, 4 chalcogen_vacancy, 5 dopant, 6 adatom);
    ``pixel_size_nm``: the frame's pixel size, which becomes the model's; ``name``: the card's name, which
    the service and ``--recognizer`` know the model by. Invalid inputs raise ValueError before training.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"name must be 1-64 characters of A-Z a-z 0-9 . _ -, got {name!r}")
    result = fit_one_frame(image, labels, pixel_size_nm, steps=steps, seed=seed, progress=progress, threads=threads)
    diff = export_model(result.model, result.check_inputs, out_path, model_card(result, name, description), progress)
    return {**result.metrics, "onnx_max_abs_diff": diff}
