"""Post-processing of a segmentation network's output: class map, sub-pixel atoms, defect list.

Outside ONNX on purpose: peak finding and labelling are cheap, exact and easier to tune here. The
input is the per-pixel class probabilities ``[C, H, W]`` of one frame; a ``PostProcess`` (from the
model card's ``postprocess``) says which classes are atom columns and which are defects:

* atoms: local maxima of the summed atom-class probability (at least ``min_distance_px`` apart and
  above ``threshold``), refined to sub-pixel by the probability-weighted centroid of their region;
  each gets the atom class with the highest probability at the peak;
* defects: connected regions of a site-less defect class (vacancies: there is no atom to find),
  plus every atom whose class is itself a defect (dopants, adatoms); each with a confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class PostProcess:
    labels: list[str]  # segmentation classes, index = channel
    atom_classes: list[str]  # classes that are atom columns (peaks)
    defect_classes: list[str]  # classes reported as defects, in the order of defect class indices
    min_distance_px: float = 4.0
    threshold: float = 0.5
    min_region_px: int = 4  # smallest vacancy region kept

    @classmethod
    def from_card(cls, labels: list[str], spec: dict[str, Any]) -> PostProcess:
        pp = cls(labels=list(labels), atom_classes=list(spec["atom_classes"]),
                 defect_classes=list(spec["defect_classes"]),
                 min_distance_px=float(spec.get("min_distance_px", 4.0)),
                 threshold=float(spec.get("threshold", 0.5)), min_region_px=int(spec.get("min_region_px", 4)))
        unknown = sorted(set(pp.atom_classes + pp.defect_classes) - set(labels))
        if unknown:
            raise ValueError(f"postprocess names classes {unknown} that are not among the outputs {labels}")
        return pp

    @property
    def atom_index(self) -> np.ndarray:
        return np.array([self.labels.index(c) for c in self.atom_classes], dtype=np.intp)


def find_atoms(probs: np.ndarray, pp: PostProcess) -> np.ndarray:
    """float32 ``[n, 3]``: x, y (pixels, sub-pixel) and atom class index (into ``pp.atom_classes``).

    Seeds are local maxima of the summed atom probability; each atom's position is the
    probability-weighted centroid of its connected region above ``threshold`` (unbiased for a
    symmetric blob). A region holding several seeds (touching atoms) is split: each seed then takes
    the centroid of the region's pixels within ``min_distance_px / 2`` of it."""
    atom_probs = probs[pp.atom_index]  # [A, H, W]
    p = atom_probs.sum(axis=0)
    size = max(3, int(round(pp.min_distance_px)) | 1)
    mask = p > pp.threshold
    peaks = (p == ndimage.maximum_filter(p, size=size, mode="constant")) & mask
    ys, xs = np.nonzero(peaks)
    if len(ys) == 0:
        return np.zeros((0, 3), np.float32)
    regions, n = ndimage.label(mask)
    region = regions[ys, xs]
    seeds_per_region = np.bincount(region, minlength=n + 1)
    centres = np.array(ndimage.center_of_mass(p, regions, np.arange(1, n + 1))).reshape(-1, 2)
    y_sub = centres[region - 1, 0].astype(np.float64)
    x_sub = centres[region - 1, 1].astype(np.float64)
    shared = np.nonzero(seeds_per_region[region] > 1)[0]
    if len(shared):
        r = max(1, size // 2)
        h, w = p.shape
        for i in shared:
            y0, y1, x0, x1 = max(ys[i] - r, 0), min(ys[i] + r + 1, h), max(xs[i] - r, 0), min(xs[i] + r + 1, w)
            weights = p[y0:y1, x0:x1] * (regions[y0:y1, x0:x1] == region[i])
            gy, gx = np.mgrid[y0:y1, x0:x1]
            total = weights.sum()
            y_sub[i], x_sub[i] = (gy * weights).sum() / total, (gx * weights).sum() / total
    cls = atom_probs[:, ys, xs].argmax(axis=0)
    return np.column_stack([x_sub, y_sub, cls]).astype(np.float32)


def find_defects(probs: np.ndarray, class_map: np.ndarray, atoms: np.ndarray, pp: PostProcess) -> np.ndarray:
    """float32 ``[m, 4]``: x, y, defect class index (into ``pp.defect_classes``), confidence."""
    found: list[tuple[float, float, int, float]] = []
    for k, name in enumerate(pp.defect_classes):
        c = pp.labels.index(name)
        if name in pp.atom_classes:  # a defect that is an atom column: take it from the atom list
            a = pp.atom_classes.index(name)
            for x, y, _ in atoms[atoms[:, 2] == a]:
                found.append((float(x), float(y), k, float(probs[c, int(round(y)), int(round(x))])))
            continue
        regions, n = ndimage.label(class_map == c)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(np.ones_like(class_map, dtype=np.float32), regions, index)
        centres = ndimage.center_of_mass(probs[c], regions, index)
        conf = ndimage.mean(probs[c], regions, index)
        for (y, x), size, q in zip(centres, sizes, conf):
            if size >= pp.min_region_px:
                found.append((float(x), float(y), k, float(q)))
    return np.array(found, np.float32).reshape(-1, 4)


def postprocess(probs: np.ndarray, pp: PostProcess) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class map uint8 [H, W], atoms [n, 3], defects [m, 4]) from probabilities ``[C, H, W]``."""
    class_map = probs.argmax(axis=0).astype(np.uint8)
    atoms = find_atoms(probs, pp)
    return class_map, atoms, find_defects(probs, class_map, atoms, pp)
