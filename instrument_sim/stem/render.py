"""HAADF image formation: Gaussian probe images of the columns, background, Poisson counts."""

from __future__ import annotations

import math

import numpy as np

from .columns import FrameAtoms
from .config import STEMConfig
from .scan import Scan


def patch_half(sigma: float) -> int:
    """Half-width (rows) of the patch a column is rendered on: 4 sigma of the probe, plus one."""
    return int(math.ceil(4.0 * sigma)) + 1


def expected_counts(cfg: STEMConfig, scan: Scan, atoms: FrameAtoms, sigma: float, h: int) -> np.ndarray:
    """Noise-free expected counts ``[size, size]`` float32 of the frame of ``scan`` showing ``atoms``
    (every column within ``h`` px of the frame; ``h`` from :func:`patch_half`)."""
    size = cfg.size
    jmax = int(math.ceil(float(np.abs(scan.jitter).max()))) if cfg.jitter_px > 0 else 0
    hx = h + jmax
    pad = 2 * hx + 3  # atoms up to h (+ jitter) outside the frame, patches of half-width hx
    # Render every column as a sampled Gaussian on a (2h+1) x (2hx+1) patch of a padded canvas;
    # row r of the patch sees the specimen shifted by the drift of row r and that row's jitter.
    xi, yi = scan.to_image(atoms.sx, atoms.sy)
    r = np.round(yi).astype(np.int64)[:, None] + np.arange(-h, h + 1)[None, :]  # [n, P]
    c0 = np.round(xi).astype(np.int64)[:, None] + np.arange(-hx, hx + 1)[None, :]  # [n, Q]
    dx, dy = scan.row_shift(r)
    jit = scan.jitter[np.clip(r, 0, size - 1)]
    inv2s2 = 0.5 / sigma**2
    gy = (np.exp(-((r - dy - atoms.sy[:, None]) ** 2) * inv2s2) * atoms.weight[:, None]).astype(np.float32)
    xc = (atoms.sx[:, None] + dx + jit).astype(np.float32)  # [n, P] centre of the spot in each row
    d = c0.astype(np.float32)[:, None, :] - xc[:, :, None]  # [n, P, Q]
    val = np.exp(-(d * d) * np.float32(inv2s2))
    val *= gy[:, :, None]
    width = size + 2 * pad
    idx = (r + pad)[:, :, None] * width + (c0 + pad)[:, None, :]
    canvas = np.bincount(idx.ravel(), weights=val.ravel(), minlength=width * width)
    img = canvas.reshape(width, width)[pad : pad + size, pad : pad + size]
    return (cfg.dose * (cfg.background + img)).astype(np.float32)


def detector_counts(cfg: STEMConfig, i: int, expected: np.ndarray) -> np.ndarray:
    """Poisson counts (integers as float32) of frame ``i`` with ``expected`` counts; the same for the same (seed, i)."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, i)))
    return rng.poisson(expected).astype(np.float32)
