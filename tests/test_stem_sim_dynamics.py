"""Physics of the HAADF STEM simulator, the movies: defect diffusion, hops and class changes, hard-core
repulsion and walls, determinism, ground-truth files, the streaming source and training pairs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from scanlens.sim.stem import (
    ATOM_CLASSES,
    DEFECT_CLASSES,
    SEG_CLASSES,
    STEMConfig,
    STEMMovie,
    STEMSource,
    load_ground_truth,
    nearest_neighbour_spacing_px,
    training_pair,
)

IDENTITY = tuple(tuple(float(i == j) for j in range(4)) for i in range(4))


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
    inv = np.linalg.inv(movie.basis_px)
    for c, offset in ((0, np.zeros(2)), (1, movie.chalcogen_offset_px), (2, np.zeros(2))):
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


def test_a_movie_too_crowded_to_move_in_is_a_clear_error() -> None:
    """Defects that crowd each other out of every nearby site make the simulator refuse the movie
    with a ValueError that says what to change (``scanlens sim stem`` turns it into exit 2)."""
    cfg = STEMConfig(size=256, n_defects=10, frames=60, drift_px_per_frame=0.3,
                     diffusion_nm2=(0.05, 0.06, 0.04, 0.08), seed=4)
    with pytest.raises(ValueError, match="too many defects for the frame"):
        STEMMovie(cfg)
