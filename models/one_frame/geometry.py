"""The labelled frame's checks and the lattice geometry measured from its labels: column centres, the
nearest-neighbour spacing, edge slivers, each blob's centre and each pixel's distance from it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from scanlens.models.stem_unet import SEG_OF_ATOM
from scanlens.sim.stem import SEG_CLASSES

from .config import MIN_FRAME_PX


def validate(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) after checking them; ValueError with the reason otherwise."""
    img, lab = validate_frame(image, labels, len(SEG_CLASSES) - 1,
                              f"SEG_CLASSES indices 0..{len(SEG_CLASSES) - 1} ({', '.join(SEG_CLASSES)})")
    positive_number(pixel_size_nm, "pixel_size_nm")
    return img, lab


def positive_number(value: object, what: str) -> float:
    """``value`` as a float when it is a finite number > 0 (not a bool); ValueError naming ``what`` otherwise."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return number


def validate_frame(image: np.ndarray, labels: np.ndarray, max_label: int, meaning: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) of a labelled frame: a finite 2-D image of at least
    :data:`MIN_FRAME_PX` px a side, labels of its shape holding integers ``0..max_label``; ValueError
    otherwise (``meaning`` says what the label values are, e.g. "SEG_CLASSES indices 0..6 (...)")."""
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
    if lo < 0 or hi > max_label:
        raise ValueError(f"labels must be {meaning}, got values {lo:g}..{hi:g}")
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
    out = [np.column_stack([yx[:, 1], yx[:, 0], np.full(len(yx), c)]) for c, _, yx in _blobs(labels, SEG_OF_ATOM)]
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
    for _, regions, yx in _blobs(labels, SEG_OF_ATOM):
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
    :func:`blob_centres`); ``inf`` on background. What ``scanlens.models.stem_unet.soft_targets`` needs."""
    _, h, w = centres.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - centres[0], xx - centres[1]).astype(np.float32)
    return np.where(np.isnan(d), np.inf, d).astype(np.float32)


def is_counts(image: np.ndarray) -> bool:
    """Whether the frame looks like detector counts (non-negative integers), which may be thinned."""
    return bool(np.all(image >= 0) and np.all(image == np.round(image)) and image.max() < 2**31)
