"""Cell geometry: spherocylinder cells, exact segment distances, random non-overlapping placement."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import BEPFMConfig

# Cell shapes, micrometres: (mean, sd, lo, hi).
_COCCUS_DIAMETER = (1.0, 0.08, 0.8, 1.2)
_ROD_WIDTH = (0.55, 0.04, 0.45, 0.7)
_ROD_LENGTH = (1.9, 0.25)
_ROD_ASPECT = (2.0, 4.0)
# B. subtilis endospores: short, plump ellipsoids ~1.2-1.4 x 0.6-0.7 um, as spherocylinders.
_SPORE_WIDTH = (0.65, 0.04, 0.55, 0.8)
_SPORE_LENGTH = (1.3, 0.1)
_SPORE_ASPECT = (1.6, 2.4)
_PLACEMENT_TRIES = 300


@dataclass(frozen=True)
class Cell:
    """One bacterium: a spherocylinder of axis ``2 * half_length_um`` and radius ``radius_um`` (um)."""

    klass: int  # index into ALL_CLASSES (1 or 2; 3 for a spore)
    x_um: float  # centre, along columns
    y_um: float  # centre, along rows
    angle_rad: float  # orientation of the long axis, from the column direction
    half_length_um: float  # half the length of the straight part (0 for a coccus)
    radius_um: float

    @property
    def length_um(self) -> float:
        return 2.0 * (self.half_length_um + self.radius_um)

    @property
    def width_um(self) -> float:
        return 2.0 * self.radius_um

    def segment(self) -> tuple[np.ndarray, np.ndarray]:
        d = np.array([math.cos(self.angle_rad), math.sin(self.angle_rad)]) * self.half_length_um
        c = np.array([self.x_um, self.y_um])
        return c - d, c + d

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance inside the outline (positive inside, negative outside), um."""
        p, q = self.segment()
        seg = q - p
        denom = float(seg @ seg)
        if denom == 0.0:
            t = np.zeros_like(x)
        else:
            t = np.clip(((x - p[0]) * seg[0] + (y - p[1]) * seg[1]) / denom, 0.0, 1.0)
        return self.radius_um - np.hypot(x - (p[0] + t * seg[0]), y - (p[1] + t * seg[1]))


def _point_segment(pt: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom == 0.0 else min(1.0, max(0.0, float((pt - a) @ ab) / denom))
    return float(np.linalg.norm(pt - (a + t * ab)))


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def segment_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Exact distance between two 2-D segments (0 where they cross)."""
    (p1, p2), (q1, q2) = a, b
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return 0.0
    return min(
        _point_segment(p1, q1, q2), _point_segment(p2, q1, q2), _point_segment(q1, p1, p2), _point_segment(q2, p1, p2)
    )


def _clipped_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def place_cells(cfg: BEPFMConfig, rng: np.random.Generator) -> list[Cell]:
    """The cells of a field of ``cfg``: random kinds, sizes, orientations and centres, outlines at least
    ``cfg.min_gap_um`` apart (a cell that finds no room in ``_PLACEMENT_TRIES`` tries is left out).

    Spores (``cfg.spores_per_100um2``) join the same shuffled queue after the cocci and rods; without
    them the queue, and so every draw, is what it was before spores existed."""
    width_um, height_um = cfg.cols * cfg.pixel_size_um, cfg.rows * cfg.pixel_size_um
    area = width_um * height_um / 100.0
    n_cocci = int(round(cfg.cocci_per_100um2 * area))
    n_rods = int(round(cfg.rods_per_100um2 * area))
    n_spores = int(round(cfg.spores_per_100um2 * area))
    kinds = rng.permutation(np.array([1] * n_cocci + [2] * n_rods + [3] * n_spores, dtype=np.intp))
    cells: list[Cell] = []
    segments: list[tuple[np.ndarray, np.ndarray]] = []
    for kind in kinds:
        if kind == 1:
            radius, half = 0.5 * _clipped_normal(rng, *_COCCUS_DIAMETER), 0.0
        elif kind == 2:
            width = _clipped_normal(rng, *_ROD_WIDTH)
            length = float(np.clip(rng.normal(*_ROD_LENGTH), _ROD_ASPECT[0] * width, _ROD_ASPECT[1] * width))
            radius, half = 0.5 * width, 0.5 * (length - width)
        else:
            width = _clipped_normal(rng, *_SPORE_WIDTH)
            length = float(np.clip(rng.normal(*_SPORE_LENGTH), _SPORE_ASPECT[0] * width, _SPORE_ASPECT[1] * width))
            radius, half = 0.5 * width, 0.5 * (length - width)
        angle = float(rng.uniform(0.0, math.pi))
        for _ in range(_PLACEMENT_TRIES):
            cell = Cell(int(kind), float(rng.uniform(0, width_um)), float(rng.uniform(0, height_um)),
                        angle, half, radius)
            seg = cell.segment()
            if all(
                segment_distance(seg, other_seg) >= cell.radius_um + other.radius_um + cfg.min_gap_um
                for other, other_seg in zip(cells, segments)
            ):
                cells.append(cell)
                segments.append(seg)
                break
    return cells
