"""Train and export "stem-unet": a small U-Net that segments atoms and point defects in HAADF STEM frames of WS2.

Recognition of atomic-resolution STEM movies as in AtomAI: a fully convolutional network trained on
simulated frames (``instrument_sim.stem``) labels every pixel with one of :data:`SEG_CLASSES`; the
service's post-processing (``service.pipeline.atoms``) turns the probabilities into sub-pixel atom
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

**Network.** Anscombe transform ``2 sqrt(x + 3/8)`` of the raw counts and per-image standardisation
inside the graph, a 3-level U-Net (16-32-64-128 channels, batch norm, ReLU, max-pool, transposed-conv
up-sampling, skip connections), per-pixel softmax over the 7 classes. Loss: class-weighted
cross-entropy (defect classes are < 0.5 % of the pixels) against soft targets that peak at each atom
column's centre, so that the service's peak finder sees one maximum per column (hard disks give flat
plateaus of probability 1 with several maxima each). The ONNX input is ``image`` ``[n, 1, h, w]`` raw
counts with ``h`` and ``w`` multiples of 16 (all three dims dynamic).

**Card.** Pixel size 0.02 nm, the post-processing parameters the service uses (tuned on tuning frames
after training) and held-out metrics measured on simulated frames with seeds never used in training:
atom F1 and defect classification at the default dose, the network against the tuned classical
baseline at low dose, and a frame at 0.015 nm/px rescaled as the service does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from os import PathLike
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from scanlens.sim.stem import (
    ATOM_CLASSES,
    DEFECT_CLASSES,
    LABEL_RADIUS_FRACTION,
    SEG_CLASSES,
    STEMConfig,
    STEMMovie,
    nearest_neighbour_spacing_px,
)
from scanlens.models.scoring import stem as stem_metrics
from scanlens.models.export import ProgressFn, TrainProgress, check_parity, emit, export_onnx_file, make_session
from scanlens.models.training import trainer
from scanlens.pipeline.atoms import PostProcess, postprocess
from scanlens.protocol.messages import PixelSize
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec

log = logging.getLogger(__name__)

NAME = "stem-unet"
VERSION = "1"
MODALITY = "haadf"
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities",)
PIXEL_NM = 0.02
SIZE_MULTIPLE = 16
BASE_CHANNELS = 16
LEVELS = 3
MODEL_CFG = STEMConfig(pixel_size_nm=PIXEL_NM)  # the geometry at the model's pixel size (WS2)
NN_PX = nearest_neighbour_spacing_px(MODEL_CFG)  # 9.12 px
LABEL_RADIUS_PX = LABEL_RADIUS_FRACTION * NN_PX

TRAIN_SEED_BASE = 1000
#: Held-out frames (512 x 512, seeds never used in training) for the card's metrics ...
HELDOUT_SEEDS = (1, 2, 3)
LOWDOSE_SEEDS = stem_metrics.LOWDOSE_SEEDS  # low-dose comparison: stem_metrics.low_dose_comparison
RESCALED_PIXEL_NM = 0.015
RESCALED_SEEDS = (6,)
#: ... and frames that tune the post-processing and the classical baseline's threshold.
TUNING_SEEDS = stem_metrics.TUNING_SEEDS

# Training conditions (ranges of the random draws).
DOSE_RANGE = (5.0, 1000.0)  # log-uniform, expected peak counts of a W column above the background
BACKGROUND_RANGE = (0.0, 0.12)  # fraction of the dose
BLUR_RANGE_NM = (0.07, 0.12)  # probe FWHM
DRIFT_RANGE_PX = (0.0, 1.0)  # px per frame time
JITTER_RANGE_PX = (0.0, 0.6)  # rms line jitter
PIXEL_RANGE_NM = (0.011, 0.035)  # source pixel sizes of the rescaled share of the pool
RESCALED_SHARE = 0.4
CROP_SIZES = (128, 144, 160, 176, 192)
#: Share of crops that end in a reflection of the frame, as the service pads frames to a multiple of 16.
PADDED_SHARE = 0.3
#: Label of pixels that carry no loss (the padding).
IGNORE = 255
#: Width (px) of the soft target profile of an atom column (see :func:`soft_targets`).
TARGET_SIGMA_PX = 1.5
#: Cross-entropy weight of each SEG_CLASSES class (background, metal, chalcogen, 4 defect classes).
CLASS_WEIGHTS = (1.0, 1.0, 1.5, 8.0, 8.0, 8.0, 8.0)

NORMALIZATION = (
    "raw HAADF counts x -> z = 2 sqrt(max(x, 0) + 3/8) (Anscombe), then per image (z - mean(z)) / "
    "sqrt(var(z) + 0.01) over the frame's pixels"
)

_SEG_OF_ATOM = np.array([SEG_CLASSES.index(c) for c in ATOM_CLASSES], dtype=np.int64)
_SEG_OF_DEFECT = np.array([SEG_CLASSES.index(c) for c in DEFECT_CLASSES], dtype=np.int64)
_VACANCIES = np.array([DEFECT_CLASSES.index("metal_vacancy"), DEFECT_CLASSES.index("chalcogen_vacancy")])


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
    }


# --------------------------------------------------------------------------- data


@dataclass
class PoolFrame:
    """A noise-free training frame: expected counts at dose 1 (source pixels) and labelled points (model pixels)."""

    lam: np.ndarray  # float32 [hs, ws] expected counts / dose, no background
    zoom: float  # model pixels per source pixel (1 = rendered at the model pixel size)
    points: np.ndarray  # float32 [k, 3]: x, y (model px), SEG_CLASSES index of every column and vacancy site
    shape: tuple[int, int]  # model-pixel shape after the zoom


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def training_config(rng: np.random.Generator, seed: int, frame_px: int) -> tuple[STEMConfig, float]:
    """A pool frame's simulator config (dose 1, no background) and its zoom to the model pixel size."""
    pixel_nm = PIXEL_NM
    if rng.random() < RESCALED_SHARE:
        pixel_nm = _log_uniform(rng, *PIXEL_RANGE_NM)
    zoom = pixel_nm / PIXEL_NM
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
        np.column_stack([atoms[:, :2], _SEG_OF_ATOM[atoms[:, 2].astype(np.int64)]]),
        np.column_stack([vac[:, :2], _SEG_OF_DEFECT[vac[:, 2].astype(np.int64)]]),
    ]).astype(np.float32)


def make_pool_frame(rng: np.random.Generator, seed: int, frame_px: int) -> PoolFrame:
    """Render one pool frame (fewer defects when they do not fit)."""
    cfg, zoom = training_config(rng, seed, frame_px)
    for n in range(cfg.n_defects, -1, -1):
        try:
            movie = STEMMovie(dataclasses.replace(cfg, n_defects=n))
            break
        except ValueError:
            continue
    lam = movie.expected_frame(0)
    pts = truth_points(movie.truth(0))
    size = cfg.size
    out = int(round(size * zoom))
    if abs(zoom - 1.0) > 1e-9:
        scale = (out - 1) / (size - 1)
        pts[:, :2] *= scale
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
    service's zoom, a random crop and flip. Returns (counts float32 [crop, crop], labels uint8,
    distance from the disk centre float32) — see :func:`paint_targets`.

    With ``valid = (h, w)`` only the top-left ``h x w`` of the crop is the frame and the rest is its
    reflection, as the service pads frames to a multiple of 16; the padding is labelled :data:`IGNORE`."""
    dose = _log_uniform(rng, *DOSE_RANGE)
    bg = rng.uniform(*BACKGROUND_RANGE)
    counts = rng.poisson(dose * (bg + frame.lam)).astype(np.float32)
    if abs(frame.zoom - 1.0) > 1e-9:
        counts = ndimage.zoom(counts, frame.zoom, order=1)
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


def soft_targets(labels: torch.Tensor, distance: torch.Tensor, sigma_px: float = TARGET_SIGMA_PX) -> torch.Tensor:
    """Per-pixel target distributions ``[b, C, h, w]``: an atom column's class gets ``exp(-d^2 / 2 s^2)``
    (``s`` = ``sigma_px``, default :data:`TARGET_SIGMA_PX`; ``d`` the distance from its centre) and
    background the rest, so the network's atom probability peaks at the column centre (one peak per
    column for the service's peak finder); vacancies and background are one-hot. ``labels`` must not
    hold :data:`IGNORE`."""
    q = nn.functional.one_hot(labels, len(SEG_CLASSES)).permute(0, 3, 1, 2).to(torch.float32)
    atom = torch.isin(labels, torch.as_tensor(_SEG_OF_ATOM))
    g = torch.where(atom, torch.exp(-(distance.clamp(max=1e3) ** 2) / (2.0 * sigma_px**2)), 1.0)
    q = q * g[:, None]
    q[:, 0] += torch.where(atom, 1.0 - g, 0.0)
    return q


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, distance: torch.Tensor, weights: torch.Tensor,
            sigma_px: float = TARGET_SIGMA_PX) -> torch.Tensor:
    """Class-weighted cross-entropy against :func:`soft_targets` of width ``sigma_px`` (weight of each
    pixel's label class; :data:`IGNORE` pixels weigh nothing)."""
    keep = labels != IGNORE
    labels = torch.where(keep, labels, 0)
    q = soft_targets(labels, distance, sigma_px)
    w = weights[labels] * keep
    per_pixel = -(q * torch.log_softmax(logits, dim=1)).sum(dim=1)
    return (per_pixel * w).sum() / w.sum()


# --------------------------------------------------------------------------- network


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class STEMUNet(nn.Module):
    """Anscombe + per-image standardisation, a U-Net, softmax over :data:`SEG_CLASSES` per pixel."""

    def __init__(self, base: int = BASE_CHANNELS, levels: int = LEVELS, n_classes: int = len(SEG_CLASSES)):
        super().__init__()
        ch = [base * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.enc = nn.ModuleList([_block(1, ch[0])] + [_block(ch[i], ch[i + 1]) for i in range(levels)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in range(levels)])
        self.dec = nn.ModuleList([_block(2 * ch[i], ch[i]) for i in range(levels)])
        self.head = nn.Conv2d(ch[0], n_classes, 1)
        self.pool = nn.MaxPool2d(2)

    @staticmethod
    def normalize(image: torch.Tensor) -> torch.Tensor:
        """Anscombe transform, then per-image standardisation. The mean and variance are reduced in
        float64: ONNX Runtime's float32 ReduceMean over a 512 x 512 frame is off by ~1e-4, which the
        network would amplify past the parity limit."""
        z = 2.0 * torch.sqrt(torch.clamp(image, min=0.0) + 0.375)
        z64 = z.to(torch.float64)
        mean = z64.mean(dim=(2, 3), keepdim=True)
        var = ((z64 - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        return (z - mean.to(torch.float32)) / torch.sqrt(var + 0.01).to(torch.float32)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        x = self.normalize(image)
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.levels)):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax over the class axis, written out: ONNX Runtime's Softmax on axis 1 of NCHW
        transposes the tensor twice and costs ~10 % of a frame."""
        logits = self.logits(image)
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True)


def architecture() -> str:
    ch = "-".join(str(BASE_CHANNELS * 2**i) for i in range(LEVELS + 1))
    return (f"U-Net, {LEVELS} levels ({ch} channels; 2 x (3x3 conv, batch norm, ReLU) per block, 2x2 max-pool, "
            f"2x2 transposed-conv up-sampling, skip connections), 1x1 head, softmax over {len(SEG_CLASSES)} "
            "classes; Anscombe + per-image standardisation in the graph")


class TorchSegmenter:
    """The torch model behind the same ``_segment`` / ``pp`` / ``pixel_size`` the service's FrameRecognizer has."""

    def __init__(self, model: STEMUNet, spec: dict[str, Any]) -> None:
        self.model = model.eval()
        self.pp = PostProcess.from_card(list(SEG_CLASSES), spec)
        self.pixel_size = PixelSize(size=PIXEL_NM, units="nm")
        self.multiple = int(spec["size_multiple"])

    @torch.no_grad()
    def _segment(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape
        m = self.multiple
        padded = np.pad(image, ((0, -h % m), (0, -w % m)), mode="reflect")
        probs = self.model(torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None])
        return probs[0, :, :h, :w].numpy()


# --------------------------------------------------------------------------- evaluation


def simulated_frame(seed: int, *, size: int = 512, dose: float | None = None,
                    pixel_size_nm: float = PIXEL_NM) -> tuple[np.ndarray, dict[str, np.ndarray], STEMConfig]:
    """(image, truth, config) of frame 0 of a default-condition movie at the model's pixel size by default."""
    return stem_metrics.simulated_frame(seed, size=size, dose=dose, pixel_size_nm=pixel_size_nm)


def tune_postprocess(model: STEMUNet, frames: list[tuple[np.ndarray, dict[str, np.ndarray], STEMConfig]]
                     ) -> tuple[dict[str, Any], dict[str, float]]:
    """Pick ``threshold`` (best atom F1) then ``min_region_px`` (best defect F1 with the right class)."""
    seg = TorchSegmenter(model, postprocess_spec())
    probs = [seg._segment(img) for img, _, _ in frames]

    def score(spec: dict[str, Any]) -> tuple[float, float]:
        pp = PostProcess.from_card(list(SEG_CLASSES), spec)
        radius = stem_metrics.MATCH_FRACTION * NN_PX
        atom, defect = [], []
        for p, (_, truth, _) in zip(probs, frames):
            _, atoms, defects = postprocess(p, pp)
            atom.append(stem_metrics.atom_f1(atoms, truth["atoms"], radius))
            d = stem_metrics.defect_accuracy(defects, truth["defects"], radius)
            defect.append(d["correct_recall"] * d["precision"])
        return float(np.mean(atom)), float(np.mean(defect))

    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
    atom_f1 = {t: score(postprocess_spec(t))[0] for t in thresholds}
    best_t = max(thresholds, key=lambda t: (atom_f1[t], -abs(t - 0.5)))
    regions = (4, 8, 12, 16, 20)
    defect = {r: score(postprocess_spec(best_t, r))[1] for r in regions}
    best_r = max(regions, key=lambda r: (defect[r], -abs(r - 8)))
    log.info("post-processing tuned: threshold %s (atom F1 %s), min_region_px %s (defect score %s)",
             best_t, atom_f1, best_r, defect)
    return postprocess_spec(best_t, best_r), {"tuning_atom_f1": atom_f1[best_t], "tuning_defect_score": defect[best_r]}


def heldout_metrics(model: STEMUNet, spec: dict[str, Any], recipe: Recipe) -> dict[str, float]:
    """The card's metrics, on frames with seeds never used in training or tuning."""
    seg = TorchSegmenter(model, spec)
    size = recipe.eval_size
    default = [stem_metrics.evaluate_frame(seg, *simulated_frame(s, size=size)) for s in HELDOUT_SEEDS]
    out = {f"default_dose_{k}": v for k, v in stem_metrics.pooled(default).items()}
    out["default_dose_atom_class_accuracy"] = float(np.mean([r.get("atom_class_accuracy", 0.0) for r in default]))

    # Low dose: the network against the classical baseline, threshold tuned at this dose on the tuning frames.
    low = stem_metrics.low_dose_comparison(seg, size=size)
    out["low_dose"] = low["dose"]
    out["low_dose_atom_f1"] = low["atom_f1"]
    out["low_dose_classical_atom_f1"] = low["classical_atom_f1"]
    out["low_dose_classical_threshold_fraction"] = low["classical_threshold_fraction"]

    rescaled = [stem_metrics.evaluate_frame(seg, *simulated_frame(s, size=size, pixel_size_nm=RESCALED_PIXEL_NM))
                for s in RESCALED_SEEDS]
    out["rescaled_pixel_size_nm"] = RESCALED_PIXEL_NM
    out["rescaled_atom_f1"] = stem_metrics.pooled(rescaled)["atom_f1"]
    out["rescaled_defect_accuracy"] = stem_metrics.pooled(rescaled)["defect_accuracy"]
    return {k: float(v) for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """A trained network, its post-processing, held-out metrics, training record and parity inputs."""

    model: STEMUNet
    postprocess: dict[str, Any]
    metrics: dict[str, float]
    training: dict[str, Any]
    check_inputs: np.ndarray


def train_network(next_batch: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]], *, steps: int, lr: float,
                  pct_start: float, class_weights: Sequence[float], sigma_px: float = TARGET_SIGMA_PX,
                  progress: ProgressFn | None = None) -> tuple[STEMUNet, float]:
    """A new :class:`STEMUNet` trained on ``steps`` batches ``(x, labels, distance)`` from ``next_batch``
    (AdamW, one-cycle learning rate peaking at ``lr``, :func:`loss_fn` with ``class_weights``); returns the
    model (in train mode) and the mean loss of the last reporting interval. Progress: about 30 ``train`` events."""
    model = STEMUNet()
    weights = torch.tensor(list(class_weights), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    report = max(1, steps // 30)
    running, count, loss_value = 0.0, 0, float("nan")
    model.train()
    for step in range(steps):
        x_np, y_np, d_np = next_batch()
        loss = loss_fn(model.logits(torch.from_numpy(x_np)), torch.from_numpy(y_np), torch.from_numpy(d_np),
                       weights, sigma_px)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        count += 1
        if (step + 1) % report == 0 or step + 1 == steps:
            loss_value = running / count
            running, count = 0.0, 0
            emit(progress, TrainProgress("train", step + 1, steps, loss=loss_value))
    return model, loss_value


def fit(*, quick: bool = False, seed: int = 0, progress: ProgressFn | None = None,
        recipe: Recipe | None = None, threads: int = 2) -> TrainResult:
    """Simulate the pool, train the network (deterministic for a seed), tune post-processing, score held-out frames."""
    recipe = recipe or (QUICK if quick else FULL)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        pool, seeds = build_pool(recipe, seed, progress)
        t_data = time.perf_counter() - t0
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(23,)))

        model, loss_value = train_network(lambda: sample_batch(pool, rng, recipe), steps=recipe.steps, lr=recipe.lr,
                                          pct_start=0.1, class_weights=CLASS_WEIGHTS, progress=progress)
        t_train = time.perf_counter() - t0 - t_data
        model.eval()

        tuning = [simulated_frame(s, size=recipe.eval_size) for s in TUNING_SEEDS]
        spec, tuning_scores = tune_postprocess(model, tuning)
        metrics = heldout_metrics(model, spec, recipe)
        metrics.update(tuning_scores)
        metrics["final_train_loss"] = float(loss_value)
        log.info("data %.1fs, training %.1fs; held-out %s", t_data, t_train, metrics)
    finally:
        torch.set_num_threads(old_threads)

    training: dict[str, Any] = {
        "generator": "instrument_sim.stem",
        "lattice": "ws2",
        "frame_seeds": [seeds[0], seeds[-1]],
        "n_frames": len(seeds),
        "frame_px": recipe.frame_px,
        "heldout_seeds": {"default_dose": list(HELDOUT_SEEDS), "low_dose": list(LOWDOSE_SEEDS),
                          "rescaled": list(RESCALED_SEEDS), "tuning": list(TUNING_SEEDS)},
        "heldout_frame_px": recipe.eval_size,
        "seed": seed,
        "quick": quick,
        "steps": recipe.steps,
        "crop_sizes": list(recipe.crop_sizes),
        "pixels_per_step": recipe.pixels_per_step,
        "optimizer": f"AdamW lr {recipe.lr} one-cycle, weight_decay 1e-4",
        "loss": (f"class-weighted cross-entropy, weights {list(CLASS_WEIGHTS)} (SEG_CLASSES order), against soft "
                 f"targets: atom columns exp(-d^2 / 2 s^2), s = {TARGET_SIGMA_PX} px, inside their label disks"),
        "dose_range": list(DOSE_RANGE),
        "background_range": list(BACKGROUND_RANGE),
        "blur_fwhm_nm_range": list(BLUR_RANGE_NM),
        "drift_px_per_frame_range": list(DRIFT_RANGE_PX),
        "jitter_px_range": list(JITTER_RANGE_PX),
        "source_pixel_size_nm_range": list(PIXEL_RANGE_NM),
        "rescaled_share": RESCALED_SHARE,
        "rescaling": "scipy.ndimage.zoom order 1 (as the service), labels painted from scaled ground truth",
        "augmentation": "fresh dose, background and Poisson noise per crop; random flips",
        "padded_share": PADDED_SHARE,
        "padding": "reflect to a multiple of 16 from a random 0-15 px short edge (as the service), no loss there",
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "torch": torch.__version__,
    }
    check = np.stack([simulated_frame(HELDOUT_SEEDS[0], size=64 if quick else 128, dose=d)[0]
                      for d in (15.0, 200.0)])[:, None]
    return TrainResult(model=model, postprocess=spec, metrics=metrics, training=training, check_inputs=check)


def model_card(result: TrainResult) -> ModelCard:
    """The card stored in the ONNX file's metadata."""
    return ModelCard(
        name=NAME,
        version=VERSION,
        modality=MODALITY,
        description=(
            "Atom columns and point defects (metal and S2 vacancies, Mo dopants, W adatoms) in atomic-resolution "
            "HAADF STEM frames of monolayer WS2 at 0.02 nm per pixel: per-pixel class probabilities, turned into "
            "sub-pixel atom coordinates, a defect list and defect tracks by the service's post-processing."
        ),
        architecture=architecture(),
        input=InputSpec(name=INPUT_NAME, pixel_size=PixelSize(size=PIXEL_NM, units="nm"), normalization=NORMALIZATION),
        outputs=[OutputSpec(name=OUTPUT_NAMES[0], role="segmentation", labels=list(SEG_CLASSES),
                            description="softmax over SEG_CLASSES per pixel, [n, 7, h, w]")],
        training=result.training,
        metrics=result.metrics,
        postprocess=result.postprocess,
    )


def export_model(model: nn.Module, check_inputs: np.ndarray, path: str | PathLike[str], card: ModelCard,
                 progress: ProgressFn | None = None) -> float:
    """Export with batch, height and width dynamic (height and width multiples of 16) to one ONNX file
    with ``card`` in its metadata; ONNX Runtime must match torch on ``check_inputs`` ``[n, 1, h, w]``.

    The file is written by ``models.export.export_onnx_file`` (as for every model); the parity check
    also runs a frame of another size.
    """
    emit(progress, TrainProgress("export", 0, 1, message=f"exporting to {path}"))
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    hb = torch.export.Dim("h16", min=1, max=1 << 10)
    wb = torch.export.Dim("w16", min=1, max=1 << 10)
    example = torch.from_numpy(np.ascontiguousarray(check_inputs[:2], dtype=np.float32))
    path = export_onnx_file(model, example, path, card, output_names=OUTPUT_NAMES,
                            dynamic_shapes=({0: batch, 2: SIZE_MULTIPLE * hb, 3: SIZE_MULTIPLE * wb},))
    session = make_session(path)
    worst = 0.0
    for x in (check_inputs, check_inputs[:1, :, :48, :80]):
        x = np.ascontiguousarray(x, dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        worst = max(worst, check_parity(session, {OUTPUT_NAMES[0]: ref}, {INPUT_NAME: x}))
    emit(progress, TrainProgress("export", 1, 1, message=f"ONNX Runtime matches torch (max |diff| {worst:.2g})"))
    return worst


def export(result: TrainResult, out_path: str | PathLike[str], progress: ProgressFn | None = None) -> float:
    """Write the single-file ONNX with its card, check ONNX Runtime against torch; return the max difference."""
    return export_model(result.model, result.check_inputs, out_path, model_card(result), progress)


train = trainer(NAME, fit, export)
