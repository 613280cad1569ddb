"""one-frame-unet's training examples: random crops of the one frame in the 8 dihedral orientations, with
binomially thinned counts, a gain and the service's padding, and the batches of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanlens.models.sampling import log_uniform
from scanlens.models.stem_unet import IGNORE, PADDED_SHARE, SIZE_MULTIPLE

from .config import DEFECT_CROP_SHARE, GAIN_RANGE, THINNED_SHARE, THINNING_RANGE


@dataclass
class TrainingFrame:
    """The one frame and what training needs of it."""

    image: np.ndarray  # float32 [h, w]
    labels: np.ndarray  # uint8 [h, w] SEG_CLASSES indices (IGNORE: unlabelled, no loss)
    distance: np.ndarray  # float32 [h, w], see geometry.distance_map
    counts: bool  # integer counts: augment by binomial thinning
    crop: int  # training crop edge (px, multiple of 16)
    defect_pixels: np.ndarray  # int [k, 2] (row, col) of the pixels labelled with a defect class
    centres: np.ndarray  # float32 [2, h, w], see geometry.blob_centres
    #: int [m, 2] (row, col): where only part of the frame is labelled (``models.live``), the crops not placed
    #: on a defect contain one of these pixels (a labelled one) instead of lying anywhere; None: anywhere
    anchors: np.ndarray | None = None


def sample_crop(frame: TrainingFrame, rng: np.random.Generator, valid: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One example (counts float32, labels uint8, distance float32), each ``[crop, crop]``: a random
    crop (containing a defect pixel for a :data:`DEFECT_CROP_SHARE` of the calls, one of ``frame.anchors``
    for the others where the frame has them), one of the 8 dihedral
    transforms, binomial thinning (count frames) and a gain. Blobs centred outside the crop are background
    in it, as columns centred outside a frame are (see ``geometry.drop_outside_columns``).

    With ``valid = (h, w)`` only an ``h x w`` region of the frame is cut, transformed, and completed to
    ``crop x crop`` by reflection at the bottom and right, as the service pads frames to a multiple of 16;
    the padding is labelled ``IGNORE``, as unlabelled pixels of the frame stay."""
    s = frame.crop
    vh, vw = valid or (s, s)
    h, w = frame.image.shape
    on_defect = len(frame.defect_pixels) and rng.random() < DEFECT_CROP_SHARE
    if on_defect or frame.anchors is not None:
        pixels = frame.defect_pixels if on_defect else frame.anchors
        py, px = (int(v) for v in pixels[int(rng.integers(len(pixels)))])
        y0 = int(rng.integers(max(0, py - vh + 1), min(py, h - vh) + 1))
        x0 = int(rng.integers(max(0, px - vw + 1), min(px, w - vw) + 1))
    else:
        y0, x0 = int(rng.integers(0, h - vh + 1)), int(rng.integers(0, w - vw + 1))
    img = frame.image[y0 : y0 + vh, x0 : x0 + vw]
    lab = frame.labels[y0 : y0 + vh, x0 : x0 + vw]
    dist = frame.distance[y0 : y0 + vh, x0 : x0 + vw]
    cy = frame.centres[0, y0 : y0 + vh, x0 : x0 + vw] - y0
    cx = frame.centres[1, y0 : y0 + vh, x0 : x0 + vw] - x0
    outside = (lab > 0) & (lab != IGNORE) & ~((cy >= -0.5) & (cy < vh - 0.5) & (cx >= -0.5) & (cx < vw - 0.5))
    if outside.any():
        lab = np.where(outside, 0, lab).astype(np.uint8)
        dist = np.where(outside, np.inf, dist).astype(np.float32)
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    img, lab, dist = (np.rot90(a, k) for a in (img, lab, dist))
    if flip:
        img, lab, dist = img[:, ::-1], lab[:, ::-1], dist[:, ::-1]
    if frame.counts and rng.random() < THINNED_SHARE:
        img = rng.binomial(img.astype(np.int64), log_uniform(rng, *THINNING_RANGE)).astype(np.float32)
    img = img * np.float32(log_uniform(rng, *GAIN_RANGE))
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
