"""Scan distortions of one frame (drift, line jitter): specimen (drift-free) <-> image coordinates."""

from __future__ import annotations

import math

import numpy as np

from .config import STEMConfig


class Scan:
    """The scan distortions of frame ``i``: the specimen drifts at ``velocity_px`` (x, y px per frame time)
    while it is scanned row by row, and every scan line gets its own random horizontal jitter."""

    def __init__(self, cfg: STEMConfig, velocity_px: np.ndarray, i: int, with_jitter: bool = True) -> None:
        self.size = cfg.size
        self.i = i
        self.vx, self.vy = float(velocity_px[0]), float(velocity_px[1])
        if with_jitter and cfg.jitter_px > 0:
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, i)))
            self.jitter = rng.normal(0.0, cfg.jitter_px, cfg.size)
        else:
            self.jitter = np.zeros(cfg.size)

    def row_shift(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drift offset (dx, dy) of the specimen seen by scan row(s) ``rows``."""
        t = self.i + np.asarray(rows, dtype=np.float64) / self.size
        return self.vx * t, self.vy * t

    def to_image(self, sx: np.ndarray, sy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drift only: where a specimen point appears (row r sees y - dy(r), solved for r)."""
        y = (np.asarray(sy, dtype=np.float64) + self.vy * self.i) / (1.0 - self.vy / self.size)
        x = np.asarray(sx, dtype=np.float64) + self.vx * (self.i + y / self.size)
        return x, y

    def to_specimen(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`to_image`."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return x - self.vx * (self.i + y / self.size), y * (1.0 - self.vy / self.size) - self.vy * self.i

    def jitter_centroid(self, y: np.ndarray, sigma: float) -> np.ndarray:
        """Horizontal jitter of a spot centred on row ``y``, averaged over its rows with the probe profile."""
        y = np.asarray(y, dtype=np.float64)
        if not self.jitter.any() or y.size == 0:
            return np.zeros_like(y)
        h = int(math.ceil(4 * sigma))
        rows = np.round(y).astype(np.int64)[:, None] + np.arange(-h, h + 1)[None, :]
        inside = (rows >= 0) & (rows < self.size)
        w = np.exp(-0.5 * ((rows - y[:, None]) / sigma) ** 2) * inside
        j = self.jitter[np.clip(rows, 0, self.size - 1)]
        tot = w.sum(axis=1)
        return np.where(tot > 0, (w * j).sum(axis=1) / np.maximum(tot, 1e-300), 0.0)
