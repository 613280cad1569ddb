"""one-frame-unet's fixed choices: name, training budget, augmentation ranges and class weights."""

from __future__ import annotations

from scanlens.models.stem_unet import CLASS_WEIGHTS as STEM_WEIGHTS
from scanlens.sim.stem import DEFECT_CLASSES, SEG_CLASSES

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
#: Cross-entropy weight of each SEG_CLASSES class.
CLASS_WEIGHTS: tuple[float, ...] = tuple(
    DEFECT_WEIGHT if c in DEFECT_CLASSES else w for c, w in zip(SEG_CLASSES, STEM_WEIGHTS))
