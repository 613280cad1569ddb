"""stem-unet's fixed choices: names, pixel size, class weights, ranges of the training draws, the recipes
and the card's post-processing spec."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanlens.models.scoring import LOWDOSE_SEEDS as SCORING_LOWDOSE_SEEDS
from scanlens.models.scoring import TUNING_SEEDS as SCORING_TUNING_SEEDS
from scanlens.protocol.messages import PixelSize
from scanlens.sim.stem import (
    ATOM_CLASSES,
    DEFECT_CLASSES,
    LABEL_RADIUS_FRACTION,
    SEG_CLASSES,
    STEMConfig,
    nearest_neighbour_spacing_px,
)

NAME = "stem-unet"
VERSION = "1"
MODALITY = "haadf"
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities",)
PIXEL_NM = 0.02
#: The model's pixel size, as the card states it (what ``scanlens.pipeline.zoom_factor`` rescales frames to).
MODEL_PIXEL = PixelSize(size=PIXEL_NM, units="nm")
SIZE_MULTIPLE = 16
BASE_CHANNELS = 16
LEVELS = 3
MODEL_CFG = STEMConfig(pixel_size_nm=PIXEL_NM)  # the geometry at the model's pixel size (WS2)
NN_PX = nearest_neighbour_spacing_px(MODEL_CFG)  # 9.12 px
LABEL_RADIUS_PX = LABEL_RADIUS_FRACTION * NN_PX

TRAIN_SEED_BASE = 1000
#: Held-out frames (512 x 512, seeds never used in training) for the card's metrics ...
HELDOUT_SEEDS = (1, 2, 3)
LOWDOSE_SEEDS = SCORING_LOWDOSE_SEEDS  # low-dose comparison: scanlens.models.scoring.low_dose_comparison
RESCALED_PIXEL_NM = 0.015
RESCALED_SEEDS = (6,)
#: ... and frames that tune the post-processing and the classical baseline's threshold.
TUNING_SEEDS = SCORING_TUNING_SEEDS

# Training conditions (ranges of the random draws).
DOSE_RANGE = (5.0, 1000.0)  # log-uniform, expected peak counts of a W column above the background
BACKGROUND_RANGE = (0.0, 0.12)  # fraction of the dose
BLUR_RANGE_NM = (0.07, 0.12)  # probe FWHM
DRIFT_RANGE_PX = (0.0, 1.0)  # px per frame time
JITTER_RANGE_PX = (0.0, 0.6)  # rms line jitter
PIXEL_RANGE_NM = (0.011, 0.035)  # source pixel sizes of the rescaled share of the pool
RESCALED_SHARE = 0.4
#: A pool frame is the last frame of a movie of 1 to this many frames (``data.make_pool_frame``).
POOL_MOVIE_FRAMES = 30
CROP_SIZES = (128, 144, 160, 176, 192)
#: Share of crops that end in a reflection of the frame, as the service pads frames to a multiple of 16.
PADDED_SHARE = 0.3
#: Label of pixels that carry no loss (the padding).
IGNORE = 255
#: Width (px) of the soft target profile of an atom column (see ``network.soft_targets``).
TARGET_SIGMA_PX = 1.5
#: Cross-entropy weight of each SEG_CLASSES class (background, metal, chalcogen, 4 defect classes).
CLASS_WEIGHTS = (1.0, 1.0, 1.5, 8.0, 8.0, 8.0, 8.0)

NORMALIZATION = (
    "any intensity unit (counts, fractions of the beam): x -> z = sqrt(max(x, 0) / mean(max(x, 0))), then per "
    "image (z - mean(z)) / sqrt(var(z) + 1e-6) over the frame's pixels, so the frame's scale does not matter"
)
#: Frames for the novelty head and the temperature: crops of the training pool (fit), pool-like frames from
#: seeds never trained on (threshold), and foreign frames (the card's figures).
NOVELTY_FIT_CROPS = {"full": 384, "quick": 24}
NOVELTY_HELDOUT_FRAMES = {"full": 400, "quick": 24}
NOVELTY_COMPONENTS = 8
#: Cells of the deepest feature map (8 px each) next to the frame's edge that the novelty features
#: all but ignore (``network.interior_weights``): the zero padding reaches about this far in.
NOVELTY_BORDER_CELLS = 4
NOVELTY_SEED_BASE = 500_000
FOREIGN_FRAMES = {"full": 100, "quick": 8}

#: SEG_CLASSES index of each ATOM_CLASSES class and of each DEFECT_CLASSES class.
SEG_OF_ATOM = np.array([SEG_CLASSES.index(c) for c in ATOM_CLASSES], dtype=np.int64)
SEG_OF_DEFECT = np.array([SEG_CLASSES.index(c) for c in DEFECT_CLASSES], dtype=np.int64)


@dataclass(frozen=True)
class Recipe:
    """Sizes of one training run (budgeted in steps, not wall time)."""

    n_frames: int  # simulated frames in the pool
    frame_px: int  # edge of a pool frame at the model pixel size
    steps: int
    pixels_per_step: int = 8 * 128 * 128  # batch = pixels_per_step // crop**2
    lr: float = 3e-3
    eval_size: int = 512  # edge of the held-out frames
    crop_sizes: tuple[int, ...] = CROP_SIZES  # multiples of 16, at most frame_px


FULL = Recipe(n_frames=320, frame_px=224, steps=900)
QUICK = Recipe(n_frames=4, frame_px=160, steps=12, pixels_per_step=4 * 128 * 128, eval_size=192, crop_sizes=(128,))


def postprocess_spec(threshold: float = 0.5, min_region_px: int = 8, *, nn_px: float = NN_PX,
                     pixel_size_nm: float = PIXEL_NM) -> dict[str, Any]:
    """The card's ``postprocess``: what the service's ``PostProcess`` and tracker read.

    ``nn_px`` is the nearest-neighbour column spacing in the model's pixels and ``pixel_size_nm`` the
    model's pixel size; the defaults are WS2 at 0.02 nm/px (stem-unet). A model of another lattice or
    pixel size (``models.one_frame``) passes its own, and the peak spacing and the tracking gate follow
    (the lattice constant is ``sqrt(3) x nn``)."""
    d_max = max(MODEL_CFG.diffusion_nm2)
    a_nm = math.sqrt(3.0) * nn_px * pixel_size_nm
    return {
        "atom_classes": list(ATOM_CLASSES),
        "defect_classes": list(DEFECT_CLASSES),
        "min_distance_px": round(0.6 * nn_px, 2),
        "threshold": float(threshold),
        "size_multiple": SIZE_MULTIPLE,
        # a few x the rms step of the fastest defect in one frame (sqrt(4 D_max) = 0.28 nm), and at least
        # four lattice constants: site-bound defects jump a lattice constant at a time, several per frame
        "track_gate_nm": round(max(2.5 * math.sqrt(4.0 * d_max), 4.0 * a_nm), 3),
        "min_region_px": int(min_region_px),
        # half the column spacing: a defect closer to the edge sits on a column the frame cuts (the simulator
        # keeps defects 2 lattice constants inside), and the reflection padding makes such a column look dim
        "edge_margin_px": round(0.5 * nn_px, 2),
    }
