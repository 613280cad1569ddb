"""stem-unet's training data: the pool of noise-free simulated frames, labels painted from their ground
truth, and the noisy, rescaled, flipped and padded crops and batches drawn from it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from scanlens.models.export import ProgressFn, TrainProgress, emit
from scanlens.models.sampling import log_uniform
from scanlens.pipeline import rescale, zoom_factor
from scanlens.protocol.messages import PixelSize
from scanlens.sim.stem import DEFECT_CLASSES, STEMConfig, STEMMovie

from .config import (
    BACKGROUND_RANGE,
    BLUR_RANGE_NM,
    DOSE_RANGE,
    DRIFT_RANGE_PX,
    IGNORE,
    JITTER_RANGE_PX,
    LABEL_RADIUS_PX,
    MODEL_PIXEL,
    PADDED_SHARE,
    PIXEL_NM,
    PIXEL_RANGE_NM,
    POOL_MOVIE_FRAMES,
    RESCALED_SHARE,
    SEG_OF_ATOM,
    SEG_OF_DEFECT,
    SIZE_MULTIPLE,
    TRAIN_SEED_BASE,
    Recipe,
)

_VACANCIES = np.array([DEFECT_CLASSES.index("metal_vacancy"), DEFECT_CLASSES.index("chalcogen_vacancy")])


@dataclass
class PoolFrame:
    """A noise-free training frame: expected counts at dose 1 (source pixels) and labelled points (model pixels)."""

    lam: np.ndarray  # float32 [hs, ws] expected counts / dose, no background
    zoom: float  # model pixels per source pixel (1 = rendered at the model pixel size)
    points: np.ndarray  # float32 [k, 3]: x, y (model px), SEG_CLASSES index of every column and vacancy site
    shape: tuple[int, int]  # model-pixel shape after the zoom


def training_config(rng: np.random.Generator, seed: int, frame_px: int) -> tuple[STEMConfig, float]:
    """A pool frame's simulator config (dose 1, no background) and its zoom to the model pixel size
    (``scanlens.pipeline.zoom_factor``, the service's rule)."""
    pixel_nm = PIXEL_NM
    if rng.random() < RESCALED_SHARE:
        pixel_nm = log_uniform(rng, *PIXEL_RANGE_NM)
    zoom = zoom_factor(PixelSize(size=pixel_nm, units="nm"), MODEL_PIXEL)
    size = int(math.ceil(frame_px / zoom))
    cfg = STEMConfig(
        size=size, pixel_size_nm=pixel_nm, dose=1.0, background=0.0, frames=1, seed=seed,
        blur_fwhm_nm=float(rng.uniform(*BLUR_RANGE_NM)),
        drift_px_per_frame=float(rng.uniform(*DRIFT_RANGE_PX)) * PIXEL_NM / pixel_nm,
        jitter_px=float(rng.uniform(*JITTER_RANGE_PX)) * PIXEL_NM / pixel_nm,
        n_defects=int(rng.integers(3, 9)),
    )
    return cfg, zoom


def truth_points(truth: dict[str, np.ndarray]) -> np.ndarray:
    """Columns and vacancy sites of a frame as ``[k, 3]`` (x, y, SEG_CLASSES index), frame pixels."""
    atoms = truth["atoms"]
    d = truth["defects"]
    vac = d[np.isin(d[:, 2].astype(np.int64), _VACANCIES)]
    return np.concatenate([
        np.column_stack([atoms[:, :2], SEG_OF_ATOM[atoms[:, 2].astype(np.int64)]]),
        np.column_stack([vac[:, :2], SEG_OF_DEFECT[vac[:, 2].astype(np.int64)]]),
    ]).astype(np.float32)


def make_pool_frame(rng: np.random.Generator, seed: int, frame_px: int) -> PoolFrame:
    """Render one pool frame: the last frame of a movie of 1 to :data:`POOL_MOVIE_FRAMES` frames, so the
    pool has defects as they are later in a movie, not only where they start (fewer defects when they do
    not fit). Its points are scaled as ``rescale``
    scales the image: by ``(out - 1) / (size - 1)``, exactly 1 when the frame is not rescaled."""
    cfg, zoom = training_config(rng, seed, frame_px)
    cfg = dataclasses.replace(cfg, frames=int(rng.integers(1, POOL_MOVIE_FRAMES + 1)))
    for n in range(cfg.n_defects, -1, -1):
        try:
            movie = STEMMovie(dataclasses.replace(cfg, n_defects=n))
            break
        except ValueError:
            continue
    last = cfg.frames - 1  # defects that have walked: adatoms off their starting hollow sites, changed classes
    lam = movie.expected_frame(last)
    pts = truth_points(movie.truth(last))
    size = cfg.size
    out = int(round(size * zoom))  # the edge scipy.ndimage.zoom gives; ``size`` when rescale leaves it as it is
    pts[:, :2] *= (out - 1) / (size - 1)
    return PoolFrame(lam=lam, zoom=zoom, points=pts, shape=(out, out))


def build_pool(recipe: Recipe, seed: int, progress: ProgressFn | None = None) -> tuple[list[PoolFrame], list[int]]:
    """The training pool and the simulator seeds used (all >= TRAIN_SEED_BASE)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(17,)))
    seeds = [TRAIN_SEED_BASE + 100_000 * seed + k for k in range(recipe.n_frames)]
    pool = []
    step = max(1, len(seeds) // 10)
    for k, s in enumerate(seeds):
        pool.append(make_pool_frame(rng, s, recipe.frame_px))
        if (k + 1) % step == 0 or k + 1 == len(seeds):
            emit(progress, TrainProgress("data", k + 1, len(seeds), message=f"simulated frame seed {s}"))
    return pool, seeds


def paint_targets(points: np.ndarray, size: tuple[int, int], radius: float = LABEL_RADIUS_PX
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8, distance float32): disks of ``radius`` around the points whose centre lies inside
    the frame (``-0.5 <= x < w - 0.5``, same for y), lattice columns first, then vacancies, dopants and
    adatoms on top (the simulator's order); ``distance`` is each labelled pixel's distance (px) from the
    centre of its disk (``inf`` on background)."""
    h, w = size
    lab = np.zeros((h, w), np.uint8)
    dist = np.full((h, w), np.inf, np.float32)
    x, y, c = points[:, 0], points[:, 1], points[:, 2].astype(np.int64)
    inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    r = int(math.ceil(radius)) + 1
    off = np.arange(-r, r + 1)
    for group in ((1, 2), (3, 4), (5,), (6,)):
        sel = inside & np.isin(c, group)
        if not sel.any():
            continue
        px, py, pc = x[sel], y[sel], c[sel]
        cx = np.round(px).astype(np.int64)[:, None, None] + off[None, None, :]
        cy = np.round(py).astype(np.int64)[:, None, None] + off[None, :, None]
        d2 = (cx - px[:, None, None]) ** 2 + (cy - py[:, None, None]) ** 2
        hit = (d2 <= radius**2) & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        rows, cols = np.broadcast_to(cy, hit.shape)[hit], np.broadcast_to(cx, hit.shape)[hit]
        lab[rows, cols] = np.broadcast_to(pc[:, None, None], hit.shape)[hit]
        dist[rows, cols] = np.sqrt(d2[hit])
    return lab, dist


def paint_labels(points: np.ndarray, size: tuple[int, int], radius: float = LABEL_RADIUS_PX) -> np.ndarray:
    """The uint8 label map of :func:`paint_targets` (the simulator's segmentation target, in-frame columns only)."""
    return paint_targets(points, size, radius)[0]


def sample_crop(frame: PoolFrame, rng: np.random.Generator, crop: int, valid: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training example: random dose, background and Poisson noise at the source pixels, the
    service's zoom (``scanlens.pipeline.rescale``), a random crop and flip. Returns (counts float32
    [crop, crop], labels uint8, distance from the disk centre float32) — see :func:`paint_targets`.

    With ``valid = (h, w)`` only the top-left ``h x w`` of the crop is the frame and the rest is its
    reflection, as the service pads frames to a multiple of 16; the padding is labelled :data:`IGNORE`."""
    dose = log_uniform(rng, *DOSE_RANGE)
    bg = rng.uniform(*BACKGROUND_RANGE)
    counts = rescale(rng.poisson(dose * (bg + frame.lam)).astype(np.float32), frame.zoom)
    h, w = counts.shape
    y0, x0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    img = counts[y0 : y0 + crop, x0 : x0 + crop]
    pts = frame.points.copy()
    pts[:, 0] -= x0
    pts[:, 1] -= y0
    if rng.random() < 0.5:
        img = img[:, ::-1]
        pts[:, 0] = crop - 1 - pts[:, 0]
    if rng.random() < 0.5:
        img = img[::-1, :]
        pts[:, 1] = crop - 1 - pts[:, 1]
    vh, vw = valid or (crop, crop)
    lab, dist = paint_targets(pts, (vh, vw))
    if (vh, vw) != (crop, crop):
        pad = ((0, crop - vh), (0, crop - vw))
        img = np.pad(img[:vh, :vw], pad, mode="reflect")
        lab = np.pad(lab, pad, constant_values=IGNORE)
        dist = np.pad(dist, pad, constant_values=np.inf)
    return np.ascontiguousarray(img), lab, dist


def sample_batch(pool: list[PoolFrame], rng: np.random.Generator, recipe: Recipe
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of crops of one random size: (x float32 [b, 1, s, s], labels int64 [b, s, s], distance [b, s, s]);
    a :data:`PADDED_SHARE` of them padded from a frame edge that is not a multiple of 16."""
    crop = int(rng.choice(recipe.crop_sizes))
    b = max(2, recipe.pixels_per_step // (crop * crop))
    xs, ys, ds = [], [], []
    for _ in range(b):
        valid = None
        if rng.random() < PADDED_SHARE:
            valid = (crop - int(rng.integers(0, SIZE_MULTIPLE)), crop - int(rng.integers(0, SIZE_MULTIPLE)))
        x, y, d = sample_crop(pool[int(rng.integers(len(pool)))], rng, crop, valid)
        xs.append(x)
        ys.append(y)
        ds.append(d)
    return np.stack(xs)[:, None], np.stack(ys).astype(np.int64), np.stack(ds)
