"""Train and export "stem-unet": a small U-Net that segments atoms and point defects in HAADF STEM frames of WS2.

Recognition of atomic-resolution STEM movies as in AtomAI: a fully convolutional network trained on
simulated frames (``scanlens.sim.stem``) labels every pixel with one of :data:`SEG_CLASSES`; the
service's post-processing (``scanlens.pipeline.postprocess``) turns the probabilities into sub-pixel atom
columns and a defect list, which its tracker links into trajectories.

**Data.** A pool of noise-free simulated frames (seeds ``TRAIN_SEED_BASE + 100000 * seed + k``, never
the held-out seeds below 1000) with random lattice rotation, probe blur, drift, line jitter and defects;
part of them at another pixel size (0.011-0.035 nm) and zoomed to the model's 0.02 nm/px with
``scipy.ndimage.zoom`` (order 1) exactly as the service rescales frames. Every training crop (128-192
px) draws its own dose (log-uniform 5-1000, low doses included), background and Poisson noise (at the
source pixels, before the zoom) and a random flip; a share of the crops end in a reflection of the
frame, as the service pads frames to a multiple of 16 (no loss on the padding). Labels are painted from
the ground-truth coordinates (disks of 0.4 x the nearest-neighbour spacing, as the simulator paints
them), counting only columns whose centre lies inside the frame, the rule of the ground-truth atom list
the model is scored against.

**Network.** Scale-free normalisation inside the graph (the square root of the frame in units of its
own mean, then per-image standardisation: counts and fractions of the beam give the same input), a
3-level U-Net (16-32-64-128 channels, batch norm, ReLU, max-pool, transposed-conv
up-sampling, skip connections), per-pixel softmax over the 7 classes. Loss: class-weighted
cross-entropy (defect classes are < 0.5 % of the pixels) against soft targets that peak at each atom
column's centre, so that the service's peak finder sees one maximum per column (hard disks give flat
plateaus of probability 1 with several maxima each). Pool frames are the last frame of short movies,
so defects are seen where they have walked to (adatoms off their first hollow sites). After training:
a temperature for the pixel probabilities and a frame novelty head on the deepest features
(:mod:`.honesty`). The ONNX input is ``image`` ``[n, 1, h, w]`` raw
counts with ``h`` and ``w`` multiples of 16 (all three dims dynamic).

**Card.** Pixel size 0.02 nm, the post-processing parameters the service uses (tuned on tuning frames
after training; defects within half a column spacing of the frame's edge are not reported) and held-out
metrics measured on simulated frames with seeds never used in training: atom F1 and defect classification at the default dose, the network against the tuned classical
baseline at low dose, and a frame at 0.015 nm/px rescaled as the service does.

**Modules** (this package re-exports their public names; ``scanlens train stem`` calls :func:`train`):
:mod:`.config` (names, pixel size, ranges of the draws, :class:`Recipe`, :func:`postprocess_spec`),
:mod:`.data` (pool frames, labels, crops, batches), :mod:`.network` (:class:`STEMUNet`, the loss),
:mod:`.evaluation` (:class:`TorchSegmenter`, tuning, held-out metrics), :mod:`.honesty` (temperature, frame
novelty, calibration figures), :mod:`.fitting` (:func:`train_network`, :func:`fit`, :func:`finish`,
:class:`SegmentationResult`) and :mod:`.exporting` (card, ONNX export).
"""

from __future__ import annotations

from scanlens.models.training import trainer

from .config import (
    BACKGROUND_RANGE,
    BASE_CHANNELS,
    BLUR_RANGE_NM,
    CLASS_WEIGHTS,
    CROP_SIZES,
    DOSE_RANGE,
    DRIFT_RANGE_PX,
    FULL,
    HELDOUT_SEEDS,
    IGNORE,
    INPUT_NAME,
    JITTER_RANGE_PX,
    LABEL_RADIUS_PX,
    LEVELS,
    LOWDOSE_SEEDS,
    MODALITY,
    MODEL_CFG,
    MODEL_PIXEL,
    NAME,
    NN_PX,
    NORMALIZATION,
    OUTPUT_NAMES,
    PADDED_SHARE,
    PIXEL_NM,
    PIXEL_RANGE_NM,
    QUICK,
    RESCALED_PIXEL_NM,
    RESCALED_SEEDS,
    RESCALED_SHARE,
    SEG_OF_ATOM,
    SEG_OF_DEFECT,
    SIZE_MULTIPLE,
    TARGET_SIGMA_PX,
    TRAIN_SEED_BASE,
    TUNING_SEEDS,
    VERSION,
    Recipe,
    postprocess_spec,
)
from .data import (
    PoolFrame,
    build_pool,
    make_pool_frame,
    paint_labels,
    paint_targets,
    sample_batch,
    sample_crop,
    training_config,
    truth_points,
)
from .evaluation import TorchSegmenter, heldout_metrics, simulated_frame, tune_postprocess
from .exporting import export, export_model, model_card
from .fitting import SegmentationResult, fit, train_network
from .network import STEMUNet, architecture, loss_fn, soft_targets

#: ``train(out_path, *, quick, seed, progress)``: fit, export, return the held-out metrics (``scanlens train stem``).
train = trainer(NAME, fit, export)

__all__ = [
    "BACKGROUND_RANGE", "BASE_CHANNELS", "BLUR_RANGE_NM", "CLASS_WEIGHTS", "CROP_SIZES", "DOSE_RANGE",
    "DRIFT_RANGE_PX", "FULL", "HELDOUT_SEEDS", "IGNORE", "INPUT_NAME", "JITTER_RANGE_PX", "LABEL_RADIUS_PX",
    "LEVELS", "LOWDOSE_SEEDS", "MODALITY", "MODEL_CFG", "MODEL_PIXEL", "NAME", "NN_PX", "NORMALIZATION",
    "OUTPUT_NAMES", "PADDED_SHARE", "PIXEL_NM", "PIXEL_RANGE_NM", "QUICK", "RESCALED_PIXEL_NM", "RESCALED_SEEDS",
    "RESCALED_SHARE", "SEG_OF_ATOM", "SEG_OF_DEFECT", "SIZE_MULTIPLE", "TARGET_SIGMA_PX", "TRAIN_SEED_BASE",
    "TUNING_SEEDS", "VERSION", "PoolFrame", "Recipe", "STEMUNet", "SegmentationResult", "TorchSegmenter",
    "architecture", "build_pool", "export", "export_model", "fit", "heldout_metrics", "loss_fn",
    "make_pool_frame", "model_card", "paint_labels", "paint_targets", "postprocess_spec", "sample_batch",
    "sample_crop", "simulated_frame", "soft_targets", "train", "train_network", "training_config",
    "truth_points", "tune_postprocess",
]
