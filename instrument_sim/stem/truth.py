"""Ground truth of a movie: atoms, defects and segmentation labels per frame, and its ``.npz`` file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np

from .columns import FrameAtoms
from .config import (
    ATOM_CLASSES,
    ATOM_TO_SEG,
    DEFECT_CLASSES,
    DEFECT_TO_SEG,
    LABEL_RADIUS_FRACTION,
    SEG_CLASSES,
    STEMConfig,
    nearest_neighbour_spacing_px,
)
from .scan import Scan


def frame_truth(
    cfg: STEMConfig, scan: Scan, atoms: FrameAtoms, defect_sites: np.ndarray, defect_classes: np.ndarray,
    sigma: float, labels: bool = True,
) -> dict[str, np.ndarray]:
    """``atoms``, ``defects`` and (if ``labels``) ``labels`` of the frame of ``scan`` (see
    :meth:`STEMMovie.truth`), from its columns ``atoms`` (within 1 px of the frame) and the specimen
    positions ``defect_sites`` ``[n, 2]`` and classes of its defects."""
    size = cfg.size
    x, y = scan.to_image(atoms.sx, atoms.sy)
    x = x + scan.jitter_centroid(y, sigma)
    inside = (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)
    atom_arr = np.stack([x[inside], y[inside], atoms.cls[inside]], axis=1).astype(np.float32)

    n = cfg.n_defects
    dxi, dyi = scan.to_image(defect_sites[:, 0], defect_sites[:, 1])
    dxi = dxi + scan.jitter_centroid(dyi, sigma)
    defects = np.stack([dxi, dyi, defect_classes, np.arange(n)], axis=1).astype(np.float32).reshape(n, 4)
    out = {"atoms": atom_arr, "defects": defects}
    if labels:
        vx, vy = scan.to_image(atoms.vac_sx, atoms.vac_sy)
        vx = vx + scan.jitter_centroid(vy, sigma)
        lab = np.zeros((size, size), dtype=np.uint8)
        radius = LABEL_RADIUS_FRACTION * nearest_neighbour_spacing_px(cfg)
        seg_atoms = ATOM_TO_SEG[atoms.cls]
        seg_vac = DEFECT_TO_SEG[atoms.vac_cls]
        # Lattice columns first, then vacancies, dopants and adatoms on top.
        for group in ((1, 2), (3, 4), (5,), (6,)):
            sel = np.isin(seg_atoms, group)
            _paint_disks(lab, x[sel], y[sel], seg_atoms[sel], radius)
            sel = np.isin(seg_vac, group)
            _paint_disks(lab, vx[sel], vy[sel], seg_vac[sel], radius)
        out["labels"] = lab
    return out


def _paint_disks(lab: np.ndarray, x: np.ndarray, y: np.ndarray, value: np.ndarray, radius: float) -> None:
    """Set pixels whose centre lies within ``radius`` of (x, y) to ``value`` (one value per disk)."""
    if x.size == 0:
        return
    size = lab.shape[0]
    h = int(math.ceil(radius)) + 1
    off = np.arange(-h, h + 1)
    cx = np.round(x).astype(np.int64)[:, None, None] + off[None, None, :]
    cy = np.round(y).astype(np.int64)[:, None, None] + off[None, :, None]
    inside = ((cx - x[:, None, None]) ** 2 + (cy - y[:, None, None]) ** 2 <= radius**2)
    inside &= (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    vals = np.broadcast_to(np.asarray(value, dtype=np.uint8)[:, None, None], inside.shape)
    lab[np.broadcast_to(cy, inside.shape)[inside], np.broadcast_to(cx, inside.shape)[inside]] = vals[inside]


def merge_sublattices(labels: np.ndarray) -> np.ndarray:
    """A copy of a label image with ``chalcogen`` merged into ``metal`` and ``chalcogen_vacancy`` into
    ``metal_vacancy``: the target for graphene, whose two sublattices look identical (see the package notes)."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    out[out == SEG_CLASSES.index("chalcogen")] = SEG_CLASSES.index("metal")
    out[out == SEG_CLASSES.index("chalcogen_vacancy")] = SEG_CLASSES.index("metal_vacancy")
    return out


def write_ground_truth(
    path: str | PathLike[str], cfg: STEMConfig, frames: Sequence[dict[str, np.ndarray]], *, trajectories: np.ndarray,
    trajectories_image: np.ndarray, classes: np.ndarray, diffusion_px2: np.ndarray, transition_matrix: np.ndarray,
    drift_velocity_px: np.ndarray, rotation_deg: float, origin_px: np.ndarray,
) -> None:
    """The file of :meth:`STEMMovie.save_ground_truth`: ``frames`` holds the ``atoms`` and ``defects`` of every
    frame (as :meth:`STEMMovie.truth` gives them), the rest the movie's attributes of the same names."""
    atoms, defects, offsets = [], [], [0]
    for i, t in enumerate(frames):
        a = t["atoms"]
        atoms.append(np.concatenate([a, np.full((len(a), 1), i, np.float32)], axis=1))
        d = t["defects"]
        defects.append(np.concatenate([d, np.full((len(d), 1), i, np.float32)], axis=1))
        offsets.append(offsets[-1] + len(a))
    np.savez_compressed(
        path,
        atoms=np.concatenate(atoms).astype(np.float32),
        atom_offsets=np.array(offsets, dtype=np.int64),
        defects=np.concatenate(defects).astype(np.float32),
        trajectories=trajectories,
        trajectories_image=trajectories_image,
        classes=classes,
        diffusion_px2=diffusion_px2,
        diffusion_nm2=np.array(cfg.diffusion_nm2),
        transition_matrix=transition_matrix,
        drift_velocity_px=drift_velocity_px,
        rotation_deg=np.array(rotation_deg),
        origin_px=origin_px,
        nn_spacing_px=np.array(nearest_neighbour_spacing_px(cfg)),
        seg_classes=np.array(SEG_CLASSES),
        atom_classes=np.array(ATOM_CLASSES),
        defect_classes=np.array(DEFECT_CLASSES),
        config=np.array(cfg.to_json()),
    )


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what :meth:`STEMMovie.save_ground_truth` wrote.

    Arrays: ``atoms`` float32 ``[N, 4]`` (x, y, ATOM_CLASSES index, frame), ``atom_offsets`` int64
    ``[frames + 1]`` (frame ``i`` is ``atoms[off[i]:off[i + 1]]``), ``defects`` float32 ``[M, 5]``
    (x, y, DEFECT_CLASSES index, id, frame), ``trajectories`` ``[frames, n, 2]`` (specimen coordinates,
    drift-free), ``trajectories_image`` (the same walk in image coordinates, drift applied, not snapped),
    ``classes`` ``[frames, n]``, ``diffusion_px2``, ``diffusion_nm2``, ``transition_matrix``,
    ``drift_velocity_px``, ``origin_px``; scalars ``rotation_deg``, ``nn_spacing_px``; tuples of class
    names; ``config`` (STEMConfig).
    """
    with np.load(path, allow_pickle=False) as data:
        out: dict[str, Any] = {k: data[k] for k in data.files}
    for k in ("seg_classes", "atom_classes", "defect_classes"):
        out[k] = tuple(str(s) for s in out[k])
    out["rotation_deg"] = float(out["rotation_deg"])
    out["nn_spacing_px"] = float(out["nn_spacing_px"])
    out["config"] = STEMConfig.from_json(str(out["config"]))
    return out
