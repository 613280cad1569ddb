"""Physics of the HAADF STEM simulator, the lattice and its defects: API and config, lattice geometry,
Z-contrast, rendered defects, segmentation labels."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree

from scanlens.sim.stem import (
    ATOM_CLASSES,
    DEFECT_CLASSES,
    LATTICE_SPECS,
    LATTICES,
    SEG_CLASSES,
    STEMConfig,
    STEMMovie,
    nearest_neighbour_spacing_px,
)

from .stem_sim_checks import fit_spot, interior, still_config

METAL, CHALCOGEN, DOPANT, ADATOM = range(4)
W_OVER_S2 = 74**1.7 / (2 * 16**1.7)  # 6.75
MO_OVER_W = (42 / 74) ** 1.7  # 0.382


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
        STEMMovie(still_config()).frame(4)


# --------------------------------------------------------------------------- lattice geometry


@pytest.mark.parametrize("lattice", LATTICES)
def test_nearest_neighbour_spacing_and_density(lattice: str) -> None:
    cfg = still_config(lattice=lattice)
    a_nm = LATTICE_SPECS[lattice].a_nm
    assert nearest_neighbour_spacing_px(cfg) == pytest.approx(a_nm / math.sqrt(3) / cfg.pixel_size_nm)
    assert nearest_neighbour_spacing_px(STEMConfig()) == pytest.approx(0.316 / math.sqrt(3) / 0.02)
    atoms = STEMMovie(cfg).truth(0)["atoms"]
    # Every metal column has exactly three chalcogen neighbours at a / sqrt(3), and six metal ones at a.
    metal, chalc = atoms[atoms[:, 2] == METAL, :2], atoms[atoms[:, 2] == CHALCOGEN, :2]
    inner = metal[interior(metal, cfg.size, 20)]
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
    angles = {round(STEMMovie(still_config(seed=s)).rotation_deg, 6) for s in range(6)}
    assert len(angles) == 6
    movie = STEMMovie(still_config(rotation_deg=0.0))
    assert movie.rotation_deg == 0.0
    metal = movie.truth(0)["atoms"]
    metal = metal[metal[:, 2] == METAL, :2]
    # With no rotation a1 lies along x: metal columns form rows of constant y spaced sqrt(3)/2 a.
    ys = np.unique(np.round(metal[:, 1], 3))
    np.testing.assert_allclose(np.diff(ys), math.sqrt(3) / 2 * movie.cfg.a_px, atol=1e-3)


def test_lattice_vectors_are_published() -> None:
    movie = STEMMovie(still_config(rotation_deg=30.0))
    a1, a2 = movie.basis_px.T
    np.testing.assert_allclose([np.hypot(*a1), np.hypot(*a2)], movie.cfg.a_px)
    assert math.degrees(math.atan2(a1[1], a1[0])) == pytest.approx(30.0)
    assert math.degrees(math.atan2(a2[1], a2[0])) == pytest.approx(90.0)
    np.testing.assert_allclose(movie.chalcogen_offset_px, (a1 + a2) / 3)


def test_graphene_renders_a_honeycomb_with_the_right_spacing() -> None:
    cfg = still_config(lattice="graphene", dose=1000.0, seed=3)
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
    inner = pts[interior(pts, cfg.size, 25)]
    d, _ = cKDTree(pts).query(inner, k=10)
    np.testing.assert_allclose(d[:, 1:4], nn, atol=0.1)
    np.testing.assert_allclose(d[:, 4:10], cfg.a_px, atol=0.1)
    # The hexagon centres (hollow sites) are dark, the atoms equally bright (both sublattices are C).
    metal = atoms[interior(atoms, cfg.size, 25) & (atoms[:, 2] == METAL), :2]
    chalc = atoms[atoms[:, 2] == CHALCOGEN, :2]
    _, j = cKDTree(chalc).query(metal)
    # From an A site the hollow lies twice as far as a B neighbour, in the same direction.
    hollow = metal + 2 * (chalc[j] - metal)
    val = img[np.round(hollow[:, 1]).astype(int), np.round(hollow[:, 0]).astype(int)]
    assert np.all(val < bg + 0.05 * cfg.dose)
    sites = np.round(atoms[interior(atoms, cfg.size, 10), :2]).astype(int)
    assert np.mean(img[sites[:, 1], sites[:, 0]]) > bg + 0.8 * cfg.dose


# --------------------------------------------------------------------------- Z-contrast and defects


def test_z_contrast_metal_over_chalcogen_after_blur() -> None:
    assert LATTICE_SPECS["ws2"].weight("chalcogen") == pytest.approx(1 / W_OVER_S2)
    assert LATTICE_SPECS["ws2"].weight("dopant") == pytest.approx(MO_OVER_W)
    assert LATTICE_SPECS["graphene"].weight("dopant") == pytest.approx((14 / 6) ** 1.7)
    cfg = still_config(seed=2)
    movie = STEMMovie(cfg)
    bg = cfg.dose * cfg.background
    img = movie.expected_frame(0)
    atoms = movie.truth(0)["atoms"]
    atoms = atoms[interior(atoms, cfg.size, 10)]
    peaks = {}
    for cls in (METAL, CHALCOGEN):
        sel = atoms[atoms[:, 2] == cls][:60]
        fits = np.array([fit_spot(img, x, y, bg, cfg.sigma_px) for x, y, _ in sel])
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
                peak = fit_spot(img, x, y, bg, cfg.sigma_px)[0]
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
