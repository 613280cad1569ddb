"""Train on one frame, apply to the movie: a STEM segmentation network learned from ONE labelled frame.

The AtomAI workflow for a material or a microscope setting the shipped ``stem-unet`` (WS2 at
0.02 nm/px) does not know: label one frame of the movie (by hand, or from a simulation of it), train
the same network quickly on that frame alone, and let the service recognize the rest of the recorded
or live movie with it. :func:`train_one_frame` does the training and writes one ONNX file with its
model card; ``scanlens train one-frame`` is its command line.

**What is reused.** The network, loss, soft targets, post-processing spec and ONNX export of
:mod:`scanlens.models.stem_unet` (so the service runs the result exactly as it runs stem-unet): same input
(raw counts ``[n, 1, h, w]``, Anscombe + per-image standardisation inside the graph), same
:data:`~scanlens.sim.stem.SEG_CLASSES` output, same post-processing, with the geometry taken from the
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

**Modules** (this package re-exports their public names): :mod:`.config` (name, budget, augmentation
ranges, class weights), :mod:`.geometry` (input checks, geometry from the labels), :mod:`.crops`
(training examples), :mod:`.fitting` (:func:`prepare_frame`, :func:`fit_one_frame`, :class:`OneFrameResult`)
and :mod:`.exporting` (:func:`model_card`, :func:`train_one_frame`). ``models.live.frames`` (live training
in the service) fine-tunes on a labelled frame with the same geometry, crops and card.
"""

from __future__ import annotations

from scanlens.models.stem_unet import IGNORE, export_model

from .config import (
    CLASS_WEIGHTS,
    DEFECT_CROP_SHARE,
    DEFECT_WEIGHT,
    GAIN_RANGE,
    LEARNING_RATE,
    MAX_CROP_PX,
    MIN_FRAME_PX,
    MIN_REGION_PX,
    NAME,
    PIXELS_PER_STEP,
    QUICK_STEPS,
    STEPS,
    THINNED_SHARE,
    THINNING_RANGE,
    THRESHOLD,
    VERSION,
)
from .crops import TrainingFrame, sample_batch, sample_crop
from .exporting import check_name, model_card, train_one_frame
from .fitting import OneFrameResult, PreparedFrame, digest, fit_one_frame, prepare_frame, training_frame_scores
from .geometry import (
    blob_centres,
    column_centres,
    distance_map,
    drop_outside_columns,
    is_counts,
    nearest_neighbour_px,
    positive_number,
    validate,
    validate_frame,
)

__all__ = [
    "CLASS_WEIGHTS", "DEFECT_CROP_SHARE", "DEFECT_WEIGHT", "GAIN_RANGE", "IGNORE", "LEARNING_RATE", "MAX_CROP_PX",
    "MIN_FRAME_PX", "MIN_REGION_PX", "NAME", "PIXELS_PER_STEP", "QUICK_STEPS", "STEPS", "THINNED_SHARE",
    "THINNING_RANGE", "THRESHOLD", "VERSION", "OneFrameResult", "PreparedFrame", "TrainingFrame", "blob_centres",
    "check_name", "column_centres", "digest", "distance_map", "drop_outside_columns", "export_model", "fit_one_frame",
    "is_counts", "model_card", "nearest_neighbour_px", "positive_number", "prepare_frame", "sample_batch", "sample_crop",
    "train_one_frame", "training_frame_scores", "validate", "validate_frame",
]
