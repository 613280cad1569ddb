"""Physics of the HAADF STEM simulator, the image: probe blur, Poisson noise, line jitter and drift.

Render time (not asserted here, no timed tests): a default 512 x 512 WS2 frame takes ~30 ms on one core
(~15 ms expected counts, ~13 ms Poisson draw).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.optimize import minimize_scalar
from scipy.spatial import cKDTree

from scanlens.sim.stem import STEMConfig, STEMMovie

from .stem_sim_checks import fit_spot, interior, still_config

METAL = 0  # ATOM_CLASSES index


# --------------------------------------------------------------------------- probe, noise


@pytest.mark.parametrize("fwhm", [0.08, 0.1])
def test_probe_blur_width(fwhm: float) -> None:
    cfg = still_config(blur_fwhm_nm=fwhm, seed=6)
    movie = STEMMovie(cfg)
    img = movie.expected_frame(0)
    atoms = movie.truth(0)["atoms"]
    metal = atoms[interior(atoms, cfg.size, 10) & (atoms[:, 2] == METAL)][:40]
    fits = np.array([fit_spot(img, x, y, cfg.dose * cfg.background, 2.0) for x, y, _ in metal])
    sigma = float(np.median(fits[:, 3]))
    assert sigma * 2 * math.sqrt(2 * math.log(2)) * cfg.pixel_size_nm == pytest.approx(fwhm, rel=0.02)
    np.testing.assert_allclose(fits[:, 1:3], metal[:, :2], atol=0.01)


def test_poisson_statistics_at_the_dose() -> None:
    cfg = STEMConfig(size=48, n_defects=0, drift_px_per_frame=0.0, jitter_px=0.0, frames=400, dose=60.0, seed=2)
    movie = STEMMovie(cfg)
    lam = movie.expected_frame(0).astype(np.float64)
    np.testing.assert_array_equal(movie.expected_frame(7), lam.astype(np.float32))
    assert lam.min() == pytest.approx(cfg.dose * cfg.background, rel=0.01)
    assert movie.frame(0).dtype == np.float32
    stack = np.stack([movie.frame(i) for i in range(cfg.frames)]).astype(np.float64)
    assert np.all(stack >= 0)
    np.testing.assert_array_equal(stack, np.round(stack))
    n = cfg.frames
    z_mean = (stack.mean(axis=0) - lam) / np.sqrt(lam / n)
    assert abs(z_mean.mean()) < 0.1 and z_mean.std() == pytest.approx(1.0, abs=0.05)
    ratio = stack.var(axis=0, ddof=1) / lam
    assert ratio.mean() == pytest.approx(1.0, abs=0.02)
    # The dose scales the expected counts linearly (background included).
    twice = STEMMovie(dataclasses.replace(cfg, dose=120.0)).expected_frame(0)
    np.testing.assert_allclose(twice, 2 * lam, rtol=1e-5)


# --------------------------------------------------------------------------- scan distortions


def _row_shift(row: np.ndarray, ref: np.ndarray, lo: int, hi: int) -> float:
    """Horizontal shift s with row(c) = ref(c - s), by least squares on columns lo..hi."""
    spline = CubicSpline(np.arange(ref.size), ref)
    c = np.arange(lo, hi, dtype=np.float64)

    def cost(s: float) -> float:
        return float(np.sum((row[lo:hi] - spline(c - s)) ** 2))

    grid = np.arange(-3.0, 3.0, 0.05)
    s0 = grid[int(np.argmin([cost(s) for s in grid]))]
    return float(minimize_scalar(cost, bounds=(s0 - 0.05, s0 + 0.05), method="bounded").x)


def test_line_jitter_shifts_each_row() -> None:
    cfg = still_config(jitter_px=0.5, seed=8, size=128)
    jittered = STEMMovie(cfg)
    straight = STEMMovie(dataclasses.replace(cfg, jitter_px=0.0))
    i = 2
    a, b = jittered.expected_frame(i), straight.expected_frame(i)
    offsets = jittered.row_offsets_px(i)
    assert offsets.shape == (128, 2)
    np.testing.assert_array_equal(offsets[:, 1], 0.0)
    rows = range(10, 118)
    measured = np.array([_row_shift(a[r], b[r], 12, 116) for r in rows])
    np.testing.assert_allclose(measured, offsets[10:118, 0], atol=0.02)
    j = offsets[:, 0]
    assert j.std() == pytest.approx(0.5, rel=0.2)
    assert abs(np.corrcoef(j[:-1], j[1:])[0, 1]) < 0.3, "independent per line"
    assert not np.allclose(jittered.row_offsets_px(i + 1)[:, 0], j), "new jitter every frame"
    # Ground truth follows: the atoms' x moves by the jitter averaged over their rows, y does not move.
    ta, tb = jittered.truth(i)["atoms"], straight.truth(i)["atoms"]
    assert len(ta) == len(tb)
    np.testing.assert_allclose(ta[:, 1], tb[:, 1], atol=1e-4)
    shift = ta[:, 0] - tb[:, 0]
    near = j[np.clip(np.round(tb[:, 1]).astype(int), 0, 127)]
    assert np.corrcoef(shift, near)[0, 1] > 0.5
    assert np.abs(shift).max() < 4 * 0.5


def test_drift_moves_the_lattice_between_and_within_frames() -> None:
    cfg = still_config(drift_px_per_frame=0.5, frames=12, seed=9)
    movie = STEMMovie(cfg)
    v = movie.drift_velocity_px
    assert np.hypot(*v) == pytest.approx(0.5)
    bg = cfg.dose * cfg.background
    positions = {}
    for i in (0, 10):
        img = movie.expected_frame(i)
        atoms = movie.truth(i)["atoms"]
        metal = atoms[interior(atoms, cfg.size, 12) & (atoms[:, 2] == METAL)]
        # The ground truth sits where the image shows the atoms.
        fits = np.array([fit_spot(img, x, y, bg, cfg.sigma_px) for x, y, _ in metal[:30]])
        np.testing.assert_allclose(fits[:, 1:3], metal[:30, :2], atol=0.01)
        positions[i] = metal[:, :2].astype(np.float64)
    # Frame to frame: every column moves by 10 v (plus v * dy / size from the in-frame drift).
    start = positions[0][interior(positions[0], cfg.size, 20)]
    d, j = cKDTree(positions[10]).query(start + 10 * v)
    assert np.all(d < 0.05)
    shift = positions[10][j] - start
    np.testing.assert_allclose(shift.mean(axis=0), 10 * v, atol=0.02)
    # Within a frame: row y is displaced by v * y / size relative to an undrifted scan (linear in y).
    cfg_w = dataclasses.replace(cfg, drift_px_per_frame=3.0)
    drifted = STEMMovie(cfg_w)
    v3 = drifted.drift_velocity_px
    still = STEMMovie(dataclasses.replace(cfg, drift_px_per_frame=0.0)).truth(0)["atoms"][:, :2].astype(np.float64)
    moved = drifted.truth(0)["atoms"][:, :2].astype(np.float64)
    d, j = cKDTree(moved).query(still)
    ok = d < 4.0
    disp = moved[j[ok]] - still[ok]
    y = still[ok, 1]
    for k in range(2):
        slope, icpt = np.polyfit(y, disp[:, k], 1)
        assert slope == pytest.approx(v3[k] / cfg.size, abs=2e-4)
        assert icpt == pytest.approx(0.0, abs=0.02)
    offs = drifted.row_offsets_px(5)
    np.testing.assert_allclose(offs[:, 0], v3[0] * (5 + np.arange(cfg.size) / cfg.size))
    np.testing.assert_allclose(offs[:, 1], v3[1] * (5 + np.arange(cfg.size) / cfg.size))
