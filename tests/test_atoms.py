"""Post-processing of segmentation probabilities (service.pipeline.atoms) on hand-made probability maps
with known answers: sub-pixel atom centres, touching atoms split, classes, vacancy regions, dopants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from scanlens.pipeline.atoms import PostProcess, find_atoms, local_max_filter, postprocess

LABELS = ["background", "metal", "chalcogen", "vacancy", "dopant"]
PP = PostProcess(labels=LABELS, atom_classes=["metal", "chalcogen", "dopant"], defect_classes=["vacancy", "dopant"],
                 min_distance_px=5.0, threshold=0.3, min_region_px=6)


def blobs(shape: tuple[int, int], centres: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    out = np.zeros(shape)
    for x, y in centres:
        out = np.maximum(out, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    return out


def probabilities(shape, metal=(), chalcogen=(), dopant=(), vacancy_boxes=(), sigma: float = 1.4) -> np.ndarray:
    p = np.zeros((len(LABELS), *shape))
    for k, pts in ((1, metal), (2, chalcogen), (4, dopant)):
        if len(pts):
            p[k] = 0.95 * blobs(shape, np.asarray(pts, float), sigma)
    for y0, y1, x0, x1 in vacancy_boxes:
        p[3, y0:y1, x0:x1] = 0.9
    p[0] = np.clip(1.0 - p[1:].sum(axis=0), 0.0, None)
    return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("size", [3, 5, 7, 9])
def test_local_max_filter_is_scipys_maximum_filter(size: int) -> None:
    p = np.random.default_rng(size).random((61, 47)).astype(np.float32)
    np.testing.assert_array_equal(local_max_filter(p, size), ndimage.maximum_filter(p, size=size, mode="constant"))


def test_atoms_at_sub_pixel_centres_with_their_class() -> None:
    rng = np.random.default_rng(0)
    grid = np.array([(x, y) for x in range(10, 60, 12) for y in range(10, 60, 12)], float)
    true = grid + rng.uniform(-0.5, 0.5, grid.shape)
    metal, chalc = true[::2], true[1::2]
    atoms = find_atoms(probabilities((70, 70), metal=metal, chalcogen=chalc), PP)
    assert len(atoms) == len(true)
    for pts, cls in ((metal, 0), (chalc, 1)):
        d = np.linalg.norm(atoms[:, None, :2] - pts[None], axis=-1)
        nearest = d.argmin(axis=0)
        # sub-pixel: the centroid of a pixel-sampled blob cut at the threshold is within a quarter pixel
        assert d.min(axis=0).max() < 0.25
        # ... and better than the peak pixel itself
        assert d.min(axis=0).mean() < np.linalg.norm(pts - np.round(pts), axis=1).mean()
        assert np.all(atoms[nearest, 2] == cls)


def test_touching_atoms_are_split() -> None:
    pts = np.array([[20.0, 20.0], [26.0, 20.3]])  # 6 px apart, broad: one region above threshold
    p = probabilities((40, 40), metal=pts, sigma=2.5)
    assert ndimage.label(p[1] > PP.threshold)[1] == 1
    atoms = find_atoms(p, PP)
    assert len(atoms) == 2
    d = np.linalg.norm(np.sort(atoms[:, :2], axis=0) - np.sort(pts, axis=0), axis=1)
    assert d.max() < 0.6


def test_vacancy_regions_and_dopants_become_defects() -> None:
    metal = np.array([[10.0, 10.0], [30.0, 10.0]])
    p = probabilities((40, 40), metal=metal, dopant=[[20.0, 30.0]],
                      vacancy_boxes=[(18, 22, 8, 12), (2, 4, 30, 32)])  # a 4x4 vacancy; a 2x2 speck (too small)
    class_map, atoms, defects = postprocess(p, PP)
    assert class_map.dtype == np.uint8 and class_map.shape == (40, 40)
    assert class_map[20, 10] == LABELS.index("vacancy") and class_map[10, 10] == LABELS.index("metal")
    assert len(atoms) == 3 and sorted(atoms[:, 2].tolist()) == [0, 0, 2]
    assert len(defects) == 2  # the speck is below min_region_px
    vac = defects[defects[:, 2] == 0]
    dop = defects[defects[:, 2] == 1]
    np.testing.assert_allclose(vac[0, :2], [9.5, 19.5], atol=1e-4)  # centre of the 4x4 box (x, y)
    np.testing.assert_allclose(dop[0, :2], [20.0, 30.0], atol=0.05)
    assert 0.85 <= vac[0, 3] <= 1.0 and 0.5 < dop[0, 3] <= 1.0


def test_nothing_above_threshold_gives_empty_lists() -> None:
    p = probabilities((32, 32))
    class_map, atoms, defects = postprocess(p, PP)
    assert atoms.shape == (0, 3) and defects.shape == (0, 4) and not class_map.any()


def test_defects_at_the_frame_edge_are_not_reported() -> None:
    """A dopant on the last column (a column the frame cuts, or its reflection in the padding) and a vacancy
    region at the top edge are dropped with ``edge_margin_px``; the atoms stay, and a dopant inside is kept."""
    p = probabilities((40, 40), metal=[[10.0, 10.0]], dopant=[[39.0, 20.0], [20.0, 20.0]],
                      vacancy_boxes=[(0, 3, 18, 22)])
    pp = dataclasses.replace(PP, edge_margin_px=4.0)
    _, atoms_all, defects_all = postprocess(p, PP)
    _, atoms, defects = postprocess(p, pp)
    assert len(defects_all) == 3 and len(atoms_all) == len(atoms) == 3
    np.testing.assert_array_equal(atoms, atoms_all)
    assert len(defects) == 1 and defects[0, 2] == 1
    np.testing.assert_allclose(defects[0, :2], [20.0, 20.0], atol=0.05)
    assert PostProcess.from_card(LABELS, {"atom_classes": ["metal"], "defect_classes": ["vacancy"],
                                          "edge_margin_px": 4.0}).edge_margin_px == 4.0
