"""The atomic columns one frame shows: lattice sites in view, with that frame's defects applied."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ADATOM, CHALCOGEN, CVAC, DADA, DDOP, DOPANT, METAL
from .lattice import LatticeGeometry
from .scan import Scan


@dataclass
class FrameAtoms:
    """Columns of one frame in specimen coordinates, plus the vacancy sites (for the labels)."""

    sx: np.ndarray  # [n] specimen x, px
    sy: np.ndarray  # [n] specimen y, px
    cls: np.ndarray  # [n] ATOM_CLASSES index
    weight: np.ndarray  # [n] HAADF intensity relative to the host metal column
    vac_sx: np.ndarray
    vac_sy: np.ndarray
    vac_cls: np.ndarray  # DEFECT_CLASSES index


def frame_columns(
    lattice: LatticeGeometry, weights: np.ndarray, classes: np.ndarray, positions: np.ndarray, scan: Scan,
    pad: float,
) -> FrameAtoms:
    """Every column whose image lies within ``pad`` px of the frame of ``scan``, after the defects of that
    frame (DEFECT_CLASSES index ``classes[k]`` at specimen position ``positions[k]``); ``weights`` per
    ATOM_CLASSES index."""
    size = scan.size
    # Specimen bounding box of the padded frame (drift is linear in the row; jitter bounded).
    jmax = float(np.abs(scan.jitter).max()) if scan.jitter.size else 0.0
    n1, n2, base = _sites_in_view(lattice, scan, pad, jmax)
    n_sites = base.shape[1]
    # site index k = (n1 - n1[0]) * len(n2) + (n2 - n2[0]); per sublattice 0 = metal, 1 = chalcogen.
    cls = np.concatenate([np.full(n_sites, METAL), np.full(n_sites, CHALCOGEN)])
    pos = np.concatenate([base, base + lattice.chalcogen_offset[:, None]], axis=1)
    present = np.ones(2 * n_sites, dtype=bool)
    vac: list[tuple[float, float, int]] = []
    extra: list[tuple[float, float, int]] = []
    for defect_cls, p in zip(classes, positions):
        c = int(defect_cls)
        if c == DADA:
            extra.append((float(p[0]), float(p[1]), ADATOM))
            continue
        s1, s2, q = lattice.nearest_site(p, lattice.site_offset(c))
        sub = 1 if c == CVAC else 0
        j1, j2 = s1 - int(n1[0]), s2 - int(n2[0])
        if 0 <= j1 < n1.size and 0 <= j2 < n2.size:
            idx = sub * n_sites + j1 * n2.size + j2
            if c == DDOP:
                cls[idx] = DOPANT
            else:
                present[idx] = False
                vac.append((float(q[0]), float(q[1]), c))
    pos, cls = pos[:, present], cls[present]
    if extra:
        e = np.array(extra)
        pos = np.concatenate([pos, e[:, :2].T], axis=1)
        cls = np.concatenate([cls, e[:, 2].astype(cls.dtype)])
    x, y = scan.to_image(pos[0], pos[1])
    keep = (x >= -pad - jmax) & (x <= size - 1 + pad + jmax) & (y >= -pad) & (y <= size - 1 + pad)
    v = np.array(vac, dtype=np.float64).reshape(-1, 3)
    return FrameAtoms(
        sx=pos[0, keep], sy=pos[1, keep], cls=cls[keep].astype(np.intp), weight=weights[cls[keep]],
        vac_sx=v[:, 0], vac_sy=v[:, 1], vac_cls=v[:, 2].astype(np.intp),
    )


def _sites_in_view(
    lattice: LatticeGeometry, scan: Scan, pad: float, jmax: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice indices ``n1``, ``n2`` and the metal sites ``[2, len(n1) * len(n2)]`` (specimen px) that cover
    the frame padded by ``pad`` px, whatever the drift and jitter (at most ``jmax`` px) of its rows."""
    size = scan.size
    rows = np.array([-pad, size - 1 + pad])
    dx, dy = scan.row_shift(rows)
    x_lo, x_hi = -pad - dx.max() - jmax - 1, size - 1 + pad - dx.min() + jmax + 1
    y_lo, y_hi = -pad - dy.max() - 1, size - 1 + pad - dy.min() + 1
    corners = np.array([[x_lo, x_lo, x_hi, x_hi], [y_lo, y_hi, y_lo, y_hi]]) - lattice.origin_px[:, None]
    f = lattice.basis_inv @ corners
    n1 = np.arange(math.floor(f[0].min()) - 1, math.ceil(f[0].max()) + 2)
    n2 = np.arange(math.floor(f[1].min()) - 1, math.ceil(f[1].max()) + 2)
    g1, g2 = np.meshgrid(n1, n2, indexing="ij")
    base = (lattice.basis @ np.stack([g1.ravel(), g2.ravel()]).astype(np.float64)) + lattice.origin_px[:, None]
    return n1, n2, base
