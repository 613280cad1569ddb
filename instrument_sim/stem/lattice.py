"""Honeycomb geometry of one movie: basis, origin, the metal / chalcogen / hollow sites near a point."""

from __future__ import annotations

import math

import numpy as np

from .config import CVAC, DADA, STEMConfig


class LatticeGeometry:
    """The lattice of one movie in specimen coordinates (px): a hexagonal basis ``a1, a2`` rotated by
    ``rotation_deg``, a metal site at ``origin_px``, chalcogen sites at ``+ (a1 + a2) / 3`` and the
    hollow sites of the honeycomb at ``+ 2 (a1 + a2) / 3``."""

    def __init__(self, a_px: float, theta: float, origin_frac: np.ndarray) -> None:
        self.rotation_deg: float = math.degrees(theta) % 360.0
        self.basis = a_px * np.array(
            [[math.cos(theta), math.cos(theta + math.pi / 3)], [math.sin(theta), math.sin(theta + math.pi / 3)]]
        )  # columns a1, a2 (px)
        self.basis_inv = np.linalg.inv(self.basis)
        self.origin_px: np.ndarray = self.basis @ origin_frac
        self.chalcogen_offset = self.basis @ np.array([1.0, 1.0]) / 3.0
        self.hollow_offset = 2.0 * self.chalcogen_offset

    @classmethod
    def draw(cls, cfg: STEMConfig, rng: np.random.Generator) -> LatticeGeometry:
        """The lattice of ``cfg``: rotation (unless ``cfg.rotation_deg`` fixes it), then origin drawn from ``rng``."""
        theta = math.radians(cfg.rotation_deg) if cfg.rotation_deg is not None else rng.uniform(0.0, 2 * math.pi)
        return cls(cfg.a_px, theta, rng.uniform(0.0, 1.0, 2))

    def nearest_site(self, p: np.ndarray, offset: np.ndarray) -> tuple[int, int, np.ndarray]:
        """Nearest site ``origin + offset + n1 a1 + n2 a2`` to specimen point ``p``: (n1, n2, position)."""
        f = self.basis_inv @ (p - self.origin_px - offset)
        best: tuple[int, int, np.ndarray] | None = None
        best_d = math.inf
        for n1 in (math.floor(f[0]), math.floor(f[0]) + 1):
            for n2 in (math.floor(f[1]), math.floor(f[1]) + 1):
                q = self.origin_px + offset + self.basis @ np.array([n1, n2], dtype=np.float64)
                d = float(np.sum((q - p) ** 2))
                if d < best_d:
                    best, best_d = (n1, n2, q), d
        assert best is not None
        return best

    def site_offset(self, defect_cls: int) -> np.ndarray:
        """Offset of the sublattice a site-bound defect of ``defect_cls`` lives on (chalcogen or metal)."""
        return self.chalcogen_offset if defect_cls == CVAC else np.zeros(2)

    def defect_site(self, p: np.ndarray, defect_cls: int) -> np.ndarray:
        """Where a defect at ``p`` shows: its own position (adatom) or the nearest site of its sublattice."""
        return p if defect_cls == DADA else self.nearest_site(p, self.site_offset(defect_cls))[2]

    def home(self, p: np.ndarray, defect_cls: int, from_cls: int) -> np.ndarray:
        """Where a defect of class ``defect_cls`` (class ``from_cls`` before, -1 when new) near ``p`` sits:
        the nearest site of its sublattice; an adatom stays at ``p``, or takes the nearest hollow site
        when it has just appeared."""
        if defect_cls == DADA:
            return p if from_cls == DADA else self.nearest_site(p, self.hollow_offset)[2]
        return self.nearest_site(p, self.site_offset(defect_cls))[2]

    def sites_near(self, p: np.ndarray, defect_cls: int) -> np.ndarray:
        """``[2, 36]`` sites of a defect of class ``defect_cls`` (hollow sites for an adatom) around ``p``,
        nearest first."""
        offset = self.hollow_offset if defect_cls == DADA else self.site_offset(defect_cls)
        f = self.basis_inv @ (p - self.origin_px - offset)
        g = np.stack(np.meshgrid(np.arange(-2, 4), np.arange(-2, 4)), axis=-1).reshape(-1, 2) + np.floor(f)
        sites = (self.origin_px + offset)[:, None] + self.basis @ g.T
        return sites[:, np.argsort(np.sum((sites - p[:, None]) ** 2, axis=0))]
