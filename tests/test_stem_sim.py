"""Physics of the HAADF STEM simulator: lattices, Z-contrast, probe, noise, scan distortions, defect movies.

Render time (not asserted here, no timed tests): a default 512 x 512 WS2 frame takes ~30 ms on one core
(~15 ms expected counts, ~13 ms Poisson draw).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.ndimage import maximum_filter
from scipy.optimize import least_squares, minimize_scalar
from scipy.spatial import cKDTree

from scanlens.sim.stem import (
    ATOM_CLASSES,
    DEFECT_CLASSES,
    LATTICE_SPECS,
    LATTICES,
    SEG_CLASSES,
    STEMConfig,
    STEMMovie,
    STEMSource,
    load_ground_truth,
    nearest_neighbour_spacing_px,
    training_pair,
)

IDENTITY = tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
METAL, CHALCOGEN, DOPANT, ADATOM = range(4)
W_OVER_S2 = 74**1.7 / (2 * 16**1.7)  # 6.75
MO_OVER_W = (42 / 74) ** 1.7  # 0.382


def _still(**kw: object) -> STEMConfig:
    """A pristine, undistorted 256 px frame (overridable)."""
    base: dict[str, object] = dict(size=256, n_defects=0, drift_px_per_frame=0.0, jitter_px=0.0, frames=4, seed=1)
    base.update(kw)
    return STEMConfig(**base)  # type: ignore[arg-type]


def _fit_spot(img: np.ndarray, x: float, y: float, bg: float, sigma: float, h: int = 2) -> np.ndarray:
    """Least-squares 2-D Gaussian (peak, x, y, sigma) on a (2h+1)^2 patch of ``img - bg`` around (x, y)
    (h = 2: the tails of the neighbouring columns, >= 9 px away in WS2, stay below 1 % of an S2 peak)."""
    r0, c0 = int(round(y)), int(round(x))
    rr, cc = np.mgrid[r0 - h : r0 + h + 1, c0 - h : c0 + h + 1]
    patch = img[r0 - h : r0 + h + 1, c0 - h : c0 + h + 1].astype(np.float64) - bg

    def resid(p: np.ndarray) -> np.ndarray:
        return (p[0] * np.exp(-((cc - p[1]) ** 2 + (rr - p[2]) ** 2) / (2 * p[3] ** 2)) - patch).ravel()

    return least_squares(resid, [max(patch.max(), 1e-3), x, y, sigma]).x


def _interior(a: np.ndarray, size: int, margin: float = 8.0) -> np.ndarray:
    return (a[:, 0] > margin) & (a[:, 0] < size - 1 - margin) & (a[:, 1] > margin) & (a[:, 1] < size - 1 - margin)


@pytest.fixture(scope="module")
def defect_movie() -> STEMMovie:
    """WS2 with every defect class present over a few frames (noise-free checks use expected_frame)."""
    return STEMMovie(STEMConfig(size=384, n_defects=8, frames=12, seed=5, jitter_px=0.0, drift_px_per_frame=0.0))


# --------------------------------------------------------------------------- API, config


def test_published_api_and_defaults() -> None:
    assert LATTICES == ("ws2", "graphene")
    assert SEG_CLASSES == ("background", "metal", "chalcogen", "metal_vacancy", "chalcogen_vacancy", "dopant", "adatom")
    assert ATOM_CLASSES == ("metal", "chalcogen", "dopant", "adatom")
    assert DEFECT_CLASSES == ("metal_vacancy", "chalcogen_vacancy", "dopant", "adatom")
    cfg = STEMConfig()
    assert cfg.size == 512 and cfg.frames == 100 and cfg.lattice == "ws2"
    assert 12 <= cfg.a_px <= 20, "one lattice constant spans 12-20 px"
    assert 0.08 <= cfg.blur_fwhm_nm <= 0.1
    assert len(set(cfg.diffusion_nm2)) == 4, "D differs per class"
    p = np.array(cfg.transitions)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all((np.diag(p) >= 0.9) & (np.diag(p) <= 0.97))
    movie = STEMMovie(STEMConfig(size=256, n_defects=3, frames=3))
    np.testing.assert_allclose(movie.diffusion_px2, np.array(cfg.diffusion_nm2) / cfg.pixel_size_nm**2)
    np.testing.assert_array_equal(movie.transition_matrix, p)
    assert movie.trajectories.shape == (3, 3, 2) and movie.classes.shape == (3, 3)
    assert hash(cfg) == hash(STEMConfig())


def test_config_json_round_trip_and_validation() -> None:
    cfg = STEMConfig(lattice="graphene", rotation_deg=12.5, diffusion_nm2=[0.0, 0.1, 0.2, 0.3], seed=4)  # type: ignore[arg-type]
    assert isinstance(cfg.diffusion_nm2, tuple)
    assert STEMConfig.from_json(cfg.to_json()) == cfg
    assert STEMConfig.from_json(STEMConfig().to_json()) == STEMConfig()
    assert json.loads(STEMConfig().to_json())["rotation_deg"] is None
    bad: list[dict[str, object]] = [
        {"lattice": "mos3"},
        {"dose": 0.0},
        {"blur_fwhm_nm": 0.0},
        {"jitter_px": -1.0},
        {"frames": 0},
        {"diffusion_nm2": (0.1, 0.1, 0.1)},
        {"diffusion_nm2": (0.1, -0.1, 0.1, 0.1)},
        {"transitions": ((0.5, 0.5, 0.0, 0.0),) * 3},
        {"transitions": ((0.9, 0.2, 0.0, 0.0),) * 4},
        {"pixel_size_nm": 0.2},
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            STEMConfig(**kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="could not place"):
        STEMMovie(STEMConfig(size=128, n_defects=12))
    with pytest.raises(IndexError):
        STEMMovie(_still()).frame(4)


# --------------------------------------------------------------------------- lattice geometry


@pytest.mark.parametrize("lattice", LATTICES)
def test_nearest_neighbour_spacing_and_density(lattice: str) -> None:
    cfg = _still(lattice=lattice)
    a_nm = LATTICE_SPECS[lattice].a_nm
    assert nearest_neighbour_spacing_px(cfg) == pytest.approx(a_nm / math.sqrt(3) / cfg.pixel_size_nm)
    assert nearest_neighbour_spacing_px(STEMConfig()) == pytest.approx(0.316 / math.sqrt(3) / 0.02)
    atoms = STEMMovie(cfg).truth(0)["atoms"]
    # Every metal column has exactly three chalcogen neighbours at a / sqrt(3), and six metal ones at a.
    metal, chalc = atoms[atoms[:, 2] == METAL, :2], atoms[atoms[:, 2] == CHALCOGEN, :2]
    inner = metal[_interior(metal, cfg.size, 20)]
    d, _ = cKDTree(chalc).query(inner, k=4)
    np.testing.assert_allclose(d[:, :3], nearest_neighbour_spacing_px(cfg), atol=1e-3)
    assert np.all(d[:, 3] > 1.9 * nearest_neighbour_spacing_px(cfg))
    d, _ = cKDTree(metal).query(inner, k=8)
    np.testing.assert_allclose(d[:, 1:7], cfg.a_px, atol=1e-3)
    # Two columns per unit cell of area sqrt(3)/2 a^2, as many metal as chalcogen.
    area_nm2 = (cfg.size * cfg.pixel_size_nm) ** 2
    per_nm2 = 2.0 / (math.sqrt(3) / 2 * a_nm**2)  # WS2 23.1 / nm^2, graphene 38.2 / nm^2
    assert len(atoms) / area_nm2 == pytest.approx(per_nm2, rel=0.015)
    assert len(metal) / area_nm2 == pytest.approx(per_nm2 / 2, rel=0.02)
    assert np.all((atoms[:, :2] >= -0.5) & (atoms[:, :2] < cfg.size - 0.5))


def test_rotation_is_random_per_seed_and_fixed_on_request() -> None:
    angles = {round(STEMMovie(_still(seed=s)).rotation_deg, 6) for s in range(6)}
    assert len(angles) == 6
    movie = STEMMovie(_still(rotation_deg=0.0))
    assert movie.rotation_deg == 0.0
    metal = movie.truth(0)["atoms"]
    metal = metal[metal[:, 2] == METAL, :2]
    # With no rotation a1 lies along x: metal columns form rows of constant y spaced sqrt(3)/2 a.
    ys = np.unique(np.round(metal[:, 1], 3))
    np.testing.assert_allclose(np.diff(ys), math.sqrt(3) / 2 * movie.cfg.a_px, atol=1e-3)


def test_graphene_renders_a_honeycomb_with_the_right_spacing() -> None:
    cfg = _still(lattice="graphene", dose=1000.0, seed=3)
    movie = STEMMovie(cfg)
    img = movie.expected_frame(0)
    atoms = movie.truth(0)["atoms"]
    assert set(np.unique(atoms[:, 2]).astype(int)) == {METAL, CHALCOGEN}
    # Peaks of the image: local maxima well above background; each is a C atom of the ground truth.
    bg = cfg.dose * cfg.background
    peaks = (img == maximum_filter(img, size=5)) & (img > bg + 0.5 * cfg.dose)
    pr, pc = np.nonzero(peaks)
    keep = (pr > 10) & (pr < cfg.size - 11) & (pc > 10) & (pc < cfg.size - 11)
    pr, pc = pr[keep], pc[keep]
    # Sub-pixel peak: a parabola through the log-intensity of the peak pixel and its neighbours.
    log_i = np.log(img.astype(np.float64) - bg)

    def vertex(m: np.ndarray, z: np.ndarray, p: np.ndarray) -> np.ndarray:
        return 0.5 * (m - p) / (m - 2 * z + p)

    pts = np.stack(
        [
            pc + vertex(log_i[pr, pc - 1], log_i[pr, pc], log_i[pr, pc + 1]),
            pr + vertex(log_i[pr - 1, pc], log_i[pr, pc], log_i[pr + 1, pc]),
        ],
        axis=1,
    )
    d, _ = cKDTree(atoms[:, :2]).query(pts)
    assert np.all(d < 0.05) and len(pts) > 500
    # Honeycomb, not a triangular lattice: 3 nearest neighbours at a / sqrt(3) = 0.142 nm, then 6 at a.
    nn = nearest_neighbour_spacing_px(cfg)
    assert nn * cfg.pixel_size_nm == pytest.approx(0.142, abs=0.001)
    inner = pts[_interior(pts, cfg.size, 25)]
    d, _ = cKDTree(pts).query(inner, k=10)
    np.testing.assert_allclose(d[:, 1:4], nn, atol=0.1)
    np.testing.assert_allclose(d[:, 4:10], cfg.a_px, atol=0.1)
    # The hexagon centres (hollow sites) are dark, the atoms equally bright (both sublattices are C).
    metal = atoms[_interior(atoms, cfg.size, 25) & (atoms[:, 2] == METAL), :2]
    chalc = atoms[atoms[:, 2] == CHALCOGEN, :2]
    _, j = cKDTree(chalc).query(metal)
    # From an A site the hollow lies twice as far as a B neighbour, in the same direction.
    hollow = metal + 2 * (chalc[j] - metal)
    val = img[np.round(hollow[:, 1]).astype(int), np.round(hollow[:, 0]).astype(int)]
    assert np.all(val < bg + 0.05 * cfg.dose)
    sites = np.round(atoms[_interior(atoms, cfg.size, 10), :2]).astype(int)
    assert np.mean(img[sites[:, 1], sites[:, 0]]) > bg + 0.8 * cfg.dose


# --------------------------------------------------------------------------- Z-contrast and defects


def test_z_contrast_metal_over_chalcogen_after_blur() -> None:
    assert LATTICE_SPECS["ws2"].weight("chalcogen") == pytest.approx(1 / W_OVER_S2)
    assert LATTICE_SPECS["ws2"].weight("dopant") == pytest.approx(MO_OVER_W)
    assert LATTICE_SPECS["graphene"].weight("dopant") == pytest.approx((14 / 6) ** 1.7)
    cfg = _still(seed=2)
    movie = STEMMovie(cfg)
    bg = cfg.dose * cfg.background
    img = movie.expected_frame(0)
    atoms = movie.truth(0)["atoms"]
    atoms = atoms[_interior(atoms, cfg.size, 10)]
    peaks = {}
    for cls in (METAL, CHALCOGEN):
        sel = atoms[atoms[:, 2] == cls][:60]
        fits = np.array([_fit_spot(img, x, y, bg, cfg.sigma_px) for x, y, _ in sel])
        peaks[cls] = fits[:, 0]
    assert peaks[METAL].mean() == pytest.approx(cfg.dose, rel=0.01), "dose = peak counts of a W column"
    assert peaks[METAL].mean() / peaks[CHALCOGEN].mean() == pytest.approx(W_OVER_S2, rel=0.02)
    # The same ratio in the noisy counts at the nearest pixels (same sub-pixel sampling for both kinds).
    noisy = np.stack([movie.frame(i) for i in range(4)]).mean(axis=0) - bg
    xy = np.round(atoms[:, :2]).astype(int)
    val = noisy[xy[:, 1], xy[:, 0]]
    ratio = val[atoms[:, 2] == METAL].mean() / val[atoms[:, 2] == CHALCOGEN].mean()
    assert ratio == pytest.approx(W_OVER_S2, rel=0.06)


def test_defects_are_rendered_where_the_ground_truth_says(defect_movie: STEMMovie) -> None:
    cfg = defect_movie.cfg
    bg = cfg.dose * cfg.background
    seen: set[int] = set()
    for i in range(cfg.frames):
        img = defect_movie.expected_frame(i)
        truth = defect_movie.truth(i)
        atoms, defects, labels = truth["atoms"], truth["defects"], truth["labels"]
        assert defects.shape == (cfg.n_defects, 4)
        np.testing.assert_array_equal(defects[:, 3], np.arange(cfg.n_defects))
        np.testing.assert_array_equal(defects[:, 2], defect_movie.classes[i])
        tree = cKDTree(atoms[:, :2])
        for x, y, c, _ in defects:
            c = int(c)
            seen.add(c)
            r, col = int(round(y)), int(round(x))
            assert labels[r, col] == SEG_CLASSES.index(DEFECT_CLASSES[c])
            if c in (0, 1):  # vacancy: no column there, the site is dark
                assert tree.query([x, y])[0] > 0.5 * nearest_neighbour_spacing_px(cfg)
                assert img[r, col] < bg + 0.01 * cfg.dose
            elif c == 2:  # Mo on a W site: a column, (42/74)^1.7 as bright as W
                d, j = tree.query([x, y])
                assert d < 1e-3 and atoms[j, 2] == DOPANT
                peak = _fit_spot(img, x, y, bg, cfg.sigma_px)[0]
                assert peak / cfg.dose == pytest.approx(MO_OVER_W, rel=0.03)
            else:  # W adatom: an extra atom at its continuous position, at least as bright as W
                d, j = tree.query([x, y])
                assert d < 1e-3 and atoms[j, 2] == ADATOM
                assert img[r - 1 : r + 2, col - 1 : col + 2].max() > bg + 0.8 * cfg.dose
        # Vacancies remove their columns: one metal / chalcogen column fewer per vacancy than pristine.
        n_dop = int(np.sum(defects[:, 2] == 2))
        assert int(np.sum(atoms[:, 2] == DOPANT)) == n_dop
        assert int(np.sum(atoms[:, 2] == ADATOM)) == int(np.sum(defects[:, 2] == 3))
    assert seen == {0, 1, 2, 3}, "every defect class shows up in this movie"


def test_defect_site_count_matches_pristine(defect_movie: STEMMovie) -> None:
    cfg = defect_movie.cfg
    pristine = STEMMovie(dataclasses.replace(cfg, n_defects=0)).truth(0)["atoms"]
    truth = defect_movie.truth(0)
    atoms, defects = truth["atoms"], truth["defects"]
    counts = np.bincount(defects[:, 2].astype(int), minlength=4)
    n_pm = int(np.sum(pristine[:, 2] == METAL))
    n_pc = int(np.sum(pristine[:, 2] == CHALCOGEN))
    assert int(np.sum(atoms[:, 2] == METAL)) == n_pm - counts[0] - counts[2]
    assert int(np.sum(atoms[:, 2] == CHALCOGEN)) == n_pc - counts[1]
    assert len(atoms) == len(pristine) - counts[0] - counts[1] + counts[3]


def test_labels_match_the_atom_list() -> None:
    cfg = STEMConfig(size=256, n_defects=3, frames=2, seed=11)
    movie = STEMMovie(cfg)
    truth = movie.truth(1)
    atoms, labels = truth["atoms"], truth["labels"]
    assert labels.shape == (256, 256) and labels.dtype == np.uint8
    assert labels.max() < len(SEG_CLASSES)
    xy = np.round(atoms[:, :2]).astype(int)
    seg = np.array([SEG_CLASSES.index(ATOM_CLASSES[int(c)]) for c in atoms[:, 2]])
    np.testing.assert_array_equal(labels[xy[:, 1], xy[:, 0]], seg)
    # Disks of radius 0.4 x nearest-neighbour distance around each column.
    radius = 0.4 * nearest_neighbour_spacing_px(cfg)
    n_metal = int(np.sum(atoms[:, 2] == METAL))
    assert np.sum(labels == 1) == pytest.approx(n_metal * math.pi * radius**2, rel=0.05)
    assert 0.4 < np.mean(labels == 0) < 0.8


# --------------------------------------------------------------------------- probe, noise


@pytest.mark.parametrize("fwhm", [0.08, 0.1])
def test_probe_blur_width(fwhm: float) -> None:
    cfg = _still(blur_fwhm_nm=fwhm, seed=6)
    movie = STEMMovie(cfg)
    img = movie.expected_frame(0)
    atoms = movie.truth(0)["atoms"]
    metal = atoms[_interior(atoms, cfg.size, 10) & (atoms[:, 2] == METAL)][:40]
    fits = np.array([_fit_spot(img, x, y, cfg.dose * cfg.background, 2.0) for x, y, _ in metal])
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
    cfg = _still(jitter_px=0.5, seed=8, size=128)
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
    cfg = _still(drift_px_per_frame=0.5, frames=12, seed=9)
    movie = STEMMovie(cfg)
    v = movie.drift_velocity_px
    assert np.hypot(*v) == pytest.approx(0.5)
    bg = cfg.dose * cfg.background
    positions = {}
    for i in (0, 10):
        img = movie.expected_frame(i)
        atoms = movie.truth(i)["atoms"]
        metal = atoms[_interior(atoms, cfg.size, 12) & (atoms[:, 2] == METAL)]
        # The ground truth sits where the image shows the atoms.
        fits = np.array([_fit_spot(img, x, y, bg, cfg.sigma_px) for x, y, _ in metal[:30]])
        np.testing.assert_allclose(fits[:, 1:3], metal[:30, :2], atol=0.01)
        positions[i] = metal[:, :2].astype(np.float64)
    # Frame to frame: every column moves by 10 v (plus v * dy / size from the in-frame drift).
    start = positions[0][_interior(positions[0], cfg.size, 20)]
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


# --------------------------------------------------------------------------- movies


def _msd(traj: np.ndarray, lags: np.ndarray) -> np.ndarray:
    return np.array([np.mean(np.sum((traj[t:] - traj[:-t]) ** 2, axis=-1)) for t in lags])


def test_msd_grows_linearly_with_slope_4d() -> None:
    lags = np.arange(1, 11)
    # A sparse field (only trajectories are computed, so a large frame is cheap): the hard-core
    # repulsion and the frame walls, which slow the walk by a few per cent in crowded movies, hardly act.
    # All defects with the same D: pool them for a precise slope and a linearity check.
    cfg = STEMConfig(size=2048, n_defects=16, frames=1500, transitions=IDENTITY, diffusion_nm2=(0.004,) * 4, seed=1)
    movie = STEMMovie(cfg)
    d_px = movie.diffusion_px2[0]
    assert d_px == pytest.approx(10.0)
    msd = _msd(movie.trajectories, lags)
    slope = np.sum(msd * lags) / np.sum(lags**2)
    assert slope == pytest.approx(4 * d_px, rel=0.06)
    np.testing.assert_allclose(msd / lags, 4 * d_px, rtol=0.1)
    # Different D per class (classes frozen): each class's slope is its own 4 D.
    cfg = dataclasses.replace(cfg, n_defects=40, frames=800, diffusion_nm2=STEMConfig().diffusion_nm2, seed=2)
    movie = STEMMovie(cfg)
    assert np.all(movie.classes == movie.classes[0])
    for c in range(4):
        sel = movie.classes[0] == c
        assert sel.sum() >= 5
        msd = _msd(movie.trajectories[:, sel], lags)
        slope = np.sum(msd * lags) / np.sum(lags**2)
        assert slope == pytest.approx(4 * movie.diffusion_px2[c], rel=0.15), DEFECT_CLASSES[c]


def test_steps_follow_the_class_and_transitions_follow_the_matrix() -> None:
    cfg = STEMConfig(size=2048, n_defects=30, frames=600, seed=3)
    movie = STEMMovie(cfg)
    cls = movie.classes.astype(int)
    # A step from frame i to i + 1 has the D of the class at frame i: <|dr|^2> = 4 D.
    step2 = np.sum(np.diff(movie.trajectories, axis=0) ** 2, axis=-1)
    for c in range(4):
        sel = cls[:-1] == c
        assert sel.sum() > 1000
        assert step2[sel].mean() == pytest.approx(4 * movie.diffusion_px2[c], rel=0.06)
    # Empirical transition frequencies agree with the matrix (binomial errors).
    counts = np.zeros((4, 4))
    np.add.at(counts, (cls[:-1].ravel(), cls[1:].ravel()), 1)
    n = counts.sum(axis=1, keepdims=True)
    p = movie.transition_matrix
    err = (counts / n - p) / np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(err) < 4.5)
    assert np.mean(err**2) < 3.0
    # Every class is populated from the start (stationary distribution of the chain).
    assert set(np.unique(cls[0])) == {0, 1, 2, 3}


def test_site_bound_defects_hop_between_lattice_sites() -> None:
    # Vacancies and dopants sit on sites of their sublattice and move by hops of one lattice constant,
    # a Poisson number per frame with mean 4 D / a^2; adatoms move continuously.
    cfg = STEMConfig(size=2048, n_defects=30, frames=400, seed=5)
    movie = STEMMovie(cfg)
    a = cfg.a_px
    cls = movie.classes.astype(int)
    inv = np.linalg.inv(movie._basis)
    for c, offset in ((0, np.zeros(2)), (1, movie._chalcogen_offset), (2, np.zeros(2))):
        frac = (movie.trajectories[cls == c] - movie.origin_px - offset) @ inv.T
        np.testing.assert_allclose(frac, np.round(frac), atol=1e-9, err_msg=DEFECT_CLASSES[c])
    steps = np.diff(movie.trajectories, axis=0)
    same = cls[:-1] == cls[1:]
    for c in range(3):
        st = steps[same & (cls[:-1] == c)]
        f = st @ inv.T  # in lattice vectors: integers, and a single hop is one of the six neighbours
        np.testing.assert_allclose(f, np.round(f), atol=1e-9)
        hop1 = np.isclose(np.hypot(*st.T), a)
        assert hop1.any() and np.all(np.hypot(*st.T) <= 8 * a)
        rate = 4 * movie.diffusion_px2[c] / a**2
        moved = np.mean(np.hypot(*st.T) > 1e-9)
        # P(at least one hop) = 1 - exp(-rate), less the pairs of hops that cancel (1/6 of two hops)
        p_moved = 1 - math.exp(-rate) - math.exp(-rate) * rate**2 / 2 / 6
        assert moved == pytest.approx(p_moved, abs=0.03), DEFECT_CLASSES[c]
        assert np.mean(np.sum(st**2, axis=1)) == pytest.approx(rate * a**2, rel=0.1)
    ad = steps[same & (cls[:-1] == 3)]
    frac = ad @ inv.T
    assert np.mean(np.abs(frac - np.round(frac)) > 1e-3) > 0.9, "adatoms leave the lattice"
    # a class change moves a defect to the nearest site of its new sublattice (a/sqrt(3) for a vacancy
    # changing sublattice; 0 between metal vacancy and dopant, before hops)
    mv_to_cv = (cls[:-1] == 0) & (cls[1:] == 1)
    assert mv_to_cv.any()
    assert np.all(np.hypot(*steps[mv_to_cv].T) > 0)


@pytest.mark.parametrize("kw", [{}, {"size": 1024, "n_defects": 40, "frames": 300, "drift_px_per_frame": 1.0}])
def test_defects_stay_apart_and_inside_the_frame(kw: dict[str, object]) -> None:
    cfg = STEMConfig(**kw)  # type: ignore[arg-type]
    movie = STEMMovie(cfg)
    a = cfg.a_px
    traj = movie.trajectories
    for i in range(cfg.frames):
        p = traj[i]
        d = np.hypot(*(p[:, None, :] - p[None, :, :]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert d.min() >= 3 * a - 1e-6
        img_xy = movie.specimen_to_image(i, p)
        assert np.all(img_xy >= 2 * a - 1e-6) and np.all(img_xy <= cfg.size - 1 - 2 * a + 1e-6)
    for i in (0, cfg.frames // 2, cfg.frames - 1):
        defects = movie.truth(i)["defects"]
        xy = defects[:, :2]
        assert np.all(xy >= a) and np.all(xy <= cfg.size - 1 - a)
        d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert d.min() >= (3 - 2 / math.sqrt(3)) * a * 0.99
    # The walk does move them.
    assert np.all(np.hypot(*(traj[-1] - traj[0]).T) > 0)


# --------------------------------------------------------------------------- determinism, files, source


def test_determinism() -> None:
    cfg = STEMConfig(size=256, n_defects=3, frames=6, seed=21)
    m1, m2 = STEMMovie(cfg), STEMMovie(cfg)
    f5 = m1.frame(5)
    np.testing.assert_array_equal(m1.frame(2), m2.frame(2))
    np.testing.assert_array_equal(m2.frame(5), f5)
    np.testing.assert_array_equal(m1.frame(5), f5)
    for k in ("atoms", "defects", "labels"):
        np.testing.assert_array_equal(m1.truth(4)[k], m2.truth(4)[k])
    np.testing.assert_array_equal(m1.trajectories, m2.trajectories)
    assert not np.array_equal(m1.frame(1), m1.frame(2))
    other = STEMMovie(dataclasses.replace(cfg, seed=22))
    assert other.rotation_deg != m1.rotation_deg
    assert not np.array_equal(other.frame(2), m1.frame(2))


def test_ground_truth_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = STEMConfig(size=160, n_defects=2, frames=5, seed=4, lattice="graphene", rotation_deg=7.0)
    movie = STEMMovie(cfg)
    path = tmp_path / "stem.npz"
    movie.save_ground_truth(path)
    with np.load(path, allow_pickle=False) as raw:
        assert {"atoms", "defects", "trajectories", "config", "diffusion_px2", "transition_matrix"} <= set(raw.files)
    truth = load_ground_truth(path)
    assert truth["config"] == cfg
    assert truth["seg_classes"] == SEG_CLASSES and truth["defect_classes"] == DEFECT_CLASSES
    assert truth["atom_classes"] == ATOM_CLASSES
    np.testing.assert_array_equal(truth["trajectories"], movie.trajectories)
    np.testing.assert_array_equal(truth["classes"], movie.classes)
    np.testing.assert_allclose(truth["diffusion_px2"], movie.diffusion_px2)
    np.testing.assert_array_equal(truth["transition_matrix"], movie.transition_matrix)
    assert truth["rotation_deg"] == pytest.approx(7.0)
    assert truth["nn_spacing_px"] == pytest.approx(nearest_neighbour_spacing_px(cfg))
    off = truth["atom_offsets"]
    assert off.shape == (cfg.frames + 1,) and off[-1] == len(truth["atoms"])
    for i in range(cfg.frames):
        t = movie.truth(i)
        a = truth["atoms"][off[i] : off[i + 1]]
        np.testing.assert_array_equal(a[:, :3], t["atoms"])
        np.testing.assert_array_equal(a[:, 3], i)
        d = truth["defects"][truth["defects"][:, 4] == i]
        np.testing.assert_array_equal(d[:, :4], t["defects"])
        np.testing.assert_allclose(truth["trajectories_image"][i], movie.specimen_to_image(i, movie.trajectories[i]))
    np.testing.assert_array_equal(STEMMovie(truth["config"]).frame(3), movie.frame(3))


def test_source_and_training_pairs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = STEMConfig(size=256, n_defects=3, frames=3, seed=2)
    src = STEMSource(cfg)
    assert src.modality == "haadf" and src.shape == (256, 256) and src.frames == 3
    assert src.pixel_size_nm == cfg.pixel_size_nm
    assert src.meta["seg_classes"] == list(SEG_CLASSES) and src.meta["lattice"] == "ws2"
    json.dumps(src.meta)
    f = src.frame(1)
    assert f.shape == (256, 256) and f.dtype == np.float32
    np.testing.assert_array_equal(f, src.movie.frame(1))
    src.save_ground_truth(tmp_path / "gt.npz")
    assert load_ground_truth(tmp_path / "gt.npz")["config"] == cfg
    img, lab = training_pair(cfg, 1)
    np.testing.assert_array_equal(img, f)
    np.testing.assert_array_equal(lab, src.movie.truth(1)["labels"])
    img2, lab2 = training_pair(dataclasses.replace(cfg, seed=3), 0)
    assert img2.shape == (256, 256) and lab2.dtype == np.uint8
    assert not np.array_equal(lab2, src.movie.truth(0)["labels"])
