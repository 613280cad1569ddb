"""Shared helpers of the STEM simulator tests (``test_stem_sim_*.py``): standard frames and spot fits."""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from scanlens.sim.stem import STEMConfig


def still_config(**kw: object) -> STEMConfig:
    """A pristine, undistorted 256 px frame (overridable)."""
    base: dict[str, object] = dict(size=256, n_defects=0, drift_px_per_frame=0.0, jitter_px=0.0, frames=4, seed=1)
    base.update(kw)
    return STEMConfig(**base)  # type: ignore[arg-type]


def fit_spot(img: np.ndarray, x: float, y: float, bg: float, sigma: float, h: int = 2) -> np.ndarray:
    """Least-squares 2-D Gaussian (peak, x, y, sigma) on a (2h+1)^2 patch of ``img - bg`` around (x, y)
    (h = 2: the tails of the neighbouring columns, >= 9 px away in WS2, stay below 1 % of an S2 peak)."""
    r0, c0 = int(round(y)), int(round(x))
    rr, cc = np.mgrid[r0 - h : r0 + h + 1, c0 - h : c0 + h + 1]
    patch = img[r0 - h : r0 + h + 1, c0 - h : c0 + h + 1].astype(np.float64) - bg

    def resid(p: np.ndarray) -> np.ndarray:
        return (p[0] * np.exp(-((cc - p[1]) ** 2 + (rr - p[2]) ** 2) / (2 * p[3] ** 2)) - patch).ravel()

    return least_squares(resid, [max(patch.max(), 1e-3), x, y, sigma]).x


def interior(a: np.ndarray, size: int, margin: float = 8.0) -> np.ndarray:
    return (a[:, 0] > margin) & (a[:, 0] < size - 1 - margin) & (a[:, 1] > margin) & (a[:, 1] < size - 1 - margin)
