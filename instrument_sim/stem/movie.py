"""A simulated HAADF movie (:class:`STEMMovie`): its lattice, drift and defect walk, frames and truth on demand."""

from __future__ import annotations

import logging
import math
from os import PathLike

import numpy as np

from .columns import FrameAtoms, frame_columns
from .config import STEMConfig
from .dynamics import DefectWalk
from .lattice import LatticeGeometry
from .render import detector_counts, expected_counts, patch_half
from .scan import Scan
from .truth import frame_truth, write_ground_truth

log = logging.getLogger(__package__)  # "scanlens.sim.stem", as before the package was split


class STEMMovie:
    """A simulated HAADF movie: defect trajectories and classes precomputed, frames rendered on demand.

    Attributes: ``cfg``; ``rotation_deg``; ``origin_px`` (specimen coordinates of a metal site);
    ``basis_px`` ``[2, 2]`` (columns: the lattice vectors a1, a2 in px); ``chalcogen_offset_px`` ``[2]``
    (a chalcogen site relative to a metal site); ``drift_velocity_px`` ``[2]`` (x, y px per frame);
    ``trajectories`` ``[frames, n_defects, 2]`` float64 specimen (drift-free) coordinates (x, y) px of
    each defect's continuous position; ``classes`` ``[frames, n_defects]`` int8 DEFECT_CLASSES index;
    ``diffusion_px2`` ``[4]`` D in px^2 per frame; ``transition_matrix`` ``[4, 4]``. Specimen
    coordinates coincide with image coordinates of the top-left pixel of frame 0.
    """

    def __init__(self, cfg: STEMConfig = STEMConfig()) -> None:
        self.cfg = cfg
        spec = cfg.spec
        self.diffusion_px2: np.ndarray = np.array(cfg.diffusion_nm2, dtype=np.float64) / cfg.pixel_size_nm**2
        self.transition_matrix: np.ndarray = np.array(cfg.transitions, dtype=np.float64)
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))

        self._lattice = LatticeGeometry.draw(cfg, rng)
        self.rotation_deg: float = self._lattice.rotation_deg
        self.origin_px: np.ndarray = self._lattice.origin_px
        phi = rng.uniform(0.0, 2 * math.pi)
        self.drift_velocity_px: np.ndarray = cfg.drift_px_per_frame * np.array([math.cos(phi), math.sin(phi)])
        self._sigma = cfg.sigma_px
        self._weights = np.array([spec.weight(k) for k in ("metal", "chalcogen", "dopant", "adatom")])

        walk = DefectWalk(cfg, self._lattice, self.drift_velocity_px, self.diffusion_px2, self.transition_matrix)
        self.trajectories: np.ndarray
        self.classes: np.ndarray
        self.trajectories, self.classes = walk.run(rng)
        log.debug(
            "STEM movie %s: rotation %.1f deg, drift %s px/frame, %d defects, %d frames",
            cfg.lattice, self.rotation_deg, np.round(self.drift_velocity_px, 3), cfg.n_defects, cfg.frames,
        )

    @property
    def basis_px(self) -> np.ndarray:
        """Lattice vectors a1, a2 (px, specimen coordinates) as the columns of a ``[2, 2]`` array."""
        return self._lattice.basis

    @property
    def chalcogen_offset_px(self) -> np.ndarray:
        """Position of a chalcogen site relative to a metal site, ``(a1 + a2) / 3`` (px)."""
        return self._lattice.chalcogen_offset

    # ------------------------------------------------------------------ frame content

    def _check_frame(self, i: int) -> None:
        if not 0 <= i < self.cfg.frames:
            raise IndexError(f"frame {i} outside 0..{self.cfg.frames - 1}")

    def _scan(self, i: int, with_jitter: bool = True) -> Scan:
        return Scan(self.cfg, self.drift_velocity_px, i, with_jitter)

    def _frame_atoms(self, i: int, scan: Scan, pad: float) -> FrameAtoms:
        """Every column whose image lies within ``pad`` px of the frame, after the defects of frame ``i``."""
        return frame_columns(self._lattice, self._weights, self.classes[i], self.trajectories[i], scan, pad)

    def specimen_to_image(self, i: int, xy: np.ndarray) -> np.ndarray:
        """Map specimen (drift-free) coordinates ``[..., 2]`` (x, y) px to where they appear in frame ``i``
        (drift only: line jitter is per scan line and averages out over a spot, see :meth:`truth`)."""
        self._check_frame(i)
        xy = np.asarray(xy, dtype=np.float64)
        x, y = self._scan(i, with_jitter=False).to_image(xy[..., 0], xy[..., 1])
        return np.stack([x, y], axis=-1)

    def row_offsets_px(self, i: int) -> np.ndarray:
        """Scan distortion of frame ``i``: float64 ``[size, 2]`` (dx, dy) px by which scan row ``r`` sees
        the specimen shifted (drift ``v (i + r / size)`` plus the row's jitter in dx)."""
        self._check_frame(i)
        scan = self._scan(i)
        dx, dy = scan.row_shift(np.arange(self.cfg.size))
        return np.stack([dx + scan.jitter, dy], axis=1)

    def expected_frame(self, i: int) -> np.ndarray:
        """Noise-free expected counts ``[size, size]`` float32 of frame ``i`` (same distortions as :meth:`frame`)."""
        self._check_frame(i)
        scan = self._scan(i)
        h = patch_half(self._sigma)
        atoms = self._frame_atoms(i, scan, float(h))  # atoms up to h outside the frame reach into it
        return expected_counts(self.cfg, scan, atoms, self._sigma, h)

    def frame(self, i: int) -> np.ndarray:
        """Noisy HAADF counts ``[size, size]`` float32 (Poisson, integer-valued) of frame ``i``;
        the same for the same (config, i)."""
        return detector_counts(self.cfg, i, self.expected_frame(i))

    # ------------------------------------------------------------------ ground truth

    def _truth(self, i: int, labels: bool = True) -> dict[str, np.ndarray]:
        self._check_frame(i)
        scan = self._scan(i)
        atoms = self._frame_atoms(i, scan, 1.0)
        n = self.cfg.n_defects
        sites = np.zeros((n, 2))
        for k in range(n):
            sites[k] = self._lattice.defect_site(self.trajectories[i, k], int(self.classes[i, k]))
        return frame_truth(self.cfg, scan, atoms, sites, self.classes[i], self._sigma, labels)

    def truth(self, i: int) -> dict[str, np.ndarray]:
        """Ground truth of frame ``i`` in image coordinates (x = column, y = row, pixel centres at integers):

        * ``atoms``: float32 ``[n, 3]`` (x, y, ATOM_CLASSES index) of every column in the frame after the
          defects (vacancies removed, dopants and adatoms included);
        * ``defects``: float32 ``[m, 4]`` (x, y, DEFECT_CLASSES index, defect id) of every defect, at the
          site it occupies (vacancies, dopants) or its position (adatoms);
        * ``labels``: uint8 ``[size, size]`` segmentation target, SEG_CLASSES indices.
        """
        return self._truth(i, labels=True)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        """Write every frame's atoms and defects, the trajectories, classes, D, transition matrix and
        config to an ``.npz`` file (no pickle; ragged per-frame lists are concatenated with a frame column)."""
        frames = [self._truth(i, labels=False) for i in range(self.cfg.frames)]
        image_traj = np.zeros_like(self.trajectories)
        for i in range(self.cfg.frames):
            image_traj[i] = self.specimen_to_image(i, self.trajectories[i])
        write_ground_truth(
            path, self.cfg, frames, trajectories=self.trajectories, trajectories_image=image_traj,
            classes=self.classes, diffusion_px2=self.diffusion_px2, transition_matrix=self.transition_matrix,
            drift_velocity_px=self.drift_velocity_px, rotation_deg=self.rotation_deg, origin_px=self.origin_px,
        )
